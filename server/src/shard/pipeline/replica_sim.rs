//! The seeded simulation of a pipeline on a replicated stream
//! (`replicated.rs`): three nodes, each a real source [`Partition`] with
//! its Raft group and a real [`PipelineRun`] whose outputs log is a Raft
//! group of its own, on the node's own `SimStorage`, one `SimClock`, and
//! the seeded network of `partition/replica_sim_support.rs` between them
//! (each message names its group: the stream's, or the outputs group's).
//!
//! A publisher publishes trigger events with fixed ids, retried until
//! acknowledged and following `NotLeader`. A DAG of four stages (`a`; `b`
//! and `c` after `a`; `d` after both) has one simulated handler per stage
//! attached to every node's run (attached again at a restart); each node's
//! run is driven by `round`, `claim_checkpoint`/`checkpoint` and
//! `commit_watermark` as the shard drives it. A handler answers a
//! delivery after a seeded delay with an ack (an output event naming the
//! root, the stage, the attempt, the node and the delivery), a nack, or
//! nothing (the ack timeout).
//!
//! **Faults** as in the partition's simulation: messages dropped,
//! duplicated and delayed; directed links cut; nodes (leaders included)
//! crashed between steps or mid-write, and restarted.
//!
//! **Checked** against a model:
//! 1. A stage whose ack was answered OK is never delivered again, by any
//!    node: a later leader's log holds the committed output (Raft's leader
//!    completeness), and a deposed leader that does not know it yet hands
//!    out nothing once its lease ran out, which is before any other node
//!    can be elected (`ReplicatedLog::has_lease`).
//! 2. A delivery's inputs are exactly its stage's dependencies, each an
//!    output a handler sent for that (root, dependency), and the same
//!    output in every delivery on every node in every life, and the one the
//!    leader's outputs log holds at the end.
//! 3. After healing, the leader's run has no unfinished or failed
//!    execution, its cursor is at the source's end, it counts one completed
//!    execution per trigger, and its outputs log holds at most one output
//!    record per (root, stage) (a leader replays its whole log before it
//!    serves, so it never runs a stage its log holds an output of; carried
//!    copies of checkpoints must equal it).
//! 4. What check 1 rests on, at every step: while a node holds the
//!    outputs group's lease, no other node leads in its term or a later
//!    one, or holds a lease (a deposed leader of an earlier term may not
//!    know it yet: it holds no lease), and every delivery a round returns was made under
//!    the lease. The faults make these windows on purpose (an outputs
//!    leader isolated, or cut from one follower while the other restarts).
//!    Planted bugs, 100 seeds: a run that hands out stages without the
//!    lease fails check 4 at seed 0 and check 1 (a stage answered OK
//!    delivered again) at seed 31 (before these faults, 1,000 seeds missed
//!    it); a lease three times too long fails check 4 at seed 2; a node
//!    that votes as soon as it starts (no quiet time) fails check 4 at
//!    seed 24, since the workload pauses around the cut from one
//!    follower (before that pause, 300 seeds missed it: the cut follower
//!    was always behind the leader's log, so it could not win).
//!
//! Replay one seed: `HADRON_SIM_SEED=N cargo test -p hadron-server
//! pipeline::replica_sim`; `HADRON_SIM_DEBUG=1` narrates the faults.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures::executor::LocalPool;
use futures::task::LocalSpawnExt;
use hadron_engine::log::batch::{BatchKind, Batches};
use hadron_engine::storage::sim::{CrashMode, SimFaults, SimRng, SimStorage};
use hadron_engine::{Durability, LogConfig, Retention};
use hadron_wire::Limits;

use super::codec::{OutputRecord, decode_record};
use super::{PipelineRun, StageOutgoing, outputs_group};
use crate::config::{PipelinePlan, PipelineSpec, RetrySpec, StageSpec, StartPoint};
use crate::shard::Error;
use crate::shard::clock::Clock;
use crate::shard::clock::sim::SimClock;
use crate::shard::deliver::MemberId;
use crate::shard::group::Unlimited;
use crate::shard::partition::replica_sim_support::{Net, faulted_sim, node_faults, replica_spec};
use crate::shard::partition::{DedupLimits, Partition};
use crate::shard::sim_support::{fold_trace, run_seeds};

