//! Replication: one Raft group's log, driven by its shard's loop
//! (docs/replication.md, sections 3 and 5; step 3 of section 15).
//!
//! - [`ReplicatedLog`] (`group.rs`) owns a raft-rs `RawNode` and runs its
//!   Ready cycle: proposals of a turn go in as ONE `MsgPropose`; a leader's
//!   messages leave at once; entries are appended to the store (readable at
//!   once, durable later); messages that need durability are held until
//!   the caller reports the round's fdatasync ([`ReplicatedLog::on_persisted`]);
//!   a proposal is answered only when its entry is committed (on a
//!   majority's disks, the leader's counted only once durable), with its
//!   index, or with [`ProposeError::NotLeader`] when leadership moved.
//! - [`LogStore`] (`store.rs`) is the boundary to the log: raft-rs's
//!   `Storage` plus the Ready cycle's writes. [`MemLogStore`] implements it
//!   in memory with group commit's crash semantics, until the engine's
//!   adapter (step 2) replaces it.
//! - [`PeerNet`] sends a raft message towards another node. Delivery is
//!   best effort: Raft tolerates loss, duplication, delay and reordering.
//! - Time comes from the shard's [`Clock`](crate::shard::clock::Clock): one
//!   tick per [`GroupSettings::tick_interval`].
//!
//! A replicated partition (`shard/partition/replica.rs`) drives one per
//! partition; the cluster simulation (`sim/`) drives it over memory.

mod engine_store;
mod group;
pub mod peer_frame;
mod slog_drain;
mod store;

#[cfg(test)]
mod sim;

use std::ops::Range;
use std::time::Duration;

use raft::eraftpb::Message;

pub use engine_store::{EngineLogStore, read_fetches};
#[cfg(test)]
pub use group::Committed;
pub use group::{Proposal, ReplicatedLog, lists as conf_lists};
#[cfg(test)]
pub use store::MemLogStore;
pub use store::{LogStore, StoreError};

/// A shard's links to the same shard on the other nodes: every group of
/// the shard sends through them (one connection per peer node, messages
/// of all groups coalesced in its frames).
pub trait PeerLinks {
    /// Queues `msg` for node `to`, for the group of `stream`/`partition`
    /// there, best effort. Returns false when it was dropped.
    fn send(&self, to: u64, stream: &str, partition: u32, msg: Message) -> bool;

    /// Whether the link to node `to` is connected now (for the metrics'
    /// under-replicated count). Links that do not track it say yes.
    fn connected(&self, _to: u64) -> bool {
        true
    }
}

/// One group's [`PeerNet`] over its shard's [`PeerLinks`].
#[derive(Clone)]
pub struct GroupNet {
    pub links: std::rc::Rc<dyn PeerLinks>,
    pub stream: std::rc::Rc<str>,
    pub partition: u32,
}

impl PeerNet for GroupNet {
    fn send(&self, msg: Message) -> bool {
        self.links.send(msg.to, &self.stream, self.partition, msg)
    }
}

/// The leader of each replicated partition as its owning shard last saw
/// it, for Metadata answered on any shard: (node id, term).
#[derive(Debug, Default)]
pub struct Leaders(std::sync::Mutex<std::collections::HashMap<(String, u32), (u64, u64)>>);

impl Leaders {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<(String, u32), (u64, u64)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `stream`/`partition`'s leader (`None`: not known).
    pub fn set(&self, stream: &str, partition: u32, leader: Option<(u64, u64)>) {
        let key = (stream.to_owned(), partition);
        let mut map = self.lock();
        match leader {
            Some(l) => {
                if map.get(&key) != Some(&l) {
                    map.insert(key, l);
                }
            }
            None => {
                map.remove(&key);
            }
        }
    }

    /// `stream`/`partition`'s leader and term, if known.
    pub fn get(&self, stream: &str, partition: u32) -> Option<(u64, u64)> {
        self.lock().get(&(stream.to_owned(), partition)).copied()
    }
}

/// Sends raft messages to other nodes of the group.
pub trait PeerNet {
    /// Sends `msg` to node `msg.to`, best effort. Returns false when the
    /// link is known to be down (the message is dropped).
    fn send(&self, msg: Message) -> bool;
}

