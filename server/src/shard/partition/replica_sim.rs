//! The seeded simulation of a replicated partition: three nodes, each a
//! real [`Partition`] with its Raft group (`replica.rs`) on its own
//! `SimStorage`, one `SimClock`, and a seeded network between them, driven
//! by clients that publish batches with fixed ids and retry them (same
//! ids) until acknowledged, following `NotLeader` hints.
//!
//! **Faults** (rates drawn per seed): messages dropped, duplicated and
//! delayed (so reordered); directed links cut and healed; nodes crashed,
//! between steps or in the middle of a write (the storage stops at an
//! operation chosen by the seed), their unsynced writes lost or torn, and
//! restarted later; at most one down at a time or, sometimes, two (no
//! quorum for a while); and, at a restart now and then, damage to the
//! restarting node's log (one node at a time: recovery needs one good
//! copy): a bit flipped in a sealed segment's batch (its index file kept,
//! removed or cut short), in a batch header, or in the active segment
//! below or past its durable watermark (`damage.rs`), which it must find,
//! cut and refill from the leader (`replica_repair.rs`).
//!
//! **Retention** runs on every node (128 KiB over 64 KiB segments, of
//! about 500 KiB written per seed: most segments go), so a follower that was down or cut off often finds its
//! next entries deleted on the leader and installs a snapshot descriptor
//! (docs/replication.md section 8); the runs count those installs.
//!
//! **Checked** against a model, after everything healed and a fresh
//! publish committed:
//! - every acknowledged event the leader still retains is in its log
//!   once, at the offset it was acknowledged at (and every later answer
//!   for its id agrees);
//! - every node's log is byte for byte the same over the Raft indexes
//!   every node holds: no offset holds two different events on two nodes;
//! - offsets are dense from the leader's start and every stored event is
//!   one a client sent.
//!
//! Replay one seed: `HADRON_SIM_SEED=N cargo test -p hadron-server
//! replica_sim`; `HADRON_SIM_DEBUG=1` narrates the faults.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use futures::executor::LocalPool;
use futures::task::LocalSpawnExt;
use hadron_engine::storage::sim::{CrashMode, SimFaults, SimRng, SimStorage};
use hadron_engine::{Durability, LogConfig, Retention};
use hadron_wire::Limits;

use super::replica_sim_support::{Net, faulted_sim, node_faults, replica_spec};
use super::{DedupLimits, Partition};
use crate::shard::Error;
use crate::shard::clock::Clock;
use crate::shard::clock::sim::SimClock;
use crate::shard::sim_support::{fold_trace, run_seeds};

const SEEDS: u64 = 200;
const NODES: u64 = 3;
/// Simulated steps of [`STEP`] each, with faults.
const STEPS: u64 = 1_200;
const STEP: Duration = Duration::from_millis(10);
/// Steps the final healing may take.
const HEAL_STEPS_MAX: u64 = 3_000;
const CLIENTS: usize = 3;
/// Bytes each event's data is padded with.
const EVENT_PAD_BYTES: usize = 300;
/// A client gives up waiting for an answer after this and retries the
/// same events elsewhere (the answer may still come).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
const DIR: &str = "/sim";
const EPOCH_MS: u64 = 1_700_000_000_000;

type SimPartition = Partition<SimStorage, SimClock>;

/// Small segments, so that they roll and a cut crosses them; a retention
/// that deletes most of them, so that followers behind it install
/// snapshots.
fn log_config() -> LogConfig {
    LogConfig {
        segment_bytes: 64 << 10,
        // Four allocation steps a segment: files are extended as written.
        segment_preallocate_bytes: 16 << 10,
        index_interval_bytes: 512,
        durability: Durability::Always,
        retention: Retention {
            max_age_ms: None,
            max_bytes: Some(128 << 10),
        },
        write_bytes_max: 8 << 10,
        pending_bytes_max: 64 << 10,
        batch_bytes_max: 4 << 10,
    }
}

/// What the simulation exercised, summed over seeds.
#[derive(Debug, Default, Clone, Copy)]
struct Coverage {
    crashes: u64,
    leaders: u64,
    acked: u64,
    duplicates: u64,
    not_leader: u64,
    timeouts: u64,
    dropped: u64,
    duplicated: u64,
    cuts: u64,
    /// Logs damaged (a bit flipped in a stored event batch) before a
    /// restart, and recoveries that ended (the replica voting again).
    damaged: u64,
    recovered: u64,
    /// Of those damaged, per kind (`damage.rs`).
    damage_kinds: damage::DamageCounts,
    /// Snapshots installed (a follower's log restarted after the leader's
    /// retention point).
    installs: u64,
}

