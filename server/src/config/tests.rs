//! Whole-module tests: the seed's YAML, config files, `hadron apply` input,
//! errors from the parser, and round trips through YAML and JSON.

use super::*;
use crate::config::stream::DEFAULT_STREAM_NAME;

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

// ---- The seed ----

#[test]
fn seed_first_document_parses_as_written() {
    let p = only_pipeline(SEED_PIPELINE);
    assert_eq!(p.name, "service-creation");
    assert_eq!(p.source_stream, "events");
    assert_eq!(p.triggers, vec!["service.created".to_string()]);
    assert_eq!(p.start_point, StartPoint::Beginning);
    assert_eq!(p.max_parallel, 50);
    assert_eq!(p.stages, vec![StageSpec::new("deploy-service", &[])]);
    assert_eq!(p.retry, None);
    assert_eq!(p.ack_timeout_ms, None);
    let plan = p.plan(events_only).unwrap();
    assert_eq!(plan.stages.len(), 1);
    assert_eq!(plan.roots_mask(), 1);
    assert_eq!(plan.stages[0].retry, RetryPolicy::DEFAULT);
    assert_eq!(plan.stages[0].ack_timeout_ms, 30_000);
    assert!(plan.triggers.matches("service.created"));
    assert!(!plan.triggers.matches("service.deleted"));
    assert_eq!(
        plan.triggers,
        TriggerSet::new(&["service.created".to_string()]).unwrap()
    );

    // The seed assumes the stream `events`: a config file holding only the
    // pipeline gets it by default.
    let (config, resources) = parse_config_file(SEED_PIPELINE).unwrap();
    assert_eq!(config, ServerConfig::default());
    assert_eq!(resources.len(), 2);
    assert_eq!(
        resources[0],
        Resource::Stream(StreamSpec::with_defaults("events"))
    );
    assert_eq!(resources[1], Resource::Pipeline(p));
}

#[test]
fn seed_four_stage_dag_parses_and_plans() {
    let p = only_pipeline(&seed_four());
    let names: Vec<&str> = p.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "deploy-service",
            "setup-billing",
            "setup-monitoring",
            "notify-user"
        ]
    );
    let plan = p.plan(events_only).unwrap();
    for i in 1..4 {
        assert_eq!(plan.stages[i].dependencies, vec![0]);
        assert_eq!(plan.stages[i].deps_mask, 1);
    }
    assert_eq!(plan.stages[0].dependents, vec![1, 2, 3]);
    assert_eq!(plan.roots_mask(), 0b0001);
    assert_eq!(plan.topo_order, vec![0, 1, 2, 3]);
}

#[test]
fn seed_five_stage_dag_with_sync_parses_and_plans() {
    let p = only_pipeline(&seed_five());
    assert_eq!(p.stages.len(), 5);
    assert_eq!(
        p.stages[4],
        StageSpec::new(
            "sync",
            &[
                "deploy-service",
                "setup-billing",
                "setup-monitoring",
                "notify-user"
            ]
        )
    );
    let plan: PipelinePlan = p.plan(events_only).unwrap();
    assert_eq!(plan.stage_index("sync"), Some(4));
    let sync: &PlannedStage = &plan.stages[4];
    assert_eq!(sync.dependencies, vec![0, 1, 2, 3]);
    assert_eq!(sync.deps_mask, 0b0_1111);
    assert_eq!(sync.dependents, Vec::<u8>::new());
    assert_eq!(plan.stages[0].dependents_mask, 0b1_1110);
    for i in 1..4 {
        assert_eq!(plan.stages[i].dependents, vec![4]);
    }
    assert_eq!(plan.all_mask(), 0b1_1111);
    assert_eq!(plan.topo_order, vec![0, 1, 2, 3, 4]);
}

// ---- Validation errors through YAML: each names the document, pipeline
// ---- and field.

#[test]
fn unknown_dependency_names_document_pipeline_and_field() {
    let input = format!(
        "{STREAM_DOC}---\n{}",
        seed_four().replace(
            "    - name: setup-monitoring\n      dependencies: [\"deploy-service\"]",
            "    - name: setup-monitoring\n      dependencies: [\"deploy\"]",
        )
    );
    assert_eq!(
        apply_error(&input),
        "document 2 (Pipeline \"service-creation\"): spec.stages[2].dependencies[0]: unknown stage \"deploy\"; dependencies must name stages of this pipeline"
    );
}

#[test]
fn cycle_through_yaml() {
    let input = pipeline_doc(
        "loops",
        "  sourceStream: events\n  stages:\n    - name: start\n    - name: a\n      dependencies: [start, c]\n    - name: b\n      dependencies: [a]\n    - name: c\n      dependencies: [b]\n",
    );
    let message = apply_error(&input);
    assert!(
        message.starts_with("document 1 (Pipeline \"loops\"): spec.stages[1].dependencies[1]: dependency cycle: a -> b -> c -> a"),
        "{message}"
    );
}

