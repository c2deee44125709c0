//! The errors a shard answers requests with ([`Error`]), and the one
//! mapping from each to its wire code ([`Error::code`]).
//!
//! Every failure the connection layer sends back as an `Error` frame, and
//! every failure one shard reports to another in a `Reply`, is an
//! [`Error`]: a variant per kind of failure, carrying what names the
//! problem (the stream, partition, pipeline, stage, delivery, the setting
//! and its value, the engine's error). Its `Display` is the message the
//! client reads; [`Error::code`] is the only place a failure gets its wire
//! code, so that two paths meeting the same failure answer it alike (they
//! did not: a stage output over the batch limit was a `StorageError`
//! where the same publish was an `InvalidRequest`). The connection turns
//! an error into its frame in one place, `Outbox::fail`.
//!
//! Errors cross the mesh between shards, so they are `Send`: an engine
//! error (which may hold an `Rc<str>`) is kept as its message and the kind
//! that decides its code ([`AppendFailed`], [`ReadFailed`]).

use std::fmt;

use hadron_engine::{AppendError, ReadError};
use hadron_wire::{DecodeError, ErrorCode, FrameError, PROTOCOL_VERSION};

use crate::config::{ConfigError, Permission};

/// Delivery ids an `Ack` names in its refusal before it counts the rest.
const REFUSED_NAMED_MAX: usize = 8;
/// Stage acks a `StageAcks` refusal names before it counts the rest.
const UNSETTLED_NAMED_MAX: usize = 4;