const SEEDS: u64 = 100;
const NODES: u64 = 3;
/// Simulated steps of [`STEP`] each, with faults.
const STEPS: u64 = 1_500;
const STEP: Duration = Duration::from_millis(10);
/// Steps the workload pauses before a leader's cut from one follower, so
/// that the appends in flight land on every node first.
const PAUSE_LEAD_STEPS: u64 = 20;
/// Steps the final healing may take.
const HEAL_STEPS_MAX: u64 = 6_000;
/// Trigger events the publisher publishes per seed.
const TRIGGERS: u64 = 60;
/// The publisher gives up waiting for an answer after this and retries
/// the same events elsewhere.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
const ACK_TIMEOUT_MS: u64 = 800;
/// Bytes each output is padded with, so that the outputs log crosses
/// segments and checkpoints are written.
const OUTPUT_PAD_BYTES: usize = 600;
const PIPELINE: &str = "sim";
const STREAM: &str = "s";
const DIR: &str = "/sim";
const EPOCH_MS: u64 = 1_700_000_000_000;
/// Steps between two `commit_watermark`s of a run (the shard's commit
/// interval).
const WATERMARK_EVERY_STEPS: u64 = 25;

type SimPartition = Partition<SimStorage, SimClock>;
type SimRun = PipelineRun<SimStorage, SimClock>;
/// Deliveries returned by rounds: the node, its run, the delivery.
type Outbox = Rc<RefCell<Vec<(u64, Rc<SimRun>, StageOutgoing)>>>;

/// Small segments: the outputs log is checkpointed every segment.
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

/// `a`; `b` and `c` after `a`; `d` after `b` and `c`. Attempts as many as
/// allowed: an execution never fails, so every one must complete.
fn plan() -> PipelinePlan {
    PipelineSpec {
        name: PIPELINE.into(),
        source_stream: STREAM.into(),
        triggers: Vec::new(),
        start_point: StartPoint::Beginning,
        max_parallel: 6,
        retry: Some(RetrySpec {
            initial_delay_ms: Some(50),
            max_delay_ms: Some(400),
            max_attempts: Some(10_000),
        }),
        ack_timeout_ms: Some(ACK_TIMEOUT_MS),
        stages: vec![
            StageSpec::new("a", &[]),
            StageSpec::new("b", &["a"]),
            StageSpec::new("c", &["a"]),
            StageSpec::new("d", &["b", "c"]),
        ],
    }
    .plan(|_| true)
    .expect("the simulation's pipeline is valid")
}

mod model;
use model::{Coverage, Model};

/// A delivery a handler holds: answered at `due` unless its node went down.
struct Held {
    due: Duration,
    node: u64,
    run: Rc<SimRun>,
    delivery: StageOutgoing,
    answer: Answer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Ack,
    Nack,
    Nothing,
}

/// A publish attempt's result, when it came.
type Published = Rc<RefCell<Option<Result<(), Error>>>>;

struct Publisher {
    next: u64,
    batch: Vec<(String, Vec<u8>)>,
    leader: u64,
    attempt: Option<(Published, Duration)>,
}

struct Node {
    storage: SimStorage,
    partition: Option<Rc<SimPartition>>,
    run: Option<Rc<SimRun>>,
    /// The step it comes back at, while down.
    back_at: Option<u64>,
    /// Its lives so far: a member's connection id.
    life: u64,
    /// A dispatch round of the current run is under way.
    rounding: Rc<Cell<bool>>,
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
    model: Rc<RefCell<Model>>,
    /// Deliveries the rounds returned, not yet taken by a handler.
    outbox: Outbox,
    held: Vec<Held>,
    ids: Rc<Cell<u64>>,
    crash_ppm: u32,
    cut_ppm: u32,
    isolate_ppm: u32,
    /// A node to crash and restart at once at a step (`cut_off_leader`).
    bounce: Option<(u64, u64)>,
    /// A cut of the outputs leader from one follower, due at a step
    /// (`cut_off_leader`): (leader, follower, at, until).
    pending_cut: Option<(u64, u64, u64, u64)>,
    /// The publisher and the handlers pause until this step, so that the
    /// outputs log stands still (`cut_off_leader`).
    paused_until: u64,
    paused: bool,
    terms_led: BTreeSet<(u64, u64)>,
    /// Handlers answer every delivery at once (the final healing).
    healing: bool,
    coverage: Coverage,
}

