//! Consumer groups on a replicated partition (docs/replication.md section
//! 6): the durable groups' offsets log (`groups/`, unchanged in content)
//! is the log of a Raft group of its own, the **offsets group**, with the
//! partition's voters.
//!
//! ```text
//!  events leader:    groups deliver committed events (below the high
//!                    watermark); every commit interval the snapshot of
//!                    committed offsets is proposed to the offsets group
//!  offsets group:    led where the events group is (its leader hands the
//!                    lead to the events leader once caught up)
//!  a new leader:     groups restart from the last snapshot in its offsets
//!                    log, deliveries of the old leader forgotten
//!  a follower:       groups keep their members, deliver nothing, and
//!                    forget what they had out when the lead leaves
//! ```
//!
//! What this guarantees is what a restart gives a single node: at least
//! once. Every offset below a snapshot was acknowledged by a consumer, so
//! whichever snapshot a new leader finds (the last committed one, or one
//! a deposed leader wrote that did not commit) skips only acknowledged
//! events; what was delivered since it is delivered again. A committed
//! offset never goes back on one node's log; across a failover it may
//! (to the last snapshot the new leader holds), which only redelivers.

use std::rc::Rc;

use hadron_engine::storage::Storage;

use super::Partition;
use super::replica::{self, Replica, ReplicaDuty, encode_batch};
use crate::shard::clock::Clock;

/// The name a partition's offsets group goes by between peers (in place
/// of a stream's: `/` is in no stream name).
pub fn offsets_group(stream: &str) -> String {
    format!("{OFFSETS_GROUP_PREFIX}{stream}")
}

/// What begins the peer name of a stream's offsets groups.
pub const OFFSETS_GROUP_PREFIX: &str = "offsets/";

/// The offsets group's loop: follows the events group's leader, and keeps
/// the log within its retention on every replica.
struct OffsetsDuty<S: Storage, C: Clock> {
    partition: Rc<Partition<S, C>>,
    replica: Rc<Replica<S, C>>,
}

impl<S: Storage, C: Clock> ReplicaDuty for OffsetsDuty<S, C> {
    fn name(&self) -> String {
        format!(
            "stream {} partition {} group offsets",
            self.partition.stream, self.partition.partition
        )
    }

    fn moved(&self) {}

    async fn lead(&self, _term: u64) -> Result<(), String> {
        Ok(())
    }

    /// Leadership goes to the events group's leader (once caught up); the
    /// snapshots beyond the retention go on every replica.
    async fn after_turn(&self) -> Result<(), String> {
        if let Some(events) = &self.partition.replica
            && let Some((leader, _)) = events.leader()
        {
            self.replica.set_preferred(leader);
        }
        if !self.replica.is_leader() {
            let now = self.partition.clock.now_ms();
            let _ = self.partition.offsets.apply_retention(now).await;
        }
        Ok(())
    }
}

impl<S: Storage, C: Clock> Partition<S, C> {
    /// Turns the partition's offsets group until it stops. The shard
    /// spawns it with [`Partition::drive_replication`].
    pub async fn drive_offsets(self: Rc<Self>) {
        let Some(replica) = self.offsets_replica.clone() else {
            return;
        };
        let clock = self.clock.clone();
        let duty = OffsetsDuty {
            partition: self,
            replica: replica.clone(),
        };
        replica::drive(replica, &clock, &duty).await;
    }

    /// Proposes the snapshot `record` to the offsets group. `Ok(false)`
    /// when it was not proposed: this node does not lead the offsets group
    /// (yet: it follows the events leader), so the next interval tries
    /// again.
    pub(super) async fn propose_offsets(&self, record: Vec<u8>) -> Result<bool, String> {
        let Some(replica) = &self.offsets_replica else {
            return Err("the offsets log is not replicated".into());
        };
        if !replica.is_leader() {
            return Ok(false);
        }
        let proposal = replica.propose_batch(encode_batch(&[&record], self.clock.now_ms()));
        match proposal.await {
            Ok(Ok(_)) => Ok(true),
            Ok(Err(e)) => {
                tracing::debug!(stream = %self.stream, partition = self.partition, "group offsets not committed: {e:?}");
                Ok(false)
            }
            Err(_) => Ok(false),
        }
    }

    /// A new leader's groups: the last offsets snapshot of its log is
    /// loaded, and every group restarts from its stored offset (a durable
    /// one) or from what it had acknowledged here (an ephemeral one).
    pub(super) async fn restart_groups(&self, reload: bool) -> Result<(), String> {
        if reload {
            self.load_offsets().await?;
        }
        self.restart_groups_here();
        Ok(())
    }

    /// Every group forgets what it had out and reads on from its stored
    /// offset, else from its own committed one.
    pub(super) fn restart_groups_here(&self) {
        let stored = self.stored_offsets.borrow();
        let start = self.log.stats().start_offset;
        for (name, g) in self.groups.borrow().iter() {
            let at = match stored.get(name) {
                Some(&o) if g.durable => o,
                _ => g.committed(),
            };
            g.restart_at(at.max(start));
        }
    }
}