/// Ticks between a leader's heartbeats (100 ms at 50 ms a tick).
pub const HEARTBEAT_TICKS: usize = 2;
/// Ticks without a leader before a follower campaigns, at least (0.5 s).
pub const ELECTION_TICKS: usize = 10;
/// Proposals queued for the next turn's `MsgPropose`, at most: beyond it a
/// proposal is refused `Busy` (the shard's publish backpressure).
pub const PROPOSALS_QUEUED_MAX: usize = 4_096;
/// Bytes of entries in one append message, at most (raft-rs's default 0
/// would send one entry per message).
pub const MESSAGE_BYTES_MAX: u64 = 1 << 20;
/// Append messages in flight to one follower, at most.
pub const INFLIGHT_MESSAGES_MAX: usize = 256;
/// Bytes of proposed but uncommitted entries, at most (proposals beyond it
/// are refused `Busy`).
pub const UNCOMMITTED_BYTES_MAX: u64 = 64 << 20;
/// A committed conf change's bytes, at most: checked before protobuf
/// decodes them (RUSTSEC-2024-0437, section 1 finding 8).
pub const CONF_CHANGE_BYTES_MAX: usize = 4 << 10;
/// Ready cycles one turn runs at most (each makes progress; the bound only
/// stops a runaway loop).
pub const READIES_PER_TURN_MAX: usize = 64;

/// How one group is driven.
#[derive(Debug, Clone)]
pub struct GroupSettings {
    /// This node's id (non-zero).
    pub node_id: u64,
    /// The group's id, for logs.
    pub group_id: u64,
    /// Time per tick.
    pub tick_interval: Duration,
    /// The range the election timeout is drawn from, in ticks (at least
    /// [`ELECTION_TICKS`]). raft-rs draws it with an unseedable RNG, so a
    /// simulation passes a one-value range per node (distinct per node,
    /// varied by seed) to keep runs replayable (section 1, finding 6).
    pub election_ticks: Range<usize>,
}

impl GroupSettings {
    /// The production settings: 50 ms ticks, election timeout of 10 to 19
    /// ticks (0.5 to 1 s).
    pub fn new(node_id: u64, group_id: u64) -> GroupSettings {
        GroupSettings {
            node_id,
            group_id,
            tick_interval: Duration::from_millis(50),
            election_ticks: ELECTION_TICKS..2 * ELECTION_TICKS,
        }
    }
}

/// Why a proposal was not committed (or may not have been).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProposeError {
    /// This node is not (or no longer) the group's leader: the proposal may
    /// or may not commit later under another leader. `leader` is the
    /// leader this node knows of, if any.
    NotLeader { leader: Option<u64> },
    /// Too many proposals queued or uncommitted: try again later.
    Busy,
    /// The group stopped (a store error, or the node shut down).
    Stopped(String),
}

impl std::fmt::Display for ProposeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProposeError::NotLeader { leader: Some(id) } => {
                write!(f, "not the leader of this group; node {id} is")
            }
            ProposeError::NotLeader { leader: None } => {
                write!(
                    f,
                    "not the leader of this group; no leader is known (an election is running)"
                )
            }
            ProposeError::Busy => write!(
                f,
                "too many proposals waiting for this group (at most {PROPOSALS_QUEUED_MAX} queued, {UNCOMMITTED_BYTES_MAX} bytes uncommitted): retry later"
            ),
            ProposeError::Stopped(why) => write!(f, "the group stopped: {why}"),
        }
    }
}

/// Why a group stopped: the driver cannot go on without breaking the Raft
/// contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupError {
    /// The store refused a Ready's write.
    Store(StoreError),
    /// raft-rs refused its configuration or state.
    Raft(String),
    /// A committed entry this driver never proposes or cannot decode.
    BadEntry { index: u64, why: String },
    /// Its driver stopped it ([`ReplicatedLog::halt`]).
    Halted(String),
}

impl std::fmt::Display for GroupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GroupError::Store(e) => write!(f, "raft log store: {e}"),
            GroupError::Raft(e) => write!(f, "raft: {e}"),
            GroupError::BadEntry { index, why } => {
                write!(f, "committed raft entry {index}: {why}")
            }
            GroupError::Halted(why) => write!(f, "{why}"),
        }
    }
}
