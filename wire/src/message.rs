//! Typed messages: one plain struct per `Body` member, borrowing strings and
//! byte vectors from the frame they were decoded from (or from the caller,
//! when encoding), and the `Encoder` that turns a `Message` into a complete
//! frame (length prefix + flatbuffer).
//!
//! Invariants:
//! - `decode(encode(m)) == m` for every message (tested), because absent
//!   optional strings, vectors and byte vectors read back as empty and the
//!   builder omits empty ones (the `Publish` writer, `write_publish`,
//!   writes an empty events vector, which reads back as empty too).
//! - `Message::from_verified` is only ever given a verified `Frame`, so the
//!   generated accessors it calls cannot read out of bounds.
//! - Event byte vectors are opaque here; see `crate::event`.

use core::fmt;

use bytes::BufMut;
use flatbuffers::{FlatBufferBuilder, WIPOffset};

use crate::ErrorCode;
use crate::frame::{DecodeError, LENGTH_PREFIX_BYTES, Limits};
use crate::generated as fb;

mod tokens;
mod write_publish;

pub use tokens::{TokenCreate, TokenInfo, TokenListOk, TokenRevoke, TokenScope};

/// First message on a connection, client to server.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Handshake<'a> {
    pub version: u16,
    pub token: &'a str,
    pub client_name: &'a str,
}

/// The server's answer to `Handshake`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HandshakeOk<'a> {
    pub version: u16,
    /// At least 1 (checked by `decode`).
    pub shards: u16,
    /// Empty, or exactly `shards` ports indexed by shard id (checked by
    /// `decode`).
    pub shard_ports: Vec<u16>,
    /// `crate::PLACEMENT_NAME`.
    pub placement: &'a str,
}

/// Append events (each a finished `Event` flatbuffer) to a partition.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Publish<'a> {
    pub stream: &'a str,
    pub partition: u32,
    pub events: Vec<&'a [u8]>,
}

/// Where one published event landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PublishResult {
    pub offset: u64,
    /// True when the event was already present; `offset` is the original's.
    pub duplicate: bool,
}

/// The answer to `Publish`, sent once the events are durable.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PublishOk {
    pub partition: u32,
    pub first_offset: u64,
    pub last_offset: u64,
    /// One per published event, in order.
    pub results: Vec<PublishResult>,
}

/// Read events from a partition.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fetch<'a> {
    pub stream: &'a str,
    pub partition: u32,
    pub offset: u64,
    pub max_bytes: u32,
}

/// One stored event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record<'a> {
    pub offset: u64,
    pub event: &'a [u8],
}

/// The answer to `Fetch`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FetchOk<'a> {
    pub partition: u32,
    pub next_offset: u64,
    pub records: Vec<Record<'a>>,
}

/// Where a consumer group without a committed offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartPoint {
    #[default]
    Beginning,
    Latest,
    Offset(u64),
}

/// Join a consumer group.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Subscribe<'a> {
    pub stream: &'a str,
    pub group: &'a str,
    pub durable: bool,
    pub start: StartPoint,
    pub max_in_flight: u32,
}

/// The answer to `Subscribe`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubscribeOk {
    pub subscription_id: u64,
    pub partitions: Vec<u32>,
}

/// Server push: one event for a subscription.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Delivery<'a> {
    pub subscription_id: u64,
    pub delivery_id: u64,
    pub stream: &'a str,
    pub partition: u32,
    pub offset: u64,
    pub attempt: u32,
    pub event: &'a [u8],
}

/// Acknowledge subscription deliveries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ack {
    pub delivery_ids: Vec<u64>,
}

/// Reject a subscription delivery.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Nack<'a> {
    pub delivery_id: u64,
    pub message: &'a str,
}

/// Apply YAML resources.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Apply<'a> {
    pub yaml: &'a str,
    /// Allow removing pipeline stages that still have unfinished work.
    pub force: bool,
}

/// Retry failed pipeline executions: one, or all of the pipeline's.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PipelineRetry<'a> {
    pub pipeline: &'a str,
    /// `Some((partition, root offset))` for one execution; `None` for all.
    pub execution: Option<(u32, u64)>,
}

/// The answer to `Apply`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ApplyOk<'a> {
    pub summary: Vec<&'a str>,
}

/// The answer to `Status`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StatusOk<'a> {
    pub json: &'a str,
}

/// An `Error` body: a failed request, or a connection-level problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReply<'a> {
    pub code: ErrorCode,
    pub message: &'a str,
    /// With `ErrorCode::NotLeader`: the partition's leader, when known.
    pub leader: Option<LeaderHint<'a>>,
}

/// Where a partition's leader is: in a `NotLeader` error and in
/// `PartitionInfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LeaderHint<'a> {
    /// The leader's `cluster.nodeId` (1 on a server with no cluster).
    pub node_id: u64,
    /// The node's client address, `host:port`.
    pub address: &'a str,
    /// The port of the shard holding the partition there; 0: none.
    pub shard_port: u16,
    /// The term it leads in; 0 when not known.
    pub term: u64,
}

impl<'a> LeaderHint<'a> {
    fn from_fb(b: &fb::LeaderHint<'a>) -> LeaderHint<'a> {
        LeaderHint {
            node_id: b.node_id(),
            address: b.address(),
            shard_port: b.shard_port(),
            term: b.term(),
        }
    }

    fn build(&self, fbb: &mut Fbb) -> WIPOffset<fb::LeaderHint<'static>> {
        let args = fb::LeaderHintArgs {
            node_id: self.node_id,
            address: Some(fbb.create_string(self.address)),
            shard_port: self.shard_port,
            term: self.term,
        };
        fb::LeaderHint::create(fbb, &args)
    }
}

/// Register as a handler of one pipeline stage.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PipelineSubscribe<'a> {
    pub pipeline: &'a str,
    pub stage: &'a str,
    pub max_in_flight: u32,
}

/// The output event of one dependency stage.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StageInput<'a> {
    pub stage: &'a str,
    pub event: &'a [u8],
}

/// Server push: run one stage of one execution.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StageDelivery<'a> {
    pub delivery_id: u64,
    pub pipeline: &'a str,
    pub stage: &'a str,
    pub partition: u32,
    pub offset: u64,
    pub attempt: u32,
    pub root: &'a [u8],
    pub inputs: Vec<StageInput<'a>>,
}

/// A stage succeeded with `output`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StageAck<'a> {
    pub delivery_id: u64,
    pub output: &'a [u8],
}

/// A stage failed; it will be retried.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StageNack<'a> {
    pub delivery_id: u64,
    pub message: &'a str,
}

/// Several stage acks in one request, each settled as if sent alone.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StageAcks<'a> {
    pub acks: Vec<StageAck<'a>>,
}

/// Move a replicated partition's replicas to `voters` (admin).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PartitionMove<'a> {
    pub stream: &'a str,
    pub partition: u32,
    pub voters: Vec<u64>,
}

/// Rebalance the cluster's replicated partitions (admin): move replicas
/// off the nodes in `drain`, then even out replicas and leaders; at most
/// `moves_max` moves (0: the server's default); `dry_run` only plans.
/// `change_id` (0: none) is drawn by the client and sent again with a
/// resend, so that a rebalance applied already is answered as it was.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rebalance {
    pub drain: Vec<u64>,
    pub moves_max: u32,
    pub dry_run: bool,
    pub change_id: u64,
}

/// Add node `id` to the running cluster (admin).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeAdd<'a> {
    pub id: u64,
    pub address: &'a str,
    pub peer_address: &'a str,
}

/// Ask for the server's streams (with each partition's owning shard) and
/// pipelines. Empty `streams`: all of them; otherwise only the streams
/// named and the pipelines reading from them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Metadata<'a> {
    pub streams: Vec<&'a str>,
}

/// One partition, the shard that owns it, and its leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PartitionInfo<'a> {
    pub partition: u32,
    /// Below `MetadataOk::shards` (checked by `decode`).
    pub shard: u16,
    /// The leader as the answering node knows it; `None` when not known.
    pub leader: Option<LeaderHint<'a>>,
}

/// One stream and its partitions.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StreamInfo<'a> {
    pub name: &'a str,
    /// Every partition in order: `partitions[i].partition == i` (checked by
    /// `decode`), so the partition count is the length.
    pub partitions: Vec<PartitionInfo<'a>>,
}