/// Why a request failed. `code` gives its wire code, `Display` the message
/// sent with it.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A frame over `frameBytesMax`, or a bad length prefix: framing is
    /// lost and the connection closes.
    Frame(FrameError),
    /// A whole frame that does not decode.
    Decode(DecodeError),
    /// The first frame of a connection is not a `Handshake` (it is `got`).
    HandshakeRequired { got: &'static str },
    /// The client speaks protocol `version`.
    UnsupportedVersion { version: u16 },
    /// The handshake token of `client` is missing or wrong.
    Unauthorized { client: String, token_missing: bool },
    /// A second `Handshake` on a connection.
    HandshakeRepeated,
    /// A client sent `message`, which only a server sends.
    ServerToClient { message: &'static str },
    /// A request (`message`) numbered 0, the id of unsolicited frames.
    RequestIdZero { message: &'static str },
    /// No handshake within `handshakeTimeoutMs`.
    HandshakeTimeout { handshake_timeout_ms: u64 },
    /// Nothing received for `idleTimeoutMs` on an idle connection.
    IdleTimeout { idle_timeout_ms: u64 },
    /// The server holds `connectionsMax` connections already.
    TooManyConnections { connections_max: u32 },
    /// A request over a configured limit; nothing was changed.
    LimitExceeded(Limit),
    /// A cluster change after which the whole metadata, as one `State`
    /// entry of the metadata log, would be `bytes`, over the `max` such
    /// an entry may be (the log compacts into one); nothing was changed.
    MetadataTooLarge { bytes: usize, max: usize },
    /// No stream of that name.
    UnknownStream { stream: String },
    /// The stream has `partitions` partitions, fewer than `partition + 1`.
    UnknownPartition {
        stream: String,
        partition: u32,
        partitions: u32,
    },
    /// The partition is not open on `shard` (a request routed by an older
    /// topology).
    PartitionNotHere {
        stream: String,
        partition: u32,
        shard: u16,
    },
    /// No pipeline of that name.
    UnknownPipeline { pipeline: String },
    /// The pipeline has no run on `partition` on this shard.
    PipelineNotHere { pipeline: String, partition: u32 },
    /// The pipeline has no stage of that name.
    UnknownStage { pipeline: String, stage: String },
    /// A group name of `bytes` bytes: empty or too long.
    GroupName { bytes: usize },
    /// The delivery id names no shard.
    UnknownDelivery { delivery: u64 },
    /// The delivery is not outstanding (settled, expired and sent again,
    /// or never made), or not to this connection.
    NotOutstanding {
        delivery: u64,
        kind: DeliveryKind,
        on_this_connection: bool,
    },
    /// A stage delivery made to another connection.
    NotMadeHere { delivery: u64 },
    /// The ids of an `Ack` that were not outstanding; the others were
    /// acked.
    AcksRefused { deliveries: Vec<u64> },
    /// The acks of a `StageAcks` that were not taken, each with why; the
    /// others were.
    AcksNotTaken { unsettled: Vec<(u64, Error)> },
    /// A publish of no events.
    EmptyPublish,
    /// Event `index` of a publish is not a valid event; nothing was
    /// written.
    InvalidEvent { index: usize, reason: DecodeError },
    /// A stage's output is not a valid event.
    InvalidOutput { reason: DecodeError },
    /// A retry of an execution that has not failed.
    NoFailedExecution {
        pipeline: String,
        partition: u32,
        offset: u64,
    },
    /// The connection's token (named `token`) lacks `permission` (on
    /// `stream`; none for admin), which a `request` needs.
    Forbidden {
        token: String,
        permission: Permission,
        stream: Option<String>,
        request: &'static str,
    },
    /// The connection's token was revoked (or replaced by a new secret).
    TokenRevoked { token: String },
    /// A token create for a name that exists.
    TokenExists { token: String },
    /// A token revoke for a name that does not exist.
    UnknownToken { token: String },
    /// An apply while another is under way.
    ApplyInProgress,
    /// Applied YAML that does not parse or validate; it names the field.
    InvalidConfig(ConfigError),
    /// An apply that gives a stream fewer partitions.
    PartitionsShrink { stream: String, from: u32, to: u32 },
    /// An apply that removes stages with work pending, unforced.
    StageRemovalBusy {
        pipeline: String,
        removed: Vec<String>,
        busy: usize,
    },
    /// An append to `log` failed or was refused.
    Append { log: LogName, failed: AppendFailed },
    /// A read failed.
    Read(ReadFailed),
    /// No event at `offset` (retention took it, or not written yet).
    NoEventAt { offset: u64 },
    /// An event stored in a partition that no longer verifies.
    StoredEventInvalid {
        stream: String,
        partition: u32,
        offset: u64,
        reason: DecodeError,
    },
    /// Writing a file other than a log failed (resources, a new
    /// partition's directory); the message says which.
    Storage(String),
    /// The shard is stopping.
    ShuttingDown,
    /// The shard a request was for has stopped.
    ShardGone { shard: u16 },
    /// A bug in the server; the message says what was unexpected.
    Internal(String),
    /// This node does not lead the replicated partition (or not yet:
    /// it was just elected and is rebuilding its dedup window); `leader`
    /// is where the leader is, when this node knows.
    NotLeader {
        stream: String,
        partition: u32,
        leader: Option<LeaderAt>,
    },
    /// The partition's Raft group has too much proposed and not yet
    /// committed (its followers are slow or gone).
    ReplicationBusy { stream: String, partition: u32 },
    /// This node's replica of the replicated partition could not open
    /// (its `log.meta` lost, say: `why`) and is offline here
    /// (`shard/offline.rs`), or its Raft group stopped here (its log
    /// refused a write); `leader` names another replica to ask, as a
    /// `NotLeader` from a node holding none does.
    ReplicaOffline {
        stream: String,
        partition: u32,
        why: String,
        leader: Option<LeaderAt>,
    },
}

/// Where a partition's leader is: what a `NotLeader` error tells a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderAt {
    /// The leader's `cluster.nodeId`.
    pub node_id: u64,
    /// Its client address.
    pub address: String,
    /// The port of the shard that owns the partition there (0: none).
    pub shard_port: u16,
    /// The term it leads in.
    pub term: u64,
}

impl Error {
    /// The leader a `NotLeader` error names, as the wire carries it.
    pub fn leader_hint(&self) -> Option<hadron_wire::LeaderHint<'_>> {
        match self {
            Error::NotLeader {
                leader: Some(l), ..
            }
            | Error::ReplicaOffline {
                leader: Some(l), ..
            } => Some(hadron_wire::LeaderHint {
                node_id: l.node_id,
                address: &l.address,
                shard_port: l.shard_port,
                term: l.term,
            }),
            _ => None,
        }
    }
}

/// Which kind of delivery an id was settled as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryKind {
    /// An event delivered to a consumer group member.
    Group,
    /// A stage delivered to a stage handler.
    Stage,
}

/// A limit a request would exceed: each names its setting and value.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Limit {
    /// An ack of `ids` ids, over `ackIdsMax`.
    AckIds { ids: usize, max: u32 },
    /// A connection holding `held` subscriptions, `subscriptionsPerConnectionMax`.
    Subscriptions { held: u32, max: u32 },
    /// A partition holding `held` groups, `groupsMax`; `group` was not
    /// created.
    Groups {
        stream: String,
        partition: u32,
        group: String,
        held: usize,
        max: u32,
    },
    /// An apply of `bytes` bytes of YAML, over `applyBytesMax`.
    ApplyBytes { bytes: usize, max: usize },
    /// Resources that would make the server hold `would_hold` of `what`,
    /// over `setting`.
    Resources {
        setting: &'static str,
        max: u32,
        would_hold: u64,
        what: &'static str,
    },
    /// A `Metadata` answer larger than a frame.
    MetadataAnswer { reason: String },
}

