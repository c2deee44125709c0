//! Tests of [`EngineLogStore`](super::EngineLogStore): against what was
//! appended, across reopens and crashes, and against `MemLogStore`.

use std::path::Path;

use futures::executor::block_on;
use hadron_engine::log::LogConfig;
use hadron_engine::storage::sim::{CrashMode, SimFaults, SimRng, SimStorage};
use raft::Storage as _;

use super::*;
use crate::replication::MemLogStore;

pub(super) fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 64 << 10,
        index_interval_bytes: 512,
        write_bytes_max: 8 << 10,
        pending_bytes_max: 128 << 10,
        batch_bytes_max: 16 << 10,
        ..LogConfig::default()
    }
}

pub(super) fn open(sim: &SimStorage) -> EngineLogStore<SimStorage> {
    let log = block_on(Log::open(sim.clone(), Path::new("/data/raft/0"), config())).unwrap();
    block_on(EngineLogStore::open(Rc::new(log))).unwrap()
}

/// An entry of `kind` (0 events, 1 empty, 2 conf change) at `index`,
/// `term`, for a log whose next offset is `next_offset`.
pub(super) fn entry(kind: u64, index: u64, term: u64, next_offset: u64, size: usize) -> Entry {
    let mut e = Entry {
        index,
        term,
        ..Entry::default()
    };
    match kind {
        0 => {
            let stamp = BatchStamp {
                kind: BatchKind::Events,
                base_offset: next_offset,
                first_timestamp_ms: 1_000 + index,
                term,
                raft_index: index,
            };
            let records: Vec<Vec<u8>> = (0..1 + index % 3)
                .map(|r| vec![(index + r) as u8; size])
                .collect();
            let mut out = Vec::new();
            batch::encode_into(&mut out, &stamp, &records);
            e.data = Bytes::from(out);
        }
        1 => {}
        _ => {
            e.set_entry_type(EntryType::EntryConfChangeV2);
            e.data = Bytes::from(vec![index as u8; 12]);
        }
    }
    e
}

pub(super) fn next_offset(store: &EngineLogStore<SimStorage>) -> u64 {
    store.log().stats().next_offset
}

pub(super) fn all(store: &impl raft::Storage) -> Vec<Entry> {
    let (first, last) = (store.first_index().unwrap(), store.last_index().unwrap());
    store
        .entries(first, last + 1, None, GetEntriesContext::empty(false))
        .unwrap()
}

/// Entries of every kind come back as raft appended them, from memory
/// and after a reopen, with the hard and conf state persisted; a crash
/// keeps what `persist` covered and nothing else.
#[test]
fn engine_store_reads_back_entries_and_state_across_reopen_and_crash() {
    let sim = SimStorage::new(7, SimFaults::default());
    let mut store = open(&sim);
    assert_eq!(
        (store.first_index().unwrap(), store.last_index().unwrap()),
        (1, 0)
    );
    assert_eq!(store.term(0).unwrap(), 0);
    let mut appended = Vec::new();
    for (i, kind) in [1, 0, 2, 0, 0].into_iter().enumerate() {
        let e = entry(kind, i as u64 + 1, 2, next_offset(&store), 100);
        store.append(std::slice::from_ref(&e)).unwrap();
        appended.push(e);
    }
    assert_eq!(all(&store), appended, "readable at once");
    let hs = HardState {
        term: 2,
        vote: 3,
        commit: 3,
        ..HardState::default()
    };
    store.set_hard_state(&hs);
    let cs = ConfState {
        voters: vec![1, 2, 3],
        learners: vec![4],
        ..ConfState::default()
    };
    store.set_conf_state(&cs);
    block_on(store.persist()).unwrap();
    // Not persisted: one more entry and a later commit.
    let extra = entry(0, 6, 2, next_offset(&store), 50);
    store.append(std::slice::from_ref(&extra)).unwrap();
    store.set_hard_state(&HardState {
        commit: 5,
        ..hs.clone()
    });
    assert_eq!(store.last_index().unwrap(), 6);
    drop(store);
    sim.crash(CrashMode::DropUnsynced);
    let store = open(&sim);
    assert_eq!(all(&store), appended, "the persisted entries, no more");
    let state = store.initial_state().unwrap();
    assert_eq!(state.hard_state, hs);
    assert_eq!(state.conf_state, cs);
    assert_eq!(store.term(5).unwrap(), 2);
    assert!(matches!(
        store.term(6),
        Err(raft::Error::Store(StorageError::Unavailable))
    ));
    // Released entries are read from the log asynchronously (`fetch.rs`):
    // raft is told to wait where it can, and terms still come from the
    // log's table.
    store.release_below(4);
    let got = store.entries(4, 6, None, GetEntriesContext::empty(false));
    assert_eq!(got.unwrap(), appended[3..]);
    assert!(matches!(
        store.entries(2, 6, None, GetEntriesContext::empty(true)),
        Err(raft::Error::Store(StorageError::LogTemporarilyUnavailable))
    ));
    assert!(matches!(
        store.entries(2, 6, None, GetEntriesContext::empty(false)),
        Err(raft::Error::Store(StorageError::Unavailable))
    ));
    assert_eq!(store.term(2).unwrap(), 2);
}

