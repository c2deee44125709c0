//! Tests of the store's catch-up reads (`fetch.rs`) and of cuts into
//! sealed segments through it: alone, and with three [`ReplicatedLog`]s
//! over engine logs where one follower falls far behind.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::Path;
use std::time::Duration;

use futures::executor::block_on;
use hadron_engine::storage::sim::{CrashMode, SimFaults, SimStorage};
use raft::Storage as _;
use raft::eraftpb::Message;

use super::tests::{all, config, entry, next_offset, open};
use super::*;
use crate::replication::{GroupSettings, PeerNet, ReplicatedLog};
use crate::shard::clock::sim::SimClock;

fn temporarily_unavailable<T: std::fmt::Debug>(got: raft::Result<T>) -> bool {
    matches!(
        got,
        Err(raft::Error::Store(StorageError::LogTemporarilyUnavailable))
    )
}

/// Entries below the cache: asked for once per first index (asking again
/// records nothing), at most `FETCHES_MAX` at a time; once read, served
/// once under raft's size limit, then asked for again.
#[test]
fn engine_store_reads_entries_below_its_cache_asynchronously_within_bounds() {
    let sim = SimStorage::new(21, SimFaults::default());
    let mut store = open(&sim);
    let mut appended = Vec::new();
    for i in 1..=20 {
        let e = entry(0, i, 1, next_offset(&store), 200);
        store.append(std::slice::from_ref(&e)).unwrap();
        appended.push(e);
    }
    block_on(store.persist()).unwrap();
    store.release_below(15);
    let can_wait = || GetEntriesContext::empty(true);
    assert!(temporarily_unavailable(store.entries(
        3,
        21,
        None,
        can_wait()
    )));
    assert!(temporarily_unavailable(store.entries(
        3,
        21,
        None,
        can_wait()
    )));
    let fetches = store.take_fetches();
    assert_eq!(fetches.len(), 1, "one read per first index");
    assert_eq!(
        (fetches[0].low, fetches[0].high),
        (3, 15),
        "up to the cache"
    );
    assert!(store.take_fetches().is_empty());
    // While it is read, asking again records nothing.
    assert!(temporarily_unavailable(store.entries(
        3,
        21,
        None,
        can_wait()
    )));
    assert!(store.take_fetches().is_empty());
    let fetch = fetches.into_iter().next().unwrap();
    assert!(block_on(store.read_fetch(fetch)).is_some());
    let got = store.entries(3, 21, None, can_wait()).unwrap();
    assert!(got == appended[2..14], "entries 3..15, byte for byte");
    // Served once: the next ask reads again.
    assert!(temporarily_unavailable(store.entries(
        3,
        21,
        None,
        can_wait()
    )));
    // A fetch taken holds its slot until read or dropped.
    let taken = store.take_fetches();
    assert_eq!(taken.len(), 1);
    assert!(temporarily_unavailable(store.entries(
        3,
        21,
        None,
        can_wait()
    )));
    assert!(store.take_fetches().is_empty(), "3 is being read");
    drop(taken);
    // Raft's size limit: the read and what is served keep to it.
    let limit = appended[2].data.len() as u64 + 1;
    for low in 3..3 + FETCHES_MAX as u64 + 2 {
        let _ = store.entries(low, 21, limit, can_wait());
    }
    let fetches = store.take_fetches();
    assert_eq!(fetches.len(), FETCHES_MAX, "at most FETCHES_MAX");
    let contexts = block_on(read_fetches(&store, fetches));
    assert_eq!(contexts.len(), FETCHES_MAX);
    assert_eq!(
        store.entries(4, 21, limit, can_wait()).unwrap(),
        appended[3..4],
        "one entry within the limit"
    );
    // Every slot used (7 runs read, 2 recorded): a new first index takes
    // the slot of the oldest run not yet served (3's).
    let _ = store.entries(2, 21, limit, can_wait());
    let _ = store.entries(1, 21, limit, can_wait());
    assert_eq!(store.take_fetches().len(), 2);
    // Without the means to wait, raft is told the entries are unavailable.
    assert!(matches!(
        store.entries(3, 21, None, GetEntriesContext::empty(false)),
        Err(raft::Error::Store(StorageError::Unavailable))
    ));
    assert_eq!(
        store
            .entries(5, 21, None, GetEntriesContext::empty(false))
            .unwrap(),
        appended[4..5],
        "5's run, read within the limit"
    );
}