/// Which log an append was for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogName {
    /// A stream partition's event log.
    Partition { stream: String, partition: u32 },
    /// A pipeline run's outputs log.
    Outputs { pipeline: String },
}

/// An engine [`AppendError`], kept as what decides its code and its
/// message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendFailed {
    /// An empty, too long or too large batch: the caller's input; nothing
    /// was written.
    Refused(String),
    /// A write or fsync failed earlier; the log refuses writes until the
    /// server restarts.
    Poisoned(String),
    /// The log's data is damaged; writes wait for `hadron repair`.
    Damaged(String),
    /// The disk is full: the log wrote nothing of its last round and
    /// writes it once space is freed, so the append may still be written.
    DiskFull(String),
    /// A failure the engine added after this mapping.
    Other(String),
}

/// An engine [`ReadError`], kept as what decides its code and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadFailed {
    /// Before the log's start or beyond its end.
    OutOfRange(String),
    /// The read failed or found bad data.
    Storage(String),
}

impl Error {
    /// The wire code of this error: the one place a failure gets one.
    pub fn code(&self) -> ErrorCode {
        use Error as E;
        match self {
            E::Frame(e) => e.code(),
            E::Decode(e) => e.code(),
            E::HandshakeRequired { .. } => ErrorCode::HandshakeRequired,
            E::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            E::Unauthorized { .. } => ErrorCode::Unauthorized,
            E::HandshakeTimeout { .. } | E::IdleTimeout { .. } => ErrorCode::Timeout,
            E::TooManyConnections { .. } => ErrorCode::TooManyConnections,
            E::LimitExceeded(_) | E::MetadataTooLarge { .. } => ErrorCode::LimitExceeded,
            E::UnknownStream { .. } => ErrorCode::UnknownStream,
            E::UnknownPartition { .. } | E::PartitionNotHere { .. } => ErrorCode::UnknownPartition,
            E::UnknownPipeline { .. } | E::PipelineNotHere { .. } => ErrorCode::UnknownPipeline,
            E::UnknownStage { .. } => ErrorCode::UnknownStage,
            E::UnknownDelivery { .. }
            | E::NotOutstanding { .. }
            | E::NotMadeHere { .. }
            | E::AcksRefused { .. } => ErrorCode::UnknownDelivery,
            // The first refusal's code: a lone failure keeps its own.
            E::AcksNotTaken { unsettled } => unsettled
                .first()
                .map_or(ErrorCode::Internal, |(_, e)| e.code()),
            E::HandshakeRepeated
            | E::ServerToClient { .. }
            | E::RequestIdZero { .. }
            | E::GroupName { .. }
            | E::EmptyPublish
            | E::NoFailedExecution { .. }
            | E::ApplyInProgress
            | E::UnknownToken { .. } => ErrorCode::InvalidRequest,
            E::Forbidden { .. } | E::TokenRevoked { .. } => ErrorCode::Forbidden,
            E::InvalidEvent { .. } | E::InvalidOutput { .. } => ErrorCode::InvalidEvent,
            E::InvalidConfig(_)
            | E::PartitionsShrink { .. }
            | E::StageRemovalBusy { .. }
            | E::TokenExists { .. } => ErrorCode::InvalidConfig,
            E::Append { failed, .. } => match failed {
                AppendFailed::Refused(_) => ErrorCode::InvalidRequest,
                AppendFailed::Poisoned(_) => ErrorCode::ReadOnly,
                AppendFailed::Damaged(_) => ErrorCode::Damaged,
                AppendFailed::DiskFull(_) => ErrorCode::DiskFull,
                AppendFailed::Other(_) => ErrorCode::StorageError,
            },
            E::Read(ReadFailed::OutOfRange(_)) | E::NoEventAt { .. } => ErrorCode::OffsetOutOfRange,
            E::Read(ReadFailed::Storage(_)) | E::StoredEventInvalid { .. } | E::Storage(_) => {
                ErrorCode::StorageError
            }
            E::ShuttingDown | E::ShardGone { .. } => ErrorCode::ShuttingDown,
            E::Internal(_) => ErrorCode::Internal,
            E::NotLeader { .. } => ErrorCode::NotLeader,
            E::ReplicationBusy { .. } => ErrorCode::Busy,
            // A client follows it to another replica, as a `NotLeader`.
            E::ReplicaOffline { .. } => ErrorCode::NotLeader,
        }
    }

