//! Membership changes in [`ReplicatedLog`] (docs/replication.md section 9):
//! what the replica-move reconciler (`shard/partition/replica_move.rs`)
//! needs from the group, and three rules that make a conf change apply
//! the same way on every replica, whatever that replica's conf state was:
//!
//! - **A conf change carries the conf state it applies to** (its
//!   `context`: the proposer's applied conf state, protobuf-encoded), and
//!   a replica whose conf state may be out of step resets to it first.
//!   *Why the context is right:* call CS(i) the conf state the log's
//!   entries up to index i imply. The reconciler (and the leader leaving
//!   a joint config as it applies it) proposes only when no conf change
//!   is pending (raft-rs's `pending_conf_index`, set to the last index at
//!   election, is applied, and no conf-change entry lies above the applied
//!   index), so the leader's applied conf state is CS(last), and the entry
//!   is appended at last + 1 in the same call. By Log Matching, every
//!   replica that holds that entry (same index, same term) holds the same
//!   entries below it: the context is CS(i - 1) on every replica that
//!   will ever apply the entry. *Where a reset is allowed:* only where a
//!   replica's conf state may differ from CS(applied) for a known reason:
//!   an ADDED replica that starts empty (no voters, no learners: the
//!   genesis voters are in `log.meta`, never in the log) replaying from
//!   index 1; one that installed a descriptor (section 8), whose conf
//!   state is the leader's latest, newer than the entries replayed after
//!   it; and one just opened (it may have installed one before its
//!   restart). Each is in step once it applied one change carrying its
//!   conf state (or reset to one); a replica in step whose conf state
//!   differs from a change's context has diverged: an error that stops
//!   the group, never a silent reset. A leader never resets (its
//!   progress would go). Changes without a context (the cluster
//!   simulation's own, raft-rs's automatic leave) apply as raft-rs would,
//!   a leave on a conf state no longer joint skipped as a replay; the
//!   reconciler's joint changes are `Explicit`, so raft-rs never proposes
//!   such a leave for them.
//! - **The commit recorded stays below an unapplied conf change.** A
//!   restart counts everything up to the recorded commit as applied; a
//!   follower's Ready often records a commit past entries it has not
//!   applied yet (not yet durable here). Past a conf change, the restart
//!   would never apply it. So the hard state written holds the commit
//!   below the first conf-change entry not yet applied.
//! - **Removal notices.** A replica removed by a change whose commit it
//!   never heard of (the leader forgets it once the change applies) would
//!   wait forever. Any replica that receives a message from a node its
//!   applied conf state does not list answers with a notice (a message of
//!   the local-only kind `MsgUnreachable`, never sent by raft-rs between
//!   nodes) naming its applied index; the receiver records it
//!   ([`ReplicatedLog::removal_notice`]) and its owner decides (a notice
//!   from a node whose applied index is past the receiver's proves the
//!   receiver was removed in between, or never added: both applied
//!   prefixes are of the one committed log).
//! - **Silent replicas probe.** A voter left behind campaigns after an
//!   election timeout, and its (pre-)vote requests draw the notices. A
//!   replica that never campaigns (abstaining: refilling a damaged log, or
//!   joining; or a learner) would never send anything: once it heard from
//!   no leader for [`SILENT_TICKS_MAX`] ticks, it sends a probe (also a
//!   `MsgUnreachable`, `reject` set; never stepped into raft-rs) to every
//!   node its conf state lists, every [`SILENT_TICKS_MAX`] ticks, and
//!   those that do not list it answer with a notice.

use protobuf::Message as _;
use raft::eraftpb::{
    ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType, Message,
    MessageType,
};
use raft::{Changer, GetEntriesContext, ProgressTracker};

use super::{INFLIGHT_MESSAGES_MAX, LogStore, PeerNet, ReplicatedLog};
use crate::shard::clock::Clock;

/// Ticks without a message from a leader after which a replica that
/// never campaigns probes its peers for a removal notice (twice the
/// longest default election timeout).
pub const SILENT_TICKS_MAX: u32 = 4 * super::super::ELECTION_TICKS as u32;

/// Removal notices heard, this replica's probes for them, and whether
/// its conf state is known to be the one its log implies.
#[derive(Debug, Default)]
pub(super) struct MemberWatch {
    /// The highest applied index a peer's removal notice named (its conf
    /// state there did not list this node), if any.
    notice: Option<u64>,
    /// When a leader (of this replica's term or later) last sent an
    /// append, a heartbeat or a snapshot; `None`: not since open.
    heard_at: Option<std::time::Duration>,
    /// When this replica last probed.
    probed_at: Option<std::time::Duration>,
    /// Whether it applied a conf change carrying its conf state (or reset
    /// to one) since it opened or installed a descriptor.
    conf_in_step: bool,
}

