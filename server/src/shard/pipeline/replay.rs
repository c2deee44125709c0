//! Recovery of a run from its outputs log.
//!
//! Recovery finds the last checkpoint, starts from its state, adds the
//! carried records between `state_at` and it (the checkpoint's outputs and
//! failures, not counted again) and applies every ordinary record from
//! `state_at` on. Records below `state_at` are not read, so old records a
//! crash left before the deletion change nothing; carried records of other
//! checkpoints are skipped. Without a checkpoint the whole log is applied.
//!
//! **Retried executions** are not held by the watermark: one retried
//! long after the watermark passed it would otherwise pull the watermark
//! back over executions that finished meanwhile, which a checkpoint no
//! longer lists. A retried execution that has not finished again (its
//! `Retried` record, or a checkpoint's `pending` list, says so) is queued
//! again on start when it lies below the watermark.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::rc::Rc;

use hadron_engine::log::batch::{BatchKind, Batches};

use super::codec::{
    Checkpoint, KIND_CHECKPOINT, KIND_WATERMARK, OutputRecord, decode_record, encode_offset,
};
use super::{FailedExecution, PipelineRun};
use crate::shard::clock::Clock;
use hadron_engine::storage::Storage;

/// Bytes of the outputs log read per step of recovery.
const RECOVERY_READ_BYTES: usize = 1 << 20;

/// The outputs log folded into what recovery needs. Driven in three passes
/// over the log: [`Replay::scan`] over all of it finds the last checkpoint;
/// from its `state_at` (or the log's start without one),
/// [`Replay::apply_carried`] up to the checkpoint restores its outputs and
/// failures, and [`Replay::apply`] to the end adds the ordinary records.
#[derive(Debug, Default)]
pub(super) struct Replay {
    /// The last checkpoint and its offset.
    checkpoint: Option<(u64, Checkpoint)>,
    watermark: Option<u64>,
    /// The mask of every stage of the plan.
    all: u64,
    /// Outputs by root and stage (of executions not finished: a finished
    /// one's are dropped at once), and the stages done as a mask.
    outputs: HashMap<u64, BTreeMap<u8, Rc<Vec<u8>>>>,
    done: HashMap<u64, u64>,
    failed: BTreeMap<u64, FailedExecution>,
    /// Completed outputs per stage of the plan.
    stage_completed: Vec<u64>,
    /// Executions the checkpoint counted as completed.
    completed_before: u64,
    /// Finished roots the checkpoint listed.
    finished_before: HashSet<u64>,
    /// Roots retried and not failed again since.
    retried: BTreeSet<u64>,
}

/// What a replay settles into, given the watermark.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Settled {
    pub(super) completed: u64,
    pub(super) stage_completed: Vec<u64>,
    /// Finished roots at or after the watermark.
    pub(super) finished: HashSet<u64>,
    /// Outputs of failed executions and of unfinished ones at or after the
    /// watermark or pending.
    pub(super) outputs: BTreeMap<u64, BTreeMap<u8, Rc<Vec<u8>>>>,
    pub(super) failed: BTreeMap<u64, FailedExecution>,
    /// Retried executions below the watermark that have not finished.
    pub(super) pending: BTreeSet<u64>,
}

impl Replay {
    fn new(stages: usize, all: u64) -> Replay {
        Replay {
            all,
            stage_completed: vec![0; stages],
            ..Replay::default()
        }
    }

    /// Pass one: remembers the last checkpoint.
    fn scan(&mut self, offset: u64, record: &[u8]) -> Result<(), String> {
        if record.first() != Some(&KIND_CHECKPOINT) {
            return Ok(());
        }
        match decode_record(record) {
            Some(OutputRecord::Checkpoint(c)) if c.state_at <= offset => {
                self.checkpoint = Some((offset, c));
                Ok(())
            }
            _ => Err(format!("outputs record {offset} is malformed")),
        }
    }

