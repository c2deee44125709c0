//! The replication families (docs/metrics.md, "Replication"): per Raft
//! group on this node its role, term and indexes, on a leader each other
//! voter's lag, the node's counts of groups led, under-replicated and
//! offline, and the metadata group.
//!
//! Written only when a shard reported its groups, which it does on a node
//! of a cluster: a single node's scrape has none of these families.

use super::*;
use crate::shard::replica_metrics::{GroupKind, MetaMetrics, ReplicaMetrics};

fn flag(b: bool) -> Value {
    Value::Count(u64::from(b))
}

/// A group's labels: stream, partition, kind, and pipeline for an
/// outputs group.
fn group_labels(g: &ReplicaMetrics) -> Labels {
    let mut labels = partition_labels(&g.stream, g.partition);
    labels.push(("kind", g.kind.label().to_owned()));
    if let Some(pipeline) = &g.pipeline {
        labels.push(("pipeline", pipeline.clone()));
    }
    labels
}

impl Scrape {
    pub(super) fn encode_replication(
        &self,
        e: &mut DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        let reported: Vec<_> = self
            .shards
            .iter()
            .filter_map(|s| s.replication.as_ref())
            .collect();
        if reported.is_empty() {
            return Ok(());
        }
        let mut groups: Vec<(Labels, &ReplicaMetrics)> = reported
            .iter()
            .flat_map(|r| &r.groups)
            .map(|g| (group_labels(g), g))
            .collect();
        groups.sort_by(|a, b| a.0.cmp(&b.0));
        encode_groups(e, &groups)?;
        encode_followers(e, &groups)?;
        encode_node(e, &groups)?;
        if let Some(meta) = reported.iter().find_map(|r| r.meta.as_ref()) {
            encode_meta(e, meta)?;
        }
        Ok(())
    }
}

fn encode_groups(
    e: &mut DescriptorEncoder,
    groups: &[(Labels, &ReplicaMetrics)],
) -> Result<(), std::fmt::Error> {
    use Kind::Gauge;
    figures(
        e,
        groups,
        vec![
            (
                "hadron_replica_leader",
                "1 when this node leads the Raft group, else 0.",
                Gauge,
                |g| flag(g.status.is_leader),
            ),
            (
                "hadron_replica_stopped",
                "1 when the group's replication stopped on this node (its log refused a write).",
                Gauge,
                |g| flag(g.stopped()),
            ),
            (
                "hadron_replica_offline",
                "1 when the group's log could not open on this node (offline replica).",
                Gauge,
                |g| flag(g.offline),
            ),
        ],
    )?;
    // An offline replica knows no term or index: it has no such series.
    let open: Vec<(Labels, &ReplicaMetrics)> =
        groups.iter().filter(|(_, g)| !g.offline).cloned().collect();
    figures(
        e,
        &open,
        vec![
            (
                "hadron_replica_term",
                "The Raft term this node's replica is in.",
                Gauge,
                |g| Value::from(g.status.term),
            ),
            (
                "hadron_replica_commit_index",
                "The highest Raft index this replica knows committed.",
                Gauge,
                |g| Value::from(g.status.commit),
            ),
            (
                "hadron_replica_last_index",
                "The last Raft index in this replica's log.",
                Gauge,
                |g| Value::from(g.status.last_index),
            ),
            (
                "hadron_replica_applied_index",
                "The highest Raft index this replica applied.",
                Gauge,
                |g| Value::from(g.status.applied),
            ),
        ],
    )
}

/// On each leader, every other voter's lag.
fn encode_followers(
    e: &mut DescriptorEncoder,
    groups: &[(Labels, &ReplicaMetrics)],
) -> Result<(), std::fmt::Error> {
    let samples = groups.iter().flat_map(|(labels, g)| {
        g.followers.iter().filter_map(move |f| {
            let lag = f.lag_entries?;
            let mut labels = labels.clone();
            labels.push(("follower", f.node.to_string()));
            Some((labels, Value::from(lag)))
        })
    });
    family(
        e,
        "hadron_replica_follower_lag_entries",
        "On the leader: its last Raft index minus the index up to which the follower's log matches.",
        Kind::Gauge,
        samples,
    )
}

/// The node's counts, per kind of group (every kind, zeros included).
fn encode_node(
    e: &mut DescriptorEncoder,
    groups: &[(Labels, &ReplicaMetrics)],
) -> Result<(), std::fmt::Error> {
    type Count = fn(&ReplicaMetrics) -> bool;
    let counts: [(&str, &str, Count); 3] = [
        ("hadron_replicas_led", "Raft groups this node leads.", |g| {
            g.status.is_leader
        }),
        (
            "hadron_replicas_under_replicated",
            "Raft groups this node leads with a voter whose link is down, untracked, or past the lag bound (docs/metrics.md).",
            ReplicaMetrics::under_replicated,
        ),
        (
            "hadron_replicas_offline",
            "Raft groups offline on this node (their log could not open).",
            |g| g.offline,
        ),
    ];
    for (name, help, counted) in counts {
        let samples = GroupKind::ALL.map(|kind| {
            let n = groups
                .iter()
                .filter(|(_, g)| g.kind == kind && counted(g))
                .count();
            (vec![("kind", kind.label().to_owned())], Value::from(n))
        });
        family(e, name, help, Kind::Gauge, samples)?;
    }
    Ok(())
}

