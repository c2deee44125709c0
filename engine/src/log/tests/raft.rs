//! The Raft read side (`log/raft.rs`): batches by Raft index, checked
//! against what was appended, across rolls, reopen, retention and crashes.

use super::*;
use crate::log::batch::BatchKind;

/// Whether two runs of entries are the same (compared without printing
/// them: a failure names the first index that differs).
fn same(a: &[RaftBatch], b: &[RaftBatch]) -> Result<(), String> {
    if a.len() != b.len() {
        return Err(format!("{} entries against {}", a.len(), b.len()));
    }
    match a.iter().zip(b).find(|(x, y)| x != y) {
        Some((x, y)) => Err(format!("index {} differs from index {}", x.index, y.index)),
        None => Ok(()),
    }
}

/// Every entry of the log, read one call at a time with a small limit.
fn all_entries(log: &SimLog) -> Vec<RaftBatch> {
    let mut out = Vec::new();
    let mut lo = log.first_index();
    let hi = log.last_index() + 1;
    while lo < hi {
        let got = block_on(log.entries(lo, hi, 3000)).unwrap();
        assert!(!got.is_empty(), "at least one entry from {lo}");
        lo += got.len() as u64;
        out.extend(got);
    }
    out
}

/// Appends `n` batches of 1-3 records of varied sizes; returns each
/// batch's records, by Raft index order.
fn append_batches(log: &SimLog, from: u64, n: u64) -> Vec<Vec<Vec<u8>>> {
    (from..from + n)
        .map(|i| {
            let records: Vec<Vec<u8>> = (0..1 + i % 3)
                .map(|r| record(i * 3 + r, 200 + (i as usize * 37) % 1500))
                .collect();
            block_on(log.append(&records, i)).unwrap();
            records
        })
        .collect()
}

/// Each entry is a whole batch with its index and term, holding the
/// records appended as that batch.
fn check(entries: &[RaftBatch], first: u64, batches: &[Vec<Vec<u8>>]) {
    assert_eq!(entries.len(), batches.len());
    for (i, (e, records)) in entries.iter().zip(batches).enumerate() {
        assert_eq!(e.index, first + i as u64);
        assert_eq!((e.term, e.kind), (SINGLE_NODE_TERM, BatchKind::Events));
        let header = batch::verify(&e.bytes).unwrap();
        assert_eq!(
            (header.raft_index, header.batch_bytes()),
            (e.index, e.bytes.len())
        );
        let parsed = Batches::new(&e.bytes).next().unwrap().unwrap();
        let got: Vec<Vec<u8>> = parsed.records().map(|(_, r)| r.to_vec()).collect();
        assert_eq!(&got, records, "records of index {}", e.index);
    }
}

#[test]
fn entries_by_raft_index_match_what_was_appended_across_rolls_and_reopen() {
    let sim = SimStorage::new(41, SimFaults::default());
    let config = small_config();
    let log = open(&sim, config);
    assert_eq!((log.first_index(), log.last_index()), (1, 0), "empty");
    let batches = append_batches(&log, 0, 120);
    assert!(
        log.segments().len() > 3,
        "rolled: {:?}",
        log.segments().len()
    );
    assert_eq!((log.first_index(), log.last_index()), (1, 120));
    let before = all_entries(&log);
    check(&before, 1, &batches);
    assert_eq!(log.term(1), Some(SINGLE_NODE_TERM));
    assert_eq!(log.term(121), None);
    // The limit: the first entry always, then only what fits.
    let one = block_on(log.entries(5, 50, 1)).unwrap();
    assert_eq!(one.len(), 1);
    let two = (before[4].bytes.len() + before[5].bytes.len()) as u64;
    assert_eq!(block_on(log.entries(5, 50, two)).unwrap().len(), 2);
    // Every limit: the longest prefix within it (the first always), across
    // segment boundaries, as raft-rs's `limit_size` keeps.
    let mut rng = SimRng::new(7);
    for _ in 0..200 {
        let lo = 1 + rng.below(120);
        let hi = lo + rng.below(121 - lo) + 1;
        let max = rng.below(40_000);
        let mut total = 0u64;
        let want = before[(lo - 1) as usize..(hi - 1) as usize]
            .iter()
            .enumerate()
            .take_while(|(i, e)| {
                total += e.bytes.len() as u64;
                *i == 0 || total <= max
            })
            .count();
        let got = block_on(log.entries(lo, hi, max)).unwrap();
        same(&got, &before[(lo - 1) as usize..(lo - 1) as usize + want])
            .unwrap_or_else(|e| panic!("entries({lo}, {hi}, {max}): {e}"));
    }
    assert!(matches!(
        block_on(log.entries(0, 3, u64::MAX)),
        Err(RaftReadError::Compacted { index: 0, first: 1 })
    ));
    assert!(matches!(
        block_on(log.entries(100, 122, u64::MAX)),
        Err(RaftReadError::Unavailable {
            index: 121,
            last: 120
        })
    ));
    // Reopened: nothing is found until the open segments are scanned, then
    // the same bytes come back, and appends go on at the next index.
    drop(log);
    let log = open(&sim, config);
    assert_eq!(log.term(1), None, "not loaded yet");
    block_on(log.load_raft_index()).unwrap();
    assert_eq!((log.first_index(), log.last_index()), (1, 120));
    same(&all_entries(&log), &before).unwrap();
    let more = append_batches(&log, 120, 30);
    let after = all_entries(&log);
    same(&after[..120], &before).unwrap();
    check(&after[120..], 121, &more);
}

