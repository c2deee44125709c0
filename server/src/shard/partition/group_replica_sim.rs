//! The seeded simulation of a durable consumer group on a replicated
//! partition (`replica_offsets.rs`): three nodes, each a real
//! [`Partition`] with its events group and its offsets group
//! (`Partition::replicate(spec, Some(offsets_spec), ..)`) on its own
//! `SimStorage`, one `SimClock`, and the seeded network of
//! `replica_sim_support.rs` between them (each message names its group:
//! the stream's, or `offsets_group(stream)`).
//!
//! Every node's partition has the durable group `g` attached as the shard
//! attaches it (its stored offset, else the start; attached again after a
//! restart), driven by `round` as the shard's dispatcher drives it, and
//! `commit_offsets` every commit interval as the housekeeping calls it. A
//! publisher publishes events with fixed ids, retried until acknowledged
//! and following `NotLeader`. A simulated consumer answers each delivery
//! after a seeded delay with an ack (mostly), a nack, or nothing (the ack
//! timeout).
//!
//! **Faults** as in the partition's simulation: messages dropped,
//! duplicated and delayed; directed links cut; nodes (leaders included)
//! crashed between steps or mid-write, and restarted.
//!
//! **Checked** against a model:
//! 1. A node's group delivers only committed events: every delivered
//!    offset is below that node's high watermark after the round, every
//!    delivery of an offset (any node, any life) carries the same event,
//!    and it is the event the leader's log holds there at the end.
//! 2. No snapshot skips an unacknowledged event: every value of `g` seen
//!    in a snapshot (a node's `persisted_offset` after each step, and every
//!    snapshot in any node's offsets log files, scanned every commit
//!    interval and at the end) is `p` only if every event below `p` was
//!    acknowledged (answered Ok) at or before the step it was first seen.
//! 3. After healing (everything up, links healed, the consumer acking
//!    everything), every event of the leader's log was delivered and
//!    acknowledged at least once (every acknowledged publish among them, at
//!    its offset), the leader's persisted offset is the end of its events,
//!    and every node's offsets log ends with that snapshot.
//!
//! Replay one seed: `HADRON_SIM_SEED=N cargo test -p hadron-server
//! group_replica_sim`; `HADRON_SIM_DEBUG=1` narrates the faults.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use futures::executor::LocalPool;
use futures::task::LocalSpawnExt;
use hadron_engine::storage::sim::{CrashMode, SimFaults, SimRng, SimStorage};
use hadron_engine::{Durability, LogConfig, Retention};
use hadron_wire::Limits;

use self::publisher::Publisher;
use self::snapshots::{last_snapshot, snapshots_in};
use super::replica_offsets::offsets_group;
use super::replica_sim_support::{Net, faulted_sim, node_faults, replica_spec};
use super::{DedupLimits, Partition, partition_dir};
use crate::shard::Error;
use crate::shard::clock::Clock;
use crate::shard::clock::sim::SimClock;
use crate::shard::group::{Deliveries, GroupPartition, MemberId, Unlimited};
use crate::shard::sim_support::{fold_trace, read_back, run_seeds};

mod publisher;
mod snapshots;

const SEEDS: u64 = 140;
const NODES: u64 = 3;
/// Simulated steps of [`STEP`] each, with faults.
const STEPS: u64 = 1_000;
const STEP: Duration = Duration::from_millis(10);
/// Steps the final healing may take.
const HEAL_STEPS_MAX: u64 = 4_000;
/// Events the publisher publishes per seed, at most.
const EVENTS_MAX: u64 = 150;
const ACK_TIMEOUT: Duration = Duration::from_millis(800);
/// Steps between two `commit_offsets` of a node (the shard's commit
/// interval, 200 ms).
const COMMIT_EVERY_STEPS: u64 = 20;
/// The consumer answers a delivery within this many steps.
const ANSWER_STEPS_MAX: u64 = 40;
const STREAM: &str = "s";
const GROUP: &str = "g";
const DIR: &str = "/sim";
const EPOCH_MS: u64 = 1_700_000_000_000;

type SimPartition = Partition<SimStorage, SimClock>;
type SimGroup = GroupPartition<SimClock>;

/// Small segments, so that they roll; no retention, so that the leader's
/// log holds every event at the end.
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

