//! A seeded simulation of the metadata group in one process: 3 voters
//! and a learner (node 4, added as a learner by the leader's reconciler,
//! as a node past `metaVoters` is) on the seeded network of
//! `replica_sim_support` (drops, duplicates, delays, directed cuts),
//! nodes crashing (between steps, unsynced writes dropped or torn, or
//! mid-write: the schedule the replication simulations share,
//! `node_faults`) and restarting, and clients proposing commands at
//! random nodes (following `NotLeader`). At a seeded step the roles
//! change: node 4 is promoted and a random voter demoted to a learner, in
//! one joint change. Each node's state machine is a model: the
//! commands it applied, in order, with their indexes, and its recorded
//! applied index, both durable (they survive its crashes, as the node's
//! files do).
//!
//! The leader compacts the log every [`COMPACT_EVERY`] entries (a `State`
//! entry holding the model's applied sequence; commands are padded so
//! that segments roll), and a crashed node stays down long, now and then,
//! so that it comes back behind the leader's first index and installs a
//! snapshot descriptor.
//!
//! Checked, after everything healed and every node caught up:
//! - the leader's conf state is the last target: its voters and its
//!   learners, not joint;
//! - every node's applied sequence is a prefix of one sequence (the
//!   longest), and all are equal once caught up;
//! - every command answered OK was applied on every node;
//! - no node applied an index twice or a command twice, across restarts;
//! - an OK answer is the proposer's own command's application;
//! - a `State` applied by a node that applied every entry before it holds
//!   exactly that node's sequence (the leader read it with nothing in
//!   flight); every node's final state equals the leader's;
//! - every node's log holds at most [`LOG_ENTRIES_MAX`] entries.
//!
//! `HADRON_SIM_SEED=N` replays one seed; `HADRON_SIM_DEBUG=1` narrates.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use futures::executor::LocalPool;
use futures::task::LocalSpawnExt;
use hadron_engine::storage::sim::{CrashMode, SimFaults, SimRng, SimStorage};
use hadron_engine::{Durability, Log, LogConfig, Retention};

use super::{Command, META_GROUP, Meta, MetaSnapshot, MetaState};
use crate::shard::clock::Clock;
use crate::shard::clock::sim::SimClock;
use crate::shard::error::Error;
use crate::shard::partition::replica::Replica;
use crate::shard::partition::replica_sim_support::{Net, faulted_sim, node_faults, replica_spec};
use crate::shard::sim_support::{fold_trace, run_seeds};

const SEEDS: u64 = 100;
const NODES: u64 = 4;
/// The genesis voters: nodes 1 to 3; node 4 joins as a learner.
const VOTERS: u64 = 3;
const STEPS: u64 = 600;
const STEP: Duration = Duration::from_millis(10);
const HEAL_STEPS_MAX: u64 = 3_000;
/// A proposer gives up waiting after this (the answer may still come).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
const DIR: &str = "/meta";
const EPOCH_MS: u64 = 1_700_000_000_000;
/// Entries between `State`s.
const COMPACT_EVERY: u64 = 6;
/// Padding of each command, so that a 64 KiB segment holds about 20.
const PAD_BYTES: usize = 3_000;
/// Entries one segment holds at most (commands and `State`s are at least
/// `PAD_BYTES` / a few hundred bytes; control entries are small, so
/// leave room for an election's worth).
const SEGMENT_ENTRIES_MAX: u64 = (64 << 10) / PAD_BYTES as u64 + 16;
/// The log's bound: the segment holding the last `State` and the
/// entries after it.
const LOG_ENTRIES_MAX: u64 = 2 * COMPACT_EVERY + SEGMENT_ENTRIES_MAX;
/// A crash keeps its node down this long, one time in three: long enough
/// for the others to compact past it.
const LONG_DOWN_STEPS: u64 = 250;

/// What a node's state machine keeps durably: the commands applied, by
/// index, and the applied index recorded.
#[derive(Default)]
struct Durable {
    applied: RefCell<Vec<(u64, String)>>,
    recorded: Cell<u64>,
    /// `State`s applied.
    states: Cell<u64>,
}

#[derive(Clone)]
struct Model(Rc<Durable>);