#[test]
fn retention_moves_the_first_index_to_the_first_segment_kept() {
    let sim = SimStorage::new(42, SimFaults::default());
    let log = open(&sim, small_config());
    append_batches(&log, 0, 120);
    let segments = log.segments();
    let keep_from = segments[2].base_offset;
    let before = all_entries(&log);
    assert_eq!(block_on(log.delete_before(keep_from)).unwrap().segments, 2);
    let first = log.first_index();
    assert!(first > 1, "first index {first}");
    let first_kept = before
        .iter()
        .find(|e| batch::verify(&e.bytes).unwrap().base_offset == keep_from)
        .unwrap()
        .index;
    assert_eq!(first, first_kept);
    same(&all_entries(&log), &before[(first - 1) as usize..]).unwrap();
    assert!(matches!(
        block_on(log.entries(first - 1, first + 1, u64::MAX)),
        Err(RaftReadError::Compacted { .. })
    ));
}

/// Retention records the term of the last batch it deleted with the new
/// start (raft asks for `term(first_index - 1)` as a snapshot's term), and
/// a reopen still knows it.
#[test]
fn after_retention_the_term_before_the_first_index_is_known_across_reopen() {
    let sim = SimStorage::new(43, SimFaults::default());
    let log = open(&sim, small_config());
    append_entries(&log, 1, 60, 3);
    append_entries(&log, 60, 140, 5);
    block_on(log.sync_index(140)).unwrap();
    let firsts = segment_first_indexes(&log);
    // Delete up to a segment whose predecessor ends in term 5.
    let keep = *firsts.iter().find(|&&f| f > 62).unwrap();
    let keep_offset = log.segments()[firsts.iter().position(|&f| f == keep).unwrap()].base_offset;
    block_on(log.delete_before(keep_offset)).unwrap();
    assert_eq!(log.first_index(), keep);
    assert_eq!(log.term(keep - 1), Some(5), "the last deleted batch's term");
    assert_eq!(log.term(keep - 2), None, "below it: compacted");
    assert_eq!(
        (log.raft_meta().start_index, log.raft_meta().start_term),
        (keep, 5)
    );
    drop(log);
    let log = open(&sim, small_config());
    block_on(log.load_raft_index()).unwrap();
    assert_eq!(log.first_index(), keep);
    assert_eq!(log.term(keep - 1), Some(5), "after a reopen");
    // Deleting up to a segment whose predecessor ends in term 3.
    let sim = SimStorage::new(44, SimFaults::default());
    let log = open(&sim, small_config());
    append_entries(&log, 1, 60, 3);
    append_entries(&log, 60, 140, 5);
    block_on(log.sync_index(140)).unwrap();
    let firsts = segment_first_indexes(&log);
    let at = firsts.iter().position(|&f| f > 10).unwrap();
    assert!(firsts[at] < 60, "{firsts:?}");
    block_on(log.delete_before(log.segments()[at].base_offset)).unwrap();
    assert_eq!(log.term(firsts[at] - 1), Some(3));
}

