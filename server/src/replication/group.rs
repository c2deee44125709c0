//! [`ReplicatedLog`]: one Raft group's `RawNode` and its store, stepped by
//! the caller's loop as docs/replication.md section 3 says:
//!
//! ```text
//!  per turn:  step(peer messages) ... tick_due() ... propose(payload)*
//!             turn():  1 ONE MsgPropose with every payload queued this turn
//!                      2 while has_ready(): handle the Ready
//!                          - leader: send its messages now
//!                          - snapshot: install (its index applied once durable)
//!                          - entries: append to the store (readable at once)
//!                          - hard state: record it (durable with the round)
//!                          - committed entries: apply, answer proposals
//!                          - advance_append_async; hold persisted_messages
//!  per round: persist_number() -> the caller's fdatasync -> on_persisted(n):
//!             on_persist_ready(n), send the held messages, run Readies again
//! ```
//!
//! **Invariants kept here:**
//! - A proposal is answered `Ok(index)` only when its entry is committed
//!   at that index with the term it was proposed in: a majority has it
//!   durable (raft-rs counts the leader's own append only after
//!   `on_persist_ready`). A proposal whose index came back committed with
//!   another term, or that was pending when leadership moved, is answered
//!   `NotLeader` (it may or may not commit later; section 5).
//! - Messages a Ready marks as needing persistence (a follower's append
//!   responses, votes) leave only after the round that covers that Ready
//!   is durable.
//! - A snapshot's index is reported applied only after it is durable
//!   (section 1, finding 4).
//! - After a [`GroupError`] the group stops: every waiting proposal is
//!   answered `Stopped`, and nothing more is stepped.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use futures::channel::oneshot;
use protobuf::Message as _;
use raft::eraftpb::{ConfChangeV2, Entry, EntryType, Message, MessageType};
use raft::{Config, RawNode, SnapshotStatus, StateRole};

use super::slog_drain;
use super::{
    CONF_CHANGE_BYTES_MAX, GroupError, GroupSettings, HEARTBEAT_TICKS, INFLIGHT_MESSAGES_MAX,
    LogStore, MESSAGE_BYTES_MAX, PROPOSALS_QUEUED_MAX, PeerNet, ProposeError, READIES_PER_TURN_MAX,
    UNCOMMITTED_BYTES_MAX,
};
use crate::shard::clock::Clock;

mod membership;
pub use membership::lists;

/// Where a proposal was committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// Its Raft index.
    pub index: u64,
    /// The first offset of its records, for a batch proposed with
    /// [`ReplicatedLog::propose_batch`] (0 for other payloads).
    pub base_offset: u64,
}

/// The answer to a proposal: where it was committed, or why not.
pub type Proposal = oneshot::Receiver<Result<Committed, ProposeError>>;
type Reply = oneshot::Sender<Result<Committed, ProposeError>>;

/// What a proposal carries.
#[derive(Debug)]
enum Payload {
    /// Entry data, as given.
    Raw(Bytes),
    /// A version-2 record batch, stamped with its base offset, term and
    /// index when it is stepped (section 3: "proposal index is known in
    /// advance").
    Batch(Vec<u8>),
}

/// The first tick of a group started at `now`: the next multiple of
/// `interval` of the clock's time (at least half an interval away), so
/// that every group of a shard ticks at the same instants. The executor
/// then wakes once per interval for all of them, instead of once per
/// group: with 512 groups on a node, their own phases cost about a third
/// of a core idle (docs/benchmarks.md, "Idle groups").
fn tick_grid(now: Duration, interval: Duration) -> Duration {
    let step = interval.as_nanos().max(1);
    let at = now.as_nanos() + step / 2;
    let aligned = at.div_ceil(step) * step;
    Duration::from_nanos(u64::try_from(aligned).unwrap_or(u64::MAX))
}

/// Ticks one [`ReplicatedLog::tick_due`] runs at most: after a longer
/// stall (a paused node) the missed ticks are skipped, not replayed.
const TICKS_CAUGHT_UP_MAX: u64 = 4 * super::ELECTION_TICKS as u64;

/// A proposal in the log, waiting for its commit.
#[derive(Debug)]
struct Pending {
    term: u64,
    base_offset: u64,
    reply: Reply,
}