#[test]
fn duplicate_and_invalid_stage_names_through_yaml() {
    let dup = seed_five().replace("- name: notify-user", "- name: setup-billing");
    let message = apply_error(&dup);
    assert!(
        message.starts_with("document 1 (Pipeline \"service-creation\"): spec.stages[3].name: duplicate stage name \"setup-billing\""),
        "{message}"
    );
    let bad = seed_five().replace("- name: sync", "- name: Sync_All");
    let message = apply_error(&bad);
    assert!(
        message.starts_with("document 1 (Pipeline \"service-creation\"): spec.stages[4].name: invalid name \"Sync_All\""),
        "{message}"
    );
}

#[test]
fn no_root_stage_through_yaml() {
    let input = pipeline_doc(
        "rootless",
        "  sourceStream: events\n  stages:\n    - name: a\n      dependencies: [b]\n    - name: b\n      dependencies: [a]\n",
    );
    assert!(
        apply_error(&input)
            .starts_with("document 1 (Pipeline \"rootless\"): spec.stages: no root stage")
    );
    let errors = only_pipeline_errors(&input);
    assert!(
        errors
            .iter()
            .any(|e| matches!(e.problem, Problem::Cycle { .. }))
    );
}

/// All validation errors of a pipeline document that parses but does not
/// validate (`parse_documents` stops at the first).
fn only_pipeline_errors(input: &str) -> Vec<ConfigError> {
    let documents = yaml::read_documents(input, false).unwrap();
    let Some(document::RawBody::Pipeline(envelope)) = documents.into_iter().next().map(|d| d.body)
    else {
        panic!("expected a pipeline document");
    };
    let mut spec = envelope.spec;
    spec.name = envelope.metadata.name;
    spec.errors(events_only)
}

#[test]
fn too_many_stages_through_yaml() {
    let mut spec = String::from("  sourceStream: events\n  stages:\n");
    for i in 0..65 {
        spec.push_str(&format!("    - name: s{i}\n"));
    }
    assert_eq!(
        apply_error(&pipeline_doc("wide", &spec)),
        "document 1 (Pipeline \"wide\"): spec.stages: 65 stages; a pipeline may have at most 64"
    );
}

#[test]
fn max_parallel_zero_through_yaml() {
    let input = SEED_PIPELINE.replace("maxParallel: 50", "maxParallel: 0");
    assert_eq!(
        apply_error(&input),
        "document 1 (Pipeline \"service-creation\"): spec.maxParallel: 0 is out of range; allowed: 1 to 65536"
    );
}

#[test]
fn unknown_source_stream_in_config_file_and_later_for_apply() {
    let input = SEED_PIPELINE.replace("sourceStream: events", "sourceStream: orders");
    let error = parse_config_file(&input).unwrap_err();
    assert_eq!(
        error.to_string(),
        "document 1 (Pipeline \"service-creation\"): spec.sourceStream: unknown stream \"orders\"; declare it with `kind: Stream` first"
    );
    // Declared in the same file: fine (and then no default `events`).
    let (_, resources) = parse_config_file(&format!("{STREAM_DOC}---\n{input}")).unwrap();
    let names: Vec<&str> = resources.iter().map(Resource::name).collect();
    assert_eq!(names, ["orders", "service-creation"]);
    // `hadron apply` leaves the check to the server, which knows its streams.
    let p = only_pipeline(&input);
    assert_eq!(p.plan(events_only).unwrap_err().path, "spec.sourceStream");
    assert!(p.plan(|s| s == "orders").is_ok());
}

#[test]
fn invalid_trigger_through_yaml() {
    let input = SEED_PIPELINE.replace("- service.created", "- service.>.x");
    let message = apply_error(&input);
    assert!(
        message.starts_with("document 1 (Pipeline \"service-creation\"): spec.triggers[0]: invalid trigger \"service.>.x\": '>' may only be the last segment"),
        "{message}"
    );
}

// ---- Schema errors from the parser: field path, document, line/column.

#[test]
fn unknown_field_is_rejected_with_its_name_and_position() {
    let input = seed_four().replace(
        "      dependencies: [\"deploy-service\"]\n\n    # Setup monitoring",
        "      dependancies: [\"deploy-service\"]\n\n    # Setup monitoring",
    );
    let error = parse_documents(&input).unwrap_err();
    assert_eq!(error.document, Some(1));
    assert_eq!(error.kind, Some(ResourceKind::Pipeline));
    assert_eq!(error.name.as_deref(), Some("service-creation"));
    assert_eq!(error.path, "spec.stages[1]");
    assert!(
        matches!(&error.problem, Problem::Schema { message } if message.contains("unknown field `dependancies`")),
        "{error}"
    );
    assert_eq!(error.location.map(|l| l.line), Some(22), "{error}");
    let message = error.to_string();
    assert!(
        message.starts_with("document 1 (Pipeline \"service-creation\"): spec.stages[1]: unknown field `dependancies`"),
        "{message}"
    );
    assert!(message.ends_with("(line 22, column 7)"), "{message}");

    let top = SEED_PIPELINE.replace("maxParallel: 50", "maxParallel: 50\n  maxParalel: 5");
    assert!(apply_error(&top).contains("spec: unknown field `maxParalel`"));
    let envelope = format!("{SEED_PIPELINE}status: done\n");
    assert!(apply_error(&envelope).contains("unknown field `status`"));
    let meta = SEED_PIPELINE.replace(
        "  name: service-creation",
        "  name: service-creation\n  labels: {}",
    );
    assert!(apply_error(&meta).contains("metadata: unknown field `labels`"));
    let start = SEED_PIPELINE.replace("location: beginning", "location: beginning\n    at: 5");
    assert!(apply_error(&start).contains("unknown field `at`"));
}

