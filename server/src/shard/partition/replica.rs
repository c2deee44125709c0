//! A replicated partition's Raft group on this node (docs/replication.md
//! sections 3 to 5): the events log IS the Raft log, through
//! [`EngineLogStore`]; [`ReplicatedLog`] runs raft-rs; the loop in
//! [`Partition::drive_replication`] turns it.
//!
//! ```text
//!  publish (leader) --claim keys--> encode batch --propose_batch--> wake
//!  peer frame --step--> inbox --------------------------------------> wake
//!  drive loop:  step inbox, tick, turn (ONE MsgPropose; Ready cycle)
//!               persist (the log's group commit: fdatasync) -> on_persisted
//!               catch-up reads for followers behind the cache -> raft
//!               apply committed batches: high watermark up, readers woken
//!               newly leader: rebuild the dedup window from the log, then
//!               take publishes (NotLeader until then)
//!  publish answered at commit (a majority has the batch durable)
//! ```
//!
//! - **Reads** (fetch) are served by the leader only, and never past the
//!   **high watermark**: the end of the last committed data batch. A
//!   follower answers `NotLeader` naming the leader it knows.
//! - **The dedup window** is rebuilt from the log by a new leader before
//!   it takes a publish: its log holds every batch of the old leader that
//!   may have been acknowledged, so a client's retry with the same ids is
//!   found. A retry that finds its events at offsets not yet committed
//!   waits for the commit before it is answered.
//! - A Raft group that stops (its log refused a write, an entry did not
//!   apply) answers every proposal waiting and every later request
//!   `ReplicaOffline` naming another voter (a `NotLeader` a client
//!   follows), reports no leader here, and the rest of the node goes on.
//!   A full disk does not stop it: the persist is retried
//!   (`replica_disk_full.rs`).

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use hadron_engine::Log;
use hadron_engine::log::batch::{self, BatchKind, BatchStamp};
use hadron_engine::notify::Notify;
use hadron_engine::storage::Storage;
use raft::eraftpb::{ConfState, Message};

use crate::replication::{
    EngineLogStore, GroupNet, GroupSettings, LogStore, Proposal, ProposeError, ReplicatedLog,
    read_fetches,
};
use crate::shard::clock::Clock;
use crate::shard::error::{Error, LeaderAt};

/// Peer messages waiting for the next turn, at most; beyond, they are
/// dropped (Raft resends what matters).
pub const INBOX_MESSAGES_MAX: usize = 4_096;

/// Told a partition's leader and its term (`None`: not known) when they
/// change.
pub type OnLeader = Rc<dyn Fn(Option<(u64, u64)>)>;
/// Where a node's shard takes clients, by node id and term.
pub type LeaderAtFn = Rc<dyn Fn(u64, u64) -> Option<LeaderAt>>;

/// How a replicated partition is set up on this node.
#[derive(Clone)]
pub struct ReplicaSpec {
    /// Driving settings (node id, group id, ticks).
    pub group: GroupSettings,
    /// The replicas' node ids, from placement (the first voters).
    pub voters: Vec<u64>,
    /// Where its messages go.
    pub net: GroupNet,
    /// The leader's address as a client reaches it, by node id and term.
    pub leader_at: LeaderAtFn,
    /// Told the leader and term whenever they change (Metadata).
    pub on_leader: OnLeader,
}

impl std::fmt::Debug for ReplicaSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaSpec")
            .field("group", &self.group)
            .field("voters", &self.voters)
            .finish_non_exhaustive()
    }
}

