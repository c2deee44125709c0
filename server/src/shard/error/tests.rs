//! The tests of [`super::Error`]: every variant's code, the engine's
//! failures' codes, and the messages clients read.

use super::*;

/// A variant's position in the declaration: the exhaustive match makes
/// a new variant fail to compile here until it is numbered, and
/// `every_error_has_its_code` then fails until it has a row.
fn variant(e: &Error) -> usize {
    use Error as E;
    match e {
        E::Frame(_) => 0,
        E::Decode(_) => 1,
        E::HandshakeRequired { .. } => 2,
        E::UnsupportedVersion { .. } => 3,
        E::Unauthorized { .. } => 4,
        E::HandshakeRepeated => 5,
        E::ServerToClient { .. } => 6,
        E::RequestIdZero { .. } => 7,
        E::HandshakeTimeout { .. } => 8,
        E::IdleTimeout { .. } => 9,
        E::TooManyConnections { .. } => 10,
        E::LimitExceeded(_) => 11,
        E::UnknownStream { .. } => 12,
        E::UnknownPartition { .. } => 13,
        E::PartitionNotHere { .. } => 14,
        E::UnknownPipeline { .. } => 15,
        E::PipelineNotHere { .. } => 16,
        E::UnknownStage { .. } => 17,
        E::GroupName { .. } => 18,
        E::UnknownDelivery { .. } => 19,
        E::NotOutstanding { .. } => 20,
        E::NotMadeHere { .. } => 21,
        E::AcksRefused { .. } => 22,
        E::AcksNotTaken { .. } => 23,
        E::EmptyPublish => 24,
        E::InvalidEvent { .. } => 25,
        E::InvalidOutput { .. } => 26,
        E::NoFailedExecution { .. } => 27,
        E::ApplyInProgress => 28,
        E::InvalidConfig(_) => 29,
        E::PartitionsShrink { .. } => 30,
        E::StageRemovalBusy { .. } => 31,
        E::Append { .. } => 32,
        E::Read(_) => 33,
        E::NoEventAt { .. } => 34,
        E::StoredEventInvalid { .. } => 35,
        E::Storage(_) => 36,
        E::ShuttingDown => 37,
        E::ShardGone { .. } => 38,
        E::Internal(_) => 39,
        E::Forbidden { .. } => 40,
        E::TokenRevoked { .. } => 41,
        E::TokenExists { .. } => 42,
        E::UnknownToken { .. } => 43,
        E::NotLeader { .. } => 44,
        E::ReplicationBusy { .. } => 45,
        E::MetadataTooLarge { .. } => 46,
        E::ReplicaOffline { .. } => 47,
    }
}
const VARIANTS: usize = 48;

fn bad_event() -> DecodeError {
    DecodeError::TooLarge { have: 9, max: 8 }
}

fn partition_log() -> LogName {
    LogName::Partition {
        stream: "orders".into(),
        partition: 2,
    }
}

fn stage_not_outstanding(delivery: u64) -> Error {
    Error::NotOutstanding {
        delivery,
        kind: DeliveryKind::Stage,
        on_this_connection: false,
    }
}

fn stream(name: &str) -> String {
    name.to_owned()
}

/// One of each variant (some more than once, where the code depends on
/// the data) and the code it must be answered with.
fn table() -> Vec<(Error, ErrorCode)> {
    let mut rows = connection_and_target_rows();
    rows.extend(settlement_and_storage_rows());
    rows.extend(token_rows());
    rows.extend(replication_rows());
    rows
}

/// The rows of the errors about replicated partitions.
fn replication_rows() -> Vec<(Error, ErrorCode)> {
    use ErrorCode as C;
    vec![
        (
            Error::NotLeader {
                stream: "s".into(),
                partition: 0,
                leader: None,
            },
            C::NotLeader,
        ),
        (
            Error::ReplicationBusy {
                stream: "s".into(),
                partition: 0,
            },
            C::Busy,
        ),
        (
            Error::MetadataTooLarge {
                bytes: 17 << 20,
                max: 16 << 20,
            },
            C::LimitExceeded,
        ),
        (
            Error::ReplicaOffline {
                stream: "s".into(),
                partition: 0,
                why: "log.meta lost".into(),
                leader: None,
            },
            C::NotLeader,
        ),
    ]
}

