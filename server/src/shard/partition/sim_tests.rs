//! A seeded simulation of one partition: its log, its dedup window and a
//! durable consumer group, in one process on the simulated storage
//! (`SimStorage`) and clock (`SimClock`), driven by a seed on a
//! single-threaded `LocalPool`, crashed at random operations and recovered
//! again and again, and checked against a model.
//!
//! **A run.** A seed runs [`LIVES`] lives. Each life opens the partition
//! from the simulated disk (recovery), checks it against the model, re-makes
//! the durable group at its stored offset, may arm a crash after a random
//! number of storage operations and may turn write and fdatasync failures
//! on; then, step after step, it spawns a few concurrent actions and runs
//! them until they stall: clients publishing batches of new events or
//! retrying the same ids (after an error, after a "lost answer" although the
//! server acknowledged, or impatiently while the first try is still under
//! way); dispatch rounds of the group; offset commits; members acking,
//! nacking or holding their deliveries (held ones time out when the clock
//! is moved past the ack timeout); a member disconnecting. A life ends at
//! the crash, or with one at a random point, or with a clean restart. The
//! last life acks everything the group is given until it has drained the
//! log, commits, and reopens once more.
//!
//! **The model** ([`Model`]) is what the clients and the member saw: which
//! offsets a publish acknowledged and with which event, which copies it
//! said it stored and when, which offsets the group acked, the last
//! committed offset whose commit returned `Ok`, the deliveries outstanding.
//! Checked after every crash and at the end:
//!
//! - every acknowledged event is in the log at its offset, byte for byte,
//!   and the log holds nothing that was never published;
//! - no event is stored twice within the dedup window (two copies whose
//!   batch timestamps are at most `window_ms` apart), in the log read back
//!   and in every publish's answer;
//! - the group's committed offset, live and as stored, is never past an
//!   offset the group did not ack, and the stored one never behind the last
//!   successful commit;
//! - an ack is accepted exactly for the deliveries the model says are
//!   outstanding; a disconnect gives back exactly the member's ones;
//! - every publish, round and commit answers (no task is left waiting when
//!   the executor stalls), and fails only while the storage is crashed or
//!   failing;
//! - at the end, every event a publish acknowledged was delivered and acked
//!   (at least once), and the drained offset survives a reopen.
//!
//! A failing seed prints itself and the command that replays it:
//! `HADRON_SIM_SEED=<seed> cargo test -p hadron-server partition_sim`.
//! The run never reads the real time, spawns no thread and iterates no
//! hash map, so a seed replays bit for bit (a test checks it does).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use futures::executor::LocalPool;
use futures::task::LocalSpawnExt;
use hadron_engine::storage::sim::{CrashMode, SimFaults, SimRng, SimStorage};
use hadron_engine::{Durability, LogConfig, Retention};
use hadron_wire::{ErrorCode, Limits};

use super::{DedupLimits, Partition, Published};
use crate::shard::Error;
use crate::shard::clock::Clock;
use crate::shard::clock::sim::SimClock;
use crate::shard::group::{Deliveries, GroupPartition, Outgoing, Unlimited};
use crate::shard::sim_support::{read_back, run_seeds};

type SimPartition = Partition<SimStorage, SimClock>;
type SimGroup = GroupPartition<SimClock>;

/// Seeds run by default.
const SEEDS: u64 = 300;
/// Lives per seed (each but the last ends in a crash or a restart).
const LIVES: u64 = 8;
/// Steps per life at most.
const STEPS_MAX: u64 = 30;
/// Publishing clients.
const CLIENTS: u64 = 4;
/// Events per new batch at most.
const BATCH_EVENTS_MAX: u64 = 6;
/// Bytes of an event's data at most.
const EVENT_DATA_BYTES_MAX: u64 = 400;
/// The stream's dedup window.
const WINDOW_MS: u64 = 4_000;
/// The group's ack timeout.
const ACK_TIMEOUT: Duration = Duration::from_millis(1_500);
/// Longer than the group's longest nack backoff (10 s): after it, every
/// retry is due.
const RETRIES_DUE_AFTER: Duration = Duration::from_secs(11);
/// Dispatch rounds the final drain may take.
const DRAIN_ROUNDS_MAX: u64 = 10_000;
const GROUP: &str = "g";
const DIR: &str = "/sim";
/// Wall time at the clock's start.
const EPOCH_MS: u64 = 1_700_000_000_000;