/// One partition's Raft group on this node.
pub struct Replica<S: Storage, C: Clock> {
    pub(super) group: RefCell<ReplicatedLog<EngineLogStore<S>, GroupNet, C>>,
    pub(super) store: EngineLogStore<S>,
    inbox: RefCell<Vec<Message>>,
    /// Signalled when there is something for the loop to do.
    pub wake: Notify,
    /// The end of the last committed data batch.
    high_watermark: Cell<u64>,
    /// The term this node leads in with its dedup window rebuilt.
    ready_term: Cell<u64>,
    stopped: RefCell<Option<String>>,
    /// The replica placement prefers as leader (the first voter): leaders
    /// go back to it once it is caught up, so that they stay spread over
    /// the nodes as placement spread them.
    preferred: Cell<u64>,
    /// The wanted voters and the reconciler's state (`replica_move.rs`).
    pub(super) moves: RefCell<super::replica_move::Moves>,
    /// When leadership was last offered to `preferred`.
    offered_at: Cell<Option<std::time::Duration>>,
    leader_at: LeaderAtFn,
    on_leader: OnLeader,
    reported: Cell<Option<(u64, u64)>>,
    /// Refusals answered since the group stopped (they name the other
    /// voters in turn).
    hints: Cell<u64>,
    /// Messages dropped because the inbox was full.
    dropped: Cell<u64>,
    /// While refilling a damaged log: the storage of its marker and the
    /// term T a committed entry must pass to end the recovery
    /// (`replica_repair.rs`); a leader of term T or older cannot end it
    /// (and may hold a stale view of the replica).
    recovery: RefCell<Option<(S, u64)>>,
    /// When a recovering replica last asked such a leader to move.
    asked_at: Cell<Option<std::time::Duration>>,
    /// Told the data of each committed batch of events (a pipeline's
    /// follower finds its checkpoints there).
    on_applied: RefCell<Option<OnApplied>>,
    /// Keeps a leader's lease renewed ([`Replica::has_lease`]).
    wants_lease: Cell<bool>,
    /// Set when its loop ended.
    ended: Cell<bool>,
    ended_notify: Notify,
    /// A persist found the disk full (`replica_disk_full.rs`).
    pub(super) disk_full: RefCell<super::replica_disk_full::DiskFull>,
}

/// Told each committed batch of events, as its bytes.
pub type OnApplied = Box<dyn Fn(&[u8])>;

/// What a replica's status reports: the leader it knows, the term, its
/// Raft log's commit, applied and last indexes, the high watermark, the
/// voters, and why it stopped, if it did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReplicaStatus {
    pub leader: Option<u64>,
    pub is_leader: bool,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    pub last_index: u64,
    pub high_watermark: u64,
    pub voters: Vec<u64>,
    /// Members that receive the log without voting (the metadata group's
    /// nodes past `metaVoters`; a replica being added, until promoted).
    pub learners: Vec<u64>,
    pub preferred: u64,
    /// Refilling a damaged log: abstains from elections meanwhile.
    pub recovering: bool,
    /// Peer messages dropped because its inbox was full
    /// ([`INBOX_MESSAGES_MAX`]) since the replica opened.
    pub inbox_dropped: u64,
    /// Removed from the group (`replica_move.rs`): its loop stopped.
    pub removed: bool,
    pub stopped: Option<String>,
    /// Its log found the disk full and waits for space, retrying.
    pub disk_full: Option<String>,
}

/// The offset after the batch at Raft `index` of `log` (its first offset
/// when `index` is below the log).
async fn offset_after<S: Storage>(log: &Log<S>, index: u64) -> Result<u64, String> {
    if index < log.first_index() || index == 0 {
        return Ok(log.stats().start_offset);
    }
    let got = log
        .entries(index, index + 1, 0)
        .await
        .map_err(|e| format!("reading the batch at Raft index {index}: {e}"))?;
    let b = got
        .first()
        .ok_or_else(|| format!("no batch at Raft index {index}"))?;
    let header = batch::parse_header(&b.bytes).map_err(|e| e.to_string())?;
    Ok(header.next_offset())
}

