//! What a shard tells the Prometheus endpoint about its Raft groups
//! (docs/metrics.md, "Replication"): per group on this shard (a
//! partition's events and offsets groups, a pipeline run's outputs group)
//! its status, and on a leader each other voter's lag and whether this
//! shard's link to it is up; on shard 0 the metadata group.
//!
//! Gathered only on a node of a cluster (`cluster:`): a single node's
//! snapshot carries `None` and walks nothing more. The groups are those
//! this shard owns, so their number is bounded by `partitionsMax` (three
//! groups per partition at most: events, offsets, and one outputs group
//! per pipeline of its stream, `pipelinesMax`).

use super::partition::replica::{Replica, ReplicaStatus};
use super::*;

/// A voter more than this many entries behind its leader's last index
/// makes the group under-replicated. The same bound as a learner's to be
/// promoted (`replica_move::CATCH_UP_LAG_ENTRIES_MAX`): a healthy follower
/// under load is a few entries (the appends in flight) behind, never this
/// many for long; one that is down or stuck falls behind by every entry
/// written after.
pub const UNDER_REPLICATED_LAG_ENTRIES_MAX: u64 = partition::replica_move::CATCH_UP_LAG_ENTRIES_MAX;

/// Which of a partition's Raft groups a replica is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum GroupKind {
    /// The events log.
    Events,
    /// The consumer groups' committed offsets.
    Offsets,
    /// A pipeline run's outputs.
    Outputs,
}

impl GroupKind {
    pub const ALL: [GroupKind; 3] = [GroupKind::Events, GroupKind::Offsets, GroupKind::Outputs];

    /// Its `kind` label.
    pub fn label(self) -> &'static str {
        match self {
            GroupKind::Events => "events",
            GroupKind::Offsets => "offsets",
            GroupKind::Outputs => "outputs",
        }
    }
}

/// On a leader: one other voter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowerMetrics {
    pub node: u64,
    /// The leader's last index minus the voter's matched index; `None`
    /// while the leader does not track it.
    pub lag_entries: Option<u64>,
    /// This shard's peer link to the voter's node is connected.
    pub connected: bool,
}

/// One Raft group of this shard.
#[derive(Debug, Clone)]
pub struct ReplicaMetrics {
    pub kind: GroupKind,
    /// The partition's stream (a pipeline's source stream).
    pub stream: String,
    pub partition: u32,
    /// The pipeline, for an outputs group.
    pub pipeline: Option<String>,
    /// Its status (all zeros but `stopped` when offline).
    pub status: ReplicaStatus,
    /// Its log could not open on this node (`shard/offline.rs`).
    pub offline: bool,
    /// On the leader, every other voter; empty elsewhere.
    pub followers: Vec<FollowerMetrics>,
}

impl ReplicaMetrics {
    /// This node leads the group and some other voter is behind: its
    /// link is down, the leader does not track it, or it lags more than
    /// [`UNDER_REPLICATED_LAG_ENTRIES_MAX`] entries.
    pub fn under_replicated(&self) -> bool {
        self.status.is_leader
            && self.followers.iter().any(|f| {
                !f.connected
                    || f.lag_entries
                        .is_none_or(|lag| lag > UNDER_REPLICATED_LAG_ENTRIES_MAX)
            })
    }

    /// Its replication stopped on this node (its log refused a write); an
    /// offline replica never started and is counted as offline instead.
    pub fn stopped(&self) -> bool {
        !self.offline && self.status.stopped.is_some()
    }
}

/// The metadata group on this node (shard 0).
#[derive(Debug, Clone)]
pub struct MetaMetrics {
    pub status: ReplicaStatus,
    /// The last entry applied to the metadata here.
    pub applied: u64,
}

/// A cluster node's shard's groups.
#[derive(Debug, Clone, Default)]
pub struct ReplicationMetrics {
    pub groups: Vec<ReplicaMetrics>,
    pub meta: Option<MetaMetrics>,
}