/// Whether `cs` lists `id` (voter, outgoing voter or learner).
pub fn lists(cs: &ConfState, id: u64) -> bool {
    cs.voters
        .iter()
        .chain(&cs.voters_outgoing)
        .chain(&cs.learners)
        .chain(&cs.learners_next)
        .any(|&v| v == id)
}

/// Whether two conf states name the same members (in any order).
fn same_conf(a: &ConfState, b: &ConfState) -> bool {
    let sorted = |v: &[u64]| {
        let mut v = v.to_vec();
        v.sort_unstable();
        v
    };
    sorted(&a.voters) == sorted(&b.voters)
        && sorted(&a.learners) == sorted(&b.learners)
        && sorted(&a.voters_outgoing) == sorted(&b.voters_outgoing)
        && sorted(&a.learners_next) == sorted(&b.learners_next)
}

/// Builds `cs` in an empty `tracker`, as raft-rs does at start
/// (`confchange::restore`, private in raft-rs 0.7): the outgoing voters
/// one by one, then the incoming config as one joint change over them.
fn restore(tracker: &mut ProgressTracker, next: u64, cs: &ConfState) -> raft::Result<()> {
    let single = |kind: ConfChangeType, node_id: u64| {
        let mut s = ConfChangeSingle::default();
        s.set_change_type(kind);
        s.node_id = node_id;
        s
    };
    let outgoing: Vec<_> = (cs.voters_outgoing.iter())
        .map(|&id| single(ConfChangeType::AddNode, id))
        .collect();
    let incoming: Vec<_> = (cs.voters_outgoing.iter())
        .map(|&id| single(ConfChangeType::RemoveNode, id))
        .chain(
            cs.voters
                .iter()
                .map(|&id| single(ConfChangeType::AddNode, id)),
        )
        .chain(
            (cs.learners.iter().chain(&cs.learners_next))
                .map(|&id| single(ConfChangeType::AddLearnerNode, id)),
        )
        .collect();
    if outgoing.is_empty() {
        for s in incoming {
            let (cfg, changes) = Changer::new(tracker).simple(&[s])?;
            tracker.apply_conf(cfg, changes, next);
        }
        return Ok(());
    }
    for s in outgoing {
        let (cfg, changes) = Changer::new(tracker).simple(&[s])?;
        tracker.apply_conf(cfg, changes, next);
    }
    let (cfg, changes) = Changer::new(tracker).enter_joint(cs.auto_leave, &incoming)?;
    tracker.apply_conf(cfg, changes, next);
    Ok(())
}

impl<S: LogStore, N: PeerNet, C: Clock> ReplicatedLog<S, N, C> {
    /// At start: the conf-change entries above the recorded commit.
    pub(super) fn with_conf_unapplied(mut self) -> Self {
        let from = self.raw.raft.raft_log.committed + 1;
        let last = self.raw.raft.raft_log.last_index();
        if from <= last {
            match self
                .raw
                .store()
                .entries(from, last + 1, None, GetEntriesContext::empty(false))
            {
                Ok(entries) => self.note_conf_entries(&entries),
                Err(e) => tracing::warn!(
                    node = self.settings.node_id,
                    "conf changes above the commit not scanned: {e}"
                ),
            }
        }
        self
    }

    /// Entries appended (replacing any from their first index on).
    pub(super) fn note_conf_entries(&mut self, entries: &[Entry]) {
        if let Some(first) = entries.first() {
            self.conf_unapplied.split_off(&first.index);
        }
        for e in entries {
            if e.get_entry_type() == EntryType::EntryConfChangeV2 && e.index > self.applied {
                self.conf_unapplied.insert(e.index);
            }
        }
    }

    /// The commit to record: below the first unapplied conf change.
    pub(super) fn commit_to_record(&self, commit: u64) -> u64 {
        match self.conf_unapplied.first() {
            Some(&index) => commit.min(index - 1).max(self.applied.min(commit)),
            None => commit,
        }
    }

    /// Raises the recorded commit once the conf changes that held it
    /// back were applied.
    pub(super) fn record_commit_past_conf_changes(&mut self) {
        let want = self.commit_to_record(self.raw.raft.raft_log.committed);
        let mut hs = self.raw.store().hard_state();
        if hs.commit < want {
            hs.commit = want;
            self.raw.mut_store().set_hard_state(&hs);
        }
    }