/// One Raft group's replicated log on this node.
pub struct ReplicatedLog<S: LogStore, N: PeerNet, C: Clock> {
    settings: GroupSettings,
    raw: RawNode<S>,
    net: N,
    clock: C,
    /// When the next tick is due (the clock's monotonic time).
    next_tick: Duration,
    /// Proposals for this turn's `MsgPropose`.
    queued: Vec<(Payload, Reply)>,
    /// Proposals in the log, by index.
    pending: BTreeMap<u64, Pending>,
    /// Readies handled but not yet durable: (number, messages to send once
    /// it is).
    held: VecDeque<(u64, Vec<Message>)>,
    /// The number of the last Ready handled.
    last_ready: u64,
    /// A snapshot installed by Ready `.0`, at index `.1`, not yet durable.
    snapshot_pending: Option<(u64, u64)>,
    applied: u64,
    /// Data entries applied since [`ReplicatedLog::take_applied`].
    applied_out: Vec<Entry>,
    /// The term this node leads in, as of the last turn.
    leading: Option<u64>,
    stopped: Option<GroupError>,
    /// Grants no vote and never campaigns (a replica refilling a damaged
    /// log: `shard/partition/replica_repair.rs`).
    abstaining: bool,
    /// Grants no vote before this time (the clock's): a replica that
    /// restarts may have acknowledged a leader's heartbeat just before,
    /// and that leader's lease counts on it (see [`ReplicatedLog::has_lease`]).
    quiet_until: Duration,
    /// This node's lease as leader: until then no other node can have
    /// been elected.
    lease_until: Option<Duration>,
    /// When the lease's pending renewal (a read-index round) was sent.
    lease_asked: Option<Duration>,
    /// Conf-change entries in the log above the applied index: the hard
    /// state recorded holds its commit below the first of them, so that a
    /// restart (which counts everything up to the recorded commit as
    /// applied) applies them again (section 9, `membership.rs`).
    conf_unapplied: std::collections::BTreeSet<u64>,
    /// Removal notices heard, this replica's probes for them, and whether
    /// its conf state is in step with its log (`membership.rs`).
    membership: membership::MemberWatch,
}

/// How much shorter a lease is than the election timeout it rests on:
/// room for the clocks of two nodes running at slightly different rates
/// and for a tick taken late.
const LEASE_MARGIN_TICKS: u32 = 2;

impl<S: LogStore, N: PeerNet, C: Clock> std::fmt::Debug for ReplicatedLog<S, N, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicatedLog")
            .field("node", &self.settings.node_id)
            .field("group", &self.settings.group_id)
            .field("term", &self.raw.raft.term)
            .field("role", &self.raw.raft.state)
            .field("commit", &self.raw.raft.raft_log.committed)
            .field("applied", &self.applied)
            .finish_non_exhaustive()
    }
}

impl<S: LogStore, N: PeerNet, C: Clock> ReplicatedLog<S, N, C> {
    /// Starts the group on `store` (a restart reads its hard state and
    /// conf state back; entries up to the durable commit count as applied:
    /// the caller rebuilt its state from them, section 5).
    pub fn new(settings: GroupSettings, store: S, net: N, clock: C) -> Result<Self, GroupError> {
        let hs = store.hard_state();
        let first = store
            .first_index()
            .map_err(|e| GroupError::Raft(e.to_string()))?;
        let applied = hs.commit.max(first - 1);
        let config = Config {
            id: settings.node_id,
            election_tick: super::ELECTION_TICKS,
            heartbeat_tick: HEARTBEAT_TICKS,
            min_election_tick: settings.election_ticks.start,
            max_election_tick: settings.election_ticks.end,
            applied,
            max_size_per_msg: MESSAGE_BYTES_MAX,
            max_inflight_msgs: INFLIGHT_MESSAGES_MAX,
            max_uncommitted_size: UNCOMMITTED_BYTES_MAX,
            pre_vote: true,
            check_quorum: true,
            ..Config::default()
        };
        config
            .validate()
            .map_err(|e| GroupError::Raft(e.to_string()))?;
        let logger = slog_drain::logger(settings.node_id, settings.group_id);
        let raw =
            RawNode::new(&config, store, &logger).map_err(|e| GroupError::Raft(e.to_string()))?;
        let next_tick = tick_grid(clock.now(), settings.tick_interval);
        let quiet_until = clock.now() + settings.tick_interval * super::ELECTION_TICKS as u32;
        Ok(Self {
            settings,
            raw,
            net,
            clock,
            next_tick,
            queued: Vec::new(),
            pending: BTreeMap::new(),
            held: VecDeque::new(),
            last_ready: 0,
            snapshot_pending: None,
            applied,
            applied_out: Vec::new(),
            leading: None,
            stopped: None,
            abstaining: false,
            quiet_until,
            lease_until: None,
            lease_asked: None,
            conf_unapplied: std::collections::BTreeSet::new(),
            membership: membership::MemberWatch::default(),
        }
        .with_conf_unapplied())
    }

