//! Membership in the cluster simulation: a 4th node joins from the
//! group's genesis (see `replace_voter`), is caught up as a learner by
//! appends, and replaces a voter in one joint change
//! (`ConfChangeTransition::Auto`, left automatically), under load and
//! network faults; the removed node is then gone for good, and crashes
//! resume among the new voters.

use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState};

use super::{Node, STEPS, Sim};
use crate::replication::MemLogStore;

/// Steps a membership change may take before the run fails.
const CHANGE_STEPS_MAX: u64 = 2_000;
/// Steps between proposals of a change not yet applied (a refused change
/// is an empty entry in raft-rs: it is proposed again).
const CHANGE_RETRY_STEPS: u64 = 40;

fn change(changes: &[(ConfChangeType, u64)]) -> ConfChangeV2 {
    let mut cc = ConfChangeV2::default();
    for &(kind, node_id) in changes {
        let mut single = ConfChangeSingle::default();
        single.set_change_type(kind);
        single.node_id = node_id;
        cc.mut_changes().push(single);
    }
    cc
}

fn sorted(ids: &[u64]) -> Vec<u64> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids
}

impl Sim {
    /// Runs fault-free steps (network faults stay) until the leader's
    /// applied conf state satisfies `done`, proposing `cc` meanwhile.
    fn change_until(&mut self, cc: &ConfChangeV2, done: impl Fn(&ConfState) -> bool) {
        for step in 0..CHANGE_STEPS_MAX {
            self.one_step(false);
            let Some(leader) = self
                .nodes
                .iter_mut()
                .filter_map(|n| n.log.as_mut())
                .find(|l| l.is_leader())
            else {
                continue;
            };
            if done(&leader.conf_state()) {
                return;
            }
            if step % CHANGE_RETRY_STEPS == 0 {
                drop(leader.propose_conf_change(cc.clone()));
            }
        }
        panic!("the conf change {cc:?} was not applied within {CHANGE_STEPS_MAX} steps");
    }

    /// Adds a node as a learner, then replaces a follower voter by it.
    fn replace_voter(&mut self) {
        self.router.borrow_mut().heal();
        for i in 0..self.nodes.len() {
            if self.nodes[i].log.is_none() {
                self.start(i);
            }
        }
        let new_id = self.nodes.len() as u64 + 1;
        self.nodes.push(Node {
            id: new_id,
            // From the group's genesis (index 1, term 1, the first
            // voters): raft-rs refuses a snapshot whose conf state does not
            // name the receiver, and the genesis descriptor names only the
            // first voters, so an empty replica could never be seeded by it
            // while the leader still holds its whole log.
            store: MemLogStore::new_member(&(1..new_id).collect::<Vec<_>>()),
            log: None,
            election_ticks: self.timeouts[new_id as usize],
        });
        self.start(self.nodes.len() - 1);
        let learner = change(&[(ConfChangeType::AddLearnerNode, new_id)]);
        self.change_until(&learner, |cs| cs.learners.contains(&new_id));
        // Replace a voter that does not lead now (any leader would do;
        // this one keeps the change from racing a step-down).
        let leader = self
            .nodes
            .iter()
            .filter_map(|n| n.log.as_ref())
            .find(|l| l.is_leader())
            .and_then(|l| l.leader());
        let out = (1..new_id).find(|&id| Some(id) != leader).unwrap_or(1);
        let voters: Vec<u64> = (1..=new_id).filter(|&id| id != out).collect();
        let joint = change(&[
            (ConfChangeType::AddNode, new_id),
            (ConfChangeType::RemoveNode, out),
        ]);
        self.change_until(&joint, |cs| {
            sorted(&cs.voters) == voters && cs.voters_outgoing.is_empty()
        });
        self.nodes.retain(|n| n.id != out);
        self.coverage.replaced += 1;
        if self.debug {
            eprintln!("step {}: node {new_id} replaced node {out}", self.step);
        }
    }

    /// Chaos, a voter replaced, chaos among the new voters, healing.
    pub(super) fn run_with_replacement(mut self) -> (u64, super::Coverage) {
        for _ in 0..STEPS / 3 {
            self.one_step(true);
        }
        self.replace_voter();
        for _ in 0..STEPS / 3 {
            self.one_step(true);
        }
        self.finish()
    }
}
