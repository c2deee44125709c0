//! Unit tests of pipeline specs: parsing, defaults, validation messages
//! and the plans built.

use super::*;

fn spec(stages: Vec<StageSpec>) -> PipelineSpec {
    PipelineSpec {
        name: "service-creation".into(),
        source_stream: "events".into(),
        triggers: vec!["service.created".into()],
        start_point: StartPoint::Beginning,
        max_parallel: 50,
        retry: None,
        ack_timeout_ms: None,
        stages,
    }
}

fn seed_stages() -> Vec<StageSpec> {
    vec![
        StageSpec::new("deploy-service", &[]),
        StageSpec::new("setup-billing", &["deploy-service"]),
        StageSpec::new("setup-monitoring", &["deploy-service"]),
        StageSpec::new("notify-user", &["deploy-service"]),
        StageSpec::new(
            "sync",
            &[
                "deploy-service",
                "setup-billing",
                "setup-monitoring",
                "notify-user",
            ],
        ),
    ]
}

fn only_events(stream: &str) -> bool {
    stream == "events"
}

/// The single error of `spec`, as text.
fn error_of(spec: &PipelineSpec) -> String {
    let errors = spec.errors(only_events);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(spec.plan(only_events).is_err());
    errors[0].to_string()
}

#[test]
fn seed_dag_plans_with_indices_masks_and_topological_order() {
    let plan = spec(seed_stages()).plan(only_events).unwrap();
    assert_eq!(plan.stages.len(), 5);
    assert_eq!(plan.stage_index("sync"), Some(4));
    assert_eq!(plan.stage_index("nope"), None);
    assert_eq!(plan.stages[4].dependencies, vec![0, 1, 2, 3]);
    assert_eq!(plan.stages[4].deps_mask, 0b01111);
    assert_eq!(plan.stages[0].dependents, vec![1, 2, 3, 4]);
    assert_eq!(plan.stages[0].dependents_mask, 0b11110);
    assert_eq!(plan.stages[1].dependents, vec![4]);
    assert_eq!(plan.roots_mask(), 0b00001);
    assert_eq!(plan.all_mask(), 0b11111);
    assert_eq!(plan.topo_order, vec![0, 1, 2, 3, 4]);
    assert!(plan.triggers.matches("service.created"));
    assert!(!plan.triggers.matches("service.deleted"));
    for stage in &plan.stages {
        assert_eq!(stage.retry, RetryPolicy::DEFAULT);
        assert_eq!(stage.ack_timeout_ms, ACK_TIMEOUT_MS_DEFAULT);
    }
}

#[test]
fn topological_order_puts_dependencies_first_even_when_listed_later() {
    let plan = spec(vec![
        StageSpec::new("c", &["b"]),
        StageSpec::new("b", &["a"]),
        StageSpec::new("a", &[]),
        StageSpec::new("d", &[]),
    ])
    .plan(only_events)
    .unwrap();
    assert_eq!(plan.topo_order, vec![2, 1, 0, 3]);
    assert_eq!(plan.roots_mask(), 0b1100);
}

#[test]
fn sixty_four_stages_fit_and_sixty_five_do_not() {
    let mut stages: Vec<StageSpec> = (0..64)
        .map(|i| StageSpec::new(&format!("s{i}"), &[]))
        .collect();
    stages[63].dependencies = vec!["s0".into()];
    let plan = spec(stages.clone()).plan(only_events).unwrap();
    assert_eq!(plan.all_mask(), u64::MAX);
    assert_eq!(plan.stages[0].dependents_mask, 1u64 << 63);
    stages.push(StageSpec::new("s64", &[]));
    assert_eq!(
        error_of(&spec(stages)),
        "Pipeline \"service-creation\": spec.stages: 65 stages; a pipeline may have at most 64"
    );
}

#[test]
fn duplicate_stage_name() {
    let mut stages = seed_stages();
    stages[2].name = "setup-billing".into();
    stages[4].dependencies.remove(2);
    assert_eq!(
        error_of(&spec(stages)),
        "Pipeline \"service-creation\": spec.stages[2].name: duplicate stage name \"setup-billing\" (first used by spec.stages[1]); stage names must be unique"
    );
}