/// An output of stage `stage` of `root`: names who made it, so that every
/// delivery's output differs.
fn output(root: u64, stage: u8, attempt: u32, node: u64, delivery: u64) -> Vec<u8> {
    let id = format!("out-{root}-{stage}-{attempt}-{node}-{delivery}");
    let data = format!("{id}:{:0>OUTPUT_PAD_BYTES$}", 0);
    hadron_wire::encode_event(&hadron_wire::EventRef {
        id: &id,
        source: "sim-handler",
        ty: "output",
        data: data.as_bytes(),
        ..hadron_wire::EventRef::default()
    })
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = SimRng::new(seed ^ 0x9195_e11e);
        let clock = SimClock::new(EPOCH_MS);
        let pool = LocalPool::new();
        clock.set_spawner(pool.spawner());
        let net = Rc::new(Net::new(clock.clone(), seed, &mut rng, STEP));
        let nodes = (0..NODES)
            .map(|i| Node {
                storage: SimStorage::new(seed * 10 + i, SimFaults::default()),
                partition: None,
                run: None,
                back_at: None,
                life: 0,
                rounding: Rc::new(Cell::new(false)),
            })
            .collect();
        let dependencies = plan()
            .stages
            .iter()
            .map(|s| s.dependencies.clone())
            .collect();
        Sim {
            seed,
            debug: std::env::var("HADRON_SIM_DEBUG").is_ok(),
            crash_ppm: 1_000 + rng.below(4_000) as u32,
            cut_ppm: rng.below(4_000) as u32,
            isolate_ppm: rng.below(3_000) as u32,
            bounce: None,
            pending_cut: None,
            paused_until: 0,
            paused: false,
            rng,
            clock,
            pool,
            net,
            nodes,
            publisher: Publisher {
                next: 0,
                batch: Vec::new(),
                leader: 1,
                attempt: None,
            },
            model: Rc::new(RefCell::new(Model {
                seed,
                debug: std::env::var("HADRON_SIM_DEBUG").is_ok(),
                dependencies,
                ..Model::default()
            })),
            outbox: Rc::default(),
            held: Vec::new(),
            ids: Rc::new(Cell::new(0)),
            terms_led: BTreeSet::new(),
            healing: false,
            coverage: Coverage::default(),
        }
    }
}

impl Sim {
    fn say(&self, what: impl FnOnce() -> String) {
        if self.debug {
            eprintln!("[seed {} t={:?}] {}", self.seed, self.clock.now(), what());
        }
    }

    fn node(&self, id: u64) -> &Node {
        &self.nodes[id as usize - 1]
    }

    /// Opens node `id`: its source partition (recovering it) and the run
    /// (its outputs group), starts both groups, and attaches one member
    /// per stage on a connection of this life.
    fn open(&mut self, id: u64) {
        // Election timeouts per node and group, varied by seed: the two
        // groups elect apart, so the run often leads where the source
        // partition follows.
        let ticks = |salt: u64| 10 + ((self.seed + id * 7 + salt) % 9) as usize;
        let source_spec = replica_spec(&self.net, id, NODES, STREAM, ticks(0));
        let outputs_spec = replica_spec(&self.net, id, NODES, &outputs_group(PIPELINE), ticks(4));
        let (storage, clock) = (self.node(id).storage.clone(), self.clock.clone());
        let opened = self.pool.run_until(async move {
            let dedup = DedupLimits {
                window_ms: 600_000,
                keys_max: 1 << 20,
            };
            let mut p = Partition::open(
                &storage,
                clock,
                Path::new(DIR),
                STREAM,
                0,
                log_config(),
                dedup,
                Limits::DEFAULT,
                crate::config::server::GROUPS_MAX_DEFAULT,
            )
            .await?;
            p.replicate(source_spec, None, &storage, dedup).await?;
            let p = Rc::new(p);
            let run = PipelineRun::open(
                &storage,
                Path::new(DIR),
                plan(),
                p.clone(),
                log_config(),
                Limits::DEFAULT,
                Some(outputs_spec),
            )
            .await?;
            Ok::<_, String>((p, Rc::new(run)))
        });
        let (p, run) =
            opened.unwrap_or_else(|e| panic!("seed {}: node {id} does not open: {e}", self.seed));
        let spawner = self.pool.spawner();
        let _ = spawner.spawn_local(p.clone().drive_replication());
        let _ = spawner.spawn_local(run.clone().drive_replication());
        let node = &mut self.nodes[id as usize - 1];
        node.life += 1;
        for (stage, _) in run.plan.stages.iter().enumerate() {
            let member = MemberId {
                shard: 0,
                conn: node.life,
                subscription: stage as u64,
            };
            run.attach(member, stage as u8, 1 + (id + stage as u64) as u32 % 3);
        }
        node.partition = Some(p);
        node.run = Some(run);
        node.rounding = Rc::new(Cell::new(false));
    }