/// The rows of the errors about tokens.
fn token_rows() -> Vec<(Error, ErrorCode)> {
    use ErrorCode as C;
    vec![
        (
            Error::Forbidden {
                token: "t".into(),
                permission: crate::config::Permission::Publish,
                stream: Some(stream("s")),
                request: "Publish",
            },
            C::Forbidden,
        ),
        (Error::TokenRevoked { token: "t".into() }, C::Forbidden),
        (Error::TokenExists { token: "t".into() }, C::InvalidConfig),
        (Error::UnknownToken { token: "t".into() }, C::InvalidRequest),
    ]
}

/// The rows of the errors about a connection and a request's target.
fn connection_and_target_rows() -> Vec<(Error, ErrorCode)> {
    use ErrorCode as C;
    vec![
        (
            Error::Frame(FrameError::Empty { offset: 0 }),
            C::FrameTooLarge,
        ),
        (Error::Decode(bad_event()), C::FrameTooLarge),
        (
            Error::Decode(DecodeError::MissingBody { request_id: 3 }),
            C::InvalidRequest,
        ),
        (
            Error::HandshakeRequired { got: "Publish" },
            C::HandshakeRequired,
        ),
        (
            Error::UnsupportedVersion { version: 99 },
            C::UnsupportedVersion,
        ),
        (
            Error::Unauthorized {
                client: "c".into(),
                token_missing: true,
            },
            C::Unauthorized,
        ),
        (Error::HandshakeRepeated, C::InvalidRequest),
        (
            Error::ServerToClient { message: "AckOk" },
            C::InvalidRequest,
        ),
        (Error::RequestIdZero { message: "Fetch" }, C::InvalidRequest),
        (
            Error::HandshakeTimeout {
                handshake_timeout_ms: 5,
            },
            C::Timeout,
        ),
        (Error::IdleTimeout { idle_timeout_ms: 5 }, C::Timeout),
        (
            Error::TooManyConnections { connections_max: 1 },
            C::TooManyConnections,
        ),
        (Limit::AckIds { ids: 4, max: 3 }.into(), C::LimitExceeded),
        (
            Error::UnknownStream {
                stream: stream("s"),
            },
            C::UnknownStream,
        ),
        (
            Error::UnknownPartition {
                stream: stream("s"),
                partition: 4,
                partitions: 4,
            },
            C::UnknownPartition,
        ),
        (
            Error::PartitionNotHere {
                stream: stream("s"),
                partition: 1,
                shard: 0,
            },
            C::UnknownPartition,
        ),
        (
            Error::UnknownPipeline {
                pipeline: "p".into(),
            },
            C::UnknownPipeline,
        ),
        (
            Error::PipelineNotHere {
                pipeline: "p".into(),
                partition: 0,
            },
            C::UnknownPipeline,
        ),
        (
            Error::UnknownStage {
                pipeline: "p".into(),
                stage: "x".into(),
            },
            C::UnknownStage,
        ),
        (Error::GroupName { bytes: 0 }, C::InvalidRequest),
        (Error::UnknownDelivery { delivery: 1 }, C::UnknownDelivery),
        (stage_not_outstanding(1), C::UnknownDelivery),
        (Error::NotMadeHere { delivery: 1 }, C::UnknownDelivery),
    ]
}