#[test]
fn after_a_crash_the_entries_are_a_prefix_of_those_appended() {
    for seed in 0..20u64 {
        for mode in [CrashMode::DropUnsynced, CrashMode::Torn] {
            let sim = SimStorage::new(seed, SimFaults::default());
            let mut config = small_config();
            config.durability = Durability::Never;
            let log = open(&sim, config);
            append_batches(&log, 0, 40 + seed);
            block_on(log.sync()).unwrap();
            let synced = log.last_index();
            append_batches(&log, 40 + seed, 30);
            let before = all_entries(&log);
            drop(log);
            sim.crash(mode);
            let log = open(&sim, config);
            block_on(log.load_raft_index()).unwrap();
            let last = log.last_index();
            assert!(
                (synced..=synced + 30).contains(&last),
                "seed {seed} {mode:?}: last {last}, synced {synced}"
            );
            let after = all_entries(&log);
            same(&after, &before[..last as usize])
                .unwrap_or_else(|e| panic!("seed {seed} {mode:?}: {e}"));
            // Appends go on at the next index, readable at once.
            append_batches(&log, 200, 1);
            assert_eq!(log.last_index(), last + 1);
            assert_eq!(log.term(last + 1), Some(SINGLE_NODE_TERM));
        }
    }
}

/// A control batch (a new leader's empty entry) at `index`, `term`, at the
/// log's next offset.
fn empty_entry(log: &SimLog, index: u64, term: u64) -> Vec<u8> {
    let stamp = batch::BatchStamp {
        kind: BatchKind::RaftEmpty,
        base_offset: log.stats().next_offset,
        first_timestamp_ms: 0,
        term,
        raft_index: index,
    };
    let mut out = Vec::new();
    batch::encode_into(&mut out, &stamp, &[b""]);
    out
}

#[test]
fn a_follower_log_holds_the_leaders_batches_byte_for_byte() {
    let sim = SimStorage::new(43, SimFaults::default());
    let leader = open(&sim, small_config());
    let fsim = SimStorage::new(44, SimFaults::default());
    let follower = open(&fsim, small_config());
    append_batches(&leader, 0, 30);
    // A new leader's empty entry at term 2, then events at term 2.
    let empty = empty_entry(&leader, 31, 2);
    assert_eq!(leader.append_entry(&empty), Ok(31));
    let next_offset = leader.stats().next_offset;
    append_batches(&leader, 30, 30);
    assert_eq!(leader.term(32), Some(2), "events follow at the new term");
    let entries = all_entries(&leader);
    assert_eq!(entries[30].kind, BatchKind::RaftEmpty);
    assert_eq!(
        batch::verify(&entries[31].bytes).unwrap().base_offset,
        next_offset
    );
    for e in &entries {
        assert_eq!(follower.append_entry(&e.bytes), Ok(e.index));
    }
    same(&all_entries(&follower), &entries).unwrap();
    assert_eq!(follower.last_index(), 61);
    assert!(follower.durable_next_index() < 62, "not all written yet");
    block_on(follower.sync_index(62)).unwrap();
    assert_eq!(follower.durable_next_index(), 62);
    assert_eq!(
        read_all(&follower),
        read_all(&leader),
        "the same events at the same offsets"
    );
    // Reopened, the follower holds them still and goes on.
    drop(follower);
    fsim.crash(CrashMode::DropUnsynced);
    let follower = open(&fsim, small_config());
    block_on(follower.load_raft_index()).unwrap();
    same(&all_entries(&follower), &entries).unwrap();
    assert_eq!(follower.durable_next_index(), 62);
    let empty = empty_entry(&follower, 62, 3);
    assert_eq!(follower.append_entry(&empty), Ok(62));
    assert_eq!(follower.durable_next_index(), 62, "not yet written");
    block_on(follower.sync_index(63)).unwrap();
    assert_eq!(
        follower.durable_next_index(),
        63,
        "a trailing control batch too"
    );
}