impl<S: Storage, C: Clock> Replica<S, C> {
    /// Starts the group on `log` (written with durability `Always`). A
    /// fresh log starts as a member of `spec.voters` (every replica of a
    /// new partition does the same, docs/replication.md section 3).
    pub async fn open(
        log: Rc<Log<S>>,
        spec: ReplicaSpec,
        clock: C,
        recovery: Option<(S, u64)>,
    ) -> Result<Self, String> {
        let mut store = EngineLogStore::open(log.clone())
            .await
            .map_err(|e| e.to_string())?;
        let fresh = log.last_index() == 0 && log.raft_meta().voters.is_empty();
        if fresh {
            let cs = ConfState {
                voters: spec.voters.clone(),
                ..ConfState::default()
            };
            store.set_conf_state(&cs);
            store.persist().await.map_err(|e| e.to_string())?;
        }
        let commit = store.hard_state().commit;
        log.retain_from_index(commit + 1);
        let high_watermark = offset_after(&log, commit).await?;
        let preferred = spec.voters.first().copied().unwrap_or(0);
        // An added replica: no voters, an empty log (`replica_move.rs`).
        let joining = fresh && spec.voters.is_empty();
        let mut group = ReplicatedLog::new(spec.group, store.clone(), spec.net, clock)
            .map_err(|e| e.to_string())?;
        group.set_abstaining(recovery.is_some() || joining);
        Ok(Replica {
            group: RefCell::new(group),
            store,
            inbox: RefCell::new(Vec::new()),
            wake: Notify::default(),
            high_watermark: Cell::new(high_watermark),
            ready_term: Cell::new(0),
            stopped: RefCell::new(None),
            preferred: Cell::new(preferred),
            moves: RefCell::new(super::replica_move::Moves::new(joining)),
            offered_at: Cell::new(None),
            leader_at: spec.leader_at,
            on_leader: spec.on_leader,
            reported: Cell::new(None),
            hints: Cell::new(0),
            dropped: Cell::new(0),
            recovery: RefCell::new(recovery),
            asked_at: Cell::new(None),
            on_applied: RefCell::new(None),
            wants_lease: Cell::new(false),
            ended: Cell::new(false),
            ended_notify: Notify::default(),
            disk_full: RefCell::default(),
        })
    }

    /// Takes a message from a peer for the next turn.
    pub fn step(&self, msg: Message) {
        self.note_message(&msg);
        let mut inbox = self.inbox.borrow_mut();
        if inbox.len() >= INBOX_MESSAGES_MAX {
            self.dropped.set(self.dropped.get() + 1);
            return;
        }
        inbox.push(msg);
        drop(inbox);
        self.wake.notify_all();
    }

    /// Proposes a batch of events (encoded at any place; stamped when
    /// stepped). Answered at commit.
    pub fn propose_batch(&self, bytes: Vec<u8>) -> Proposal {
        let proposal = self.group.borrow_mut().propose_batch(bytes);
        self.wake.notify_all();
        proposal
    }

    /// Snapshots this replica installed since it opened (its log restarted
    /// after the leader's retention point). The simulation counts them.
    #[cfg(test)]
    pub fn snapshots_installed(&self) -> u64 {
        self.store.snapshots_installed()
    }

    /// The end of the last committed data batch: readers stop there.
    pub fn high_watermark(&self) -> u64 {
        self.high_watermark.get()
    }

    /// Whether this node leads and takes publishes (its dedup window is
    /// rebuilt for its term).
    pub fn serving(&self) -> bool {
        let group = self.group.borrow();
        group.is_leader() && self.ready_term.get() == group.term()
    }

    /// Whether this node leads its current term (whatever its dedup
    /// window's state).
    pub fn is_leader(&self) -> bool {
        self.group.borrow().is_leader()
    }

    /// Whether this node leads and has committed an entry of its term
    /// (so it knows every entry committed before).
    pub fn leads_committed_term(&self) -> bool {
        let group = self.group.borrow();
        group.is_leader() && group.commit_in_term()
    }

    /// The leader this node knows of, and its term.
    pub fn leader(&self) -> Option<(u64, u64)> {
        let group = self.group.borrow();
        group.leader().map(|id| (id, group.term()))
    }