impl std::ops::AddAssign for Coverage {
    fn add_assign(&mut self, o: Coverage) {
        self.crashes += o.crashes;
        self.leaders += o.leaders;
        self.acked += o.acked;
        self.duplicates += o.duplicates;
        self.not_leader += o.not_leader;
        self.timeouts += o.timeouts;
        self.dropped += o.dropped;
        self.duplicated += o.duplicated;
        self.cuts += o.cuts;
        self.damaged += o.damaged;
        self.recovered += o.recovered;
        self.damage_kinds += o.damage_kinds;
        self.installs += o.installs;
    }
}

/// What a publish attempt came back with.
type Answer = Rc<RefCell<Option<Result<Vec<(u64, bool)>, Error>>>>;

/// A client: its batch (event ids and bytes) until acknowledged, the node
/// it believes leads, and the attempt under way.
struct ClientState {
    batch: Vec<(String, Vec<u8>)>,
    leader: u64,
    attempt: Option<(Answer, Duration)>,
    next_batch: u64,
}

struct Node {
    storage: SimStorage,
    partition: Option<Rc<SimPartition>>,
    /// The step it comes back at, while down.
    back_at: Option<u64>,
    /// Snapshots its replica installed, as last counted.
    installs_seen: u64,
}

struct Sim {
    seed: u64,
    debug: bool,
    rng: SimRng,
    clock: SimClock,
    pool: LocalPool,
    net: Rc<Net>,
    nodes: Vec<Node>,
    clients: Vec<ClientState>,
    /// Acknowledged ids and their offsets.
    acked: BTreeMap<String, u64>,
    /// Every event bytes a client made, by id.
    made: BTreeMap<String, Vec<u8>>,
    crash_ppm: u32,
    cut_ppm: u32,
    terms_led: BTreeSet<(u64, u64)>,
    /// Per node, whether its replica was recovering at the last step.
    recovering_seen: Vec<bool>,
    coverage: Coverage,
    trace: u64,
    /// Nodes in the net (the partition's replicas and spares).
    n: u64,
    /// The replicas checked after healing (the final target of a run with
    /// moves).
    members: Vec<u64>,
    /// Replica moves, in a run with them (`replica_sim/moves.rs`).
    moves: Option<moves::MoveRun>,
}

/// The simulated partition `s/0` on `storage`, opened (recovering it) as
/// a replicated partition's log is, before its groups start.
async fn open_partition(
    storage: &SimStorage,
    clock: SimClock,
) -> Result<Partition<SimStorage, SimClock>, String> {
    Partition::open_as(
        storage,
        clock,
        Path::new(DIR),
        "s",
        0,
        (
            log_config(),
            DedupLimits {
                window_ms: 0,
                keys_max: 1 << 20,
            },
            Limits::DEFAULT,
            crate::config::server::GROUPS_MAX_DEFAULT,
        ),
        true,
    )
    .await
}

impl Sim {
    fn new(seed: u64) -> Sim {
        Sim::with_nodes(seed, NODES)
    }

    /// The simulation over `n` nodes, the partition on the first
    /// [`NODES`].
    fn with_nodes(seed: u64, n: u64) -> Sim {
        let mut rng = SimRng::new(seed ^ 0x5eed_7e91);
        let clock = SimClock::new(EPOCH_MS);
        let pool = LocalPool::new();
        clock.set_spawner(pool.spawner());
        let net = Rc::new(Net::new(clock.clone(), seed, &mut rng, STEP));
        let nodes = (0..n)
            .map(|i| Node {
                storage: SimStorage::new(seed * 10 + i, SimFaults::default()),
                partition: None,
                back_at: None,
                installs_seen: 0,
            })
            .collect();
        let clients = (0..CLIENTS)
            .map(|_| ClientState {
                batch: Vec::new(),
                leader: 1,
                attempt: None,
                next_batch: 0,
            })
            .collect();
        Sim {
            seed,
            debug: std::env::var("HADRON_SIM_DEBUG").is_ok(),
            crash_ppm: 1_000 + rng.below(4_000) as u32,
            cut_ppm: rng.below(4_000) as u32,
            rng,
            clock,
            pool,
            net,
            nodes,
            clients,
            acked: BTreeMap::new(),
            made: BTreeMap::new(),
            terms_led: BTreeSet::new(),
            recovering_seen: vec![false; n as usize],
            coverage: Coverage::default(),
            trace: 0,
            n,
            members: (1..=NODES).collect(),
            moves: None,
        }
    }