    /// Before applying `change`: where this replica's conf state may not
    /// be the one the log implies (module header: empty, or from a
    /// descriptor or a restart) and differs from the one `change` carries,
    /// resets raft's conf state to it; a replica in step that differs has
    /// diverged, an error. Returns whether to apply it (`false`: a leave
    /// without context of a joint config already left).
    pub(super) fn conf_before(&mut self, change: &ConfChangeV2) -> Result<bool, String> {
        let current = self.conf_state();
        if change.context.is_empty() {
            // Not proposed by the reconciler (a simulation's own changes,
            // raft-rs's automatic leave): applied as raft-rs would.
            return Ok(!change.leave_joint() || !current.voters_outgoing.is_empty());
        }
        let mut before = ConfState::default();
        before
            .merge_from_bytes(&change.context)
            .map_err(|e| format!("a conf change's context does not decode: {e}"))?;
        let in_step = std::mem::replace(&mut self.membership.conf_in_step, true);
        if same_conf(&before, &current) {
            return Ok(true);
        }
        let empty = current.voters.is_empty() && current.learners.is_empty();
        if (in_step && !empty) || before.voters.is_empty() || self.is_leader() {
            self.membership.conf_in_step = in_step;
            return Err(format!(
                "a conf change applies to {before:?}, this replica has {current:?}"
            ));
        }
        let mut tracker = ProgressTracker::new(INFLIGHT_MESSAGES_MAX);
        let next = self.raw.raft.raft_log.last_index() + 1;
        restore(&mut tracker, next, &before)
            .map_err(|e| format!("rebuilding the conf state {before:?}: {e}"))?;
        *self.raw.raft.mut_prs() = tracker;
        self.raw.raft.post_conf_change();
        Ok(true)
    }

    /// A descriptor was installed: its conf state is the leader's latest,
    /// newer than the entries replayed after it (module header).
    pub(super) fn conf_from_descriptor(&mut self) {
        self.membership.conf_in_step = false;
    }

    /// A removal notice is recorded and a probe answered (neither is
    /// stepped); a message from a node this replica's conf state does not
    /// list is answered with a notice. Returns whether `msg` was a notice
    /// or a probe.
    pub(super) fn removal_noticed(&mut self, msg: &Message) -> bool {
        let unreachable = msg.get_msg_type() == MessageType::MsgUnreachable;
        if unreachable && !msg.reject {
            self.membership.notice = Some(self.membership.notice.unwrap_or(0).max(msg.index));
            return true;
        }
        if matches!(
            msg.get_msg_type(),
            MessageType::MsgAppend | MessageType::MsgHeartbeat | MessageType::MsgSnapshot
        ) && msg.term >= self.raw.raft.term
        {
            self.membership.heard_at = Some(self.clock.now());
        }
        let cs = self.conf_state();
        if !cs.voters.is_empty() && !lists(&cs, msg.from) {
            let mut notice = Message::default();
            notice.set_msg_type(MessageType::MsgUnreachable);
            notice.from = self.settings.node_id;
            notice.to = msg.from;
            notice.term = self.raw.raft.term;
            notice.index = self.applied;
            self.net.send(notice);
        }
        unreachable
    }

    /// A replica that never campaigns (abstaining, or a learner) and heard
    /// from no leader for [`SILENT_TICKS_MAX`] ticks probes every node its
    /// conf state lists (module header), at most that often.
    pub(super) fn probe_if_silent(&mut self) {
        let now = self.clock.now();
        let silence = self.settings.tick_interval * SILENT_TICKS_MAX;
        let heard_at = *self.membership.heard_at.get_or_insert(now);
        let campaigns = !self.abstaining && self.raw.raft.promotable();
        let probed_lately = (self.membership.probed_at).is_some_and(|at| now < at + silence);
        if campaigns || self.is_leader() || now < heard_at + silence || probed_lately {
            return;
        }
        self.membership.probed_at = Some(now);
        let cs = self.conf_state();
        let me = self.settings.node_id;
        let mut peers: Vec<u64> = (cs.voters.iter())
            .chain(&cs.voters_outgoing)
            .chain(&cs.learners)
            .chain(&cs.learners_next)
            .copied()
            .filter(|&id| id != me)
            .collect();
        peers.sort_unstable();
        peers.dedup();
        for to in peers {
            let mut probe = Message::default();
            probe.set_msg_type(MessageType::MsgUnreachable);
            probe.from = me;
            probe.to = to;
            probe.term = self.raw.raft.term;
            probe.index = self.applied;
            probe.reject = true;
            self.net.send(probe);
        }
    }

    /// The highest applied index of a peer that did not list this node
    /// there, as its notices said.
    pub fn removal_notice(&self) -> Option<u64> {
        self.membership.notice
    }

    /// This node's id.
    pub fn node_id(&self) -> u64 {
        self.settings.node_id
    }

    /// On a leader: the index up to which `id`'s log matches its own
    /// (raft-rs's progress tracker), if it tracks `id`.
    pub fn matched(&self, id: u64) -> Option<u64> {
        self.raw.raft.prs().get(id).map(|p| p.matched)
    }

    /// Whether a conf change is in the log and not yet applied (raft-rs
    /// refuses another meanwhile).
    pub fn conf_change_pending(&self) -> bool {
        self.raw.raft.pending_conf_index > self.applied || !self.conf_unapplied.is_empty()
    }
}