    /// The error for a request this node cannot serve as leader, or
    /// `None` when it can.
    pub fn refusal(&self, stream: &str, partition: u32) -> Option<Error> {
        if let Some(why) = self.stopped.borrow().clone() {
            return Some(self.stopped_error(stream, partition, why));
        }
        if self.serving() {
            return None;
        }
        let leader = self
            .leader()
            .filter(|_| !self.is_leader())
            .and_then(|(id, term)| (self.leader_at)(id, term));
        Some(Error::NotLeader {
            stream: stream.to_owned(),
            partition,
            leader,
        })
    }

    /// The error a failed proposal answers.
    pub fn proposal_error(&self, stream: &str, partition: u32, e: ProposeError) -> Error {
        let (stream, partition_) = (stream.to_owned(), partition);
        match e {
            ProposeError::NotLeader { leader } => Error::NotLeader {
                stream,
                partition: partition_,
                leader: leader.and_then(|id| (self.leader_at)(id, self.group.borrow().term())),
            },
            ProposeError::Busy => Error::ReplicationBusy {
                stream,
                partition: partition_,
            },
            ProposeError::Stopped(why) => self.stopped_error(&stream, partition_, why),
        }
    }

    pub fn status(&self) -> ReplicaStatus {
        let group = self.group.borrow();
        ReplicaStatus {
            leader: group.leader(),
            is_leader: group.is_leader(),
            term: group.term(),
            commit: group.commit(),
            applied: group.applied(),
            last_index: group.last_index(),
            high_watermark: self.high_watermark.get(),
            voters: group.conf_state().voters,
            learners: group.conf_state().learners,
            preferred: self.preferred.get(),
            recovering: self.recovering(),
            inbox_dropped: self.dropped.get(),
            removed: self.removed(),
            stopped: self.stopped.borrow().clone(),
            disk_full: self.disk_full(),
        }
    }

    /// One turn: steps the inbox, ticks, runs the Ready cycle, makes its
    /// writes durable and reports them (repeating while that produced
    /// more). What committed is applied after every step that may commit,
    /// before the next await: a publish answered at commit must find the
    /// high watermark past its events when it next reads. Returns whether
    /// the high watermark moved.
    async fn turn(&self, clock: &C) -> Result<bool, String> {
        {
            let mut group = self.group.borrow_mut();
            for m in std::mem::take(&mut *self.inbox.borrow_mut()) {
                group.step(m);
            }
            group.tick_due();
            if self.wants_lease.get() {
                group.renew_lease();
            }
            group.turn().map_err(|e| e.to_string())?;
        }
        let mut moved = self.apply_committed()?;
        loop {
            loop {
                // Bound first: a borrow in a `while let` scrutinee would
                // live through the body.
                let due = self.group.borrow().persist_number();
                let Some(number) = due else { break };
                if !self.persist_unless_full(clock).await? {
                    break; // the disk is full: retried after a backoff
                }
                self.group
                    .borrow_mut()
                    .on_persisted(number)
                    .map_err(|e| e.to_string())?;
                moved |= self.apply_committed()?;
            }
            // Entries for followers behind the in-memory cache: read from
            // the log, then handed to raft, which sends them.
            let fetches = self.store.take_fetches();
            if fetches.is_empty() {
                return Ok(moved);
            }
            for context in read_fetches(&self.store, fetches).await {
                self.group
                    .borrow_mut()
                    .entries_fetched(context)
                    .map_err(|e| e.to_string())?;
                moved |= self.apply_committed()?;
            }
        }
    }

