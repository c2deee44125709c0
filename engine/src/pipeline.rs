//! The per-core stage-completion bitmap index of pipeline executions.
//!
//! A pipeline is a DAG of at most 64 stages, so a set of stages is a `u64`.
//! [`Dag`] precomputes, per stage, the mask of its dependencies and of its
//! dependents. [`ExecutionIndex`] keeps, for one (pipeline, partition), the
//! live executions in a window ordered by their root event's offset, each as
//! three masks: `done`, `in_flight` and `held` (stages waiting out a retry
//! backoff, or whose output is being made durable). Completing a stage is
//! `done |= bit` and a scan of that stage's dependents, each checked with
//! one AND: constant work bounded by 64, no allocation.
//!
//! The window holds only unfinished executions, sorted by root offset, so it
//! starts at the oldest unfinished one (the low watermark) and never holds
//! more than `max_parallel`: an execution leaves it the moment it finishes
//! or fails, whatever its age.
//!
//! The index does no I/O: the server persists outputs before it calls
//! [`ExecutionIndex::complete`], and rebuilds the index from its logs on
//! start.

use std::collections::VecDeque;
use std::fmt;

/// Most stages in a pipeline: one bit each in a `u64`.
pub const STAGES_MAX: usize = 64;

/// Why stage dependencies do not form a usable DAG.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DagError {
    /// No stages, or more than [`STAGES_MAX`].
    StageCount(usize),
    /// A dependency index is out of range or a stage depends on itself.
    BadDependency {
        /// The stage.
        stage: usize,
        /// The dependency.
        dependency: usize,
    },
    /// The stages on a cycle, in order.
    Cycle(Vec<usize>),
}

impl fmt::Display for DagError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DagError::StageCount(n) => write!(f, "{n} stages; a pipeline has 1 to {STAGES_MAX}"),
            DagError::BadDependency { stage, dependency } => {
                write!(f, "stage {stage} has an invalid dependency {dependency}")
            }
            DagError::Cycle(stages) => write!(f, "the stages {stages:?} form a cycle"),
        }
    }
}

impl std::error::Error for DagError {}

/// A pipeline's stage graph as bit masks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dag {
    deps_mask: Vec<u64>,
    dependents_mask: Vec<u64>,
    roots: u64,
    all: u64,
}

impl Dag {
    /// Builds the masks from each stage's dependency indices, checking that
    /// the graph is acyclic.
    pub fn new(dependencies: &[Vec<usize>]) -> Result<Dag, DagError> {
        let n = dependencies.len();
        if n == 0 || n > STAGES_MAX {
            return Err(DagError::StageCount(n));
        }
        let mut deps_mask = vec![0u64; n];
        let mut dependents_mask = vec![0u64; n];
        for (stage, deps) in dependencies.iter().enumerate() {
            for &d in deps {
                if d >= n || d == stage {
                    return Err(DagError::BadDependency {
                        stage,
                        dependency: d,
                    });
                }
                deps_mask[stage] |= 1 << d;
                dependents_mask[d] |= 1 << stage;
            }
        }
        // Kahn's algorithm on masks: peel stages whose dependencies are done.
        let all = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
        let mut done = 0u64;
        loop {
            let ready = (0..n)
                .filter(|&s| done & (1 << s) == 0 && deps_mask[s] & !done == 0)
                .fold(0u64, |m, s| m | 1 << s);
            if ready == 0 {
                break;
            }
            done |= ready;
        }
        if done != all {
            return Err(DagError::Cycle(find_cycle(&deps_mask, all & !done)));
        }
        let roots = (0..n)
            .filter(|&s| deps_mask[s] == 0)
            .fold(0u64, |m, s| m | 1 << s);
        Ok(Dag {
            deps_mask,
            dependents_mask,
            roots,
            all,
        })
    }

    /// Number of stages.
    pub fn stages(&self) -> usize {
        self.deps_mask.len()
    }

    /// Stages without dependencies.
    pub fn roots(&self) -> u64 {
        self.roots
    }

    /// Every stage.
    pub fn all(&self) -> u64 {
        self.all
    }

    /// The dependencies of `stage`.
    pub fn deps_mask(&self, stage: usize) -> u64 {
        self.deps_mask[stage]
    }

    /// The stages that depend on `stage`.
    pub fn dependents_mask(&self, stage: usize) -> u64 {
        self.dependents_mask[stage]
    }

    /// Stages whose dependencies are all in `done` and that are not in
    /// `busy` (done, in flight or held): what may run now.
    pub fn ready(&self, done: u64, busy: u64) -> u64 {
        let mut ready = 0u64;
        let mut candidates = self.all & !busy;
        while candidates != 0 {
            let s = candidates.trailing_zeros() as usize;
            candidates &= candidates - 1;
            if self.deps_mask[s] & !done == 0 {
                ready |= 1 << s;
            }
        }
        ready
    }
}

