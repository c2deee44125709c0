//! Moving a replicated partition's replicas between nodes, online
//! (docs/replication.md section 9): the wanted voters
//! ([`Replica::set_target_voters`]) and the reconciler its leader runs
//! after every turn, one idempotent step at a time:
//!
//! ```text
//!  applied conf state joint (voters_outgoing)  -> propose the leave (no changes);
//!                                                 a leader outside the incoming voters
//!                                                 hands over instead
//!  a wanted node (voter or learner) not in it  -> AddLearnerNode (one per change)
//!  a wanted learner behind the commit by more
//!    than CATCH_UP_LAG_ENTRIES_MAX             -> wait (it catches up: appends, descriptor)
//!  the leader itself unwanted                  -> hand leadership to a wanted voter first
//!  else, voters or learners != wanted          -> ONE ConfChangeV2, transition Explicit:
//!                                                 AddNode (learners promoted),
//!                                                 AddLearnerNode (voters wanted as
//!                                                 learners: demoted), RemoveNode
//!                                                 (voters and learners unwanted)
//! ```
//!
//! A target names voters and, for the metadata group of a cluster larger
//! than its voters, **learners**: nodes that receive and apply the log but
//! do not vote or count for the commit ([`Replica::set_target`]).
//! Partitions' targets have none.
//!
//! - Nothing is proposed while a conf change is in the log unapplied
//!   (raft-rs refuses one, silently: it becomes an empty entry), and a step
//!   whose change did not apply is proposed again after
//!   [`MOVE_RETRY_INTERVAL`]: the reconciler reads the APPLIED conf state,
//!   never `propose`'s answer.
//! - Every change, the leave too, carries the conf state it applies to
//!   (`replication/group/membership.rs`), so a replica that starts empty or
//!   from a descriptor applies it the same way as the others.
//! - **The leader never removes itself.** raft-rs 0.7 does not step down
//!   when a conf change removes its leader (`Raft::post_conf_change` keeps
//!   it leading, a TODO in its source; proposals are then dropped since it
//!   has no progress of its own), and its followers, hearing from it, never
//!   time out. So an unwanted leader first hands leadership to a wanted
//!   voter whose log matches its own (`transfer_to_if_caught_up`); with no
//!   wanted voter yet, it makes the joint change keeping itself, and hands
//!   over on the next step. The leave counts too: a leader elected in the
//!   joint config by its outgoing half alone hands over to an incoming
//!   voter before the leave (else it would commit the leave, stop as
//!   removed, and leave the others joint, not knowing the commit, with
//!   no outgoing majority to elect a new leader: seed 198 of 400 once).
//! - The preferred leader (leader balance, `replica.rs`) follows the
//!   wanted set's first node.
//! - **The target is held in memory**, on every replica: the caller (the
//!   metadata group, later) says it again after a restart. Until said, a
//!   replica changes nothing.
//!
//! **An added replica** opens on an empty log with no voters
//! (`ReplicaSpec::voters` empty): its conf state is empty, so raft-rs never
//! lets it campaign; it takes the leader's appends (from index 1; the first
//! conf change it applies carries the conf state before it) or a
//! descriptor (which carries the leader's conf state, naming it). Until it
//! has applied what the leader had committed when it first heard from it
//! (past its own addition), it **abstains** (grants no vote): an id
//! removed and added again on a wiped node replays its old membership, and
//! must not vote on it. Not persisted: a joining replica that restarts
//! before that point votes again once its conf state lists it.
//!
//! **A removed replica** (its applied conf state no longer lists it, and
//! the target leaves it out; or a peer's removal notice proves it) stops
//! its loop: `stopped: "removed from the group"`, [`Replica::removed`].
//! Deleting its files is its caller's job.

use std::time::Duration;

use protobuf::Message as _;
use raft::eraftpb::{
    ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, ConfState, Message,
};

use super::replica::Replica;
use crate::replication::{EngineLogStore, GroupNet, ReplicatedLog, conf_lists};
use crate::shard::clock::Clock;

type Group<S, C> = ReplicatedLog<EngineLogStore<S>, GroupNet, C>;

