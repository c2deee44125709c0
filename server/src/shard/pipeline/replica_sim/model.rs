//! The simulation's coverage counts and the model its checks 1 and 2 run
//! against (see the parent module's header).

use std::collections::{BTreeMap, BTreeSet};

use super::super::StageOutgoing;
use crate::shard::sim_support::fold_trace;

/// What the simulation exercised, summed over seeds.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Coverage {
    pub(super) crashes: u64,
    /// (term, node) pairs in which a node led the outputs group.
    pub(super) outputs_leaders: u64,
    pub(super) triggers: u64,
    pub(super) deliveries: u64,
    /// Deliveries by a node that no longer led (check 1).
    pub(super) acks_ok: u64,
    pub(super) acks_not_leader: u64,
    pub(super) acks_refused_other: u64,
    pub(super) nacks: u64,
    pub(super) unanswered: u64,
    pub(super) checkpoints: u64,
    pub(super) completed: u64,
    pub(super) dropped: u64,
    pub(super) duplicated: u64,
    pub(super) cuts: u64,
    /// Outputs leaders cut off from every other node.
    pub(super) isolations: u64,
    /// Steps in which a node still took itself for the outputs group's
    /// leader while another led in a later term (check 4's window).
    pub(super) stale_leader_steps: u64,
}

impl std::ops::AddAssign for Coverage {
    fn add_assign(&mut self, o: Coverage) {
        self.crashes += o.crashes;
        self.outputs_leaders += o.outputs_leaders;
        self.triggers += o.triggers;
        self.deliveries += o.deliveries;
        self.acks_ok += o.acks_ok;
        self.acks_not_leader += o.acks_not_leader;
        self.acks_refused_other += o.acks_refused_other;
        self.nacks += o.nacks;
        self.unanswered += o.unanswered;
        self.checkpoints += o.checkpoints;
        self.completed += o.completed;
        self.dropped += o.dropped;
        self.duplicated += o.duplicated;
        self.cuts += o.cuts;
        self.isolations += o.isolations;
        self.stale_leader_steps += o.stale_leader_steps;
    }
}

/// The model the run is checked against, updated by the tasks as they
/// see answers and deliveries (one thread: in the order they happen).
#[derive(Default)]
pub(super) struct Model {
    pub(super) seed: u64,
    /// Narrates deliveries and answers (`HADRON_SIM_DEBUG`).
    pub(super) debug: bool,
    /// (root, stage) answered OK, and the term of the node that answered.
    pub(super) answered: BTreeMap<(u64, u8), u64>,
    /// Every output a handler sent, by (root, stage).
    pub(super) sent: BTreeMap<(u64, u8), BTreeSet<Vec<u8>>>,
    /// The output every delivery got as input for (root, dependency).
    pub(super) inputs: BTreeMap<(u64, u8), Vec<u8>>,
    pub(super) dependencies: Vec<Vec<u8>>,
    pub(super) coverage: Coverage,
    pub(super) trace: u64,
}

impl Model {
    /// Checks 1 and 2 for deliveries that node `node` made while its
    /// outputs replica was (`leading`, `term`).
    pub(super) fn delivered(&mut self, node: u64, leading: bool, term: u64, out: &[StageOutgoing]) {
        let seed = self.seed;
        for d in out {
            self.coverage.deliveries += 1;
            if self.debug {
                eprintln!(
                    "[seed {seed}] node {node} (leading: {leading}, term {term}) delivers {} of root {} as {} attempt {}",
                    d.stage, d.root, d.delivery_id, d.attempt
                );
            }
            self.trace = fold_trace(self.trace, d.root << 8 | u64::from(d.stage) ^ node << 40);
            if let Some(&at) = self.answered.get(&(d.root, d.stage)) {
                panic!(
                    "seed {seed}: node {node} (leading: {leading}, term {term}) delivers stage {} of root {} again, answered OK in term {at}",
                    d.stage, d.root
                );
            }
            let deps: Vec<u8> = d.inputs.iter().map(|i| i.0).collect();
            assert_eq!(
                deps, self.dependencies[d.stage as usize],
                "seed {seed}: stage {} of root {} gets the inputs of other stages",
                d.stage, d.root
            );
            for (dep, event) in &d.inputs {
                let key = (d.root, *dep);
                assert!(
                    self.sent.get(&key).is_some_and(|s| s.contains(&**event)),
                    "seed {seed}: stage {} of root {} gets an input for stage {dep} no handler sent",
                    d.stage,
                    d.root
                );
                let first = self.inputs.entry(key).or_insert_with(|| event.to_vec());
                assert!(
                    *first == **event,
                    "seed {seed}: node {node} gives stage {} of root {} another output of stage {dep} than an earlier delivery",
                    d.stage,
                    d.root
                );
            }
        }
    }
}