    fn say(&self, what: impl FnOnce() -> String) {
        if self.debug {
            eprintln!("[seed {} t={:?}] {}", self.seed, self.clock.now(), what());
        }
    }

    /// Before node `id` restarts: its files are damaged now and then
    /// (`damage.rs`), never while a replica is still recovering.
    fn damage_at_restart(&mut self, id: u64) {
        if self.rng.below(3) == 0 && !self.any_recovering() {
            self.damage(id as usize - 1);
        }
    }

    /// Opens node `id`'s partition (recovering it) and starts its group.
    fn open(&mut self, id: u64) {
        // An election timeout per node, varied by seed.
        let ticks = 10 + ((self.seed + id * 7) % 9) as usize;
        let mut spec = replica_spec(&self.net, id, NODES, "s", ticks);
        let target = self.moves_open(id, &mut spec);
        let node = &self.nodes[id as usize - 1];
        let (storage, clock) = (node.storage.clone(), self.clock.clone());
        let p = self.pool.run_until(async move {
            let mut p = open_partition(&storage, clock).await?;
            let dedup = DedupLimits {
                window_ms: 600_000,
                keys_max: 1 << 20,
            };
            p.replicate(spec, None, &storage, dedup).await?;
            Ok::<_, String>(Rc::new(p))
        });
        let p = p.unwrap_or_else(|e| panic!("seed {}: node {id} does not open: {e}", self.seed));
        if let (Some(t), Some(r)) = (target, &p.replica) {
            r.set_target_voters(t)
                .unwrap_or_else(|e| panic!("seed {}: {e}", self.seed));
        }
        let _ = self
            .pool
            .spawner()
            .spawn_local(p.clone().drive_replication());
        self.nodes[id as usize - 1].partition = Some(p);
        self.nodes[id as usize - 1].installs_seen = 0;
    }

    /// Node `id` crashes: its group stops, its unsynced writes are lost
    /// (or torn), and it is back some steps later. `frozen`: its storage
    /// already stopped at an armed operation (mid-write).
    fn crash(&mut self, id: u64, step: u64) {
        let torn = self.rng.below(2) == 0;
        let node = &mut self.nodes[id as usize - 1];
        if let Some(p) = node.partition.take()
            && let Some(r) = &p.replica
        {
            r.halt();
        }
        let mode = if torn {
            CrashMode::Torn
        } else {
            CrashMode::DropUnsynced
        };
        if node.storage.is_frozen() {
            node.storage.restart(mode);
        } else {
            node.storage.crash(mode);
        }
        node.storage.disarm_crash();
        node.back_at = Some(step + 20 + self.rng.below(200));
        self.coverage.crashes += 1;
        self.trace = fold_trace(self.trace, 1_000 + id);
        self.say(|| format!("node {id} crashes (torn: {torn})"));
    }

    /// Whether a node is refilling a damaged log (its marker is there):
    /// damage stays on a minority, one replica at a time, as the recovery
    /// needs one good copy of every acknowledged batch.
    fn any_recovering(&self) -> bool {
        self.nodes.iter().any(|n| {
            n.storage
                .paths()
                .iter()
                .any(|p| p.ends_with(super::replica_repair::RECOVERING_FILE))
        })
    }

    /// Random faults of one step, and their ends.
    fn faults(&mut self, step: u64) {
        let (net, crash_ppm, cut_ppm) = (self.net.clone(), self.crash_ppm, self.cut_ppm);
        if node_faults(self, &net, step, crash_ppm, cut_ppm).is_some() {
            self.coverage.cuts += 1;
        }
    }

    /// Delivers the messages due to the nodes that are up.
    fn deliver(&mut self) {
        for m in self.net.due() {
            self.trace = fold_trace(self.trace, m.msg.get_msg_type() as u64 ^ (m.to << 8));
            if let Some(r) = self.nodes[m.to as usize - 1]
                .partition
                .as_ref()
                .and_then(|p| p.replica.clone())
            {
                r.step(m.msg);
            }
        }
    }