/// A new leader's conflicting suffix reaching back across segment rolls
/// replaces the old one through the store: readable at once, cut durably
/// at `persist` (a crash before it brings the old suffix back), and the
/// log's later segments are gone.
#[test]
fn engine_store_replaces_a_suffix_spanning_segment_rolls() {
    for crash_first in [true, false] {
        let sim = SimStorage::new(22, SimFaults::default());
        let mut store = open(&sim);
        let mut old = Vec::new();
        for i in 1..=150 {
            let e = entry(i % 3 % 2, i, 1, next_offset(&store), 700);
            store.append(std::slice::from_ref(&e)).unwrap();
            old.push(e);
        }
        let hs = HardState {
            term: 2,
            commit: 20,
            ..HardState::default()
        };
        store.set_hard_state(&hs);
        block_on(store.persist()).unwrap();
        let segments = store.log().segments().len();
        assert!(segments >= 3, "rolled: {segments} segments");
        // The new suffix begins in the first segment.
        let first = 30;
        let log = store.log();
        let b = block_on(log.entries(first, first + 1, u64::MAX)).unwrap();
        let mut offset = batch::parse_header(&b[0].bytes).unwrap().base_offset;
        assert!(
            log.segments()[1].base_offset > offset,
            "the cut is in a sealed segment"
        );
        let mut new = Vec::new();
        for i in first..first + 5 {
            let e = entry(i % 2, i, 2, offset, 300);
            if !e.data.is_empty() {
                offset += batch::parse_header(&e.data).unwrap().offsets_taken();
            }
            new.push(e);
        }
        store.append(&new).unwrap();
        let mut want = old[..first as usize - 1].to_vec();
        want.extend(new);
        assert!(all(&store) == want, "readable at once");
        if crash_first {
            drop((store, log));
            sim.crash(CrashMode::DropUnsynced);
            let store = open(&sim);
            assert!(all(&store) == old, "not persisted: the old suffix");
            continue;
        }
        block_on(store.persist()).unwrap();
        assert_eq!(store.log().segments().len(), 1, "the later segments gone");
        assert_eq!(store.log().stats().next_offset, offset);
        drop((store, log));
        sim.crash(CrashMode::DropUnsynced);
        let store = open(&sim);
        assert!(all(&store) == want, "the new suffix, durable");
        assert_eq!(store.initial_state().unwrap().hard_state, hs);
    }
}

/// Messages between the nodes, in send order; those to or from a node
/// cut off are dropped at delivery.
#[derive(Clone, Default)]
struct Wire(Rc<RefCell<VecDeque<Message>>>);

impl PeerNet for Wire {
    fn send(&self, msg: Message) -> bool {
        self.0.borrow_mut().push_back(msg);
        true
    }
}

type Node = ReplicatedLog<EngineLogStore<SimStorage>, Wire, SimClock>;

/// Bytes of entries a node loads into memory at open (small: the test's
/// logs outgrow it, and the driver releases applied entries as it goes).
const TEST_CACHE_BYTES: usize = 4 << 10;

struct Cluster {
    clock: SimClock,
    wire: Wire,
    stores: Vec<EngineLogStore<SimStorage>>,
    nodes: Vec<Node>,
    cut_off: Option<u64>,
    /// Catch-up reads run and handed to raft.
    fetched: u64,
    /// Data entries applied on each node, in order.
    applied: Vec<Vec<Entry>>,
}

impl Cluster {
    fn new() -> Cluster {
        let clock = SimClock::new(1_700_000_000_000);
        let wire = Wire::default();
        let (mut stores, mut nodes) = (Vec::new(), Vec::new());
        for id in 1..=3u64 {
            let sim = SimStorage::new(id, SimFaults::default());
            let dir = Path::new("/data/raft/1");
            let log = block_on(Log::open(sim, dir, config())).unwrap();
            let mut store = block_on(EngineLogStore::open_with_cache(
                Rc::new(log),
                TEST_CACHE_BYTES,
            ))
            .unwrap();
            store.set_conf_state(&ConfState {
                voters: vec![1, 2, 3],
                ..ConfState::default()
            });
            block_on(store.persist()).unwrap();
            // Distinct election timeouts: node 1 campaigns first.
            let ticks = 6 + 4 * id as usize;
            let settings = GroupSettings {
                election_ticks: ticks..ticks + 1,
                ..GroupSettings::new(id, 1)
            };
            let node =
                ReplicatedLog::new(settings, store.clone(), wire.clone(), clock.clone()).unwrap();
            stores.push(store);
            nodes.push(node);
        }
        Cluster {
            clock,
            wire,
            stores,
            nodes,
            cut_off: None,
            fetched: 0,
            applied: vec![Vec::new(); 3],
        }
    }

    fn leader(&self) -> Option<usize> {
        self.nodes.iter().position(|n| n.is_leader())
    }

