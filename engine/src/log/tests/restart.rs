//! [`Log::restart_at`] (`log/restart.rs`): a follower's log restarted
//! after a snapshot's point, whether behind it or holding batches past it;
//! durable, and recoverable from a crash at any storage operation.

use super::raft::{append_entries, bytes_of, segment_first_indexes};
use super::*;
use crate::storage::Storage as _;

/// The segment files (`.log`, `.idx`, `.free`) in the log's directory.
fn segment_files(sim: &SimStorage) -> Vec<String> {
    let mut names: Vec<String> = block_on(sim.list(&dir()))
        .unwrap()
        .into_iter()
        .filter(|n| n.ends_with(".log") || n.ends_with(".idx") || n.ends_with(".free"))
        .collect();
    names.sort();
    names
}

/// What a restarted log must look like: empty after `index`, at `next`.
fn expect_restarted(log: &SimLog, index: u64, term: u64, next: u64) {
    assert_eq!((log.first_index(), log.last_index()), (index + 1, index));
    assert_eq!(log.term(index), Some(term), "the snapshot's term");
    assert_eq!(log.term(index - 1), None);
    let stats = log.stats();
    assert_eq!((stats.start_offset, stats.next_offset), (next, next));
    assert!(matches!(
        block_on(log.read(next - 1, 4096)),
        Err(ReadError::BeforeStart { start, .. }) if start == next
    ));
    let meta = log.raft_meta();
    assert_eq!(
        (meta.start_index, meta.start_term, meta.active_base_index),
        (index + 1, term, index + 1)
    );
}

/// New entries after the restart point are taken, durable, and read back
/// (after a reopen too).
fn continue_after(sim: &SimStorage, log: SimLog, index: u64, term: u64) {
    let new = append_entries(&log, index + 1, index + 30, term);
    block_on(log.sync_index(index + 30)).unwrap();
    assert_eq!(bytes_of(&log), new);
    drop(log);
    let log = open(sim, small_config());
    block_on(log.load_raft_index()).unwrap();
    assert!(log.damage().is_none());
    assert_eq!(log.first_index(), index + 1);
    assert_eq!(log.term(index), Some(term));
    assert_eq!(bytes_of(&log), new);
}

#[test]
fn restart_at_a_point_past_the_log_begins_an_empty_log_there_durably() {
    let sim = SimStorage::new(71, SimFaults::default());
    let log = open(&sim, small_config());
    append_entries(&log, 1, 160, 2);
    block_on(log.sync_index(160)).unwrap();
    assert!(log.segments().len() > 2);
    block_on(log.restart_at(500, 4, 90_000)).unwrap();
    expect_restarted(&log, 500, 4, 90_000);
    let files = segment_files(&sim);
    assert_eq!(
        files,
        [
            "00000000000000090000.idx".to_string(),
            "00000000000000090000.log".to_string()
        ],
        "only the new segment is left"
    );
    // Durable before anything is appended: a reopen finds the same.
    drop(log);
    sim.crash(CrashMode::DropUnsynced);
    let log = open(&sim, small_config());
    block_on(log.load_raft_index()).unwrap();
    expect_restarted(&log, 500, 4, 90_000);
    // An entry below the restart point or at an older term is refused.
    let e = super::raft::event_entry(&log, 500, 4, 100);
    assert!(log.append_entry(&e).is_err());
    let e = super::raft::event_entry(&log, 501, 3, 100);
    assert!(log.append_entry(&e).is_err());
    continue_after(&sim, log, 500, 4);
}

/// raft-rs installs a snapshot past its commit only, but the log may hold
/// uncommitted batches past the snapshot's point; the new segment may even
/// begin where an old one did.
#[test]
fn restart_at_a_point_inside_the_log_discards_the_batches_past_it() {
    let sim = SimStorage::new(72, SimFaults::default());
    let log = open(&sim, small_config());
    append_entries(&log, 1, 200, 1);
    block_on(log.sync_index(200)).unwrap();
    let firsts = segment_first_indexes(&log);
    let segments = log.segments();
    let next = segments[2].base_offset;
    let index = firsts[1] + 3;
    block_on(log.restart_at(index, 3, next)).unwrap();
    expect_restarted(&log, index, 3, next);
    assert_eq!(segment_files(&sim).len(), 2);
    continue_after(&sim, log, index, 3);
}

/// A crash at every storage operation of a restart leaves a log that opens
/// without damage, either the old one whole or the restarted one, and
/// goes on at its next index either way.
#[test]
fn a_crash_during_a_restart_leaves_a_log_that_opens_old_or_restarted() {
    let mut completed = false;
    let (mut old_seen, mut restarted_seen) = (0, 0);
    for ops in 1..100u64 {
        let mode = [CrashMode::DropUnsynced, CrashMode::Torn][ops as usize % 2];
        let sim = SimStorage::new(80 + ops, SimFaults::default());
        let log = open(&sim, small_config());
        let old = append_entries(&log, 1, 120, 1);
        block_on(log.sync_index(120)).unwrap();
        let next = log.segments()[1].base_offset;
        sim.crash_after_ops(ops);
        let result = block_on(log.restart_at(60, 2, next));
        if result.is_ok() && !sim.is_frozen() {
            completed = true;
            break;
        }
        drop(log);
        sim.restart(mode);
        let log = open(&sim, small_config());
        assert!(log.damage().is_none(), "ops {ops}: {:?}", log.damage());
        block_on(log.load_raft_index()).unwrap();
        if log.last_index() == 119 {
            assert!(bytes_of(&log) == old, "ops {ops}: the old log changed");
            old_seen += 1;
            // The restart, tried again, completes.
            block_on(log.restart_at(60, 2, next)).unwrap();
        } else {
            restarted_seen += 1;
        }
        expect_restarted(&log, 60, 2, next);
        assert_eq!(segment_files(&sim).len(), 2, "ops {ops}");
        continue_after(&sim, log, 60, 2);
    }
    assert!(
        completed,
        "the restart completed within the operations tried"
    );
    assert!(
        old_seen > 0 && restarted_seen > 2,
        "crashes left the old log {old_seen} times, a restarted one {restarted_seen}"
    );
}