/// What the simulation exercised, summed over seeds.
#[derive(Debug, Default, Clone, Copy)]
struct Coverage {
    crashes: u64,
    /// (term, node) pairs in which a node led the events group.
    events_leaders: u64,
    /// (term, node) pairs in which a node led the offsets group.
    offsets_leaders: u64,
    published: u64,
    deliveries: u64,
    /// First attempts of an offset delivered before (by another leader or
    /// an earlier life): what a failover redelivers.
    redelivered_after_failover: u64,
    acks: u64,
    nacks: u64,
    /// Acks refused `NotOutstanding` because the node stopped leading (or
    /// restarted its groups) since the delivery; and all refusals.
    refused_after_failover: u64,
    refused: u64,
    /// Snapshots `commit_offsets` got committed (its persisted offset
    /// moved).
    snapshots: u64,
    cuts: u64,
    dropped: u64,
    duplicated: u64,
}

impl std::ops::AddAssign for Coverage {
    fn add_assign(&mut self, o: Coverage) {
        self.crashes += o.crashes;
        self.events_leaders += o.events_leaders;
        self.offsets_leaders += o.offsets_leaders;
        self.published += o.published;
        self.deliveries += o.deliveries;
        self.redelivered_after_failover += o.redelivered_after_failover;
        self.acks += o.acks;
        self.nacks += o.nacks;
        self.refused_after_failover += o.refused_after_failover;
        self.refused += o.refused;
        self.snapshots += o.snapshots;
        self.cuts += o.cuts;
        self.dropped += o.dropped;
        self.duplicated += o.duplicated;
    }
}

/// A delivery a round handed out, with the node's life and the term it
/// led (or knew) then.
struct Delivered {
    node: u64,
    life: u64,
    term: u64,
    delivery_id: u64,
    offset: u64,
    attempt: u32,
    event: Vec<u8>,
}

type Outbox = Rc<RefCell<Vec<Delivered>>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    Ack,
    Nack,
    /// Nothing: the ack timeout redelivers it.
    Silent,
}

/// The consumer's answer to a delivery, due at a step.
struct Answer {
    due: u64,
    node: u64,
    life: u64,
    term: u64,
    delivery_id: u64,
    offset: u64,
    reply: Reply,
}

struct Node {
    storage: SimStorage,
    partition: Option<Rc<SimPartition>>,
    group: Option<Rc<SimGroup>>,
    /// The step it comes back at, while down.
    back_at: Option<u64>,
    /// Opens so far: its member's connection id in this life.
    life: u64,
    rounding: Rc<Cell<bool>>,
    committing: Rc<Cell<bool>>,
}

/// What the model knows, against which every check runs.
#[derive(Default)]
struct Model {
    /// The event id every delivery of an offset carried.
    delivered: BTreeMap<u64, String>,
    /// Offsets acknowledged by the consumer (Ok), and the step of the first.
    acked_at: BTreeMap<u64, u64>,
    /// Every value of `g` seen in a snapshot, and the step it was first
    /// seen at (by whom, for the failure message).
    snapshots: BTreeMap<u64, (u64, String)>,
}

impl Model {
    /// Records a value of `g` seen in a snapshot at `step`; a new one is
    /// checked at once against the events delivered so far (the whole
    /// check 2 runs at the end, when every event is known).
    fn saw_snapshot(&mut self, seed: u64, value: u64, step: u64, by: impl FnOnce() -> String) {
        if self.snapshots.contains_key(&value) {
            return;
        }
        let by = by();
        if let Some((offset, id)) = self
            .delivered
            .range(..value)
            .find(|(o, _)| !self.acked_at.contains_key(o))
        {
            panic!(
                "seed {seed}: {by} holds offset {value} at step {step}, but event {id} at offset {offset} below it was never acknowledged"
            );
        }
        self.snapshots.insert(value, (step, by));
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
    publisher: Publisher,
    outbox: Outbox,
    answers: Vec<Answer>,
    next_delivery_id: Rc<Cell<u64>>,
    model: Model,
    crash_ppm: u32,
    cut_ppm: u32,
    events_terms: BTreeSet<(u64, u64)>,
    offsets_terms: BTreeSet<(u64, u64)>,
    /// Snapshots committed, counted by the commit tasks.
    snapshots: Rc<Cell<u64>>,
    coverage: Coverage,
    trace: u64,
    /// The consumer acks everything (healing).
    healing: bool,
    /// The step under way.
    now_step: u64,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = SimRng::new(seed ^ 0x6a0b_5eed);
        let clock = SimClock::new(EPOCH_MS);
        let pool = LocalPool::new();
        clock.set_spawner(pool.spawner());
        let net = Rc::new(Net::new(clock.clone(), seed, &mut rng, STEP));
        let nodes = (0..NODES)
            .map(|i| Node {
                storage: SimStorage::new(seed * 10 + i, SimFaults::default()),
                partition: None,
                group: None,
                back_at: None,
                life: 0,
                rounding: Rc::new(Cell::new(false)),
                committing: Rc::new(Cell::new(false)),
            })
            .collect();
        Sim {
            seed,
            debug: std::env::var("HADRON_SIM_DEBUG").is_ok(),
            crash_ppm: 1_000 + rng.below(5_000) as u32,
            cut_ppm: rng.below(4_000) as u32,
            rng,
            clock,
            pool,
            net,
            nodes,
            publisher: Publisher::new(seed, EVENTS_MAX),
            outbox: Rc::new(RefCell::new(Vec::new())),
            answers: Vec::new(),
            next_delivery_id: Rc::new(Cell::new(0)),
            model: Model::default(),
            events_terms: BTreeSet::new(),
            offsets_terms: BTreeSet::new(),
            snapshots: Rc::new(Cell::new(0)),
            coverage: Coverage::default(),
            trace: 0,
            healing: false,
            now_step: 0,
        }
    }