    /// A fresh batch for client `c`.
    fn new_batch(&mut self, c: usize) {
        let n = self.clients[c].next_batch;
        self.clients[c].next_batch += 1;
        let count = 1 + self.rng.below(3);
        let batch: Vec<(String, Vec<u8>)> = (0..count)
            .map(|i| {
                let id = format!("c{c}-{n}-{i}");
                // Padded, so that a seed writes several times what
                // retention keeps.
                let data = format!("{id}:{}:{:0>EVENT_PAD_BYTES$}", self.rng.below(1 << 20), 0);
                let bytes = hadron_wire::encode_event(&hadron_wire::EventRef {
                    id: &id,
                    source: "sim",
                    ty: "t",
                    data: data.as_bytes(),
                    ..hadron_wire::EventRef::default()
                });
                (id, bytes)
            })
            .collect();
        for (id, bytes) in &batch {
            self.made.insert(id.clone(), bytes.clone());
        }
        self.clients[c].batch = batch;
    }

    /// Starts client `c`'s attempt at the node it believes leads.
    fn attempt(&mut self, c: usize) {
        let answer: Answer = Rc::new(RefCell::new(None));
        let target = self.clients[c].leader;
        if let Some(p) = self.nodes[target as usize - 1].partition.clone() {
            let events: Vec<Vec<u8>> = self.clients[c].batch.iter().map(|b| b.1.clone()).collect();
            let slot = answer.clone();
            let _ = self.pool.spawner().spawn_local(async move {
                let result = p.publish(&events).await.map(|published| published.results);
                *slot.borrow_mut() = Some(result);
            });
        } else {
            // Node down: as a refused connection.
            self.clients[c].leader = 1 + self.rng.below(self.n);
            return;
        }
        self.clients[c].attempt = Some((answer, self.clock.now() + CLIENT_TIMEOUT));
    }

    /// Records what client `c`'s attempt answered, if it did.
    fn settle(&mut self, c: usize) {
        let Some((answer, deadline)) = self.clients[c].attempt.clone() else {
            return;
        };
        let result = answer.borrow_mut().take();
        match result {
            None if self.clock.now() >= deadline => {
                self.coverage.timeouts += 1;
                self.clients[c].attempt = None;
                self.clients[c].leader = 1 + self.rng.below(self.n);
            }
            None => {}
            Some(Ok(results)) => {
                let batch = std::mem::take(&mut self.clients[c].batch);
                assert_eq!(
                    results.len(),
                    batch.len(),
                    "seed {}: one result per event",
                    self.seed
                );
                for ((id, _), (offset, duplicate)) in batch.iter().zip(results) {
                    if duplicate {
                        self.coverage.duplicates += 1;
                    }
                    match self.acked.get(id) {
                        Some(&first) => assert_eq!(
                            first, offset,
                            "seed {}: event {id} acknowledged at {first} and again at {offset}",
                            self.seed
                        ),
                        None => {
                            self.acked.insert(id.clone(), offset);
                        }
                    }
                    self.coverage.acked += 1;
                    self.trace = fold_trace(self.trace, offset);
                }
                self.clients[c].attempt = None;
            }
            Some(Err(Error::NotLeader { leader, .. })) => {
                self.coverage.not_leader += 1;
                self.clients[c].leader = match leader {
                    Some(l) => l.node_id,
                    None => 1 + self.rng.below(self.n),
                };
                self.clients[c].attempt = None;
            }
            Some(Err(e)) => {
                self.say(|| format!("client {c}: {e}"));
                self.clients[c].attempt = None;
                self.clients[c].leader = 1 + self.rng.below(self.n);
            }
        }
    }

    fn clients(&mut self, publishing: bool) {
        for c in 0..CLIENTS {
            self.settle(c);
            if self.clients[c].attempt.is_some() {
                continue;
            }
            if self.clients[c].batch.is_empty() {
                if !publishing || self.rng.below(3) != 0 {
                    continue;
                }
                self.new_batch(c);
            }
            self.attempt(c);
        }
    }