/// Small segments and batches, so that segments roll, publishes split into
/// several batches, and the dedup window is rebuilt from several segments.
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
        batch_bytes_max: 2 << 10,
    }
}

/// A delivery the member holds.
#[derive(Debug, Clone, Copy)]
struct Held {
    offset: u64,
    conn: u64,
    deadline: Duration,
}

/// What the clients and the member saw, to check the partition against.
#[derive(Debug, Default)]
struct Model {
    /// Every event ever made, by index.
    events: Vec<Vec<u8>>,
    /// Event index by bytes (each event's bytes differ: its id is in them).
    by_bytes: BTreeMap<Vec<u8>, usize>,
    /// Offsets a publish acknowledged (stored or duplicate), and the event.
    acked: BTreeMap<u64, usize>,
    /// Per event, the copies publishes said they stored: (offset, ms).
    stored: BTreeMap<usize, Vec<(u64, u64)>>,
    /// What the log holds at each offset, as far as this life knows.
    known: BTreeMap<u64, usize>,
    /// Offsets the group acked, in any life.
    group_acked: BTreeSet<u64>,
    /// The first offset the group never acked.
    unacked_first: Cell<u64>,
    /// The group's offset in the last commit that returned `Ok`.
    committed_ok: u64,
    /// Deliveries outstanding in this life, by delivery id.
    held: BTreeMap<u64, Held>,
    /// Delivery ids settled or expired.
    stale: Vec<u64>,
}

/// What a run exercised, to show the simulation reaches the cases it
/// checks.
#[derive(Debug, Default, Clone, Copy)]
struct Coverage {
    /// Lives that ended in a crash.
    crashes: u64,
    /// Events a publish acknowledged as newly stored.
    stored: u64,
    /// Events a publish answered as duplicates.
    duplicates: u64,
    /// Publishes that failed.
    failed: u64,
    deliveries: u64,
    acks: u64,
    nacks: u64,
    /// Deliveries that went back at their ack deadline.
    expired: u64,
}

impl std::ops::AddAssign for Coverage {
    fn add_assign(&mut self, o: Coverage) {
        self.crashes += o.crashes;
        self.stored += o.stored;
        self.duplicates += o.duplicates;
        self.failed += o.failed;
        self.deliveries += o.deliveries;
        self.acks += o.acks;
        self.nacks += o.nacks;
        self.expired += o.expired;
    }
}

/// A publishing client.
#[derive(Debug, Default)]
struct Client {
    next_seq: u64,
    /// A batch it has no answer for: it publishes it again.
    unanswered: Option<Vec<usize>>,
    /// Events acknowledged to it.
    answered: Vec<usize>,
}

/// What a spawned action came back with.
enum Outcome {
    Published {
        client: usize,
        batch: Vec<usize>,
        at_ms: u64,
        result: Result<Published, Error>,
    },
    Round {
        at: Duration,
        result: Result<Vec<Outgoing>, Error>,
    },
    Committed(Result<(), String>),
}

/// One life: the partition opened, its group, the executor.
struct Life {
    p: Rc<SimPartition>,
    g: Rc<SimGroup>,
    pool: LocalPool,
    outcomes: Rc<RefCell<Vec<Outcome>>>,
    running: Rc<Cell<usize>>,
    /// Connection ids of the attached members.
    members: Vec<u64>,
    /// Whether write and fdatasync failures are on.
    faults: bool,
    /// Whether a dispatch round is under way: a group has one dispatcher,
    /// so rounds never overlap.
    dispatching: Rc<Cell<bool>>,
}