/// One pipeline: its source stream and its stages in declared order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PipelineInfo<'a> {
    pub name: &'a str,
    pub source_stream: &'a str,
    pub stages: Vec<&'a str>,
}

/// The answer to `Metadata`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MetadataOk<'a> {
    /// At least 1 (checked by `decode`).
    pub shards: u16,
    /// Empty, or exactly `shards` ports indexed by shard id (checked by
    /// `decode`).
    pub shard_ports: Vec<u16>,
    /// `crate::PLACEMENT_NAME`.
    pub placement: &'a str,
    pub streams: Vec<StreamInfo<'a>>,
    pub pipelines: Vec<PipelineInfo<'a>>,
    /// The cluster's nodes in id order; empty from a server with no
    /// cluster or a cluster of one. At most `METADATA_NODES_MAX` (checked
    /// by `decode`).
    pub nodes: Vec<NodeInfo<'a>>,
}

/// Most nodes a `MetadataOk` lists: a cluster's node limit
/// (`CLUSTER_NODES_MAX` in the server's config).
pub const METADATA_NODES_MAX: usize = 64;

/// One node of a cluster, in `MetadataOk`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NodeInfo<'a> {
    /// The node's `cluster.nodeId`.
    pub node_id: u64,
    /// The node's client address, `host:port`.
    pub address: &'a str,
}

