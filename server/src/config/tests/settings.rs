//! Config files: the settings document first, then resources; settings
//! errors name their field; connection limits and exposure.

use super::*;

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
drainTimeoutMs: 1500
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
            // Not set: the default step, lowered to the smaller segment.
            segment_preallocate_bytes: 1 << 20,
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
            drain_timeout_ms: 1500,
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
        message.contains("expected ServerConfig, Stream, Pipeline or Token"),
        "{message}"
    );
}

// ---- Connection limits and exposure ----

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