impl<S: Storage + Clone + 'static, R: Runtime> Shard<S, R> {
    /// This shard's groups now; `None` on a node outside a cluster.
    pub(super) fn replication_metrics(&self) -> Option<ReplicationMetrics> {
        self.settings.config.cluster.as_ref()?;
        let links = self.peer_links.borrow().clone();
        let group = |kind, stream: &str, partition, pipeline, r: &Replica<S, R>| {
            let followers = r
                .follower_lags()
                .into_iter()
                .map(|(node, lag_entries)| FollowerMetrics {
                    node,
                    lag_entries,
                    connected: links.as_ref().is_none_or(|l| l.connected(node)),
                })
                .collect();
            ReplicaMetrics {
                kind,
                stream: stream.to_owned(),
                partition,
                pipeline,
                status: r.status(),
                offline: false,
                followers,
            }
        };
        let mut groups = Vec::new();
        for p in self.partitions.borrow().values() {
            if let Some(r) = &p.replica {
                groups.push(group(GroupKind::Events, &p.stream, p.partition, None, r));
            }
            if let Some(r) = &p.offsets_replica {
                groups.push(group(GroupKind::Offsets, &p.stream, p.partition, None, r));
            }
        }
        for ((name, partition), run) in self.runs.borrow().iter() {
            if let Some(r) = run.replica() {
                let stream = &run.source.stream;
                groups.push(group(
                    GroupKind::Outputs,
                    stream,
                    *partition,
                    Some(name.clone()),
                    &r,
                ));
            }
        }
        groups.extend(self.offline_replica_metrics());
        let meta = self.meta_group().map(|m| MetaMetrics {
            status: m.replica.status(),
            applied: m.applied(),
        });
        Some(ReplicationMetrics { groups, meta })
    }

    /// The groups offline on this shard: a partition's two, and each
    /// pipeline run's outputs group.
    fn offline_replica_metrics(&self) -> Vec<ReplicaMetrics> {
        let offline = |kind, stream: &str, partition, pipeline, why: &str| ReplicaMetrics {
            kind,
            stream: stream.to_owned(),
            partition,
            pipeline,
            status: offline::offline_replica_status(why),
            offline: true,
            followers: Vec::new(),
        };
        let mut groups = Vec::new();
        for ((stream, partition), why) in self.offline.borrow().iter() {
            for kind in [GroupKind::Events, GroupKind::Offsets] {
                groups.push(offline(kind, stream, *partition, None, why));
            }
        }
        let topology = self.topology.borrow();
        for ((name, partition), why) in self.offline_runs.borrow().iter() {
            let stream = topology
                .pipelines
                .get(name)
                .map_or("", |p| p.source_stream.as_str());
            let pipeline = Some(name.clone());
            groups.push(offline(
                GroupKind::Outputs,
                stream,
                *partition,
                pipeline,
                why,
            ));
        }
        groups
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leader_with(followers: Vec<FollowerMetrics>) -> ReplicaMetrics {
        ReplicaMetrics {
            kind: GroupKind::Events,
            stream: "s".into(),
            partition: 0,
            pipeline: None,
            status: ReplicaStatus {
                is_leader: true,
                ..offline::offline_replica_status("x")
            },
            offline: false,
            followers,
        }
    }

    fn follower(lag_entries: Option<u64>, connected: bool) -> FollowerMetrics {
        FollowerMetrics {
            node: 2,
            lag_entries,
            connected,
        }
    }

    /// A leader is under-replicated by a voter whose link is down, that it
    /// does not track, or that lags past the bound; a lag within it (the
    /// appends in flight) is not; a follower never counts.
    #[test]
    fn under_replicated_means_a_voter_down_untracked_or_past_the_lag_bound() {
        let max = UNDER_REPLICATED_LAG_ENTRIES_MAX;
        assert!(!leader_with(vec![follower(Some(0), true)]).under_replicated());
        assert!(!leader_with(vec![follower(Some(max), true)]).under_replicated());
        assert!(leader_with(vec![follower(Some(max + 1), true)]).under_replicated());
        assert!(leader_with(vec![follower(Some(0), false)]).under_replicated());
        assert!(leader_with(vec![follower(None, true)]).under_replicated());
        assert!(!leader_with(Vec::new()).under_replicated());
        let mut not_leader = leader_with(vec![follower(None, false)]);
        not_leader.status.is_leader = false;
        assert!(!not_leader.under_replicated());
    }

    /// An offline replica counts as offline, not as stopped, though its
    /// status says why in `stopped`.
    #[test]
    fn an_offline_replica_is_not_counted_stopped() {
        let mut m = leader_with(Vec::new());
        assert!(m.stopped(), "the offline status carries a reason");
        m.offline = true;
        assert!(!m.stopped());
    }
}
