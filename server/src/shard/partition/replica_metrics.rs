//! What the Prometheus endpoint reads of a replica beyond its status: on
//! a leader, how far each other voter's log is behind its own
//! (docs/metrics.md, "Replication").
//!
//! Read once per scrape, on the shard, from raft-rs's progress tracker:
//! nothing is kept for it, so a node that is not scraped pays nothing.

use hadron_engine::storage::Storage;

use super::replica::Replica;
use crate::shard::clock::Clock;

impl<S: Storage, C: Clock> Replica<S, C> {
    /// On a leader: each voter other than this node, with its lag in
    /// entries (the leader's last index minus the index up to which the
    /// voter's log matches it; `None` when the leader does not track the
    /// voter yet). Empty on a follower.
    pub fn follower_lags(&self) -> Vec<(u64, Option<u64>)> {
        let group = self.group.borrow();
        if !group.is_leader() {
            return Vec::new();
        }
        let me = group.node_id();
        let last = group.last_index();
        group
            .conf_state()
            .voters
            .into_iter()
            .filter(|&id| id != me)
            .map(|id| (id, group.matched(id).map(|m| last.saturating_sub(m))))
            .collect()
    }
}