impl MetaState for Model {
    async fn apply(&self, index: u64, command: Command) -> Result<Vec<String>, Error> {
        match command {
            Command::Apply { yaml, .. } => {
                let id = yaml.lines().next().unwrap_or_default().to_owned();
                self.0.applied.borrow_mut().push((index, id.clone()));
                Ok(vec![id])
            }
            Command::State(state) => {
                let sequence = parse_sequence(&state.resources);
                if self.0.recorded.get() + 1 == index {
                    assert_eq!(
                        *self.0.applied.borrow(),
                        sequence,
                        "the State at {index} is not the state of the entries before it"
                    );
                }
                self.0.states.set(self.0.states.get() + 1);
                *self.0.applied.borrow_mut() = sequence;
                Ok(Vec::new())
            }
            other => Err(Error::Internal(format!(
                "the simulation proposes applies only, not {other:?}"
            ))),
        }
    }

    fn applied_through(&self, index: u64) -> Result<(), String> {
        self.0.recorded.set(index);
        Ok(())
    }

    fn snapshot(&self) -> Result<MetaSnapshot, Error> {
        let resources = self
            .0
            .applied
            .borrow()
            .iter()
            .map(|(index, id)| format!("{index} {id}\n"))
            .collect();
        Ok(MetaSnapshot {
            resources,
            ..MetaSnapshot::default()
        })
    }
}

/// The sequence a `State` of the model holds.
fn parse_sequence(text: &str) -> Vec<(u64, String)> {
    text.lines()
        .filter_map(|line| {
            let (index, id) = line.split_once(' ')?;
            Some((index.parse().ok()?, id.to_owned()))
        })
        .collect()
}

type SimMeta = Meta<SimStorage, SimClock, Model>;
type Answer = Rc<RefCell<Option<Result<Vec<String>, Error>>>>;

struct Node {
    storage: SimStorage,
    durable: Rc<Durable>,
    meta: Option<Rc<SimMeta>>,
    back_at: Option<u64>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Coverage {
    crashes: u64,
    proposed: u64,
    acked: u64,
    not_leader: u64,
    timeouts: u64,
    cuts: u64,
    states: u64,
    snapshots: u64,
    /// Runs whose roles changed (node 4 promoted, a voter demoted).
    swaps: u64,
}

impl std::ops::AddAssign for Coverage {
    fn add_assign(&mut self, o: Coverage) {
        self.crashes += o.crashes;
        self.proposed += o.proposed;
        self.acked += o.acked;
        self.not_leader += o.not_leader;
        self.timeouts += o.timeouts;
        self.cuts += o.cuts;
        self.states += o.states;
        self.snapshots += o.snapshots;
        self.swaps += o.swaps;
    }
}

struct Sim {
    seed: u64,
    debug: bool,
    rng: SimRng,
    clock: SimClock,
    pool: LocalPool,
    net: Rc<Net>,
    nodes: Vec<Node>,
    /// The command in flight: its id, answer, deadline.
    attempt: Option<(String, Answer, Duration)>,
    /// Where the client sends next.
    target: u64,
    next_command: u64,
    acked: BTreeSet<String>,
    crash_ppm: u32,
    cut_ppm: u32,
    coverage: Coverage,
    trace: u64,
    /// The members wanted (voters, learners), told to every node.
    roles: (Vec<u64>, Vec<u64>),
    /// The step the roles change at.
    swap_at: u64,
}

fn log_config() -> LogConfig {
    LogConfig {
        segment_bytes: 64 << 10,
        // Four allocation steps a segment: files are extended as written.
        segment_preallocate_bytes: 16 << 10,
        index_interval_bytes: 512,
        durability: Durability::Always,
        retention: Retention::default(),
        write_bytes_max: 8 << 10,
        pending_bytes_max: 64 << 10,
        batch_bytes_max: 4 << 10,
    }
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = SimRng::new(seed ^ 0x3e7a_0001);
        let clock = SimClock::new(EPOCH_MS);
        let pool = LocalPool::new();
        clock.set_spawner(pool.spawner());
        let net = Rc::new(Net::new(clock.clone(), seed, &mut rng, STEP));
        let nodes = (0..NODES)
            .map(|i| Node {
                storage: SimStorage::new(seed * 10 + i, SimFaults::default()),
                durable: Rc::default(),
                meta: None,
                back_at: None,
            })
            .collect();
        Sim {
            seed,
            debug: std::env::var("HADRON_SIM_DEBUG").is_ok(),
            crash_ppm: 1_000 + rng.below(6_000) as u32,
            cut_ppm: rng.below(4_000) as u32,
            swap_at: 150 + rng.below(250),
            rng,
            clock,
            pool,
            net,
            nodes,
            attempt: None,
            target: 1,
            next_command: 0,
            acked: BTreeSet::new(),
            coverage: Coverage::default(),
            trace: 0,
            roles: ((1..=VOTERS).collect(), vec![NODES]),
        }
    }

