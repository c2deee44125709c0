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
//! ```
//!
//! A stage's output is appended, and fdatasynced by group commit, before the
//! stage is marked done and its dependents are dispatched, so a completed
//! stage never runs again: on start, the outputs log says which stages of
//! which roots are done, and the source is rescanned from the last
//! watermark (the oldest unfinished execution, persisted every commit
//! interval). Stages are recorded by name, so adding or reordering stages
//! keeps what was done.
//!
//! **Failures.** A nack or an ack timeout counts as a failed attempt: the
//! stage is held for the stage's backoff and then delivered again; after
//! `maxAttempts` the execution fails, leaves the window (so it blocks
//! nothing) and is remembered, visible in status, until `pipeline retry`.
//! A disconnect is not the handler's failure: the stage goes out again at
//! once, to another member if there is one.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
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

#[derive(Debug, Clone)]
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
}

fn decode_record(bytes: &[u8]) -> Option<OutputRecord<'_>> {
    let (&kind, rest) = bytes.split_first()?;
    let value = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
    fn named(rest: &[u8]) -> Option<(&str, usize)> {
        let len = u16::from_le_bytes(rest.get(8..10)?.try_into().ok()?) as usize;
        let name = std::str::from_utf8(rest.get(10..10 + len)?).ok()?;
        Some((name, 10 + len))
    }
    match kind {
        KIND_OUTPUT => {
            let (stage, at) = named(rest)?;
            Some(OutputRecord::Output {
                root: value,
                stage,
                event: &rest[at..],
            })
        }
        KIND_WATERMARK if rest.len() == 8 => Some(OutputRecord::Watermark(value)),
        KIND_FAILED => {
            let (stage, at) = named(rest)?;
            Some(OutputRecord::Failed {
                root: value,
                stage,
                error: std::str::from_utf8(&rest[at..]).ok()?,
            })
        }
        KIND_RETRIED if rest.len() == 8 => Some(OutputRecord::Retried(value)),
        _ => None,
    }
}

fn append_failure(name: &str, e: AppendError) -> Failure {
    let code = match e {
        AppendError::Poisoned(_) => ErrorCode::ReadOnly,
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
        };
        run.recover().await?;
        Ok(run)
    }

    fn stage_index(&self, name: &str) -> Option<u8> {
        self.plan.stage_index(name)
    }

    async fn recover(&self) -> Result<(), String> {
        let name = &self.plan.name;
        let mut watermark = None;
        let mut offset = self.outputs.stats().start_offset;
        let end = self.outputs.visible_offset();
        let all = self.index.borrow().dag().all();
        let mut done_roots: HashMap<u64, u64> = HashMap::new();
        while offset < end {
            let read = self
                .outputs
                .read(offset, 1 << 20)
                .await
                .map_err(|e| format!("pipeline {name}: reading outputs: {e}"))?;
            let mut st = self.state.borrow_mut();
            for batch in Batches::new(&read.bytes) {
                let batch = batch.map_err(|e| format!("pipeline {name}: {e}"))?;
                for (o, record) in batch.records() {
                    if o < offset {
                        continue;
                    }
                    match decode_record(record) {
                        Some(OutputRecord::Output { root, stage, event }) => {
                            if let Some(s) = self.stage_index(stage) {
                                st.outputs
                                    .entry(root)
                                    .or_default()
                                    .entry(s)
                                    .or_insert_with(|| Rc::new(event.to_vec()));
                                *done_roots.entry(root).or_default() |= 1 << s;
                                st.stats[s as usize].completed += 1;
                            }
                        }
                        Some(OutputRecord::Watermark(w)) => watermark = Some(w),
                        Some(OutputRecord::Failed { root, stage, error }) => {
                            st.failed.insert(
                                root,
                                FailedExecution {
                                    stage: stage.to_string(),
                                    error: error.to_string(),
                                },
                            );
                        }
                        Some(OutputRecord::Retried(root)) => {
                            st.failed.remove(&root);
                        }
                        None => {
                            return Err(format!(
                                "pipeline {name}: outputs record {o} is malformed"
                            ));
                        }
                    }
                }
            }
            offset = read.next_offset;
        }
        let stats = self.source.log.stats();
        let start = match watermark {
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
        let mut st = self.state.borrow_mut();
        // Finished: every stage done, or (for executions finished under an
        // earlier definition with fewer stages) below the watermark and not
        // failed.
        let completed = done_roots
            .iter()
            .filter(|&(root, &done)| {
                done == all || (*root < start && !st.failed.contains_key(root))
            })
            .count() as u64;
        st.cursor = start.max(stats.start_offset);
        st.watermark = start;
        st.completed = completed;
        // Executions after the watermark that finished must not run again;
        // their outputs are not needed in memory.
        st.finished = done_roots
            .iter()
            .filter(|&(&root, &done)| root >= start && done == all)
            .map(|(&root, _)| root)
            .collect();
        let failed: HashSet<u64> = st.failed.keys().copied().collect();
        st.outputs.retain(|root, stages| {
            failed.contains(root) || (*root >= start && stages.len() < all.count_ones() as usize)
        });
        let failed_stages: Vec<u8> = st
            .failed
            .values()
            .filter_map(|f| self.stage_index(&f.stage))
            .collect();
        for s in failed_stages {
            st.stats[s as usize].failed += 1;
        }
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
        let batch_max = self.outputs.config().batch_bytes_max;
        let mut chunks: Vec<std::ops::Range<usize>> = Vec::new();
        let mut bytes = BATCH_HEADER_BYTES;
        for (i, record) in records.iter().enumerate() {
            let len = RECORD_PREFIX_BYTES + record.len();
            match chunks.last_mut() {
                Some(c) if bytes + len <= batch_max && c.len() < BATCH_RECORDS_MAX as usize => {
                    c.end = i + 1;
                    bytes += len;
                }
                _ => {
                    chunks.push(i..i + 1);
                    bytes = BATCH_HEADER_BYTES + len;
                }
            }
        }
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
            self.outputs
                .append(&[encode_offset(KIND_RETRIED, r)], now_ms())
                .await
                .map_err(|e| append_failure(&self.plan.name, e))?;
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

    /// Persists the watermark if it moved: the oldest unfinished execution,
    /// or the cursor when none is live.
    pub async fn commit_watermark(&self) -> Result<(), String> {
        let (wm, old) = {
            let st = self.state.borrow();
            let live = self.index.borrow().low_watermark();
            let queued = st.retry_queue.iter().min().copied();
            let wm = [Some(st.cursor), live, queued]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(st.cursor);
            (wm, st.watermark)
        };
        if wm == old {
            return Ok(());
        }
        self.outputs
            .append(&[encode_offset(KIND_WATERMARK, wm)], now_ms())
            .await
            .map_err(|e| format!("pipeline {}: {e}", self.plan.name))?;
        self.state.borrow_mut().watermark = wm;
        Ok(())
    }

    /// Makes the outputs log durable (on shutdown).
    pub async fn sync(&self) -> Result<(), String> {
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
}