#[test]
fn an_entry_out_of_sequence_is_refused_and_changes_nothing() {
    let sim = SimStorage::new(45, SimFaults::default());
    let log = open(&sim, small_config());
    append_batches(&log, 0, 3);
    assert_eq!(log.append_entry(&empty_entry(&log, 4, 2)), Ok(4));
    let next = log.stats().next_offset;
    assert_eq!(
        log.append_entry(&empty_entry(&log, 6, 2)),
        Err(RaftAppendError::OutOfSequence {
            index: 6,
            term: 2,
            next_index: 5,
            log_term: 2
        })
    );
    assert_eq!(
        log.append_entry(&empty_entry(&log, 5, 1)),
        Err(RaftAppendError::OutOfSequence {
            index: 5,
            term: 1,
            next_index: 5,
            log_term: 2
        })
    );
    let mut wrong_offset = empty_entry(&log, 5, 2);
    let stamp = batch::BatchStamp {
        kind: BatchKind::RaftEmpty,
        base_offset: next + 1,
        first_timestamp_ms: 0,
        term: 2,
        raft_index: 5,
    };
    wrong_offset.clear();
    batch::encode_into(&mut wrong_offset, &stamp, &[b""]);
    assert_eq!(
        log.append_entry(&wrong_offset),
        Err(RaftAppendError::WrongOffset {
            base_offset: next + 1,
            next_offset: next
        })
    );
    let mut flipped = empty_entry(&log, 5, 2);
    flipped[41] ^= 1; // in the term: the CRC covers it
    assert!(matches!(
        log.append_entry(&flipped),
        Err(RaftAppendError::Invalid(_))
    ));
    let mut v1 = Vec::new();
    batch::encode_v1_into(&mut v1, next, 0, &[b"x"]);
    assert_eq!(log.append_entry(&v1), Err(RaftAppendError::NotVersion2));
    assert_eq!((log.last_index(), log.stats().next_offset), (4, next));
}

/// Regression: open's scan may index a control batch (its offset passed the
/// last entry's); the event batch appended after it begins at that same
/// offset and must not be indexed again (index offsets strictly increase).
#[test]
fn an_append_after_a_control_batch_indexed_at_open_keeps_the_index_increasing() {
    let sim = SimStorage::new(46, SimFaults::default());
    let log = open(&sim, small_config());
    for i in 0..3 {
        append(&log, &[record(i, 700)], i);
    }
    let next = log.stats().next_offset;
    let control = |index: u64, len: usize| {
        let stamp = batch::BatchStamp {
            kind: BatchKind::ConfChange,
            base_offset: next,
            first_timestamp_ms: 0,
            term: 1,
            raft_index: index,
        };
        let mut out = Vec::new();
        batch::encode_into(&mut out, &stamp, &[vec![7u8; len]]);
        out
    };
    assert_eq!(log.append_entry(&control(4, 16)), Ok(4));
    assert_eq!(log.append_entry(&control(5, 600)), Ok(5));
    block_on(log.sync_index(6)).unwrap();
    drop(log);
    let log = open(&sim, small_config());
    let appended = append(&log, &[record(9, 100)], 9);
    assert_eq!(appended.base_offset, next);
    assert_eq!(read_all(&log).last().unwrap(), &(next, record(9, 100)));
    drop(log);
    let log = open(&sim, small_config());
    assert_eq!(read_all(&log).len() as u64, next + 1);
}

/// An event batch of one `len`-byte record at `index`, `term`, at the
/// log's next offset.
pub(super) fn event_entry(log: &SimLog, index: u64, term: u64, len: usize) -> Vec<u8> {
    let stamp = batch::BatchStamp {
        kind: BatchKind::Events,
        base_offset: log.stats().next_offset,
        first_timestamp_ms: index,
        term,
        raft_index: index,
    };
    let mut out = Vec::new();
    batch::encode_into(&mut out, &stamp, &[vec![index as u8; len]]);
    out
}

/// Appends event entries `from..to` at `term`; returns their bytes.
pub(super) fn append_entries(log: &SimLog, from: u64, to: u64, term: u64) -> Vec<Vec<u8>> {
    (from..to)
        .map(|i| {
            let e = event_entry(log, i, term, 300 + (i as usize * 211) % 2000);
            assert_eq!(log.append_entry(&e), Ok(i));
            e
        })
        .collect()
}

