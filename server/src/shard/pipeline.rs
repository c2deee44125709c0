//! One pipeline on one source partition, on the shard that owns the
//! partition: the trigger scanner, the execution index, stage deliveries,
//! acks with outputs, nacks, ack timeouts, retries and failures.
//!
//! **The outputs log** (`pipelines/<name>/<partition>/`, an engine log with
//! the server's fsync policy) is the run's memory. Records, little-endian:
//!
//! ```text
//!  1 | root u64 | name_len u16 | stage name | output event   a stage output
//!  2 | source offset u64                                    the watermark
//!  3 | root u64 | name_len u16 | stage name | error text     an execution failed
//!  4 | root u64                                             a failed one is retried
//!  5 | state_at u64 | watermark u64 | completed u64         a checkpoint
//!    | stages u16 | { name_len u16 | name | completed u64 }
//!    | finished u32 | { root u64 } | pending u32 | { root u64 }
//!  6 | root u64 | name_len u16 | stage name | output event   a carried output
//!  7 | root u64 | name_len u16 | stage name | error text     a carried failure
//! ```
//!
//! A stage's output is appended, and made durable by group commit, before the
//! stage is marked done and its dependents are dispatched, so a completed
//! stage never runs again: on start, the outputs log says which stages of
//! which roots are done, and the source is rescanned from the last
//! watermark (the oldest unfinished execution, persisted every commit
//! interval). Stages are recorded by name, so adding or reordering stages
//! keeps what was done.
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
//! Recovery finds the last checkpoint, starts from its state, adds the
//! carried records between `state_at` and it (the checkpoint's outputs and
//! failures, not counted again) and applies every ordinary record from
//! `state_at` on. Records below `state_at` are not read, so old records a
//! crash left before the deletion change nothing; carried records of other
//! checkpoints are skipped. Without a checkpoint the whole log is applied.
//! A segment per checkpoint is the threshold because `delete_before` frees
//! whole sealed segments only: more often frees nothing more, and the log
//! stays near two segments plus the live state.
//!
//! **Retried executions** are not held by the watermark: one retried
//! long after the watermark passed it would otherwise pull the watermark
//! back over executions that finished meanwhile, which a checkpoint no
//! longer lists. A retried execution that has not finished again (its
//! `Retried` record, or a checkpoint's `pending` list, says so) is queued
//! again on start when it lies below the watermark.
//!
//! **Failures.** A nack or an ack timeout counts as a failed attempt: the
//! stage is held for the stage's backoff and then delivered again; after
//! `maxAttempts` the execution fails, leaves the window (so it blocks
//! nothing) and is remembered, visible in status, until `pipeline retry`.
//! A disconnect is not the handler's failure: the stage goes out again at
//! once, to another member if there is one.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hadron_engine::log::batch::{
    BATCH_HEADER_BYTES, BATCH_RECORDS_MAX, Batches, RECORD_PREFIX_BYTES,
};
use hadron_engine::notify::Notify;
use hadron_engine::pipeline::{Completion, Dag, ExecutionIndex};
use hadron_engine::storage::dma::DmaStorage;
use hadron_engine::{AppendError, Log, LogConfig};
use hadron_wire::{ErrorCode, Limits};

use super::group::MemberId;
use super::partition::{Failure, Partition, now_ms};
use crate::config::PipelinePlan;

const KIND_OUTPUT: u8 = 1;
const KIND_WATERMARK: u8 = 2;
const KIND_FAILED: u8 = 3;
const KIND_RETRIED: u8 = 4;
const KIND_CHECKPOINT: u8 = 5;
const KIND_CARRIED_OUTPUT: u8 = 6;
const KIND_CARRIED_FAILED: u8 = 7;
/// Most finished (or pending) roots one checkpoint record lists: finished
/// ones lie between the watermark and the cursor; more than this, or a
/// record larger than a batch, postpones the checkpoint.
const CHECKPOINT_ROOTS_MAX: usize = 64 << 10;
/// Bytes of the outputs log read per step of recovery.
const RECOVERY_READ_BYTES: usize = 1 << 20;
/// Bytes of the source read per trigger scan.
const SCAN_BYTES: u32 = 256 << 10;
/// Longest error message kept per stage.
const ERROR_BYTES_MAX: usize = 1024;

/// A stage member carried to a replacing run: who, which stage (by name),
/// and its in-flight bound.
pub type CarriedMember = (MemberId, String, u32);

/// One stage ack: the delivery id and the output event (a slice of the
/// frame it came in).
pub type StageAckOf = (u64, Bytes);

/// A stage delivery ready to be pushed. Stages are indices into the
/// plan's stages (named when the delivery is encoded).
#[derive(Debug)]
pub struct StageOutgoing {
    pub member: MemberId,
    pub delivery_id: u64,
    pub stage: u8,
    pub root: u64,
    pub attempt: u32,
    pub root_event: Rc<Vec<u8>>,
    /// The outputs of the stage's dependencies, by dependency.
    pub inputs: Vec<(u8, Rc<Vec<u8>>)>,
}

#[derive(Debug, Clone, Copy)]
struct Issued {
    root: u64,
    stage: u8,
    member: MemberId,
    deadline: Instant,
}