    /// The failure of an append to `log`.
    pub fn append(log: LogName, e: AppendError) -> Error {
        Error::Append {
            log,
            failed: e.into(),
        }
    }
}

impl Limit {
    /// The setting that sets this limit.
    pub fn setting(&self) -> &'static str {
        match self {
            Limit::AckIds { .. } => "ackIdsMax",
            Limit::Subscriptions { .. } => "subscriptionsPerConnectionMax",
            Limit::Groups { .. } => "groupsMax",
            Limit::ApplyBytes { .. } => "applyBytesMax",
            Limit::Resources { setting, .. } => setting,
            Limit::MetadataAnswer { .. } => "frameBytesMax",
        }
    }
}

impl From<Limit> for Error {
    fn from(limit: Limit) -> Error {
        Error::LimitExceeded(limit)
    }
}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Error {
        Error::InvalidConfig(e)
    }
}

impl From<AppendError> for AppendFailed {
    fn from(e: AppendError) -> AppendFailed {
        let message = e.to_string();
        match e {
            AppendError::Empty
            | AppendError::TooManyRecords { .. }
            | AppendError::TooLarge { .. } => AppendFailed::Refused(message),
            AppendError::Poisoned(_) => AppendFailed::Poisoned(message),
            AppendError::Damaged(_) => AppendFailed::Damaged(message),
            AppendError::DiskFull { .. } => AppendFailed::DiskFull(message),
            // A variant added to the engine later: a storage problem until
            // it gets its own line here.
            _ => AppendFailed::Other(message),
        }
    }
}

impl From<ReadError> for Error {
    fn from(e: ReadError) -> Error {
        let message = e.to_string();
        Error::Read(match e {
            ReadError::BeforeStart { .. } | ReadError::BeyondEnd { .. } => {
                ReadFailed::OutOfRange(message)
            }
            _ => ReadFailed::Storage(message),
        })
    }
}

impl std::error::Error for Error {}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Error as E;
        match self {
            E::Frame(e) => write!(f, "{e}"),
            E::Decode(e) => write!(f, "{e}"),
            E::LimitExceeded(limit) => write!(f, "{limit}"),
            E::AcksRefused { deliveries } => {
                let (named, more) = named_and_more(deliveries, REFUSED_NAMED_MAX, u64::to_string);
                write!(
                    f,
                    "deliveries {named}{more} are not outstanding on this connection; the other ids were acked"
                )
            }
            E::AcksNotTaken { unsettled } => {
                let (named, more) = named_and_more(unsettled, UNSETTLED_NAMED_MAX, |(id, e)| {
                    format!("{id} ({e})")
                });
                write!(
                    f,
                    "stage acks {named}{more} were not taken; the other acks were"
                )
            }
            E::Append { log, failed } => write!(f, "{log}: {failed}"),
            E::Read(ReadFailed::OutOfRange(m) | ReadFailed::Storage(m))
            | E::Storage(m)
            | E::Internal(m) => f.write_str(m),
            E::InvalidConfig(e) => write!(f, "{e}"),
            other => other.fmt_request(f),
        }
    }
}