    /// Node `id` crashes: both groups stop, the run closes, its handlers'
    /// connections go, its unsynced writes are lost (or torn).
    fn crash(&mut self, id: u64, step: u64) {
        let torn = self.rng.below(2) == 0;
        let node = &mut self.nodes[id as usize - 1];
        if let Some(r) = node.partition.take().and_then(|p| p.replica.clone()) {
            r.halt();
        }
        if let Some(run) = node.run.take() {
            run.closed.set(true);
            if let Some(r) = run.replica() {
                r.halt();
            }
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
        self.held.retain(|h| h.node != id);
        self.coverage.crashes += 1;
        let trace = fold_trace(self.model.borrow().trace, 1_000 + id);
        self.model.borrow_mut().trace = trace;
        self.say(|| format!("node {id} crashes (torn: {torn})"));
    }

    fn down(&self) -> usize {
        self.nodes.iter().filter(|n| n.run.is_none()).count()
    }

    /// Random faults of one step, and their ends.
    fn faults(&mut self, step: u64) {
        let (net, crash_ppm, cut_ppm) = (self.net.clone(), self.crash_ppm, self.cut_ppm);
        if node_faults(self, &net, step, crash_ppm, cut_ppm).is_some() {
            self.coverage.cuts += 1;
        }
        self.paused = step < self.paused_until;
        if let Some((leader, cut, at, until)) = self.pending_cut
            && at <= step
        {
            self.pending_cut = None;
            self.net.cut_both(leader, cut, until);
            self.say(|| format!("node {leader} cut from {cut} until step {until}"));
        }
        if self.rng.chance_ppm(self.isolate_ppm)
            && let Some(leader) = self.outputs_leader()
        {
            self.cut_off_leader(leader, step);
        }
        if let Some((id, at)) = self.bounce
            && at <= step
        {
            self.bounce = None;
            if self.node(id).run.is_some() {
                self.crash(id, step);
                self.nodes[id as usize - 1].back_at = Some(step + 1 + self.rng.below(10));
                self.say(|| format!("node {id} bounced"));
            }
        }
    }

    /// The windows check 4 watches: the outputs leader cut off from
    /// everyone for one to four election timeouts; or cut off from one
    /// follower, which campaigns after its election timeout, while the
    /// other (which keeps the leader's lease up) restarts then at once: it
    /// forgot hearing the leader, and only its start's quiet time keeps it
    /// from electing the first while the lease runs. For that second
    /// window the publisher and the handlers pause first, from
    /// [`PAUSE_LEAD_STEPS`] before the cut to its end, so that the cut
    /// follower's log is as long as the others' and could win a vote.
    fn cut_off_leader(&mut self, leader: u64, step: u64) {
        let until = step + 50 + self.rng.below(150);
        self.coverage.isolations += 1;
        let busy = self.down() > 0 || self.bounce.is_some() || self.pending_cut.is_some();
        if self.rng.below(2) == 0 || busy {
            self.net.isolate(leader, NODES, until);
            self.say(|| format!("node {leader} isolated until step {until}"));
            return;
        }
        let cut = 1 + (leader + self.rng.below(NODES - 1)) % NODES;
        let bounced = (1..=NODES)
            .find(|&id| id != leader && id != cut)
            .unwrap_or(cut);
        let cut_at = step + PAUSE_LEAD_STEPS;
        let until = until + PAUSE_LEAD_STEPS;
        self.pending_cut = Some((leader, cut, cut_at, until));
        self.paused_until = until;
        let at = cut_at + 50 + self.rng.below(50);
        self.bounce = Some((bounced, at));
        self.say(|| format!("paused; node {leader} to be cut from {cut} at step {cut_at} until step {until}; node {bounced} bounces at step {at}"));
    }

    /// The node that takes itself for the outputs group's leader in the
    /// newest term.
    fn outputs_leader(&self) -> Option<u64> {
        (1..=NODES)
            .filter_map(|id| {
                let r = self.node(id).run.as_ref()?.replica()?;
                r.is_leader().then(|| (r.status().term, id))
            })
            .max()
            .map(|(_, id)| id)
    }

    /// Delivers the messages due to the nodes that are up, each to the
    /// group it names.
    fn deliver(&mut self) {
        let outputs = outputs_group(PIPELINE);
        for m in self.net.due() {
            let node = &self.nodes[m.to as usize - 1];
            let replica = if *m.group == *outputs {
                node.run.as_ref().and_then(|r| r.replica())
            } else {
                node.partition.as_ref().and_then(|p| p.replica.clone())
            };
            if let Some(r) = replica {
                r.step(m.msg);
            }
        }
    }

    /// Starts a dispatch round on every node whose last one ended, as the
    /// shard's dispatcher does (a checkpoint first when one is due; the
    /// watermark every commit interval).
    fn dispatch(&mut self, step: u64) {
        let spawner = self.pool.spawner();
        for id in 1..=NODES {
            let node = self.node(id);
            let Some(run) = node.run.clone() else {
                continue;
            };
            if run.claim_checkpoint() {
                let (run, model) = (run.clone(), self.model.clone());
                let _ = spawner.spawn_local(async move {
                    if run.checkpoint().await.is_ok() {
                        model.borrow_mut().coverage.checkpoints += 1;
                    }
                });
            }
            if step.is_multiple_of(WATERMARK_EVERY_STEPS) {
                let run = run.clone();
                let _ = spawner.spawn_local(async move {
                    let _ = run.commit_watermark().await;
                });
            }
            if node.rounding.get() {
                continue;
            }
            node.rounding.set(true);
            let rounding = node.rounding.clone();
            let (ids, model, outbox) = (self.ids.clone(), self.model.clone(), self.outbox.clone());
            let _ = spawner.spawn_local(async move {
                let new_id = || {
                    ids.set(ids.get() + 1);
                    ids.get()
                };
                let out = run.round(&new_id, &Unlimited).await.unwrap_or_default();
                rounding.set(false);
                if out.is_empty() {
                    return;
                }
                let (leading, term, leased) = run.replica().map_or((false, 0, false), |r| {
                    (r.is_leader(), r.status().term, r.has_lease())
                });
                assert!(
                    leased,
                    "seed {}: node {id} (leading: {leading}, term {term}) hands out stages without the outputs lease",
                    model.borrow().seed
                );
                model.borrow_mut().delivered(id, leading, term, &out);
                let mut outbox = outbox.borrow_mut();
                outbox.extend(out.into_iter().map(|d| (id, run.clone(), d)));
            });
        }
    }
}

impl Sim {
    /// Hands the deliveries the rounds returned to their handlers, each
    /// with its answer and delay drawn (all acked soon while healing).
    fn take_deliveries(&mut self) {
        let taken = std::mem::take(&mut *self.outbox.borrow_mut());
        for (node, run, delivery) in taken {
            // A delivery of a run that crashed went with its connection.
            let current = self.node(node).run.as_ref();
            if !current.is_some_and(|r| Rc::ptr_eq(r, &run)) {
                continue;
            }
            let (answer, delay_steps) = if self.healing {
                (Answer::Ack, 1 + self.rng.below(5))
            } else {
                let answer = match self.rng.below(100) {
                    0..85 => Answer::Ack,
                    85..93 => Answer::Nack,
                    _ => Answer::Nothing,
                };
                // Now and then past the ack timeout: the stage goes out
                // again meanwhile, and the late ack races the new one.
                let late = self.rng.below(10) == 0;
                let delay = if late {
                    60 + self.rng.below(100)
                } else {
                    1 + self.rng.below(20)
                };
                (answer, delay)
            };
            self.held.push(Held {
                due: self.clock.now() + STEP * delay_steps as u32,
                node,
                run,
                delivery,
                answer,
            });
        }
    }

