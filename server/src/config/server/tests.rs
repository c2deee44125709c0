//! Unit tests of the server settings: defaults, the token, shard ports,
//! fsync modes and the range checks.

use super::*;

#[test]
fn defaults_are_the_documented_ones_and_valid() {
    let c = ServerConfig::default();
    assert_eq!(c.data_dir, PathBuf::from("./hadron-data"));
    assert_eq!(c.listen.to_string(), "127.0.0.1:7000");
    assert!(c.shards >= 1);
    assert!(c.shard_ports);
    assert_eq!(c.fsync, FsyncPolicy::Always);
    assert_eq!(c.segment_bytes, 128 << 20);
    assert_eq!(c.segment_preallocate_bytes, 4 << 20);
    assert_eq!(c.io_memory_bytes, 8 << 20);
    assert_eq!(c.frame_bytes_max, hadron_wire::FRAME_BYTES_MAX);
    assert_eq!(c.dedup_window_ms, 120_000);
    assert_eq!(
        (
            c.groups_max,
            c.ack_ids_max,
            c.subscriptions_per_connection_max
        ),
        (1024, 65_536, 256)
    );
    assert_eq!(c.retention, RetentionSpec::default());
    assert_eq!(c.validate(), Ok(()));
    assert_eq!(ServerConfigDoc::default().resolve(), Ok(c));
}

#[test]
fn a_token_is_checked_whole_and_never_printed() {
    let token = Token::new("s3cret");
    assert!(token.matches("s3cret"));
    for wrong in ["", "s3cre", "s3cret!", "S3cret", "s3creu", "x"] {
        assert!(!token.matches(wrong), "{wrong:?} matched");
    }
    let c = ServerConfig {
        token: Some(token),
        ..ServerConfig::default()
    };
    assert_eq!(c.validate(), Ok(()));
    assert!(!format!("{c:?}").contains("s3cret"));
    let empty = ServerConfig {
        token: Some(Token::new("")),
        ..ServerConfig::default()
    };
    assert_eq!(empty.validate().unwrap_err().path, "token");
    let long = ServerConfig {
        token: Some(Token::new("x".repeat(TOKEN_BYTES_MAX + 1))),
        ..ServerConfig::default()
    };
    assert_eq!(long.validate().unwrap_err().path, "token");
}

#[test]
fn shard_ports_follow_the_listen_port() {
    let mut c = ServerConfig::default();
    assert_eq!(c.shard_port(0), Some(7001));
    assert_eq!(c.shard_port(3), Some(7004));
    c.shard_ports = false;
    assert_eq!(c.shard_port(0), None);
}

#[test]
fn fsync_modes() {
    let doc = |fsync, interval| ServerConfigDoc {
        fsync,
        fsync_interval_ms: interval,
        ..ServerConfigDoc::default()
    };
    assert_eq!(
        doc(Some(FsyncMode::Interval), None)
            .resolve()
            .unwrap()
            .fsync,
        FsyncPolicy::Interval { interval_ms: 100 }
    );
    assert_eq!(
        doc(Some(FsyncMode::Interval), Some(7))
            .resolve()
            .unwrap()
            .fsync,
        FsyncPolicy::Interval { interval_ms: 7 }
    );
    assert_eq!(
        doc(Some(FsyncMode::Never), None).resolve().unwrap().fsync,
        FsyncPolicy::Never
    );
    let e = doc(Some(FsyncMode::Always), Some(7)).resolve().unwrap_err();
    assert_eq!(e.path, "fsyncIntervalMs");
    let e = doc(None, Some(7)).resolve().unwrap_err();
    assert_eq!(e.path, "fsyncIntervalMs");
    let e = doc(Some(FsyncMode::Interval), Some(0))
        .resolve()
        .unwrap_err();
    assert_eq!(e.path, "fsyncIntervalMs");
    assert_eq!(
        FsyncPolicy::Interval { interval_ms: 5 }.durability(),
        hadron_engine::Durability::Interval(std::time::Duration::from_millis(5))
    );
}