    fn say(&self, what: impl FnOnce() -> String) {
        if self.debug {
            eprintln!("[seed {} t={:?}] {}", self.seed, self.clock.now(), what());
        }
    }

    fn node(&self, id: u64) -> &Node {
        &self.nodes[id as usize - 1]
    }

    /// Opens node `id`'s partition (recovering it) with both groups,
    /// starts them, and attaches the group's member of this life as the
    /// shard does (`Shard::attach`).
    fn open(&mut self, id: u64) {
        // Election timeouts per node and group, varied by seed: the two
        // groups elect apart, so the offsets group often leads elsewhere
        // until it hands its lead over.
        let ticks = |salt: u64| 10 + ((self.seed + id * 7 + salt) % 9) as usize;
        let spec = replica_spec(&self.net, id, NODES, STREAM, ticks(0));
        let offsets_spec = replica_spec(&self.net, id, NODES, &offsets_group(STREAM), ticks(4));
        let (storage, clock) = (self.node(id).storage.clone(), self.clock.clone());
        let opened = self.pool.run_until(async move {
            let mut p = Partition::open(
                &storage,
                clock,
                Path::new(DIR),
                STREAM,
                0,
                log_config(),
                DedupLimits {
                    window_ms: 0,
                    keys_max: 1 << 20,
                },
                Limits::DEFAULT,
                crate::config::server::GROUPS_MAX_DEFAULT,
            )
            .await?;
            let dedup = DedupLimits {
                window_ms: 600_000,
                keys_max: 1 << 20,
            };
            p.replicate(spec, Some(offsets_spec), &storage, dedup)
                .await?;
            Ok::<_, String>(Rc::new(p))
        });
        let p =
            opened.unwrap_or_else(|e| panic!("seed {}: node {id} does not open: {e}", self.seed));
        let spawner = self.pool.spawner();
        let _ = spawner.spawn_local(p.clone().drive_replication());
        let _ = spawner.spawn_local(p.clone().drive_offsets());
        let life = self.node(id).life + 1;
        p.admit_group(GROUP, crate::config::server::GROUPS_MAX_DEFAULT)
            .unwrap_or_else(|e| panic!("seed {}: node {id} refuses the group: {e}", self.seed));
        let stored = p.stored_offsets.borrow().get(GROUP).copied();
        let cursor = stored.unwrap_or(p.log.stats().start_offset);
        let g = GroupPartition::new(
            GROUP,
            true,
            cursor,
            ACK_TIMEOUT,
            Rc::new(Deliveries::default()),
            p.clock().clone(),
        );
        p.groups.borrow_mut().insert(GROUP.to_string(), g.clone());
        let member = MemberId {
            shard: 0,
            conn: life,
            subscription: 0,
        };
        g.attach(member, 1 + self.rng.below(8) as u32);
        if let Some(v) = stored {
            let by = || format!("node {id} at open");
            self.model.saw_snapshot(self.seed, v, self.step_now(), by);
        }
        let node = &mut self.nodes[id as usize - 1];
        node.life = life;
        node.partition = Some(p);
        node.group = Some(g);
        node.rounding = Rc::new(Cell::new(false));
        node.committing = Rc::new(Cell::new(false));
    }