/// Walks dependency edges among `remaining` (stages on or behind a cycle)
/// until a stage repeats, and returns the cycle.
fn find_cycle(deps_mask: &[u64], remaining: u64) -> Vec<usize> {
    let mut path: Vec<usize> = Vec::new();
    let mut s = remaining.trailing_zeros() as usize;
    loop {
        if let Some(at) = path.iter().position(|&p| p == s) {
            return path[at..].to_vec();
        }
        path.push(s);
        // Every stage left has a dependency left (else it would be done).
        let next = deps_mask[s] & remaining;
        s = next.trailing_zeros() as usize;
    }
}

/// One live execution: 32 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Execution {
    /// Offset of the root event in the source partition: the execution's id.
    pub root: u64,
    /// Stages completed (output durable).
    pub done: u64,
    /// Stages delivered and not yet settled.
    pub in_flight: u64,
    /// Stages that may not be dispatched now: waiting out a retry backoff,
    /// or completing (output being made durable).
    pub held: u64,
}

const _: () = assert!(std::mem::size_of::<Execution>() == 32);

/// What completing a stage did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// The stage was already done (a duplicate or late ack): nothing changed.
    AlreadyDone,
    /// The stage is done; these stages became ready.
    Done {
        /// Newly ready stages.
        ready: u64,
        /// Whether the execution is now complete.
        finished: bool,
    },
    /// No live execution has this root.
    Unknown,
}

/// The live executions of one pipeline on one partition.
#[derive(Debug, Clone)]
pub struct ExecutionIndex {
    dag: Dag,
    max_parallel: usize,
    /// The unfinished executions, sorted by `root`.
    window: VecDeque<Execution>,
}

impl ExecutionIndex {
    /// An empty index for `dag`, allowing `max_parallel` (≥ 1) unfinished
    /// executions.
    pub fn new(dag: Dag, max_parallel: usize) -> ExecutionIndex {
        assert!(max_parallel > 0);
        ExecutionIndex {
            dag,
            max_parallel,
            window: VecDeque::new(),
        }
    }

    /// The DAG.
    pub fn dag(&self) -> &Dag {
        &self.dag
    }

    /// Unfinished executions.
    pub fn unfinished(&self) -> usize {
        self.window.len()
    }

    /// Whether another execution may start.
    pub fn has_room(&self) -> bool {
        self.window.len() < self.max_parallel
    }

    /// The oldest unfinished execution's root, if any.
    pub fn low_watermark(&self) -> Option<u64> {
        self.window.front().map(|e| e.root)
    }

    /// The live executions, oldest first.
    pub fn executions(&self) -> impl Iterator<Item = &Execution> {
        self.window.iter()
    }

    fn position(&self, root: u64) -> Option<usize> {
        let (a, b) = self.window.as_slices();
        match a.binary_search_by_key(&root, |e| e.root) {
            Ok(i) => Some(i),
            Err(_) => b
                .binary_search_by_key(&root, |e| e.root)
                .ok()
                .map(|i| a.len() + i),
        }
    }

    /// The execution with this root.
    pub fn get(&self, root: u64) -> Option<&Execution> {
        self.position(root).map(|i| &self.window[i])
    }

    /// Starts an execution for the root event at `root` with the stages in
    /// `done` already completed (when rebuilding after a restart). Roots
    /// normally increase; a retried failed execution may go back in (it is
    /// inserted in order). Returns the stages ready to run (none when `done`
    /// already holds every stage: nothing is added), or `None` when there is
    /// no room or the root is already live.
    pub fn start(&mut self, root: u64, done: u64) -> Option<u64> {
        if !self.has_room() || self.position(root).is_some() {
            return None;
        }
        let exec = Execution {
            root,
            done: done & self.dag.all,
            in_flight: 0,
            held: 0,
        };
        if exec.done == self.dag.all {
            return Some(0);
        }
        match self.window.back() {
            Some(last) if last.root > root => {
                let at = self.window.partition_point(|e| e.root < root);
                self.window.insert(at, exec);
            }
            _ => self.window.push_back(exec),
        }
        Some(self.dag.ready(exec.done, exec.done))
    }

    /// Marks `stage` of `root` as delivered.
    pub fn dispatch(&mut self, root: u64, stage: usize) -> bool {
        let Some(i) = self.position(root) else {
            return false;
        };
        let e = &mut self.window[i];
        let bit = 1u64 << stage;
        if (e.done | e.in_flight | e.held) & bit != 0 {
            return false;
        }
        e.in_flight |= bit;
        true
    }