/// How far (in entries) a learner's matched index may be behind the
/// leader's commit for the reconciler to promote it: close enough that
/// its first appends as a voter do not stall the commit.
pub const CATCH_UP_LAG_ENTRIES_MAX: u64 = 64;
/// A reconciler step whose change did not apply is proposed again after
/// this (a refused change is an empty entry in raft-rs).
pub const MOVE_RETRY_INTERVAL: Duration = Duration::from_millis(500);
/// Voters a target may name, at most.
pub const TARGET_VOTERS_MAX: usize = 7;
/// Learners a target may name, at most: every other node of the largest
/// cluster (`log.meta`'s conf state holds 121 ids in all).
pub const TARGET_LEARNERS_MAX: usize = crate::config::cluster::CLUSTER_NODES_MAX;
const _: () = assert!(
    2 * TARGET_VOTERS_MAX + TARGET_LEARNERS_MAX + TARGET_VOTERS_MAX
        <= hadron_engine::log::meta::CONF_IDS_MAX
);

/// The replicas a group is to have: voters in preference order (the first
/// is the preferred leader) and learners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
}

impl Target {
    fn wants(&self, id: u64) -> bool {
        self.voters.contains(&id) || self.learners.contains(&id)
    }
}

/// The reconciler's state on one replica.
#[derive(Debug, Default)]
pub struct Moves {
    target: Option<Target>,
    /// When the reconciler last proposed a change or a transfer.
    proposed_at: Option<Duration>,
    /// Whether the applied conf state ever listed this node.
    member_seen: bool,
    /// An added replica not caught up past its addition: abstains.
    /// `Some(None)`: no leader heard yet; `Some(Some(c))`: until applied
    /// reaches `c`, the commit the leader named first.
    joining: Option<Option<u64>>,
    removed: bool,
}

impl Moves {
    pub fn new(joining: bool) -> Moves {
        Moves {
            joining: joining.then_some(None),
            ..Moves::default()
        }
    }
}

fn change(singles: &[(ConfChangeType, u64)], before: &ConfState) -> ConfChangeV2 {
    let mut cc = ConfChangeV2::default();
    for &(kind, node_id) in singles {
        let mut single = ConfChangeSingle::default();
        single.set_change_type(kind);
        single.node_id = node_id;
        cc.mut_changes().push(single);
    }
    // The conf state it applies to (`replication/group/membership.rs`);
    // a ConfState always encodes.
    cc.context = before.write_to_bytes().unwrap_or_default().into();
    cc
}

fn sorted(ids: &[u64]) -> Vec<u64> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids
}

/// Checks a target: 1 to [`TARGET_VOTERS_MAX`] distinct non-zero voter
/// ids, and at most [`TARGET_LEARNERS_MAX`] learners, distinct, non-zero
/// and none a voter.
fn check_target(voters: &[u64], learners: &[u64]) -> Result<(), String> {
    let unique = sorted(voters).windows(2).all(|w| w[0] != w[1]);
    if voters.is_empty() || voters.len() > TARGET_VOTERS_MAX || !unique || voters.contains(&0) {
        return Err(format!(
            "target voters {voters:?}: 1 to {TARGET_VOTERS_MAX} distinct node ids (from 1)"
        ));
    }
    let all: Vec<u64> = voters.iter().chain(learners).copied().collect();
    let unique = sorted(&all).windows(2).all(|w| w[0] != w[1]);
    if learners.len() > TARGET_LEARNERS_MAX || !unique || learners.contains(&0) {
        return Err(format!(
            "target learners {learners:?} of voters {voters:?}: at most {TARGET_LEARNERS_MAX} distinct node ids (from 1), none a voter"
        ));
    }
    Ok(())
}

impl<S: hadron_engine::storage::Storage, C: Clock> Replica<S, C> {
    /// Sets the voters wanted, in preference order (the first is the
    /// preferred leader). The leader reconciles toward them; every replica
    /// uses them to tell whether it was removed. Held in memory: said
    /// again after a restart.
    pub fn set_target_voters(&self, voters: Vec<u64>) -> Result<(), String> {
        self.set_target(voters, Vec::new())
    }

    /// [`Replica::set_target_voters`] with learners too: nodes that
    /// receive the log without voting (the metadata group's nodes past
    /// its voters).
    pub fn set_target(&self, voters: Vec<u64>, learners: Vec<u64>) -> Result<(), String> {
        check_target(&voters, &learners)?;
        self.set_preferred(voters[0]);
        self.moves.borrow_mut().target = Some(Target { voters, learners });
        self.wake.notify_all();
        Ok(())
    }