    /// The current step.
    fn step_now(&self) -> u64 {
        self.now_step
    }

    /// Node `id` crashes: both groups stop, its consumer's connection goes,
    /// its unsynced writes are lost (or torn).
    fn crash(&mut self, id: u64, step: u64) {
        let torn = self.rng.below(2) == 0;
        let node = &mut self.nodes[id as usize - 1];
        if let Some(p) = node.partition.take() {
            for r in p.replica.iter().chain(p.offsets_replica.iter()) {
                r.halt();
            }
        }
        node.group = None;
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
        self.answers.retain(|a| a.node != id);
        self.coverage.crashes += 1;
        self.trace = fold_trace(self.trace, 1_000 + id);
        self.say(|| format!("node {id} crashes (torn: {torn})"));
    }

    /// Random faults of one step, and their ends.
    fn faults(&mut self, step: u64) {
        let (net, crash_ppm, cut_ppm) = (self.net.clone(), self.crash_ppm, self.cut_ppm);
        if node_faults(self, &net, step, crash_ppm, cut_ppm).is_some() {
            self.coverage.cuts += 1;
        }
    }

    /// Delivers the messages due to the nodes that are up, each to the
    /// group it names.
    fn deliver(&mut self) {
        let offsets = offsets_group(STREAM);
        for m in self.net.due() {
            self.trace = fold_trace(self.trace, m.msg.get_msg_type() as u64 ^ (m.to << 8));
            let Some(p) = &self.nodes[m.to as usize - 1].partition else {
                continue;
            };
            let replica = if *m.group == *offsets {
                p.offsets_replica.clone()
            } else {
                p.replica.clone()
            };
            if let Some(r) = replica {
                r.step(m.msg);
            }
        }
    }

    /// Starts a dispatch round of the group on every node whose last one
    /// ended, as the shard's dispatcher does; every commit interval, a
    /// `commit_offsets` as the housekeeping does.
    fn dispatch(&mut self, step: u64) {
        let spawner = self.pool.spawner();
        let commit = step.is_multiple_of(COMMIT_EVERY_STEPS);
        for id in 1..=NODES {
            let node = self.node(id);
            let (Some(p), Some(g)) = (node.partition.clone(), node.group.clone()) else {
                continue;
            };
            if commit && !node.committing.get() {
                let (p, busy, count) = (p.clone(), node.committing.clone(), self.snapshots.clone());
                busy.set(true);
                let _ = spawner.spawn_local(async move {
                    let before = p.persisted_offset(GROUP);
                    let done = p.commit_offsets().await;
                    if done.is_ok() && p.persisted_offset(GROUP) != before {
                        count.set(count.get() + 1);
                    }
                    busy.set(false);
                });
            }
            if node.rounding.get() {
                continue;
            }
            node.rounding.set(true);
            let (busy, outbox, ids) = (
                node.rounding.clone(),
                self.outbox.clone(),
                self.next_delivery_id.clone(),
            );
            let (seed, life) = (self.seed, node.life);
            let _ = spawner.spawn_local(async move {
                let mint = || {
                    ids.set(ids.get() + 1);
                    ids.get()
                };
                let out = g.round(&p, &mint, &Unlimited).await;
                busy.set(false);
                let Ok(out) = out else { return };
                let Some(r) = &p.replica else { return };
                let (hw, term) = (r.high_watermark(), r.leader().map_or(0, |l| l.1));
                for d in out {
                    // Check 1: committed events only.
                    assert!(
                        d.offset < hw,
                        "seed {seed}: node {id} delivered offset {} at or above its high watermark {hw}",
                        d.offset
                    );
                    outbox.borrow_mut().push(Delivered {
                        node: id,
                        life,
                        term,
                        delivery_id: d.delivery_id,
                        offset: d.offset,
                        attempt: d.attempt,
                        event: d.event,
                    });
                }
            });
        }
    }