#[test]
fn wrong_types_and_missing_fields_name_the_field() {
    let input = SEED_PIPELINE.replace("maxParallel: 50", "maxParallel: lots");
    let message = apply_error(&input);
    assert!(
        message.contains("spec.maxParallel: invalid type: string \"lots\""),
        "{message}"
    );
    assert!(message.contains("(line 15, column 16)"), "{message}");
    let input = SEED_PIPELINE.replace("  sourceStream: events\n", "");
    assert!(apply_error(&input).contains("spec: missing field `sourceStream`"));
    let input = SEED_PIPELINE.replace("metadata:\n  name: service-creation\n", "metadata: {}\n");
    assert!(apply_error(&input).contains("metadata: missing field `name`"));
    let input = format!(
        "{STREAM_DOC}---\n{}",
        STREAM_DOC.replace("partitions: 8", "partitions: -1")
    );
    let message = apply_error(&input);
    assert!(message.starts_with("document 2 (Stream \"orders\"): spec.partitions: invalid type: integer `-1`, expected u32"), "{message}");
}

#[test]
fn start_points() {
    let offset = only_pipeline(
        &SEED_PIPELINE.replace("location: beginning", "location: offset\n    offset: 42"),
    );
    assert_eq!(offset.start_point, StartPoint::Offset(42));
    let latest = only_pipeline(&SEED_PIPELINE.replace("location: beginning", "location: latest"));
    assert_eq!(latest.start_point, StartPoint::Latest);
    let absent =
        only_pipeline(&SEED_PIPELINE.replace("  startPoint:\n    location: beginning\n", ""));
    assert_eq!(absent.start_point, StartPoint::Beginning);
    let message = apply_error(&SEED_PIPELINE.replace("location: beginning", "location: offset"));
    assert!(
        message.contains("spec.startPoint: `location: offset` needs `offset: N`"),
        "{message}"
    );
    let message = apply_error(
        &SEED_PIPELINE.replace("location: beginning", "location: latest\n    offset: 3"),
    );
    assert!(
        message.contains("spec.startPoint: `offset` is only used with `location: offset`"),
        "{message}"
    );
    let message = apply_error(&SEED_PIPELINE.replace("location: beginning", "location: middle"));
    assert!(
        message.contains("spec.startPoint.location: unknown variant `middle`"),
        "{message}"
    );
}

#[test]
fn envelope_errors() {
    let no_kind = "apiVersion: hadron.rs/v1beta1\nmetadata: { name: x }\nspec: {}\n";
    assert!(apply_error(no_kind).starts_with("document 1 (\"x\"): missing field `kind`"));
    let bad_kind = format!(
        "{STREAM_DOC}---\n{}",
        STREAM_DOC.replace("kind: Stream", "kind: Topic")
    );
    assert_eq!(
        apply_error(&bad_kind),
        "document 2 (\"orders\"): kind: unknown kind \"Topic\"; expected Stream or Pipeline"
    );
    let no_version = STREAM_DOC.replace("apiVersion: hadron.rs/v1beta1\n", "");
    assert_eq!(
        apply_error(&no_version),
        "document 1 (Stream \"orders\"): apiVersion: missing field `apiVersion`; add `apiVersion: hadron.rs/v1beta1`"
    );
    let old_version = STREAM_DOC.replace("hadron.rs/v1beta1", "hadron.rs/v1alpha1");
    assert!(apply_error(&old_version).starts_with(
        "document 1 (Stream \"orders\"): apiVersion: unsupported apiVersion \"hadron.rs/v1alpha1\""
    ));
    let settings = "kind: ServerConfig\nshards: 2\n";
    assert!(
        apply_error(settings).starts_with(
            "document 1 (ServerConfig): kind: server settings belong in the config file"
        )
    );
    let scalar = "just a string\n";
    assert!(apply_error(scalar).contains("missing field `kind`"));
    let duplicate = format!("{STREAM_DOC}---\n{SEED_PIPELINE}---\n{STREAM_DOC}");
    assert_eq!(
        apply_error(&duplicate),
        "document 3 (Stream \"orders\"): metadata.name: already declared in document 1; each name may be declared once per file"
    );
    // A stream and a pipeline may share a name.
    let shared = format!(
        "{}---\n{SEED_PIPELINE}",
        STREAM_DOC.replace("orders", "service-creation")
    );
    assert_eq!(parse_documents(&shared).unwrap().len(), 2);
}

