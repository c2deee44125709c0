//! One pipeline on one source partition, on the shard that owns the
//! partition: the trigger scanner, the execution index, stage deliveries,
//! acks with outputs, nacks, ack timeouts, retries and failures.
//!
//! **The outputs log** (`pipelines/<name>/<partition>/`, an engine log with
//! the server's fsync policy) is the run's memory; its records are in
//! [`codec`].
//!
//! A stage's output is appended, and made durable by group commit, before the
//! stage is marked done and its dependents are dispatched, so a completed
//! stage never runs again: on start, the outputs log says which stages of
//! which roots are done, and the source is rescanned from the last
//! watermark (the oldest unfinished execution, persisted every commit
//! interval). Stages are recorded by name, so adding or reordering stages
//! keeps what was done.
//!
//! The run is split by what it does: [`replay`] rebuilds it from the
//! outputs log on open, [`checkpoint`] folds that log so it stays small,
//! [`dispatch`] starts executions and hands ready stages to members,
//! [`settle`] takes stage acks and nacks (and ack timeouts), and
//! [`status`] reports it. Stage members and the deliveries they hold, with
//! their ack deadlines in order, are a `Ledger` of the dispatch core
//! shared with consumer groups (`shard::deliver`); held stages wait for
//! their backoff in its `Timers`.

mod checkpoint;
mod codec;
mod dispatch;
mod replay;
#[cfg(test)]
mod replica_sim;
mod replicated;
mod settle;
mod status;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::rc::Rc;

use bytes::Bytes;
use hadron_engine::notify::Notify;
use hadron_engine::pipeline::{Dag, ExecutionIndex};
use hadron_engine::storage::Storage;
use hadron_engine::storage::dma::DmaStorage;
use hadron_engine::{Log, LogConfig};
use hadron_wire::Limits;

use super::clock::{Clock, SystemClock};
use super::deliver::{Ledger, MemberId, Timers};
use super::partition::Partition;
use super::partition::replica::{Replica, ReplicaSpec};
use crate::config::PipelinePlan;

pub use replicated::{OUTPUTS_GROUP_PREFIX, outputs_group};
pub use status::{RunStatus, StageStatus};

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

/// What a stage delivery carries (in the ledger).
#[derive(Debug, Clone, Copy)]
struct Issued {
    root: u64,
    stage: u8,
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
    /// Stage members (keyed by their stage) and the deliveries not yet
    /// settled, by id and by ack deadline.
    ledger: Ledger<u8, Issued>,
    /// Every delivery id issued for a live execution (for late acks).
    issued: HashMap<u64, (u64, u8)>,
    /// The same ids by root, to forget them when the execution finishes.
    issued_by_root: HashMap<u64, Vec<u64>>,
    /// Stages whose output is being made durable.
    completing: HashSet<(u64, u8)>,
    /// The stage members the last round left waiting for room on their
    /// connection (see `dispatch`).
    room_blocked: Vec<MemberId>,
    /// Held stages, (root, stage), by when they may go out again.
    retry_at: Timers<(u64, u8)>,
    /// Failed attempts per stage of live executions.
    attempts: HashMap<(u64, u8), u32>,
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

impl RunState {
    /// The state of a run that knows nothing yet: counts at zero.
    fn fresh(plan: &PipelinePlan) -> RunState {
        let stats = plan
            .stages
            .iter()
            .map(|s| StageStats {
                name: s.name.clone(),
                ..StageStats::default()
            })
            .collect();
        RunState {
            stats,
            ..RunState::default()
        }
    }
}

/// A pipeline on one partition.
pub struct PipelineRun<S: Storage = DmaStorage, C: Clock = SystemClock> {
    pub plan: PipelinePlan,
    pub source: Rc<Partition<S, C>>,
    index: RefCell<ExecutionIndex>,
    outputs: Rc<Log<S>>,
    state: RefCell<RunState>,
    /// The outputs' Raft group when the source stream is replicated
    /// ([`replicated`]): the run serves only where it leads.
    replica: Option<Rc<Replica<S, C>>>,
    /// Whether this run dispatches and settles: always when unreplicated;
    /// when replicated, while this node leads the outputs group and the
    /// run was rebuilt from its log for that term.
    active: Cell<bool>,
    /// Bumped whenever the state is rebuilt: a task that awaited across
    /// a rebuild must not apply what it learnt before to the new state.
    epoch: Cell<u64>,
    /// A follower's outputs log may be folded below this offset (the
    /// last committed checkpoint's `state_at`), and was up to the second.
    fold: Rc<Cell<(u64, u64)>>,
    /// Set by a new leadership: the epoch whose state the dispatcher is to
    /// rebuild from the log.
    lead_at: Cell<Option<u64>>,
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

impl<S: Storage, C: Clock> std::fmt::Debug for PipelineRun<S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelineRun")
            .field("pipeline", &self.plan.name)
            .field("partition", &self.source.partition)
            .finish()
    }
}

impl<S: Storage + Clone + 'static, C: Clock> PipelineRun<S, C> {
    /// Opens the run: reads the outputs log, then rescans the source from
    /// the watermark (or the start point) to rebuild the index.
    pub async fn open(
        storage: &S,
        data_dir: &Path,
        plan: PipelinePlan,
        source: Rc<Partition<S, C>>,
        log_config: LogConfig,
        limits: Limits,
        replication: Option<ReplicaSpec>,
    ) -> Result<PipelineRun<S, C>, String> {
        let dir = data_dir
            .join("pipelines")
            .join(&plan.name)
            .join(format!("{:05}", source.partition));
        let outputs = Rc::new(
            super::partition::replica_repair::open_log_as(
                storage,
                &dir,
                log_config,
                replication.is_some(),
            )
            .await
            .map_err(|e| format!("pipeline {} partition {}: {e}", plan.name, source.partition))?,
        );
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
        let replica = match replication {
            Some(spec) => Some(Rc::new(
                replicated::open_replica(storage, &outputs, spec, source.clock().clone(), &plan)
                    .await?,
            )),
            None => None,
        };
        let run = PipelineRun {
            index: RefCell::new(ExecutionIndex::new(dag, plan.max_parallel.max(1) as usize)),
            state: RefCell::new(RunState::fresh(&plan)),
            plan,
            source,
            outputs,
            active: Cell::new(replica.is_none()),
            replica,
            epoch: Cell::new(0),
            fold: Rc::new(Cell::new((0, 0))),
            lead_at: Cell::new(None),
            limits,
            wake: Notify::default(),
            closed: Cell::new(false),
            checkpointing: Cell::new(false),
            checkpoint_ended: Notify::default(),
            checkpoint_bytes: Cell::new(0),
        };
        if run.replica.is_none() {
            run.recover().await?;
        } else {
            run.watch_checkpoints();
        }
        Ok(run)
    }

    fn stage_index(&self, name: &str) -> Option<u8> {
        self.plan.stage_index(name)
    }
}
