//! What `Status` reports: per partition its offsets, commit figures, dedup
//! window and groups; per pipeline its stages.

use super::*;

/// A log's group-commit counters as the status document shows them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CommitStatus {
    /// Flush rounds that wrote data, the bytes they wrote, and their mean.
    /// Under `fsync: always` each round's write is write-through (`O_DSYNC`):
    /// durable when it returns, with no fdatasync.
    pub writes: u64,
    pub written_bytes: u64,
    pub bytes_per_write: u64,
    /// fdatasync calls.
    pub syncs: u64,
    /// Mean bytes written per fdatasync (0 before the first).
    pub bytes_per_sync: u64,
    /// Mean microseconds awaiting a round's writes, and an fdatasync.
    pub write_us_mean: u64,
    pub sync_us_mean: u64,
    /// Segments begun in a file retention retired (see the engine's
    /// "Recycling").
    pub segments_recycled: u64,
    /// Mean microseconds a durable append waited from its enqueue until it
    /// was durable (the log's share of a publish's latency).
    pub durable_wait_us_mean: u64,
}

impl From<hadron_engine::CommitStats> for CommitStatus {
    fn from(c: hadron_engine::CommitStats) -> CommitStatus {
        CommitStatus {
            writes: c.writes,
            written_bytes: c.written_bytes,
            bytes_per_write: c.written_bytes.checked_div(c.writes).unwrap_or(0),
            syncs: c.syncs,
            bytes_per_sync: c.written_bytes.checked_div(c.syncs).unwrap_or(0),
            write_us_mean: c.write_us.checked_div(c.writes).unwrap_or(0),
            sync_us_mean: c.sync_us.checked_div(c.syncs).unwrap_or(0),
            segments_recycled: c.segments_recycled,
            durable_wait_us_mean: c.durable_wait_us.checked_div(c.durable_waits).unwrap_or(0),
        }
    }
}

/// One partition's state, for `status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PartitionStatus {
    /// Stream.
    #[serde(skip)]
    pub stream: String,
    /// Partition.
    pub partition: u32,
    /// Owner shard.
    pub shard: u16,
    /// First offset retained.
    pub start_offset: u64,
    /// Next offset to be written.
    pub next_offset: u64,
    /// Offsets below this are durable.
    pub durable_offset: u64,
    /// Segment files.
    pub segments: usize,
    /// Bytes of batches.
    pub bytes: u64,
    /// Why the partition refuses writes, if it does.
    pub read_only: Option<String>,
    /// `"disk full: ..."` while its log found the disk full and waits for
    /// space (writes refused, nothing lost); `None` otherwise.
    pub disk_full: Option<String>,
    /// Group-commit counters of its log since the server started.
    pub commits: CommitStatus,
    /// Offsets the dedup window spans (its keys, and the slots of appends
    /// still under way), and the age of its oldest batch: shorter than the
    /// stream's `dedupWindowMs` when `dedupKeysMax` binds.
    pub dedup_keys: u64,
    pub dedup_oldest_ms: Option<u64>,
    /// Consumer groups.
    pub groups: Vec<GroupStatus>,
    /// Its Raft group on this node, when replicated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication: Option<partition::replica::ReplicaStatus>,
    /// Its offsets group on this node, when replicated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offsets_replication: Option<partition::replica::ReplicaStatus>,
}

/// A pipeline's entry in the status document: totals, per-stage counts
/// summed over partitions, and each partition's detail.
pub(super) fn pipeline_status(
    spec: &PipelineSpec,
    runs: &[(String, RunStatus)],
) -> serde_json::Value {
    let mut parts: Vec<&RunStatus> = runs
        .iter()
        .filter(|(name, _)| *name == spec.name)
        .map(|(_, r)| r)
        .collect();
    parts.sort_by_key(|r| r.partition);
    let mut stages: Vec<pipeline::StageStatus> = spec
        .stages
        .iter()
        .map(|s| pipeline::StageStatus {
            name: s.name.clone(),
            ..Default::default()
        })
        .collect();
    for part in &parts {
        for (total, s) in stages.iter_mut().zip(&part.stages) {
            total.completed += s.completed;
            total.in_flight += s.in_flight;
            total.waiting += s.waiting;
            total.errors += s.errors;
            total.failed += s.failed;
            if s.last_error.is_some() {
                total.last_error = s.last_error.clone();
            }
        }
    }
    serde_json::json!({
        "name": spec.name,
        "source_stream": spec.source_stream,
        "executions": {
            "active": parts.iter().map(|r| r.active).sum::<usize>(),
            "completed": parts.iter().map(|r| r.completed).sum::<u64>(),
            "failed": parts.iter().map(|r| r.failed).sum::<usize>(),
        },
        "stages": stages,
        "partitions": parts,
    })
}