    /// After pass one: starts from the checkpoint's state. Returns where
    /// passes two and three begin.
    fn begin(&mut self, log_start: u64, stage_index: &dyn Fn(&str) -> Option<u8>) -> u64 {
        let Some((_, c)) = &self.checkpoint else {
            return log_start;
        };
        self.watermark = Some(c.watermark);
        self.completed_before = c.completed;
        for (name, completed) in &c.stages {
            if let Some(s) = stage_index(name) {
                self.stage_completed[s as usize] = *completed;
            }
        }
        self.finished_before = c.finished.iter().copied().collect();
        self.retried = c.pending.iter().copied().collect();
        c.state_at
    }

    /// Where pass two ends: the last checkpoint, or nothing to carry.
    fn carried_end(&self) -> Option<u64> {
        self.checkpoint.as_ref().map(|(at, _)| *at)
    }

    fn insert_failed(&mut self, root: u64, stage: &str, error: &str) {
        self.failed.insert(
            root,
            FailedExecution {
                stage: stage.to_string(),
                error: error.to_string(),
            },
        );
    }

    fn insert_output(&mut self, root: u64, stage: u8, event: &[u8]) {
        let done = self.done.entry(root).or_default();
        *done |= 1 << stage;
        if *done == self.all {
            self.outputs.remove(&root);
            return;
        }
        self.outputs
            .entry(root)
            .or_default()
            .entry(stage)
            .or_insert_with(|| Rc::new(event.to_vec()));
    }

    /// Pass two: the carried records of the last checkpoint (they stand
    /// for its state at `state_at`, so they go in before any record after
    /// `state_at`).
    fn apply_carried(
        &mut self,
        offset: u64,
        record: &[u8],
        stage_index: &dyn Fn(&str) -> Option<u8>,
    ) -> Result<(), String> {
        match decode_record(record) {
            Some(OutputRecord::CarriedOutput { root, stage, event }) => {
                if let Some(s) = stage_index(stage) {
                    self.insert_output(root, s, event);
                }
            }
            Some(OutputRecord::CarriedFailed { root, stage, error }) => {
                self.insert_failed(root, stage, error);
            }
            Some(_) => {}
            None => return Err(format!("outputs record {offset} is malformed")),
        }
        Ok(())
    }

    /// Pass three: the ordinary records from `state_at` on (carried records
    /// and checkpoints are the state's, not changes to it).
    fn apply(
        &mut self,
        offset: u64,
        record: &[u8],
        stage_index: &dyn Fn(&str) -> Option<u8>,
    ) -> Result<(), String> {
        match decode_record(record) {
            Some(OutputRecord::Output { root, stage, event }) => {
                if let Some(s) = stage_index(stage) {
                    self.insert_output(root, s, event);
                    self.stage_completed[s as usize] += 1;
                }
            }
            Some(OutputRecord::Watermark(w)) => self.watermark = Some(w),
            Some(OutputRecord::Failed { root, stage, error }) => {
                self.retried.remove(&root);
                self.insert_failed(root, stage, error);
            }
            Some(OutputRecord::Retried(root)) => {
                self.failed.remove(&root);
                self.retried.insert(root);
            }
            Some(
                OutputRecord::Checkpoint(_)
                | OutputRecord::CarriedOutput { .. }
                | OutputRecord::CarriedFailed { .. },
            ) => {}
            None => return Err(format!("outputs record {offset} is malformed")),
        }
        Ok(())
    }