pub(super) fn bytes_of(log: &SimLog) -> Vec<Vec<u8>> {
    all_entries(log)
        .into_iter()
        .map(|e| e.bytes.to_vec())
        .collect()
}

#[test]
fn truncate_after_cuts_a_written_suffix_durably_and_the_log_goes_on() {
    for crash_before_new in [false, true] {
        let sim = SimStorage::new(47, SimFaults::default());
        let log = open(&sim, small_config());
        let mut kept = append_entries(&log, 1, 13, 1);
        block_on(log.sync_index(13)).unwrap();
        let cut_offset = batch::verify(&kept[8]).unwrap().base_offset;
        kept.truncate(8);
        block_on(log.truncate_after(8)).unwrap();
        assert_eq!((log.last_index(), log.durable_next_index()), (8, 9));
        assert_eq!(log.stats().next_offset, cut_offset);
        assert_eq!(bytes_of(&log), kept);
        // New entries at indexes 9.. (a lower term than the log had is
        // possible in Raft; here a higher one).
        let new = append_entries(&log, 9, 11, 2);
        if crash_before_new {
            drop(log);
            sim.crash(CrashMode::DropUnsynced);
            let log = open(&sim, small_config());
            block_on(log.load_raft_index()).unwrap();
            assert_eq!(bytes_of(&log), kept, "the cut is durable, the new not");
            continue;
        }
        block_on(log.sync_index(11)).unwrap();
        kept.extend(new);
        assert_eq!(bytes_of(&log), kept);
        let events = read_all(&log);
        drop(log);
        sim.crash(CrashMode::DropUnsynced);
        let log = open(&sim, small_config());
        assert!(log.recovery().cut.is_none() && log.damage().is_none());
        block_on(log.load_raft_index()).unwrap();
        assert_eq!(bytes_of(&log), kept);
        assert_eq!(
            read_all(&log),
            events,
            "the same events at the same offsets"
        );
        assert_eq!(log.term(10), Some(2));
    }
}

#[test]
fn truncate_after_cuts_an_unwritten_suffix_then_into_a_sealed_segment() {
    let sim = SimStorage::new(48, SimFaults::default());
    let log = open(&sim, small_config());
    let mut kept = append_entries(&log, 1, 4, 1);
    block_on(log.sync_index(4)).unwrap();
    kept.extend(append_entries(&log, 4, 7, 1));
    kept.truncate(4);
    block_on(log.truncate_after(4)).unwrap();
    assert_eq!(bytes_of(&log), kept);
    kept.extend(append_entries(&log, 5, 6, 3));
    block_on(log.sync_index(6)).unwrap();
    drop(log);
    sim.crash(CrashMode::DropUnsynced);
    let log = open(&sim, small_config());
    block_on(log.load_raft_index()).unwrap();
    assert_eq!(bytes_of(&log), kept);
    // Roll into a second segment, unwritten: a cut into the first writes
    // everything first, then cuts the sealed segment.
    append_entries(&log, 6, 60, 3);
    assert!(log.segments().len() > 1);
    block_on(log.truncate_after(5)).unwrap();
    assert_eq!((log.last_index(), log.segments().len()), (5, 1));
    assert_eq!(bytes_of(&log), kept);
}

/// The Raft index of each segment's first batch (event entries of one
/// record each: a segment's base is its first batch's base offset).
pub(super) fn segment_first_indexes(log: &SimLog) -> Vec<u64> {
    let bases: Vec<u64> = log.segments().iter().map(|s| s.base_offset).collect();
    all_entries(log)
        .iter()
        .filter(|e| bases.contains(&batch::verify(&e.bytes).unwrap().base_offset))
        .map(|e| e.index)
        .collect()
}

