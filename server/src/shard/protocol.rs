//! The inter-shard protocol: a [`Request`] one shard serves for another (or
//! for itself), its [`Reply`], and the [`MeshMsg`] that carries both, and
//! pushed deliveries, over the glommio channel mesh.

use futures::future::LocalBoxFuture;

use super::*;

/// A request one shard serves for another (or for itself).
#[derive(Debug)]
pub enum Request {
    /// Append events to a partition.
    Publish {
        stream: String,
        partition: u32,
        events: Vec<bytes::Bytes>,
    },
    /// Read events of a partition.
    Fetch {
        stream: String,
        partition: u32,
        offset: u64,
        max_bytes: u32,
    },
    /// Add a member to a group on a partition.
    Attach {
        stream: String,
        partition: u32,
        group: String,
        durable: bool,
        start: StartPoint,
        max_in_flight: u32,
        member: MemberId,
    },
    /// Remove every member of a connection.
    Detach { shard: u16, conn: u64 },
    /// Remove one member (a subscription that failed to attach everywhere).
    DetachMember { member: MemberId },
    /// Settle deliveries as processed.
    Ack {
        ids: Vec<u64>,
        shard: u16,
        conn: u64,
    },
    /// Settle a delivery as failed.
    Nack {
        id: u64,
        message: String,
        shard: u16,
        conn: u64,
    },
    /// Add a stage handler to a pipeline on a partition.
    StageAttach {
        pipeline: String,
        partition: u32,
        stage: String,
        max_in_flight: u32,
        member: MemberId,
    },
    /// Stages succeeded, each with an output event: (delivery id,
    /// output), settled each on its own.
    StageAcks {
        acks: Vec<StageAckOf>,
        shard: u16,
        conn: u64,
    },
    /// A stage failed.
    StageNack {
        id: u64,
        message: String,
        shard: u16,
        conn: u64,
    },
    /// Run failed executions again: one (partition, root offset) or all.
    PipelineRetry {
        pipeline: String,
        execution: Option<(u32, u64)>,
    },
    /// How many executions of a pipeline still need work on this shard.
    PipelineBusy { pipeline: String },
    /// This shard's partitions and pipeline runs, for `status`.
    Status,
    /// The metadata group's status (shard 0).
    MetaStatus,
    /// Validate, persist and install resources (shard 0 only).
    Apply { yaml: String, force: bool },
    /// Create or revoke a token, then persist and install (shard 0 only).
    Tokens(TokenChange),
    /// Adopt a new topology, opening partitions this shard now owns.
    Install { topology: Topology },
    /// Move a replicated partition's replicas (`hadron cluster move`;
    /// shard 0 only): check, persist, install on the owner.
    Move {
        stream: String,
        partition: u32,
        voters: Vec<u64>,
    },
    /// Add or remove a node of the cluster (`hadron cluster add-node` /
    /// `remove-node`; shard 0 only).
    Nodes(NodeChange),
    /// Rebalance the replicated partitions (`hadron cluster rebalance`;
    /// shard 0 only).
    Rebalance(super::meta::rebalance::Asked),
}

/// A change to the cluster's nodes.
#[derive(Debug)]
pub enum NodeChange {
    /// Add this node (its peer address set).
    Add(crate::config::cluster::PeerSpec),
    /// Remove the node of this id.
    Remove(u64),
}

impl NodeChange {
    /// The wire message that asked for it.
    pub fn message(&self) -> &'static str {
        match self {
            NodeChange::Add(_) => "NodeAdd",
            NodeChange::Remove(_) => "NodeRemove",
        }
    }
}

/// A change to the tokens (`hadron token create` / `revoke`).
#[derive(Debug)]
pub enum TokenChange {
    /// A new token; refused when one of that name exists.
    Create(TokenSpec),
    /// Remove the named token; the client's change id (0: none).
    Revoke(String, u64),
}

/// The answer to a [`Request`].
#[derive(Debug)]
pub enum Reply {
    /// For `Publish`.
    Published(Published),
    /// For `Fetch`: next offset and events.
    Fetched(u64, Vec<(u64, Vec<u8>)>),
    /// For requests with nothing to say.
    Done,
    /// For `Status`: partitions, and pipeline runs by pipeline name.
    Status(Vec<PartitionStatus>, Vec<(String, RunStatus)>),
    /// A count (for `PipelineBusy`).
    Count(usize),
    /// For `MetaStatus`: the document's `meta` object.
    Meta(serde_json::Value),
    /// For `Apply`: one line per resource.
    Applied(Vec<String>),
    /// For `Ack`: the ids that were not outstanding (the others were
    /// acked).
    Refused(Vec<u64>),
    /// For `StageAcks`: the acks that were not taken, and why (the others
    /// were).
    Unsettled(Vec<(u64, Error)>),
    /// The request failed.
    Failed(Error),
}

impl From<Error> for Reply {
    fn from(e: Error) -> Reply {
        Reply::Failed(e)
    }
}

impl From<Result<(), Error>> for Reply {
    fn from(result: Result<(), Error>) -> Reply {
        match result {
            Ok(()) => Reply::Done,
            Err(f) => f.into(),
        }
    }
}

/// What travels over the mesh.
#[derive(Debug)]
pub enum MeshMsg {
    /// A request, answered to its sender with `Reply { id }`.
    Request { id: u64, req: Request },
    /// The answer to request `id`.
    Reply { id: u64, reply: Reply },
    /// A frame to write to connection `conn` of the receiving shard.
    Push { conn: u64, frame: Vec<u8> },
}

/// A shard's way to the other shards: glommio's channel mesh in the
/// server, an in-process router in the simulation. Messages between two
/// shards arrive in the order they were sent.
pub trait Mesh {
    /// Sends `msg` to shard `to`; fails when `to` is gone.
    fn send_to(&self, to: u16, msg: MeshMsg) -> LocalBoxFuture<'_, Result<(), String>>;
}

impl Mesh for Senders<MeshMsg> {
    fn send_to(&self, to: u16, msg: MeshMsg) -> LocalBoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            Senders::send_to(self, to as usize, msg)
                .await
                .map_err(|e| e.to_string())
        })
    }
}