    /// Queues `payload` for this turn's `MsgPropose`. Answered at commit.
    pub fn propose(&mut self, payload: Bytes) -> Proposal {
        self.queue(Payload::Raw(payload))
    }

    /// Queues a version-2 record batch of events (as `batch::encode_into`
    /// wrote it, stamped anything) for this turn's `MsgPropose`; it is
    /// stamped with the base offset, term and index it takes in the log
    /// when stepped, so that its bytes are final before any replica sees
    /// them. Answered at commit, with its base offset.
    pub fn propose_batch(&mut self, batch: Vec<u8>) -> Proposal {
        self.queue(Payload::Batch(batch))
    }

    fn queue(&mut self, payload: Payload) -> Proposal {
        let (reply, proposal) = oneshot::channel();
        if let Some(e) = &self.stopped {
            let _ = reply.send(Err(ProposeError::Stopped(e.to_string())));
        } else if !self.is_leader() {
            let _ = reply.send(Err(self.not_leader()));
        } else if self.queued.len() >= PROPOSALS_QUEUED_MAX {
            let _ = reply.send(Err(ProposeError::Busy));
        } else {
            self.queued.push((payload, reply));
        }
        proposal
    }

    /// Proposes a membership change, answered at commit like a payload.
    /// raft-rs turns a refused change into an empty entry, so the caller
    /// checks the applied conf state, not this answer (section 9).
    pub fn propose_conf_change(&mut self, change: ConfChangeV2) -> Proposal {
        let (reply, proposal) = oneshot::channel();
        if !self.is_leader() || self.stopped.is_some() {
            let _ = reply.send(Err(self.not_leader()));
            return proposal;
        }
        let (before, term) = (self.raw.raft.raft_log.last_index(), self.raw.raft.term);
        match self.raw.propose_conf_change(Vec::new(), change) {
            Ok(()) if self.raw.raft.raft_log.last_index() == before + 1 => {
                let pending = Pending {
                    term,
                    base_offset: 0,
                    reply,
                };
                self.pending.insert(before + 1, pending);
            }
            _ => {
                let _ = reply.send(Err(ProposeError::Busy));
            }
        }
        proposal
    }

    /// Steps a message from a peer. Messages for another node, local-only
    /// kinds and proposals (never forwarded between nodes: section 7) are
    /// ignored, as are those raft-rs refuses (stale, unknown peer).
    pub fn step(&mut self, msg: Message) {
        if self.stopped.is_some()
            || msg.to != self.settings.node_id
            || msg.get_msg_type() == MessageType::MsgPropose
        {
            return;
        }
        if self.removal_noticed(&msg) {
            return;
        }
        if (self.abstaining || self.clock.now() < self.quiet_until)
            && matches!(
                msg.get_msg_type(),
                MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
            )
        {
            // No answer: the candidate counts this node as absent.
            return;
        }
        let mut msg = msg;
        if self.abstaining && msg.get_msg_type() == MessageType::MsgHeartbeat {
            // A leader whose view of this replica predates the loss of its
            // tail may name a commit past its log, which raft-rs treats as
            // a broken log: hold it to what the log has.
            msg.commit = msg.commit.min(self.raw.raft.raft_log.last_index());
        }
        if let Err(e) = self.raw.step(msg) {
            tracing::debug!(target: "raft", node = self.settings.node_id, "message refused: {e}");
        }
    }

    /// Ticks the group once for every tick interval that passed on the
    /// clock; returns how many.
    pub fn tick_due(&mut self) -> u64 {
        let now = self.clock.now();
        let mut ticks = 0;
        while self.next_tick <= now {
            // An abstaining follower never times out into a campaign.
            if ticks < TICKS_CAUGHT_UP_MAX && self.stopped.is_none() && !self.abstaining {
                self.raw.tick();
                ticks += 1;
            }
            self.next_tick += self.settings.tick_interval;
        }
        self.probe_if_silent();
        ticks
    }

