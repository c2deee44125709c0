//! Offline replicas (docs/replication.md section 10, "A lost
//! `log.meta`"): a replicated partition, or a pipeline run's outputs
//! group, whose log cannot open on this node (its `log.meta` lost, an I/O
//! error) is taken offline on this node alone, instead of refusing the
//! node's start. Nothing in its directory is changed.
//!
//! ```text
//!  install: open fails (replicated)  -> offline here, one error line
//!           (a single node's log: the only copy, the start is refused)
//!  offline: no group here -> its peers' messages are dropped (no votes,
//!           no acks: the group runs with this replica down);
//!           requests -> ReplicaOffline (code NotLeader, naming another
//!           replica: a client follows it); status -> replication.stopped
//!  placement no longer names this node (a move, a drain), at that
//!  install or at a start -> its directories deleted, never opened again
//!  log.meta restored + restart -> opens, catches up as any replica
//! ```
//!
//! An offline replica stays offline until the node restarts (an install
//! does not try it again: an operator restores a directory with the node
//! down). A replica the group had not removed yet when it is deleted is
//! as safe as one whose node is down: it acknowledges and votes nothing,
//! and a replica whose `log.meta` is lost could never rejoin under its
//! old id anyway (`replica_repair.rs`).

use std::path::PathBuf;

use super::status::CommitStatus;
use super::*;

/// What an offline replica's status shows, in `stopped`.
pub(super) fn offline_reason(why: &str) -> String {
    format!("offline on this node: {why}")
}

/// The status of a group whose replica is offline here: nothing known but
/// why.
pub(super) fn offline_replica_status(why: &str) -> partition::replica::ReplicaStatus {
    partition::replica::ReplicaStatus {
        leader: None,
        is_leader: false,
        term: 0,
        commit: 0,
        applied: 0,
        last_index: 0,
        high_watermark: 0,
        voters: Vec::new(),
        learners: Vec::new(),
        preferred: 0,
        recovering: false,
        inbox_dropped: 0,
        removed: false,
        stopped: Some(offline_reason(why)),
        disk_full: None,
    }
}

/// The directories a replicated partition of `stream` keeps on a node:
/// its own (events and offsets logs) and each pipeline run's of it.
pub(super) fn replica_dirs(
    data_dir: &Path,
    stream: &str,
    partition: u32,
    pipelines: &[String],
) -> Vec<PathBuf> {
    let mut dirs = vec![partition::partition_dir(data_dir, stream, partition)];
    dirs.extend(
        pipelines
            .iter()
            .map(|name| pipeline_run_dir(data_dir, name, partition)),
    );
    dirs
}

/// A pipeline run's outputs log directory (`PipelineRun::open`).
fn pipeline_run_dir(data_dir: &Path, pipeline: &str, partition: u32) -> PathBuf {
    data_dir
        .join("pipelines")
        .join(pipeline)
        .join(format!("{partition:05}"))
}