#[test]
fn invalid_yaml_syntax_gives_document_line_and_column() {
    let input = format!("{STREAM_DOC}---\nkind: Stream\nmetadata: {{ name: x\nspec: [\n");
    let error = parse_documents(&input).unwrap_err();
    assert_eq!(error.document, Some(2));
    assert!(matches!(error.problem, Problem::Syntax { .. }), "{error:?}");
    let location = error.location.unwrap();
    assert!(location.line >= 8, "{error}");
    let message = error.to_string();
    assert!(
        message.starts_with("document 2: invalid YAML: "),
        "{message}"
    );
    assert!(
        message.contains(&format!(
            "(line {}, column {})",
            location.line, location.column
        )),
        "{message}"
    );

    let tab = "kind: Stream\nmetadata:\n\tname: x\n";
    let error = parse_documents(tab).unwrap_err();
    assert_eq!(error.location.map(|l| l.line), Some(3), "{error}");

    let mapping = "a: b: c\n";
    let error = parse_documents(mapping).unwrap_err();
    assert_eq!(
        error.location,
        Some(Location { line: 1, column: 5 }),
        "{error}"
    );
}

#[test]
fn empty_documents_are_skipped_but_counted() {
    let input = format!(
        "---\n---\n{STREAM_DOC}---\n# only a comment\n---\n{}",
        STREAM_DOC.replace("8", "0")
    );
    let error = parse_documents(&input).unwrap_err();
    // The leading `---` opens document 1, which is empty.
    assert_eq!(error.document, Some(4), "{error}");
    assert_eq!(error.path, "spec.partitions");
    assert!(parse_documents("").unwrap().is_empty());
    assert!(parse_documents("# nothing\n").unwrap().is_empty());
}

// ---- Streams ----

#[test]
fn stream_documents_with_defaults_and_retention() {
    let minimal =
        "apiVersion: hadron.rs/v1beta1\nkind: Stream\nmetadata: { name: events }\nspec: {}\n";
    assert_eq!(
        parse_documents(minimal).unwrap(),
        vec![Resource::Stream(StreamSpec::with_defaults("events"))]
    );
    let full = "apiVersion: hadron.rs/v1beta1
kind: Stream
metadata: { name: audit.log }
spec:
  partitions: 16
  retention: { maxAgeMs: 604800000, maxBytes: 10737418240 }
  dedupWindowMs: 0
";
    let resources = parse_documents(full).unwrap();
    let Resource::Stream(s) = &resources[0] else {
        panic!()
    };
    assert_eq!(s.name, "audit.log");
    assert_eq!(s.partitions, 16);
    assert_eq!(
        s.retention,
        Some(RetentionSpec {
            max_age_ms: Some(604_800_000),
            max_bytes: Some(10 << 30)
        })
    );
    assert_eq!(s.dedup_window_ms, Some(0));
    let message = apply_error(&full.replace("maxBytes", "maxSize"));
    assert!(
        message.contains("spec.retention: unknown field `maxSize`"),
        "{message}"
    );
    let message = apply_error(&full.replace("audit.log", "Audit"));
    assert!(
        message.starts_with("document 1 (Stream \"Audit\"): metadata.name: invalid name"),
        "{message}"
    );
    let message = apply_error(&full.replace("16", "2000"));
    assert_eq!(
        message,
        "document 1 (Stream \"audit.log\"): spec.partitions: 2000 is out of range; allowed: 1 to 1024"
    );
}

// ---- Config files ----

#[test]
fn empty_config_file_gives_defaults_and_the_events_stream() {
    for input in ["", "# nothing here\n", "---\n"] {
        let (config, resources) = parse_config_file(input).unwrap();
        assert_eq!(config, ServerConfig::default());
        assert_eq!(
            resources,
            vec![Resource::Stream(StreamSpec::with_defaults("events"))]
        );
    }
}

