//! Whole-module tests of `config`: the seed's YAML, config files,
//! `hadron apply` input, errors from the parser, and round trips through
//! YAML and JSON. The fixtures shared by the topics are here; each topic
//! has its own file.

use super::*;
use crate::config::stream::DEFAULT_STREAM_NAME;

mod bounds;
mod documents;
mod pipelines;
mod settings;

/// The seed's first Pipeline document, verbatim.
const SEED_PIPELINE: &str = "apiVersion: hadron.rs/v1beta1
kind: Pipeline
metadata:
  name: service-creation
spec:
  # The source Stream of this Pipeline.
  sourceStream: events
  # Event types which trigger this Pipeline.
  triggers:
    - service.created
  # When first created, the position of the Source stream to start from.
  startPoint:
    location: beginning
  # Maximum number of parallel executions per stage.
  maxParallel: 50
  stages:
    # Deploy the customer's service in Kubernetes.
    - name: deploy-service
";

/// The seed's updated `stages` section with four stages, verbatim.
const SEED_FOUR_STAGES: &str = r#"  stages:
    # Deploy the customer's service in Kubernetes.
    - name: deploy-service

    # Setup billing for the customer's new service.
    - name: setup-billing
      dependencies: ["deploy-service"]

    # Setup monitoring for the customer's new service.
    - name: setup-monitoring
      dependencies: ["deploy-service"]

    # Notify the user that their service is deployed and ready.
    - name: notify-user
      dependencies: ["deploy-service"]
"#;

/// The seed's `sync` stage, verbatim, to be appended to the stages list.
const SEED_SYNC_STAGE: &str = "    # Synchronize the state of the system.
    #
    # - Update tables using the event data from all of the upstream stages.
    # - Update the state of the new service in the database so that the
    #   user can upgrade, resize, or otherwise modify the service safely.
    - name: sync
      dependencies:
        - deploy-service
        - setup-billing
        - setup-monitoring
        - notify-user
";

/// The seed's first document with its `stages` section replaced.
fn seed_with_stages(stages: &str) -> String {
    let head = SEED_PIPELINE.split("  stages:\n").next().unwrap();
    format!("{head}{stages}")
}

fn seed_four() -> String {
    seed_with_stages(SEED_FOUR_STAGES)
}

fn seed_five() -> String {
    format!("{}{SEED_SYNC_STAGE}", seed_four())
}

fn only_pipeline(input: &str) -> PipelineSpec {
    let resources = parse_documents(input).unwrap();
    assert_eq!(resources.len(), 1);
    match resources.into_iter().next().unwrap() {
        Resource::Pipeline(p) => p,
        other => panic!("expected a pipeline, got {other:?}"),
    }
}

fn events_only(name: &str) -> bool {
    name == DEFAULT_STREAM_NAME
}

/// The error `parse_documents` gives, as text.
fn apply_error(input: &str) -> String {
    parse_documents(input).unwrap_err().to_string()
}

fn pipeline_doc(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: hadron.rs/v1beta1\nkind: Pipeline\nmetadata:\n  name: {name}\nspec:\n{spec}"
    )
}

const STREAM_DOC: &str = "apiVersion: hadron.rs/v1beta1
kind: Stream
metadata: { name: orders }
spec:
  partitions: 8
";