    /// Whether this replica was removed from its group (its loop stopped;
    /// its files may go).
    pub fn removed(&self) -> bool {
        self.moves.borrow().removed
    }

    /// The conf state as applied here.
    pub fn conf_state(&self) -> ConfState {
        self.group.borrow().conf_state()
    }

    /// A joining replica learns the leader's commit from its appends.
    pub(super) fn note_message(&self, msg: &Message) {
        let mut moves = self.moves.borrow_mut();
        if let Some(None) = moves.joining
            && msg.get_msg_type() == raft::eraftpb::MessageType::MsgAppend
        {
            moves.joining = Some(Some(msg.commit));
        }
    }

    /// After each turn: ends a join, stops a removed replica, and on the
    /// leader takes the next step toward the target.
    pub(super) fn membership_turn(&self, clock: &C) {
        self.end_join();
        if self.check_removed() {
            return;
        }
        if self.moves.borrow().joining.is_none() {
            self.reconcile(clock);
        }
    }

    fn end_join(&self) {
        let mut moves = self.moves.borrow_mut();
        let Some(Some(until)) = moves.joining else {
            return;
        };
        let group = self.group.borrow();
        let me = group.node_id();
        if group.applied() >= until && conf_lists(&group.conf_state(), me) {
            moves.joining = None;
            drop(group);
            self.group.borrow_mut().set_abstaining(self.recovering());
        }
    }

    /// Stops the replica once removed. Returns whether it is.
    fn check_removed(&self) -> bool {
        let mut moves = self.moves.borrow_mut();
        if moves.removed {
            return true;
        }
        let group = self.group.borrow();
        let (me, cs) = (group.node_id(), group.conf_state());
        let listed = conf_lists(&cs, me);
        moves.member_seen |= listed;
        let wanted = moves.target.as_ref().map(|t| t.wants(me));
        let left_out = !cs.voters.is_empty()
            && !listed
            && (wanted == Some(false) || (wanted.is_none() && moves.member_seen));
        // A peer that applied past this replica and does not list it.
        let noticed = wanted == Some(false)
            && listed
            && group
                .removal_notice()
                .is_some_and(|at| at > group.applied());
        if !(left_out || noticed) {
            return false;
        }
        moves.removed = true;
        drop(group);
        drop(moves);
        tracing::info!(node = me, "removed from the group: stopping");
        self.stop("removed from the group".into());
        self.wake.notify_all();
        true
    }

    /// On a leader the next step would remove: offers leadership to the
    /// first wanted voter (of the incoming config) whose log matches its
    /// own, if any.
    fn hand_over(&self, group: &mut Group<S, C>, target: &[u64], cs: &ConfState, now: Duration) {
        let me = group.node_id();
        let handed = target
            .iter()
            .filter(|&&id| id != me && cs.voters.contains(&id))
            .any(|&id| group.transfer_to_if_caught_up(id));
        if handed {
            self.moves.borrow_mut().proposed_at = Some(now);
            self.wake.notify_all();
        }
    }

    /// The leader's next step toward the target (module header).
    fn reconcile(&self, clock: &C) {
        let Some(target) = self.moves.borrow().target.clone() else {
            return;
        };
        let mut group = self.group.borrow_mut();
        if !group.is_leader() || group.conf_change_pending() {
            return;
        }
        let now = clock.now();
        let due = self
            .moves
            .borrow()
            .proposed_at
            .is_none_or(|at| now >= at + MOVE_RETRY_INTERVAL);
        if !due {
            return;
        }
        let cs = group.conf_state();
        let me = group.node_id();
        let proposal = if !cs.voters_outgoing.is_empty() {
            // A leader elected in the joint config from its outgoing half
            // only would remove itself with the leave: hand over first.
            if cs.voters.contains(&me) {
                Some(change(&[], &cs))
            } else {
                self.hand_over(&mut group, &target.voters, &cs, now);
                None
            }
        } else if let Some(&new) = target
            .voters
            .iter()
            .chain(&target.learners)
            .find(|&&id| !conf_lists(&cs, id))
        {
            Some(change(&[(ConfChangeType::AddLearnerNode, new)], &cs))
        } else if sorted(&target.voters) == sorted(&cs.voters)
            && sorted(&target.learners) == sorted(&cs.learners)
        {
            None
        } else {
            let voters = &target.voters;
            let commit = group.commit();
            let behind = voters.iter().any(|id| {
                !cs.voters.contains(id)
                    && group
                        .matched(*id)
                        .is_none_or(|m| m + CATCH_UP_LAG_ENTRIES_MAX < commit)
            });
            let stays = |id: &u64| voters.contains(id) && cs.voters.contains(id);
            if behind {
                None
            } else if !voters.contains(&me) && cs.voters.iter().any(stays) {
                // Hand over first: a leader never removes (or demotes)
                // itself.
                self.hand_over(&mut group, voters, &cs, now);
                None
            } else {
                joint_step(&target, &cs, me)
            }
        };
        if let Some(cc) = proposal {
            tracing::info!(node = me, change = ?cc.changes, "membership step");
            drop(group.propose_conf_change(cc));
            self.moves.borrow_mut().proposed_at = Some(now);
            self.wake.notify_all();
        }
    }
}