#[test]
fn config_file_settings_first_then_resources() {
    let input = format!(
        "dataDir: /var/lib/hadron
listen: 0.0.0.0:7100
shards: 3
shardPorts: false
fsync: interval
fsyncIntervalMs: 20
segmentBytes: 1048576
ioMemoryBytes: 4194304
frameBytesMax: 1048576
dedupWindowMs: 5000
dedupKeysMax: 4096
groupsMax: 300
ackIdsMax: 100
subscriptionsPerConnectionMax: 7
retention: {{ maxAgeMs: 86400000 }}
token: from-the-file
shardStartTimeoutMs: 5000
connectionsMax: 77
handshakeTimeoutMs: 2500
idleTimeoutMs: 0
handshakeFrameBytesMax: 16384
outboxBytesMax: 2097152
requestsInFlightMax: 9
deliveriesInFlightMax: 33
---
{STREAM_DOC}---
{}",
        SEED_PIPELINE.replace("sourceStream: events", "sourceStream: orders")
    );
    let (config, resources) = parse_config_file(&input).unwrap();
    assert_eq!(
        config,
        ServerConfig {
            data_dir: "/var/lib/hadron".into(),
            listen: "0.0.0.0:7100".parse().unwrap(),
            shards: 3,
            shard_ports: false,
            fsync: FsyncPolicy::Interval { interval_ms: 20 },
            segment_bytes: 1 << 20,
            io_memory_bytes: 4 << 20,
            frame_bytes_max: 1 << 20,
            dedup_window_ms: 5000,
            dedup_keys_max: 4096,
            groups_max: 300,
            ack_ids_max: 100,
            subscriptions_per_connection_max: 7,
            retention: RetentionSpec {
                max_age_ms: Some(86_400_000),
                max_bytes: None
            },
            token: Some(crate::config::server::Token::new("from-the-file")),
            insecure_no_token: false,
            shard_start_timeout_ms: 5000,
            connections_max: 77,
            handshake_timeout_ms: 2500,
            idle_timeout_ms: 0,
            handshake_frame_bytes_max: 16 << 10,
            outbox_bytes_max: 2 << 20,
            requests_in_flight_max: 9,
            deliveries_in_flight_max: 33,
            ..ServerConfig::default()
        }
    );
    assert_eq!(resources.len(), 2, "no default stream when one is declared");
    let Resource::Stream(orders) = &resources[0] else {
        panic!()
    };
    let settings: StreamSettings = orders.settings(&config);
    assert_eq!(settings.partitions, 8);
    assert_eq!(settings.dedup_window_ms, 5000);
    assert_eq!(settings.retention.max_age_ms, Some(86_400_000));
}

#[test]
fn config_file_settings_document_may_say_its_kind_anywhere_once() {
    let input = format!(
        "{SEED_PIPELINE}---\napiVersion: hadron.rs/v1beta1\nkind: ServerConfig\nshards: 2\n"
    );
    let (config, resources) = parse_config_file(&input).unwrap();
    assert_eq!(config.shards, 2);
    assert_eq!(resources.len(), 2);
    let twice = "shards: 2\n---\nkind: ServerConfig\nshards: 3\n";
    assert!(
        parse_config_file(twice)
            .unwrap_err()
            .to_string()
            .starts_with(
                "document 2 (ServerConfig): kind: a config file holds one settings document"
            )
    );
    let kindless_later = format!("{STREAM_DOC}---\nshards: 2\n");
    assert_eq!(
        parse_config_file(&kindless_later).unwrap_err().to_string(),
        "document 2: missing field `kind`; every document after the first needs `kind: Stream` or `kind: Pipeline`"
    );
}

#[test]
fn config_file_settings_errors_name_the_field() {
    let error = parse_config_file("shards: 2\nshardz: 3\n").unwrap_err();
    assert_eq!(error.document, Some(1));
    assert_eq!(error.kind, Some(ResourceKind::ServerConfig));
    assert!(
        error.to_string().contains("unknown field `shardz`"),
        "{error}"
    );
    assert_eq!(error.location.map(|l| l.line), Some(2));
    let message = parse_config_file("fsync: sometimes\n")
        .unwrap_err()
        .to_string();
    assert!(
        message.starts_with("document 1 (ServerConfig): fsync: unknown variant `sometimes`"),
        "{message}"
    );
    let message = parse_config_file("listen: localhost\n")
        .unwrap_err()
        .to_string();
    assert!(
        message.starts_with("document 1 (ServerConfig): listen: "),
        "{message}"
    );
    let message = parse_config_file("shards: 0\n").unwrap_err().to_string();
    assert_eq!(
        message,
        "document 1 (ServerConfig): shards: 0 is out of range; allowed: 1 to 256"
    );
    let message = parse_config_file("fsyncIntervalMs: 5\n")
        .unwrap_err()
        .to_string();
    assert!(
        message.starts_with(
            "document 1 (ServerConfig): fsyncIntervalMs: only used with `fsync: interval`"
        ),
        "{message}"
    );
    let message = parse_config_file("apiVersion: v2\n")
        .unwrap_err()
        .to_string();
    assert!(
        message.starts_with("document 1 (ServerConfig): apiVersion: unsupported"),
        "{message}"
    );
    let message = parse_config_file("kind: Server\n").unwrap_err().to_string();
    assert!(
        message.contains("expected ServerConfig, Stream or Pipeline"),
        "{message}"
    );
}

// ---- Round trips ----