    fn say(&self, what: impl FnOnce() -> String) {
        if self.debug {
            eprintln!("[seed {} t={:?}] {}", self.seed, self.clock.now(), what());
        }
    }

    /// Opens node `id`'s group on its log, its model at its recorded index.
    fn open(&mut self, id: u64) {
        let ticks = 10 + ((self.seed + id * 7) % 9) as usize;
        let mut spec = replica_spec(&self.net, id, VOTERS, META_GROUP, ticks);
        if id > VOTERS {
            // Added to a running group: it learns its conf state.
            spec.voters = Vec::new();
        }
        let node = &self.nodes[id as usize - 1];
        let (storage, clock) = (node.storage.clone(), self.clock.clone());
        let model = Model(node.durable.clone());
        let applied = node.durable.recorded.get();
        let meta = self.pool.run_until(async move {
            let log = Rc::new(
                Log::open(storage, Path::new(DIR), log_config())
                    .await
                    .map_err(|e| e.to_string())?,
            );
            let replica = Replica::open(log.clone(), spec, clock.clone(), None).await?;
            Ok::<_, String>(Rc::new(Meta::new(
                Rc::new(replica),
                log,
                model,
                clock,
                applied,
                COMPACT_EVERY,
            )))
        });
        let meta = meta.unwrap_or_else(|e| panic!("seed {}: node {id} opens: {e}", self.seed));
        let (voters, learners) = self.roles.clone();
        meta.replica
            .set_target(voters, learners)
            .unwrap_or_else(|e| panic!("seed {}: node {id}'s target: {e}", self.seed));
        let _ = self.pool.spawner().spawn_local(meta.clone().drive());
        self.nodes[id as usize - 1].meta = Some(meta);
    }

    /// Promotes node 4 and demotes a random voter, told to every node up
    /// (the others at their next open).
    fn swap_roles(&mut self) {
        let demoted = 1 + self.rng.below(VOTERS);
        let mut voters: Vec<u64> = (1..=NODES).filter(|&id| id != demoted).collect();
        voters.sort_unstable();
        self.roles = (voters, vec![demoted]);
        self.coverage.swaps += 1;
        self.say(|| format!("roles: voters and learners {:?}", self.roles));
        for node in &self.nodes {
            if let Some(meta) = &node.meta {
                let (voters, learners) = self.roles.clone();
                meta.replica
                    .set_target(voters, learners)
                    .unwrap_or_else(|e| panic!("seed {}: a target: {e}", self.seed));
            }
        }
    }

    fn crash(&mut self, id: u64, step: u64) {
        let torn = self.rng.below(2) == 0;
        let node = &mut self.nodes[id as usize - 1];
        if let Some(meta) = node.meta.take() {
            self.coverage.snapshots += meta.replica.snapshots_installed();
            meta.replica.halt();
        }
        node.storage.crash(if torn {
            CrashMode::Torn
        } else {
            CrashMode::DropUnsynced
        });
        let long = self.rng.below(3) == 0;
        let down = if long { LONG_DOWN_STEPS } else { 20 };
        node.back_at = Some(step + down + self.rng.below(200));
        self.coverage.crashes += 1;
        self.trace = fold_trace(self.trace, 1_000 + id);
        self.say(|| format!("node {id} crashes (torn: {torn})"));
    }

    fn faults(&mut self, step: u64) {
        let (net, crash_ppm, cut_ppm) = (self.net.clone(), self.crash_ppm, self.cut_ppm);
        if node_faults(self, &net, step, crash_ppm, cut_ppm).is_some() {
            self.coverage.cuts += 1;
        }
    }

    fn deliver(&mut self) {
        for m in self.net.due() {
            self.trace = fold_trace(self.trace, m.msg.get_msg_type() as u64 ^ (m.to << 8));
            if let Some(meta) = &self.nodes[m.to as usize - 1].meta {
                meta.replica.step(m.msg);
            }
        }
    }

