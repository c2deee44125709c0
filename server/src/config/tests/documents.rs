//! Resource documents: schema errors from the parser with their field and
//! position, envelopes, start points, streams, and round trips through
//! YAML and JSON.

use super::*;

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
        "document 2 (\"orders\"): kind: unknown kind \"Topic\"; expected Stream, Pipeline or Token"
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
        replicas: None,
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