#[test]
fn limits_are_checked_with_the_field_named() {
    let base = ServerConfig::default();
    let with = |change: fn(&mut ServerConfig)| {
        let mut config = base.clone();
        change(&mut config);
        config
    };
    let cases: Vec<(ServerConfig, &str)> = vec![
        (with(|c| c.shards = 0), "shards"),
        (with(|c| c.shards = SHARDS_MAX + 1), "shards"),
        (with(|c| c.segment_bytes = 4096), "segmentBytes"),
        (with(|c| c.segment_bytes = (1 << 20) + 1), "segmentBytes"),
        (
            with(|c| c.segment_preallocate_bytes = 4096),
            "segmentPreallocateBytes",
        ),
        (
            with(|c| c.segment_preallocate_bytes = c.segment_bytes + 4096),
            "segmentPreallocateBytes",
        ),
        (
            with(|c| c.segment_preallocate_bytes = (1 << 20) + 512),
            "segmentPreallocateBytes",
        ),
        (with(|c| c.io_memory_bytes = 1024), "ioMemoryBytes"),
        (with(|c| c.frame_bytes_max = 100), "frameBytesMax"),
        (with(|c| c.dedup_window_ms = u64::MAX), "dedupWindowMs"),
        (with(|c| c.dedup_keys_max = 0), "dedupKeysMax"),
        (with(|c| c.groups_max = 0), "groupsMax"),
        (with(|c| c.groups_max = GROUPS_MAX_MAX + 1), "groupsMax"),
        (with(|c| c.ack_ids_max = ACK_IDS_MAX_MAX + 1), "ackIdsMax"),
        (
            with(|c| c.subscriptions_per_connection_max = 0),
            "subscriptionsPerConnectionMax",
        ),
        (with(|c| c.data_dir = PathBuf::new()), "dataDir"),
        (
            with(|c| c.listen = "127.0.0.1:0".parse().unwrap()),
            "listen",
        ),
        (
            with(|c| {
                c.listen = "127.0.0.1:65535".parse().unwrap();
                c.shards = 1;
            }),
            "listen",
        ),
    ];
    for (config, path) in cases {
        let e = config.validate().unwrap_err();
        assert_eq!(e.path, path, "{e}");
        assert!(
            e.to_string()
                .starts_with(&format!("ServerConfig: {path}: ")),
            "{e}"
        );
    }
    let ephemeral = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        shard_ports: false,
        ..base
    };
    assert_eq!(ephemeral.validate(), Ok(()));
}

/// `segmentPreallocateBytes` is read from the file; left out, it is 4 MiB,
/// or the segment when that is smaller, so small segments need no step set.
#[test]
fn segment_preallocate_bytes_defaults_to_4_mib_or_a_smaller_segment() {
    let parse = |yaml: &str| crate::config::parse_config_file(yaml).map(|(c, _)| c);
    let read = parse("segmentPreallocateBytes: 16777216\n").unwrap();
    assert_eq!(read.segment_preallocate_bytes, 16 << 20);
    let small = parse("segmentBytes: 1048576\n").unwrap();
    assert_eq!(small.segment_preallocate_bytes, 1 << 20);
    let e = parse("segmentBytes: 1048576\nsegmentPreallocateBytes: 2097152\n").unwrap_err();
    assert!(
        e.to_string().contains(
            "segmentPreallocateBytes: 2097152 is out of range; allowed: 65536 to 1048576"
        ),
        "{e}"
    );
}

/// `metricsListen` is read from the file, off by default, and refused (by
/// name) on the client port or a shard port of the same address.
#[test]
fn metrics_listen_is_read_and_must_not_take_a_server_port() {
    let (config, _) = crate::config::parse_config_file("metricsListen: 127.0.0.1:9464\n").unwrap();
    assert_eq!(
        config.metrics_listen,
        Some("127.0.0.1:9464".parse().unwrap())
    );
    assert_eq!(ServerConfig::default().metrics_listen, None);
    let on = |addr: &str, shards: u16| ServerConfig {
        metrics_listen: Some(addr.parse().unwrap()),
        shards,
        ..ServerConfig::default()
    };
    for taken in ["127.0.0.1:7000", "127.0.0.1:7002", "0.0.0.0:7001"] {
        let err = on(taken, 2).validate().unwrap_err();
        assert_eq!(err.path, "metricsListen", "{taken}");
        assert!(
            err.to_string().contains("client port or a shard port"),
            "{err}"
        );
    }
    for free in ["127.0.0.1:7003", "127.0.0.2:7000", "127.0.0.1:0"] {
        assert_eq!(on(free, 2).validate(), Ok(()), "{free}");
    }
}