#[derive(Debug, Clone, Copy)]
struct StageMember {
    id: MemberId,
    stage: u8,
    max_in_flight: u32,
    in_flight: u32,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StageStats {
    pub name: String,
    pub completed: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    pub last_error_ms: Option<u64>,
    pub failed: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct FailedExecution {
    stage: String,
    error: String,
}

#[derive(Debug, Default)]
struct RunState {
    /// Next source offset to look at for triggers.
    cursor: u64,
    /// Outputs of live and failed executions: root -> (stage -> event).
    outputs: HashMap<u64, BTreeMap<u8, Rc<Vec<u8>>>>,
    /// Root events of live executions.
    roots: HashMap<u64, Rc<Vec<u8>>>,
    /// Deliveries not yet settled, by id.
    in_flight: HashMap<u64, Issued>,
    /// At most the earliest deadline in `in_flight`; `None` only when
    /// `in_flight` is empty. A settled delivery leaves it as it is (still a
    /// lower bound): the next expiry check recomputes it.
    deadline_min: Option<Instant>,
    /// Every delivery id issued for a live execution (for late acks).
    issued: HashMap<u64, (u64, u8)>,
    /// The same ids by root, to forget them when the execution finishes.
    issued_by_root: HashMap<u64, Vec<u64>>,
    /// Stages whose output is being made durable.
    completing: HashSet<(u64, u8)>,
    /// Held stages and when they may go out again.
    retry_at: Vec<(Instant, u64, u8)>,
    /// Failed attempts per stage of live executions.
    attempts: HashMap<(u64, u8), u32>,
    members: Vec<StageMember>,
    next_member: usize,
    stats: Vec<StageStats>,
    completed: u64,
    failed: BTreeMap<u64, FailedExecution>,
    /// Failed executions asked to run again, waiting for room.
    retry_queue: Vec<u64>,
    /// Executions asked to run again that have not finished or failed
    /// since (queued or live). The watermark passes over them.
    retried: HashSet<u64>,
    /// Roots at or after the watermark whose executions finished before a
    /// restart: the rescan must not start them again.
    finished: HashSet<u64>,
    watermark: u64,
}

/// Status of a pipeline on one partition.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunStatus {
    pub partition: u32,
    pub cursor: u64,
    pub active: usize,
    pub completed: u64,
    pub failed: usize,
    pub stages: Vec<StageStatus>,
    pub unfinished: Vec<ExecutionStatus>,
    pub failed_executions: Vec<FailedStatus>,
}

/// Per stage on one partition.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StageStatus {
    pub name: String,
    pub completed: u64,
    pub in_flight: u64,
    pub waiting: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    pub failed: u64,
}

/// One unfinished execution.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExecutionStatus {
    pub offset: u64,
    pub done: Vec<String>,
    pub in_flight: Vec<String>,
}

/// One failed execution.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FailedStatus {
    pub offset: u64,
    pub stage: String,
    pub error: String,
}

/// A pipeline on one partition.
pub struct PipelineRun {
    pub plan: PipelinePlan,
    pub source: Rc<Partition>,
    index: RefCell<ExecutionIndex>,
    outputs: Log<DmaStorage>,
    state: RefCell<RunState>,
    limits: Limits,
    /// Wakes the dispatcher.
    pub wake: Notify,
    /// Set when the run is replaced or removed.
    pub closed: Cell<bool>,
    /// A checkpoint is being written.
    checkpointing: Cell<bool>,
    /// Signalled when a checkpoint ends (or its future is dropped).
    checkpoint_ended: Notify,
    /// The outputs log's bytes when the last checkpoint ended.
    checkpoint_bytes: Cell<u64>,
}

impl std::fmt::Debug for PipelineRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelineRun")
            .field("pipeline", &self.plan.name)
            .field("partition", &self.source.partition)
            .finish()
    }
}

fn encode_named(kind: u8, root: u64, name: &str, tail: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(11 + name.len() + tail.len());
    out.push(kind);
    out.extend_from_slice(&root.to_le_bytes());
    out.extend_from_slice(&(name.len() as u16).to_le_bytes());
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(tail);
    out
}

fn encode_offset(kind: u8, value: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(9);
    out.push(kind);
    out.extend_from_slice(&value.to_le_bytes());
    out
}

/// A checkpoint: the state of the outputs log below `state_at`, less the
/// outputs and failures, which travel as carried records before it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Checkpoint {
    state_at: u64,
    watermark: u64,
    completed: u64,
    /// Completed outputs per stage, by stage name.
    stages: Vec<(String, u64)>,
    /// Roots at or after the watermark whose executions finished.
    finished: Vec<u64>,
    /// Retried roots below the watermark that have not finished.
    pending: Vec<u64>,
}

fn encode_checkpoint(c: &Checkpoint) -> Vec<u8> {
    let names: usize = c.stages.iter().map(|(n, _)| 10 + n.len()).sum();
    let roots = c.finished.len() + c.pending.len();
    let mut out = Vec::with_capacity(35 + names + 8 * roots);
    out.push(KIND_CHECKPOINT);
    out.extend_from_slice(&c.state_at.to_le_bytes());
    out.extend_from_slice(&c.watermark.to_le_bytes());
    out.extend_from_slice(&c.completed.to_le_bytes());
    assert!(c.stages.len() <= usize::from(u16::MAX));
    out.extend_from_slice(&(c.stages.len() as u16).to_le_bytes());
    for (name, completed) in &c.stages {
        assert!(name.len() <= usize::from(u16::MAX));
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&completed.to_le_bytes());
    }
    for roots in [&c.finished, &c.pending] {
        assert!(roots.len() <= CHECKPOINT_ROOTS_MAX);
        out.extend_from_slice(&(roots.len() as u32).to_le_bytes());
        for root in roots {
            out.extend_from_slice(&root.to_le_bytes());
        }
    }
    out
}