/// The rows of the errors about deliveries, applies and stored data.
fn settlement_and_storage_rows() -> Vec<(Error, ErrorCode)> {
    use ErrorCode as C;
    let config = crate::config::parse_documents("kind: Nothing\n").unwrap_err();
    vec![
        (
            Error::AcksRefused {
                deliveries: vec![1],
            },
            C::UnknownDelivery,
        ),
        (
            Error::AcksNotTaken {
                unsettled: vec![(
                    1,
                    Error::InvalidOutput {
                        reason: bad_event(),
                    },
                )],
            },
            C::InvalidEvent,
        ),
        (Error::AcksNotTaken { unsettled: vec![] }, C::Internal),
        (Error::EmptyPublish, C::InvalidRequest),
        (
            Error::InvalidEvent {
                index: 0,
                reason: bad_event(),
            },
            C::InvalidEvent,
        ),
        (
            Error::InvalidOutput {
                reason: bad_event(),
            },
            C::InvalidEvent,
        ),
        (
            Error::NoFailedExecution {
                pipeline: "p".into(),
                partition: 0,
                offset: 7,
            },
            C::InvalidRequest,
        ),
        (Error::ApplyInProgress, C::InvalidRequest),
        (config.into(), C::InvalidConfig),
        (
            Error::PartitionsShrink {
                stream: stream("s"),
                from: 4,
                to: 2,
            },
            C::InvalidConfig,
        ),
        (
            Error::StageRemovalBusy {
                pipeline: "p".into(),
                removed: vec!["x".into()],
                busy: 1,
            },
            C::InvalidConfig,
        ),
        (
            Error::append(partition_log(), AppendError::Empty),
            C::InvalidRequest,
        ),
        (
            Error::append(partition_log(), AppendError::Poisoned("EIO".into())),
            C::ReadOnly,
        ),
        (
            Error::append(partition_log(), AppendError::Damaged("byte 4096".into())),
            C::Damaged,
        ),
        (
            ReadError::BeyondEnd { offset: 9, next: 3 }.into(),
            C::OffsetOutOfRange,
        ),
        (
            ReadError::Io(std::io::Error::other("EIO")).into(),
            C::StorageError,
        ),
        (Error::NoEventAt { offset: 3 }, C::OffsetOutOfRange),
        (
            Error::StoredEventInvalid {
                stream: stream("s"),
                partition: 0,
                offset: 3,
                reason: bad_event(),
            },
            C::StorageError,
        ),
        (Error::Storage("ENOSPC".into()), C::StorageError),
        (Error::ShuttingDown, C::ShuttingDown),
        (Error::ShardGone { shard: 3 }, C::ShuttingDown),
        (Error::Internal("bug".into()), C::Internal),
    ]
}

#[test]
fn every_error_has_its_code() {
    let table = table();
    let mut seen = [false; VARIANTS];
    for (e, code) in &table {
        assert_eq!(e.code(), *code, "{e:?}");
        assert!(!e.to_string().is_empty(), "{e:?} has no message");
        seen[variant(e)] = true;
    }
    let missing: Vec<usize> = (0..VARIANTS).filter(|&i| !seen[i]).collect();
    assert!(missing.is_empty(), "variants without a row: {missing:?}");
}

/// A partition and a pipeline run meet the same append failure with the
/// same code (they disagreed once: a stage output over the batch limit
/// was a `StorageError` where the same publish was an `InvalidRequest`).
#[test]
fn each_append_failure_has_one_code() {
    let cases = [
        (AppendError::Empty, ErrorCode::InvalidRequest),
        (
            AppendError::TooManyRecords { count: 70_000 },
            ErrorCode::InvalidRequest,
        ),
        (
            AppendError::TooLarge {
                bytes: 5 << 20,
                max: 4 << 20,
            },
            ErrorCode::InvalidRequest,
        ),
        (AppendError::Poisoned("EIO".into()), ErrorCode::ReadOnly),
        (AppendError::Damaged("byte 4096".into()), ErrorCode::Damaged),
        (
            AppendError::DiskFull {
                path: "/data/events/0/00000000000000000000.log".into(),
                needed: 4 << 20,
                why: "No space left on device (os error 28)".into(),
            },
            ErrorCode::DiskFull,
        ),
    ];
    for (e, code) in cases {
        let message = e.to_string();
        let outputs = LogName::Outputs {
            pipeline: "p".into(),
        };
        for log in [partition_log(), outputs] {
            let failed = Error::append(log, e.clone());
            assert_eq!(failed.code(), code, "{failed}");
            assert!(failed.to_string().ends_with(&message), "{failed}");
        }
    }
}