    fn note_leaders(&mut self) {
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some(r) = n.partition.as_ref().and_then(|p| p.replica.as_ref()) {
                let now = r.recovering();
                if self.recovering_seen[i] && !now {
                    self.coverage.recovered += 1;
                }
                self.recovering_seen[i] = now;
            }
        }
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some(r) = n.partition.as_ref().and_then(|p| p.replica.as_ref())
                && r.is_leader()
            {
                let term = r.status().term;
                if self.terms_led.insert((term, i as u64 + 1)) {
                    self.coverage.leaders += 1;
                }
            }
        }
    }

    fn step(&mut self) {
        self.clock.advance(STEP);
        self.pool.run_until_stalled();
        self.deliver();
        self.pool.run_until_stalled();
        self.note_leaders();
        self.count_installs();
        self.count_moves();
    }

    fn count_installs(&mut self) {
        for n in &mut self.nodes {
            if let Some(r) = n.partition.as_ref().and_then(|p| p.replica.as_ref()) {
                let now = r.snapshots_installed();
                self.coverage.installs += now - n.installs_seen;
                n.installs_seen = now;
            }
        }
    }

    fn run(mut self) -> (u64, Coverage) {
        for id in 1..=self.n {
            self.open(id);
        }
        for step in 0..STEPS {
            self.faults(step);
            self.move_step(step);
            self.clients(true);
            self.step();
        }
        self.heal();
        self.check();
        self.check_moves();
        self.coverage.dropped = self.net.dropped.get();
        self.coverage.duplicated = self.net.duplicated.get();
        (self.trace, self.coverage)
    }

    /// Everything heals and restarts; the clients finish their batches;
    /// then steps run until every node has applied the same last index.
    fn heal(&mut self) {
        self.net.heal_all();
        // A crash armed mid-write that has not struck yet: now or never.
        for id in 1..=self.n {
            let node = &self.nodes[id as usize - 1];
            if node.partition.is_some() && node.storage.is_frozen() {
                self.crash(id, STEPS);
            } else {
                node.storage.disarm_crash();
            }
        }
        for i in 0..self.n as usize {
            if self.nodes[i].partition.is_none() {
                self.nodes[i].back_at = None;
                self.open(i as u64 + 1);
            }
        }
        for _ in 0..HEAL_STEPS_MAX {
            self.clients(false);
            self.step();
            let idle = self.clients.iter().all(|c| c.batch.is_empty());
            if idle && self.converged() {
                return;
            }
        }
        panic!(
            "seed {}: the cluster did not settle in {HEAL_STEPS_MAX} steps after healing: {:?}",
            self.seed,
            (1..=self.n)
                .map(|id| self.nodes[id as usize - 1]
                    .partition
                    .as_ref()?
                    .replica
                    .as_ref()
                    .map(|r| r.status()))
                .collect::<Vec<_>>()
        );
    }

    fn statuses(&self) -> Vec<super::replica::ReplicaStatus> {
        self.member_nodes()
            .filter_map(|n| n.partition.as_ref()?.replica.as_ref().map(|r| r.status()))
            .collect()
    }

    fn converged(&self) -> bool {
        let s = self.statuses();
        s.len() == self.members.len()
            && self.moves_settled()
            && s.iter().filter(|r| r.is_leader).count() == 1
            && s.iter().all(|r| {
                (r.commit, r.applied, r.last_index, r.high_watermark)
                    == (
                        s[0].last_index,
                        s[0].last_index,
                        s[0].last_index,
                        s[0].high_watermark,
                    )
            })
    }

    /// The nodes of the replicas checked after healing.
    fn member_nodes(&self) -> impl Iterator<Item = &Node> {
        self.members.iter().map(|&id| &self.nodes[id as usize - 1])
    }

    /// The model's checks (module header).
    fn check(&mut self) {
        let seed = self.seed;
        let parts: Vec<_> = self.member_nodes().map(|n| n.partition.clone()).collect();
        let logs: Vec<Vec<(u64, Vec<u8>)>> = parts
            .into_iter()
            .map(|p| {
                let p = p.expect("every node is up after healing");
                self.pool.run_until(async move {
                    let log = p.log.clone();
                    let last = log.last_index();
                    let mut out = Vec::new();
                    let mut at = log.first_index();
                    while at <= last {
                        let got = log
                            .entries(at, last + 1, 1 << 20)
                            .await
                            .unwrap_or_else(|e| panic!("seed {seed}: reading entry {at}: {e}"));
                        for b in &got {
                            out.push((b.index, b.bytes.to_vec()));
                        }
                        at += got.len() as u64;
                    }
                    out
                })
            })
            .collect();
        // Retention runs on each node by its own sizes: compare the
        // indexes every node holds.
        let common = logs
            .iter()
            .map(|l| l.first().map_or(u64::MAX, |e| e.0))
            .max()
            .unwrap_or(0);
        let from = |l: &Vec<(u64, Vec<u8>)>| -> Vec<(u64, Vec<u8>)> {
            l.iter().filter(|e| e.0 >= common).cloned().collect()
        };
        let reference = from(&logs[0]);
        assert!(
            !reference.is_empty(),
            "seed {seed}: the nodes hold no index in common"
        );
        for (i, log) in logs.iter().enumerate().skip(1) {
            assert!(
                from(log) == reference,
                "seed {seed}: node {} holds another log than node 1 from index {common} ({} and {} entries)",
                i + 1,
                log.len(),
                logs[0].len()
            );
        }
        let leader = self
            .member_nodes()
            .filter_map(|n| n.partition.clone())
            .find(|p| p.replica.as_ref().is_some_and(|r| r.is_leader()))
            .expect("a leader after healing");
        let start = leader.log.stats().start_offset;
        let records = self
            .pool
            .run_until(async move { crate::shard::sim_support::read_back(&leader).await });
        let mut stored: BTreeMap<String, u64> = BTreeMap::new();
        for (i, (offset, _, bytes)) in records.iter().enumerate() {
            assert_eq!(
                *offset,
                start + i as u64,
                "seed {seed}: offsets are dense from the leader's start {start}"
            );
            let event = hadron_wire::decode_event(bytes, &Limits::DEFAULT)
                .unwrap_or_else(|e| panic!("seed {seed}: offset {offset} holds no event: {e}"));
            assert_eq!(
                self.made.get(event.id),
                Some(bytes),
                "seed {seed}: offset {offset} holds an event no client sent"
            );
            if let Some(first) = stored.insert(event.id.to_owned(), *offset) {
                panic!(
                    "seed {seed}: event {} stored twice, at {first} and {offset}",
                    event.id
                );
            }
        }
        for (id, offset) in self.acked.iter().filter(|(_, o)| **o >= start) {
            assert_eq!(
                stored.get(id),
                Some(offset),
                "seed {seed}: acknowledged event {id} is not at offset {offset}"
            );
        }
    }
}