    /// When the next tick is due (the clock's monotonic time).
    pub fn next_tick_at(&self) -> Duration {
        self.next_tick
    }

    /// Runs the turn: the queued proposals as one `MsgPropose`, then the
    /// Ready cycle.
    pub fn turn(&mut self) -> Result<(), GroupError> {
        if let Some(e) = &self.stopped {
            return Err(e.clone());
        }
        self.flush_proposals();
        let result = self.run_readies();
        if let Err(e) = &result {
            self.stop(e.clone());
        }
        result
    }

    /// The number to report once everything handled so far is durable,
    /// if anything is not yet.
    pub fn persist_number(&self) -> Option<u64> {
        self.held.back().map(|(number, _)| *number)
    }

    /// The round that covers Readies up to `number` is durable: tells
    /// raft, sends the messages held for them, and runs the Ready cycle
    /// (the commit may have moved).
    pub fn on_persisted(&mut self, number: u64) -> Result<(), GroupError> {
        if let Some(e) = &self.stopped {
            return Err(e.clone());
        }
        assert!(
            number <= self.last_ready,
            "persisted Ready {number} was never handled (last {})",
            self.last_ready
        );
        self.raw.on_persist_ready(number);
        while self.held.front().is_some_and(|(n, _)| *n <= number) {
            if let Some((_, messages)) = self.held.pop_front() {
                for m in messages {
                    self.net.send(m);
                }
            }
        }
        if let Some((ready, index)) = self.snapshot_pending
            && ready <= number
        {
            self.snapshot_pending = None;
            self.applied = self.applied.max(index);
            self.raw.advance_apply_to(self.applied);
        }
        self.turn()
    }

    /// Entries the store read asynchronously for a follower far behind
    /// have landed (the store's catch-up reads, section 4): raft sends the
    /// append it held back, and the Ready cycle runs.
    pub fn entries_fetched(&mut self, context: raft::GetEntriesContext) -> Result<(), GroupError> {
        if let Some(e) = &self.stopped {
            return Err(e.clone());
        }
        self.raw.on_entries_fetched(context);
        self.turn()
    }

    /// The store (its catch-up reads are taken from it).
    pub fn store(&self) -> &S {
        self.raw.store()
    }

    /// The data entries applied (committed and durable here) since the
    /// last call, in index order: what the caller's state machine applies.
    pub fn take_applied(&mut self) -> Vec<Entry> {
        std::mem::take(&mut self.applied_out)
    }

    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// The leader this node knows of.
    pub fn leader(&self) -> Option<u64> {
        Some(self.raw.raft.leader_id).filter(|&id| id != 0)
    }

    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    pub fn commit(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }

    /// Whether the commit is an entry of the current term: a leader then
    /// knows every entry committed before it was elected (the metadata
    /// group answers only then).
    pub fn commit_in_term(&self) -> bool {
        self.raw.raft.commit_to_current_term()
    }

    pub fn applied(&self) -> u64 {
        self.applied
    }

    pub fn last_index(&self) -> u64 {
        self.raw.raft.raft_log.last_index()
    }

    /// While abstaining: asks the leader, if one is known and it leads a
    /// term up to `stale_through`, to hand leadership to another voter.
    /// A leader of such a term may think this replica holds entries it
    /// lost (raft-rs then ignores its rejections and never resends them);
    /// a new leader starts from what the replica has. Returns whether it
    /// asked.
    pub fn ask_stale_leader_to_move(&mut self, stale_through: u64) -> bool {
        if !self.abstaining || self.is_leader() || self.term() > stale_through {
            return false;
        }
        let Some(leader) = self.leader() else {
            return false;
        };
        let me = self.settings.node_id;
        let other = self
            .conf_state()
            .voters
            .into_iter()
            .find(|&id| id != me && id != leader);
        match other {
            Some(to) => {
                self.raw.transfer_leader(to);
                true
            }
            None => false,
        }
    }

    /// Whether this node leads under a lease: a majority acknowledged a
    /// heartbeat it sent less than an election timeout (less a margin)
    /// ago, so no other node can have been elected since (each of them
    /// refuses votes for an election timeout after hearing from a leader,
    /// raft-rs's `check_quorum`, and for one after its own start), and no
    /// leadership transfer is under way. A leader hands out work that must
    /// not run twice (pipeline stages) only under its lease.
    pub fn has_lease(&self) -> bool {
        self.is_leader()
            && self.raw.raft.lead_transferee.is_none()
            && self
                .lease_until
                .is_some_and(|until| self.clock.now() < until)
    }