/// At open, only the newest entries within the byte limit are loaded
/// into memory; older ones are told to wait (asynchronous reads), and
/// their terms still come from the log.
#[test]
fn engine_store_loads_the_newest_entries_within_its_byte_limit() {
    let sim = SimStorage::new(10, SimFaults::default());
    let mut store = open(&sim);
    let mut appended = Vec::new();
    for i in 1..=10 {
        let e = entry(0, i, 1, next_offset(&store), 1_000);
        store.append(std::slice::from_ref(&e)).unwrap();
        appended.push(e);
    }
    block_on(store.persist()).unwrap();
    let log = store.log();
    drop(store);
    let limit = appended[7..].iter().map(|e| e.data.len()).sum::<usize>();
    let store = block_on(EngineLogStore::open_with_cache(log, limit)).unwrap();
    let got = store.entries(8, 11, None, GetEntriesContext::empty(false));
    assert_eq!(got.unwrap(), appended[7..]);
    assert!(matches!(
        store.entries(7, 11, None, GetEntriesContext::empty(true)),
        Err(raft::Error::Store(StorageError::LogTemporarilyUnavailable))
    ));
    assert_eq!(store.term(1).unwrap(), 1);
    assert_eq!(store.first_index().unwrap(), 1);
}

/// Applied entries leave the cache, keeping the newest `lag_entries` of
/// them unless they take more than `bytes_max`; unapplied ones stay
/// whatever their size; a cut keeps the byte count right.
#[test]
fn engine_store_releases_applied_entries_by_count_and_bytes() {
    let sim = SimStorage::new(12, SimFaults::default());
    let mut store = open(&sim);
    let mut appended = vec![Entry::default()];
    for i in 1..=20 {
        let e = entry(0, i, 1, next_offset(&store), 1_000);
        store.append(std::slice::from_ref(&e)).unwrap();
        appended.push(e);
    }
    let bytes = |from: usize, to: usize| {
        appended[from..=to]
            .iter()
            .map(|e| e.data.len())
            .sum::<usize>()
    };
    assert_eq!(store.cache_bytes(), bytes(1, 20));
    let cached_from = |s: &EngineLogStore<SimStorage>| {
        (1..=20)
            .find(|&i| {
                s.entries(i, 21, None, GetEntriesContext::empty(false))
                    .is_ok()
            })
            .unwrap()
    };
    // 15 applied, keep 4 of them: entries from 12 on stay.
    store.release_applied(15, 4, usize::MAX);
    assert_eq!(cached_from(&store), 12);
    assert_eq!(store.cache_bytes(), bytes(12, 20));
    // Over the byte limit: applied ones go even within the lag, never
    // the unapplied 16..=20.
    store.release_applied(15, 4, bytes(19, 20));
    assert_eq!(cached_from(&store), 16);
    assert_eq!(store.cache_bytes(), bytes(16, 20));
    // A conflicting suffix from 19: the bytes of 19 and 20 leave too.
    let e = entry(0, 19, 2, 0, 10);
    block_on(store.persist()).unwrap();
    store.append(std::slice::from_ref(&e)).unwrap();
    assert_eq!(store.cache_bytes(), bytes(16, 18) + e.data.len());
}