fn rich_resources() -> Vec<Resource> {
    let mut pipeline = only_pipeline(&seed_five());
    pipeline.start_point = StartPoint::Offset(7);
    pipeline.triggers.push("billing.>".into());
    pipeline.retry = Some(RetrySpec {
        initial_delay_ms: Some(100),
        max_delay_ms: Some(1000),
        max_attempts: None,
    });
    pipeline.ack_timeout_ms = Some(2500);
    pipeline.stages[4].retry = Some(RetrySpec {
        max_attempts: Some(3),
        ..RetrySpec::default()
    });
    pipeline.stages[4].ack_timeout_ms = Some(60_000);
    let stream = StreamSpec {
        name: "events".into(),
        partitions: 12,
        retention: Some(RetentionSpec {
            max_age_ms: None,
            max_bytes: Some(1 << 30),
        }),
        dedup_window_ms: Some(1000),
        dedup_keys_max: Some(500_000),
    };
    vec![
        Resource::Stream(stream),
        Resource::Stream(StreamSpec::with_defaults("plain")),
        Resource::Pipeline(pipeline),
        Resource::Pipeline(only_pipeline(
            &SEED_PIPELINE.replace("service-creation", "service-deletion"),
        )),
    ]
}

#[test]
fn to_yaml_round_trips_through_parse() {
    for resource in rich_resources() {
        let text = to_yaml(&resource).unwrap();
        assert_eq!(
            parse_documents(&text).unwrap(),
            vec![resource.clone()],
            "{text}"
        );
    }
    let all = rich_resources();
    let text = to_yaml_documents(&all).unwrap();
    assert_eq!(parse_documents(&text).unwrap(), all, "{text}");
    assert!(
        text.starts_with("---\napiVersion: hadron.rs/v1beta1\nkind: Stream\n"),
        "{text}"
    );
}

#[test]
fn to_json_round_trips_through_parse() {
    for resource in rich_resources() {
        let text = to_json(&resource).unwrap();
        assert!(text.starts_with('{'));
        assert_eq!(parse_documents(&text).unwrap(), vec![resource], "{text}");
    }
}

#[test]
fn defaults_resolved_at_parse_are_written_explicitly() {
    // Partitions and maxParallel are part of what was applied: writing them
    // out keeps them fixed if the defaults ever change.
    let text = to_yaml(&Resource::Stream(StreamSpec::with_defaults("events"))).unwrap();
    assert!(text.contains("partitions: 4"), "{text}");
    let input = SEED_PIPELINE.replace("  maxParallel: 50\n", "");
    let p = only_pipeline(&input);
    assert_eq!(p.max_parallel, pipeline::MAX_PARALLEL_DEFAULT);
    let text = to_yaml(&Resource::Pipeline(p)).unwrap();
    assert!(text.contains("maxParallel: 50"), "{text}");
    assert!(text.contains("location: beginning"), "{text}");
}

#[test]
fn connection_limits_are_checked_against_each_other() {
    let outbox =
        parse_config_file("frameBytesMax: 1048576\noutboxBytesMax: 1048575\n").unwrap_err();
    assert!(
        outbox.to_string().contains("outboxBytesMax"),
        "an outbox smaller than one frame: {outbox}"
    );
    let handshake = parse_config_file("handshakeFrameBytesMax: 4096\n").unwrap_err();
    assert!(
        handshake.to_string().contains("handshakeFrameBytesMax"),
        "{handshake}"
    );
    let zero = parse_config_file("requestsInFlightMax: 0\n").unwrap_err();
    assert!(zero.to_string().contains("requestsInFlightMax"), "{zero}");
    parse_config_file("outboxBytesMax: 16777216\nhandshakeFrameBytesMax: 8192\n").unwrap();
}

#[test]
fn a_non_loopback_listen_needs_a_token_or_an_explicit_insecure_setting() {
    let exposure = |yaml: &str| parse_config_file(yaml).unwrap().0.check_exposure();
    let refused = exposure("listen: 0.0.0.0:7000\n").unwrap_err();
    assert!(
        refused.to_string().contains("insecureNoToken"),
        "the error says how to allow it: {refused}"
    );
    exposure("listen: 0.0.0.0:7000\ninsecureNoToken: true\n").unwrap();
    exposure("listen: 0.0.0.0:7000\ntoken: t0k3n\n").unwrap();
    exposure("listen: 127.0.0.2:7000\n").unwrap();
    exposure("listen: '[::1]:7000'\n").unwrap();
}

// ---- Bounds: what one apply may ask of the server ----

/// The problem of a refused input, with its line and column.
fn refused(input: &str) -> (String, Location) {
    let e = parse_documents(input).unwrap_err();
    let Problem::YamlRefused { reason } = &e.problem else {
        panic!("not refused by the shape check: {e}");
    };
    (reason.clone(), e.location.unwrap())
}

#[test]
fn apply_bytes_at_the_limit_are_accepted_and_one_more_is_refused_naming_the_setting() {
    let config = ServerConfig::default();
    assert_eq!(config.apply_bytes_max, 1 << 20);
    assert_eq!(config.check_apply_bytes(1 << 20), Ok(()));
    let e = config.check_apply_bytes((1 << 20) + 1).unwrap_err();
    assert!(e.contains("1048577 bytes"), "{e}");
    assert!(e.contains("applyBytesMax is 1048576"), "{e}");
    let small = ServerConfig {
        apply_bytes_max: server::APPLY_BYTES_MAX_MIN,
        ..ServerConfig::default()
    };
    assert_eq!(small.check_apply_bytes(4096), Ok(()));
    assert!(small.check_apply_bytes(4097).is_err());
}

