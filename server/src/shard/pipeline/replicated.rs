//! A run whose source stream is replicated (docs/replication.md section
//! 6): its outputs log is the log of a Raft group of its own, with the
//! source partition's voters, driven like the partition's
//! ([`drive`](crate::shard::partition::replica::drive)).
//!
//! ```text
//!  every replica:   outputs group (Raft over pipelines/<name>/<partition>/)
//!  the leader:      run active: rebuilt from the outputs log for its term,
//!                   reads the source below the high watermark it knows,
//!                   dispatches; a stage's output is proposed and the stage
//!                   is done (dependents dispatched, StageAck answered) only
//!                   once the output is committed (a majority has it durable)
//!  a follower:      run inactive: attaches stage members, delivers nothing,
//!                   folds its log below each committed checkpoint
//! ```
//!
//! - **Leading.** When this node starts to lead a term, the run's state is
//!   dropped (its members kept) and rebuilt by its dispatcher from the
//!   log, which holds every output the previous leaders may have
//!   acknowledged (Raft's leader completeness). A stage whose output was
//!   acknowledged is therefore never delivered again; one proposed and
//!   not committed was not acknowledged, and may run again.
//! - **Losing the lead.** The state is dropped at once (members kept):
//!   outstanding deliveries are forgotten, their acks refused, and the new
//!   leader delivers them again.
//! - **Under a lease.** A leader cut off from the others keeps leading
//!   until it notices, while another may already have been elected and
//!   completed a stage this one would deliver again. So the run hands out
//!   stages only while the outputs group's leader holds a lease
//!   (`ReplicatedLog::has_lease`): a majority acknowledged a heartbeat it
//!   sent less than an election timeout (less a margin) ago. Raft's
//!   `check_quorum` makes those nodes refuse votes for an election timeout
//!   after hearing from a leader, and a restarted node refuses votes for
//!   one after its start, so no other leader can exist meanwhile; a
//!   leadership transfer ends the lease at once.
//! - **Epochs.** Every rebuild bumps the run's epoch. A task that awaited
//!   (an append, a source read) across a rebuild finds the epoch moved and
//!   drops what it learnt: its answer is `NotLeader`.

use std::rc::Rc;

use hadron_engine::Log;
use hadron_engine::log::batch::Batches;
use hadron_engine::storage::Storage;

use super::codec::{OutputRecord, decode_record};
use super::{PipelineRun, RunState};
use crate::config::PipelinePlan;
use crate::shard::clock::Clock;
use crate::shard::error::Error;
use crate::shard::partition::replica::{self, Replica, ReplicaDuty, ReplicaSpec, encode_batch};
use crate::shard::partition::replica_repair;

/// The name a pipeline's outputs groups go by between peers (in place of
/// a stream's: `/` is in no stream or pipeline name).
pub fn outputs_group(pipeline: &str) -> String {
    format!("{OUTPUTS_GROUP_PREFIX}{pipeline}")
}

/// What begins the peer name of a pipeline's outputs group.
pub const OUTPUTS_GROUP_PREFIX: &str = "pipelines/";

/// Opens the outputs group over `outputs` (verified, and repaired from
/// the leader when damaged, as a partition's log is).
pub(super) async fn open_replica<S: Storage + Clone, C: Clock>(
    storage: &S,
    outputs: &Rc<Log<S>>,
    spec: ReplicaSpec,
    clock: C,
    plan: &PipelinePlan,
) -> Result<Replica<S, C>, String> {
    let named = |e: String| format!("pipeline {} replication: {e}", plan.name);
    let recovery = replica_repair::repair_at_open(storage, outputs)
        .await
        .map_err(named)?
        .map(|target| (storage.clone(), target));
    Replica::open(outputs.clone(), spec, clock, recovery)
        .await
        .map_err(named)
}