    /// The state with `watermark` as the oldest unfinished execution.
    /// Finished: every stage done, or (for executions finished under an
    /// earlier definition with fewer stages) below the watermark and not
    /// failed. Keeps the outputs of failed executions and of unfinished
    /// ones at or after the watermark (dependents need them).
    pub(super) fn settle(&mut self, watermark: u64) -> Settled {
        let all = self.all;
        let failed = &self.failed;
        let done = &self.done;
        let pending: BTreeSet<u64> = self
            .retried
            .iter()
            .copied()
            .filter(|root| {
                *root < watermark
                    && !failed.contains_key(root)
                    && done.get(root).is_none_or(|&d| d != all)
            })
            .collect();
        let completed = self.completed_before
            + self
                .done
                .iter()
                .filter(|&(root, &done)| {
                    done == all
                        || (*root < watermark
                            && !failed.contains_key(root)
                            && !pending.contains(root))
                })
                .count() as u64;
        let finished = self
            .finished_before
            .iter()
            .copied()
            .filter(|&root| root >= watermark)
            .chain(
                self.done
                    .iter()
                    .filter(|&(&root, &done)| root >= watermark && done == all)
                    .map(|(&root, _)| root),
            )
            .collect();
        let outputs = self
            .outputs
            .iter()
            .filter(|&(root, stages)| {
                failed.contains_key(root)
                    || pending.contains(root)
                    || (*root >= watermark && stages.len() < all.count_ones() as usize)
            })
            .map(|(&root, stages)| (root, stages.clone()))
            .collect();
        Settled {
            completed,
            stage_completed: self.stage_completed.clone(),
            finished,
            outputs,
            failed: failed.clone(),
            pending,
        }
    }
}

/// Called with each record (offset, bytes) of a stretch of the outputs log.
type RecordVisitor<'a> = dyn FnMut(u64, &[u8]) -> Result<(), String> + 'a;

