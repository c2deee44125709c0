//! Checkpoints of the outputs log, and the watermark.
//!
//! **Checkpoints.** The log would grow with every output forever, and
//! recovery would read all of it. Once the log has grown by a segment since
//! the last checkpoint, the run folds the log up to `state_at` (the visible
//! end when the checkpoint starts) into the state recovery needs, with the
//! watermark taken in the same turn as `state_at` (every root below it
//! finished or failed by a record below `state_at`). It appends that state:
//! the outputs of live executions and the failures as carried records (6,
//! 7), then the checkpoint record (5). Other tasks keep appending meanwhile,
//! so carried records mix with ordinary ones after `state_at`; their own
//! kinds keep them apart. Once the checkpoint is durable, everything below
//! `state_at` is deleted with `delete_before` (said again on every open, as
//! the mark is not persisted).
//!
//! A segment per checkpoint is the threshold because `delete_before` frees
//! whole sealed segments only: more often frees nothing more, and the log
//! stays near two segments plus the live state.
//!
//! The watermark (the oldest unfinished execution) is persisted here too,
//! every commit interval and on sync.

use hadron_engine::log::batch::{BATCH_HEADER_BYTES, RECORD_PREFIX_BYTES};

use super::PipelineRun;
use super::codec::{
    CHECKPOINT_ROOTS_MAX, Checkpoint, KIND_CARRIED_FAILED, KIND_CARRIED_OUTPUT, KIND_WATERMARK,
    batch_ranges, encode_checkpoint, encode_named, encode_offset,
};
use super::replay::Settled;
use crate::shard::clock::Clock;
use hadron_engine::storage::Storage;

/// A checkpoint of `settled` (the log below `state_at`, settled at
/// `watermark`): its record, and the carried records that go before it.
pub(super) fn checkpoint_records(
    settled: Settled,
    state_at: u64,
    watermark: u64,
    stage_names: &[&str],
) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut finished: Vec<u64> = settled.finished.into_iter().collect();
    finished.sort_unstable();
    let checkpoint = Checkpoint {
        state_at,
        watermark,
        completed: settled.completed,
        stages: stage_names
            .iter()
            .zip(&settled.stage_completed)
            .map(|(&n, &c)| (n.to_string(), c))
            .collect(),
        finished,
        pending: settled.pending.iter().copied().collect(),
    };
    let mut carried: Vec<Vec<u8>> = Vec::new();
    for (&root, stages) in &settled.outputs {
        for (&s, event) in stages {
            let stage = stage_names[s as usize];
            carried.push(encode_named(KIND_CARRIED_OUTPUT, root, stage, event));
        }
    }
    for (&root, f) in &settled.failed {
        carried.push(encode_named(
            KIND_CARRIED_FAILED,
            root,
            &f.stage,
            f.error.as_bytes(),
        ));
    }
    (encode_checkpoint(&checkpoint), carried)
}