    /// Takes the rounds' deliveries: checks each against the model and
    /// schedules the consumer's answer (on a connection still up).
    fn take_deliveries(&mut self, step: u64) {
        let out = std::mem::take(&mut *self.outbox.borrow_mut());
        for d in out {
            let event = hadron_wire::decode_event(&d.event, &Limits::DEFAULT).unwrap_or_else(|e| {
                panic!(
                    "seed {}: offset {} delivered holds no event: {e}",
                    self.seed, d.offset
                )
            });
            assert!(
                self.publisher.made.contains(event.id),
                "seed {}: offset {} delivered an event never published",
                self.seed,
                d.offset
            );
            let id = event.id.to_owned();
            if let Some(before) = self.model.delivered.get(&d.offset) {
                assert_eq!(
                    *before, id,
                    "seed {}: offset {} delivered as {before} and later as {id} (node {})",
                    self.seed, d.offset, d.node
                );
                if d.attempt == 1 {
                    self.coverage.redelivered_after_failover += 1;
                }
            } else {
                self.model.delivered.insert(d.offset, id);
            }
            self.coverage.deliveries += 1;
            self.trace = fold_trace(self.trace, d.offset ^ (d.node << 40));
            if self.node(d.node).life != d.life {
                continue;
            }
            let roll = self.rng.below(100);
            let reply = match roll {
                _ if self.healing => Reply::Ack,
                0..80 => Reply::Ack,
                80..90 => Reply::Nack,
                _ => Reply::Silent,
            };
            let delay = if self.healing {
                self.rng.below(3)
            } else {
                self.rng.below(ANSWER_STEPS_MAX)
            };
            self.answers.push(Answer {
                due: step + delay,
                node: d.node,
                life: d.life,
                term: d.term,
                delivery_id: d.delivery_id,
                offset: d.offset,
                reply,
            });
        }
    }