/// A seed's run.
struct Sim {
    rng: SimRng,
    storage: SimStorage,
    clock: SimClock,
    model: Model,
    clients: Vec<Client>,
    next_delivery: Rc<Cell<u64>>,
    next_conn: u64,
    /// A digest of everything that happened, to show a replay is the same.
    trace: u64,
    coverage: Coverage,
    /// Whether `HADRON_SIM_DEBUG` is set.
    debug: bool,
}

/// SimStorage's scheduling noise, without faults.
const QUIET: SimFaults = SimFaults {
    write_fail_ppm: 0,
    sync_fail_ppm: 0,
    yields_max: 2,
    disk_full: false,
};

impl Sim {
    fn new(seed: u64) -> Sim {
        Sim {
            rng: SimRng::new(seed ^ 0x005E_ED0F_9A27),
            storage: SimStorage::new(seed, QUIET),
            clock: SimClock::new(EPOCH_MS),
            model: Model::default(),
            clients: (0..CLIENTS).map(|_| Client::default()).collect(),
            next_delivery: Rc::new(Cell::new(0)),
            next_conn: 0,
            trace: 0,
            coverage: Coverage::default(),
            debug: std::env::var_os("HADRON_SIM_DEBUG").is_some(),
        }
    }

    /// With `HADRON_SIM_DEBUG` set, says what happens.
    fn debug(&self, what: impl FnOnce() -> String) {
        if self.debug {
            eprintln!("[{} ms] {}", self.clock.now_ms() - EPOCH_MS, what());
        }
    }

    fn note(&mut self, value: u64) {
        self.trace = crate::shard::sim_support::fold_trace(self.trace, value);
    }

    /// Runs the seed; returns the trace digest and what it exercised.
    fn run(mut self) -> (u64, Coverage) {
        for life_no in 0..LIVES {
            let mut life = self.open_life(life_no);
            if life_no + 1 == LIVES {
                self.drain(life);
                break;
            }
            self.live(&mut life);
            self.end_life(life, life_no);
        }
        (self.trace, self.coverage)
    }

    /// Opens the partition (recovering it), checks it against the model,
    /// and re-makes the group at its stored offset with a member or two.
    fn open_life(&mut self, life_no: u64) -> Life {
        let mut pool = LocalPool::new();
        let p = pool
            .run_until(Partition::open(
                &self.storage,
                self.clock.clone(),
                Path::new(DIR),
                "s",
                0,
                log_config(),
                DedupLimits {
                    window_ms: WINDOW_MS,
                    keys_max: 1 << 20,
                },
                Limits::DEFAULT,
                crate::config::server::GROUPS_MAX_DEFAULT,
            ))
            .unwrap_or_else(|e| panic!("life {life_no}: the partition does not open: {e}"));
        let p = Rc::new(p);
        self.debug(|| {
            format!(
                "life {life_no} opens: {} records, segments {:?}, dedup window {:?}",
                p.log.visible_offset(),
                p.log.segments(),
                p.dedup_window(self.clock.now_ms())
            )
        });
        self.check_reopened(&mut pool, &p, life_no);
        let stored = p.stored_offsets.borrow().get(GROUP).copied();
        let g = GroupPartition::new(
            GROUP,
            true,
            stored.unwrap_or(0),
            ACK_TIMEOUT,
            Rc::new(Deliveries::default()),
            self.clock.clone(),
        );
        p.groups.borrow_mut().insert(GROUP.to_string(), g.clone());
        let mut life = Life {
            p,
            g,
            pool,
            outcomes: Rc::default(),
            running: Rc::default(),
            members: Vec::new(),
            faults: false,
            dispatching: Rc::default(),
        };
        for _ in 0..self.rng.below(2) + 1 {
            self.attach(&mut life);
        }
        life
    }