/// The joint change from `cs` to `target` (never removing or demoting
/// `me`, the leader); none when there is nothing to change.
fn joint_step(target: &Target, cs: &ConfState, me: u64) -> Option<ConfChangeV2> {
    let mut singles: Vec<(ConfChangeType, u64)> = target
        .voters
        .iter()
        .filter(|id| !cs.voters.contains(id))
        .map(|&id| (ConfChangeType::AddNode, id))
        .collect();
    singles.extend(
        target
            .learners
            .iter()
            .filter(|&&id| cs.voters.contains(&id) && id != me)
            .map(|&id| (ConfChangeType::AddLearnerNode, id)),
    );
    singles.extend(
        cs.voters
            .iter()
            .chain(&cs.learners)
            .filter(|&&id| !target.wants(id) && id != me)
            .map(|&id| (ConfChangeType::RemoveNode, id)),
    );
    (!singles.is_empty()).then(|| {
        // Left by this reconciler (or the leader applying it), never
        // by raft-rs itself: its automatic leave carries no conf
        // state, and would be proposed by a leader the leave removes.
        let mut cc = change(&singles, cs);
        cc.set_transition(ConfChangeTransition::Explicit);
        cc
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_is_one_to_seven_distinct_node_ids() {
        assert!(check_target(&[4, 2, 3], &[]).is_ok());
        for bad in [vec![], vec![1, 1], vec![0, 2], (1..=8).collect()] {
            let err = check_target(&bad, &[]).unwrap_err();
            assert!(err.contains("distinct node ids"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn a_targets_learners_are_distinct_and_none_is_a_voter() {
        assert!(check_target(&[1, 2, 3], &[4, 9]).is_ok());
        let many: Vec<u64> = (10..10 + TARGET_LEARNERS_MAX as u64 + 1).collect();
        for bad in [vec![2], vec![4, 4], vec![0], many] {
            let err = check_target(&[1, 2, 3], &bad).unwrap_err();
            assert!(err.contains("none a voter"), "{bad:?}: {err}");
        }
    }

    fn conf(voters: &[u64], learners: &[u64]) -> ConfState {
        ConfState {
            voters: voters.to_vec(),
            learners: learners.to_vec(),
            ..ConfState::default()
        }
    }

    fn singles(cc: &ConfChangeV2) -> Vec<(ConfChangeType, u64)> {
        cc.changes
            .iter()
            .map(|c| (c.get_change_type(), c.node_id))
            .collect()
    }

    #[test]
    fn a_joint_step_promotes_demotes_and_removes_but_never_the_leader() {
        use ConfChangeType::{AddLearnerNode, AddNode, RemoveNode};
        let target = Target {
            voters: vec![1, 2, 6],
            learners: vec![3, 7],
        };
        // 6 is a learner to promote, 3 a voter to demote, 5 unwanted; 7
        // already a learner stays one.
        let cc = joint_step(&target, &conf(&[1, 2, 3, 5], &[6, 7]), 1).unwrap();
        assert_eq!(
            singles(&cc),
            vec![(AddNode, 6), (AddLearnerNode, 3), (RemoveNode, 5)]
        );
        assert_eq!(cc.get_transition(), ConfChangeTransition::Explicit);
        // The leader (3) wanted as a learner is not demoted by its own step.
        let cc = joint_step(&target, &conf(&[1, 2, 3], &[6, 7]), 3).unwrap();
        assert_eq!(singles(&cc), vec![(AddNode, 6)]);
        // Reached: nothing to do.
        assert!(joint_step(&target, &conf(&[1, 2, 6], &[3, 7]), 1).is_none());
    }
}