    /// Proposes `count` event batches on the leader, each stamped with the
    /// term and index raft will give it and at the leader's next offsets.
    fn propose(&mut self, count: u64, record_bytes: usize) {
        let Some(l) = self.leader() else { return };
        let (term, last) = (self.nodes[l].term(), self.nodes[l].last_index());
        // One record each: batch `i` takes offset `next + i`.
        let next = next_offset(&self.stores[l]);
        for i in 0..count {
            let (index, offset) = (last + 1 + i, next + i);
            let stamp = batch::BatchStamp {
                kind: BatchKind::Events,
                base_offset: offset,
                first_timestamp_ms: 1_000 + index,
                term,
                raft_index: index,
            };
            let mut out = Vec::new();
            batch::encode_into(&mut out, &stamp, &[vec![index as u8; record_bytes]]);
            // Answered at commit: the test compares the logs instead.
            drop(self.nodes[l].propose(Bytes::from(out)));
        }
    }

    /// One step of the shard loop each node runs: ticks, messages, turns,
    /// durable rounds, catch-up reads, applies and cache releases.
    fn step(&mut self, proposals: u64) {
        self.clock.advance(Duration::from_millis(25));
        for node in &mut self.nodes {
            node.tick_due();
        }
        let due: Vec<Message> = self.wire.0.borrow_mut().drain(..).collect();
        for msg in due {
            if self.cut_off.is_some_and(|n| n == msg.to || n == msg.from) {
                continue;
            }
            self.nodes[msg.to as usize - 1].step(msg);
        }
        self.propose(proposals, 1_000);
        for (i, node) in self.nodes.iter_mut().enumerate() {
            let store = &self.stores[i];
            node.turn().unwrap();
            if let Some(number) = node.persist_number() {
                block_on(store.persist()).unwrap();
                node.on_persisted(number).unwrap();
            }
            let fetches = node.store().take_fetches();
            assert!(fetches.len() <= FETCHES_MAX);
            for context in block_on(read_fetches(store, fetches)) {
                self.fetched += 1;
                node.entries_fetched(context).unwrap();
            }
            self.applied[i].extend(node.take_applied());
            store.release_below(node.applied() + 1);
        }
    }

    /// Steps until `done` holds, at most `steps_max` steps.
    fn run_until(&mut self, steps_max: u64, proposals: u64, done: impl Fn(&Cluster) -> bool) {
        for _ in 0..steps_max {
            if done(self) {
                return;
            }
            self.step(proposals);
        }
        assert!(done(self), "not reached in {steps_max} steps");
    }

    /// Every entry of node `i`'s engine log, as batches.
    fn log_bytes(&self, i: usize) -> Vec<Bytes> {
        let log = self.stores[i].log();
        let entries = block_on(log.entries(1, log.last_index() + 1, u64::MAX)).unwrap();
        entries.into_iter().map(|b| b.bytes).collect()
    }
}

/// A follower cut off while the leader commits more than one append
/// message's worth (the leader's cache releasing what it applied) catches
/// up once the link heals, through catch-up reads of the leader's engine
/// log, to logs identical byte for byte on every node.
#[test]
fn a_follower_far_behind_catches_up_from_the_leaders_segments() {
    let mut c = Cluster::new();
    c.run_until(400, 0, |c| c.leader().is_some());
    let l = c.leader().unwrap();
    let behind = (0..3).find(|&i| i != l).unwrap();
    c.run_until(200, 1, |c| c.nodes.iter().all(|n| n.applied() >= 3));
    c.cut_off = Some(behind as u64 + 1);
    let stale = c.nodes[behind].last_index();
    // About 1.6 MiB: more than one append message (`MESSAGE_BYTES_MAX`).
    c.run_until(400, 8, |c| c.nodes[l].applied() >= stale + 1_600);
    c.run_until(200, 0, |c| {
        let target = c.nodes[l].last_index();
        c.nodes
            .iter()
            .enumerate()
            .all(|(i, n)| i == behind || n.applied() >= target)
    });
    assert_eq!(c.nodes[behind].last_index(), stale, "cut off");
    assert!(c.stores[l].log().segments().len() > 10, "rolled");
    // The leader no longer holds the follower's next entries in memory.
    assert!(matches!(
        c.stores[l].entries(stale + 1, stale + 2, None, GetEntriesContext::empty(false)),
        Err(raft::Error::Store(StorageError::Unavailable))
    ));
    assert_eq!(c.fetched, 0, "nothing was read for a follower yet");
    c.cut_off = None;
    let last = c.nodes[l].last_index();
    c.run_until(2_000, 0, |c| c.nodes.iter().all(|n| n.applied() >= last));
    assert!(
        c.fetched >= 2,
        "caught up through catch-up reads: {}",
        c.fetched
    );
    assert_eq!(c.leader(), Some(l), "no election disrupted it");
    let leader_log = c.log_bytes(l);
    assert_eq!(leader_log.len() as u64, last);
    for i in 0..3 {
        assert!(c.log_bytes(i) == leader_log, "node {}'s log differs", i + 1);
        assert!(
            c.applied[i] == c.applied[l],
            "node {} applied otherwise",
            i + 1
        );
    }
}