    fn attach(&mut self, life: &mut Life) {
        let max_in_flight = self.rng.below(8) as u32 + 1;
        self.attach_with(life, max_in_flight);
    }

    fn attach_with(&mut self, life: &mut Life, max_in_flight: u32) {
        self.next_conn += 1;
        life.g.attach(self.member(self.next_conn), max_in_flight);
        life.members.push(self.next_conn);
    }

    fn member(&self, conn: u64) -> crate::shard::group::MemberId {
        crate::shard::group::MemberId {
            shard: 0,
            conn,
            subscription: conn,
        }
    }

    /// The partition just opened against the model: what the log holds,
    /// and the group's stored offset.
    fn check_reopened(&mut self, pool: &mut LocalPool, p: &SimPartition, life_no: u64) {
        if let Some(damage) = &p.log.recovery().damage {
            panic!("life {life_no}: a crash taken for damage: {damage}");
        }
        let records = pool.run_until(read_back(p));
        assert_eq!(
            p.log.stats().start_offset,
            0,
            "life {life_no}: no retention"
        );
        self.model.known.clear();
        let mut copies: BTreeMap<usize, Vec<(u64, u64)>> = BTreeMap::new();
        for (i, (offset, at_ms, bytes)) in records.iter().enumerate() {
            assert_eq!(*offset, i as u64, "life {life_no}: offsets are dense");
            let Some(&event) = self.model.by_bytes.get(bytes) else {
                panic!("life {life_no}: offset {offset} holds bytes never published");
            };
            self.model.known.insert(*offset, event);
            copies.entry(event).or_default().push((*offset, *at_ms));
            self.note(event as u64);
        }
        for (&offset, &event) in &self.model.acked {
            assert_eq!(
                self.model.known.get(&offset),
                Some(&event),
                "life {life_no}: the acknowledged event {event} at offset {offset} is lost or changed"
            );
        }
        for (event, copies) in &copies {
            for pair in copies.windows(2) {
                let ((o1, t1), (o2, t2)) = (pair[0], pair[1]);
                assert!(
                    t2.abs_diff(t1) > WINDOW_MS,
                    "life {life_no}: event {event} stored twice inside the dedup window, at offsets {o1} and {o2}, {} ms apart",
                    t2.abs_diff(t1)
                );
            }
        }
        let stored = p.stored_offsets.borrow().get(GROUP).copied().unwrap_or(0);
        assert!(
            stored >= self.model.committed_ok,
            "life {life_no}: the stored group offset {stored} is behind the last commit, {}",
            self.model.committed_ok
        );
        self.check_committed(stored, &format!("life {life_no}: stored"));
    }

    /// A committed offset `committed` (`what` says which) covers only
    /// offsets the group acked.
    fn check_committed(&self, committed: u64, what: &str) {
        let first = &self.model.unacked_first;
        while self.model.group_acked.contains(&first.get()) {
            first.set(first.get() + 1);
        }
        assert!(
            committed <= first.get(),
            "{what} group offset {committed} is past offset {}, which was never acked",
            first.get()
        );
    }

    /// Runs the life's steps until they end or the storage crashes.
    fn live(&mut self, life: &mut Life) {
        if self.rng.below(3) != 0 {
            self.storage.crash_after_ops(self.rng.below(300) + 1);
        }
        if self.rng.below(6) == 0 {
            life.faults = true;
            self.storage.set_faults(SimFaults {
                write_fail_ppm: 20_000,
                sync_fail_ppm: 20_000,
                ..QUIET
            });
        }
        for _ in 0..self.rng.below(STEPS_MAX) + 1 {
            self.clock
                .advance(Duration::from_millis(self.rng.below(40)));
            for _ in 0..self.rng.below(3) + 1 {
                self.act(life);
            }
            self.run_until_stalled(life);
            if self.storage.is_frozen() {
                break;
            }
        }
    }