    /// The handlers answer the deliveries due.
    fn answer(&mut self) {
        if self.paused && !self.healing {
            return;
        }
        let now = self.clock.now();
        let (due, later): (Vec<_>, Vec<_>) = self.held.drain(..).partition(|h| h.due <= now);
        self.held = later;
        let spawner = self.pool.spawner();
        for h in due {
            let d = &h.delivery;
            let from = (d.member.shard, d.member.conn);
            let (run, model, id) = (h.run.clone(), self.model.clone(), d.delivery_id);
            match h.answer {
                Answer::Nothing => self.coverage.unanswered += 1,
                Answer::Nack => {
                    self.coverage.nacks += 1;
                    let _ = spawner.spawn_local(async move {
                        let _ = run.nack(id, from, "the simulated handler failed").await;
                    });
                }
                Answer::Ack => {
                    let key = (d.root, d.stage);
                    let out = output(d.root, d.stage, d.attempt, h.node, id);
                    model
                        .borrow_mut()
                        .sent
                        .entry(key)
                        .or_default()
                        .insert(out.clone());
                    let _ = spawner.spawn_local(async move {
                        let refused = run.ack_many(&[(id, Bytes::from(out))], from).await;
                        let mut model = model.borrow_mut();
                        if model.debug && !refused.is_empty() {
                            eprintln!("[seed {}] ack of {id} ({key:?}) refused: {:?}", model.seed, refused[0].1);
                        }
                        match refused.first() {
                            None => {
                                let term = run.replica().map_or(0, |r| r.status().term);
                                if model.debug {
                                    eprintln!("[seed {}] ack of {id} ({key:?}) answered OK in term {term}", model.seed);
                                }
                                let at = model.answered.entry(key).or_insert(term);
                                *at = (*at).min(term);
                                model.coverage.acks_ok += 1;
                                model.trace = fold_trace(model.trace, id);
                            }
                            Some((_, Error::NotLeader { .. })) => {
                                model.coverage.acks_not_leader += 1;
                            }
                            Some(_) => model.coverage.acks_refused_other += 1,
                        }
                    });
                }
            }
        }
    }

