//! The metadata group (docs/replication.md section 2): one Raft group,
//! `cluster/meta`, on shard 0 of every node of a cluster of several nodes,
//! through which every admin change passes, in one order, on every node.
//!
//! ```text
//!  admin request -> shard 0 of any node
//!    a follower:  NotLeader naming the meta leader (when known)
//!    the leader:  once it committed an entry of its term and applied all
//!                 it committed: today's checks on its state (nothing
//!                 changes), propose the command, wait for its commit and
//!                 its own application, answer that application's summary
//!  every node, after each turn of the group (the duty's after_turn):
//!    read the entries past the applied index from the log, in order;
//!    apply each command through today's local code (forced: the checks
//!    on local state ran on the leader); record the index durably
//! ```
//!
//! - **State.** The group holds commands, not state: resources (`Apply`,
//!   tokens), placement (`Move`, and `Moves`, a rebalance's plan:
//!   `rebalance.rs`) and the registry (`NodeAdd`,
//!   `NodeRemove`). A node applies them to its own files
//!   (`resources.yaml`, `cluster.placement`, `cluster.peers`); the
//!   applied index is recorded in `<data dir>/cluster/meta.applied`
//!   AFTER those are saved, so a restart applies only later entries (the
//!   Raft log's own applied index counts everything up to its recorded
//!   commit as applied: that is not this one).
//! - **Idempotence.** A crash between saving the state and recording the
//!   index applies the last command again. Every command is harmless
//!   twice: an apply of the same resources changes nothing; a token
//!   created as specified, or revoked and gone, is left as it is; a move
//!   (or a rebalance's moves) sets the same placement; adding a known node with the same addresses,
//!   or removing one that is gone, does nothing.
//! - **Failures.** A committed command a node cannot apply (it fails a
//!   check that depends only on replicated state, so it fails the same
//!   everywhere) is logged at error with its index and reason, and the
//!   node goes on. A record that does not decode is the same kind of
//!   error, naming the index; never a panic.
//! - **Membership.** Genesis voters: the founders. A node added later
//!   opens its replica joining (no voters) and learns everything from the
//!   log. The target is the registry's nodes, said again after every node
//!   change (adding or removing a node is a membership change of this
//!   group too): `metaVoters` of them (default 5) vote, the current
//!   voters kept first, and the others are **learners**, which receive
//!   and apply the log without voting (`shard.rs` `meta_target`).
//!   Removing a voter promotes a learner; the reconciler demotes a voter
//!   past `metaVoters` (`replica_move.rs`).
//! - **Damage.** The log opens as a partition's does
//!   (`replica_repair`): damage found at start is cut, and the replica
//!   abstains until refilled from its peers; the applied index then goes
//!   on from where it was, so nothing is applied twice.
//! - **Compaction.** The leader proposes a `State` entry (the node's
//!   whole metadata, [`command::MetaSnapshot`]) once
//!   `metaCompactEveryEntries` entries were applied since the last one,
//!   and only while nothing else is in flight: it leads a committed
//!   term, has applied its whole log, and no proposal of this node waits
//!   (so the state it reads is the state just before the entry's index).
//!   Applying a `State` REPLACES a node's metadata (idempotent). Once a
//!   node applied the `State` at index s, its log before s may go
//!   ([`Log::delete_before`] the entry's offset; the replica bounds
//!   retention to committed entries): whole sealed segments go, so the
//!   log keeps at most the segment holding s and the entries after it,
//!   about `metaCompactEveryEntries` plus one segment's worth (its
//!   segments are `segmentBytes` up to `META_SEGMENT_BYTES_MAX`, 32 MiB,
//!   allocated in steps). A `State` must fit in one entry (a segment up
//!   to the engine's largest batch, 16 MiB: 16 MiB with the default
//!   `segmentBytes`), so the leader refuses an apply or token change
//!   after which it would not ([`Error::MetadataTooLarge`]): the log
//!   could never be compacted again.
//! - **Catch-up.** A follower whose next index is below the leader's
//!   first index installs the partitions' snapshot descriptor
//!   (`engine_store.rs`): its log restarts at the leader's first index,
//!   which is at or before a `State`. Here the next index to apply is
//!   then below the log's first: the entries before the first `State` in
//!   the log are not applied (that `State` replaces everything before
//!   it), and the applied index jumps to it. Until that `State` is in the
//!   log and committed here, nothing is applied.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