    /// Moves `stage` of `root` from in flight to held (a retry backoff, or
    /// an output being made durable).
    pub fn hold(&mut self, root: u64, stage: usize) {
        if let Some(i) = self.position(root) {
            let e = &mut self.window[i];
            let bit = 1u64 << stage;
            if e.done & bit == 0 {
                e.in_flight &= !bit;
                e.held |= bit;
            }
        }
    }

    /// Makes `stage` of `root` runnable again (after a backoff, a disconnect
    /// or a failed append). Returns whether it is now ready.
    pub fn release(&mut self, root: u64, stage: usize) -> bool {
        let Some(i) = self.position(root) else {
            return false;
        };
        let e = &mut self.window[i];
        let bit = 1u64 << stage;
        e.in_flight &= !bit;
        e.held &= !bit;
        e.done & bit == 0 && self.dag.deps_mask[stage] & !e.done == 0
    }

    /// Completes `stage` of `root`: O(1) bit work over the stage's
    /// dependents, no allocation.
    pub fn complete(&mut self, root: u64, stage: usize) -> Completion {
        let Some(i) = self.position(root) else {
            return Completion::Unknown;
        };
        let bit = 1u64 << stage;
        let e = &mut self.window[i];
        if e.done & bit != 0 {
            return Completion::AlreadyDone;
        }
        e.done |= bit;
        e.in_flight &= !bit;
        e.held &= !bit;
        let busy = e.done | e.in_flight | e.held;
        let mut candidates = self.dag.dependents_mask[stage] & !busy;
        let mut ready = 0u64;
        while candidates != 0 {
            let s = candidates.trailing_zeros() as usize;
            candidates &= candidates - 1;
            if self.dag.deps_mask[s] & !e.done == 0 {
                ready |= 1 << s;
            }
        }
        let finished = e.done == self.dag.all;
        if finished {
            self.window.remove(i);
        }
        Completion::Done { ready, finished }
    }