fn encode_meta(e: &mut DescriptorEncoder, meta: &MetaMetrics) -> Result<(), std::fmt::Error> {
    let none = Labels::new;
    family(
        e,
        "hadron_meta_leader",
        "1 when this node leads the metadata group, else 0.",
        Kind::Gauge,
        [(none(), flag(meta.status.is_leader))],
    )?;
    family(
        e,
        "hadron_meta_term",
        "The metadata group's Raft term on this node.",
        Kind::Gauge,
        [(none(), Value::from(meta.status.term))],
    )?;
    family(
        e,
        "hadron_meta_applied_index",
        "The last metadata entry applied on this node.",
        Kind::Gauge,
        [(none(), Value::from(meta.applied))],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::partition::replica::ReplicaStatus;
    use crate::shard::replica_metrics::{FollowerMetrics, ReplicationMetrics};

    fn shard(replication: Option<ReplicationMetrics>) -> ShardMetrics {
        ShardMetrics {
            partitions: Vec::new(),
            runs: Vec::new(),
            conns: ConnTotals::default(),
            dropped_deliveries: 0,
            replication,
        }
    }

    fn text(shards: Vec<ShardMetrics>) -> String {
        let scrape = Scrape {
            shards,
            ..Scrape::default()
        };
        openmetrics_to_text(&openmetrics(scrape).unwrap())
    }

    fn status(is_leader: bool, term: u64, commit: u64, last: u64) -> ReplicaStatus {
        ReplicaStatus {
            leader: Some(1),
            is_leader,
            term,
            commit,
            applied: commit,
            last_index: last,
            high_watermark: 0,
            voters: vec![1, 2, 3],
            learners: Vec::new(),
            preferred: 1,
            recovering: false,
            inbox_dropped: 0,
            removed: false,
            stopped: None,
            disk_full: None,
        }
    }

    fn group(kind: GroupKind, partition: u32, status: ReplicaStatus) -> ReplicaMetrics {
        ReplicaMetrics {
            kind,
            stream: "orders".into(),
            partition,
            pipeline: None,
            status,
            offline: false,
            followers: Vec::new(),
        }
    }

    /// A single node's shards report no groups: none of the replication
    /// families is written.
    #[test]
    fn a_single_node_writes_no_replication_family() {
        let body = text(vec![shard(None), shard(None)]);
        assert!(body.contains("hadron_shards 2"), "{body}");
        for name in ["hadron_replica", "hadron_meta_"] {
            assert!(!body.contains(name), "{name} in\n{body}");
        }
    }

    /// A cluster node's groups, over two shards: per group its role, term
    /// and indexes; a leader's lag per follower; the node's counts per
    /// kind (zeros included); an offline group with no term or index
    /// series; the metadata group once.
    #[test]
    fn a_cluster_node_writes_each_group_its_followers_and_the_counts() {
        let mut led = group(GroupKind::Events, 0, status(true, 4, 90, 100));
        led.followers = vec![
            FollowerMetrics {
                node: 2,
                lag_entries: Some(3),
                connected: true,
            },
            FollowerMetrics {
                node: 3,
                lag_entries: Some(100),
                connected: true,
            },
        ];
        let followed = group(GroupKind::Offsets, 0, status(false, 4, 7, 7));
        let mut stopped = group(GroupKind::Events, 1, status(false, 2, 5, 5));
        stopped.status.stopped = Some("the log refused a write".into());
        let mut offline = group(GroupKind::Outputs, 1, status(false, 0, 0, 0));
        offline.pipeline = Some("bill".into());
        offline.offline = true;
        offline.status.stopped = Some("offline on this node: gone".into());
        let meta = MetaMetrics {
            status: status(true, 9, 12, 12),
            applied: 12,
        };
        let body = text(vec![
            shard(Some(ReplicationMetrics {
                groups: vec![led, followed],
                meta: Some(meta),
            })),
            shard(Some(ReplicationMetrics {
                groups: vec![stopped, offline],
                meta: None,
            })),
        ]);
        let ev0 = r#"stream="orders",partition="0",kind="events""#;
        let off0 = r#"stream="orders",partition="0",kind="offsets""#;
        let ev1 = r#"stream="orders",partition="1",kind="events""#;
        let out1 = r#"stream="orders",partition="1",kind="outputs",pipeline="bill""#;
        for line in [
            format!("hadron_replica_leader{{{ev0}}} 1"),
            format!("hadron_replica_leader{{{off0}}} 0"),
            format!("hadron_replica_term{{{ev0}}} 4"),
            format!("hadron_replica_commit_index{{{ev0}}} 90"),
            format!("hadron_replica_last_index{{{ev0}}} 100"),
            format!("hadron_replica_applied_index{{{off0}}} 7"),
            format!("hadron_replica_follower_lag_entries{{{ev0},follower=\"2\"}} 3"),
            format!("hadron_replica_follower_lag_entries{{{ev0},follower=\"3\"}} 100"),
            format!("hadron_replica_stopped{{{ev1}}} 1"),
            format!("hadron_replica_stopped{{{out1}}} 0"),
            format!("hadron_replica_offline{{{out1}}} 1"),
            format!("hadron_replica_offline{{{ev1}}} 0"),
            "hadron_replicas_led{kind=\"events\"} 1".into(),
            "hadron_replicas_led{kind=\"offsets\"} 0".into(),
            "hadron_replicas_under_replicated{kind=\"events\"} 1".into(),
            "hadron_replicas_under_replicated{kind=\"outputs\"} 0".into(),
            "hadron_replicas_offline{kind=\"outputs\"} 1".into(),
            "hadron_meta_leader 1".into(),
            "hadron_meta_term 9".into(),
            "hadron_meta_applied_index 12".into(),
        ] {
            assert!(
                body.lines().any(|l| l == line),
                "no line {line:?} in\n{body}"
            );
        }
        assert!(
            !body.contains(&format!("hadron_replica_term{{{out1}}}")),
            "an offline group has no term:\n{body}"
        );
        let families = body
            .lines()
            .filter(|l| l.starts_with("# TYPE hadron_replica_leader "));
        assert_eq!(families.count(), 1, "one family for both shards");
    }
}