#[test]
fn messages_name_what_is_wrong() {
    let cases: [(Error, &str); 8] = [
        (
            Error::UnknownPartition {
                stream: stream("orders"),
                partition: 4,
                partitions: 4,
            },
            "stream \"orders\" has partitions 0..4; 4 does not exist",
        ),
        (
            Error::append(partition_log(), AppendError::Poisoned("EIO".into())),
            "orders/2: log refuses writes: EIO; restart to recover what is durable",
        ),
        (
            Error::NotOutstanding {
                delivery: 7,
                kind: DeliveryKind::Group,
                on_this_connection: true,
            },
            "delivery 7 is not outstanding on this connection",
        ),
        (
            stage_not_outstanding(7),
            "stage delivery 7 is not outstanding",
        ),
        (
            Error::AcksRefused {
                deliveries: (1..=10).collect(),
            },
            "deliveries 1, 2, 3, 4, 5, 6, 7, 8 and 2 more are not outstanding on this connection; the other ids were acked",
        ),
        (
            Error::AcksNotTaken {
                unsettled: vec![(5, stage_not_outstanding(5))],
            },
            "stage acks 5 (stage delivery 5 is not outstanding) were not taken; the other acks were",
        ),
        (
            Limit::Resources {
                setting: "streamsMax",
                max: 256,
                would_hold: 257,
                what: "streams",
            }
            .into(),
            "the server would hold 257 streams; streamsMax is 256: remove some, or raise streamsMax in the server's config",
        ),
        (
            Limit::Groups {
                stream: stream("s"),
                partition: 0,
                group: "g".into(),
                held: 3,
                max: 3,
            }
            .into(),
            "partition 0 of stream \"s\" holds 3 consumer groups, the most groupsMax (3) allows; group \"g\" was not created",
        ),
    ];
    for (e, message) in cases {
        assert_eq!(e.to_string(), message);
    }
}

#[test]
fn each_limit_names_its_setting_in_its_message() {
    let limits = [
        Limit::AckIds { ids: 4, max: 3 },
        Limit::Subscriptions { held: 2, max: 2 },
        Limit::ApplyBytes { bytes: 9, max: 8 },
        Limit::MetadataAnswer {
            reason: "too large".into(),
        },
    ];
    for limit in limits {
        let e = Error::from(limit.clone());
        assert_eq!(e.code(), ErrorCode::LimitExceeded);
        assert!(e.to_string().contains(limit.setting()), "{e}");
    }
}

/// An offline replica's refusal says why and names another replica, which
/// the wire carries as a `NotLeader` hint a client follows.
#[test]
fn an_offline_replica_names_its_reason_and_another_replica() {
    let leader = LeaderAt {
        node_id: 3,
        address: "127.0.0.1:7003".into(),
        shard_port: 0,
        term: 0,
    };
    let e = Error::ReplicaOffline {
        stream: stream("orders"),
        partition: 2,
        why: "log.meta lost".into(),
        leader: Some(leader),
    };
    assert_eq!(
        e.to_string(),
        "orders/2: this node's replica is offline: log.meta lost; ask node 3 at 127.0.0.1:7003"
    );
    assert_eq!(e.code(), ErrorCode::NotLeader);
    let hint = e.leader_hint().map(|h| (h.node_id, h.address.to_owned()));
    assert_eq!(hint, Some((3, "127.0.0.1:7003".to_owned())));
}

/// A `NotLeader` says what the node it names is: the leader (with its
/// term), or, with term 0, a replica named by a node that holds none; and
/// without one, that no leader is known or this node is getting ready.
#[test]
fn not_leader_says_what_the_named_node_is() {
    let at = |term| LeaderAt {
        node_id: 2,
        address: "127.0.0.1:7002".into(),
        shard_port: 0,
        term,
    };
    let refusal = |leader| Error::NotLeader {
        stream: "orders".into(),
        partition: 1,
        leader,
    };
    let text = refusal(Some(at(7))).to_string();
    assert!(
        text.contains("node 2 at 127.0.0.1:7002 does (term 7)"),
        "{text}"
    );
    let text = refusal(Some(at(0))).to_string();
    assert!(
        text.contains("holds no replica of it; ask node 2 at 127.0.0.1:7002"),
        "{text}"
    );
    let text = refusal(None).to_string();
    assert!(text.contains("just elected and is getting ready"), "{text}");
}