impl<S: Storage + Clone + 'static, R: Runtime> Shard<S, R> {
    pub(super) fn run_status(&self) -> Vec<(String, RunStatus)> {
        self.runs
            .borrow()
            .iter()
            .map(|((name, _), run)| (name.clone(), run.status()))
            .chain(self.offline_run_status())
            .collect()
    }

    pub(super) fn status(&self) -> Vec<PartitionStatus> {
        let now = self.runtime.now_ms();
        self.partitions
            .borrow()
            .values()
            .map(|p| self.partition_status(p, now))
            .chain(self.offline_status())
            .collect()
    }

    /// One partition's status at `now_ms` (wall time).
    pub(super) fn partition_status(&self, p: &Partition<S, R>, now_ms: u64) -> PartitionStatus {
        let stats = p.log.stats();
        let visible = p.log.visible_offset();
        let (dedup_keys, dedup_oldest_ms) = p.dedup_window(now_ms);
        PartitionStatus {
            stream: p.stream.clone(),
            partition: p.partition,
            shard: self.id,
            start_offset: stats.start_offset,
            next_offset: stats.next_offset,
            durable_offset: stats.durable_offset,
            segments: stats.segments,
            bytes: stats.bytes,
            read_only: p.log.poisoned().map(|s| s.to_string()),
            disk_full: p.log.disk_full().map(|e| e.to_string()),
            commits: CommitStatus::from(stats.commits),
            dedup_keys,
            dedup_oldest_ms,
            groups: p
                .groups
                .borrow()
                .values()
                .map(|g| GroupStatus {
                    persisted: p.persisted_offset(&g.group),
                    ..g.status(visible)
                })
                .collect(),
            replication: p.replica.as_ref().map(|r| r.status()),
            offsets_replication: p.offsets_replica.as_ref().map(|r| r.status()),
        }
    }

    /// Gathers every shard's status into the `StatusOk` JSON document.
    pub async fn status_json(self: &Rc<Self>) -> Result<String, Error> {
        let replies =
            futures::future::join_all((0..self.shards).map(|to| self.call(to, Request::Status)))
                .await;
        let mut all = Vec::new();
        let mut runs: Vec<(String, RunStatus)> = Vec::new();
        for reply in replies {
            match reply {
                Reply::Status(parts, r) => {
                    all.extend(parts);
                    runs.extend(r);
                }
                Reply::Failed(e) => return Err(e),
                other => {
                    return Err(Error::Internal(format!(
                        "unexpected status reply {other:?}"
                    )));
                }
            }
        }
        let meta = match self.call(0, Request::MetaStatus).await {
            Reply::Meta(meta) => meta,
            _ => serde_json::Value::Null,
        };
        let topology = self.topology.borrow().clone();
        let streams: Vec<serde_json::Value> = topology
            .streams
            .values()
            .map(|spec| {
                let mut parts: Vec<&PartitionStatus> =
                    all.iter().filter(|p| p.stream == spec.name).collect();
                parts.sort_by_key(|p| p.partition);
                serde_json::json!({
                    "name": spec.name,
                    "partition_count": spec.partitions,
                    "partitions": parts,
                })
            })
            .collect();
        let pipelines: Vec<serde_json::Value> = topology
            .pipelines
            .values()
            .map(|spec| pipeline_status(spec, &runs))
            .collect();
        let doc = serde_json::json!({
            "node_id": self.settings.config.node_id(),
            "shards": self.shards,
            "shard_ports": self.settings.config.shard_ports,
            "fsync": format!("{:?}", self.settings.config.fsync),
            "streams": streams,
            "pipelines": pipelines,
            "meta": meta,
        });
        Ok(doc.to_string())
    }
}