impl<S: Storage + Clone + 'static, R: Runtime> Shard<S, R> {
    /// Takes `stream`/`partition` offline here: its open failed with `why`.
    pub(super) fn take_offline(&self, stream: &str, partition: u32, why: String) {
        tracing::error!(
            "stream {stream} partition {partition} is offline on this node (the node serves the rest; its group runs without this replica): {why}"
        );
        self.offline
            .borrow_mut()
            .insert((stream.to_owned(), partition), why);
    }

    /// Takes pipeline `name`'s run on `partition` offline here.
    pub(super) fn take_run_offline(&self, name: &str, partition: u32, why: String) {
        tracing::error!(
            "pipeline {name} partition {partition} is offline on this node (the node serves the rest; its outputs group runs without this replica): {why}"
        );
        self.offline_runs
            .borrow_mut()
            .insert((name.to_owned(), partition), why);
    }

    /// Whether `stream`/`partition` is offline here.
    pub(super) fn is_offline(&self, stream: &str, partition: u32) -> bool {
        self.offline
            .borrow()
            .contains_key(&(stream.to_owned(), partition))
    }

    /// Whether pipeline `name`'s run on `partition` is offline here.
    pub(super) fn is_run_offline(&self, name: &str, partition: u32) -> bool {
        self.offline_runs
            .borrow()
            .contains_key(&(name.to_owned(), partition))
    }

    /// The refusal of a request for an offline partition, naming another
    /// of its replicas (another at each refusal, as `not_here` does).
    pub(super) fn offline_error(&self, stream: &str, partition: u32) -> Option<Error> {
        let why = self
            .offline
            .borrow()
            .get(&(stream.to_owned(), partition))
            .cloned()?;
        let spec = self.topology.borrow().streams.get(stream).cloned();
        let node = self.settings.config.node_id();
        let others: Vec<u64> = spec
            .map(|s| self.placed_nodes(&s, partition))
            .unwrap_or_default()
            .into_iter()
            .filter(|&n| n != node)
            .collect();
        let turn = self.hints.get();
        self.hints.set(turn.wrapping_add(1));
        let leader = others
            .get((turn % others.len().max(1) as u64) as usize)
            .and_then(|&n| self.leader_at(n, 0, self.owner(stream, partition)));
        Some(Error::ReplicaOffline {
            stream: stream.to_owned(),
            partition,
            why,
            leader,
        })
    }

    /// Deletes the directories of the offline replicas (and offline runs)
    /// whose partition placement no longer names this node: a move or a
    /// drain took them off it.
    pub(super) fn reap_offline(&self, topology: &Topology) {
        let node = self.settings.config.node_id();
        let placed_here = |stream: &str, partition: u32| {
            topology
                .streams
                .get(stream)
                .is_some_and(|s| self.placed_nodes(s, partition).contains(&node))
        };
        let gone: Vec<(String, u32)> = self
            .offline
            .borrow()
            .keys()
            .filter(|(stream, partition)| !placed_here(stream, *partition))
            .cloned()
            .collect();
        let data_dir = &self.settings.config.data_dir;
        for key in gone {
            self.offline.borrow_mut().remove(&key);
            let pipelines: Vec<String> = topology
                .pipelines
                .values()
                .filter(|p| p.source_stream == key.0)
                .map(|p| p.name.clone())
                .collect();
            delete_dirs(&replica_dirs(data_dir, &key.0, key.1, &pipelines));
        }
        let runs_gone: Vec<(String, u32)> = self
            .offline_runs
            .borrow()
            .keys()
            .filter(|(name, partition)| {
                topology
                    .pipelines
                    .get(name)
                    .is_none_or(|p| !placed_here(&p.source_stream, *partition))
            })
            .cloned()
            .collect();
        for key in runs_gone {
            self.offline_runs.borrow_mut().remove(&key);
            delete_dirs(&[pipeline_run_dir(data_dir, &key.0, key.1)]);
        }
    }

    /// The status of each partition offline here.
    pub(super) fn offline_status(&self) -> Vec<PartitionStatus> {
        self.offline
            .borrow()
            .iter()
            .map(|((stream, partition), why)| PartitionStatus {
                stream: stream.clone(),
                partition: *partition,
                shard: self.id,
                start_offset: 0,
                next_offset: 0,
                durable_offset: 0,
                disk_full: None,
                segments: 0,
                bytes: 0,
                read_only: Some(offline_reason(why)),
                commits: CommitStatus::from(hadron_engine::CommitStats::default()),
                dedup_keys: 0,
                dedup_oldest_ms: None,
                groups: Vec::new(),
                replication: Some(offline_replica_status(why)),
                offsets_replication: Some(offline_replica_status(why)),
            })
            .collect()
    }

    /// The status of each pipeline run offline here.
    pub(super) fn offline_run_status(&self) -> Vec<(String, RunStatus)> {
        self.offline_runs
            .borrow()
            .iter()
            .map(|((name, partition), why)| {
                let run = RunStatus {
                    partition: *partition,
                    cursor: 0,
                    active: 0,
                    completed: 0,
                    failed: 0,
                    stages: Vec::new(),
                    unfinished: Vec::new(),
                    failed_executions: Vec::new(),
                    leading: false,
                    replication: Some(offline_replica_status(why)),
                };
                (name.clone(), run)
            })
            .collect()
    }
}

/// Deletes each of `dirs` (one missing is fine: the replica may have had
/// no run of a pipeline yet).
fn delete_dirs(dirs: &[PathBuf]) {
    for dir in dirs {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => tracing::info!("offline replica moved away: deleted {}", dir.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(
                "offline replica moved away: deleting {}: {e}",
                dir.display()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offline_replica_shows_as_stopped_with_its_reason() {
        let s = offline_replica_status("log.meta lost");
        assert_eq!(
            s.stopped.as_deref(),
            Some("offline on this node: log.meta lost")
        );
        assert!(!s.is_leader && s.voters.is_empty() && !s.removed);
    }

    #[test]
    fn an_offline_replica_reaps_its_partition_and_its_pipeline_runs() {
        let data = tempfile::tempdir().unwrap();
        let data = data.path();
        let pipelines = ["bill".to_owned(), "never-ran".to_owned()];
        let dirs = replica_dirs(data, "orders", 3, &pipelines);
        assert_eq!(
            dirs,
            vec![
                partition::partition_dir(data, "orders", 3),
                data.join("pipelines/bill/00003"),
                data.join("pipelines/never-ran/00003"),
            ]
        );
        // The replica's logs, a run's, and what must stay: the same
        // partition of another stream, another partition's run.
        let kept = [
            partition::partition_dir(data, "orders", 2),
            partition::partition_dir(data, "other", 3),
            data.join("pipelines/bill/00002"),
        ];
        for dir in [&dirs[0].join("log"), &dirs[0].join("groups"), &dirs[1]]
            .into_iter()
            .chain(&kept)
        {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join("log.meta"), b"x").unwrap();
        }
        delete_dirs(&dirs);
        assert!(dirs.iter().all(|d| !d.exists()), "{dirs:?}");
        assert!(kept.iter().all(|d| d.join("log.meta").exists()), "{kept:?}");
    }
}