    /// Runs the spawned actions until none can go on; every one must have
    /// answered. Then takes in their outcomes.
    fn run_until_stalled(&mut self, life: &mut Life) {
        life.pool.run_until_stalled();
        assert_eq!(
            life.running.get(),
            0,
            "actions still waiting when nothing can run: a hang"
        );
        let outcomes = std::mem::take(&mut *life.outcomes.borrow_mut());
        for outcome in outcomes {
            match outcome {
                Outcome::Published {
                    client,
                    batch,
                    at_ms,
                    result,
                } => self.on_published(life, client, batch, at_ms, result),
                Outcome::Round { at, result } => self.on_round(life, at, result),
                Outcome::Committed(result) => self.on_committed(life, result),
            }
        }
        self.check_committed(life.g.committed(), "the live");
    }

    /// An error is expected only while the storage is crashed or failing.
    fn expect_failure_allowed(&self, life: &Life, what: &str, why: &str) {
        assert!(
            life.faults || self.storage.is_frozen(),
            "{what} failed with the storage healthy: {why}"
        );
    }

    /// One action, chosen by the seed.
    fn act(&mut self, life: &mut Life) {
        match self.rng.below(12) {
            0..=4 => self.publish(life),
            5 | 6 => self.spawn_round(life),
            7 => {
                let p = life.p.clone();
                spawn(
                    life,
                    async move { Outcome::Committed(p.commit_offsets().await) },
                );
            }
            8 | 9 => self.settle(life),
            10 => {
                let ms = match self.rng.below(10) {
                    0..=5 => self.rng.below(300),
                    6..=8 => ACK_TIMEOUT.as_millis() as u64 + self.rng.below(500),
                    _ => WINDOW_MS + self.rng.below(1_000),
                };
                self.clock.advance(Duration::from_millis(ms));
            }
            _ => self.disconnect(life),
        }
    }

    /// A client publishes: the batch it has no answer for, or new events
    /// (now and then with one it was answered for already); sometimes twice
    /// at once, as a client that timed out and resent does.
    fn publish(&mut self, life: &Life) {
        let c = self.rng.below(CLIENTS) as usize;
        let batch = match self.clients[c].unanswered.clone() {
            Some(batch) if self.rng.below(4) != 0 => batch,
            _ => {
                let mut batch: Vec<usize> = (0..self.rng.below(BATCH_EVENTS_MAX) + 1)
                    .map(|_| self.new_event(c))
                    .collect();
                let answered = &self.clients[c].answered;
                if !answered.is_empty() && self.rng.below(4) == 0 {
                    let old = answered[self.rng.below(answered.len() as u64) as usize];
                    batch.insert(0, old);
                }
                batch
            }
        };
        let copies = if self.rng.below(6) == 0 { 2 } else { 1 };
        for _ in 0..copies {
            let p = life.p.clone();
            let events: Vec<Vec<u8>> = batch
                .iter()
                .map(|&i| self.model.events[i].clone())
                .collect();
            let batch = batch.clone();
            spawn(life, async move {
                // The time the publish reads when it starts (the clock may
                // have moved since the spawn).
                let at_ms = p.clock().now_ms();
                let result = p.publish(&events).await;
                Outcome::Published {
                    client: c,
                    batch,
                    at_ms,
                    result,
                }
            });
        }
    }

    fn new_event(&mut self, client: usize) -> usize {
        let seq = self.clients[client].next_seq;
        self.clients[client].next_seq += 1;
        let data: Vec<u8> = (0..self.rng.below(EVENT_DATA_BYTES_MAX + 1))
            .map(|_| self.rng.next_u64() as u8)
            .collect();
        let bytes = hadron_wire::encode_event(&hadron_wire::EventRef {
            id: &seq.to_string(),
            source: &format!("client-{client}"),
            ty: "sim",
            data: &data,
            ..hadron_wire::EventRef::default()
        });
        let index = self.model.events.len();
        self.model.by_bytes.insert(bytes.clone(), index);
        self.model.events.push(bytes);
        index
    }