    /// Moves the high watermark past the data batches committed since the
    /// last call. Returns whether it moved.
    fn apply_committed(&self) -> Result<bool, String> {
        let applied = self.group.borrow_mut().take_applied();
        let mut moved = false;
        for e in applied {
            let header = batch::parse_header(&e.data)
                .map_err(|err| format!("committed entry {}: {err}", e.index))?;
            if header.kind == BatchKind::Events
                && let Some(f) = &*self.on_applied.borrow()
            {
                f(&e.data);
            }
            if header.kind == BatchKind::Events && header.next_offset() > self.high_watermark.get()
            {
                self.high_watermark.set(header.next_offset());
                moved = true;
            }
        }
        // A snapshot applied (its index, once the log restarted after it):
        // everything below the log's start is committed.
        let log = self.store.log();
        let applied = self.group.borrow().applied();
        // Retention deletes committed entries only.
        log.retain_from_index(applied + 1);
        let start = log.stats().start_offset;
        if applied + 1 >= log.first_index() && start > self.high_watermark.get() {
            self.high_watermark.set(start);
            moved = true;
        }
        Ok(moved)
    }

    /// When the loop must turn again by itself (the next tick).
    fn next_tick_in(&self, clock: &C) -> std::time::Duration {
        let tick = self
            .group
            .borrow()
            .next_tick_at()
            .saturating_sub(clock.now());
        let retry = self.disk_full.borrow().wait(clock.now());
        retry.map_or(tick, |retry| tick.min(retry))
    }

    /// On a leader that is not the preferred replica: offers leadership to
    /// the preferred one once it is caught up, at most once per
    /// [`PREFERRED_OFFER_EVERY`] (a transfer that did not happen is
    /// retried then).
    fn offer_to_preferred(&self, clock: &C) {
        let now = clock.now();
        let due = self
            .offered_at
            .get()
            .is_none_or(|at| now >= at + PREFERRED_OFFER_EVERY);
        if !due || !self.is_leader() {
            return;
        }
        if self
            .group
            .borrow_mut()
            .transfer_to_if_caught_up(self.preferred.get())
        {
            self.offered_at.set(Some(now));
            self.wake.notify_all();
        }
    }

    /// Ends a recovery once the log holds a committed entry of a term
    /// above T: the marker goes, and the replica votes again.
    async fn end_recovery(&self) -> Result<(), String> {
        let done = match &*self.recovery.borrow() {
            Some((_, past)) => super::replica_repair::recovery_done(
                &self.store.log(),
                self.group.borrow().commit(),
                *past,
            ),
            None => false,
        };
        if !done {
            return Ok(());
        }
        let taken = self.recovery.borrow_mut().take();
        if let Some((storage, target)) = taken {
            super::replica_repair::recovered(&storage, &self.store.log()).await?;
            self.group.borrow_mut().set_abstaining(false);
            tracing::info!(
                log = %self.store.log().dir().display(),
                "recovered: a committed entry of a term above {target} is in the log; voting again"
            );
        }
        Ok(())
    }

    /// While recovering under a leader of a term at most T (which cannot
    /// end the recovery): asks it to move (at most every
    /// [`PREFERRED_OFFER_EVERY`]).
    fn unstick_recovery(&self, clock: &C) {
        let Some(past) = self.recovery.borrow().as_ref().map(|(_, t)| *t) else {
            return;
        };
        let now = clock.now();
        if self
            .asked_at
            .get()
            .is_some_and(|at| now < at + PREFERRED_OFFER_EVERY)
        {
            return;
        }
        if self.group.borrow_mut().ask_stale_leader_to_move(past) {
            self.asked_at.set(Some(now));
            self.wake.notify_all();
        }
    }

    /// Whether the replica is refilling a damaged log (and abstains).
    pub fn recovering(&self) -> bool {
        self.recovery.borrow().is_some()
    }

    /// Tells `on_leader` when the leader or term changed.
    fn report_leader(&self) {
        let now = self.leader();
        if self.reported.get() != now {
            self.reported.set(now);
            (self.on_leader)(now);
        }
    }

    fn has_work(&self) -> bool {
        !self.inbox.borrow().is_empty()
    }

    /// Stops the group on this node: every proposal waiting is answered
    /// (the group's `halt`), and this node reports no leader, so that its
    /// metadata sends clients elsewhere.
    pub(super) fn stop(&self, why: String) {
        self.group.borrow_mut().halt(why.clone());
        *self.stopped.borrow_mut() = Some(why);
        if self.reported.get().is_some() {
            self.reported.set(None);
            (self.on_leader)(None);
        }
    }