/// What the store refuses: a gap, a cut into the committed prefix, a
/// batch stamped with another index.
#[test]
fn engine_store_refuses_gaps_cuts_and_mismatched_batches() {
    let sim = SimStorage::new(8, SimFaults::default());
    let mut store = open(&sim);
    for i in 1..=3 {
        let e = entry(0, i, 1, next_offset(&store), 10);
        store.append(&[e]).unwrap();
    }
    store.set_hard_state(&HardState {
        term: 1,
        commit: 2,
        ..HardState::default()
    });
    let at = next_offset(&store);
    assert_eq!(
        store.append(&[entry(0, 5, 1, at, 10)]),
        Err(StoreError::Gap {
            first_new: 5,
            last: 3
        })
    );
    assert_eq!(
        store.append(&[entry(1, 2, 2, at, 0)]),
        Err(StoreError::CutCommitted {
            first_new: 2,
            commit: 2
        })
    );
    let mut wrong = entry(0, 4, 1, at, 10);
    wrong.index = 4;
    wrong.term = 2;
    assert!(matches!(
        store.append(&[wrong]),
        Err(StoreError::Rejected(why)) if why.contains("stamped index 4 term 1")
    ));
    assert_eq!(store.last_index().unwrap(), 3, "nothing written");
}

/// A new leader's conflicting suffix replaces the uncommitted entries:
/// readable at once, made durable by `persist` (a crash before it
/// brings the old suffix back), and the log's offsets stay dense.
#[test]
fn engine_store_replaces_a_conflicting_suffix_at_persist() {
    for crash_first in [true, false] {
        let sim = SimStorage::new(9, SimFaults::default());
        let mut store = open(&sim);
        let mut old = Vec::new();
        for i in 1..=6 {
            let e = entry(i % 2, i, 1, next_offset(&store), 300);
            store.append(std::slice::from_ref(&e)).unwrap();
            old.push(e);
        }
        let hs = HardState {
            term: 2,
            commit: 3,
            ..HardState::default()
        };
        store.set_hard_state(&hs);
        block_on(store.persist()).unwrap();
        // The leader's offsets follow its own log: entry 4 begins where
        // the kept prefix ends.
        let kept_next = {
            let log = store.log();
            let b = block_on(log.entries(4, 5, u64::MAX)).unwrap();
            batch::parse_header(&b[0].bytes).unwrap().base_offset
        };
        let new4 = entry(0, 4, 2, kept_next, 100);
        let events = batch::parse_header(&new4.data).unwrap().offsets_taken();
        let new5 = entry(1, 5, 2, kept_next + events, 0);
        store.append(&[new4.clone(), new5.clone()]).unwrap();
        let mut want = old[..3].to_vec();
        want.extend([new4, new5]);
        assert_eq!(all(&store), want, "readable at once");
        assert!(matches!(
            store.term(6),
            Err(raft::Error::Store(StorageError::Unavailable))
        ));
        if crash_first {
            drop(store);
            sim.crash(CrashMode::DropUnsynced);
            let store = open(&sim);
            assert_eq!(all(&store), old, "not persisted: the old suffix");
            continue;
        }
        block_on(store.persist()).unwrap();
        assert_eq!(store.log().stats().next_offset, kept_next + events);
        drop(store);
        sim.crash(CrashMode::DropUnsynced);
        let store = open(&sim);
        assert_eq!(all(&store), want);
        assert_eq!(store.initial_state().unwrap().hard_state, hs);
    }
}

/// `count` random entries (every kind) from index `first` at `term`,
/// their batches from offset `offset` on.
fn random_entries(rng: &mut SimRng, first: u64, count: u64, term: u64, offset: u64) -> Vec<Entry> {
    let mut offset = offset;
    (first..first + count)
        .map(|next| {
            let e = entry(rng.below(3), next, term, offset, rng.below(4_000) as usize);
            if e.get_entry_type() == EntryType::EntryNormal && !e.data.is_empty() {
                offset += batch::parse_header(&e.data).unwrap().offsets_taken();
            }
            e
        })
        .collect()
}

