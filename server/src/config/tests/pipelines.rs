//! Pipelines through YAML: the seed's documents parse and plan as written,
//! and each validation error names the document, pipeline and field.

use super::*;

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