use hadron_engine::Log;
use hadron_engine::log::batch::{BatchKind, Batches};
use hadron_engine::notify::Notify;
use hadron_engine::storage::Storage;

use super::clock::Clock;
use super::error::Error;
use super::partition::replica::{Replica, ReplicaDuty, encode_batch};

pub mod command;
mod place;
pub(crate) mod rebalance;
mod shard;
#[cfg(test)]
mod sim;
mod state;

pub use command::{Command, MetaSnapshot};
pub(crate) use shard::ShardMeta;

/// The group's name between peers (a `/`: no stream is named so).
pub const META_GROUP: &str = "cluster/meta";
/// Its log, under the data directory.
pub const META_DIR: &str = "cluster/meta";
/// The applied index, under the data directory.
pub const META_APPLIED_FILE: &str = "cluster/meta.applied";
/// Bytes of entries one read of the log takes while applying (at least
/// one entry).
pub const APPLY_READ_BYTES_MAX: u64 = 4 << 20;
/// Answers kept for proposers, by index, at most (the oldest go first).
pub const ANSWERS_KEPT_MAX: usize = 64;
/// What applying an entry answered: its lines, or why it was not applied.
type Answer = Result<Vec<String>, Error>;

/// Changes with a client's change id whose answers a node keeps, at most
/// (a token revoke or a rebalance each; a client resends within
/// `ADMIN_LEADER_WAIT`, 30 s).
pub const CHANGES_KEPT_MAX: usize = 1_024;

/// What the group's commands change on a node.
pub trait MetaState {
    /// Applies the committed `command` at `index`; the answer its
    /// proposer gets.
    fn apply(
        &self,
        index: u64,
        command: Command,
    ) -> impl std::future::Future<Output = Result<Vec<String>, Error>>;
    /// Records durably that every entry through `index` is applied (after
    /// the state they changed was saved).
    fn applied_through(&self, index: u64) -> Result<(), String>;
    /// The node's whole metadata now, for a `State` entry.
    fn snapshot(&self) -> Result<MetaSnapshot, Error>;
}

/// The metadata group on this node: its replica, and the state machine
/// that applies its log.
pub struct Meta<S: Storage, C: Clock, M> {
    pub replica: Rc<Replica<S, C>>,
    log: Rc<Log<S>>,
    state: M,
    clock: C,
    /// The last entry applied here (and recorded).
    applied: Cell<u64>,
    /// The answers of the last entries applied, by index.
    answers: RefCell<BTreeMap<u64, Answer>>,
    /// The answers of the last [`CHANGES_KEPT_MAX`] changes applied here
    /// that carried a client's change id, oldest first: a resend of one
    /// is answered with it (`answered_change`). Every node applies the
    /// same entries, so a new leader has them too; they are not kept
    /// across a restart or in a `State`.
    changes: RefCell<std::collections::VecDeque<(u64, Answer)>>,
    /// Signalled when `applied` moves or the group stops.
    applied_notify: Notify,
    /// `metaCompactEveryEntries`: entries applied between `State`s.
    compact_every: u64,
    /// The index of the last `State` applied here (0: none since open).
    state_at: Cell<u64>,
    /// The last `State` this node proposed: its term and the applied
    /// index it was read at (not proposed again in that term until as
    /// many entries passed: it was lost).
    state_proposed: Cell<Option<(u64, u64)>>,
    /// This node's proposals waiting for their commit.
    in_flight: Rc<Cell<u64>>,
}

/// Counts a proposal in flight while it lives.
struct InFlight(Rc<Cell<u64>>);