#[test]
fn invalid_stage_name() {
    let mut stages = seed_stages();
    stages.push(StageSpec::new("Bad_Stage", &["sync"]));
    let message = error_of(&spec(stages));
    assert!(
        message.starts_with(
            "Pipeline \"service-creation\": spec.stages[5].name: invalid name \"Bad_Stage\""
        ),
        "{message}"
    );
    let mut stages = seed_stages();
    stages.push(StageSpec::new("a.b", &[]));
    assert!(error_of(&spec(stages)).contains("spec.stages[5].name: invalid name \"a.b\""));
}

#[test]
fn unknown_dependency() {
    let mut stages = seed_stages();
    stages[2].dependencies = vec!["deploy".into()];
    assert_eq!(
        error_of(&spec(stages)),
        "Pipeline \"service-creation\": spec.stages[2].dependencies[0]: unknown stage \"deploy\"; dependencies must name stages of this pipeline"
    );
}

#[test]
fn duplicate_dependency() {
    let mut stages = seed_stages();
    stages[4].dependencies.push("notify-user".into());
    let message = error_of(&spec(stages));
    assert!(
        message.starts_with("Pipeline \"service-creation\": spec.stages[4].dependencies[4]: stage \"notify-user\" is listed twice"),
        "{message}"
    );
}

#[test]
fn cycle_names_its_stages_in_order() {
    let stages = vec![
        StageSpec::new("root", &[]),
        StageSpec::new("a", &["root", "c"]),
        StageSpec::new("b", &["a"]),
        StageSpec::new("c", &["b"]),
        StageSpec::new("after", &["c"]),
    ];
    let errors = spec(stages).errors(only_events);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(
        errors[0].problem,
        Problem::Cycle {
            stages: vec!["a".into(), "b".into(), "c".into(), "a".into()]
        }
    );
    assert_eq!(
        errors[0].to_string(),
        "Pipeline \"service-creation\": spec.stages[1].dependencies[1]: dependency cycle: a -> b -> c -> a; break the cycle by removing one of these dependencies"
    );
}

#[test]
fn self_dependency_is_a_cycle() {
    let stages = vec![
        StageSpec::new("root", &[]),
        StageSpec::new("loop", &["loop"]),
    ];
    let message = error_of(&spec(stages));
    assert!(
        message.starts_with("Pipeline \"service-creation\": spec.stages[1].dependencies[0]: dependency cycle: loop -> loop"),
        "{message}"
    );
}

#[test]
fn no_root_stage() {
    let stages = vec![StageSpec::new("a", &["b"]), StageSpec::new("b", &["a"])];
    let errors = spec(stages).errors(only_events);
    let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(messages.len(), 2, "{messages:#?}");
    assert!(messages[0].starts_with("Pipeline \"service-creation\": spec.stages: no root stage"));
    assert!(messages[1].contains("spec.stages[0].dependencies[0]: dependency cycle: a -> b -> a"));
}

#[test]
fn no_stages() {
    assert_eq!(
        error_of(&spec(Vec::new())),
        "Pipeline \"service-creation\": spec.stages: a pipeline needs at least one stage"
    );
}

#[test]
fn max_parallel_zero_and_too_large() {
    let mut s = spec(seed_stages());
    s.max_parallel = 0;
    assert_eq!(
        error_of(&s),
        "Pipeline \"service-creation\": spec.maxParallel: 0 is out of range; allowed: 1 to 65536"
    );
    s.max_parallel = MAX_PARALLEL_MAX + 1;
    assert!(error_of(&s).contains("spec.maxParallel"));
}

#[test]
fn unknown_source_stream() {
    let mut s = spec(seed_stages());
    s.source_stream = "orders".into();
    assert_eq!(
        error_of(&s),
        "Pipeline \"service-creation\": spec.sourceStream: unknown stream \"orders\"; declare it with `kind: Stream` first"
    );
    assert!(s.plan(|_| true).is_ok(), "the check can be left for later");
    s.source_stream = "Orders!".into();
    assert!(
        s.plan(|_| true)
            .unwrap_err()
            .to_string()
            .contains("spec.sourceStream: invalid name")
    );
}