    fn on_published(
        &mut self,
        life: &Life,
        client: usize,
        batch: Vec<usize>,
        at_ms: u64,
        result: Result<Published, Error>,
    ) {
        let published = match result {
            Ok(published) => published,
            Err(e) => {
                let (code, why) = (e.code(), e.to_string());
                self.debug(|| format!("client {client} publish of {batch:?} failed: {why}"));
                assert!(
                    matches!(code, ErrorCode::StorageError | ErrorCode::ReadOnly),
                    "a publish failed with {code:?}: {why}"
                );
                self.expect_failure_allowed(life, "a publish", &why);
                self.clients[client].unanswered = Some(batch);
                self.coverage.failed += 1;
                self.note(1);
                return;
            }
        };
        assert_eq!(published.results.len(), batch.len(), "one result per event");
        self.debug(|| {
            format!(
                "client {client} published {batch:?} at {at_ms}: {:?}",
                published.results
            )
        });
        for (&event, &(offset, duplicate)) in batch.iter().zip(&published.results) {
            self.note(offset << 1 | u64::from(duplicate));
            for (what, map) in [
                ("acknowledged", &self.model.acked),
                ("read", &self.model.known),
            ] {
                if let Some(&other) = map.get(&offset) {
                    assert_eq!(
                        other, event,
                        "offset {offset} was {what} as event {other} and is now acknowledged as event {event}"
                    );
                }
            }
            self.model.acked.insert(offset, event);
            self.model.known.insert(offset, event);
            if duplicate {
                self.coverage.duplicates += 1;
                continue;
            }
            self.coverage.stored += 1;
            let copies = self.model.stored.entry(event).or_default();
            if let Some((o, t)) = copies.iter().find(|(_, t)| at_ms.abs_diff(*t) <= WINDOW_MS) {
                panic!(
                    "event {event} was stored again at offset {offset}, {} ms after it was stored at offset {o}: inside the {WINDOW_MS} ms dedup window",
                    at_ms.abs_diff(*t)
                );
            }
            copies.push((offset, at_ms));
        }
        // Now and then the answer is lost on its way: the client will send
        // the same batch again.
        let client = &mut self.clients[client];
        if self.rng.below(5) == 0 {
            client.unanswered = Some(batch);
        } else {
            client.answered.extend(&batch);
            client.unanswered = None;
        }
    }

    fn spawn_round(&mut self, life: &Life) {
        if life.dispatching.replace(true) {
            return;
        }
        let (p, g, next) = (life.p.clone(), life.g.clone(), self.next_delivery.clone());
        let dispatching = life.dispatching.clone();
        spawn(life, async move {
            // The time the round reads when it starts (the clock may have
            // moved since the spawn).
            let at = g.clock().now();
            let mint = move || {
                next.set(next.get() + 1);
                next.get()
            };
            let result = g.round(&p, &mint, &Unlimited).await;
            dispatching.set(false);
            Outcome::Round { at, result }
        });
    }