impl<S: Storage + Clone + 'static, C: Clock> PipelineRun<S, C> {
    /// Appends `records` to the outputs log: there, or through the group
    /// when replicated (resolved at commit). Refused with `NotLeader`
    /// when the run is not active, or when it was rebuilt meanwhile.
    pub(super) async fn append_records(&self, records: &[Vec<u8>], now: u64) -> Result<(), Error> {
        let Some(replica) = &self.replica else {
            return self
                .outputs
                .append(records, now)
                .await
                .map(|_| ())
                .map_err(|e| super::settle::append_failure(&self.plan.name, e));
        };
        let epoch = self.epoch.get();
        let refs: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
        let proposal = replica.propose_batch(encode_batch(&refs, now));
        let answer = proposal.await.unwrap_or_else(|_| {
            Err(crate::replication::ProposeError::Stopped(
                "the group dropped the proposal".into(),
            ))
        });
        let (stream, partition) = (&self.source.stream, self.source.partition);
        answer.map_err(|e| replica.proposal_error(stream, partition, e))?;
        self.check_epoch(epoch)
    }

    /// `NotLeader` unless the run is active.
    pub(super) fn check_active(&self) -> Result<(), Error> {
        if self.active.get() {
            return Ok(());
        }
        Err(self.not_leader())
    }

    /// `NotLeader` when the state was rebuilt since `epoch`.
    pub(super) fn check_epoch(&self, epoch: u64) -> Result<(), Error> {
        if self.epoch.get() == epoch {
            return Ok(());
        }
        Err(self.not_leader())
    }

    fn not_leader(&self) -> Error {
        let (stream, partition) = (&self.source.stream, self.source.partition);
        self.replica
            .as_ref()
            .and_then(|r| r.refusal(stream, partition))
            .unwrap_or_else(|| Error::NotLeader {
                stream: stream.clone(),
                partition,
                leader: None,
            })
    }

    /// Drops the state, keeping the stage members, and bumps the epoch.
    fn reset(&self) {
        self.active.set(false);
        self.epoch.set(self.epoch.get() + 1);
        self.clear_state();
    }

    /// A fresh state and execution index, the stage members kept.
    fn clear_state(&self) {
        let members = self.members();
        *self.state.borrow_mut() = RunState::fresh(&self.plan);
        let fresh = {
            let index = self.index.borrow();
            hadron_engine::pipeline::ExecutionIndex::new(
                index.dag().clone(),
                self.plan.max_parallel.max(1) as usize,
            )
        };
        *self.index.borrow_mut() = fresh;
        for (member, stage, max_in_flight) in members {
            if let Some(s) = self.stage_index(&stage) {
                self.state
                    .borrow_mut()
                    .ledger
                    .members
                    .attach(member, s, max_in_flight);
            }
        }
    }

    /// Before a dispatch round: rebuilds the run from its log when this
    /// node began to lead. Returns whether the run is active.
    pub(super) async fn ready_to_dispatch(&self) -> Result<bool, Error> {
        // Under the outputs group's lease only: a node that lost the lead
        // without knowing yet must not hand out a stage the new leader
        // may have completed.
        let leased = self.replica.as_ref().is_none_or(|r| r.has_lease());
        let Some(epoch) = self.lead_at.take() else {
            return Ok(self.active.get() && leased);
        };
        if epoch != self.epoch.get() {
            return Ok(false);
        }
        // A recovery of an earlier epoch that a new lead cut short may have
        // written into this epoch's state: start from a clean one.
        self.clear_state();
        if let Err(why) = self.recover().await {
            // Not leading any more, or the log could not be read: the
            // next leadership tries again.
            tracing::warn!(pipeline = %self.plan.name, partition = self.source.partition, "not serving: {why}");
            return Ok(false);
        }
        if epoch == self.epoch.get() {
            self.active.set(true);
        }
        Ok(self.active.get() && self.replica.as_ref().is_none_or(|r| r.has_lease()))
    }

    /// Records each committed checkpoint's `state_at`: a follower's log
    /// folds below it as the leader's did.
    pub(super) fn watch_checkpoints(&self) {
        let Some(replica) = &self.replica else { return };
        replica.want_lease();
        let fold = self.fold.clone();
        replica.set_on_applied(Box::new(move |bytes| {
            for batch in Batches::new(bytes).flatten() {
                for (_, record) in batch.records() {
                    if let Some(OutputRecord::Checkpoint(c)) = decode_record(record) {
                        let (at, done) = fold.get();
                        fold.set((at.max(c.state_at), done));
                    }
                }
            }
        }));
    }

    /// Turns the outputs group until it stops or the run closes.
    pub async fn drive_replication(self: Rc<Self>) {
        let Some(replica) = self.replica.clone() else {
            return;
        };
        replica::drive(replica, &self.source.clock().clone(), &*self).await;
    }

    /// Stops the outputs group and waits until its loop ended (before a
    /// replacing run opens the same log).
    pub async fn close_replication(&self) {
        if let Some(replica) = &self.replica {
            replica.close().await;
        }
    }

    /// The outputs group, when replicated.
    pub fn replica(&self) -> Option<Rc<Replica<S, C>>> {
        self.replica.clone()
    }

    /// The outputs group's state, when replicated.
    pub fn replication(&self) -> Option<replica::ReplicaStatus> {
        self.replica.as_ref().map(|r| r.status())
    }
}

impl<S: Storage + Clone + 'static, C: Clock> ReplicaDuty for PipelineRun<S, C> {
    fn name(&self) -> String {
        format!(
            "pipeline {} partition {}",
            self.plan.name, self.source.partition
        )
    }

    fn moved(&self) {
        self.wake.notify_all();
    }

    /// The dispatcher rebuilds the run (its recovery may append, which
    /// needs this loop turning).
    async fn lead(&self, _term: u64) -> Result<(), String> {
        self.reset();
        self.lead_at.set(Some(self.epoch.get()));
        self.wake.notify_all();
        Ok(())
    }

    fn follow(&self) {
        self.reset();
        self.lead_at.set(None);
        self.wake.notify_all();
    }

    /// A follower folds its log below the last committed checkpoint.
    async fn after_turn(&self) -> Result<(), String> {
        let (at, done) = self.fold.get();
        if self.active.get() || at <= done {
            return Ok(());
        }
        self.outputs.delete_before(at).await.map_err(|e| {
            format!(
                "pipeline {}: deleting checkpointed outputs: {e}",
                self.plan.name
            )
        })?;
        self.fold.set((at, at));
        Ok(())
    }

    // Not `closed`: a run closed for a replacement still syncs through its
    // group; `close_replication` ends the loop once it has.
}