    /// The publisher: settles its attempt, then publishes its batch (a
    /// new one now and then while `publishing`) to the node it believes
    /// leads.
    fn publish(&mut self) {
        if let Some((answer, deadline)) = self.publisher.attempt.clone() {
            let result = answer.borrow_mut().take();
            let p = &mut self.publisher;
            match result {
                None if self.clock.now() < deadline => return,
                None => p.leader = 1 + self.rng.below(NODES),
                Some(Ok(())) => {
                    self.coverage.triggers += p.batch.len() as u64;
                    p.batch.clear();
                }
                Some(Err(Error::NotLeader {
                    leader: Some(l), ..
                })) => p.leader = l.node_id,
                Some(Err(_)) => p.leader = 1 + self.rng.below(NODES),
            }
            p.attempt = None;
        }
        if self.paused && !self.healing {
            return;
        }
        if self.publisher.batch.is_empty() {
            if self.publisher.next >= TRIGGERS || self.rng.below(4) != 0 {
                return;
            }
            let count = (1 + self.rng.below(2)).min(TRIGGERS - self.publisher.next);
            for _ in 0..count {
                let id = format!("t-{}", self.publisher.next);
                self.publisher.next += 1;
                let bytes = hadron_wire::encode_event(&hadron_wire::EventRef {
                    id: &id,
                    source: "sim",
                    ty: "t",
                    data: id.as_bytes(),
                    ..hadron_wire::EventRef::default()
                });
                self.publisher.batch.push((id, bytes));
            }
        }
        let Some(p) = self.node(self.publisher.leader).partition.clone() else {
            // Node down: as a refused connection.
            self.publisher.leader = 1 + self.rng.below(NODES);
            return;
        };
        let events: Vec<Vec<u8>> = self.publisher.batch.iter().map(|b| b.1.clone()).collect();
        let answer: Published = Rc::default();
        let slot = answer.clone();
        let _ = self.pool.spawner().spawn_local(async move {
            let result = p.publish(&events).await.map(|_| ());
            *slot.borrow_mut() = Some(result);
        });
        self.publisher.attempt = Some((answer, self.clock.now() + CLIENT_TIMEOUT));
    }