impl Error {
    /// The messages of the errors about a request's own content or its
    /// target.
    fn fmt_request(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Error as E;
        match self {
            E::HandshakeRequired { got } => {
                write!(f, "the first frame must be Handshake, not {got}")
            }
            E::UnsupportedVersion { version } => write!(
                f,
                "protocol version {version} is not supported; this server speaks {PROTOCOL_VERSION}"
            ),
            E::Unauthorized {
                client,
                token_missing,
            } => write!(
                f,
                "the handshake token of client {client:?} is {}; this server requires its configured token",
                if *token_missing { "missing" } else { "wrong" }
            ),
            E::HandshakeRepeated => {
                write!(f, "the handshake was already done on this connection")
            }
            E::ServerToClient { message } => {
                write!(f, "{message} is a server-to-client message")
            }
            E::RequestIdZero { message } => write!(
                f,
                "{message} with request_id 0: 0 is reserved for frames the server sends on its own; number requests from 1"
            ),
            E::HandshakeTimeout {
                handshake_timeout_ms,
            } => write!(
                f,
                "no handshake within handshakeTimeoutMs = {handshake_timeout_ms} ms"
            ),
            E::IdleTimeout { idle_timeout_ms } => write!(
                f,
                "nothing received for idleTimeoutMs = {idle_timeout_ms} ms with no request in flight and no subscription"
            ),
            E::TooManyConnections { connections_max } => write!(
                f,
                "the server holds connectionsMax = {connections_max} connections; retry later or raise connectionsMax"
            ),
            E::MetadataTooLarge { bytes, max } => write!(
                f,
                "after this change the cluster's metadata (resources, placement, nodes) would be {bytes} bytes, over the {max} one entry of its metadata log holds (segmentBytes, at most 16 MiB), so the log could no longer be compacted; nothing was changed: remove resources or make them smaller (a pipeline's YAML, say), or raise segmentBytes"
            ),
            E::UnknownStream { stream } => write!(f, "no stream named {stream:?}"),
            E::UnknownPartition {
                stream,
                partition,
                partitions,
            } => write!(
                f,
                "stream {stream:?} has partitions 0..{partitions}; {partition} does not exist"
            ),
            E::PartitionNotHere {
                stream,
                partition,
                shard,
            } => write!(
                f,
                "partition {partition} of stream {stream:?} is not on shard {shard}"
            ),
            E::UnknownPipeline { pipeline } => write!(f, "no pipeline named {pipeline:?}"),
            E::PipelineNotHere {
                pipeline,
                partition,
            } => write!(
                f,
                "pipeline {pipeline:?} does not run on partition {partition} here"
            ),
            E::UnknownStage { pipeline, stage } => {
                write!(f, "pipeline {pipeline:?} has no stage {stage:?}")
            }
            E::GroupName { .. } => write!(
                f,
                "group names are 1 to {} bytes",
                crate::shard::partition::GROUP_NAME_BYTES_MAX
            ),
            other => other.fmt_settlement(f),
        }
    }

    /// The messages of the errors about deliveries, pipelines, applies and
    /// stored data.
    fn fmt_settlement(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Error as E;
        match self {
            E::UnknownDelivery { delivery } => write!(f, "no delivery {delivery}"),
            E::NotOutstanding {
                delivery,
                kind,
                on_this_connection,
            } => write!(
                f,
                "{}delivery {delivery} is not outstanding{}",
                match kind {
                    DeliveryKind::Group => "",
                    DeliveryKind::Stage => "stage ",
                },
                if *on_this_connection {
                    " on this connection"
                } else {
                    ""
                }
            ),
            E::NotMadeHere { delivery } => write!(
                f,
                "stage delivery {delivery} was not made to this connection"
            ),
            E::EmptyPublish => write!(f, "publish with no events"),
            E::InvalidEvent { index, reason } => {
                write!(f, "event {index} of the publish is invalid: {reason}")
            }
            E::InvalidOutput { reason } => {
                write!(f, "the stage output is not a valid event: {reason}")
            }
            E::NoFailedExecution {
                pipeline,
                partition,
                offset,
            } => write!(
                f,
                "pipeline {pipeline:?} has no failed execution at partition {partition} offset {offset}"
            ),
            E::Forbidden {
                token,
                permission,
                stream,
                request,
            } => {
                let permission = permission.as_str();
                match stream {
                    Some(stream) => write!(
                        f,
                        "forbidden: token {token:?} lacks {permission} on stream {stream:?} (needed for {request})"
                    ),
                    None => write!(
                        f,
                        "forbidden: token {token:?} lacks {permission} (needed for {request})"
                    ),
                }
            }
            E::TokenRevoked { token } => write!(
                f,
                "forbidden: token {token:?} was revoked; this connection has no access"
            ),
            E::TokenExists { token } => write!(
                f,
                "token {token:?} exists; revoke it first to give the name a new secret"
            ),
            E::UnknownToken { token } => write!(f, "no token named {token:?}"),
            E::ApplyInProgress => write!(f, "another apply is in progress; retry"),
            E::PartitionsShrink { stream, from, to } => write!(
                f,
                "Stream {stream:?}: spec.partitions cannot shrink from {from} to {to}"
            ),
            E::StageRemovalBusy {
                pipeline,
                removed,
                busy,
            } => write!(
                f,
                "Pipeline {pipeline:?}: removing stage(s) {removed:?} would drop the work of {busy} unfinished or failed executions; apply with --force to do it anyway"
            ),
            E::NoEventAt { offset } => write!(f, "no event at offset {offset}"),
            E::StoredEventInvalid {
                stream,
                partition,
                offset,
                reason,
            } => write!(
                f,
                "{stream}/{partition}: the stored event at offset {offset} does not verify: {reason}"
            ),
            E::ShuttingDown => write!(f, "the server is shutting down"),
            E::ShardGone { shard } => write!(f, "shard {shard} is gone"),
            E::NotLeader { .. } | E::ReplicationBusy { .. } | E::ReplicaOffline { .. } => {
                self.fmt_replication(f)
            }
            // Written by `fmt` and `fmt_request`.
            other => write!(f, "{other:?}"),
        }
    }
}