    /// A round ran at `at`: the deliveries whose deadline had passed went
    /// back; what it handed out is the member's.
    fn on_round(&mut self, life: &Life, at: Duration, result: Result<Vec<Outgoing>, Error>) {
        let expired: Vec<u64> = self
            .model
            .held
            .iter()
            .filter(|(_, h)| h.deadline <= at)
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            self.coverage.expired += 1;
            self.model.held.remove(&id);
            self.model.stale.push(id);
        }
        let out = match result {
            Ok(out) => out,
            Err(why) => {
                self.expect_failure_allowed(life, "a dispatch round", &why.to_string());
                return;
            }
        };
        let visible = life.p.log.visible_offset();
        for d in out {
            self.note(d.delivery_id ^ d.offset << 20);
            assert!(
                life.members.contains(&d.member.conn),
                "delivery to a member that is not attached"
            );
            assert!(d.offset < visible, "delivery of an offset not yet visible");
            let Some(&event) = self.model.by_bytes.get(&d.event) else {
                panic!("delivery of offset {} with bytes never published", d.offset);
            };
            if let Some(&known) = self.model.known.get(&d.offset) {
                assert_eq!(known, event, "offset {} delivered changed", d.offset);
            }
            self.model.known.insert(d.offset, event);
            self.coverage.deliveries += 1;
            let held = Held {
                offset: d.offset,
                conn: d.member.conn,
                deadline: at + ACK_TIMEOUT,
            };
            assert!(self.model.held.insert(d.delivery_id, held).is_none());
        }
    }

    fn on_committed(&mut self, life: &Life, result: Result<(), String>) {
        match result {
            Ok(()) => {
                let snapshot = life.p.last_snapshot.borrow();
                let committed = snapshot.get(GROUP).copied().unwrap_or(0);
                self.check_committed(committed, "a committed");
                self.model.committed_ok = self.model.committed_ok.max(committed);
                self.note(committed);
            }
            Err(why) => self.expect_failure_allowed(life, "a commit", &why),
        }
    }

    /// The member acks, nacks or holds each delivery it has, and now and
    /// then acks one it no longer has, which is refused.
    fn settle(&mut self, life: &Life) {
        let ids: Vec<u64> = self.model.held.keys().copied().collect();
        for id in ids {
            let held = self.model.held[&id];
            let from = (0, held.conn);
            match self.rng.below(10) {
                0..=4 => {
                    life.g.ack(id, from).unwrap_or_else(|why| {
                        panic!("an outstanding delivery's ack was refused: {why}")
                    });
                    self.model.group_acked.insert(held.offset);
                    self.coverage.acks += 1;
                }
                5 | 6 => {
                    life.g.nack(id, from, "failed").unwrap_or_else(|why| {
                        panic!("an outstanding delivery's nack was refused: {why}")
                    });
                    self.coverage.nacks += 1;
                }
                _ => continue,
            }
            self.model.held.remove(&id);
            self.model.stale.push(id);
            self.note(id);
        }
        if !self.model.stale.is_empty() && self.rng.below(3) == 0 {
            let id = self.model.stale[self.rng.below(self.model.stale.len() as u64) as usize];
            for &conn in &life.members {
                let refused = life.g.ack(id, (0, conn));
                assert!(
                    matches!(&refused, Err(e) if e.code() == ErrorCode::UnknownDelivery),
                    "a settled or expired delivery {id} was acked again: {refused:?}"
                );
            }
        }
    }

    /// A member's connection goes: its deliveries go out again; another
    /// connects.
    fn disconnect(&mut self, life: &mut Life) {
        if life.members.is_empty() {
            return self.attach(life);
        }
        let conn = life
            .members
            .remove(self.rng.below(life.members.len() as u64) as usize);
        let (mut ids, _) = life.g.detach(0, conn);
        ids.sort_unstable();
        let mine: Vec<u64> = self
            .model
            .held
            .iter()
            .filter(|(_, h)| h.conn == conn)
            .map(|(&id, _)| id)
            .collect();
        assert_eq!(
            ids, mine,
            "a disconnect gives back exactly the member's deliveries"
        );
        for id in mine {
            self.model.held.remove(&id);
            self.model.stale.push(id);
        }
        if life.members.is_empty() || self.rng.below(2) == 0 {
            self.attach(life);
        }
    }

    /// Ends a life: a crash already under way, one now, or a clean restart.
    fn end_life(&mut self, life: Life, life_no: u64) {
        drop(life);
        self.storage.disarm_crash();
        self.storage.set_faults(QUIET);
        let mode = if self.rng.below(2) == 0 {
            CrashMode::Torn
        } else {
            CrashMode::DropUnsynced
        };
        self.debug(|| {
            format!(
                "life {life_no} ends: frozen {} mode {mode:?}",
                self.storage.is_frozen()
            )
        });
        if self.storage.is_frozen() {
            self.storage.restart(mode);
            self.coverage.crashes += 1;
        } else if self.rng.below(2) == 0 {
            self.storage.crash(mode);
            self.coverage.crashes += 1;
        }
        // Deliveries die with the process.
        let held = std::mem::take(&mut self.model.held);
        self.model.stale.extend(held.keys());
        self.note(life_no);
    }

    /// The last life: the member acks all it is given until the group has
    /// the whole log; every acknowledged event was then delivered and
    /// acked, and the drained offset, committed, survives a reopen.
    fn drain(&mut self, mut owned: Life) {
        let life = &mut owned;
        self.attach_with(life, 64);
        let end = life.p.log.visible_offset();
        for _ in 0..DRAIN_ROUNDS_MAX {
            if life.g.committed() >= end && self.model.held.is_empty() {
                break;
            }
            self.spawn_round(life);
            self.run_until_stalled(life);
            let ids: Vec<u64> = self.model.held.keys().copied().collect();
            for id in ids {
                let held = self.model.held[&id];
                life.g
                    .ack(id, (0, held.conn))
                    .unwrap_or_else(|why| panic!("drain: an ack was refused: {why}"));
                self.model.group_acked.insert(held.offset);
                self.model.held.remove(&id);
            }
            self.clock.advance(RETRIES_DUE_AFTER);
        }
        assert!(
            life.g.committed() >= end,
            "the group did not drain: committed {} of {end}",
            life.g.committed()
        );
        for &offset in self.model.acked.keys() {
            assert!(
                self.model.group_acked.contains(&offset),
                "the acknowledged event at offset {offset} was never delivered and acked"
            );
        }
        let p = life.p.clone();
        life.pool
            .run_until(p.commit_offsets())
            .unwrap_or_else(|e| panic!("drain: the commit failed: {e}"));
        self.model.committed_ok = end;
        drop(p);
        self.end_life(owned, LIVES);
        let reopened = self.open_life(LIVES + 1);
        let stored = reopened.p.stored_offsets.borrow().get(GROUP).copied();
        assert_eq!(stored, Some(end), "the drained offset after a reopen");
    }
}