    /// The refusal of a request once the group stopped here: this replica
    /// is out of service, so the client is sent to another voter (another
    /// at each refusal; whichever leads answers, the others name it).
    fn stopped_error(&self, stream: &str, partition: u32, why: String) -> Error {
        let me = self.group.borrow().node_id();
        let others: Vec<u64> = self
            .conf_state()
            .voters
            .into_iter()
            .filter(|&id| id != me)
            .collect();
        let turn = self.hints.get();
        self.hints.set(turn.wrapping_add(1));
        let leader = others
            .get((turn % others.len().max(1) as u64) as usize)
            .and_then(|&id| (self.leader_at)(id, 0));
        Error::ReplicaOffline {
            stream: stream.to_owned(),
            partition,
            why: format!("its replication stopped: {why}"),
            leader,
        }
    }

    /// Keeps this replica's lease renewed while it leads: a pipeline
    /// run hands out stages only under it.
    pub fn want_lease(&self) {
        self.wants_lease.set(true);
        self.wake.notify_all();
    }

    /// Whether this node leads under a lease (`ReplicatedLog::has_lease`):
    /// no other node can have been elected meanwhile.
    pub fn has_lease(&self) -> bool {
        self.group.borrow().has_lease()
    }

    /// Makes `node` the replica leadership goes back to (a sibling group
    /// following its partition's leader).
    pub fn set_preferred(&self, node: u64) {
        self.preferred.set(node);
    }

    /// Tells `f` the bytes of each batch of events committed from now on.
    pub fn set_on_applied(&self, f: OnApplied) {
        *self.on_applied.borrow_mut() = Some(f);
    }

    /// Stops the group on this node (its loop ends at its next wake-up):
    /// the simulation's crash, so nothing waiting is answered (a crashed
    /// node's clients hear nothing; they time out).
    #[cfg(test)]
    pub fn halt(&self) {
        *self.stopped.borrow_mut() = Some("halted".into());
        self.wake.notify_all();
    }

    /// Records that this node now serves its term as leader.
    fn set_ready(&self, term: u64) {
        self.ready_term.set(term);
    }

    fn needs_dedup_rebuild(&self) -> Option<u64> {
        let group = self.group.borrow();
        (group.is_leader() && self.ready_term.get() != group.term()).then(|| group.term())
    }

    /// Drops applied entries from memory, keeping a few for followers a
    /// little behind (further back, catch-up reads serve them).
    fn release_applied(&self) {
        let applied = self.group.borrow().applied();
        self.store
            .release_applied(applied, RELEASE_LAG_ENTRIES, RELEASE_KEEP_BYTES_MAX);
    }
}

/// How often a leader that is not the preferred replica offers it
/// leadership back, at most.
const PREFERRED_OFFER_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Applied entries kept in memory for followers a little behind, at most
/// this many ...
const RELEASE_LAG_ENTRIES: u64 = 1_024;
/// ... and while the in-memory entries take at most this many bytes.
const RELEASE_KEEP_BYTES_MAX: usize = 32 << 20;

/// Encodes `records` as a batch of events stamped at `now`, to be
/// restamped with its place when proposed.
pub fn encode_batch(records: &[&[u8]], now: u64) -> Vec<u8> {
    let stamp = BatchStamp {
        kind: BatchKind::Events,
        base_offset: 0,
        first_timestamp_ms: now,
        term: 1,
        raft_index: 1,
    };
    let mut out = Vec::with_capacity(batch::encoded_len(records));
    batch::encode_into(&mut out, &stamp, records);
    out
}