    /// On a leader: starts a lease renewal (a read-index round, its
    /// context the time it was sent) when none is under way and the lease
    /// has less than half its length left.
    pub fn renew_lease(&mut self) {
        if !self.is_leader() || self.stopped.is_some() {
            return;
        }
        let now = self.clock.now();
        let length = self.lease_length();
        let due = self
            .lease_until
            .is_none_or(|until| until < now + length / 2);
        // A round whose answer never came (a message lost) is asked again
        // after a lease's length.
        let asked = self.lease_asked.is_some_and(|at| now < at + length);
        if !due || asked {
            return;
        }
        self.lease_asked = Some(now);
        let sent = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
        self.raw.read_index(sent.to_le_bytes().to_vec());
    }

    fn lease_length(&self) -> Duration {
        let ticks = (super::ELECTION_TICKS as u32).saturating_sub(LEASE_MARGIN_TICKS);
        self.settings.tick_interval * ticks
    }

    /// A read-index round answered: the lease runs from when it was sent.
    fn on_read_states(&mut self, states: &[raft::ReadState]) {
        for rs in states {
            let Ok(sent) = <[u8; 8]>::try_from(rs.request_ctx.as_slice()) else {
                continue;
            };
            let sent = Duration::from_nanos(u64::from_le_bytes(sent));
            let until = sent + self.lease_length();
            if self.is_leader() && self.lease_until.is_none_or(|u| u < until) {
                self.lease_until = Some(until);
            }
            self.lease_asked = None;
        }
    }

    /// Makes this node grant no vote and never campaign (`true`), or a
    /// voter again (`false`).
    pub fn set_abstaining(&mut self, abstaining: bool) {
        self.abstaining = abstaining;
    }

    /// Hands leadership to `to` when this node leads, `to` is a voter
    /// other than itself, and `to` has every entry of the log (so the
    /// transfer takes one round: raft-rs sends it `MsgTimeoutNow`).
    /// Returns whether a transfer started. Proposals made while it runs
    /// are refused `NotLeader` naming `to`.
    pub fn transfer_to_if_caught_up(&mut self, to: u64) -> bool {
        if !self.is_leader() || to == self.settings.node_id || self.stopped.is_some() {
            return false;
        }
        if self.raw.raft.lead_transferee.is_some() {
            return false;
        }
        let last = self.raw.raft.raft_log.last_index();
        let caught_up = self
            .raw
            .raft
            .prs()
            .get(to)
            .is_some_and(|p| p.matched == last);
        let voter = self.raw.raft.prs().conf().voters().contains(to);
        if caught_up && voter {
            self.raw.transfer_leader(to);
            return true;
        }
        false
    }

    /// The conf state as last applied here.
    pub fn conf_state(&self) -> raft::eraftpb::ConfState {
        self.raw.raft.prs().conf().to_conf_state()
    }

    fn not_leader(&self) -> ProposeError {
        ProposeError::NotLeader {
            leader: self.leader().filter(|&id| id != self.settings.node_id),
        }
    }