/// The first `max` items of `items` written with `name`, joined by commas,
/// and " and N more" for the rest (empty when none).
fn named_and_more<T>(items: &[T], max: usize, name: impl Fn(&T) -> String) -> (String, String) {
    let named: Vec<String> = items.iter().take(max).map(name).collect();
    let more = items.len().saturating_sub(max);
    let tail = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    (named.join(", "), tail)
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let setting = self.setting();
        match self {
            Limit::AckIds { ids, max } => write!(
                f,
                "an ack of {ids} delivery ids exceeds {setting} ({max}); nothing was acked: split it"
            ),
            Limit::Subscriptions { held, max } => write!(
                f,
                "this connection holds {held} subscriptions, the most {setting} ({max}) allows; subscribe on another connection"
            ),
            Limit::Groups {
                stream,
                partition,
                group,
                held,
                max,
            } => write!(
                f,
                "partition {partition} of stream {stream:?} holds {held} consumer groups, the most {setting} ({max}) allows; group {group:?} was not created"
            ),
            Limit::ApplyBytes { bytes, max } => write!(
                f,
                "the apply is {bytes} bytes of YAML; {setting} is {max}: split it into several applies, or raise {setting} in the server's config"
            ),
            Limit::Resources {
                max,
                would_hold,
                what,
                ..
            } => write!(
                f,
                "the server would hold {would_hold} {what}; {setting} is {max}: remove some, or raise {setting} in the server's config"
            ),
            Limit::MetadataAnswer { reason } => write!(
                f,
                "the Metadata answer does not fit in one frame ({setting}): {reason}; name fewer streams"
            ),
        }
    }
}

impl fmt::Display for LogName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogName::Partition { stream, partition } => write!(f, "{stream}/{partition}"),
            LogName::Outputs { pipeline } => write!(f, "pipeline {pipeline}"),
        }
    }
}

impl fmt::Display for AppendFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppendFailed::Refused(m)
            | AppendFailed::Poisoned(m)
            | AppendFailed::Damaged(m)
            | AppendFailed::DiskFull(m)
            | AppendFailed::Other(m) => f.write_str(m),
        }
    }
}

#[cfg(test)]
mod tests;

impl Error {
    /// The messages of the errors about replicated partitions.
    fn fmt_replication(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Error as E;
        match self {
            E::NotLeader {
                stream,
                partition,
                leader,
            } => match leader {
                // Term 0: a replica named by a node that holds none.
                Some(l) if l.term == 0 => write!(
                    f,
                    "{stream}/{partition}: this node holds no replica of it; ask node {} at {}, which does",
                    l.node_id, l.address
                ),
                Some(l) => write!(
                    f,
                    "{stream}/{partition}: this node does not lead it; node {} at {} does (term {})",
                    l.node_id, l.address, l.term
                ),
                None => write!(
                    f,
                    "{stream}/{partition}: this node cannot serve it yet: no leader is known (an election is running), or this node was just elected and is getting ready; retry after a pause"
                ),
            },
            E::ReplicationBusy { stream, partition } => write!(
                f,
                "{stream}/{partition}: too much is proposed and not yet committed by a majority of its replicas (at most {} proposals queued, {} bytes uncommitted); retry later",
                crate::replication::PROPOSALS_QUEUED_MAX,
                crate::replication::UNCOMMITTED_BYTES_MAX
            ),
            E::ReplicaOffline {
                stream,
                partition,
                why,
                leader,
            } => {
                write!(
                    f,
                    "{stream}/{partition}: this node's replica is offline: {why}"
                )?;
                match leader {
                    Some(l) => write!(f, "; ask node {} at {}", l.node_id, l.address),
                    None => write!(f, "; ask another replica"),
                }
            }
            other => write!(f, "{other:?}"),
        }
    }
}