/// What a replica's loop does for the state it replicates, besides
/// turning Raft: the events partition (its dedup window) and a pipeline's
/// outputs (its run) each implement it.
pub trait ReplicaDuty {
    /// Names the group in logs.
    fn name(&self) -> String;
    /// The high watermark moved: wake the readers.
    fn moved(&self);
    /// This node leads `term`: get ready to serve it (the replica serves
    /// once this returns `Ok`).
    fn lead(&self, term: u64) -> impl std::future::Future<Output = Result<(), String>>;
    /// This node served as leader and no longer leads.
    fn follow(&self) {}
    /// Work after each turn (a follower folding its log).
    fn after_turn(&self) -> impl std::future::Future<Output = Result<(), String>> {
        std::future::ready(Ok(()))
    }
    /// Whether the loop is to end (the owner was closed).
    fn closed(&self) -> bool {
        false
    }
}

/// Turns `replica` until it stops or `duty` is closed: the loop of the
/// module header.
pub async fn drive<S: Storage, C: Clock, D: ReplicaDuty>(
    replica: Rc<Replica<S, C>>,
    clock: &C,
    duty: &D,
) {
    loop {
        if replica.stopped.borrow().is_some() || duty.closed() {
            replica.ended.set(true);
            replica.ended_notify.notify_all();
            return;
        }
        let generation = replica.wake.generation();
        if let Err(why) = turn_once(&replica, clock, duty).await {
            tracing::error!(group = %duty.name(), "replication stopped: {why}");
            replica.stop(why);
            duty.moved();
            continue;
        }
        if replica.has_work() {
            continue;
        }
        let wait = replica.next_tick_in(clock);
        let woken = Box::pin(replica.wake.changed_since(generation));
        let _ = futures::future::select(woken, Box::pin(clock.sleep(wait))).await;
    }
}

/// One pass of [`drive`]'s loop.
async fn turn_once<S: Storage, C: Clock, D: ReplicaDuty>(
    replica: &Replica<S, C>,
    clock: &C,
    duty: &D,
) -> Result<(), String> {
    let leased = replica.has_lease();
    if replica.turn(clock).await? || replica.has_lease() != leased {
        duty.moved();
    }
    if let Some(term) = replica.needs_dedup_rebuild() {
        duty.lead(term)
            .await
            .map_err(|why| format!("getting ready to lead term {term}: {why}"))?;
        tracing::info!(group = %duty.name(), term, "leading");
        replica.set_ready(term);
        duty.moved();
    } else if replica.ready_term.get() != 0 && !replica.is_leader() {
        replica.set_ready(0);
        duty.follow();
        duty.moved();
    }
    replica
        .end_recovery()
        .await
        .map_err(|why| format!("ending the recovery: {why}"))?;
    duty.after_turn().await?;
    replica.unstick_recovery(clock);
    replica.offer_to_preferred(clock);
    replica.membership_turn(clock);
    replica.report_leader();
    replica.release_applied();
    Ok(())
}

impl<S: Storage, C: Clock> Replica<S, C> {
    /// Stops the group on this node and waits until its loop ended (a
    /// run replaced on an apply, whose log the next one opens).
    pub async fn close(&self) {
        self.stop("closed".into());
        self.wake.notify_all();
        loop {
            let generation = self.ended_notify.generation();
            if self.ended.get() {
                return;
            }
            self.ended_notify.changed_since(generation).await;
        }
    }
}

impl<S: Storage, C: Clock> ReplicaDuty for super::Partition<S, C> {
    fn name(&self) -> String {
        format!("stream {} partition {}", self.stream, self.partition)
    }

    fn moved(&self) {
        self.appended.notify_all();
    }

    async fn lead(&self, _term: u64) -> Result<(), String> {
        self.rebuild_dedup().await?;
        self.restart_groups(true).await
    }

    fn follow(&self) {
        self.restart_groups_here();
    }
}

impl<S: Storage, C: Clock> super::Partition<S, C> {
    /// Turns the partition's Raft group until it stops. The shard spawns
    /// it for a replicated partition.
    pub async fn drive_replication(self: Rc<Self>) {
        let Some(replica) = self.replica.clone() else {
            return;
        };
        drive(replica, &self.clock().clone(), &*self).await;
    }
}