impl InFlight {
    fn new(count: &Rc<Cell<u64>>) -> InFlight {
        count.set(count.get() + 1);
        InFlight(count.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

impl<S: Storage, C: Clock, M: MetaState> Meta<S, C, M> {
    /// The group over `replica` (opened on `log`), whose entries through
    /// `applied` are applied here already; its leader proposes a `State`
    /// every `compact_every` entries (at least 1).
    pub fn new(
        replica: Rc<Replica<S, C>>,
        log: Rc<Log<S>>,
        state: M,
        clock: C,
        applied: u64,
        compact_every: u64,
    ) -> Self {
        assert!(compact_every >= 1, "metaCompactEveryEntries is at least 1");
        Meta {
            compact_every,
            state_at: Cell::new(0),
            state_proposed: Cell::new(None),
            in_flight: Rc::default(),
            replica,
            log,
            state,
            clock,
            applied: Cell::new(applied),
            answers: RefCell::new(BTreeMap::new()),
            changes: RefCell::new(std::collections::VecDeque::new()),
            applied_notify: Notify::default(),
        }
    }

    /// The last entry applied here.
    pub fn applied(&self) -> u64 {
        self.applied.get()
    }

    /// Whether this node may take a change now: it leads, committed an
    /// entry of its term, and has applied everything it committed (it
    /// waits for that). Else the error to answer.
    pub async fn ready(&self) -> Result<(), Error> {
        if let Some(refusal) = self.replica.refusal(META_GROUP, 0) {
            return Err(refusal);
        }
        if !self.replica.leads_committed_term() {
            // Just elected: its first entry is not committed yet.
            return Err(Error::NotLeader {
                stream: META_GROUP.into(),
                partition: 0,
                leader: None,
            });
        }
        // Only waits: the answer of the entry at `commit` (a `State` this
        // leader proposed, whose application may have failed here) is not
        // this change's.
        let commit = self.replica.status().commit;
        self.wait_applied_through(commit).await
    }

    /// Proposes `command`, waits for its commit and its application here,
    /// and answers that application's summary.
    pub async fn propose(&self, command: &Command) -> Result<Vec<String>, Error> {
        let batch = encode_batch(&[&command.encode()], self.clock.now_ms());
        let _in_flight = InFlight::new(&self.in_flight);
        let proposal = self.replica.propose_batch(batch);
        let committed = match proposal.await {
            Ok(Ok(committed)) => committed,
            Ok(Err(e)) => return Err(self.replica.proposal_error(META_GROUP, 0, e)),
            Err(_) => return Err(self.stopped("the group dropped the proposal".into())),
        };
        self.wait_applied(committed.index).await
    }

    /// Waits until the entry at `index` is applied here; its answer.
    async fn wait_applied(&self, index: u64) -> Result<Vec<String>, Error> {
        self.wait_applied_through(index).await?;
        self.answers
            .borrow_mut()
            .remove(&index)
            .unwrap_or(Ok(Vec::new()))
    }

    /// Waits until every entry through `index` is applied here.
    async fn wait_applied_through(&self, index: u64) -> Result<(), Error> {
        loop {
            let generation = self.applied_notify.generation();
            if self.applied.get() >= index {
                return Ok(());
            }
            if let Some(why) = self.replica.status().stopped {
                return Err(self.stopped(why));
            }
            self.applied_notify.changed_since(generation).await;
        }
    }

    /// The metadata group stopped here: another node may take the change
    /// (a `NotLeader` the admin client follows).
    fn stopped(&self, why: String) -> Error {
        Error::ReplicaOffline {
            stream: META_GROUP.into(),
            partition: 0,
            why: format!("its replication stopped: {why}"),
            leader: None,
        }
    }

    /// Applies the entries the group applied past this state machine's
    /// index, in order, recording each index once applied. Past a
    /// compaction (the next index below the log's first), it starts at
    /// the first `State` in the log, or waits for one.
    async fn apply_committed(&self) -> Result<(), String> {
        let target = self.replica.status().applied;
        while self.applied.get() < target {
            let mut from = self.applied.get() + 1;
            if from < self.log.first_index() {
                match self.first_state(target).await? {
                    Some(index) => from = index,
                    None => return Ok(()),
                }
            }
            let batches = self
                .log
                .entries(from, target + 1, APPLY_READ_BYTES_MAX)
                .await
                .map_err(|e| format!("reading metadata entries from {from}: {e:?}"))?;
            if batches.is_empty() {
                return Err(format!("no metadata entry at index {from}"));
            }
            for b in batches {
                let state = b.kind == BatchKind::Events && holds_state(&b.bytes);
                let answer = if b.kind == BatchKind::Events {
                    self.apply_entry(b.index, &b.bytes).await
                } else {
                    Ok(Vec::new())
                };
                self.state
                    .applied_through(b.index)
                    .map_err(|e| format!("recording metadata entry {} as applied: {e}", b.index))?;
                self.applied.set(b.index);
                if state && answer.is_ok() {
                    self.compacted_at(b.index, &b.bytes).await;
                }
                let mut answers = self.answers.borrow_mut();
                answers.insert(b.index, answer);
                while answers.len() > ANSWERS_KEPT_MAX {
                    answers.pop_first();
                }
                drop(answers);
                self.applied_notify.notify_all();
            }
        }
        Ok(())
    }

    /// The index of the first `State` entry in the log through `target`
    /// (the log starts past the next index to apply: a snapshot was
    /// installed, or this node's own compaction passed a restart's
    /// recorded index). `None`: none is there yet.
    async fn first_state(&self, target: u64) -> Result<Option<u64>, String> {
        let mut from = self.log.first_index();
        while from <= target {
            let batches = self
                .log
                .entries(from, target + 1, APPLY_READ_BYTES_MAX)
                .await
                .map_err(|e| format!("reading metadata entries from {from}: {e:?}"))?;
            let Some(last) = batches.last().map(|b| b.index) else {
                return Err(format!("no metadata entry at index {from}"));
            };
            if let Some(b) = batches
                .iter()
                .find(|b| b.kind == BatchKind::Events && holds_state(&b.bytes))
            {
                tracing::info!(
                    applied = self.applied.get(),
                    state = b.index,
                    "the metadata log starts past the next entry to apply: skipping to its first State"
                );
                return Ok(Some(b.index));
            }
            from = last + 1;
        }
        Ok(None)
    }

    /// After the `State` at `index` (entry `bytes`) applied here: the log
    /// before it may go (whole sealed segments; the replica keeps what is
    /// not committed).
    async fn compacted_at(&self, index: u64, bytes: &[u8]) {
        self.state_at.set(index);
        let offset = match hadron_engine::log::batch::parse_header(bytes) {
            Ok(header) => header.base_offset,
            Err(e) => {
                tracing::error!(index, "metadata State entry {index}: {e}");
                return;
            }
        };
        if let Err(e) = self.log.delete_before(offset).await {
            tracing::warn!(
                index,
                "compacting the metadata log before entry {index}: {e}"
            );
        }
    }

    /// On the leader, once `compact_every` entries were applied since the
    /// last `State` and nothing else is in flight: proposes a `State` (its
    /// answer is not awaited: it is applied like any entry).
    fn propose_state(&self) {
        let status = self.replica.status();
        let applied = self.applied.get();
        let quiet = self.in_flight.get() == 0
            && applied == status.last_index
            && status.commit == status.last_index
            && self.replica.leads_committed_term();
        let due = applied.saturating_sub(self.state_at.get()) >= self.compact_every
            && self
                .state_proposed
                .get()
                .is_none_or(|(term, at)| term != status.term || applied >= at + self.compact_every);
        if !quiet || !due {
            return;
        }
        self.state_proposed.set(Some((status.term, applied)));
        let snapshot = match self.state.snapshot() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("reading this node's metadata for a State entry: {e}");
                return;
            }
        };
        let record = Command::State(snapshot).encode();
        let batch = encode_batch(&[&record], self.clock.now_ms());
        let batch_bytes_max = self.log.config().batch_bytes_max;
        if batch.len() > batch_bytes_max {
            tracing::error!(
                "a State entry of {} bytes is over the metadata log's batch limit of {batch_bytes_max}: the log is not compacted",
                batch.len()
            );
            return;
        }
        tracing::info!(applied, "proposing a metadata State entry");
        // Answered at commit; applied as every entry is.
        drop(self.replica.propose_batch(batch));
    }

    /// Applies the commands of the batch at `index`; a command that does
    /// not decode or apply is logged at error, and the node goes on.
    async fn apply_entry(&self, index: u64, bytes: &[u8]) -> Result<Vec<String>, Error> {
        let batch = match Batches::new(bytes).next() {
            Some(Ok(batch)) => batch,
            Some(Err(e)) => return Err(refused(index, format!("not a batch: {e:?}"))),
            None => return Err(refused(index, "an empty entry".into())),
        };
        let mut lines = Vec::new();
        let mut change = 0;
        for (_, record) in batch.records() {
            let command = Command::decode(record).map_err(|e| refused(index, e.to_string()))?;
            let what = command.describe();
            change = command.change_id().max(change);
            match self.state.apply(index, command).await {
                Ok(more) => lines.extend(more),
                Err(e) => {
                    tracing::error!(index, "metadata entry {index} ({what}) not applied: {e}");
                    self.remember_change(change, Err(e.clone()));
                    return Err(e);
                }
            }
        }
        self.remember_change(change, Ok(lines.clone()));
        Ok(lines)
    }

    /// Keeps the answer of a change applied with the client's `change`
    /// id (none for 0), dropping the oldest past [`CHANGES_KEPT_MAX`].
    fn remember_change(&self, change: u64, answer: Answer) {
        if change == 0 {
            return;
        }
        let mut changes = self.changes.borrow_mut();
        changes.push_back((change, answer));
        while changes.len() > CHANGES_KEPT_MAX {
            changes.pop_front();
        }
    }

    /// The answer of the change with the client's `change` id, when this
    /// node applied it (`None` for 0 or a change it does not know).
    pub fn answered_change(&self, change: u64) -> Option<Answer> {
        if change == 0 {
            return None;
        }
        self.changes
            .borrow()
            .iter()
            .rev()
            .find(|(id, _)| *id == change)
            .map(|(_, answer)| answer.clone())
    }
}

/// Whether the entry `bytes` (a batch of events) holds a `State`.
fn holds_state(bytes: &[u8]) -> bool {
    match Batches::new(bytes).next() {
        Some(Ok(batch)) => batch
            .records()
            .next()
            .is_some_and(|(_, record)| Command::is_state(record)),
        _ => false,
    }
}

/// The error for a committed entry that cannot be applied (logged).
fn refused(index: u64, why: String) -> Error {
    tracing::error!(index, "metadata entry {index} not applied: {why}");
    Error::Internal(format!("metadata entry {index}: {why}"))
}

impl<S: Storage, C: Clock, M: MetaState> ReplicaDuty for Meta<S, C, M> {
    fn name(&self) -> String {
        META_GROUP.into()
    }

    fn moved(&self) {
        self.applied_notify.notify_all();
    }

    async fn lead(&self, _term: u64) -> Result<(), String> {
        Ok(())
    }

    async fn after_turn(&self) -> Result<(), String> {
        self.apply_committed().await?;
        self.propose_state();
        Ok(())
    }
}

impl<S: Storage, C: Clock, M: MetaState> Meta<S, C, M> {
    /// The largest entry, `State` included, the metadata log takes.
    pub fn entry_bytes_max(&self) -> usize {
        self.log.config().batch_bytes_max
    }

    /// Turns the group until it stops.
    pub async fn drive(self: Rc<Self>) {
        let clock = self.clock.clone();
        super::partition::replica::drive(self.replica.clone(), &clock, &*self).await;
        self.applied_notify.notify_all();
    }
}
