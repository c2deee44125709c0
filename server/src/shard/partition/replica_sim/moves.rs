//! The replicated-partition simulation with replica moves
//! (`replica_move.rs`): four nodes, the partition on nodes 1 to 3; at a
//! seeded step every node is told a new target that replaces a random
//! voter by node 4; once that replica reports itself removed, its node is
//! wiped (its files deleted, as its caller would) and, at a later seeded
//! step, a second move replaces another voter by that node, added again
//! from an empty log. All of the base simulation's faults run throughout
//! (drops, duplicates, delays, cuts, crashes mid-write, restarts, damage,
//! retention and descriptor installs).
//!
//! Checked after healing, besides everything the base simulation checks
//! (over the final target's replicas): the leader's applied conf state is
//! exactly the final target (no learners, not joint), every replica in it
//! holds the same log, and every replica removed reports itself removed.
//!
//! Replay: `HADRON_SIM_SEED=N cargo test -p hadron-server replica_move_sim`.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;

use hadron_engine::storage::sim::{SimFaults, SimRng, SimStorage};

use super::super::replica::ReplicaSpec;
use super::{NODES, STEPS, Sim};
use crate::shard::sim_support::run_seeds;

const SEEDS: u64 = 60;
/// The net: the partition's three replicas and a spare.
const NET_NODES: u64 = 4;

/// What the moves exercised, summed over seeds.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct MoveCoverage {
    started: u64,
    completed: u64,
    /// Moves whose joint conf state a leader was seen in.
    joint_seen: u64,
    /// Moves that replaced the replica leading when they started.
    leader_moved: u64,
    /// Descriptors installed by added replicas.
    installs_on_added: u64,
    /// Removed replicas that reported it.
    removed: u64,
}

impl std::ops::AddAssign for MoveCoverage {
    fn add_assign(&mut self, o: MoveCoverage) {
        self.started += o.started;
        self.completed += o.completed;
        self.joint_seen += o.joint_seen;
        self.leader_moved += o.leader_moved;
        self.installs_on_added += o.installs_on_added;
        self.removed += o.removed;
    }
}

pub(super) struct MoveRun {
    rng: SimRng,
    /// The steps the two moves start at (the second waits for the first's
    /// removed replica).
    at: [u64; 2],
    started: usize,
    target: Option<Vec<u64>>,
    /// Nodes whose replica was removed and not added again.
    removed: BTreeSet<u64>,
    /// Nodes that start with no voters (node 4; a wiped node).
    added: BTreeSet<u64>,
    /// Per move: completed, joint seen.
    done: [bool; 2],
    joint: [bool; 2],
    installs_seen: Vec<u64>,
    coverage: Rc<RefCell<MoveCoverage>>,
}

impl Sim {
    /// Node `id`'s spec in a run with moves: an added node opens with no
    /// voters. Returns the target to tell it.
    pub(super) fn moves_open(&mut self, id: u64, spec: &mut ReplicaSpec) -> Option<Vec<u64>> {
        let run = self.moves.as_ref()?;
        if run.added.contains(&id) {
            spec.voters = Vec::new();
        }
        run.target.clone()
    }

    fn up_replica(&self, id: u64) -> Option<Rc<super::SimPartition>> {
        self.nodes[id as usize - 1]
            .partition
            .clone()
            .filter(|p| p.replica.is_some())
    }

    fn set_target(&mut self, target: Vec<u64>) {
        for id in 1..=self.n {
            if let Some(r) = self.up_replica(id).and_then(|p| p.replica.clone()) {
                r.set_target_voters(target.clone())
                    .unwrap_or_else(|e| panic!("seed {}: {e}", self.seed));
            }
        }
        self.members = target.clone();
        self.members.sort_unstable();
        self.say(|| format!("target {target:?}"));
        if let Some(run) = &mut self.moves {
            run.target = Some(target);
            run.started += 1;
            run.coverage.borrow_mut().started += 1;
        }
    }

    fn leader_id(&self) -> Option<u64> {
        (1..=self.n).find(|&id| {
            self.up_replica(id)
                .and_then(|p| p.replica.clone())
                .is_some_and(|r| r.is_leader() && !r.removed())
        })
    }

    /// Starts the moves at their steps, wipes a removed node, and counts.
    pub(super) fn move_step(&mut self, step: u64) {
        let Some(run) = &mut self.moves else { return };
        let (started, at, first_done) = (run.started, run.at, run.done[0]);
        let current: Vec<u64> = run.target.clone().unwrap_or_else(|| (1..=NODES).collect());
        let out = current[run.rng.below(current.len() as u64) as usize];
        let back = run.removed.iter().next().copied();
        if started == 0 && step >= at[0] {
            self.replace(current, out, NET_NODES);
        } else if started == 1 && step >= at[1] && first_done {
            let Some(back) = back else { return };
            let removed = self
                .up_replica(back)
                .and_then(|p| p.replica.clone())
                .is_some_and(|r| r.removed());
            if removed {
                self.wipe(back);
                self.replace(current, out, back);
            }
        }
    }

    /// Every node is told `current` with `out` replaced by `to`.
    fn replace(&mut self, current: Vec<u64>, out: u64, to: u64) {
        let leader = self.leader_id();
        let target: Vec<u64> = current
            .iter()
            .map(|&id| if id == out { to } else { id })
            .collect();
        if let Some(run) = &mut self.moves {
            run.removed.insert(out);
            run.removed.remove(&to);
            if leader == Some(out) {
                run.coverage.borrow_mut().leader_moved += 1;
            }
        }
        self.set_target(target);
    }