/// Every seed: the checks of the module header; and a few of each fault
/// over all seeds, so that a change that stops the simulation from
/// reaching them is noticed.
mod damage;
mod disk_full;
mod moves;
mod offsets_restart;
mod stop;

#[test]
fn replica_sim_keeps_every_acknowledged_event_once_on_every_node() {
    let (seeds, total) = run_seeds("replica_sim", SEEDS, |seed| Sim::new(seed).run().1);
    let per = |n: u64| n as f64 / seeds as f64;
    assert!(per(total.crashes) >= 1.0, "{total:?}");
    assert!(per(total.leaders) >= 2.0, "{total:?}");
    assert!(per(total.acked) >= 50.0, "{total:?}");
    assert!(
        total.not_leader > 0 && total.duplicates > 0 && total.timeouts > 0,
        "{total:?}"
    );
    assert!(
        total.cuts > 0 && total.dropped > 0 && total.duplicated > 0,
        "{total:?}"
    );
    assert!(per(total.installs) >= 0.1, "snapshots installed: {total:?}");
    eprintln!(
        "replica_sim: {} damaged logs (per kind: sealed payload, sealed without index, header, active below / past the watermark, log.meta lost: {:?}), {} recoveries ended",
        total.damaged, total.damage_kinds.0, total.recovered
    );
    // Over every seed (not one replayed alone).
    assert!(
        seeds < SEEDS as usize
            || (total.damage_kinds.0.iter().all(|&n| n > 0) && total.recovered > 0),
        "every kind of damage, and recoveries: {total:?}"
    );
}

/// A seed replays exactly: the same trace of deliveries, crashes and
/// acknowledged offsets.
#[test]
fn replica_sim_replays_a_seed_identically() {
    for seed in [3, 11] {
        assert_eq!(
            Sim::new(seed).run().0,
            Sim::new(seed).run().0,
            "seed {seed}"
        );
    }
}

faulted_sim!(up: partition, count: |s| s.n, before_restart: damage_at_restart);