/// Decodes a checkpoint's body (after the kind byte).
fn decode_checkpoint(body: &[u8]) -> Option<Checkpoint> {
    fn take<'a>(at: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, tail) = at.split_at_checked(n)?;
        *at = tail;
        Some(head)
    }
    fn u64_of(at: &mut &[u8]) -> Option<u64> {
        Some(u64::from_le_bytes(take(at, 8)?.try_into().ok()?))
    }
    let mut at = body;
    let state_at = u64_of(&mut at)?;
    let watermark = u64_of(&mut at)?;
    let completed = u64_of(&mut at)?;
    let count = u16::from_le_bytes(take(&mut at, 2)?.try_into().ok()?);
    let mut stages = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let len = u16::from_le_bytes(take(&mut at, 2)?.try_into().ok()?);
        let name = std::str::from_utf8(take(&mut at, usize::from(len))?).ok()?;
        stages.push((name.to_string(), u64_of(&mut at)?));
    }
    fn roots(at: &mut &[u8]) -> Option<Vec<u64>> {
        let count = u32::from_le_bytes(take(at, 4)?.try_into().ok()?) as usize;
        if count > CHECKPOINT_ROOTS_MAX || at.len() < count * 8 {
            return None;
        }
        (0..count).map(|_| u64_of(at)).collect()
    }
    let finished = roots(&mut at)?;
    let pending = roots(&mut at)?;
    if !at.is_empty() {
        return None;
    }
    Some(Checkpoint {
        state_at,
        watermark,
        completed,
        stages,
        finished,
        pending,
    })
}

/// A decoded outputs-log record.
#[derive(Debug, PartialEq, Eq)]
enum OutputRecord<'a> {
    Output {
        root: u64,
        stage: &'a str,
        event: &'a [u8],
    },
    Watermark(u64),
    Failed {
        root: u64,
        stage: &'a str,
        error: &'a str,
    },
    Retried(u64),
    Checkpoint(Checkpoint),
    CarriedOutput {
        root: u64,
        stage: &'a str,
        event: &'a [u8],
    },
    CarriedFailed {
        root: u64,
        stage: &'a str,
        error: &'a str,
    },
}

fn decode_record(bytes: &[u8]) -> Option<OutputRecord<'_>> {
    let (&kind, rest) = bytes.split_first()?;
    if kind == KIND_CHECKPOINT {
        return decode_checkpoint(rest).map(OutputRecord::Checkpoint);
    }
    let value = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
    fn named(rest: &[u8]) -> Option<(&str, usize)> {
        let len = u16::from_le_bytes(rest.get(8..10)?.try_into().ok()?) as usize;
        let name = std::str::from_utf8(rest.get(10..10 + len)?).ok()?;
        Some((name, 10 + len))
    }
    match kind {
        KIND_OUTPUT | KIND_CARRIED_OUTPUT => {
            let (stage, at) = named(rest)?;
            let (root, event) = (value, &rest[at..]);
            Some(if kind == KIND_OUTPUT {
                OutputRecord::Output { root, stage, event }
            } else {
                OutputRecord::CarriedOutput { root, stage, event }
            })
        }
        KIND_WATERMARK if rest.len() == 8 => Some(OutputRecord::Watermark(value)),
        KIND_FAILED | KIND_CARRIED_FAILED => {
            let (stage, at) = named(rest)?;
            let (root, error) = (value, std::str::from_utf8(&rest[at..]).ok()?);
            Some(if kind == KIND_FAILED {
                OutputRecord::Failed { root, stage, error }
            } else {
                OutputRecord::CarriedFailed { root, stage, error }
            })
        }
        KIND_RETRIED if rest.len() == 8 => Some(OutputRecord::Retried(value)),
        _ => None,
    }
}