/// The engine store answers as the model does: bounds, entries (all,
/// and a random range under a random limit), terms, hard state.
fn assert_same(store: &EngineLogStore<SimStorage>, mem: &MemLogStore, rng: &mut SimRng, ctx: &str) {
    let last = store.last_index().unwrap();
    assert_eq!(last, mem.last_index().unwrap(), "{ctx}");
    assert_eq!(
        store.first_index().unwrap(),
        mem.first_index().unwrap(),
        "{ctx}"
    );
    assert!(all(store) == all(mem), "{ctx}: entries differ");
    let (s, m) = (store.initial_state().unwrap(), mem.initial_state().unwrap());
    assert_eq!(s.hard_state, m.hard_state, "{ctx}");
    for i in 0..=last {
        assert_eq!(
            store.term(i).unwrap(),
            mem.term(i).unwrap(),
            "{ctx} term {i}"
        );
    }
    let lo = 1 + rng.below(last + 1);
    let hi = lo + rng.below(last + 2 - lo);
    let max = rng.below(3_000);
    let ctx_e = || GetEntriesContext::empty(false);
    assert!(
        store.entries(lo, hi, max, ctx_e()).unwrap() == mem.entries(lo, hi, max, ctx_e()).unwrap(),
        "{ctx}: entries({lo}, {hi}, {max}) differ"
    );
}

/// Over random appends (every entry kind at rising terms), conflicting
/// suffixes (some reaching back across segment rolls), hard-state changes,
/// persists, crashes and reopens, the engine store answers as
/// `MemLogStore` does.
#[test]
fn engine_store_matches_mem_log_store_over_random_sequences() {
    // Cuts that reached into a sealed segment (the log had rolled).
    let mut sealed_cuts = 0;
    for seed in 0..40u64 {
        let mut rng = SimRng::new(seed);
        let sim = SimStorage::new(seed, SimFaults::default());
        let mut store = open(&sim);
        let mut mem = MemLogStore::new_empty();
        // A new engine log records term 1 in log.meta (a cluster of
        // one's term); the model starts there too.
        assert_eq!(store.hard_state().term, 1);
        mem.set_hard_state(&store.hard_state());
        mem.sync();
        let mut term = 1;
        for step in 0..100 {
            let (commit, last) = (mem.hard_state().commit, store.last_index().unwrap());
            match rng.below(12) {
                10.. if commit < last => {
                    // A new leader's conflicting suffix, then persisted
                    // (`MemLogStore` cuts durably at once, the engine
                    // store at `persist`); its offsets follow the kept
                    // prefix.
                    term += 1;
                    let first = commit + 1 + rng.below(last - commit);
                    let log = store.log();
                    let b = block_on(log.entries(first, first + 1, u64::MAX)).unwrap();
                    let offset = batch::parse_header(&b[0].bytes).unwrap().base_offset;
                    let count = 1 + rng.below(3);
                    let batch = random_entries(&mut rng, first, count, term, offset);
                    let segments = log.segments().len();
                    store.append(&batch).unwrap();
                    mem.append(&batch).unwrap();
                    block_on(store.persist()).unwrap();
                    mem.sync();
                    if log.segments().len() < segments {
                        sealed_cuts += 1;
                    }
                }
                0..=4 | 10.. => {
                    term += u64::from(rng.below(4) == 0);
                    let count = 1 + rng.below(4);
                    let batch =
                        random_entries(&mut rng, last + 1, count, term, next_offset(&store));
                    store.append(&batch).unwrap();
                    mem.append(&batch).unwrap();
                }
                5 | 6 => {
                    let hs = HardState {
                        term,
                        vote: rng.below(4),
                        commit: last.min(commit + rng.below(5)),
                        ..HardState::default()
                    };
                    store.set_hard_state(&hs);
                    mem.set_hard_state(&hs);
                }
                7 | 8 => {
                    block_on(store.persist()).unwrap();
                    mem.sync();
                }
                9 => {
                    drop(store);
                    sim.crash(CrashMode::DropUnsynced);
                    store = open(&sim);
                    mem.crash();
                }
            }
            assert_same(&store, &mem, &mut rng, &format!("seed {seed} step {step}"));
        }
    }
    assert!(
        sealed_cuts >= 10,
        "cuts into sealed segments: {sealed_cuts}"
    );
}