impl<S: Storage + Clone + 'static, C: Clock> PipelineRun<S, C> {
    /// Whether the outputs log grew by a segment since the last
    /// checkpoint and none is being written; if so, the caller is to run
    /// [`PipelineRun::checkpoint`] (the claim is taken here, synchronously,
    /// so that two callers never both start one).
    pub fn claim_checkpoint(&self) -> bool {
        if self.checkpointing.get() || self.closed.get() || !self.active.get() {
            return false;
        }
        let grown = self
            .outputs
            .stats()
            .bytes
            .saturating_sub(self.checkpoint_bytes.get());
        if grown < self.outputs.config().segment_bytes {
            return false;
        }
        self.checkpointing.set(true);
        true
    }

    /// Writes a checkpoint (after [`PipelineRun::claim_checkpoint`]) and
    /// deletes what it carries forward. See the module header.
    pub async fn checkpoint(&self) -> Result<(), String> {
        // Ends the claim even if this future is dropped midway, so that
        // `sync` never waits for a checkpoint nobody is writing.
        struct Claim<'a>(&'a std::cell::Cell<bool>, &'a hadron_engine::notify::Notify);
        impl Drop for Claim<'_> {
            fn drop(&mut self) {
                self.0.set(false);
                self.1.notify_all();
            }
        }
        let _claim = Claim(&self.checkpointing, &self.checkpoint_ended);
        let result = self.write_checkpoint().await;
        self.checkpoint_bytes.set(self.outputs.stats().bytes);
        result
    }

    async fn write_checkpoint(&self) -> Result<(), String> {
        let name = &self.plan.name;
        // In one turn: every root below the watermark finished or failed
        // by a record below `state_at` (its state changes only after its
        // record is appended).
        let state_at = self.outputs.visible_offset();
        let watermark = self.watermark_now();
        let mut replay = self.replay(state_at).await?;
        let settled = replay.settle(watermark);
        if settled.finished.len().max(settled.pending.len()) > CHECKPOINT_ROOTS_MAX {
            tracing::warn!(
                pipeline = %name,
                partition = self.source.partition,
                "checkpoint postponed: {} finished executions after the oldest unfinished one",
                settled.finished.len()
            );
            return Ok(());
        }
        let names: Vec<&str> = self.plan.stages.iter().map(|s| s.name.as_str()).collect();
        let (marker, carried) = checkpoint_records(settled, state_at, watermark, &names);
        let batch_max = self.outputs.config().batch_bytes_max;
        if BATCH_HEADER_BYTES + RECORD_PREFIX_BYTES + marker.len() > batch_max {
            tracing::warn!(
                pipeline = %name,
                partition = self.source.partition,
                "checkpoint postponed: its record of {} bytes exceeds a batch",
                marker.len()
            );
            return Ok(());
        }
        let now = self.source.clock().now_ms();
        let epoch = self.epoch.get();
        for range in batch_ranges(&carried, batch_max) {
            self.append_records(&carried[range], now)
                .await
                .map_err(|e| format!("pipeline {name}: checkpoint: {e}"))?;
        }
        self.append_records(&[marker], now)
            .await
            .map_err(|e| format!("pipeline {name}: checkpoint: {e}"))?;
        self.check_epoch(epoch)
            .map_err(|e| format!("pipeline {name}: checkpoint: {e}"))?;
        // Nothing is deleted before the checkpoint is durable.
        self.outputs
            .sync()
            .await
            .map_err(|e| format!("pipeline {name}: checkpoint: {e}"))?;
        self.state.borrow_mut().watermark = watermark;
        self.outputs
            .delete_before(state_at)
            .await
            .map_err(|e| format!("pipeline {name}: deleting checkpointed outputs: {e}"))?;
        Ok(())
    }

    /// The oldest unfinished execution that is not a retried one, or the
    /// cursor when none is.
    fn watermark_now(&self) -> u64 {
        let st = self.state.borrow();
        let index = self.index.borrow();
        let live = index
            .executions()
            .map(|e| e.root)
            .find(|root| !st.retried.contains(root));
        live.map_or(st.cursor, |root| root.min(st.cursor))
    }

    /// Persists the watermark if it moved.
    pub async fn commit_watermark(&self) -> Result<(), String> {
        let wm = self.watermark_now();
        if wm == self.state.borrow().watermark || !self.active.get() {
            return Ok(());
        }
        let epoch = self.epoch.get();
        self.append_records(
            &[encode_offset(KIND_WATERMARK, wm)],
            self.source.clock().now_ms(),
        )
        .await
        .map_err(|e| format!("pipeline {}: {e}", self.plan.name))?;
        if self.epoch.get() != epoch {
            return Ok(());
        }
        self.state.borrow_mut().watermark = wm;
        Ok(())
    }

    /// Makes the outputs log durable (on shutdown, or before the run is
    /// replaced: a checkpoint being written finishes first, so that the
    /// replacing run reads it whole).
    pub async fn sync(&self) -> Result<(), String> {
        loop {
            let generation = self.checkpoint_ended.generation();
            if !self.checkpointing.get() {
                break;
            }
            self.checkpoint_ended.changed_since(generation).await;
        }
        // A replicated run's watermark is a proposal that needs a quorum;
        // the next leader rescans from the last committed one instead (it
        // knows the executions finished since from their outputs).
        if self.replica.is_none() {
            self.commit_watermark().await?;
        }
        self.outputs.sync().await.map_err(|e| e.to_string())
    }
}