    /// The client: settles its attempt, or proposes a new command at the
    /// node it believes leads.
    fn client(&mut self, proposing: bool) {
        if let Some((id, answer, deadline)) = self.attempt.clone() {
            let result = answer.borrow_mut().take();
            match result {
                None if self.clock.now() >= deadline => {
                    self.coverage.timeouts += 1;
                    self.target = 1 + self.rng.below(NODES);
                }
                None => return,
                Some(Ok(lines)) => {
                    assert_eq!(
                        lines,
                        std::slice::from_ref(&id),
                        "seed {}: {id}'s answer",
                        self.seed
                    );
                    self.coverage.acked += 1;
                    self.trace = fold_trace(self.trace, self.next_command);
                    self.acked.insert(id);
                }
                Some(Err(Error::NotLeader { leader, .. })) => {
                    self.coverage.not_leader += 1;
                    self.target = match leader {
                        Some(l) => l.node_id,
                        None => 1 + self.rng.below(NODES),
                    };
                }
                Some(Err(e)) => {
                    self.say(|| format!("{id}: {e}"));
                    self.target = 1 + self.rng.below(NODES);
                }
            }
            self.attempt = None;
        }
        if !proposing || self.rng.below(4) != 0 {
            return;
        }
        let Some(meta) = self.nodes[self.target as usize - 1].meta.clone() else {
            self.target = 1 + self.rng.below(NODES);
            return;
        };
        let id = format!("cmd-{}", self.next_command);
        self.next_command += 1;
        self.coverage.proposed += 1;
        let answer: Answer = Rc::default();
        let slot = answer.clone();
        let command = Command::Apply {
            yaml: format!("{id}\n#{}", "x".repeat(PAD_BYTES)),
            force: false,
            placement: Vec::new(),
        };
        let _ = self.pool.spawner().spawn_local(async move {
            let result = match meta.ready().await {
                Ok(()) => meta.propose(&command).await,
                Err(e) => Err(e),
            };
            *slot.borrow_mut() = Some(result);
        });
        self.attempt = Some((id, answer, self.clock.now() + CLIENT_TIMEOUT));
    }

    fn step(&mut self) {
        self.clock.advance(STEP);
        self.pool.run_until_stalled();
        self.deliver();
        self.pool.run_until_stalled();
    }

    fn caught_up(&self) -> bool {
        let metas: Vec<&Rc<SimMeta>> = self.nodes.iter().filter_map(|n| n.meta.as_ref()).collect();
        if metas.len() != NODES as usize || self.attempt.is_some() {
            return false;
        }
        let s: Vec<_> = metas.iter().map(|m| m.replica.status()).collect();
        let reconciled = metas.iter().any(|m| {
            let cs = m.replica.conf_state();
            let mut voters = cs.voters.clone();
            voters.sort_unstable();
            m.replica.is_leader()
                && cs.voters_outgoing.is_empty()
                && (voters, cs.learners) == self.roles
        });
        reconciled
            && s.iter().filter(|r| r.is_leader).count() == 1
            && metas
                .iter()
                .zip(&s)
                .all(|(m, r)| r.commit == s[0].last_index && m.applied() == s[0].last_index)
    }

    fn run(mut self) -> (u64, Coverage) {
        for id in 1..=NODES {
            self.open(id);
        }
        for step in 0..STEPS {
            if step == self.swap_at {
                self.swap_roles();
            }
            self.faults(step);
            self.client(true);
            self.step();
        }
        self.net.heal_all();
        // A crash armed mid-write that has not struck yet: now or never.
        for id in 1..=NODES {
            let node = &self.nodes[id as usize - 1];
            if node.meta.is_some() && node.storage.is_frozen() {
                self.crash(id, STEPS);
            } else {
                node.storage.disarm_crash();
            }
        }
        for id in 1..=NODES {
            if self.nodes[id as usize - 1].meta.is_none() {
                self.nodes[id as usize - 1].back_at = None;
                self.open(id);
            }
        }
        let mut settled = false;
        for _ in 0..HEAL_STEPS_MAX {
            self.client(false);
            self.step();
            if self.caught_up() {
                settled = true;
                break;
            }
        }
        assert!(
            settled,
            "seed {}: not caught up after healing: {:?}",
            self.seed,
            self.nodes
                .iter()
                .map(|n| n.meta.as_ref().map(|m| (m.applied(), m.replica.status())))
                .collect::<Vec<_>>()
        );
        self.check();
        for node in &self.nodes {
            self.coverage.states += node.durable.states.get();
            if let Some(meta) = &node.meta {
                self.coverage.snapshots += meta.replica.snapshots_installed();
            }
        }
        (self.trace, self.coverage)
    }