/// Cuts reaching back one segment, two segments, and to a segment's first
/// batch: the log ends at the cut (durably), goes on at the next index and
/// offset, and reopens with the same bytes and events.
#[test]
fn truncate_after_cuts_across_sealed_segments_and_the_log_goes_on() {
    // (segments back from the active one, entries into that segment)
    for (back, into) in [(1, 3), (2, 5), (1, 0), (2, 0), (3, 1)] {
        let case = format!("{back} back, {into} in");
        let sim = SimStorage::new(50 + back * 10 + into, SimFaults::default());
        let log = open(&sim, small_config());
        let mut kept = append_entries(&log, 1, 200, 1);
        block_on(log.sync_index(200)).unwrap();
        let firsts = segment_first_indexes(&log);
        assert!(firsts.len() > back as usize + 1, "{case}: rolled");
        let first_cut = firsts[firsts.len() - 1 - back as usize] + into;
        let index = first_cut - 1;
        let cut_offset = batch::verify(&kept[index as usize]).unwrap().base_offset;
        kept.truncate(index as usize);
        let segments = log.segments().len() - back as usize;
        block_on(log.truncate_after(index)).unwrap();
        assert_eq!(log.last_index(), index, "{case}");
        assert_eq!(log.durable_next_index(), index + 1, "{case}");
        assert_eq!(log.stats().next_offset, cut_offset, "{case}");
        assert_eq!(log.segments().len(), segments, "{case}: later ones gone");
        assert_eq!(bytes_of(&log), kept, "{case}");
        // The log goes on from the cut, rolling again.
        kept.extend(append_entries(&log, index + 1, index + 80, 2));
        block_on(log.sync_index(index + 80)).unwrap();
        assert_eq!(bytes_of(&log), kept, "{case}");
        let events = read_all(&log);
        drop(log);
        sim.crash(CrashMode::DropUnsynced);
        let log = open(&sim, small_config());
        assert!(log.recovery().cut.is_none() && log.damage().is_none());
        block_on(log.load_raft_index()).unwrap();
        assert_eq!(bytes_of(&log), kept, "{case}: after reopen");
        assert_eq!(read_all(&log), events, "{case}: events after reopen");
        assert_eq!(log.term(index + 1), Some(2));
        kept.extend(append_entries(&log, index + 80, index + 82, 3));
        block_on(log.sync_index(index + 82)).unwrap();
        assert_eq!(bytes_of(&log), kept, "{case}");
    }
}

/// A crash at every storage operation of a cut two segments back leaves a
/// log that opens without damage and holds a prefix of the old entries, at
/// least those kept; it goes on at its next index.
#[test]
fn a_crash_during_a_sealed_cut_leaves_a_log_that_opens_with_a_prefix() {
    let mut completed = false;
    // The last index found after each crash: every stage was crashed in.
    let mut seen = std::collections::BTreeSet::new();
    let mut index = 0;
    for ops in 1..200u64 {
        let mode = [CrashMode::DropUnsynced, CrashMode::Torn][ops as usize % 2];
        let sim = SimStorage::new(60 + ops, SimFaults::default());
        let log = open(&sim, small_config());
        let old = append_entries(&log, 1, 200, 1);
        block_on(log.sync_index(200)).unwrap();
        let firsts = segment_first_indexes(&log);
        index = firsts[firsts.len() - 3] + 2;
        sim.crash_after_ops(ops);
        let cut = block_on(log.truncate_after(index));
        if cut.is_ok() && !sim.is_frozen() {
            completed = true;
            break;
        }
        assert!(cut.is_err() || sim.is_frozen(), "ops {ops}");
        drop(log);
        sim.restart(mode);
        let log = open(&sim, small_config());
        assert!(log.damage().is_none(), "ops {ops}: {:?}", log.damage());
        block_on(log.load_raft_index()).unwrap();
        let now = bytes_of(&log);
        let last = log.last_index();
        assert!(
            (index..=200).contains(&last),
            "ops {ops}: last {last}, cut after {index}"
        );
        assert!(now == old[..last as usize], "ops {ops}: not a prefix");
        seen.insert(last);
        // It goes on: a cut to the same point, then new entries.
        block_on(log.truncate_after(index)).unwrap();
        append_entries(&log, index + 1, index + 3, 2);
        block_on(log.sync_index(index + 3)).unwrap();
        assert_eq!(log.last_index(), index + 2, "ops {ops}");
    }
    assert!(completed, "the cut completed within the operations tried");
    // The old log, the active segment deleted, the next one, the cut.
    assert!(seen.len() >= 4, "stages crashed in: {seen:?}");
    assert!(seen.contains(&199) && seen.contains(&index), "{seen:?}");
}
