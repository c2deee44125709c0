//! Snapshot descriptors (docs/replication.md section 8): what
//! `snapshot()` answers after retention, installing one on a follower
//! (staged, then made by `persist`), crashes around that `persist`, and
//! bad descriptors refused by name.

use futures::executor::block_on;
use hadron_engine::storage::sim::{CrashMode, SimFaults, SimStorage};
use raft::Storage as _;
use raft::eraftpb::{ConfState, HardState, Snapshot};

use super::tests::{all, entry, next_offset, open};
use super::*;

/// A leader's log of `n` entries at term 2, committed, with retention
/// applied up to its third segment.
fn leader_after_retention(sim: &SimStorage, n: u64) -> EngineLogStore<SimStorage> {
    let mut store = open(sim);
    for i in 1..=n {
        let e = entry(0, i, 2, next_offset(&store), 900);
        store.append(&[e]).unwrap();
    }
    store.set_hard_state(&HardState {
        term: 2,
        commit: n,
        ..HardState::default()
    });
    store.set_conf_state(&ConfState {
        voters: vec![1, 2, 3],
        ..ConfState::default()
    });
    block_on(store.persist()).unwrap();
    let log = store.log();
    let keep = log.segments()[2].base_offset;
    block_on(log.delete_before(keep)).unwrap();
    store
}

fn descriptor(index: u64, term: u64, data: Vec<u8>) -> Snapshot {
    let mut s = Snapshot {
        data: data.into(),
        ..Snapshot::default()
    };
    s.mut_metadata().index = index;
    s.mut_metadata().term = term;
    s.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
    s
}

/// The descriptor names the point before the first entry held, with its
/// real term (recorded by retention) and the log's start as data; its
/// data decodes back to that offset.
#[test]
fn engine_store_snapshot_descriptor_names_the_point_before_its_first_entry() {
    let sim = SimStorage::new(91, SimFaults::default());
    let store = leader_after_retention(&sim, 150);
    let first = store.first_index().unwrap();
    assert!(first > 1, "retention deleted segments");
    let snap = store.snapshot(0, 2).unwrap();
    let meta = snap.get_metadata();
    assert_eq!((meta.index, meta.term), (first - 1, 2));
    assert_eq!(meta.get_conf_state().voters, vec![1, 2, 3]);
    assert_eq!(snap.data.len(), SNAPSHOT_DATA_BYTES);
    assert_eq!(
        snapshot_next_offset(&snap).unwrap(),
        store.log().stats().start_offset
    );
    assert_eq!(store.term(first - 1).unwrap(), 2);
}

/// A follower installs the descriptor: reads see an empty log after it at
/// once; entries appended after it are staged; `persist` restarts the
/// engine log and writes them. A crash before that `persist` leaves the
/// old log (the install was never reported durable); after it, the
/// restarted one with its entries.
#[test]
fn engine_store_installs_a_snapshot_at_persist_and_survives_crashes_around_it() {
    for crash_before_persist in [true, false] {
        let leader_sim = SimStorage::new(92, SimFaults::default());
        let leader = leader_after_retention(&leader_sim, 150);
        let snap = leader.snapshot(0, 2).unwrap();
        let (index, next) = (
            snap.get_metadata().index,
            snapshot_next_offset(&snap).unwrap(),
        );
        // The follower has the first 20 entries only.
        let sim = SimStorage::new(93, SimFaults::default());
        let mut store = open(&sim);
        for i in 1..=20 {
            let e = entry(0, i, 2, next_offset(&store), 900);
            store.append(&[e]).unwrap();
        }
        block_on(store.persist()).unwrap();
        store.install_snapshot(&snap);
        assert_eq!(
            (store.first_index().unwrap(), store.last_index().unwrap()),
            (index + 1, index)
        );
        assert_eq!(store.term(index).unwrap(), 2);
        assert_eq!(store.next_offset(), None, "staged until persist");
        let after = entry(0, index + 1, 2, next, 900);
        store.append(std::slice::from_ref(&after)).unwrap();
        assert_eq!(all(&store), vec![after.clone()]);
        if crash_before_persist {
            drop(store);
            sim.crash(CrashMode::DropUnsynced);
            let store = open(&sim);
            assert_eq!(
                (store.first_index().unwrap(), store.last_index().unwrap()),
                (1, 20)
            );
            continue;
        }
        block_on(store.persist()).unwrap();
        assert_eq!(store.snapshots_installed(), 1);
        let log = store.log();
        assert_eq!(log.stats().start_offset, next);
        assert_eq!(store.hard_state().commit, index);
        drop((store, log));
        sim.crash(CrashMode::DropUnsynced);
        let store = open(&sim);
        assert_eq!(
            (store.first_index().unwrap(), store.last_index().unwrap()),
            (index + 1, index + 1)
        );
        assert_eq!(store.term(index).unwrap(), 2);
        assert_eq!(all(&store), vec![after]);
        assert_eq!(store.hard_state().commit, index);
        assert_eq!(store.log().stats().start_offset, next);
        // Its own descriptor is the same point now.
        let again = store.snapshot(0, 1).unwrap();
        assert_eq!(again.get_metadata().index, index);
        assert_eq!(snapshot_next_offset(&again).unwrap(), next);
    }
}

/// A descriptor whose data is not exactly 8 bytes fails the store, with an
/// error naming it; `persist` reports it and the log is untouched.
#[test]
fn engine_store_refuses_a_snapshot_with_bad_data_by_name() {
    for data in [vec![], vec![1; 7], vec![1; 9], vec![0; 4096]] {
        let sim = SimStorage::new(94, SimFaults::default());
        let mut store = open(&sim);
        let e = entry(0, 1, 1, 0, 100);
        store.append(&[e]).unwrap();
        let len = data.len();
        store.install_snapshot(&descriptor(40, 3, data));
        let err = block_on(store.persist()).unwrap_err().to_string();
        assert!(
            err.contains(&format!("snapshot at index 40 carries {len} bytes of data")),
            "{err}"
        );
        assert_eq!(store.log().last_index(), 1, "the log is untouched");
    }
}