#[test]
fn resource_counts_at_their_limits_are_accepted_and_one_more_is_refused_naming_the_setting() {
    use server::ResourceCounts;
    let config = ServerConfig {
        streams_max: 3,
        partitions_max: 10,
        pipelines_max: 2,
        ..ServerConfig::default()
    };
    let none = ResourceCounts::default();
    let at = ResourceCounts {
        streams: 3,
        partitions: 10,
        pipelines: 2,
        pipeline_runs: 10,
    };
    assert_eq!(config.check_resource_counts(none, at), Ok(()));
    let cases = [
        (
            ResourceCounts { streams: 4, ..at },
            "the server would hold 4 streams; streamsMax is 3",
        ),
        (
            ResourceCounts {
                partitions: 11,
                ..at
            },
            "the server would hold 11 stream partitions in all; partitionsMax is 10",
        ),
        (
            ResourceCounts { pipelines: 3, ..at },
            "the server would hold 3 pipelines; pipelinesMax is 2",
        ),
        (
            ResourceCounts {
                pipeline_runs: 11,
                ..at
            },
            "the server would hold 11 pipeline runs in all (one per pipeline and source partition); partitionsMax is 10",
        ),
    ];
    for (over, message) in cases {
        let e = config.check_resource_counts(none, over).unwrap_err();
        assert!(e.starts_with(message), "{e}");
        // A server already past a limit (it was lowered) may keep what it
        // has, and shrink, but not grow.
        assert_eq!(config.check_resource_counts(over, over), Ok(()));
        assert_eq!(config.check_resource_counts(over, at), Ok(()));
    }
}

#[test]
fn limit_settings_are_read_from_the_config_file_and_checked() {
    let (config, _) = parse_config_file(
        "applyBytesMax: 8192\nstreamsMax: 5\npartitionsMax: 40\npipelinesMax: 7\n",
    )
    .unwrap();
    assert_eq!(
        (
            config.apply_bytes_max,
            config.streams_max,
            config.partitions_max,
            config.pipelines_max
        ),
        (8192, 5, 40, 7)
    );
    let defaults = ServerConfig::default();
    assert_eq!(
        (
            defaults.streams_max,
            defaults.partitions_max,
            defaults.pipelines_max
        ),
        (256, 1024, 64)
    );
    for (input, path) in [
        ("applyBytesMax: 4095\n", "applyBytesMax"),
        ("applyBytesMax: 16777217\n", "applyBytesMax"),
        ("streamsMax: 0\n", "streamsMax"),
        ("partitionsMax: 0\n", "partitionsMax"),
        ("pipelinesMax: 1048577\n", "pipelinesMax"),
    ] {
        let e = parse_config_file(input).unwrap_err();
        assert_eq!(e.path, path, "{e}");
    }
}

#[test]
fn anchors_and_aliases_are_refused_with_their_position() {
    let (reason, at) = refused(&format!("{STREAM_DOC}---\nkind: &k Stream\n"));
    assert!(
        reason.starts_with("YAML anchors (`&name`) are not accepted"),
        "{reason}"
    );
    assert_eq!(at, Location { line: 7, column: 7 });
    let (reason, at) = refused("a: [1, *x]\n");
    assert!(
        reason.starts_with("YAML aliases (`*name`) are not accepted"),
        "{reason}"
    );
    assert_eq!(at, Location { line: 1, column: 8 });
    let e = parse_documents(&format!("{STREAM_DOC}---\n- *x\n")).unwrap_err();
    assert_eq!(e.document, Some(2), "{e}");
    assert!(e.to_string().contains("(line 7, column 3)"), "{e}");
    // The same in a config file, and a merge key.
    assert!(matches!(
        parse_config_file("dataDir: &d /tmp\n").unwrap_err().problem,
        Problem::YamlRefused { .. }
    ));
    refused("base: &b {partitions: 2}\nspec:\n  <<: *b\n");
}

#[test]
fn stars_and_ampersands_in_text_are_not_taken_for_aliases() {
    for text in [
        "a: 'it''s *not* an &alias'\n",
        "a: \"*x \\\" &y\"\n",
        "a: b # *comment &x\n# *whole line\n",
        "a: x*y&z\nb: x *y &z\n",
        "a: [x*y, \"*z\", '&w']\n",
        "a: |\n  *block\n  &scalar\nb: >-\n  - *folded\n",
        "a: plain\n  continued *line &here\n",
        "a: !tag x\n",
        "{\"a\": [\"*x\", {\"b\": \"&y\"}]}\n",
    ] {
        assert_eq!(yaml::check_shape(text), Ok(()), "{text}");
    }
    // A trigger with `*` is quoted, as YAML requires.
    let input = SEED_PIPELINE.replace("    - service.created", "    - \"service.*\"");
    assert_eq!(only_pipeline(&input).triggers, vec!["service.*".to_owned()]);
}