    /// Steps every queued payload as one `MsgPropose`: one append per
    /// follower for all of them (section 1, finding 2).
    fn flush_proposals(&mut self) {
        if self.queued.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.queued);
        if !self.is_leader() {
            let error = self.not_leader();
            for (_, reply) in batch {
                let _ = reply.send(Err(error.clone()));
            }
            return;
        }
        let (before, term) = (self.raw.raft.raft_log.last_index(), self.raw.raft.term);
        let mut msg = Message::default();
        msg.set_msg_type(MessageType::MsgPropose);
        msg.from = self.settings.node_id;
        msg.to = self.settings.node_id;
        let mut replies = Vec::with_capacity(batch.len());
        let mut next_offset = self.raw.store().next_offset();
        for (payload, reply) in batch {
            let index = before + 1 + replies.len() as u64;
            let (data, base_offset) = match payload {
                Payload::Raw(data) => (data, 0),
                Payload::Batch(bytes) => match stamp_batch(bytes, &mut next_offset, term, index) {
                    Ok(stamped) => stamped,
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        continue;
                    }
                },
            };
            msg.entries.push(Entry {
                data,
                ..Entry::default()
            });
            replies.push((base_offset, reply));
        }
        if replies.is_empty() {
            return;
        }
        let count = replies.len() as u64;
        let stepped = self.raw.step(msg);
        if stepped.is_ok() && self.raw.raft.raft_log.last_index() == before + count {
            for (index, (base_offset, reply)) in (before + 1..).zip(replies) {
                let pending = Pending {
                    term,
                    base_offset,
                    reply,
                };
                self.pending.insert(index, pending);
            }
            return;
        }
        // Dropped: a leadership transfer or the uncommitted-bytes limit.
        let error = match self.raw.raft.lead_transferee {
            Some(to) => ProposeError::NotLeader { leader: Some(to) },
            None => ProposeError::Busy,
        };
        for (_, reply) in replies {
            let _ = reply.send(Err(error.clone()));
        }
    }

    fn run_readies(&mut self) -> Result<(), GroupError> {
        for _ in 0..READIES_PER_TURN_MAX {
            if !self.raw.has_ready() {
                break;
            }
            self.handle_ready()?;
        }
        self.check_leadership();
        Ok(())
    }

    /// One Ready, in section 3's order.
    fn handle_ready(&mut self) -> Result<(), GroupError> {
        let mut rd = self.raw.ready();
        let number = rd.number();
        // A leader's messages leave before its own write (thesis 10.2.1).
        let mut snapshots_sent = Vec::new();
        for m in rd.take_messages() {
            let (to, snapshot) = (m.to, m.get_msg_type() == MessageType::MsgSnapshot);
            let sent = self.net.send(m);
            if snapshot {
                snapshots_sent.push((to, sent));
            }
        }
        if !rd.snapshot().is_empty() {
            let index = rd.snapshot().get_metadata().index;
            self.raw.mut_store().install_snapshot(rd.snapshot());
            self.snapshot_pending = Some((number, index));
            self.conf_unapplied = self.conf_unapplied.split_off(&(index + 1));
            self.conf_from_descriptor();
        }
        self.fail_overwritten(rd.entries());
        self.note_conf_entries(rd.entries());
        self.raw
            .mut_store()
            .append(rd.entries())
            .map_err(GroupError::Store)?;
        if let Some(hs) = rd.hs() {
            let mut hs = hs.clone();
            hs.commit = self.commit_to_record(hs.commit);
            self.raw.mut_store().set_hard_state(&hs);
        }
        self.on_read_states(rd.read_states());
        let committed = rd.take_committed_entries();
        let persisted = rd.take_persisted_messages();
        self.raw.advance_append_async(rd);
        self.held.push_back((number, persisted));
        self.last_ready = number;
        self.apply(committed)?;
        self.raw.advance_apply_to(self.applied);
        self.record_commit_past_conf_changes();
        for (to, sent) in snapshots_sent {
            // A descriptor holds no data to stream: sent is finished.
            let status = if sent {
                SnapshotStatus::Finish
            } else {
                SnapshotStatus::Failure
            };
            self.raw.report_snapshot(to, status);
        }
        Ok(())
    }

    /// Entries replacing a pending proposal's index with another term mean
    /// the proposal was overwritten: it will never commit there.
    fn fail_overwritten(&mut self, entries: &[Entry]) {
        for e in entries {
            if self.pending.get(&e.index).is_some_and(|p| p.term != e.term)
                && let Some(p) = self.pending.remove(&e.index)
            {
                let _ = p.reply.send(Err(self.not_leader()));
            }
        }
    }

    /// Applies committed entries: data entries go to the caller, conf
    /// changes to raft, and proposals at their indexes are answered.
    fn apply(&mut self, committed: Vec<Entry>) -> Result<(), GroupError> {
        for e in committed {
            if e.index <= self.applied {
                continue;
            }
            match e.get_entry_type() {
                EntryType::EntryNormal => {
                    if !e.data.is_empty() {
                        self.applied_out.push(e.clone());
                    }
                }
                EntryType::EntryConfChangeV2 => self.apply_conf_change(&e)?,
                EntryType::EntryConfChange => {
                    return Err(GroupError::BadEntry {
                        index: e.index,
                        why: "a version-1 conf change (Hadron proposes only ConfChangeV2)".into(),
                    });
                }
            }
            if let Some(p) = self.pending.remove(&e.index) {
                let answer = if p.term == e.term {
                    Ok(Committed {
                        index: e.index,
                        base_offset: p.base_offset,
                    })
                } else {
                    Err(self.not_leader())
                };
                let _ = p.reply.send(answer);
            }
            self.applied = e.index;
        }
        Ok(())
    }

    fn apply_conf_change(&mut self, e: &Entry) -> Result<(), GroupError> {
        let bad = |why: String| GroupError::BadEntry {
            index: e.index,
            why,
        };
        if e.data.len() > CONF_CHANGE_BYTES_MAX {
            return Err(bad(format!(
                "a conf change of {} bytes (at most {CONF_CHANGE_BYTES_MAX})",
                e.data.len()
            )));
        }
        let mut change = ConfChangeV2::default();
        change
            .merge_from_bytes(&e.data)
            .map_err(|err| bad(format!("conf change does not decode: {err}")))?;
        self.conf_unapplied.remove(&e.index);
        if !self.conf_before(&change).map_err(bad)? {
            // A leave of a joint config this replica already left.
            return Ok(());
        }
        let cs = self
            .raw
            .apply_conf_change(&change)
            .map_err(|err| bad(format!("conf change refused: {err}")))?;
        self.raw.mut_store().set_conf_state(&cs);
        // raft-rs may not leave a joint config by itself if its leader
        // stepped down first (section 9): the leader proposes the leave.
        // One outside the incoming voters hands over first (it would
        // remove itself: `replica_move.rs`); the leave carries the conf
        // state it applies to (`membership.rs`).
        if self.is_leader()
            && cs.voters.contains(&self.settings.node_id)
            && !cs.voters_outgoing.is_empty()
        {
            let leave = ConfChangeV2 {
                context: cs.write_to_bytes().unwrap_or_default().into(),
                ..ConfChangeV2::default()
            };
            let _ = self.raw.propose_conf_change(Vec::new(), leave);
        }
        Ok(())
    }

    /// Fails every waiting proposal once this node stops leading the term
    /// it proposed them in.
    fn check_leadership(&mut self) {
        let now = self.is_leader().then_some(self.raw.raft.term);
        if self.leading != now {
            // A lease is for one term.
            self.lease_until = None;
            self.lease_asked = None;
        }
        if self.leading.is_some() && self.leading != now {
            let error = self.not_leader();
            for (_, p) in std::mem::take(&mut self.pending) {
                let _ = p.reply.send(Err(error.clone()));
            }
            for (_, reply) in std::mem::take(&mut self.queued) {
                let _ = reply.send(Err(error.clone()));
            }
        }
        self.leading = now;
    }

    /// Stops the group for a reason of its driver's (its log failed
    /// outside a Ready, its state machine could not apply): every
    /// proposal waiting is answered [`ProposeError::Stopped`], as when
    /// the group stops itself. Nothing once stopped.
    pub fn halt(&mut self, why: String) {
        if self.stopped.is_none() {
            self.stop(GroupError::Halted(why));
        }
    }

    fn stop(&mut self, error: GroupError) {
        tracing::error!(
            node = self.settings.node_id,
            group = self.settings.group_id,
            "raft group stopped: {error}"
        );
        let answer = ProposeError::Stopped(error.to_string());
        for (_, p) in std::mem::take(&mut self.pending) {
            let _ = p.reply.send(Err(answer.clone()));
        }
        for (_, reply) in std::mem::take(&mut self.queued) {
            let _ = reply.send(Err(answer.clone()));
        }
        self.stopped = Some(error);
    }
}

/// Stamps a proposed batch at `index` of `term`, at `next_offset` (then
/// moved past its records). `None` for `next_offset`: the store cannot say
/// now (a cut is pending), so the proposal is refused `Busy`.
fn stamp_batch(
    mut bytes: Vec<u8>,
    next_offset: &mut Option<u64>,
    term: u64,
    index: u64,
) -> Result<(Bytes, u64), ProposeError> {
    let Some(base) = *next_offset else {
        return Err(ProposeError::Busy);
    };
    let header = hadron_engine::log::batch::parse_header(&bytes)
        .map_err(|e| ProposeError::Stopped(format!("a proposed batch does not parse: {e}")))?;
    hadron_engine::log::batch::restamp(&mut bytes, base, term, index)
        .map_err(|e| ProposeError::Stopped(format!("a proposed batch: {e}")))?;
    *next_offset = Some(base + header.offsets_taken());
    Ok((Bytes::from(bytes), base))
}