    /// Counts the terms led, and checks 4 of the module header: a node
    /// holding the outputs group's lease is its only leader.
    fn note_leaders(&mut self) {
        let mut leaders = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some(r) = n.run.as_ref().and_then(|r| r.replica())
                && r.is_leader()
            {
                let term = r.status().term;
                leaders.push((i as u64 + 1, term, r.has_lease()));
                if self.terms_led.insert((term, i as u64 + 1)) {
                    self.coverage.outputs_leaders += 1;
                }
            }
        }
        let newest = leaders.iter().map(|l| l.1).max().unwrap_or(0);
        if leaders.iter().any(|l| l.1 < newest) {
            self.coverage.stale_leader_steps += 1;
        }
        for &(node, term, leased) in &leaders {
            // Another node may still take itself for the leader of an
            // earlier term (unleased); none of a later one.
            let rival = leaders.iter().any(|l| l.0 != node && (l.1 >= term || l.2));
            assert!(
                !leased || !rival,
                "seed {}: node {node} holds the outputs lease in term {term} while {leaders:?} (node, term, leased) lead",
                self.seed
            );
        }
    }

    /// One step of the world: what every node and handler does, then the
    /// clock moves and the network delivers.
    fn step(&mut self, step: u64) {
        self.publish();
        self.dispatch(step);
        self.take_deliveries();
        self.answer();
        self.clock.advance(STEP);
        self.pool.run_until_stalled();
        self.deliver();
        self.pool.run_until_stalled();
        self.note_leaders();
    }

    fn run(mut self) -> (u64, Coverage) {
        for id in 1..=NODES {
            self.open(id);
        }
        for step in 0..STEPS {
            self.faults(step);
            self.step(step);
        }
        self.heal();
        self.check();
        let mut coverage = self.coverage;
        coverage += self.model.borrow().coverage;
        coverage.dropped = self.net.dropped.get();
        coverage.duplicated = self.net.duplicated.get();
        let trace = self.model.borrow().trace;
        (trace, coverage)
    }

    /// Everything heals and restarts and the handlers ack every delivery;
    /// the publisher publishes what is left; then steps run until the
    /// outputs group's leader has run every execution.
    fn heal(&mut self) {
        self.net.heal_all();
        for id in 1..=NODES {
            if self.node(id).run.is_some() && self.node(id).storage.is_frozen() {
                self.crash(id, STEPS);
            } else {
                self.node(id).storage.disarm_crash();
            }
        }
        for id in 1..=NODES {
            if self.node(id).run.is_none() {
                self.nodes[id as usize - 1].back_at = None;
                self.open(id);
            }
        }
        self.healing = true;
        for step in STEPS..STEPS + HEAL_STEPS_MAX {
            self.step(step);
            let published = self.publisher.next >= TRIGGERS && self.publisher.batch.is_empty();
            if published && self.leader().is_some_and(|run| Self::finished(&run)) {
                return;
            }
        }
        let statuses: Vec<_> = self
            .nodes
            .iter()
            .filter_map(|n| n.run.as_ref().map(|r| r.status()))
            .collect();
        panic!(
            "seed {}: the pipeline did not finish in {HEAL_STEPS_MAX} steps after healing: {statuses:?}",
            self.seed
        );
    }

    /// The run of the node leading the outputs group, once it serves.
    fn leader(&self) -> Option<Rc<SimRun>> {
        self.nodes
            .iter()
            .filter_map(|n| n.run.clone())
            .find(|r| r.active.get() && r.replica().is_some_and(|r| r.is_leader()))
    }

    /// Whether `run` has run every trigger's execution.
    fn finished(run: &SimRun) -> bool {
        let s = run.status();
        s.cursor >= TRIGGERS && s.active == 0 && s.unfinished.is_empty()
    }
}