#[test]
fn invalid_pipeline_name_and_trigger() {
    let mut s = spec(seed_stages());
    s.name = "Service Creation".into();
    assert!(error_of(&s).starts_with("Pipeline \"Service Creation\": metadata.name: invalid name"));
    let mut s = spec(seed_stages());
    s.triggers = vec!["service.>.x".into()];
    assert!(error_of(&s).starts_with(
        "Pipeline \"service-creation\": spec.triggers[0]: invalid trigger \"service.>.x\""
    ));
}

#[test]
fn all_errors_are_reported_together() {
    let mut s = spec(vec![
        StageSpec::new("a", &["ghost"]),
        StageSpec::new("a", &[]),
    ]);
    s.max_parallel = 0;
    s.source_stream = "nope".into();
    let paths: Vec<String> = s.errors(only_events).into_iter().map(|e| e.path).collect();
    assert_eq!(
        paths,
        vec![
            "spec.sourceStream",
            "spec.maxParallel",
            "spec.stages[1].name",
            "spec.stages[0].dependencies[0]"
        ]
    );
}

#[test]
fn retry_defaults_overlay_and_limits() {
    let mut s = spec(seed_stages());
    s.retry = Some(RetrySpec {
        initial_delay_ms: Some(100),
        max_delay_ms: None,
        max_attempts: Some(3),
    });
    s.ack_timeout_ms = Some(1000);
    s.stages[1].retry = Some(RetrySpec {
        max_attempts: Some(20),
        ..RetrySpec::default()
    });
    s.stages[1].ack_timeout_ms = Some(5);
    let plan = s.plan(only_events).unwrap();
    assert_eq!(
        plan.stages[0].retry,
        RetryPolicy {
            initial_delay_ms: 100,
            max_delay_ms: 30_000,
            max_attempts: 3
        }
    );
    assert_eq!(plan.stages[0].ack_timeout_ms, 1000);
    assert_eq!(
        plan.stages[1].retry,
        RetryPolicy {
            initial_delay_ms: 100,
            max_delay_ms: 30_000,
            max_attempts: 20
        }
    );
    assert_eq!(plan.stages[1].ack_timeout_ms, 5);

    s.stages[1].retry = Some(RetrySpec {
        max_attempts: Some(0),
        ..RetrySpec::default()
    });
    assert_eq!(
        s.plan(only_events).unwrap_err().path,
        "spec.stages[1].retry.maxAttempts"
    );
    s.stages[1].retry = Some(RetrySpec {
        max_delay_ms: Some(50),
        ..RetrySpec::default()
    });
    let e = s.plan(only_events).unwrap_err();
    assert_eq!(e.path, "spec.stages[1].retry");
    assert!(
        e.to_string()
            .contains("initialDelayMs (100) is above maxDelayMs (50)"),
        "{e}"
    );
    s.stages[1].retry = None;
    s.stages[1].ack_timeout_ms = Some(0);
    assert_eq!(
        s.plan(only_events).unwrap_err().path,
        "spec.stages[1].ackTimeoutMs"
    );
    s.stages[1].ack_timeout_ms = None;
    s.ack_timeout_ms = Some(DELAY_MS_MAX + 1);
    assert_eq!(s.plan(only_events).unwrap_err().path, "spec.ackTimeoutMs");
    s.ack_timeout_ms = None;
    s.retry = Some(RetrySpec {
        initial_delay_ms: Some(40_000),
        ..RetrySpec::default()
    });
    assert_eq!(s.plan(only_events).unwrap_err().path, "spec.retry");
}

#[test]
fn retry_delay_doubles_and_caps() {
    let p = RetryPolicy::DEFAULT;
    assert_eq!(p.delay_ms(1), 500);
    assert_eq!(p.delay_ms(2), 1000);
    assert_eq!(p.delay_ms(3), 2000);
    assert_eq!(p.delay_ms(7), 30_000);
    assert_eq!(p.delay_ms(u32::MAX), 30_000);
    assert_eq!(p.delay_ms(0), 500);
}

#[test]
fn start_point_converts_to_wire() {
    assert_eq!(
        hadron_wire::StartPoint::from(StartPoint::Offset(9)),
        hadron_wire::StartPoint::Offset(9)
    );
    assert_eq!(
        hadron_wire::StartPoint::from(StartPoint::default()),
        hadron_wire::StartPoint::Beginning
    );
}