    /// Removes an unfinished execution (it failed); it stops counting
    /// against `max_parallel`. Returns it.
    pub fn remove(&mut self, root: u64) -> Option<Execution> {
        let i = self.position(root)?;
        self.window.remove(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sim::SimRng;

    /// The seed's DAG: deploy; billing, monitoring, notify after deploy;
    /// sync after all four.
    fn seed_dag() -> Dag {
        Dag::new(&[vec![], vec![0], vec![0], vec![0], vec![0, 1, 2, 3]]).unwrap()
    }

    #[test]
    fn the_seed_dag_runs_deploy_then_three_in_parallel_then_sync() {
        let mut idx = ExecutionIndex::new(seed_dag(), 50);
        assert_eq!(idx.start(10, 0), Some(0b00001));
        assert!(idx.dispatch(10, 0));
        assert!(!idx.dispatch(10, 0), "no second dispatch while in flight");
        assert_eq!(
            idx.complete(10, 0),
            Completion::Done {
                ready: 0b01110,
                finished: false
            }
        );
        for s in 1..=3 {
            assert!(idx.dispatch(10, s));
        }
        assert_eq!(
            idx.complete(10, 2),
            Completion::Done {
                ready: 0,
                finished: false
            }
        );
        assert_eq!(
            idx.complete(10, 1),
            Completion::Done {
                ready: 0,
                finished: false
            }
        );
        assert_eq!(
            idx.complete(10, 3),
            Completion::Done {
                ready: 0b10000,
                finished: false
            }
        );
        assert_eq!(idx.complete(10, 3), Completion::AlreadyDone);
        assert_eq!(
            idx.complete(10, 4),
            Completion::Done {
                ready: 0,
                finished: true
            }
        );
        assert_eq!(idx.unfinished(), 0);
        assert_eq!(
            idx.low_watermark(),
            None,
            "finished executions leave the window"
        );
        assert_eq!(idx.complete(10, 4), Completion::Unknown);
    }

    #[test]
    fn max_parallel_bounds_unfinished_executions_and_failures_free_room() {
        let mut idx = ExecutionIndex::new(seed_dag(), 2);
        assert!(idx.start(1, 0).is_some());
        assert!(idx.start(2, 0).is_some());
        assert!(!idx.has_room());
        assert_eq!(idx.start(3, 0), None);
        idx.remove(1);
        assert_eq!(idx.low_watermark(), Some(2));
        assert!(idx.start(3, 0).is_some());
        // A retried failed execution goes back in order.
        idx.remove(3);
        assert!(idx.start(1, 0b1).is_some());
        assert_eq!(
            idx.executions().map(|e| e.root).collect::<Vec<_>>(),
            vec![1, 2]
        );
    }

    #[test]
    fn later_executions_finish_first_and_leave_the_window_at_once() {
        let dag = Dag::new(&[vec![]]).unwrap();
        let mut idx = ExecutionIndex::new(dag, 3);
        for r in [5, 6, 7] {
            idx.start(r, 0);
        }
        assert!(!idx.has_room());
        idx.complete(7, 0);
        idx.complete(6, 0);
        assert_eq!(idx.low_watermark(), Some(5));
        assert_eq!(idx.unfinished(), 1);
        assert!(
            idx.start(8, 0).is_some(),
            "room again though 5 is still running"
        );
        idx.complete(5, 0);
        assert_eq!(idx.low_watermark(), Some(8));
    }

    #[test]
    fn rebuilt_executions_resume_with_their_done_stages() {
        let mut idx = ExecutionIndex::new(seed_dag(), 5);
        assert_eq!(idx.start(3, 0b00011), Some(0b01100));
        assert_eq!(idx.start(4, 0b11111), Some(0), "complete at once");
        assert_eq!(idx.unfinished(), 1);
    }

    #[test]
    fn hold_and_release_gate_dispatch() {
        let mut idx = ExecutionIndex::new(seed_dag(), 5);
        idx.start(1, 0);
        idx.dispatch(1, 0);
        idx.hold(1, 0);
        assert!(!idx.dispatch(1, 0), "held");
        assert!(idx.release(1, 0));
        assert!(idx.dispatch(1, 0));
    }

    #[test]
    fn cycles_and_bad_shapes_are_rejected() {
        assert_eq!(Dag::new(&[]), Err(DagError::StageCount(0)));
        assert_eq!(Dag::new(&vec![vec![]; 65]), Err(DagError::StageCount(65)));
        assert!(matches!(
            Dag::new(&[vec![0]]),
            Err(DagError::BadDependency { .. })
        ));
        assert!(matches!(
            Dag::new(&[vec![3]]),
            Err(DagError::BadDependency { .. })
        ));
        let err = Dag::new(&[vec![], vec![0, 3], vec![1], vec![2]]).unwrap_err();
        let DagError::Cycle(mut stages) = err else {
            panic!("{err:?}")
        };
        stages.sort();
        assert_eq!(stages, vec![1, 2, 3]);
        assert_eq!(Dag::new(&vec![vec![]; 64]).unwrap().all(), u64::MAX);
    }

    /// The index against a naive model: random DAGs, random completion
    /// orders; every stage runs exactly once per execution, only after all
    /// its dependencies, and the ready sets match a recomputation.
    #[test]
    fn property_matches_a_naive_model_on_random_dags() {
        let mut rng = SimRng::new(7);
        for case in 0..300 {
            let n = rng.below(64) as usize + 1;
            let deps: Vec<Vec<usize>> = (0..n)
                .map(|s| (0..s).filter(|_| rng.below(4) == 0).collect())
                .collect();
            let dag = Dag::new(&deps).unwrap();
            let mut idx = ExecutionIndex::new(dag.clone(), 4);
            let roots = [100u64, 101, 102];
            let mut ready: Vec<u64> = roots.iter().map(|&r| idx.start(r, 0).unwrap()).collect();
            let mut done = vec![vec![false; n]; roots.len()];
            let mut order = vec![Vec::new(); roots.len()];
            loop {
                let live: Vec<usize> = (0..roots.len()).filter(|&e| ready[e] != 0).collect();
                if live.is_empty() {
                    break;
                }
                let e = live[rng.below(live.len() as u64) as usize];
                let bits: Vec<usize> = (0..n).filter(|s| ready[e] & (1 << s) != 0).collect();
                let s = bits[rng.below(bits.len() as u64) as usize];
                assert!(idx.dispatch(roots[e], s), "case {case}");
                ready[e] &= !(1 << s);
                // Model: every dependency done before.
                assert!(
                    deps[s].iter().all(|&d| done[e][d]),
                    "case {case}: stage {s} ran early"
                );
                let Completion::Done {
                    ready: newly,
                    finished,
                } = idx.complete(roots[e], s)
                else {
                    panic!("case {case}: stage {s} not completable");
                };
                done[e][s] = true;
                order[e].push(s);
                // Model: newly ready = undone, unready stages whose deps are all done and that depend on s.
                let expect = (0..n)
                    .filter(|&t| !done[e][t] && ready[e] & (1 << t) == 0 && deps[t].contains(&s))
                    .filter(|&t| deps[t].iter().all(|&d| done[e][d]))
                    .fold(0u64, |m, t| m | 1 << t);
                assert_eq!(newly, expect, "case {case}");
                ready[e] |= newly;
                assert_eq!(finished, done[e].iter().all(|&d| d), "case {case}");
            }
            for ran in &order {
                let mut ran = ran.clone();
                ran.sort_unstable();
                assert_eq!(
                    ran,
                    (0..n).collect::<Vec<_>>(),
                    "case {case}: each stage exactly once"
                );
            }
            assert_eq!(idx.unfinished(), 0);
        }
    }
}