impl<S: Storage + Clone + 'static, C: Clock> PipelineRun<S, C> {
    /// Calls `f` with each record of the outputs log in `from..to`.
    async fn read_records(
        &self,
        from: u64,
        to: u64,
        f: &mut RecordVisitor<'_>,
    ) -> Result<(), String> {
        let name = &self.plan.name;
        let mut offset = from;
        while offset < to {
            let read = self
                .outputs
                .read(offset, RECOVERY_READ_BYTES)
                .await
                .map_err(|e| format!("pipeline {name}: reading outputs: {e}"))?;
            if read.next_offset <= offset {
                return Err(format!(
                    "pipeline {name}: the outputs log ends at {offset}, before {to}"
                ));
            }
            for batch in Batches::new(&read.bytes) {
                let batch = batch.map_err(|e| format!("pipeline {name}: {e}"))?;
                // Raft's own entries (a replicated run's log) hold no
                // records of the run.
                if batch.header.kind != BatchKind::Events {
                    continue;
                }
                for (o, record) in batch.records() {
                    if o < offset || o >= to {
                        continue;
                    }
                    f(o, record).map_err(|e| format!("pipeline {name}: {e}"))?;
                }
            }
            offset = read.next_offset;
        }
        Ok(())
    }

    /// Folds the outputs log below `to` (see [`Replay`]).
    pub(super) async fn replay(&self, to: u64) -> Result<Replay, String> {
        let all = self.index.borrow().dag().all();
        let mut replay = Replay::new(self.plan.stages.len(), all);
        let log_start = self.outputs.stats().start_offset;
        self.read_records(log_start, to, &mut |o, r| replay.scan(o, r))
            .await?;
        let stage_index = |n: &str| self.stage_index(n);
        let from = replay.begin(log_start, &stage_index);
        if let Some(end) = replay.carried_end() {
            self.read_records(from, end, &mut |o, r| {
                replay.apply_carried(o, r, &stage_index)
            })
            .await?;
        }
        self.read_records(from, to, &mut |o, r| replay.apply(o, r, &stage_index))
            .await?;
        Ok(replay)
    }

    pub(super) async fn recover(&self) -> Result<(), String> {
        let name = &self.plan.name;
        let mut replay = self.replay(self.outputs.visible_offset()).await?;
        let stats = self.source.log.stats();
        let start = match replay.watermark {
            Some(w) => w,
            None => {
                let start = match self.plan.start_point {
                    crate::config::StartPoint::Beginning => stats.start_offset,
                    crate::config::StartPoint::Latest => self.source.readable_end(),
                    crate::config::StartPoint::Offset(o) => o,
                };
                // Remember where a new pipeline started, durably.
                self.append_records(
                    &[encode_offset(KIND_WATERMARK, start)],
                    self.source.clock().now_ms(),
                )
                .await
                .map_err(|e| format!("pipeline {name}: {e}"))?;
                start
            }
        };
        let settled = replay.settle(start);
        {
            let mut st = self.state.borrow_mut();
            st.cursor = start.max(stats.start_offset);
            st.watermark = start;
            st.completed = settled.completed;
            // Executions after the watermark that finished must not run
            // again; their outputs are not needed in memory.
            st.finished = settled.finished;
            st.outputs = settled.outputs.into_iter().collect();
            st.failed = settled.failed;
            // Retried below the watermark: the rescan will not meet them.
            st.retry_queue = settled.pending.iter().rev().copied().collect();
            st.retried = settled.pending.into_iter().collect();
            for (s, completed) in settled.stage_completed.into_iter().enumerate() {
                st.stats[s].completed = completed;
            }
            let failed_stages: Vec<u8> = st
                .failed
                .values()
                .filter_map(|f| self.stage_index(&f.stage))
                .collect();
            for s in failed_stages {
                st.stats[s as usize].failed += 1;
            }
        }
        // The deletion mark is not persisted: say it again.
        if let Some((_, c)) = &replay.checkpoint {
            self.outputs
                .delete_before(c.state_at)
                .await
                .map_err(|e| format!("pipeline {name}: deleting checkpointed outputs: {e}"))?;
        }
        // The size the log had at its last checkpoint is not persisted:
        // count from zero, so that a log holding more than a segment is
        // checkpointed at once rather than after another segment's growth
        // (which let a restarted log keep a segment more than it would
        // have without the restart).
        self.checkpoint_bytes.set(0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::checkpoint::checkpoint_records;
    use super::super::codec::{
        KIND_CARRIED_FAILED, KIND_CARRIED_OUTPUT, KIND_FAILED, KIND_OUTPUT, KIND_RETRIED,
        encode_named,
    };
    use super::*;

    const STAGES: [&str; 2] = ["fetch", "deploy"];
    const ALL: u64 = 0b11;

    fn stage_index(name: &str) -> Option<u8> {
        STAGES.iter().position(|&s| s == name).map(|i| i as u8)
    }

    fn out(root: u64, stage: &str) -> Vec<u8> {
        encode_named(
            KIND_OUTPUT,
            root,
            stage,
            format!("{stage}@{root}").as_bytes(),
        )
    }

    /// Replays an in-memory log (record i at offset `first + i`) as
    /// recovery does: three passes.
    fn replay_log(first: u64, log: &[Vec<u8>]) -> Replay {
        let records = || log.iter().enumerate().map(|(i, r)| (first + i as u64, r));
        let mut replay = Replay::new(STAGES.len(), ALL);
        for (o, r) in records() {
            replay.scan(o, r).unwrap();
        }
        let from = replay.begin(first, &stage_index);
        if let Some(end) = replay.carried_end() {
            for (o, r) in records().filter(|&(o, _)| o >= from && o < end) {
                replay.apply_carried(o, r, &stage_index).unwrap();
            }
        }
        for (o, r) in records().filter(|&(o, _)| o >= from) {
            replay.apply(o, r, &stage_index).unwrap();
        }
        replay
    }

    /// Before the checkpoint: root 0 and 2 finished, 1 and 4 half done,
    /// 3 failed after its first stage.
    fn history() -> Vec<Vec<u8>> {
        vec![
            encode_offset(KIND_WATERMARK, 0),
            out(0, "fetch"),
            out(1, "fetch"),
            out(0, "deploy"),
            out(2, "fetch"),
            out(3, "fetch"),
            out(2, "deploy"),
            encode_named(KIND_FAILED, 3, "deploy", b"boom"),
            out(4, "fetch"),
        ]
    }

    /// `prefix` (the history, possibly with old duplicates), then a
    /// checkpoint of the history's state at watermark 1 written while
    /// other records arrive, then more records.
    fn checkpointed(prefix: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let state_at = prefix.len() as u64;
        let settled = replay_log(0, &history()).settle(1);
        let (marker, carried) = checkpoint_records(settled, state_at, 1, &STAGES);
        let mut log = prefix.to_vec();
        // An output appended while the checkpoint is written, before its
        // carried records, and one between them.
        log.push(out(1, "deploy"));
        let (first, rest) = carried.split_at(1);
        log.extend_from_slice(first);
        log.push(out(4, "deploy"));
        log.extend_from_slice(rest);
        log.push(marker);
        log.push(out(5, "fetch"));
        log.push(encode_offset(KIND_RETRIED, 3));
        // A later checkpoint cut short by a crash: its carried records
        // alone change nothing.
        log.push(encode_named(KIND_CARRIED_OUTPUT, 9, "fetch", b"stale"));
        log.push(encode_named(KIND_CARRIED_FAILED, 5, "fetch", b"stale"));
        log
    }

    /// The same records without a checkpoint.
    fn plain() -> Vec<Vec<u8>> {
        let mut log = history();
        log.extend([
            out(1, "deploy"),
            out(4, "deploy"),
            out(5, "fetch"),
            encode_offset(KIND_RETRIED, 3),
        ]);
        log
    }

    #[test]
    fn a_checkpoint_restores_the_state_the_records_before_it_made() {
        let want = replay_log(0, &plain()).settle(1);
        // Finished: 0, 1, 2, 4; 3 was retried and keeps its first output;
        // 5 waits for its second stage.
        assert_eq!(want.completed, 4);
        assert_eq!(want.stage_completed, vec![6, 4]);
        assert_eq!(want.finished, HashSet::from([1, 2, 4]));
        assert_eq!(want.outputs.keys().copied().collect::<Vec<_>>(), vec![3, 5]);
        assert_eq!(*want.outputs[&3][&0], b"fetch@3".to_vec());
        assert!(want.failed.is_empty());
        assert!(want.pending.is_empty());
        // With the watermark past it, the retried root 3 is pending: not
        // completed, its output kept.
        let past = replay_log(0, &plain()).settle(4);
        assert_eq!(past.pending, BTreeSet::from([3]));
        assert_eq!(past.completed, 4);
        assert!(past.outputs.contains_key(&3));
        let (marker, carried) = checkpoint_records(past, 20, 4, &STAGES);
        let mut log = plain();
        log.resize(20, encode_offset(KIND_WATERMARK, 4));
        log.extend(carried);
        log.push(marker);
        let again = replay_log(0, &log).settle(4);
        assert_eq!(again, replay_log(0, &plain()).settle(4));

        let log = checkpointed(&history());
        let mut replay = replay_log(0, &log);
        assert_eq!(replay.watermark, Some(1));
        assert_eq!(replay.settle(1), want);
        // What is read from `state_at` on, as after `delete_before`.
        let kept = &log[history().len()..];
        assert_eq!(replay_log(history().len() as u64, kept).settle(1), want);
    }

    #[test]
    fn old_records_repeated_before_a_checkpoint_change_nothing() {
        let want = replay_log(0, &checkpointed(&history())).settle(1);
        // The history twice (a crash between two checkpoints' appends and
        // deletions leaves copies), and a stale failure of root 0.
        let mut prefix = history();
        prefix.extend(history());
        prefix.push(encode_named(KIND_FAILED, 0, "fetch", b"old"));
        let got = replay_log(0, &checkpointed(&prefix)).settle(1);
        assert_eq!(got, want);
        assert_eq!(got.completed, 4);
        assert_eq!(got.stage_completed, vec![6, 4]);
    }
}