    /// The consumer's answers due now, to the group of the node (and life)
    /// that made the delivery.
    fn answer(&mut self, step: u64) {
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.answers)
            .into_iter()
            .partition(|a| a.due <= step);
        self.answers = later;
        for a in due {
            let node = self.node(a.node);
            if node.life != a.life {
                continue;
            }
            let (Some(g), Some(p)) = (node.group.clone(), node.partition.clone()) else {
                continue;
            };
            let from = (0, a.life);
            let result = match a.reply {
                Reply::Silent => continue,
                Reply::Ack => g.ack(a.delivery_id, from),
                Reply::Nack => g.nack(a.delivery_id, from, "simulated failure"),
            };
            match result {
                Ok(()) if a.reply == Reply::Ack => {
                    self.coverage.acks += 1;
                    self.model.acked_at.entry(a.offset).or_insert(step);
                    self.trace = fold_trace(self.trace, a.offset ^ (1 << 60));
                }
                Ok(()) => self.coverage.nacks += 1,
                Err(Error::NotOutstanding { .. }) => {
                    self.coverage.refused += 1;
                    let now = p
                        .replica
                        .as_ref()
                        .and_then(|r| (r.serving()).then(|| r.leader().map_or(0, |l| l.1)));
                    if now != Some(a.term) {
                        self.coverage.refused_after_failover += 1;
                    }
                }
                Err(e) => panic!(
                    "seed {}: node {} answered delivery {} with {e}",
                    self.seed, a.node, a.delivery_id
                ),
            }
        }
    }

    /// The publisher's turn (`publisher.rs`).
    fn publish(&mut self) {
        let nodes: Vec<_> = self.nodes.iter().map(|n| n.partition.clone()).collect();
        self.publisher.turn(
            &mut self.rng,
            self.clock.now(),
            &self.pool.spawner(),
            !self.healing,
            |id| nodes[id as usize - 1].clone(),
        );
    }

    /// Counts leaders of both groups; records every persisted offset the
    /// nodes show (check 2 runs on them at the end).
    fn observe(&mut self, step: u64) {
        for (i, n) in self.nodes.iter().enumerate() {
            let Some(p) = &n.partition else { continue };
            let id = i as u64 + 1;
            if let Some(r) = &p.replica
                && r.is_leader()
                && self.events_terms.insert((r.status().term, id))
            {
                self.coverage.events_leaders += 1;
            }
            if let Some(r) = &p.offsets_replica
                && r.is_leader()
                && self.offsets_terms.insert((r.status().term, id))
            {
                self.coverage.offsets_leaders += 1;
            }
            if let Some(v) = p.persisted_offset(GROUP) {
                self.model.saw_snapshot(self.seed, v, step, || {
                    format!("node {id}'s persisted offset")
                });
            }
        }
        if step % COMMIT_EVERY_STEPS == COMMIT_EVERY_STEPS / 2 {
            self.scan_offsets_logs(step);
        }
    }

    /// Every snapshot of `g` written to any node's offsets log files (as
    /// written, synced or not): recorded for check 2.
    fn scan_offsets_logs(&mut self, step: u64) {
        let dir = partition_dir(Path::new(DIR), STREAM, 0).join("groups");
        for i in 0..NODES as usize {
            let storage = self.nodes[i].storage.clone();
            for path in storage.paths().into_iter().filter(|p| p.starts_with(&dir)) {
                let bytes = storage.written_bytes(&path).unwrap_or_default();
                for v in snapshots_in(&bytes) {
                    let by = || format!("node {}'s {}", i + 1, path.display());
                    self.model.saw_snapshot(self.seed, v, step, by);
                }
            }
        }
    }

    fn step(&mut self, step: u64) {
        self.now_step = step;
        self.clock.advance(STEP);
        self.pool.run_until_stalled();
        self.deliver();
        self.dispatch(step);
        self.pool.run_until_stalled();
        self.take_deliveries(step);
        self.observe(step);
    }

    fn run(mut self) -> (u64, Coverage) {
        for id in 1..=NODES {
            self.open(id);
        }
        for step in 0..STEPS {
            self.faults(step);
            self.publish();
            self.answer(step);
            self.step(step);
        }
        let end = self.heal();
        self.check(end);
        self.coverage.snapshots = self.snapshots.get();
        self.coverage.published = self.publisher.published.len() as u64;
        self.coverage.dropped = self.net.dropped.get();
        self.coverage.duplicated = self.net.duplicated.get();
        (self.trace, self.coverage)
    }

    /// Everything heals and restarts, the consumer acks everything; then
    /// steps run until the leader's group persisted the end of its events
    /// and every node's offsets log holds that snapshot. Returns the end.
    fn heal(&mut self) -> u64 {
        self.healing = true;
        self.net.heal_all();
        // A crash armed mid-write that has not struck yet: now or never.
        for id in 1..=NODES {
            let node = self.node(id);
            if node.partition.is_some() && node.storage.is_frozen() {
                self.crash(id, STEPS);
            } else {
                node.storage.disarm_crash();
            }
        }
        for i in 0..NODES as usize {
            if self.nodes[i].partition.is_none() {
                self.nodes[i].back_at = None;
                self.open(i as u64 + 1);
            }
        }
        for step in STEPS..STEPS + HEAL_STEPS_MAX {
            self.publish();
            self.answer(step);
            self.step(step);
            if step.is_multiple_of(10)
                && let Some(end) = self.settled()
            {
                return end;
            }
        }
        panic!(
            "seed {}: the group did not settle in {HEAL_STEPS_MAX} steps after healing: {:?}",
            self.seed,
            self.nodes
                .iter()
                .filter_map(|n| {
                    let p = n.partition.as_ref()?;
                    let g = n.group.as_ref()?;
                    Some((
                        p.replica.as_ref()?.status(),
                        p.offsets_replica.as_ref()?.status(),
                        g.status(p.readable_end()),
                        p.persisted_offset(GROUP),
                    ))
                })
                .collect::<Vec<_>>()
        );
    }

    /// The node serving as the events group's leader, if exactly one does.
    fn leader(&self) -> Option<(u64, Rc<SimPartition>)> {
        let mut serving = self.nodes.iter().enumerate().filter_map(|(i, n)| {
            let p = n.partition.clone()?;
            p.check_serving().is_ok().then_some((i as u64 + 1, p))
        });
        let first = serving.next()?;
        serving.next().is_none().then_some(first)
    }

    /// The end of the leader's events once the run settled: the publisher
    /// idle, every node up with the events group's log applied, and the
    /// leader's persisted offset at that end in every node's offsets log.
    fn settled(&mut self) -> Option<u64> {
        if !self.publisher.idle() || !self.answers.is_empty() {
            return None;
        }
        let (id, p) = self.leader()?;
        let statuses: Vec<_> = self
            .nodes
            .iter()
            .map(|n| {
                n.partition
                    .as_ref()
                    .and_then(|p| p.replica.as_ref())
                    .map(|r| r.status())
            })
            .collect::<Option<_>>()?;
        let last = statuses[0].last_index;
        if statuses
            .iter()
            .any(|s| (s.applied, s.last_index) != (last, last))
        {
            return None;
        }
        let g = self.node(id).group.clone()?;
        let persisted = p.persisted_offset(GROUP)?;
        if g.status(0).in_flight != 0 || g.committed() != persisted {
            return None;
        }
        let records = self.pool.run_until(async move { read_back(&p).await });
        let end = records.last().map_or(0, |r| r.0 + 1);
        if persisted != end {
            return None;
        }
        for n in &self.nodes {
            let p = n.partition.clone()?;
            let tail = self.pool.run_until(async move { last_snapshot(&p).await });
            if tail != Some(end) {
                return None;
            }
        }
        Some(end)
    }

    /// The model's checks (module header) after healing; `end` the end of
    /// the leader's events.
    fn check(&mut self, end: u64) {
        let seed = self.seed;
        let (_, leader) = self.leader().expect("a leader after healing");
        let records = self.pool.run_until(async move { read_back(&leader).await });
        assert_eq!(records.last().map_or(0, |r| r.0 + 1), end);
        let mut events = BTreeMap::new();
        for (offset, _, bytes) in &records {
            let event = hadron_wire::decode_event(bytes, &Limits::DEFAULT)
                .unwrap_or_else(|e| panic!("seed {seed}: offset {offset} holds no event: {e}"));
            events.insert(*offset, event.id.to_owned());
        }
        // Check 1: every delivery carried the event committed there.
        for (offset, id) in &self.model.delivered {
            assert_eq!(
                events.get(offset),
                Some(id),
                "seed {seed}: offset {offset} was delivered as {id}, not what the leader holds"
            );
        }
        // Check 3: every event delivered and acked; every acknowledged
        // publish among them, at its offset.
        for (offset, id) in &events {
            assert!(
                self.model.acked_at.contains_key(offset),
                "seed {seed}: event {id} at offset {offset} was never acknowledged by the group"
            );
        }
        for (id, offset) in &self.publisher.published {
            assert_eq!(
                events.get(offset),
                Some(id),
                "seed {seed}: acknowledged publish {id} is not at offset {offset}"
            );
        }
        // Check 2, with the offsets logs as they end.
        self.scan_offsets_logs(STEPS + HEAL_STEPS_MAX);
        let mut acked_by = 0u64;
        let mut below = events.iter().peekable();
        for (&value, (seen, by)) in &self.model.snapshots {
            while let Some((&offset, id)) = below.next_if(|(o, _)| **o < value) {
                let at = self
                    .model
                    .acked_at
                    .get(&offset)
                    .copied()
                    .unwrap_or(u64::MAX);
                acked_by = acked_by.max(at);
                assert!(
                    acked_by <= *seen,
                    "seed {seed}: {by} held offset {value} at step {seen}, but event {id} at offset {offset} below it was not acknowledged by then"
                );
            }
            assert!(
                acked_by <= *seen,
                "seed {seed}: {by} held offset {value} at step {seen} before every event below it was acknowledged"
            );
            assert!(
                value <= end,
                "seed {seed}: {by} held offset {value}, past the end {end}"
            );
        }
    }
}