    /// Deletes node `id`'s files (its replica was removed) and opens it
    /// again, empty, with no voters.
    fn wipe(&mut self, id: u64) {
        let i = id as usize - 1;
        if let Some(p) = self.nodes[i].partition.take()
            && let Some(r) = &p.replica
        {
            r.halt();
        }
        self.nodes[i].storage = SimStorage::new(self.seed * 10 + 100 + id, SimFaults::default());
        self.nodes[i].back_at = None;
        if let Some(run) = &mut self.moves {
            run.added.insert(id);
            run.installs_seen[i] = 0;
        }
        self.say(|| format!("node {id} wiped"));
        self.open(id);
    }

    pub(super) fn count_moves(&mut self) {
        let leader = self
            .leader_id()
            .and_then(|id| self.up_replica(id))
            .and_then(|p| p.replica.clone());
        let Some(run) = &mut self.moves else { return };
        let mut cov = run.coverage.borrow_mut();
        if let (Some(r), Some(target)) = (leader, &run.target) {
            let cs = r.conf_state();
            let k = run.started - 1;
            if !cs.voters_outgoing.is_empty() && !run.joint[k] {
                run.joint[k] = true;
                cov.joint_seen += 1;
            }
            if settled(&cs, target) && !run.done[k] {
                run.done[k] = true;
                cov.completed += 1;
            }
        }
        for (i, node) in self.nodes.iter().enumerate() {
            let added = run.added.contains(&(i as u64 + 1));
            if let Some(r) = node.partition.as_ref().and_then(|p| p.replica.as_ref())
                && added
            {
                let now = r.snapshots_installed();
                if now > run.installs_seen[i] {
                    cov.installs_on_added += now - run.installs_seen[i];
                    run.installs_seen[i] = now;
                }
            }
        }
    }

    /// Whether the leader's conf state is the target and every removed
    /// replica reports it.
    pub(super) fn moves_settled(&self) -> bool {
        let Some(run) = &self.moves else { return true };
        let Some(target) = &run.target else {
            return true;
        };
        let leader_ok = self
            .leader_id()
            .and_then(|id| self.up_replica(id))
            .and_then(|p| p.replica.clone())
            .is_some_and(|r| settled(&r.conf_state(), target));
        leader_ok
            && run.removed.iter().all(|&id| {
                self.up_replica(id)
                    .and_then(|p| p.replica.clone())
                    .is_some_and(|r| r.removed())
            })
    }

    /// After healing: the checks of the module header.
    pub(super) fn check_moves(&mut self) {
        let seed = self.seed;
        let Some(run) = &self.moves else { return };
        assert!(
            self.moves_settled(),
            "seed {seed}: the conf state is not the target {:?}",
            run.target
        );
        for &id in &run.removed {
            let status = self
                .up_replica(id)
                .and_then(|p| p.replica.clone())
                .map(|r| r.status());
            assert!(
                status
                    .as_ref()
                    .is_some_and(|s| s.removed && s.stopped.is_some()),
                "seed {seed}: node {id}'s replica does not report itself removed: {status:?}"
            );
        }
        run.coverage.borrow_mut().removed += run.removed.len() as u64;
    }
}

/// Whether `cs` is exactly `target`: its voters, no learners, not joint.
fn settled(cs: &raft::eraftpb::ConfState, target: &[u64]) -> bool {
    let mut voters = cs.voters.clone();
    voters.sort_unstable();
    let mut want = target.to_vec();
    want.sort_unstable();
    voters == want && cs.learners.is_empty() && cs.voters_outgoing.is_empty()
}

fn run_moves(seed: u64) -> (u64, super::Coverage, MoveCoverage) {
    let mut sim = Sim::with_nodes(seed, NET_NODES);
    let mut rng = SimRng::new(seed ^ 0x0a0e_5eed);
    let first = STEPS / 8 + rng.below(STEPS / 4);
    let second = first + STEPS / 4 + rng.below(STEPS / 4);
    let coverage = Rc::new(RefCell::new(MoveCoverage::default()));
    sim.moves = Some(MoveRun {
        rng,
        at: [first, second],
        started: 0,
        target: None,
        removed: BTreeSet::new(),
        added: BTreeSet::from([NET_NODES]),
        done: [false; 2],
        joint: [false; 2],
        installs_seen: vec![0; NET_NODES as usize],
        coverage: coverage.clone(),
    });
    let (trace, base) = sim.run();
    let moves = *coverage.borrow();
    (trace, base, moves)
}

/// Every seed: the base checks over the final target's replicas, and the
/// moves' checks (module header); over all seeds, moves started and
/// completed, joint states seen, leaders moved and added replicas seeded
/// by descriptors.
#[test]
fn replica_move_sim_moves_replicas_online_without_losing_an_acknowledged_event() {
    let (seeds, Both(base, total)) = run_seeds("replica_move_sim", SEEDS, |seed| {
        let (_, base, moves) = run_moves(seed);
        Both(base, moves)
    });
    let per = |n: u64| n as f64 / seeds as f64;
    assert!(per(total.completed) >= 1.5, "{total:?} {base:?}");
    assert!(
        total.started >= total.completed && total.joint_seen > 0,
        "{total:?}"
    );
    assert!(total.leader_moved > 0 && total.removed > 0, "{total:?}");
    assert!(per(base.acked) >= 50.0, "{base:?}");
}

/// The base coverage and the moves', summed together.
#[derive(Debug, Default)]
struct Both(super::Coverage, MoveCoverage);

impl std::ops::AddAssign for Both {
    fn add_assign(&mut self, o: Both) {
        self.0 += o.0;
        self.1 += o.1;
    }
}

/// A seed with moves replays exactly.
#[test]
fn replica_move_sim_replays_a_seed_identically() {
    assert_eq!(run_moves(5).0, run_moves(5).0);
}