/// Every frame body.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    Handshake(Handshake<'a>),
    HandshakeOk(HandshakeOk<'a>),
    Publish(Publish<'a>),
    PublishOk(PublishOk),
    Fetch(Fetch<'a>),
    FetchOk(FetchOk<'a>),
    Subscribe(Subscribe<'a>),
    SubscribeOk(SubscribeOk),
    Delivery(Delivery<'a>),
    Ack(Ack),
    Nack(Nack<'a>),
    AckOk,
    Apply(Apply<'a>),
    ApplyOk(ApplyOk<'a>),
    Status,
    StatusOk(StatusOk<'a>),
    Error(ErrorReply<'a>),
    PipelineSubscribe(PipelineSubscribe<'a>),
    StageDelivery(StageDelivery<'a>),
    StageAck(StageAck<'a>),
    StageNack(StageNack<'a>),
    PipelineRetry(PipelineRetry<'a>),
    StageAcks(StageAcks<'a>),
    Metadata(Metadata<'a>),
    MetadataOk(MetadataOk<'a>),
    TokenCreate(TokenCreate<'a>),
    TokenList,
    TokenListOk(TokenListOk<'a>),
    TokenRevoke(TokenRevoke<'a>),
    PartitionMove(PartitionMove<'a>),
    NodeAdd(NodeAdd<'a>),
    /// Remove node `id` from the running cluster (admin).
    NodeRemove(u64),
    Rebalance(Rebalance),
}

impl Message<'_> {
    /// The body's name as in the schema, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Handshake(_) => "Handshake",
            Message::HandshakeOk(_) => "HandshakeOk",
            Message::Publish(_) => "Publish",
            Message::PublishOk(_) => "PublishOk",
            Message::Fetch(_) => "Fetch",
            Message::FetchOk(_) => "FetchOk",
            Message::Subscribe(_) => "Subscribe",
            Message::SubscribeOk(_) => "SubscribeOk",
            Message::Delivery(_) => "Delivery",
            Message::Ack(_) => "Ack",
            Message::Nack(_) => "Nack",
            Message::AckOk => "AckOk",
            Message::Apply(_) => "Apply",
            Message::ApplyOk(_) => "ApplyOk",
            Message::Status => "Status",
            Message::StatusOk(_) => "StatusOk",
            Message::Error(_) => "Error",
            Message::PipelineSubscribe(_) => "PipelineSubscribe",
            Message::StageDelivery(_) => "StageDelivery",
            Message::StageAck(_) => "StageAck",
            Message::StageNack(_) => "StageNack",
            Message::PipelineRetry(_) => "PipelineRetry",
            Message::StageAcks(_) => "StageAcks",
            Message::Metadata(_) => "Metadata",
            Message::MetadataOk(_) => "MetadataOk",
            Message::TokenCreate(_) => "TokenCreate",
            Message::TokenList => "TokenList",
            Message::TokenListOk(_) => "TokenListOk",
            Message::TokenRevoke(_) => "TokenRevoke",
            Message::PartitionMove(_) => "PartitionMove",
            Message::NodeAdd(_) => "NodeAdd",
            Message::NodeRemove(_) => "NodeRemove",
            Message::Rebalance(_) => "Rebalance",
        }
    }

    /// Whether clients send this message (and servers receive it). A server
    /// answers a server-to-client message from a client with
    /// `ErrorCode::InvalidRequest`.
    pub fn is_client_message(&self) -> bool {
        matches!(
            self,
            Message::Handshake(_)
                | Message::Publish(_)
                | Message::Fetch(_)
                | Message::Subscribe(_)
                | Message::Ack(_)
                | Message::Nack(_)
                | Message::Apply(_)
                | Message::Status
                | Message::PipelineSubscribe(_)
                | Message::StageAck(_)
                | Message::StageNack(_)
                | Message::PipelineRetry(_)
                | Message::StageAcks(_)
                | Message::Metadata(_)
                | Message::TokenCreate(_)
                | Message::TokenList
                | Message::TokenRevoke(_)
                | Message::PartitionMove(_)
                | Message::NodeAdd(_)
                | Message::NodeRemove(_)
                | Message::Rebalance(_)
        )
    }
}

impl<'a> Message<'a> {
    /// Converts a verified frame's body. Only call this on a `Frame` that
    /// came out of `verify_frame`/`root_with_opts`.
    pub(crate) fn from_verified(frame: &fb::Frame<'a>) -> Result<Message<'a>, DecodeError> {
        let request_id = frame.request_id();
        let tag = frame.body_type();
        let missing = DecodeError::MissingBody { request_id };
        // The verifier guarantees body_type and body are both present or both
        // absent; body_as_* returns None only if the body is absent.
        let message = match tag {
            fb::Body::NONE => return Err(missing),
            fb::Body::Handshake => {
                let b = frame.body_as_handshake().ok_or(missing)?;
                Message::Handshake(Handshake {
                    version: b.version(),
                    token: b.token().unwrap_or_default(),
                    client_name: b.client_name().unwrap_or_default(),
                })
            }
            fb::Body::HandshakeOk => {
                let b = frame.body_as_handshake_ok().ok_or(missing)?;
                let shards = b.shards();
                let shard_ports: Vec<u16> = b
                    .shard_ports()
                    .map(|v| v.iter().collect())
                    .unwrap_or_default();
                check_shards(
                    request_id,
                    shards,
                    &shard_ports,
                    ["HandshakeOk.shards", "HandshakeOk.shard_ports"],
                )?;
                Message::HandshakeOk(HandshakeOk {
                    version: b.version(),
                    shards,
                    shard_ports,
                    placement: b.placement().unwrap_or_default(),
                })
            }
            fb::Body::Publish => {
                let b = frame.body_as_publish().ok_or(missing)?;
                Message::Publish(Publish {
                    stream: b.stream(),
                    partition: b.partition(),
                    events: b
                        .events()
                        .map(|v| v.iter().map(|e| e.bytes().bytes()).collect())
                        .unwrap_or_default(),
                })
            }
            fb::Body::PublishOk => {
                let b = frame.body_as_publish_ok().ok_or(missing)?;
                Message::PublishOk(PublishOk {
                    partition: b.partition(),
                    first_offset: b.first_offset(),
                    last_offset: b.last_offset(),
                    results: b
                        .results()
                        .map(|v| {
                            v.iter()
                                .map(|r| PublishResult {
                                    offset: r.offset(),
                                    duplicate: r.duplicate(),
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                })
            }
            fb::Body::Fetch => {
                let b = frame.body_as_fetch().ok_or(missing)?;
                Message::Fetch(Fetch {
                    stream: b.stream(),
                    partition: b.partition(),
                    offset: b.offset(),
                    max_bytes: b.max_bytes(),
                })
            }
            fb::Body::FetchOk => {
                let b = frame.body_as_fetch_ok().ok_or(missing)?;
                Message::FetchOk(FetchOk {
                    partition: b.partition(),
                    next_offset: b.next_offset(),
                    records: b
                        .records()
                        .map(|v| {
                            v.iter()
                                .map(|r| Record {
                                    offset: r.offset(),
                                    event: r.event().bytes(),
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                })
            }
            fb::Body::Subscribe => {
                let b = frame.body_as_subscribe().ok_or(missing)?;
                let start = match b.start() {
                    fb::StartPoint::Beginning => StartPoint::Beginning,
                    fb::StartPoint::Latest => StartPoint::Latest,
                    fb::StartPoint::Offset => StartPoint::Offset(b.start_offset()),
                    _ => {
                        return Err(DecodeError::InvalidField {
                            request_id,
                            field: "Subscribe.start",
                            reason: "unknown start point",
                        });
                    }
                };
                Message::Subscribe(Subscribe {
                    stream: b.stream(),
                    group: b.group(),
                    durable: b.durable(),
                    start,
                    max_in_flight: b.max_in_flight(),
                })
            }
            fb::Body::SubscribeOk => {
                let b = frame.body_as_subscribe_ok().ok_or(missing)?;
                Message::SubscribeOk(SubscribeOk {
                    subscription_id: b.subscription_id(),
                    partitions: b
                        .partitions()
                        .map(|v| v.iter().collect())
                        .unwrap_or_default(),
                })
            }
            fb::Body::Delivery => {
                let b = frame.body_as_delivery().ok_or(missing)?;
                Message::Delivery(Delivery {
                    subscription_id: b.subscription_id(),
                    delivery_id: b.delivery_id(),
                    stream: b.stream(),
                    partition: b.partition(),
                    offset: b.offset(),
                    attempt: b.attempt(),
                    event: b.event().bytes(),
                })
            }
            fb::Body::Ack => {
                let b = frame.body_as_ack().ok_or(missing)?;
                Message::Ack(Ack {
                    delivery_ids: b
                        .delivery_ids()
                        .map(|v| v.iter().collect())
                        .unwrap_or_default(),
                })
            }
            fb::Body::Nack => {
                let b = frame.body_as_nack().ok_or(missing)?;
                Message::Nack(Nack {
                    delivery_id: b.delivery_id(),
                    message: b.message().unwrap_or_default(),
                })
            }
            fb::Body::AckOk => {
                frame.body_as_ack_ok().ok_or(missing)?;
                Message::AckOk
            }
            fb::Body::Apply => {
                let b = frame.body_as_apply().ok_or(missing)?;
                Message::Apply(Apply {
                    yaml: b.yaml(),
                    force: b.force(),
                })
            }
            fb::Body::ApplyOk => {
                let b = frame.body_as_apply_ok().ok_or(missing)?;
                Message::ApplyOk(ApplyOk {
                    summary: b.summary().map(|v| v.iter().collect()).unwrap_or_default(),
                })
            }
            fb::Body::Status => {
                frame.body_as_status().ok_or(missing)?;
                Message::Status
            }
            fb::Body::StatusOk => {
                let b = frame.body_as_status_ok().ok_or(missing)?;
                Message::StatusOk(StatusOk { json: b.json() })
            }
            fb::Body::Error => {
                let b = frame.body_as_error().ok_or(missing)?;
                Message::Error(ErrorReply {
                    code: ErrorCode::from_u16(b.code()),
                    message: b.message().unwrap_or_default(),
                    leader: b.leader().map(|l| LeaderHint::from_fb(&l)),
                })
            }
            fb::Body::PipelineSubscribe => {
                let b = frame.body_as_pipeline_subscribe().ok_or(missing)?;
                Message::PipelineSubscribe(PipelineSubscribe {
                    pipeline: b.pipeline(),
                    stage: b.stage(),
                    max_in_flight: b.max_in_flight(),
                })
            }
            fb::Body::StageDelivery => {
                let b = frame.body_as_stage_delivery().ok_or(missing)?;
                Message::StageDelivery(StageDelivery {
                    delivery_id: b.delivery_id(),
                    pipeline: b.pipeline(),
                    stage: b.stage(),
                    partition: b.partition(),
                    offset: b.offset(),
                    attempt: b.attempt(),
                    root: b.root().bytes(),
                    inputs: b
                        .inputs()
                        .map(|v| {
                            v.iter()
                                .map(|i| StageInput {
                                    stage: i.stage(),
                                    event: i.event().bytes(),
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                })
            }
            fb::Body::StageAck => {
                let b = frame.body_as_stage_ack().ok_or(missing)?;
                Message::StageAck(StageAck {
                    delivery_id: b.delivery_id(),
                    output: b.output().bytes(),
                })
            }
            fb::Body::StageNack => {
                let b = frame.body_as_stage_nack().ok_or(missing)?;
                Message::StageNack(StageNack {
                    delivery_id: b.delivery_id(),
                    message: b.message().unwrap_or_default(),
                })
            }
            fb::Body::PipelineRetry => {
                let b = frame.body_as_pipeline_retry().ok_or(missing)?;
                Message::PipelineRetry(PipelineRetry {
                    pipeline: b.pipeline(),
                    execution: b.one().then(|| (b.partition(), b.offset())),
                })
            }
            fb::Body::StageAcks => {
                let b = frame.body_as_stage_acks().ok_or(missing)?;
                Message::StageAcks(StageAcks {
                    acks: b
                        .acks()
                        .map(|v| {
                            v.iter()
                                .map(|a| StageAck {
                                    delivery_id: a.delivery_id(),
                                    output: a.output().bytes(),
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                })
            }
            fb::Body::Metadata => {
                let b = frame.body_as_metadata().ok_or(missing)?;
                Message::Metadata(Metadata {
                    streams: b.streams().map(|v| v.iter().collect()).unwrap_or_default(),
                })
            }
            fb::Body::MetadataOk => {
                let b = frame.body_as_metadata_ok().ok_or(missing)?;
                metadata_ok(request_id, &b)?
            }
            fb::Body::TokenCreate => {
                tokens::token_create(&frame.body_as_token_create().ok_or(missing)?)
            }
            fb::Body::TokenList => {
                frame.body_as_token_list().ok_or(missing)?;
                Message::TokenList
            }
            fb::Body::TokenListOk => {
                tokens::token_list_ok(&frame.body_as_token_list_ok().ok_or(missing)?)
            }
            fb::Body::TokenRevoke => {
                let b = frame.body_as_token_revoke().ok_or(missing)?;
                Message::TokenRevoke(TokenRevoke {
                    name: b.name(),
                    change_id: b.change_id(),
                })
            }
            fb::Body::PartitionMove => {
                let b = frame.body_as_partition_move().ok_or(missing)?;
                Message::PartitionMove(PartitionMove {
                    stream: b.stream(),
                    partition: b.partition(),
                    voters: b.voters().map(|v| v.iter().collect()).unwrap_or_default(),
                })
            }
            fb::Body::NodeAdd => {
                let b = frame.body_as_node_add().ok_or(missing)?;
                Message::NodeAdd(NodeAdd {
                    id: b.id(),
                    address: b.address(),
                    peer_address: b.peer_address(),
                })
            }
            fb::Body::NodeRemove => {
                let b = frame.body_as_node_remove().ok_or(missing)?;
                Message::NodeRemove(b.id())
            }
            fb::Body::Rebalance => {
                let b = frame.body_as_rebalance().ok_or(missing)?;
                Message::Rebalance(Rebalance {
                    drain: b.drain().map(|v| v.iter().collect()).unwrap_or_default(),
                    moves_max: b.moves_max(),
                    dry_run: b.dry_run(),
                    change_id: b.change_id(),
                })
            }
            other => {
                return Err(DecodeError::UnknownBody {
                    request_id,
                    tag: other.0,
                });
            }
        };
        Ok(message)
    }
}

/// Checks a server's shard count and shard ports (`HandshakeOk`,
/// `MetadataOk`): at least one shard, and no ports or one per shard.
/// `fields` names the two fields for the error.
fn check_shards(
    request_id: u64,
    shards: u16,
    shard_ports: &[u16],
    fields: [&'static str; 2],
) -> Result<(), DecodeError> {
    if shards == 0 {
        return Err(DecodeError::InvalidField {
            request_id,
            field: fields[0],
            reason: "must be at least 1",
        });
    }
    if !shard_ports.is_empty() && shard_ports.len() != usize::from(shards) {
        return Err(DecodeError::InvalidField {
            request_id,
            field: fields[1],
            reason: "must be empty or hold one port per shard",
        });
    }
    Ok(())
}

/// Converts a verified `MetadataOk`, checking what a client routes by:
/// the shard count and ports as in `HandshakeOk`, every partition listed
/// in order, and every owner below the shard count.
fn metadata_ok<'a>(request_id: u64, b: &fb::MetadataOk<'a>) -> Result<Message<'a>, DecodeError> {
    let shards = b.shards();
    let shard_ports: Vec<u16> = b
        .shard_ports()
        .map(|v| v.iter().collect())
        .unwrap_or_default();
    check_shards(
        request_id,
        shards,
        &shard_ports,
        ["MetadataOk.shards", "MetadataOk.shard_ports"],
    )?;
    let mut streams = Vec::new();
    for s in b.streams().into_iter().flatten() {
        let mut partitions = Vec::new();
        for (i, p) in s.partitions().into_iter().flatten().enumerate() {
            if usize::try_from(p.partition()).ok() != Some(i) {
                return Err(DecodeError::InvalidField {
                    request_id,
                    field: "StreamInfo.partitions",
                    reason: "must list partitions 0, 1, 2, ... in order",
                });
            }
            if p.shard() >= shards {
                return Err(DecodeError::InvalidField {
                    request_id,
                    field: "PartitionInfo.shard",
                    reason: "must be below MetadataOk.shards",
                });
            }
            partitions.push(PartitionInfo {
                partition: p.partition(),
                shard: p.shard(),
                leader: p.leader().map(|l| LeaderHint::from_fb(&l)),
            });
        }
        streams.push(StreamInfo {
            name: s.name(),
            partitions,
        });
    }
    let pipelines = b
        .pipelines()
        .into_iter()
        .flatten()
        .map(|p| PipelineInfo {
            name: p.name(),
            source_stream: p.source_stream(),
            stages: p.stages().map(|v| v.iter().collect()).unwrap_or_default(),
        })
        .collect();
    let nodes = b.nodes().unwrap_or_default();
    if nodes.len() > METADATA_NODES_MAX {
        return Err(DecodeError::InvalidField {
            request_id,
            field: "MetadataOk.nodes",
            reason: "lists more than METADATA_NODES_MAX (64) nodes",
        });
    }
    let nodes = nodes
        .iter()
        .map(|n| NodeInfo {
            node_id: n.node_id(),
            address: n.address(),
        })
        .collect();
    Ok(Message::MetadataOk(MetadataOk {
        shards,
        shard_ports,
        placement: b.placement().unwrap_or_default(),
        streams,
        pipelines,
        nodes,
    }))
}

/// Why a message could not be encoded.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    /// The encoded body is `have` bytes, above the encoder's `max`. Split
    /// the batch.
    TooLarge { have: usize, max: usize },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::TooLarge { have, max } => write!(
                f,
                "encoded frame of {have} bytes exceeds the limit of {max}; send fewer or smaller events"
            ),
        }
    }
}

impl std::error::Error for EncodeError {}

/// Encodes messages into complete frames (4-byte little-endian length, then
/// the flatbuffer), reusing one builder so steady-state encoding does not
/// allocate inside flatbuffers.
pub struct Encoder {
    fbb: FlatBufferBuilder<'static>,
    frame_bytes_max: usize,
}

impl fmt::Debug for Encoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encoder")
            .field("frame_bytes_max", &self.frame_bytes_max)
            .finish_non_exhaustive()
    }
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder::new(&Limits::DEFAULT)
    }
}

impl Encoder {
    /// An encoder that refuses frames above `limits.frame_bytes_max` (the
    /// peer's limit: a larger frame would be rejected there).
    pub fn new(limits: &Limits) -> Encoder {
        Encoder {
            fbb: FlatBufferBuilder::with_capacity(1024),
            frame_bytes_max: limits.frame_bytes_max,
        }
    }

    /// Appends one complete frame to `out` and returns its length in bytes,
    /// prefix included. On error nothing is appended.
    ///
    /// `frame_bytes_max` applies to the flatbuffer actually written, which
    /// is what the peer's `check` reads from the prefix. A `Publish` is
    /// written by `write_publish`, not the builder, and its size differs
    /// from the builder's by padding and by the defaults the builder left
    /// out: from 12 bytes smaller to 28 bytes larger (tested), and for a
    /// publish as a client sends it (a request id other than 0, at least
    /// one event) from 12 bytes smaller to the same size. So every
    /// `Publish` the builder's frame fitted still fits, and one whose
    /// builder frame was at most 12 bytes over the limit may now fit, as
    /// a frame within the limit.
    pub fn encode_into<B: BufMut>(
        &mut self,
        request_id: u64,
        message: &Message<'_>,
        out: &mut B,
    ) -> Result<usize, EncodeError> {
        if let Message::Publish(publish) = message {
            let bytes = self.check(write_publish::frame_bytes(publish))?;
            write_publish::write(out, request_id, publish, bytes);
            return Ok(LENGTH_PREFIX_BYTES + bytes);
        }
        let (prefix, data) = self.build(request_id, message)?;
        out.put_u32_le(prefix);
        out.put_slice(data);
        Ok(LENGTH_PREFIX_BYTES + data.len())
    }

    /// Encodes one complete frame into a new `Vec` of exactly its size.
    pub fn encode(
        &mut self,
        request_id: u64,
        message: &Message<'_>,
    ) -> Result<Vec<u8>, EncodeError> {
        if let Message::Publish(publish) = message {
            let bytes = self.check(write_publish::frame_bytes(publish))?;
            let mut out = Vec::with_capacity(LENGTH_PREFIX_BYTES + bytes);
            write_publish::write(&mut out, request_id, publish, bytes);
            debug_assert_eq!(out.len(), out.capacity());
            return Ok(out);
        }
        let (prefix, data) = self.build(request_id, message)?;
        let mut out = Vec::with_capacity(LENGTH_PREFIX_BYTES + data.len());
        out.extend_from_slice(&prefix.to_le_bytes());
        out.extend_from_slice(data);
        debug_assert_eq!(out.len(), out.capacity());
        Ok(out)
    }

    /// `bytes`, a frame's flatbuffer size, if this encoder may send it.
    fn check(&self, bytes: usize) -> Result<usize, EncodeError> {
        let max = self
            .frame_bytes_max
            .min(write_publish::FLATBUFFER_BYTES_MAX);
        if bytes <= max {
            Ok(bytes)
        } else {
            Err(EncodeError::TooLarge { have: bytes, max })
        }
    }

    /// Builds the frame in the builder and returns its length prefix and
    /// its bytes (without the prefix), or why it cannot be sent.
    fn build(
        &mut self,
        request_id: u64,
        message: &Message<'_>,
    ) -> Result<(u32, &[u8]), EncodeError> {
        self.fbb.reset();
        let (body_type, body) = build_body(&mut self.fbb, message);
        let frame = fb::Frame::create(
            &mut self.fbb,
            &fb::FrameArgs {
                request_id,
                body_type,
                body: Some(body),
            },
        );
        self.fbb.finish(frame, None);
        let data = self.fbb.finished_data();
        let len = data.len();
        match u32::try_from(len) {
            Ok(prefix) if len <= self.frame_bytes_max => Ok((prefix, data)),
            _ => Err(EncodeError::TooLarge {
                have: len,
                max: self.frame_bytes_max,
            }),
        }
    }
}

/// Encodes one complete frame with the default limits. Prefer a long-lived
/// `Encoder` on hot paths.
pub fn encode(request_id: u64, message: &Message<'_>) -> Result<Vec<u8>, EncodeError> {
    Encoder::default().encode(request_id, message)
}

type Fbb = FlatBufferBuilder<'static>;
type Union = WIPOffset<flatbuffers::UnionWIPOffset>;

fn opt_str(fbb: &mut Fbb, s: &str) -> Option<WIPOffset<&'static str>> {
    (!s.is_empty()).then(|| fbb.create_string(s))
}

fn build_body(fbb: &mut Fbb, message: &Message<'_>) -> (fb::Body, Union) {
    match message {
        Message::Handshake(m) => {
            let args = fb::HandshakeArgs {
                version: m.version,
                token: opt_str(fbb, m.token),
                client_name: opt_str(fbb, m.client_name),
            };
            let t = fb::Handshake::create(fbb, &args);
            (fb::Body::Handshake, t.as_union_value())
        }
        Message::HandshakeOk(m) => {
            let args = fb::HandshakeOkArgs {
                version: m.version,
                shards: m.shards,
                shard_ports: (!m.shard_ports.is_empty()).then(|| fbb.create_vector(&m.shard_ports)),
                placement: opt_str(fbb, m.placement),
            };
            let t = fb::HandshakeOk::create(fbb, &args);
            (fb::Body::HandshakeOk, t.as_union_value())
        }
        Message::Publish(m) => {
            let mut events = Vec::with_capacity(m.events.len());
            for event in &m.events {
                let bytes = fbb.create_vector(event);
                events.push(fb::EventBytes::create(
                    fbb,
                    &fb::EventBytesArgs { bytes: Some(bytes) },
                ));
            }
            let args = fb::PublishArgs {
                stream: Some(fbb.create_string(m.stream)),
                partition: m.partition,
                events: (!events.is_empty()).then(|| fbb.create_vector(&events)),
            };
            let t = fb::Publish::create(fbb, &args);
            (fb::Body::Publish, t.as_union_value())
        }
        Message::PublishOk(m) => {
            let results: Vec<fb::PublishResult> = m
                .results
                .iter()
                .map(|r| fb::PublishResult::new(r.offset, r.duplicate))
                .collect();
            let args = fb::PublishOkArgs {
                partition: m.partition,
                first_offset: m.first_offset,
                last_offset: m.last_offset,
                results: (!results.is_empty()).then(|| fbb.create_vector(&results)),
            };
            let t = fb::PublishOk::create(fbb, &args);
            (fb::Body::PublishOk, t.as_union_value())
        }
        Message::Fetch(m) => {
            let args = fb::FetchArgs {
                stream: Some(fbb.create_string(m.stream)),
                partition: m.partition,
                offset: m.offset,
                max_bytes: m.max_bytes,
            };
            let t = fb::Fetch::create(fbb, &args);
            (fb::Body::Fetch, t.as_union_value())
        }
        Message::FetchOk(m) => {
            let mut records = Vec::with_capacity(m.records.len());
            for record in &m.records {
                let event = fbb.create_vector(record.event);
                records.push(fb::Record::create(
                    fbb,
                    &fb::RecordArgs {
                        offset: record.offset,
                        event: Some(event),
                    },
                ));
            }
            let args = fb::FetchOkArgs {
                partition: m.partition,
                next_offset: m.next_offset,
                records: (!records.is_empty()).then(|| fbb.create_vector(&records)),
            };
            let t = fb::FetchOk::create(fbb, &args);
            (fb::Body::FetchOk, t.as_union_value())
        }
        Message::Subscribe(m) => {
            let (start, start_offset) = match m.start {
                StartPoint::Beginning => (fb::StartPoint::Beginning, 0),
                StartPoint::Latest => (fb::StartPoint::Latest, 0),
                StartPoint::Offset(offset) => (fb::StartPoint::Offset, offset),
            };
            let args = fb::SubscribeArgs {
                stream: Some(fbb.create_string(m.stream)),
                group: Some(fbb.create_string(m.group)),
                durable: m.durable,
                start,
                start_offset,
                max_in_flight: m.max_in_flight,
            };
            let t = fb::Subscribe::create(fbb, &args);
            (fb::Body::Subscribe, t.as_union_value())
        }
        Message::SubscribeOk(m) => {
            let args = fb::SubscribeOkArgs {
                subscription_id: m.subscription_id,
                partitions: (!m.partitions.is_empty()).then(|| fbb.create_vector(&m.partitions)),
            };
            let t = fb::SubscribeOk::create(fbb, &args);
            (fb::Body::SubscribeOk, t.as_union_value())
        }
        Message::Delivery(m) => {
            let args = fb::DeliveryArgs {
                subscription_id: m.subscription_id,
                delivery_id: m.delivery_id,
                stream: Some(fbb.create_string(m.stream)),
                partition: m.partition,
                offset: m.offset,
                attempt: m.attempt,
                event: Some(fbb.create_vector(m.event)),
            };
            let t = fb::Delivery::create(fbb, &args);
            (fb::Body::Delivery, t.as_union_value())
        }
        Message::Ack(m) => {
            let args = fb::AckArgs {
                delivery_ids: (!m.delivery_ids.is_empty())
                    .then(|| fbb.create_vector(&m.delivery_ids)),
            };
            let t = fb::Ack::create(fbb, &args);
            (fb::Body::Ack, t.as_union_value())
        }
        Message::Nack(m) => {
            let args = fb::NackArgs {
                delivery_id: m.delivery_id,
                message: opt_str(fbb, m.message),
            };
            let t = fb::Nack::create(fbb, &args);
            (fb::Body::Nack, t.as_union_value())
        }
        Message::AckOk => {
            let t = fb::AckOk::create(fbb, &fb::AckOkArgs {});
            (fb::Body::AckOk, t.as_union_value())
        }
        Message::Apply(m) => {
            let args = fb::ApplyArgs {
                yaml: Some(fbb.create_string(m.yaml)),
                force: m.force,
            };
            let t = fb::Apply::create(fbb, &args);
            (fb::Body::Apply, t.as_union_value())
        }
        Message::ApplyOk(m) => {
            let lines: Vec<_> = m.summary.iter().map(|s| fbb.create_string(s)).collect();
            let args = fb::ApplyOkArgs {
                summary: (!lines.is_empty()).then(|| fbb.create_vector(&lines)),
            };
            let t = fb::ApplyOk::create(fbb, &args);
            (fb::Body::ApplyOk, t.as_union_value())
        }
        Message::Status => {
            let t = fb::Status::create(fbb, &fb::StatusArgs {});
            (fb::Body::Status, t.as_union_value())
        }
        Message::StatusOk(m) => {
            let args = fb::StatusOkArgs {
                json: Some(fbb.create_string(m.json)),
            };
            let t = fb::StatusOk::create(fbb, &args);
            (fb::Body::StatusOk, t.as_union_value())
        }
        Message::Error(m) => {
            let leader = m.leader.map(|l| l.build(fbb));
            let args = fb::ErrorArgs {
                code: m.code.as_u16(),
                message: opt_str(fbb, m.message),
                leader,
            };
            let t = fb::Error::create(fbb, &args);
            (fb::Body::Error, t.as_union_value())
        }
        Message::PipelineSubscribe(m) => {
            let args = fb::PipelineSubscribeArgs {
                pipeline: Some(fbb.create_string(m.pipeline)),
                stage: Some(fbb.create_string(m.stage)),
                max_in_flight: m.max_in_flight,
            };
            let t = fb::PipelineSubscribe::create(fbb, &args);
            (fb::Body::PipelineSubscribe, t.as_union_value())
        }
        Message::StageDelivery(m) => {
            let mut inputs = Vec::with_capacity(m.inputs.len());
            for input in &m.inputs {
                let stage = fbb.create_string(input.stage);
                let event = fbb.create_vector(input.event);
                inputs.push(fb::StageInput::create(
                    fbb,
                    &fb::StageInputArgs {
                        stage: Some(stage),
                        event: Some(event),
                    },
                ));
            }
            let args = fb::StageDeliveryArgs {
                delivery_id: m.delivery_id,
                pipeline: Some(fbb.create_string(m.pipeline)),
                stage: Some(fbb.create_string(m.stage)),
                partition: m.partition,
                offset: m.offset,
                attempt: m.attempt,
                root: Some(fbb.create_vector(m.root)),
                inputs: (!inputs.is_empty()).then(|| fbb.create_vector(&inputs)),
            };
            let t = fb::StageDelivery::create(fbb, &args);
            (fb::Body::StageDelivery, t.as_union_value())
        }
        Message::StageAck(m) => {
            let args = fb::StageAckArgs {
                delivery_id: m.delivery_id,
                output: Some(fbb.create_vector(m.output)),
            };
            let t = fb::StageAck::create(fbb, &args);
            (fb::Body::StageAck, t.as_union_value())
        }
        Message::StageNack(m) => {
            let args = fb::StageNackArgs {
                delivery_id: m.delivery_id,
                message: opt_str(fbb, m.message),
            };
            let t = fb::StageNack::create(fbb, &args);
            (fb::Body::StageNack, t.as_union_value())
        }
        Message::PipelineRetry(m) => {
            let (partition, offset) = m.execution.unwrap_or((0, 0));
            let args = fb::PipelineRetryArgs {
                pipeline: Some(fbb.create_string(m.pipeline)),
                one: m.execution.is_some(),
                partition,
                offset,
            };
            let t = fb::PipelineRetry::create(fbb, &args);
            (fb::Body::PipelineRetry, t.as_union_value())
        }
        Message::StageAcks(m) => {
            let acks: Vec<_> = m
                .acks
                .iter()
                .map(|a| {
                    let args = fb::StageAckArgs {
                        delivery_id: a.delivery_id,
                        output: Some(fbb.create_vector(a.output)),
                    };
                    fb::StageAck::create(fbb, &args)
                })
                .collect();
            let args = fb::StageAcksArgs {
                acks: (!acks.is_empty()).then(|| fbb.create_vector(&acks)),
            };
            let t = fb::StageAcks::create(fbb, &args);
            (fb::Body::StageAcks, t.as_union_value())
        }
        Message::Metadata(m) => {
            let streams: Vec<_> = m.streams.iter().map(|s| fbb.create_string(s)).collect();
            let args = fb::MetadataArgs {
                streams: (!streams.is_empty()).then(|| fbb.create_vector(&streams)),
            };
            let t = fb::Metadata::create(fbb, &args);
            (fb::Body::Metadata, t.as_union_value())
        }
        Message::MetadataOk(m) => {
            let streams: Vec<_> = m
                .streams
                .iter()
                .map(|s| {
                    let partitions: Vec<_> = s
                        .partitions
                        .iter()
                        .map(|p| {
                            let leader = p.leader.map(|l| l.build(fbb));
                            let args = fb::PartitionInfoArgs {
                                partition: p.partition,
                                shard: p.shard,
                                leader,
                            };
                            fb::PartitionInfo::create(fbb, &args)
                        })
                        .collect();
                    let args = fb::StreamInfoArgs {
                        name: Some(fbb.create_string(s.name)),
                        partitions: (!partitions.is_empty())
                            .then(|| fbb.create_vector(&partitions)),
                    };
                    fb::StreamInfo::create(fbb, &args)
                })
                .collect();
            let pipelines: Vec<_> = m
                .pipelines
                .iter()
                .map(|p| {
                    let stages: Vec<_> = p.stages.iter().map(|s| fbb.create_string(s)).collect();
                    let args = fb::PipelineInfoArgs {
                        name: Some(fbb.create_string(p.name)),
                        source_stream: Some(fbb.create_string(p.source_stream)),
                        stages: (!stages.is_empty()).then(|| fbb.create_vector(&stages)),
                    };
                    fb::PipelineInfo::create(fbb, &args)
                })
                .collect();
            let nodes: Vec<_> = m
                .nodes
                .iter()
                .map(|n| {
                    let args = fb::NodeInfoArgs {
                        node_id: n.node_id,
                        address: Some(fbb.create_string(n.address)),
                    };
                    fb::NodeInfo::create(fbb, &args)
                })
                .collect();
            let args = fb::MetadataOkArgs {
                shards: m.shards,
                shard_ports: (!m.shard_ports.is_empty()).then(|| fbb.create_vector(&m.shard_ports)),
                placement: opt_str(fbb, m.placement),
                streams: (!streams.is_empty()).then(|| fbb.create_vector(&streams)),
                pipelines: (!pipelines.is_empty()).then(|| fbb.create_vector(&pipelines)),
                nodes: (!nodes.is_empty()).then(|| fbb.create_vector(&nodes)),
            };
            let t = fb::MetadataOk::create(fbb, &args);
            (fb::Body::MetadataOk, t.as_union_value())
        }
        Message::TokenCreate(m) => tokens::build_token_create(fbb, m),
        Message::TokenList => tokens::build_token_list(fbb),
        Message::TokenListOk(m) => tokens::build_token_list_ok(fbb, m),
        Message::TokenRevoke(m) => tokens::build_token_revoke(fbb, m),
        Message::PartitionMove(m) => {
            let args = fb::PartitionMoveArgs {
                stream: Some(fbb.create_string(m.stream)),
                partition: m.partition,
                voters: (!m.voters.is_empty()).then(|| fbb.create_vector(&m.voters)),
            };
            let t = fb::PartitionMove::create(fbb, &args);
            (fb::Body::PartitionMove, t.as_union_value())
        }
        Message::NodeAdd(m) => {
            let args = fb::NodeAddArgs {
                id: m.id,
                address: Some(fbb.create_string(m.address)),
                peer_address: Some(fbb.create_string(m.peer_address)),
            };
            let t = fb::NodeAdd::create(fbb, &args);
            (fb::Body::NodeAdd, t.as_union_value())
        }
        Message::NodeRemove(id) => {
            let t = fb::NodeRemove::create(fbb, &fb::NodeRemoveArgs { id: *id });
            (fb::Body::NodeRemove, t.as_union_value())
        }
        Message::Rebalance(m) => {
            let args = fb::RebalanceArgs {
                drain: (!m.drain.is_empty()).then(|| fbb.create_vector(&m.drain)),
                moves_max: m.moves_max,
                dry_run: m.dry_run,
                change_id: m.change_id,
            };
            let t = fb::Rebalance::create(fbb, &args);
            (fb::Body::Rebalance, t.as_union_value())
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{EventRef, decode, encode_event};

    /// One message of every body type, with every field set to a distinctive
    /// value. `event` is a finished Event flatbuffer.
    pub(crate) fn sample_messages(event: &[u8]) -> Vec<Message<'_>> {
        vec![
            Message::Handshake(Handshake {
                version: crate::PROTOCOL_VERSION,
                token: "secret",
                client_name: "example-cloud-app",
            }),
            Message::HandshakeOk(HandshakeOk {
                version: 1,
                shards: 3,
                shard_ports: vec![7001, 7002, 7003],
                placement: crate::PLACEMENT_NAME,
            }),
            Message::Publish(Publish {
                stream: "events",
                partition: 7,
                events: vec![event, event, b"\x01\x02"],
            }),
            Message::PublishOk(PublishOk {
                partition: 7,
                first_offset: 100,
                last_offset: 101,
                results: vec![
                    PublishResult {
                        offset: 100,
                        duplicate: false,
                    },
                    PublishResult {
                        offset: 42,
                        duplicate: true,
                    },
                    PublishResult {
                        offset: 101,
                        duplicate: false,
                    },
                ],
            }),
            Message::Fetch(Fetch {
                stream: "events",
                partition: 2,
                offset: u64::MAX - 1,
                max_bytes: 1 << 20,
            }),
            Message::FetchOk(FetchOk {
                partition: 2,
                next_offset: 12,
                records: vec![
                    Record { offset: 10, event },
                    Record {
                        offset: 11,
                        event: b"",
                    },
                ],
            }),
            Message::Subscribe(Subscribe {
                stream: "events",
                group: "billing",
                durable: true,
                start: StartPoint::Offset(55),
                max_in_flight: 64,
            }),
            Message::SubscribeOk(SubscribeOk {
                subscription_id: 9,
                partitions: vec![0, 3, 5],
            }),
            Message::Delivery(Delivery {
                subscription_id: 9,
                delivery_id: 1234,
                stream: "events",
                partition: 3,
                offset: 77,
                attempt: 2,
                event,
            }),
            Message::Ack(Ack {
                delivery_ids: vec![1, 2, u64::MAX],
            }),
            Message::Nack(Nack {
                delivery_id: 1234,
                message: "database unavailable",
            }),
            Message::AckOk,
            Message::Apply(Apply {
                yaml: "kind: Stream\nmetadata: { name: events }\n",
                force: true,
            }),
            Message::ApplyOk(ApplyOk {
                summary: vec![
                    "stream/events unchanged",
                    "pipeline/service-creation created",
                ],
            }),
            Message::Status,
            Message::StatusOk(StatusOk {
                json: "{\"shards\":3}",
            }),
            Message::Error(ErrorReply {
                code: ErrorCode::UnknownStream,
                message: "no stream named \"evnts\"",
                leader: None,
            }),
            Message::PipelineSubscribe(PipelineSubscribe {
                pipeline: "service-creation",
                stage: "deploy-service",
                max_in_flight: 8,
            }),
            Message::StageDelivery(StageDelivery {
                delivery_id: 5,
                pipeline: "service-creation",
                stage: "sync",
                partition: 1,
                offset: 900,
                attempt: 1,
                root: event,
                inputs: vec![
                    StageInput {
                        stage: "deploy-service",
                        event,
                    },
                    StageInput {
                        stage: "setup-billing",
                        event,
                    },
                ],
            }),
            Message::StageAck(StageAck {
                delivery_id: 5,
                output: event,
            }),
            Message::StageNack(StageNack {
                delivery_id: 5,
                message: "quota exceeded",
            }),
            Message::PipelineRetry(PipelineRetry {
                pipeline: "service-creation",
                execution: Some((3, 77)),
            }),
            Message::StageAcks(StageAcks {
                acks: vec![
                    StageAck {
                        delivery_id: 5,
                        output: event,
                    },
                    StageAck {
                        delivery_id: u64::MAX,
                        output: b"",
                    },
                    StageAck {
                        delivery_id: 7,
                        output: event,
                    },
                ],
            }),
            Message::Metadata(Metadata {
                streams: vec!["events", "orders"],
            }),
            sample_metadata_ok(),
            Message::TokenCreate(TokenCreate {
                name: "writer",
                secret_sha256: &[7; 32],
                scope: TokenScope {
                    all: false,
                    admin: true,
                    publish: vec!["events"],
                    subscribe: vec!["orders", "*"],
                },
            }),
            Message::TokenList,
            Message::TokenListOk(TokenListOk {
                tokens: vec![
                    TokenInfo {
                        name: "all",
                        scope: TokenScope {
                            all: true,
                            ..TokenScope::default()
                        },
                    },
                    TokenInfo {
                        name: "writer",
                        scope: TokenScope {
                            publish: vec!["events"],
                            ..TokenScope::default()
                        },
                    },
                ],
            }),
            Message::TokenRevoke(TokenRevoke {
                name: "writer",
                change_id: 0x5eed_0001,
            }),
            Message::PartitionMove(PartitionMove {
                stream: "orders",
                partition: 2,
                voters: vec![1, 2, 4],
            }),
            Message::NodeAdd(NodeAdd {
                id: 4,
                address: "10.0.0.4:7000",
                peer_address: "10.0.0.4:7100",
            }),
            Message::NodeRemove(4),
            Message::Rebalance(Rebalance {
                drain: vec![2, 5],
                moves_max: 16,
                dry_run: true,
                change_id: u64::MAX,
            }),
        ]
    }

    /// A `MetadataOk` of two shards: two streams (one of three
    /// partitions, placed as `shard_of` places them) and a pipeline.
    pub(crate) fn sample_metadata_ok() -> Message<'static> {
        let partitions = |stream: &str, n: u32| -> Vec<PartitionInfo<'static>> {
            (0..n)
                .map(|partition| PartitionInfo {
                    partition,
                    shard: crate::shard_of(stream, partition, 2),
                    // One partition whose leader is not known (an election).
                    leader: (partition != 2).then_some(LeaderHint {
                        node_id: 1,
                        address: "127.0.0.1:7000",
                        shard_port: 7001 + crate::shard_of(stream, partition, 2),
                        term: 1,
                    }),
                })
                .collect()
        };
        Message::MetadataOk(MetadataOk {
            shards: 2,
            shard_ports: vec![7001, 7002],
            placement: crate::PLACEMENT_NAME,
            streams: vec![
                StreamInfo {
                    name: "events",
                    partitions: partitions("events", 1),
                },
                StreamInfo {
                    name: "orders",
                    partitions: partitions("orders", 3),
                },
            ],
            pipelines: vec![PipelineInfo {
                name: "service-creation",
                source_stream: "events",
                stages: vec!["deploy-service", "setup-billing", "sync"],
            }],
            nodes: vec![
                NodeInfo {
                    node_id: 1,
                    address: "127.0.0.1:7000",
                },
                NodeInfo {
                    node_id: 3,
                    address: "127.0.0.3:7000",
                },
            ],
        })
    }

    pub(crate) fn sample_event() -> Vec<u8> {
        encode_event(&EventRef {
            id: "evt-1",
            source: "example-cloud-app",
            specversion: "1.0",
            ty: "service.created",
            subject: Some("svc-42"),
            time_ms: Some(1_700_000_000_000),
            datacontenttype: Some("application/json"),
            attributes: vec![("tenant", "acme")],
            data: b"{\"name\":\"db\"}",
        })
    }

    #[test]
    fn every_message_round_trips() {
        let event = sample_event();
        let samples = sample_messages(&event);
        let mut names: Vec<&str> = samples.iter().map(Message::name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), 33, "one sample per Body member");

        let mut encoder = Encoder::default();
        for (i, message) in samples.iter().enumerate() {
            let request_id = 1000 + i as u64;
            let frame = encoder.encode(request_id, message).unwrap();
            let total = crate::check(&frame, &Limits::DEFAULT).unwrap();
            assert_eq!(total, Some(frame.len()), "{}", message.name());
            let decoded = decode(&frame[4..], &Limits::DEFAULT).unwrap();
            assert_eq!(decoded.request_id, request_id);
            assert_eq!(&decoded.message, message);
        }
    }

    #[test]
    fn default_and_empty_fields_round_trip() {
        let messages = [
            Message::Handshake(Handshake::default()),
            Message::HandshakeOk(HandshakeOk {
                shards: 1,
                ..HandshakeOk::default()
            }),
            Message::Publish(Publish::default()),
            Message::PublishOk(PublishOk::default()),
            Message::Fetch(Fetch::default()),
            Message::FetchOk(FetchOk::default()),
            Message::Subscribe(Subscribe::default()),
            Message::Subscribe(Subscribe {
                start: StartPoint::Latest,
                ..Subscribe::default()
            }),
            Message::SubscribeOk(SubscribeOk::default()),
            Message::Delivery(Delivery::default()),
            Message::Ack(Ack::default()),
            Message::Nack(Nack::default()),
            Message::Apply(Apply::default()),
            Message::ApplyOk(ApplyOk::default()),
            Message::StatusOk(StatusOk::default()),
            Message::Error(ErrorReply {
                code: ErrorCode::Unknown(4242),
                message: "",
                leader: None,
            }),
            Message::Error(ErrorReply {
                code: ErrorCode::NotLeader,
                message: "",
                leader: Some(LeaderHint::default()),
            }),
            Message::PipelineSubscribe(PipelineSubscribe::default()),
            Message::StageDelivery(StageDelivery::default()),
            Message::StageAck(StageAck::default()),
            Message::StageNack(StageNack::default()),
            Message::StageAcks(StageAcks::default()),
            Message::Metadata(Metadata::default()),
            Message::MetadataOk(MetadataOk {
                shards: 1,
                ..MetadataOk::default()
            }),
            Message::MetadataOk(MetadataOk {
                shards: 1,
                streams: vec![StreamInfo {
                    name: "empty",
                    partitions: vec![PartitionInfo::default()],
                }],
                pipelines: vec![PipelineInfo::default()],
                ..MetadataOk::default()
            }),
        ];
        for message in &messages {
            let frame = encode(0, message).unwrap();
            let decoded = decode(&frame[4..], &Limits::DEFAULT).unwrap();
            assert_eq!(decoded.request_id, 0);
            assert_eq!(&decoded.message, message);
        }
    }

    #[test]
    fn encode_into_bytes_mut_appends_frames_back_to_back() {
        let mut out = bytes::BytesMut::new();
        let mut encoder = Encoder::default();
        let a = encoder.encode_into(1, &Message::Status, &mut out).unwrap();
        let b = encoder.encode_into(2, &Message::AckOk, &mut out).unwrap();
        assert_eq!(out.len(), a + b);

        let (body, used) = crate::split_frame(&out, &Limits::DEFAULT).unwrap().unwrap();
        assert_eq!(used, a);
        let first = decode(body, &Limits::DEFAULT).unwrap();
        assert_eq!((first.request_id, first.message), (1, Message::Status));
        let (body, used) = crate::split_frame(&out[a..], &Limits::DEFAULT)
            .unwrap()
            .unwrap();
        assert_eq!(used, b);
        let second = decode(body, &Limits::DEFAULT).unwrap();
        assert_eq!((second.request_id, second.message), (2, Message::AckOk));
    }

    #[test]
    fn encode_allocates_the_frame_exactly() {
        let event = sample_event();
        let mut encoder = Encoder::default();
        for (i, message) in sample_messages(&event).iter().enumerate() {
            let frame = encoder.encode(i as u64, message).unwrap();
            assert_eq!(frame.capacity(), frame.len(), "{}", message.name());
            let mut appended = b"x".to_vec();
            encoder
                .encode_into(i as u64, message, &mut appended)
                .unwrap();
            assert_eq!(appended[1..], frame[..], "{}", message.name());
        }
    }

    #[test]
    fn encoder_refuses_frames_above_its_limit() {
        let limits = Limits {
            frame_bytes_max: 64,
            ..Limits::DEFAULT
        };
        let mut encoder = Encoder::new(&limits);
        let big = vec![7u8; 100];
        let message = Message::Publish(Publish {
            stream: "events",
            partition: 0,
            events: vec![&big],
        });
        let mut out = Vec::new();
        let err = encoder.encode_into(1, &message, &mut out).unwrap_err();
        assert!(
            matches!(err, EncodeError::TooLarge { max: 64, .. }),
            "{err}"
        );
        assert!(out.is_empty(), "nothing appended on error");
        // The encoder is still usable afterwards.
        assert!(encoder.encode_into(2, &Message::Status, &mut out).is_ok());
    }

    #[test]
    fn handshake_ok_with_zero_shards_or_wrong_port_count_is_rejected() {
        for (shards, ports) in [(0u16, vec![]), (2, vec![7001])] {
            let frame = encode(
                3,
                &Message::HandshakeOk(HandshakeOk {
                    version: 1,
                    shards,
                    shard_ports: ports,
                    placement: crate::PLACEMENT_NAME,
                }),
            )
            .unwrap();
            let err = decode(&frame[4..], &Limits::DEFAULT).unwrap_err();
            assert!(
                matches!(err, DecodeError::InvalidField { request_id: 3, .. }),
                "{err}"
            );
            assert_eq!(err.code(), ErrorCode::InvalidRequest);
        }
    }

    /// `NotLeader` carries the leader when known and decodes without it
    /// too; an older frame (no `leader` field) reads as `None`.
    #[test]
    fn not_leader_error_round_trips_with_and_without_its_hint() {
        let hint = LeaderHint {
            node_id: 3,
            address: "10.0.0.3:7000",
            shard_port: 7002,
            term: 7,
        };
        for leader in [Some(hint), None] {
            let message = Message::Error(ErrorReply {
                code: ErrorCode::NotLeader,
                message: "node 2 does not lead events/0",
                leader,
            });
            let frame = encode(5, &message).unwrap();
            let decoded = crate::decode(&frame[4..], &Limits::DEFAULT).unwrap();
            assert_eq!(decoded.request_id, 5);
            assert_eq!(decoded.message, message);
            let Message::Error(e) = decoded.message else {
                unreachable!()
            };
            assert_eq!(e.code.as_u16(), 25);
            assert_eq!(e.leader.map(|l| l.address), leader.map(|l| l.address));
        }
    }

    /// A `MetadataOk` partition's leader round-trips, and its absence (an
    /// election, or an older server) reads as `None`.
    #[test]
    fn metadata_partition_leaders_round_trip() {
        let message = sample_metadata_ok();
        let frame = encode(2, &message).unwrap();
        let decoded = crate::decode(&frame[4..], &Limits::DEFAULT).unwrap();
        let Message::MetadataOk(ok) = decoded.message else {
            panic!("not MetadataOk: {:?}", decoded.message)
        };
        let orders = &ok.streams[1].partitions;
        assert_eq!(orders[0].leader.map(|l| l.node_id), Some(1));
        assert_eq!(
            orders[1].leader.map(|l| (l.address, l.shard_port, l.term)),
            Some(("127.0.0.1:7000", 7001 + crate::shard_of("orders", 1, 2), 1))
        );
        assert_eq!(orders[2].leader, None);
        assert_eq!(Message::MetadataOk(ok), message);
    }

    /// A `MetadataOk`'s nodes round-trip, and a frame without them (a
    /// single server, or one older than the field) reads as none; a
    /// cluster's whole node limit fits.
    #[test]
    fn metadata_nodes_round_trip_and_are_absent_from_a_single_server() {
        let Message::MetadataOk(mut ok) = sample_metadata_ok() else {
            unreachable!()
        };
        let frame = encode(3, &Message::MetadataOk(ok.clone())).unwrap();
        let decoded = crate::decode(&frame[4..], &Limits::DEFAULT).unwrap();
        let Message::MetadataOk(back) = decoded.message else {
            panic!("not MetadataOk: {:?}", decoded.message)
        };
        assert_eq!(
            back.nodes
                .iter()
                .map(|n| (n.node_id, n.address))
                .collect::<Vec<_>>(),
            vec![(1, "127.0.0.1:7000"), (3, "127.0.0.3:7000")]
        );
        ok.nodes.clear();
        let frame = encode(4, &Message::MetadataOk(ok.clone())).unwrap();
        let root = crate::verify_frame(&frame[4..], &Limits::DEFAULT).unwrap();
        let fb_ok = root.body_as_metadata_ok().unwrap();
        assert!(fb_ok.nodes().is_none(), "no nodes: the field is left out");
        let addresses: Vec<String> = (0..METADATA_NODES_MAX)
            .map(|i| format!("10.0.{}.{}:7000", i / 256, i % 256))
            .collect();
        ok.nodes = (1u64..)
            .zip(&addresses)
            .map(|(node_id, address)| NodeInfo { node_id, address })
            .collect();
        let frame = encode(5, &Message::MetadataOk(ok.clone())).unwrap();
        let decoded = crate::decode(&frame[4..], &Limits::DEFAULT).unwrap();
        assert_eq!(decoded.message, Message::MetadataOk(ok));
    }

    #[test]
    fn body_tags_are_stable() {
        // docs/protocol.md section 3 lists these; they never change.
        let event = sample_event();
        for (tag, message) in (1u8..).zip(sample_messages(&event)) {
            let frame = encode(1, &message).unwrap();
            let root = crate::verify_frame(&frame[4..], &Limits::DEFAULT).unwrap();
            assert_eq!(root.body_type(), fb::Body(tag), "{}", message.name());
        }
        assert_eq!(fb::Body::ENUM_MAX, 33);
    }

    #[test]
    fn client_and_server_messages_are_classified() {
        let event = sample_event();
        let clients = sample_messages(&event)
            .iter()
            .filter(|m| m.is_client_message())
            .count();
        assert_eq!(clients, 21);
    }

    /// A `MetadataOk` a client could not route by is refused, naming the
    /// field: no shards, a port count that is not the shard count, an owner
    /// beyond the shards, a partition list with a gap or out of order.
    #[test]
    fn metadata_ok_that_cannot_be_routed_by_is_rejected() {
        let Message::MetadataOk(good) = sample_metadata_ok() else {
            unreachable!()
        };
        let mut no_shards = good.clone();
        no_shards.shards = 0;
        no_shards.streams.clear();
        let mut ports = good.clone();
        ports.shard_ports.pop();
        let mut owner = good.clone();
        owner.streams[1].partitions[2].shard = 2;
        let mut gap = good.clone();
        gap.streams[1].partitions.remove(1);
        let mut order = good.clone();
        order.streams[1].partitions.swap(0, 1);
        let addresses: Vec<String> = (0..=METADATA_NODES_MAX)
            .map(|i| format!("127.0.0.1:{}", 7000 + i))
            .collect();
        let mut too_many_nodes = good.clone();
        too_many_nodes.nodes = (1u64..)
            .zip(&addresses)
            .map(|(node_id, address)| NodeInfo { node_id, address })
            .collect();
        let cases = [
            (too_many_nodes, "MetadataOk.nodes"),
            (no_shards, "MetadataOk.shards"),
            (ports, "MetadataOk.shard_ports"),
            (owner, "PartitionInfo.shard"),
            (gap, "StreamInfo.partitions"),
            (order, "StreamInfo.partitions"),
        ];
        for (bad, field) in cases {
            let frame = encode(9, &Message::MetadataOk(bad)).unwrap();
            let err = decode(&frame[4..], &Limits::DEFAULT).unwrap_err();
            assert!(
                matches!(err, DecodeError::InvalidField { request_id: 9, field: f, .. } if f == field),
                "{field}: {err}"
            );
            assert_eq!(err.code(), ErrorCode::InvalidRequest);
        }
        let frame = encode(9, &Message::MetadataOk(good.clone())).unwrap();
        let decoded = decode(&frame[4..], &Limits::DEFAULT).unwrap();
        assert_eq!(decoded.message, Message::MetadataOk(good));
    }
}