impl Sim {
    /// Checks 2 and 3 of the module header on the leader after healing.
    fn check(&mut self) {
        let seed = self.seed;
        let run = self.leader().expect("a leader after healing");
        let status = run.status();
        assert_eq!(
            (status.completed, status.failed),
            (TRIGGERS, 0),
            "seed {seed}: one completed execution per trigger: {status:?}"
        );
        self.coverage.completed += status.completed;
        let log = run.outputs.clone();
        let records = self.pool.run_until(async move {
            let (mut at, end) = (log.stats().start_offset, log.visible_offset());
            let mut out = Vec::new();
            while at < end {
                let read = log
                    .read(at, 1 << 20)
                    .await
                    .unwrap_or_else(|e| panic!("seed {seed}: reading outputs at {at}: {e}"));
                for batch in Batches::new(&read.bytes) {
                    let batch = batch.unwrap_or_else(|e| panic!("seed {seed}: outputs: {e}"));
                    if batch.header.kind != BatchKind::Events {
                        continue;
                    }
                    let records = batch.records().filter(|(o, _)| *o >= at && *o < end);
                    out.extend(records.map(|(o, r)| (o, r.to_vec())));
                }
                assert!(read.next_offset > at, "seed {seed}: reading makes progress");
                at = read.next_offset;
            }
            out
        });
        let model = self.model.borrow();
        let mut outputs: BTreeMap<(u64, u8), u64> = BTreeMap::new();
        let mut logged: BTreeMap<(u64, u8), Vec<u8>> = BTreeMap::new();
        for (offset, record) in &records {
            let (root, stage, event, carried) = match decode_record(record) {
                Some(OutputRecord::Output { root, stage, event }) => (root, stage, event, false),
                Some(OutputRecord::CarriedOutput { root, stage, event }) => {
                    (root, stage, event, true)
                }
                Some(_) => continue,
                None => panic!("seed {seed}: outputs record {offset} is malformed"),
            };
            let s = run.plan.stage_index(stage).expect("a stage of the plan");
            let key = (root, s);
            if !carried && let Some(first) = outputs.insert(key, *offset) {
                panic!(
                    "seed {seed}: stage {stage} of root {root} has two outputs, at {first} and {offset}"
                );
            }
            assert!(
                model
                    .sent
                    .get(&key)
                    .is_some_and(|sent| sent.contains(event)),
                "seed {seed}: outputs record {offset} holds an output no handler sent"
            );
            let first = logged.entry(key).or_insert_with(|| event.to_vec());
            assert!(
                first == event,
                "seed {seed}: outputs record {offset} holds another output of stage {stage} of root {root} than an earlier record"
            );
            if let Some(input) = model.inputs.get(&key) {
                assert!(
                    input == event,
                    "seed {seed}: a dependent of stage {stage} of root {root} got another output than the committed one at {offset}"
                );
            }
        }
    }
}

/// Every seed: the checks of the module header; and enough of every
/// fault and of every path of an ack over all seeds, so that a change
/// that stops the simulation from reaching them is noticed.
#[test]
fn pipeline_replica_sim_runs_every_acknowledged_stage_once_across_failovers() {
    let (seeds, total) = run_seeds("pipeline::replica_sim", SEEDS, |seed| {
        Sim::new(seed).run().1
    });
    let per = |n: u64| n as f64 / seeds as f64;
    assert!(per(total.crashes) >= 1.0, "{total:?}");
    assert!(per(total.outputs_leaders) >= 2.0, "{total:?}");
    assert!(per(total.acks_ok) >= TRIGGERS as f64, "{total:?}");
    assert!(per(total.checkpoints) >= 1.0, "{total:?}");
    assert!(
        total.acks_not_leader > 0 && total.nacks > 0 && total.unanswered > 0,
        "{total:?}"
    );
    assert!(
        total.cuts > 0 && total.dropped > 0 && total.duplicated > 0,
        "{total:?}"
    );
}

/// A seed replays exactly: the same trace of deliveries, acks and crashes.
#[test]
fn pipeline_replica_sim_replays_a_seed_identically() {
    for seed in [2, 7] {
        assert_eq!(
            Sim::new(seed).run().0,
            Sim::new(seed).run().0,
            "seed {seed}"
        );
    }
}

faulted_sim!(up: run, count: |_s| NODES);