/// Every seed: the checks of the module header; and a few of each event
/// over all seeds, so that a change that stops the simulation from
/// reaching them is noticed.
#[test]
fn group_replica_sim_commits_only_acknowledged_offsets_across_failovers() {
    let (seeds, total) = run_seeds("group_replica_sim", SEEDS, |seed| Sim::new(seed).run().1);
    let per = |n: u64| n as f64 / seeds as f64;
    assert!(per(total.crashes) >= 1.0, "{total:?}");
    assert!(per(total.events_leaders) >= 2.0, "{total:?}");
    assert!(per(total.offsets_leaders) >= 2.0, "{total:?}");
    assert!(per(total.published) >= 50.0, "{total:?}");
    assert!(per(total.deliveries) >= 50.0, "{total:?}");
    assert!(per(total.snapshots) >= 5.0, "{total:?}");
    assert!(
        total.redelivered_after_failover > 0 && total.refused_after_failover > 0,
        "{total:?}"
    );
    assert!(total.nacks > 0 && total.refused > 0, "{total:?}");
    assert!(
        total.cuts > 0 && total.dropped > 0 && total.duplicated > 0,
        "{total:?}"
    );
}

/// A seed replays exactly: the same trace of messages, crashes,
/// deliveries and acks.
#[test]
fn group_replica_sim_replays_a_seed_identically() {
    let seed = 5;
    assert_eq!(
        Sim::new(seed).run().0,
        Sim::new(seed).run().0,
        "seed {seed}"
    );
}

faulted_sim!(up: partition, count: |_s| NODES);