    /// The checks of the module header.
    fn check(&self) {
        let seed = self.seed;
        let leader_conf = self
            .nodes
            .iter()
            .filter_map(|n| n.meta.as_ref())
            .find(|m| m.replica.is_leader())
            .map(|m| m.replica.conf_state())
            .unwrap_or_else(|| panic!("seed {seed}: no leader"));
        let mut voters = leader_conf.voters.clone();
        voters.sort_unstable();
        assert_eq!(
            (
                voters,
                leader_conf.learners.clone(),
                leader_conf.voters_outgoing.is_empty()
            ),
            (self.roles.0.clone(), self.roles.1.clone(), true),
            "seed {seed}: the leader's conf state is not the last target"
        );
        let sequences: Vec<Vec<(u64, String)>> = self
            .nodes
            .iter()
            .map(|n| n.durable.applied.borrow().clone())
            .collect();
        let longest = sequences
            .iter()
            .max_by_key(|s| s.len())
            .cloned()
            .unwrap_or_default();
        for (i, s) in sequences.iter().enumerate() {
            assert!(
                longest.starts_with(s),
                "seed {seed}: node {}'s applied sequence is no prefix of the longest",
                i + 1
            );
            assert_eq!(s.len(), longest.len(), "seed {seed}: node {} behind", i + 1);
            let indexes: BTreeSet<u64> = s.iter().map(|e| e.0).collect();
            let ids: BTreeSet<&String> = s.iter().map(|e| &e.1).collect();
            assert_eq!(
                indexes.len(),
                s.len(),
                "seed {seed}: an index applied twice"
            );
            assert_eq!(ids.len(), s.len(), "seed {seed}: a command applied twice");
            assert!(
                s.windows(2).all(|w| w[0].0 < w[1].0),
                "seed {seed}: node {} applied out of order",
                i + 1
            );
        }
        let leader = self
            .nodes
            .iter()
            .position(|n| n.meta.as_ref().is_some_and(|m| m.replica.is_leader()))
            .unwrap_or_else(|| panic!("seed {seed}: no leader"));
        for (i, n) in self.nodes.iter().enumerate() {
            assert_eq!(
                sequences[i],
                sequences[leader],
                "seed {seed}: node {}'s state is not the leader's",
                i + 1
            );
            let log = &n.meta.as_ref().expect("caught up: open").log;
            let held = log.last_index() + 1 - log.first_index();
            assert!(
                held <= LOG_ENTRIES_MAX,
                "seed {seed}: node {}'s log holds {held} entries ({}..={}), more than {LOG_ENTRIES_MAX}",
                i + 1,
                log.first_index(),
                log.last_index()
            );
        }
        let applied: BTreeMap<&String, u64> = longest.iter().map(|(i, id)| (id, *i)).collect();
        for id in &self.acked {
            assert!(
                applied.contains_key(id),
                "seed {seed}: {id} was answered OK and is not applied"
            );
        }
    }
}

#[test]
fn meta_group_sim_applies_one_sequence_on_every_node() {
    let (seeds, coverage) = run_seeds("meta_group_sim", SEEDS, |seed| Sim::new(seed).run().1);
    if seeds as u64 == SEEDS {
        assert!(coverage.acked > SEEDS, "{coverage:?}");
        assert!(
            coverage.crashes > 0 && coverage.not_leader > 0,
            "{coverage:?}"
        );
        // Compaction ran, and nodes far behind caught up by a snapshot.
        assert!(
            coverage.states > SEEDS && coverage.snapshots > 0,
            "{coverage:?}"
        );
        assert_eq!(coverage.swaps, SEEDS, "{coverage:?}");
    }
}

#[test]
fn meta_group_sim_replays_a_seed_bit_for_bit() {
    for seed in [3, 17] {
        assert_eq!(
            Sim::new(seed).run().0,
            Sim::new(seed).run().0,
            "seed {seed}"
        );
    }
}

faulted_sim!(up: meta, count: |_s| NODES);