/// The outputs log folded into what recovery needs. Driven in three passes
/// over the log: [`Replay::scan`] over all of it finds the last checkpoint;
/// from its `state_at` (or the log's start without one),
/// [`Replay::apply_carried`] up to the checkpoint restores its outputs and
/// failures, and [`Replay::apply`] to the end adds the ordinary records.
#[derive(Debug, Default)]
struct Replay {
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
struct Settled {
    completed: u64,
    stage_completed: Vec<u64>,
    /// Finished roots at or after the watermark.
    finished: HashSet<u64>,
    /// Outputs of failed executions and of unfinished ones at or after the
    /// watermark or pending.
    outputs: BTreeMap<u64, BTreeMap<u8, Rc<Vec<u8>>>>,
    failed: BTreeMap<u64, FailedExecution>,
    /// Retried executions below the watermark that have not finished.
    pending: BTreeSet<u64>,
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
    fn settle(&mut self, watermark: u64) -> Settled {
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

/// A checkpoint of `settled` (the log below `state_at`, settled at
/// `watermark`): its record, and the carried records that go before it.
fn checkpoint_records(
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

/// Called with each record (offset, bytes) of a stretch of the outputs log.
type RecordVisitor<'a> = dyn FnMut(u64, &[u8]) -> Result<(), String> + 'a;

/// Splits records into runs that each fit one batch of the log.
fn batch_ranges(records: &[Vec<u8>], batch_bytes_max: usize) -> Vec<std::ops::Range<usize>> {
    let mut chunks: Vec<std::ops::Range<usize>> = Vec::new();
    let mut bytes = BATCH_HEADER_BYTES;
    for (i, record) in records.iter().enumerate() {
        let len = RECORD_PREFIX_BYTES + record.len();
        match chunks.last_mut() {
            Some(c) if bytes + len <= batch_bytes_max && c.len() < BATCH_RECORDS_MAX as usize => {
                c.end = i + 1;
                bytes += len;
            }
            _ => {
                chunks.push(i..i + 1);
                bytes = BATCH_HEADER_BYTES + len;
            }
        }
    }
    chunks
}

fn append_failure(name: &str, e: AppendError) -> Failure {
    let code = match e {
        AppendError::Poisoned(_) => ErrorCode::ReadOnly,
        AppendError::Damaged(_) => ErrorCode::Damaged,
        _ => ErrorCode::StorageError,
    };
    (code, format!("pipeline {name}: {e}"))
}

impl PipelineRun {
    /// Opens the run: reads the outputs log, then rescans the source from
    /// the watermark (or the start point) to rebuild the index.
    pub async fn open(
        storage: &DmaStorage,
        data_dir: &Path,
        plan: PipelinePlan,
        source: Rc<Partition>,
        log_config: LogConfig,
        limits: Limits,
    ) -> Result<PipelineRun, String> {
        let dir = data_dir
            .join("pipelines")
            .join(&plan.name)
            .join(format!("{:05}", source.partition));
        let outputs = Log::open(storage.clone(), &dir, log_config)
            .await
            .map_err(|e| format!("pipeline {} partition {}: {e}", plan.name, source.partition))?;
        super::partition::report_recovery(
            &format!("pipeline {} partition {}", plan.name, source.partition),
            &outputs,
        );
        let deps: Vec<Vec<usize>> = plan
            .stages
            .iter()
            .map(|s| s.dependencies.iter().map(|&d| d as usize).collect())
            .collect();
        let dag = Dag::new(&deps).map_err(|e| format!("pipeline {}: {e}", plan.name))?;
        let stats = plan
            .stages
            .iter()
            .map(|s| StageStats {
                name: s.name.clone(),
                ..StageStats::default()
            })
            .collect();
        let run = PipelineRun {
            index: RefCell::new(ExecutionIndex::new(dag, plan.max_parallel.max(1) as usize)),
            plan,
            source,
            outputs,
            state: RefCell::new(RunState {
                stats,
                ..RunState::default()
            }),
            limits,
            wake: Notify::default(),
            closed: Cell::new(false),
            checkpointing: Cell::new(false),
            checkpoint_ended: Notify::default(),
            checkpoint_bytes: Cell::new(0),
        };
        run.recover().await?;
        Ok(run)
    }

    fn stage_index(&self, name: &str) -> Option<u8> {
        self.plan.stage_index(name)
    }

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
    async fn replay(&self, to: u64) -> Result<Replay, String> {
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

    async fn recover(&self) -> Result<(), String> {
        let name = &self.plan.name;
        let mut replay = self.replay(self.outputs.visible_offset()).await?;
        let stats = self.source.log.stats();
        let start = match replay.watermark {
            Some(w) => w,
            None => {
                let start = match self.plan.start_point {
                    crate::config::StartPoint::Beginning => stats.start_offset,
                    crate::config::StartPoint::Latest => self.source.log.visible_offset(),
                    crate::config::StartPoint::Offset(o) => o,
                };
                // Remember where a new pipeline started, durably.
                self.outputs
                    .append(&[encode_offset(KIND_WATERMARK, start)], now_ms())
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
        self.checkpoint_bytes.set(self.outputs.stats().bytes);
        Ok(())
    }

    /// Whether the outputs log grew by a segment since the last
    /// checkpoint and none is being written; if so, the caller is to run
    /// [`PipelineRun::checkpoint`] (the claim is taken here, synchronously,
    /// so that two callers never both start one).
    pub fn claim_checkpoint(&self) -> bool {
        if self.checkpointing.get() || self.closed.get() {
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
        struct Claim<'a>(&'a PipelineRun);
        impl Drop for Claim<'_> {
            fn drop(&mut self) {
                self.0.checkpointing.set(false);
                self.0.checkpoint_ended.notify_all();
            }
        }
        let _claim = Claim(self);
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
        let now = now_ms();
        for range in batch_ranges(&carried, batch_max) {
            self.outputs
                .append(&carried[range], now)
                .await
                .map_err(|e| format!("pipeline {name}: checkpoint: {e}"))?;
        }
        self.outputs
            .append(&[marker], now)
            .await
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

    fn done_mask(st: &RunState, root: u64) -> u64 {
        st.outputs
            .get(&root)
            .map_or(0, |m| m.keys().fold(0u64, |acc, &s| acc | 1 << s))
    }

    /// Starts executions while there is room: retried failed ones first,
    /// then triggering events from the cursor on.
    async fn fill(&self) -> Result<(), Failure> {
        loop {
            let retry = {
                let mut st = self.state.borrow_mut();
                if !self.index.borrow().has_room() {
                    return Ok(());
                }
                st.retry_queue.pop()
            };
            let Some(root) = retry else { break };
            let event = self.source.event_at(root).await?;
            let mut st = self.state.borrow_mut();
            let done = Self::done_mask(&st, root);
            if self.index.borrow_mut().start(root, done).is_some() {
                st.roots.insert(root, Rc::new(event));
            }
        }
        loop {
            let cursor = self.state.borrow().cursor;
            if !self.index.borrow().has_room() || cursor >= self.source.log.visible_offset() {
                return Ok(());
            }
            let (_, records) = self.source.fetch(cursor, SCAN_BYTES).await?;
            if records.is_empty() {
                return Ok(());
            }
            let mut st = self.state.borrow_mut();
            let mut index = self.index.borrow_mut();
            for (offset, event) in records {
                if offset < st.cursor {
                    continue;
                }
                if !index.has_room() {
                    break;
                }
                st.cursor = offset + 1;
                if st.finished.remove(&offset) {
                    continue;
                }
                let Ok(decoded) = hadron_wire::verify_event(&event, &self.limits) else {
                    continue;
                };
                if !self.plan.triggers.matches(decoded.type_()) || st.failed.contains_key(&offset) {
                    continue;
                }
                let done = Self::done_mask(&st, offset);
                if index.start(offset, done) == Some(0) && done == index.dag().all() {
                    // Finished before a restart: nothing to run.
                    st.outputs.remove(&offset);
                    continue;
                }
                st.roots.insert(offset, Rc::new(event));
            }
        }
    }

    /// One dispatch round: expire ack deadlines, release due retries, start
    /// executions, and hand ready stages to members with room.
    pub async fn round(
        &self,
        new_delivery_id: &dyn Fn() -> u64,
    ) -> Result<Vec<StageOutgoing>, Failure> {
        let now = Instant::now();
        let expired = self.expired(now);
        for id in expired {
            let timeout = self
                .plan
                .stages
                .get(
                    self.state
                        .borrow()
                        .in_flight
                        .get(&id)
                        .map_or(0, |f| f.stage as usize),
                )
                .map_or(0, |s| s.ack_timeout_ms);
            self.fail_attempt(
                id,
                &format!("no ack within the ack timeout of {timeout} ms"),
            )
            .await?;
        }
        {
            let mut st = self.state.borrow_mut();
            let mut index = self.index.borrow_mut();
            st.retry_at.retain(|&(at, root, stage)| {
                if at <= now {
                    index.release(root, stage as usize);
                    false
                } else {
                    true
                }
            });
        }
        self.fill().await?;
        let mut out = Vec::new();
        let mut st = self.state.borrow_mut();
        let mut index = self.index.borrow_mut();
        let ready: Vec<(u64, u64)> = {
            let dag = index.dag();
            index
                .executions()
                .map(|e| (e.root, dag.ready(e.done, e.done | e.in_flight | e.held)))
                .filter(|&(_, r)| r != 0)
                .collect()
        };
        for (root, mut stages) in ready {
            while stages != 0 {
                let s = stages.trailing_zeros() as u8;
                stages &= stages - 1;
                let Some(m) = Self::pick(&mut st, s) else {
                    continue;
                };
                if !index.dispatch(root, s as usize) {
                    continue;
                }
                let Some(root_event) = st.roots.get(&root).cloned() else {
                    continue;
                };
                let planned = &self.plan.stages[s as usize];
                let inputs = match st.outputs.get(&root) {
                    Some(outputs) => planned
                        .dependencies
                        .iter()
                        .filter_map(|&d| Some((d, outputs.get(&d)?.clone())))
                        .collect(),
                    None => Vec::new(),
                };
                let attempt = st.attempts.get(&(root, s)).copied().unwrap_or(0) + 1;
                let delivery_id = new_delivery_id();
                let member = st.members[m].id;
                st.members[m].in_flight += 1;
                let deadline = now + Duration::from_millis(planned.ack_timeout_ms.max(1));
                st.in_flight.insert(
                    delivery_id,
                    Issued {
                        root,
                        stage: s,
                        member,
                        deadline,
                    },
                );
                st.deadline_min = Some(st.deadline_min.map_or(deadline, |d| d.min(deadline)));
                st.issued.insert(delivery_id, (root, s));
                let stages = self.plan.stages.len();
                st.issued_by_root
                    .entry(root)
                    .or_insert_with(|| Vec::with_capacity(stages))
                    .push(delivery_id);
                out.push(StageOutgoing {
                    member,
                    delivery_id,
                    stage: s,
                    root,
                    attempt,
                    root_event,
                    inputs,
                });
            }
        }
        Ok(out)
    }

    fn pick(st: &mut RunState, stage: u8) -> Option<usize> {
        let n = st.members.len();
        for k in 0..n {
            let i = (st.next_member + k) % n;
            let m = &st.members[i];
            if m.stage == stage && m.in_flight < m.max_in_flight {
                st.next_member = (i + 1) % n;
                return Some(i);
            }
        }
        None
    }

    fn release_member(st: &mut RunState, member: MemberId) {
        if let Some(m) = st.members.iter_mut().find(|m| m.id == member) {
            m.in_flight = m.in_flight.saturating_sub(1);
        }
    }

    /// The in-flight deliveries whose ack deadline passed by `now`. Scans
    /// them only when the earliest deadline may have passed, and then
    /// makes `deadline_min` exact again.
    fn expired(&self, now: Instant) -> Vec<u64> {
        let mut st = self.state.borrow_mut();
        if st.deadline_min.is_none_or(|d| d > now) {
            return Vec::new();
        }
        let mut expired = Vec::new();
        let mut min: Option<Instant> = None;
        for (&id, f) in &st.in_flight {
            if f.deadline <= now {
                expired.push(id);
            } else {
                min = Some(min.map_or(f.deadline, |m| m.min(f.deadline)));
            }
        }
        st.deadline_min = min;
        expired
    }

    /// The earliest time something is due (possibly a little early: an
    /// ack deadline of a delivery settled since).
    pub fn next_due(&self) -> Option<Instant> {
        let st = self.state.borrow();
        let a = st.deadline_min;
        let b = st.retry_at.iter().map(|r| r.0).min();
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether this run issued `delivery_id`.
    pub fn owns(&self, delivery_id: u64) -> bool {
        self.state.borrow().issued.contains_key(&delivery_id)
    }

    /// Adds a stage member.
    pub fn attach(&self, id: MemberId, stage: u8, max_in_flight: u32) {
        let mut st = self.state.borrow_mut();
        match st.members.iter_mut().find(|m| m.id == id) {
            Some(m) => m.max_in_flight = max_in_flight.max(1),
            None => st.members.push(StageMember {
                id,
                stage,
                max_in_flight: max_in_flight.max(1),
                in_flight: 0,
            }),
        }
        drop(st);
        self.wake.notify_all();
    }

    /// The stage members, by stage name, to carry over to a run that
    /// replaces this one.
    pub fn members(&self) -> Vec<CarriedMember> {
        self.state
            .borrow()
            .members
            .iter()
            .map(|m| {
                (
                    m.id,
                    self.plan.stages[m.stage as usize].name.clone(),
                    m.max_in_flight,
                )
            })
            .collect()
    }

    /// Removes a connection's members; their deliveries go out again at once.
    pub fn detach(&self, shard: u16, conn: u64) {
        let mut st = self.state.borrow_mut();
        st.members
            .retain(|m| !(m.id.shard == shard && m.id.conn == conn));
        let orphaned: Vec<u64> = st
            .in_flight
            .iter()
            .filter(|(_, f)| f.member.shard == shard && f.member.conn == conn)
            .map(|(&id, _)| id)
            .collect();
        let mut index = self.index.borrow_mut();
        for id in orphaned {
            if let Some(f) = st.in_flight.remove(&id) {
                index.release(f.root, f.stage as usize);
            }
        }
        drop(index);
        drop(st);
        self.wake.notify_all();
    }

    /// Stage handlers succeeded: `acks` holds (delivery id, output event).
    /// Each ack is settled on its own, as if it came alone; the outputs of
    /// those taken are appended in as few batches as the log allows and
    /// are made durable together before any of their stages counts as done.
    /// Returns the acks that were not taken, and why. A duplicate or late
    /// ack of a completed stage is taken and ignored.
    pub async fn ack_many(&self, acks: &[StageAckOf], from: (u16, u64)) -> Vec<(u64, Failure)> {
        let mut unsettled = Vec::new();
        // (index into `acks`, root, stage) of the acks to make durable.
        let mut taken: Vec<(usize, u64, u8)> = Vec::with_capacity(acks.len());
        for (i, (delivery_id, output)) in acks.iter().enumerate() {
            match self.take_ack(*delivery_id, from, output) {
                Ok(Some((root, stage))) => taken.push((i, root, stage)),
                Ok(None) => {}
                Err(failure) => unsettled.push((*delivery_id, failure)),
            }
        }
        if taken.is_empty() {
            return unsettled;
        }
        let records: Vec<Vec<u8>> = taken
            .iter()
            .map(|&(i, root, stage)| {
                let name = &self.plan.stages[stage as usize].name;
                encode_named(KIND_OUTPUT, root, name, &acks[i].1)
            })
            .collect();
        // One batch per chunk that fits the log's limits; the chunks are
        // enqueued back to back and share the group commit.
        let chunks = batch_ranges(&records, self.outputs.config().batch_bytes_max);
        let now = now_ms();
        let appends = chunks
            .iter()
            .map(|c| self.outputs.append(&records[c.clone()], now));
        let appended = futures::future::join_all(appends).await;
        let mut st = self.state.borrow_mut();
        let mut index = self.index.borrow_mut();
        for (chunk, result) in chunks.into_iter().zip(appended) {
            for &(i, root, stage) in &taken[chunk] {
                st.completing.remove(&(root, stage));
                if let Err(e) = &result {
                    index.release(root, stage as usize);
                    unsettled.push((acks[i].0, append_failure(&self.plan.name, e.clone())));
                    continue;
                }
                st.stats[stage as usize].completed += 1;
                st.attempts.remove(&(root, stage));
                match index.complete(root, stage as usize) {
                    Completion::Done { finished: true, .. } => {
                        st.completed += 1;
                        st.retried.remove(&root);
                        st.outputs.remove(&root);
                        st.roots.remove(&root);
                        for id in st.issued_by_root.remove(&root).unwrap_or_default() {
                            st.issued.remove(&id);
                        }
                        st.attempts.retain(|(r, _), _| *r != root);
                    }
                    // Dependents may need the output.
                    _ => {
                        st.outputs
                            .entry(root)
                            .or_default()
                            .insert(stage, Rc::new(acks[i].1.to_vec()));
                    }
                }
            }
        }
        drop(index);
        drop(st);
        self.wake.notify_all();
        unsettled
    }

    /// The checks of one ack before its output is appended: a valid event,
    /// a delivery this run made to this connection. `Some((root, stage))`
    /// when the output is to be made durable (the stage is then held);
    /// `None` for a duplicate or late ack of a completed stage.
    fn take_ack(
        &self,
        delivery_id: u64,
        from: (u16, u64),
        output: &[u8],
    ) -> Result<Option<(u64, u8)>, Failure> {
        hadron_wire::verify_event(output, &self.limits).map_err(|e| {
            (
                ErrorCode::InvalidEvent,
                format!("the stage output is not a valid event: {e}"),
            )
        })?;
        let mut st = self.state.borrow_mut();
        let Some(&(root, stage)) = st.issued.get(&delivery_id) else {
            return Err((
                ErrorCode::UnknownDelivery,
                format!("stage delivery {delivery_id} is not outstanding"),
            ));
        };
        if let Some(f) = st.in_flight.get(&delivery_id).copied() {
            if (f.member.shard, f.member.conn) != from {
                return Err((
                    ErrorCode::UnknownDelivery,
                    format!("stage delivery {delivery_id} was not made to this connection"),
                ));
            }
            st.in_flight.remove(&delivery_id);
            Self::release_member(&mut st, f.member);
        }
        let failed = st.failed.contains_key(&root);
        let done = failed
            && st
                .outputs
                .get(&root)
                .is_some_and(|m| m.contains_key(&stage))
            || (!failed
                && self
                    .index
                    .borrow()
                    .get(root)
                    .is_none_or(|e| e.done & (1 << stage) != 0));
        if done || !st.completing.insert((root, stage)) {
            // A duplicate or late ack of a completed stage: ignored.
            return Ok(None);
        }
        self.index.borrow_mut().hold(root, stage as usize);
        Ok(Some((root, stage)))
    }

    /// A stage's handler failed.
    pub async fn nack(
        &self,
        delivery_id: u64,
        from: (u16, u64),
        message: &str,
    ) -> Result<(), Failure> {
        let owned = {
            let st = self.state.borrow();
            match st.in_flight.get(&delivery_id) {
                Some(f) => (f.member.shard, f.member.conn) == from,
                None => st.issued.contains_key(&delivery_id),
            }
        };
        if !owned {
            return Err((
                ErrorCode::UnknownDelivery,
                format!("stage delivery {delivery_id} is not outstanding on this connection"),
            ));
        }
        self.fail_attempt(delivery_id, message).await
    }

    /// Counts a failed attempt of an in-flight delivery: hold it for the
    /// backoff, or fail the execution after the last attempt.
    async fn fail_attempt(&self, delivery_id: u64, message: &str) -> Result<(), Failure> {
        let message = &message[..message.floor_char_boundary(ERROR_BYTES_MAX)];
        let (root, stage, exhausted) = {
            let mut st = self.state.borrow_mut();
            let Some(f) = st.in_flight.remove(&delivery_id) else {
                // Settled meanwhile (or a stale delivery): nothing to do.
                return Ok(());
            };
            Self::release_member(&mut st, f.member);
            let key = (f.root, f.stage);
            let failures = st.attempts.get(&key).copied().unwrap_or(0) + 1;
            st.attempts.insert(key, failures);
            let stats = &mut st.stats[f.stage as usize];
            stats.errors += 1;
            stats.last_error = Some(message.to_string());
            stats.last_error_ms = Some(now_ms());
            let policy = self.plan.stages[f.stage as usize].retry;
            if failures >= policy.max_attempts {
                (f.root, f.stage, true)
            } else {
                self.index.borrow_mut().hold(f.root, f.stage as usize);
                let at = Instant::now() + Duration::from_millis(policy.delay_ms(failures));
                st.retry_at.push((at, f.root, f.stage));
                (f.root, f.stage, false)
            }
        };
        if exhausted {
            let name = &self.plan.stages[stage as usize].name;
            let record = encode_named(KIND_FAILED, root, name, message.as_bytes());
            self.outputs
                .append(&[record], now_ms())
                .await
                .map_err(|e| append_failure(&self.plan.name, e))?;
            let mut st = self.state.borrow_mut();
            self.index.borrow_mut().remove(root);
            st.failed.insert(
                root,
                FailedExecution {
                    stage: name.clone(),
                    error: message.to_string(),
                },
            );
            st.stats[stage as usize].failed += 1;
            st.retried.remove(&root);
            st.roots.remove(&root);
            st.attempts.retain(|(r, _), _| *r != root);
            st.retry_at.retain(|&(_, r, _)| r != root);
        }
        self.wake.notify_all();
        Ok(())
    }

    /// Queues failed executions to run again: `root`, or all. Returns the
    /// roots retried.
    pub async fn retry(&self, root: Option<u64>) -> Result<Vec<u64>, Failure> {
        let roots: Vec<u64> = {
            let st = self.state.borrow();
            match root {
                Some(r) if st.failed.contains_key(&r) => vec![r],
                Some(_) => Vec::new(),
                None => st.failed.keys().copied().collect(),
            }
        };
        for &r in &roots {
            // Before the record is appended: a checkpoint taken meanwhile
            // must not move the watermark as if the execution were done.
            self.state.borrow_mut().retried.insert(r);
            let appended = self
                .outputs
                .append(&[encode_offset(KIND_RETRIED, r)], now_ms())
                .await;
            if let Err(e) = appended {
                self.state.borrow_mut().retried.remove(&r);
                return Err(append_failure(&self.plan.name, e));
            }
            let mut st = self.state.borrow_mut();
            if let Some(f) = st.failed.remove(&r)
                && let Some(s) = self.stage_index(&f.stage)
            {
                let stats = &mut st.stats[s as usize];
                stats.failed = stats.failed.saturating_sub(1);
            }
            st.retry_queue.push(r);
        }
        self.wake.notify_all();
        Ok(roots)
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
        if wm == self.state.borrow().watermark {
            return Ok(());
        }
        self.outputs
            .append(&[encode_offset(KIND_WATERMARK, wm)], now_ms())
            .await
            .map_err(|e| format!("pipeline {}: {e}", self.plan.name))?;
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
        self.commit_watermark().await?;
        self.outputs.sync().await.map_err(|e| e.to_string())
    }

    /// Whether executions still need work (live, queued or failed).
    pub fn busy(&self) -> usize {
        let st = self.state.borrow();
        self.index.borrow().unfinished() + st.failed.len() + st.retry_queue.len()
    }

    /// Status of this partition's part of the pipeline.
    pub fn status(&self) -> RunStatus {
        let st = self.state.borrow();
        let index = self.index.borrow();
        let names = |mask: u64| -> Vec<String> {
            self.plan
                .stages
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, s)| s.name.clone())
                .collect()
        };
        let mut stages: Vec<StageStatus> = st
            .stats
            .iter()
            .map(|s| StageStatus {
                name: s.name.clone(),
                completed: s.completed,
                errors: s.errors,
                last_error: s.last_error.clone(),
                failed: s.failed,
                ..StageStatus::default()
            })
            .collect();
        let mut unfinished = Vec::new();
        for e in index.executions() {
            for (i, stage) in stages.iter_mut().enumerate() {
                let bit = 1u64 << i;
                if e.in_flight & bit != 0 {
                    stage.in_flight += 1;
                } else if e.done & bit == 0 {
                    stage.waiting += 1;
                }
            }
            unfinished.push(ExecutionStatus {
                offset: e.root,
                done: names(e.done),
                in_flight: names(e.in_flight),
            });
        }
        RunStatus {
            partition: self.source.partition,
            cursor: st.cursor,
            active: index.unfinished() + st.retry_queue.len(),
            completed: st.completed,
            failed: st.failed.len(),
            stages,
            unfinished,
            failed_executions: st
                .failed
                .iter()
                .map(|(&offset, f)| FailedStatus {
                    offset,
                    stage: f.stage.clone(),
                    error: f.error.clone(),
                })
                .collect(),
        }
    }

    /// The message of a stage delivery.
    pub fn delivery_message<'a>(&'a self, d: &'a StageOutgoing) -> hadron_wire::Message<'a> {
        let inputs = d
            .inputs
            .iter()
            .map(|(stage, event)| hadron_wire::StageInput {
                stage: &self.plan.stages[*stage as usize].name,
                event: event.as_slice(),
            })
            .collect();
        hadron_wire::Message::StageDelivery(hadron_wire::StageDelivery {
            delivery_id: d.delivery_id,
            pipeline: &self.plan.name,
            stage: &self.plan.stages[d.stage as usize].name,
            partition: self.source.partition,
            offset: d.root,
            attempt: d.attempt,
            root: d.root_event.as_slice(),
            inputs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_records_round_trip_and_garbage_is_refused() {
        let out = encode_named(KIND_OUTPUT, 7, "deploy-service", b"event");
        assert_eq!(
            decode_record(&out),
            Some(OutputRecord::Output {
                root: 7,
                stage: "deploy-service",
                event: b"event"
            })
        );
        let failed = encode_named(KIND_FAILED, 9, "sync", b"boom");
        assert_eq!(
            decode_record(&failed),
            Some(OutputRecord::Failed {
                root: 9,
                stage: "sync",
                error: "boom"
            })
        );
        assert_eq!(
            decode_record(&encode_offset(KIND_WATERMARK, 3)),
            Some(OutputRecord::Watermark(3))
        );
        assert_eq!(
            decode_record(&encode_offset(KIND_RETRIED, 4)),
            Some(OutputRecord::Retried(4))
        );
        assert_eq!(decode_record(&[]), None);
        assert_eq!(decode_record(&[9, 0, 0, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(decode_record(&out[..12]), None, "name cut short");
    }

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

    #[test]
    fn checkpoint_records_round_trip_and_garbage_is_refused() {
        let c = Checkpoint {
            state_at: 40,
            watermark: 7,
            completed: 12,
            stages: vec![("fetch".into(), 12), ("deploy".into(), 11)],
            finished: vec![8, 10],
            pending: vec![2],
        };
        let bytes = encode_checkpoint(&c);
        assert_eq!(decode_record(&bytes), Some(OutputRecord::Checkpoint(c)));
        for cut in 1..bytes.len() {
            assert_eq!(decode_record(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(decode_record(&long), None, "trailing byte");
        assert_eq!(
            decode_record(&encode_named(KIND_CARRIED_OUTPUT, 3, "fetch", b"e")),
            Some(OutputRecord::CarriedOutput {
                root: 3,
                stage: "fetch",
                event: b"e"
            })
        );
        assert_eq!(
            decode_record(&encode_named(KIND_CARRIED_FAILED, 3, "fetch", b"x")),
            Some(OutputRecord::CarriedFailed {
                root: 3,
                stage: "fetch",
                error: "x"
            })
        );
    }
}