/// Spawns an action on the life's executor; its outcome is taken in once
/// the executor stalls.
fn spawn(life: &Life, action: impl Future<Output = Outcome> + 'static) {
    let (outcomes, running) = (life.outcomes.clone(), life.running.clone());
    running.set(running.get() + 1);
    life.pool
        .spawner()
        .spawn_local(async move {
            let outcome = action.await;
            outcomes.borrow_mut().push(outcome);
            running.set(running.get() - 1);
        })
        .expect("the pool takes tasks");
}

/// Runs every seed; the first that fails is named with the command that
/// replays it.
#[test]
fn partition_sim_keeps_acknowledged_events_dedup_and_group_offsets_across_crashes() {
    let (seeds, total) = run_seeds("partition_sim", SEEDS, |seed| Sim::new(seed).run().1);
    if seeds > 1 {
        // Each case the model checks was reached, many times.
        let Coverage {
            crashes,
            stored,
            duplicates,
            failed,
            deliveries,
            acks,
            nacks,
            expired,
        } = total;
        for (what, n) in [
            ("crashes", crashes),
            ("stored", stored),
            ("duplicates", duplicates),
            ("failed publishes", failed),
            ("deliveries", deliveries),
            ("acks", acks),
            ("nacks", nacks),
            ("expired deliveries", expired),
        ] {
            assert!(n >= seeds as u64 / 10, "only {n} {what}");
        }
    }
}

/// A seed is the same run every time.
#[test]
fn partition_sim_replays_a_seed_identically() {
    for seed in [7, 1_234_567] {
        assert_eq!(
            Sim::new(seed).run().0,
            Sim::new(seed).run().0,
            "seed {seed}"
        );
    }
}