#[test]
fn flow_nesting_at_the_limit_is_read_and_one_more_is_refused() {
    let max = yaml::YAML_DEPTH_MAX;
    assert_eq!(max, 32);
    let nested = |depth: usize| format!("a: {}{}\n", "[".repeat(depth), "]".repeat(depth));
    assert_eq!(yaml::check_shape(&nested(max)), Ok(()));
    // At the limit the document reaches the schema check (it is no Stream).
    let e = parse_documents(&nested(max)).unwrap_err();
    assert!(!matches!(e.problem, Problem::YamlRefused { .. }), "{e}");
    let (reason, at) = refused(&nested(max + 1));
    assert!(reason.contains("deeper than 32 levels"), "{reason}");
    assert_eq!(
        at,
        Location {
            line: 1,
            column: 4 + 32
        }
    );
    // Mappings count too; brackets in quotes and comments do not.
    refused(&format!("a: {}\n", "{b: ".repeat(max + 1)));
    let quoted = format!("a: \"{}\" # {}\n", "[".repeat(100), "{".repeat(100));
    assert_eq!(yaml::check_shape(&quoted), Ok(()));
}

#[test]
fn nesting_and_alias_bombs_are_refused_before_the_yaml_parser_reads_them() {
    let started = std::time::Instant::now();
    // 100,000 `[` stalled a shard for 36 s; 30,000 `{a: ` took libyaml 2.2 s.
    refused(&"[".repeat(100_000));
    refused(&"{a: ".repeat(100_000));
    // A few KB of aliases expanded to over 1 GB.
    let mut bomb = String::from("a: &a [");
    bomb.push_str(&vec!["xxxxxxxx"; 1000].join(","));
    bomb.push_str("]\nb: &b [");
    bomb.push_str(&vec!["*a"; 1000].join(","));
    bomb.push_str("]\nc: [");
    bomb.push_str(&vec!["*b"; 1000].join(","));
    bomb.push_str("]\n");
    let (reason, at) = refused(&bomb);
    assert!(reason.contains("anchors"), "{reason}");
    assert_eq!(at.line, 1);
    // Block nesting is linear for libyaml, and serde_yaml stops at 128.
    let e = parse_documents(&format!("{}x\n", "- ".repeat(200_000))).unwrap_err();
    assert!(e.to_string().contains("recursion limit exceeded"), "{e}");
    let elapsed = started.elapsed();
    assert!(elapsed < std::time::Duration::from_secs(10), "{elapsed:?}");
}

#[test]
fn an_alias_the_shape_check_misses_still_cannot_expand() {
    // The line after `abc` continues its plain scalar for YAML (it is
    // indented more than `k`), but the scan takes its quote for a quoted
    // string and misses the anchor and aliases after it: the node budget
    // of the first reading stops the expansion.
    let mut input = String::from("k:\n  abc\n  'x\nd: &c [");
    input.push_str(&vec!["1"; 100].join(","));
    input.push_str("]\ne: [");
    input.push_str(&vec!["*c"; 100].join(","));
    input.push_str("]\n");
    assert_eq!(yaml::check_shape(&input), Ok(()), "the scan is fooled");
    let e = parse_documents(&input).unwrap_err();
    assert!(
        e.to_string()
            .contains("expands to more nodes than its length allows"),
        "{e}"
    );
    assert!(yaml::nodes_max(input.len()) < 100 * 100);
}

#[test]
fn the_largest_allowed_apply_parses_quickly() {
    // 1 MiB of streams and pipelines, about what `applyBytesMax` allows.
    let mut input = String::new();
    let mut n = 0;
    while input.len() < (1 << 20) - 2048 {
        input.push_str(&format!(
            "---\napiVersion: hadron.rs/v1beta1\nkind: Stream\nmetadata: {{ name: s{n} }}\nspec: {{ partitions: 4, retention: {{ maxAgeMs: 60000 }} }}\n"
        ));
        input.push_str("---\n");
        input.push_str(&pipeline_doc(
            &format!("p{n}"),
            &format!(
                "  sourceStream: s{n}\n  triggers: [\"a.*\", b.c]\n  stages:\n    - name: one\n    - name: two\n      dependencies: [one]\n      retry: {{ maxAttempts: 3 }}\n"
            ),
        ));
        n += 1;
    }
    assert!(input.len() <= 1 << 20);
    let started = std::time::Instant::now();
    let resources = parse_documents(&input).unwrap();
    let elapsed = started.elapsed();
    assert_eq!(resources.len(), 2 * n);
    eprintln!(
        "parsed {} bytes ({} resources) in {elapsed:?}",
        input.len(),
        resources.len()
    );
    // Generous for a debug build on a loaded machine; the release figure
    // is in the module header of `yaml.rs`.
    assert!(elapsed < std::time::Duration::from_secs(20), "{elapsed:?}");
}
