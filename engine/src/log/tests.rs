//! Tests of the partition log on simulated storage: round trips, limits,
//! group commit, rolling, retention, poisoning, recovery by scenario, and the
//! seeded crash-consistency check against an in-memory model.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use futures::executor::block_on;
use futures::future::join_all;

use super::batch::{BATCH_HEADER_BYTES, Batches};
use super::index::IndexEntry;
use super::*;
use crate::storage::sim::{CrashMode, SimFaults, SimRng, SimStorage};

type SimLog = Log<SimStorage>;

mod damage_cut;
mod disk_full;
mod formats;
mod prealloc;
mod raft;
mod restart;

fn dir() -> PathBuf {
    PathBuf::from("/data/events/0")
}

fn seg_path(base: u64) -> PathBuf {
    dir().join(format!("{base:020}.log"))
}

fn idx_path(base: u64) -> PathBuf {
    dir().join(format!("{base:020}.idx"))
}

fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 64 << 10,
        // Four steps a segment: every workload extends its files.
        segment_preallocate_bytes: 16 << 10,
        index_interval_bytes: 512,
        durability: Durability::Always,
        retention: Retention::default(),
        write_bytes_max: 8 << 10,
        pending_bytes_max: 128 << 10,
        batch_bytes_max: 16 << 10,
    }
}

fn open(sim: &SimStorage, config: LogConfig) -> SimLog {
    block_on(Log::open(sim.clone(), &dir(), config)).unwrap()
}

fn record(offset_hint: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (offset_hint as usize * 31 + i * 7) as u8)
        .collect()
}

/// Every visible record, in order, read with small reads.
fn read_all(log: &SimLog) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut offset = log.stats().start_offset;
    let end = log.visible_offset();
    while offset < end {
        let read = block_on(log.read(offset, 700)).unwrap();
        assert!(
            read.next_offset > offset,
            "read at {offset} made no progress"
        );
        for batch in Batches::new(&read.bytes) {
            let batch = batch.unwrap();
            for (o, r) in batch.records() {
                if o >= offset {
                    out.push((o, r.to_vec()));
                }
            }
        }
        offset = read.next_offset;
    }
    out
}

fn append(log: &SimLog, records: &[Vec<u8>], ts: u64) -> Appended {
    block_on(log.append(records, ts)).unwrap()
}

/// Appends `record(i, len)` alone for each `i` in `range`, with timestamp
/// `i`, checking each offset; returns what was appended, by offset.
fn append_numbered(log: &SimLog, range: std::ops::Range<u64>, len: usize) -> Vec<(u64, Vec<u8>)> {
    range
        .map(|i| {
            let r = record(i, len);
            assert_eq!(append(log, std::slice::from_ref(&r), i).base_offset, i);
            (i, r)
        })
        .collect()
}

#[test]
fn appends_read_back_byte_for_byte_with_sequential_offsets() {
    let sim = SimStorage::new(1, SimFaults::default());
    let log = open(&sim, small_config());
    let mut expected = Vec::new();
    for i in 0..40u64 {
        let records: Vec<Vec<u8>> = (0..(i % 5 + 1))
            .map(|j| record(i * 10 + j, (i * 13 % 300) as usize))
            .collect();
        let appended = append(&log, &records, 1000 + i);
        assert_eq!(appended.base_offset, expected.len() as u64);
        assert_eq!(
            appended.last_offset,
            expected.len() as u64 + records.len() as u64 - 1
        );
        for r in records {
            expected.push((expected.len() as u64, r));
        }
    }
    assert_eq!(read_all(&log), expected);
    // A read from the middle of a batch starts with that batch.
    let read = block_on(log.read(7, 1)).unwrap();
    let first = Batches::new(&read.bytes).next().unwrap().unwrap();
    assert!(first.header.base_offset <= 7 && first.header.last_offset() >= 7);
    assert_eq!(
        read.next_offset,
        first.header.next_offset(),
        "one batch when bytes_max is tiny"
    );
    // At the end there is nothing, and beyond it an error.
    let end = log.stats().next_offset;
    assert_eq!(block_on(log.read(end, 100)).unwrap().bytes.len(), 0);
    assert!(matches!(
        block_on(log.read(end + 1, 100)),
        Err(ReadError::BeyondEnd { .. })
    ));
}

#[test]
fn a_reopened_log_has_everything_and_continues_its_offsets() {
    let sim = SimStorage::new(2, SimFaults::default());
    let records: Vec<Vec<u8>> = (0..3).map(|i| record(i, 100)).collect();
    {
        let log = open(&sim, small_config());
        append(&log, &records, 1);
        append(&log, &records, 2);
    }
    let log = open(&sim, small_config());
    assert_eq!(log.stats().next_offset, 6);
    assert_eq!(append(&log, &records, 3).base_offset, 6);
    let all = read_all(&log);
    assert_eq!(all.len(), 9);
    assert_eq!(all[8], (8, records[2].clone()));
}

#[test]
fn limits_are_enforced_with_clear_errors() {
    let sim = SimStorage::new(3, SimFaults::default());
    let config = small_config();
    let log = open(&sim, config);
    let none: [&[u8]; 0] = [];
    assert_eq!(block_on(log.append(&none, 0)), Err(AppendError::Empty));
    let too_big = vec![vec![0u8; config.batch_bytes_max]];
    let err = block_on(log.append(&too_big, 0)).unwrap_err();
    assert!(matches!(err, AppendError::TooLarge { max, .. } if max == config.batch_bytes_max));
    assert!(err.to_string().contains("batch_bytes_max"));
    let many = vec![&b""[..]; batch::BATCH_RECORDS_MAX as usize + 1];
    assert!(matches!(
        block_on(log.append(&many, 0)),
        Err(AppendError::TooManyRecords { .. })
    ));
    // The largest allowed batch goes through.
    let max_record = config.batch_bytes_max - BATCH_HEADER_BYTES - 4;
    assert_eq!(append(&log, &[vec![9u8; max_record]], 0).base_offset, 0);
    assert_eq!(log.stats().next_offset, 1);

    for (bad, what) in [
        (
            LogConfig {
                segment_bytes: 1000,
                ..config
            },
            "segment_bytes",
        ),
        (
            LogConfig {
                segment_bytes: SEGMENT_BYTES_MAX + IO_ALIGN_BYTES,
                ..config
            },
            "segment_bytes",
        ),
        (
            LogConfig {
                index_interval_bytes: 0,
                ..config
            },
            "index_interval_bytes",
        ),
        (
            LogConfig {
                write_bytes_max: 100,
                ..config
            },
            "write_bytes_max",
        ),
        (
            LogConfig {
                batch_bytes_max: 1 << 20,
                ..config
            },
            "batch_bytes_max",
        ),
        (
            LogConfig {
                pending_bytes_max: 10,
                ..config
            },
            "pending_bytes_max",
        ),
    ] {
        let err = block_on(Log::open(sim.clone(), Path::new("/other"), bad)).unwrap_err();
        assert!(err.to_string().contains(what), "{err} should name {what}");
    }
}

#[test]
fn concurrent_appends_share_write_through_rounds_and_all_are_durable_when_acked() {
    let sim = SimStorage::new(
        4,
        SimFaults {
            yields_max: 3,
            ..SimFaults::default()
        },
    );
    let log = open(
        &sim,
        LogConfig {
            segment_bytes: 1 << 20,
            ..small_config()
        },
    );
    let records: Vec<Vec<u8>> = (0..64).map(|i| record(i, 200)).collect();
    let before = sim.stats();
    let results = block_on(join_all(
        records
            .iter()
            .map(|r| log.append(std::slice::from_ref(r), 7)),
    ));
    let after = sim.stats();
    let (writes, syncs) = (after.writes - before.writes, after.syncs - before.syncs);
    let mut offsets: Vec<u64> = results
        .iter()
        .map(|r| r.as_ref().unwrap().base_offset)
        .collect();
    offsets.sort_unstable();
    assert_eq!(offsets, (0..64).collect::<Vec<_>>());
    // `always` opens the segment write-through: each write is durable as it
    // returns, so no fdatasync is issued, and a round writes many appends.
    assert_eq!(syncs, 0, "write-through needs no fdatasync");
    assert!(
        writes < 64 / 2,
        "group commit should batch writes: {writes} for 64 appends"
    );
    // Each append's wait for durability is counted once; every data write
    // the storage saw was one of the log's rounds, or an index page.
    let commits = log.stats().commits;
    assert_eq!(commits.durable_waits, 64);
    assert_eq!(commits.syncs, 0);
    assert!(
        commits.writes > 0 && commits.writes <= writes,
        "{commits:?}"
    );
    // The latency histograms hold one value per round and per durable
    // append, and their sums are the counters' totals.
    let latencies = log.commit_latencies();
    assert_eq!(latencies.durable_wait.count(), commits.durable_waits);
    assert_eq!(latencies.durable_wait.sum_us, commits.durable_wait_us);
    assert_eq!(latencies.write.count(), commits.writes);
    assert_eq!(latencies.write.sum_us, commits.write_us);
    // Everything acknowledged survives a crash that drops unsynced writes.
    sim.crash(CrashMode::DropUnsynced);
    let log = open(&sim, small_config());
    assert_eq!(log.stats().next_offset, 64);
    let back = read_all(&log);
    for (i, appended) in results.iter().enumerate() {
        let offset = appended.as_ref().unwrap().base_offset as usize;
        assert_eq!(back[offset], (offset as u64, records[i].clone()));
    }
}

#[test]
fn segments_roll_seal_and_read_across() {
    let sim = SimStorage::new(5, SimFaults::default());
    let config = small_config();
    let log = open(&sim, config);
    let expected = append_numbered(&log, 0..200, 900);
    let stats = log.stats();
    assert!(stats.segments >= 3, "{stats:?}");
    assert_eq!(read_all(&log), expected);
    // Every sealed segment is cut to its data and has its index on disk.
    let paths = sim.paths();
    let logs: Vec<_> = paths
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    assert_eq!(logs.len(), stats.segments);
    for p in &logs[..logs.len() - 1] {
        let bytes = sim.written_bytes(p).unwrap();
        assert!(
            (bytes.len() as u64) < config.segment_bytes,
            "{p:?} not truncated"
        );
        let n = Batches::new(&bytes)
            .map(|b| b.unwrap().header.record_count)
            .sum::<u32>();
        assert!(n > 0);
        let idx = sim.written_bytes(&p.with_extension("idx")).unwrap();
        assert!(
            index::len(&idx) > 0
                && index::valid_prefix(&idx, bytes.len() as u64) == index::len(&idx)
        );
    }
    // The active segment is preallocated.
    let active = sim.written_bytes(logs[logs.len() - 1]).unwrap();
    assert_eq!(active.len() as u64, config.segment_bytes);
    drop(log);
    let log = open(&sim, config);
    assert_eq!(read_all(&log), expected);
    assert_eq!(append(&log, &[b"after".to_vec()], 0).base_offset, 200);
}

#[test]
fn retention_deletes_whole_sealed_segments_by_bytes_and_by_age() {
    let sim = SimStorage::new(6, SimFaults::default());
    let mut config = small_config();
    let log = open(&sim, config);
    for i in 0..300u64 {
        append(&log, &[record(i, 900)], 1_000 + i);
    }
    let before = log.stats();
    assert!(before.segments >= 4);
    // By bytes: keep at most about two segments' worth.
    config.retention.max_bytes = Some(2 * config.segment_bytes);
    drop(log);
    let log = open(&sim, config);
    let report = block_on(log.apply_retention(0)).unwrap();
    let after = log.stats();
    assert!(report.segments > 0);
    assert!(after.bytes <= 2 * config.segment_bytes, "{after:?}");
    assert_eq!(after.bytes + report.bytes, before.bytes);
    assert!(after.start_offset > 0);
    assert_eq!(after.next_offset, before.next_offset);
    assert!(
        matches!(block_on(log.read(0, 100)), Err(ReadError::BeforeStart { start, .. }) if start == after.start_offset)
    );
    assert!(!sim.paths().contains(&seg_path(0)) && !sim.paths().contains(&idx_path(0)));
    let kept = read_all(&log);
    assert_eq!(kept.first().unwrap().0, after.start_offset);
    assert_eq!(kept.len() as u64, after.next_offset - after.start_offset);
    // By age: everything sealed is older than 1 ms after the last timestamp.
    drop(log);
    config.retention = Retention {
        max_age_ms: Some(1),
        max_bytes: None,
    };
    let log = open(&sim, config);
    block_on(log.apply_retention(1_000 + 300 + 2)).unwrap();
    assert_eq!(log.stats().segments, 1, "only the active segment remains");
    // Nothing is deleted when within limits.
    assert_eq!(
        block_on(log.apply_retention(0)).unwrap(),
        RetentionReport::default()
    );
    // The deletions are durable.
    sim.crash(CrashMode::DropUnsynced);
    let log = open(&sim, config);
    assert_eq!(log.stats().segments, 1);
}

#[test]
fn retention_set_on_an_open_log_applies_from_the_next_pass() {
    let sim = SimStorage::new(7, SimFaults::default());
    let config = small_config();
    let log = open(&sim, config);
    for i in 0..300u64 {
        append(&log, &[record(i, 900)], 1_000 + i);
    }
    let before = log.stats();
    assert!(before.segments >= 4);
    assert_eq!(
        block_on(log.apply_retention(0)).unwrap(),
        RetentionReport::default(),
        "no retention configured"
    );
    let retention = Retention {
        max_age_ms: None,
        max_bytes: Some(2 * config.segment_bytes),
    };
    log.set_retention(retention);
    assert_eq!(log.retention(), retention);
    assert!(block_on(log.apply_retention(0)).unwrap().segments > 0);
    let after = log.stats();
    assert!(after.bytes <= 2 * config.segment_bytes, "{after:?}");
    assert!(after.start_offset > 0);
    assert_eq!(after.next_offset, before.next_offset);
}

fn free_files(sim: &SimStorage) -> Vec<PathBuf> {
    sim.paths()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "free"))
        .collect()
}

#[test]
fn retention_recycles_segment_files_and_their_old_batches_never_come_back() {
    let sim = SimStorage::new(61, SimFaults::default());
    let mut config = small_config();
    config.retention.max_bytes = Some(2 * config.segment_bytes);
    let log = open(&sim, config);
    let mut expected = Vec::new();
    for i in 0..400u64 {
        let r = record(i, 900);
        assert_eq!(append(&log, std::slice::from_ref(&r), i).base_offset, i);
        expected.push((i, r));
    }
    let stats = log.stats();
    // Every roll past the limit retired the oldest segment and began the
    // new one in its file, so the log never grew past about the limit.
    assert!(stats.commits.segments_recycled >= 3, "{stats:?}");
    assert!(stats.bytes <= 3 * config.segment_bytes, "{stats:?}");
    assert!(stats.start_offset > 0);
    assert!(free_files(&sim).len() <= RECYCLED_SEGMENTS_MAX);
    let start = stats.start_offset as usize;
    assert_eq!(read_all(&log), expected[start..]);
    // The active segment's file still holds an older segment's batches past
    // its own: that is what recovery must tell apart.
    let active = *log.segments().last().map(|s| &s.base_offset).unwrap();
    let active_bytes = sim.written_bytes(&seg_path(active)).unwrap();
    let own_end = log.segments().last().unwrap().bytes as usize;
    let stale: Vec<u64> = (own_end..active_bytes.len())
        .filter_map(|p| batch::verify(&active_bytes[p..]).ok())
        .map(|h| h.base_offset)
        .collect();
    assert!(
        !stale.is_empty() && stale.iter().all(|&o| o < active),
        "expected older batches after the active segment's end, found {stale:?}"
    );
    // Reopened cleanly, and after crashes of either kind, the log holds
    // exactly what was appended (all of it was acknowledged) and goes on.
    drop(log);
    let log = open(&sim, config);
    assert_eq!(read_all(&log), expected[start..]);
    drop(log);
    for (n, mode) in [CrashMode::DropUnsynced, CrashMode::Torn]
        .into_iter()
        .enumerate()
    {
        sim.crash(mode);
        let log = open(&sim, config);
        assert_eq!(read_all(&log), expected[start..], "after crash {n}");
        let next = expected.len() as u64;
        let r = record(next, 300);
        assert_eq!(
            append(&log, std::slice::from_ref(&r), next).base_offset,
            next
        );
        expected.push((next, r));
    }
}

#[test]
fn an_age_limit_recycles_at_each_roll_too() {
    // Timestamps advance 10 ms per append and batches older than 500 ms
    // (to the newest batch) go: a roll retires them and reuses their file
    // without waiting for a periodic retention.
    let sim = SimStorage::new(64, SimFaults::default());
    let mut config = small_config();
    config.retention.max_age_ms = Some(500);
    let log = open(&sim, config);
    let mut expected = Vec::new();
    for i in 0..400u64 {
        let r = record(i, 900);
        append(&log, std::slice::from_ref(&r), 10 * i);
        expected.push((i, r));
    }
    let stats = log.stats();
    assert!(stats.commits.segments_recycled >= 3, "{stats:?}");
    assert!(stats.start_offset > 0);
    // Every segment but the active one holds a batch no older than the
    // limit when the last roll happened.
    let segments = log.segments();
    let newest = segments.iter().map(|s| s.max_timestamp_ms).max().unwrap();
    let rolled_at = segments[segments.len() - 2].max_timestamp_ms;
    for s in &segments[..segments.len() - 1] {
        assert!(
            s.max_timestamp_ms + 500 >= rolled_at,
            "{s:?} kept past its age"
        );
    }
    assert!(newest >= rolled_at);
    let start = stats.start_offset as usize;
    assert_eq!(read_all(&log), expected[start..]);
}

#[test]
fn delete_before_drops_whole_segments_below_the_mark_now_and_at_later_rolls() {
    let sim = SimStorage::new(65, SimFaults::default());
    let config = small_config();
    let log = open(&sim, config);
    let mut expected = append_numbered(&log, 0..200, 900);
    let segments = log.segments();
    assert!(segments.len() >= 3);
    // A mark inside the second segment deletes only the first.
    let mark = segments[1].base_offset + 1;
    let report = block_on(log.delete_before(mark)).unwrap();
    assert_eq!((report.segments, report.recycled), (1, 1));
    let start = log.stats().start_offset;
    assert_eq!(start, segments[1].base_offset);
    assert!(matches!(
        block_on(log.read(start - 1, 100)),
        Err(ReadError::BeforeStart { .. })
    ));
    assert_eq!(read_all(&log), expected[start as usize..]);
    // A mark past the end keeps the active segment and deletes the others
    // as they are sealed.
    let report = block_on(log.delete_before(u64::MAX)).unwrap();
    assert_eq!(report.segments, segments.len() - 2);
    assert_eq!(log.stats().segments, 1);
    for i in 200..400u64 {
        let r = record(i, 900);
        append(&log, std::slice::from_ref(&r), i);
        expected.push((i, r));
    }
    let stats = log.stats();
    assert!(stats.segments <= 2, "{stats:?}");
    assert!(stats.commits.segments_recycled >= 2, "{stats:?}");
    let start = stats.start_offset as usize;
    assert_eq!(read_all(&log), expected[start..]);
    // What was deleted stays deleted after a crash.
    sim.crash(CrashMode::DropUnsynced);
    let log = open(&sim, config);
    assert_eq!(log.stats().start_offset as usize, start);
    assert_eq!(read_all(&log), expected[start..]);
}

#[test]
fn a_log_keeps_at_most_the_recycling_limit_of_free_files() {
    let sim = SimStorage::new(62, SimFaults::default());
    let config = small_config();
    for i in 0..5u64 {
        sim.put_file(&dir().join(format!("{:020}.free", 1_000 + i)), &[7; 4096]);
    }
    // Not a free file: left alone.
    sim.put_file(&dir().join("notes.free"), &[1; 10]);
    let log = open(&sim, config);
    assert_eq!(free_files(&sim).len(), RECYCLED_SEGMENTS_MAX + 1);
    assert!(sim.paths().contains(&dir().join("notes.free")));
    // The first segment begins in one of them; what it held is no batch.
    let r = record(0, 500);
    assert_eq!(append(&log, std::slice::from_ref(&r), 0).base_offset, 0);
    assert_eq!(log.stats().commits.segments_recycled, 1);
    assert_eq!(read_all(&log), vec![(0, r.clone())]);
    sim.crash(CrashMode::DropUnsynced);
    let log = open(&sim, config);
    assert_eq!(read_all(&log), vec![(0, r)]);
}

#[test]
fn a_segment_a_reader_still_holds_is_deleted_not_recycled() {
    let faults = SimFaults {
        yields_max: 3,
        ..SimFaults::default()
    };
    // A seed whose yields make the read below wait (the log's metadata
    // writes changed which seeds do).
    let sim = SimStorage::new(66, faults);
    let config = small_config();
    let log = open(&sim, config);
    let expected = append_numbered(&log, 0..200, 900);
    let oldest = log.segments()[0];
    let mut retained = config;
    retained.retention.max_bytes = Some(log.stats().bytes - oldest.bytes);
    drop(log);
    let log = open(&sim, retained);
    // Poll a read of the oldest segment once, so that it waits holding the
    // file, then retire that segment under it.
    {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut read = std::pin::pin!(log.read(0, 4096));
        // The simulation makes the read wait a few polls on its file.
        assert!(
            read.as_mut().poll(&mut cx).is_pending(),
            "the read finished before the file could be held"
        );
        let report = block_on(log.apply_retention(0)).unwrap();
        assert_eq!(report.segments, 1);
        assert_eq!(report.recycled, 0, "a held file must not be reused");
        assert!(free_files(&sim).is_empty());
        assert!(!sim.paths().contains(&seg_path(oldest.base_offset)));
        // The reader gets the old bytes or an error (the simulation fails reads
        // of removed files), never another segment's batches.
        if let Ok(got) = block_on(read) {
            for batch in Batches::new(&got.bytes) {
                for (o, r) in batch.unwrap().records() {
                    assert_eq!(r, &expected[o as usize].1[..]);
                }
            }
        }
    }
    // With no reader, the next retirement recycles.
    let mut tighter = retained;
    tighter.retention.max_bytes = Some(log.stats().bytes - log.segments()[0].bytes);
    drop(log);
    let log = open(&sim, tighter);
    let report = block_on(log.apply_retention(0)).unwrap();
    assert_eq!((report.segments, report.recycled), (1, 1));
    assert_eq!(free_files(&sim).len(), 1);
}

#[test]
fn a_failed_write_poisons_until_reopened() {
    let sim = SimStorage::new(7, SimFaults::default());
    let log = open(&sim, small_config());
    append(&log, &[b"kept".to_vec()], 0);
    sim.set_faults(SimFaults {
        write_fail_ppm: 1_000_000,
        ..SimFaults::default()
    });
    let err = block_on(log.append(&[b"lost".to_vec()], 0)).unwrap_err();
    assert!(
        matches!(&err, AppendError::Poisoned(why) if why.contains("write")),
        "{err}"
    );
    sim.set_faults(SimFaults::default());
    // Still refused though the disk works again: never retry blindly.
    assert!(matches!(
        block_on(log.append(&[b"x".to_vec()], 0)),
        Err(AppendError::Poisoned(_))
    ));
    assert!(log.poisoned().is_some());
    drop(log);
    let log = open(&sim, small_config());
    assert_eq!(read_all(&log)[0], (0, b"kept".to_vec()));
    let a = append(&log, &[b"again".to_vec()], 0);
    assert_eq!(
        read_all(&log).last().unwrap(),
        &(a.base_offset, b"again".to_vec())
    );
}

#[test]
fn a_failed_fdatasync_poisons_and_is_never_retried() {
    // Under `interval` the log syncs with fdatasync.
    let sim = SimStorage::new(8, SimFaults::default());
    let config = LogConfig {
        durability: Durability::Interval(Duration::from_secs(3600)),
        ..small_config()
    };
    let log = open(&sim, config);
    append(&log, &[b"kept".to_vec()], 0);
    block_on(log.sync()).unwrap();
    append(&log, &[b"maybe".to_vec()], 0);
    sim.set_faults(SimFaults {
        sync_fail_ppm: 1_000_000,
        ..SimFaults::default()
    });
    let syncs = sim.stats().syncs;
    let err = block_on(log.sync()).unwrap_err();
    assert!(
        matches!(&err, AppendError::Poisoned(why) if why.contains("fdatasync")),
        "{err}"
    );
    sim.set_faults(SimFaults::default());
    assert!(block_on(log.sync()).is_err());
    assert!(block_on(log.append(&[b"later".to_vec()], 0)).is_err());
    assert_eq!(
        sim.stats().syncs,
        syncs,
        "no fdatasync after the failed one (which the stats do not count)"
    );
    // The batch never synced is lost in a crash; the synced one stays.
    sim.crash(CrashMode::DropUnsynced);
    let log = open(&sim, config);
    assert_eq!(read_all(&log), vec![(0, b"kept".to_vec())]);
}

#[test]
fn a_failed_write_through_poisons_and_is_never_retried() {
    // Under `always` the segment is write-through: the sync that fails is
    // the write's own.
    let sim = SimStorage::new(8, SimFaults::default());
    let log = open(&sim, small_config());
    append(&log, &[b"kept".to_vec()], 0);
    sim.set_faults(SimFaults {
        sync_fail_ppm: 1_000_000,
        ..SimFaults::default()
    });
    let writes = sim.stats().writes;
    let err = block_on(log.append(&[b"maybe".to_vec()], 0)).unwrap_err();
    assert!(
        matches!(&err, AppendError::Poisoned(why) if why.contains("O_DSYNC")),
        "{err}"
    );
    sim.set_faults(SimFaults::default());
    assert!(block_on(log.sync()).is_err());
    assert!(block_on(log.append(&[b"later".to_vec()], 0)).is_err());
    assert_eq!(sim.stats().writes, writes, "no write after the failed one");
    assert_eq!(sim.stats().syncs, 0, "write-through: no fdatasync at all");
    // The unacknowledged batch is lost in a crash; the acknowledged one stays.
    sim.crash(CrashMode::DropUnsynced);
    let log = open(&sim, small_config());
    assert_eq!(read_all(&log), vec![(0, b"kept".to_vec())]);
}

#[test]
fn relaxed_durability_acks_at_once_and_sync_makes_it_durable() {
    for durability in [
        Durability::Never,
        Durability::Interval(Duration::from_secs(3600)),
    ] {
        let sim = SimStorage::new(9, SimFaults::default());
        let config = LogConfig {
            durability,
            ..small_config()
        };
        let log = open(&sim, config);
        append(&log, &[b"a".to_vec()], 0);
        assert_eq!(
            sim.stats().syncs,
            0,
            "{durability:?}: acked without fdatasync"
        );
        assert_eq!(log.visible_offset(), 1, "visible at once");
        assert_eq!(
            log.stats().commits.durable_waits,
            0,
            "{durability:?}: no append waited"
        );
        assert_eq!(read_all(&log), vec![(0, b"a".to_vec())]);
        block_on(log.flush_if_due()).unwrap();
        assert_eq!(sim.stats().syncs, 0, "{durability:?}: interval not due");
        block_on(log.sync()).unwrap();
        append(&log, &[b"b".to_vec()], 0);
        sim.crash(CrashMode::DropUnsynced);
        let log = open(&sim, config);
        assert_eq!(
            read_all(&log),
            vec![(0, b"a".to_vec())],
            "{durability:?}: the unsynced append is lost"
        );
    }
    // A due interval syncs.
    let sim = SimStorage::new(10, SimFaults::default());
    let config = LogConfig {
        durability: Durability::Interval(Duration::ZERO),
        ..small_config()
    };
    let log = open(&sim, config);
    append(&log, &[b"a".to_vec()], 0);
    block_on(log.flush_if_due()).unwrap();
    assert_eq!(log.stats().durable_offset, 1);
}

/// Under relaxed durability an append never waits for the disk: the write
/// is the owner's, when `write_due` says so; only `pending_bytes_max`
/// makes an appender wait, for a write of its own.
#[test]
fn relaxed_appends_leave_the_write_to_the_owner() {
    for durability in [
        Durability::Never,
        Durability::Interval(Duration::from_secs(3600)),
    ] {
        let sim = SimStorage::new(12, SimFaults::default());
        let config = LogConfig {
            durability,
            ..small_config()
        };
        let log = open(&sim, config);
        log.set_write_behind(true);
        let writes = sim.stats().writes;
        let mut offset = 0u64;
        // Up to write_bytes_max waiting: nothing written, nothing due.
        while !log.write_due() {
            append(&log, &[record(offset, 1000)], 0);
            offset += 1;
            assert!(offset < 100, "{durability:?}: never due");
        }
        assert!(log.stats().bytes >= config.write_bytes_max as u64);
        assert_eq!(sim.stats().writes, writes, "{durability:?}: appends wrote");
        // Still acknowledged at once while due, without a write.
        append(&log, &[record(offset, 1000)], 0);
        offset += 1;
        assert_eq!(sim.stats().writes, writes);
        assert!(log.write_due());
        block_on(log.write_pending());
        assert!(
            sim.stats().writes > writes,
            "{durability:?}: write_pending wrote"
        );
        assert!(!log.write_due(), "{durability:?}: nothing left due");
        let w = sim.stats().writes;
        block_on(log.write_pending());
        assert_eq!(
            sim.stats().writes,
            w,
            "{durability:?}: nothing due, no write"
        );
        assert_eq!(sim.stats().syncs, 0, "{durability:?}: no fdatasync");
        // Nobody runs the writes: the appender that reaches
        // pending_bytes_max writes, and nothing is lost.
        let before = sim.stats().writes;
        let held = log.stats().bytes;
        while sim.stats().writes == before {
            append(&log, &[record(offset, 1000)], 0);
            offset += 1;
            let added = log.stats().bytes - held;
            assert!(
                added <= (config.pending_bytes_max + config.batch_bytes_max) as u64,
                "{durability:?}: {added} bytes appended and still no write"
            );
        }
        let all = read_all(&log);
        assert_eq!(all.len() as u64, offset);
        for (o, bytes) in &all {
            assert_eq!(*bytes, record(*o, 1000), "{durability:?}: offset {o}");
        }
        block_on(log.sync()).unwrap();
        sim.crash(CrashMode::DropUnsynced);
        let log = open(&sim, config);
        assert_eq!(
            read_all(&log).len() as u64,
            offset,
            "{durability:?}: synced"
        );
        // Without write behind, the append that finds a write due runs it.
        let writes = sim.stats().writes;
        let mut n = 0u64;
        while sim.stats().writes == writes {
            append(&log, &[record(offset + n, 1000)], 0);
            n += 1;
            assert!(n < 100, "{durability:?}: no append wrote");
        }
        assert!(!log.write_due());
        assert!(n * 1000 <= (config.write_bytes_max + 2000) as u64);
    }
    // Under Always nothing is ever due: appends write and sync themselves.
    let sim = SimStorage::new(13, SimFaults::default());
    let log = open(&sim, small_config());
    for offset in 0..40 {
        append(&log, &[record(offset, 1000)], 0);
        assert!(!log.write_due());
    }
    assert_eq!(log.stats().durable_offset, 40);
}

#[test]
fn always_hides_batches_until_they_are_durable() {
    let sim = SimStorage::new(
        11,
        SimFaults {
            yields_max: 4,
            ..SimFaults::default()
        },
    );
    let log = Rc::new(open(&sim, small_config()));
    // Drive an append only until it is enqueued, then look.
    let records = [b"x".to_vec()];
    let mut fut = Box::pin(log.append(&records, 0));
    let waker = futures::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    // With this seed the simulated write yields, so the append is enqueued
    // but not yet durable after its first poll.
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    assert_eq!(log.stats().next_offset, 1);
    assert_eq!(log.stats().durable_offset, 0);
    assert_eq!(log.visible_offset(), 0);
    assert_eq!(block_on(log.read(0, 100)).unwrap().bytes.len(), 0);
    block_on(fut).unwrap();
    assert_eq!(log.visible_offset(), 1);
}

// ---- Recovery, by scenario ----------------------------------------------

/// A log of `n` single-record batches, closed cleanly; returns the active
/// segment's bytes and the position where each batch starts.
fn durable_log(sim: &SimStorage, n: u64) -> (Vec<u8>, Vec<u64>) {
    let log = open(sim, small_config());
    for i in 0..n {
        append(&log, &[record(i, 150)], i);
    }
    assert_eq!(log.stats().segments, 1);
    drop(log);
    let bytes = sim.durable_bytes(&seg_path(0)).unwrap();
    let positions = Batches::new(&bytes)
        .map_while(|b| b.ok())
        .scan(0u64, |at, b| {
            let here = *at;
            *at += b.bytes.len() as u64;
            Some(here)
        })
        .collect();
    (bytes, positions)
}

fn expect_first_batches(sim: &SimStorage, n: u64) {
    let log = open(sim, small_config());
    assert_eq!(log.stats().next_offset, n);
    let all = read_all(&log);
    assert_eq!(all.len() as u64, n);
    for (i, (o, r)) in all.iter().enumerate() {
        assert_eq!((*o, r), (i as u64, &record(i as u64, 150)));
    }
    // And the log takes appends again, which survive the next reopen.
    let a = append(&log, &[b"next".to_vec()], 0);
    assert_eq!(a.base_offset, n);
    drop(log);
    let log = open(sim, small_config());
    assert_eq!(read_all(&log).last().unwrap(), &(n, b"next".to_vec()));
}

#[test]
fn recovery_truncates_at_every_byte_offset_of_the_last_batch() {
    let base_sim = SimStorage::new(12, SimFaults::default());
    let (bytes, positions) = durable_log(&base_sim, 20);
    let last = *positions.last().unwrap() as usize;
    let end = last + BATCH_HEADER_BYTES + 4 + 150;
    let idx = base_sim.durable_bytes(&idx_path(0)).unwrap();
    for cut in last..end {
        for zero_filled in [true, false] {
            let sim = SimStorage::new(cut as u64, SimFaults::default());
            let mut image = bytes[..cut].to_vec();
            if zero_filled {
                image.resize(bytes.len(), 0);
            }
            sim.put_file(&seg_path(0), &image);
            sim.put_file(&idx_path(0), &idx);
            expect_first_batches(&sim, 19);
        }
    }
}

#[test]
fn recovery_cuts_at_a_bit_flip_in_the_header_or_payload_of_the_last_batch() {
    let base_sim = SimStorage::new(13, SimFaults::default());
    let (bytes, positions) = durable_log(&base_sim, 20);
    let last = *positions.last().unwrap();
    for (what, at) in [
        ("magic", 1),
        ("crc", 5),
        ("length", 13),
        ("offset", 16),
        ("count", 25),
        ("timestamp", 33),
        ("payload", 60),
        ("payload end", 150 + 43),
    ] {
        let sim = SimStorage::new(14, SimFaults::default());
        sim.put_file(&seg_path(0), &bytes);
        sim.flip_bit(&seg_path(0), last + at, 3).unwrap();
        let log = open(&sim, small_config());
        assert_eq!(log.stats().next_offset, 19, "flip in {what}");
        drop(log);
        expect_first_batches(&sim, 19);
    }
    // A flip in an earlier batch of the active segment cuts there.
    let sim = SimStorage::new(15, SimFaults::default());
    sim.put_file(&seg_path(0), &bytes);
    sim.flip_bit(&seg_path(0), positions[10] + 50, 0).unwrap();
    expect_first_batches(&sim, 10);
}

#[test]
fn recovery_stops_at_zero_fill_and_at_stale_batches_from_an_older_life() {
    let base_sim = SimStorage::new(16, SimFaults::default());
    let (bytes, positions) = durable_log(&base_sim, 20);
    // A valid batch whose offset does not follow (left from before a crash)
    // must not be resurrected.
    let sim = SimStorage::new(17, SimFaults::default());
    let mut image = bytes[..positions[10] as usize].to_vec();
    let mut stale = Vec::new();
    let stamp = batch::BatchStamp {
        kind: batch::BatchKind::Events,
        base_offset: 99,
        first_timestamp_ms: 0,
        term: 1,
        raft_index: 11,
    };
    batch::encode_into(&mut stale, &stamp, &[record(99, 150)]);
    image.extend_from_slice(&stale);
    image.resize(bytes.len(), 0);
    sim.put_file(&seg_path(0), &image);
    expect_first_batches(&sim, 10);
    // An entirely zero-filled segment is an empty log.
    let sim = SimStorage::new(18, SimFaults::default());
    sim.put_file(&seg_path(0), &vec![0; 64 << 10]);
    expect_first_batches(&sim, 0);
}

#[test]
fn recovery_ignores_an_active_index_entry_torn_to_point_between_batches() {
    // The active segment's index pages are written without an fdatasync,
    // so a crash can tear one: an entry may still increase and be followed
    // by a good last entry, yet point between batches. Reads through it
    // must not fail or return the wrong batch.
    let sim = SimStorage::new(20, SimFaults::default());
    let config = small_config();
    let log = open(&sim, config);
    let expected = append_numbered(&log, 0..60, 150);
    assert_eq!(log.stats().segments, 1);
    drop(log);
    let bytes = sim.durable_bytes(&seg_path(0)).unwrap();
    let mut idx = Vec::new();
    let mut position = 0u64;
    let mut torn_offset = None;
    for (i, batch) in Batches::new(&bytes).map_while(Result::ok).enumerate() {
        if i > 0 && i % 5 == 0 {
            let mut entry = IndexEntry {
                relative_offset: i as u32,
                position: position as u32,
            };
            if i == 20 {
                // Torn: 3 bytes into its batch, still between its
                // neighbours.
                entry.position += 3;
                torn_offset = Some(i as u64);
            }
            index::push(&mut idx, entry);
        }
        position += batch.bytes.len() as u64;
    }
    assert!(index::len(&idx) >= 10 && torn_offset.is_some());
    sim.put_file(&idx_path(0), &idx);
    let log = open(&sim, config);
    assert_eq!(read_all(&log), expected);
    for o in 0..expected.len() as u64 {
        let read = block_on(log.read(o, 1)).unwrap();
        let batch = Batches::new(&read.bytes).next().unwrap().unwrap();
        assert_eq!(
            batch.records().find(|(x, _)| *x == o).unwrap().1,
            &expected[o as usize].1[..],
            "offset {o}"
        );
    }
}

#[test]
fn recovery_rebuilds_a_missing_or_stale_index() {
    let sim = SimStorage::new(19, SimFaults::default());
    let config = small_config();
    let log = open(&sim, config);
    let expected = append_numbered(&log, 0..150, 700);
    assert!(log.stats().segments >= 2);
    drop(log);
    let good_sealed_idx = sim.durable_bytes(&idx_path(0)).unwrap();
    let active_base = *sim
        .paths()
        .iter()
        .filter_map(|p| p.file_stem()?.to_str()?.parse::<u64>().ok())
        .collect::<Vec<_>>()
        .iter()
        .max()
        .unwrap();

    // Missing: both index files deleted.
    sim.delete(&idx_path(0));
    sim.delete(&idx_path(active_base));
    let log = open(&sim, config);
    assert_eq!(read_all(&log), expected);
    drop(log);
    assert_eq!(
        sim.durable_bytes(&idx_path(0)).unwrap(),
        good_sealed_idx,
        "sealed index rebuilt exactly"
    );

    // Stale: entries that point past the data or at the wrong batches.
    let mut stale = good_sealed_idx.clone();
    for e in [(5000u32, 60_000u32), (5001, 60_001)] {
        stale.extend_from_slice(&e.0.to_le_bytes());
        stale.extend_from_slice(&e.1.to_le_bytes());
    }
    sim.put_file(&idx_path(0), &stale);
    let mut wrong = Vec::new();
    index::push(
        &mut wrong,
        IndexEntry {
            relative_offset: 3,
            position: 777,
        },
    );
    sim.put_file(&idx_path(active_base), &wrong);
    let log = open(&sim, config);
    assert_eq!(read_all(&log), expected);
    for (o, r) in expected.iter().step_by(7) {
        let read = block_on(log.read(*o, 1)).unwrap();
        let batch = Batches::new(&read.bytes).next().unwrap().unwrap();
        assert_eq!(batch.records().find(|(x, _)| x == o).unwrap().1, &r[..]);
    }
}

#[test]
fn a_corrupt_sealed_segment_refuses_to_open_and_names_the_file() {
    let sim = SimStorage::new(20, SimFaults::default());
    let log = open(&sim, small_config());
    for i in 0..150u64 {
        append(&log, &[record(i, 700)], i);
    }
    drop(log);
    sim.flip_bit(&seg_path(0), 5000, 1).unwrap();
    sim.delete(&idx_path(0));
    let err = block_on(Log::open(sim.clone(), &dir(), small_config())).unwrap_err();
    assert!(matches!(err, OpenError::Corrupt { .. }), "{err}");
    assert!(
        err.to_string().contains("00000000000000000000.log"),
        "{err}"
    );
}

// ---- Damage in the active segment, repair, missing segments -------------

/// A log in one segment under `config` holding `n` batches of one
/// `record(i, 150)` each, checkpointed (as at a clean shutdown) when
/// `checkpoint`; returns where each batch starts.
fn log_of(sim: &SimStorage, config: LogConfig, n: u64, checkpoint: bool) -> Vec<u64> {
    let log = open(sim, config);
    for i in 0..n {
        append(&log, &[record(i, 150)], i);
    }
    assert_eq!(log.stats().segments, 1);
    if checkpoint {
        block_on(log.sync()).unwrap();
        block_on(log.checkpoint()).unwrap();
    }
    drop(log);
    let bytes = sim.durable_bytes(&seg_path(0)).unwrap();
    Batches::new(&bytes)
        .map_while(|b| b.ok())
        .scan(0u64, |at, b| {
            let here = *at;
            *at += b.bytes.len() as u64;
            Some(here)
        })
        .collect()
}

/// A segment of 256 KiB whose write rounds span at most 24 KiB: recovery
/// can tell damage from a torn round by valid batches beyond that reach.
fn round_config() -> LogConfig {
    LogConfig {
        segment_bytes: 256 << 10,
        pending_bytes_max: 16 << 10,
        ..small_config()
    }
}

/// The records readable from the start up to `end`, read batch by batch.
fn read_until(log: &SimLog, end: u64) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut offset = log.stats().start_offset;
    while offset < end {
        let read = block_on(log.read(offset, 700)).unwrap();
        for batch in Batches::new(&read.bytes) {
            for (o, r) in batch.unwrap().records() {
                if o >= offset && o < end {
                    out.push((o, r.to_vec()));
                }
            }
        }
        offset = read.next_offset;
    }
    out
}

fn numbered(range: std::ops::Range<u64>) -> Vec<(u64, Vec<u8>)> {
    range.map(|i| (i, record(i, 150))).collect()
}

/// Asserts `log` is read-only at `offset` (byte `position` of segment 0):
/// reads below work, appends fail naming the file and byte.
fn expect_damaged(log: &SimLog, position: u64, offset: u64) {
    let damage = log.damage().expect("damage reported");
    assert_eq!(damage.path, seg_path(0));
    assert_eq!(
        (damage.position, damage.offset),
        (position, offset),
        "{damage}"
    );
    assert_eq!(log.stats().next_offset, offset);
    assert_eq!(read_until(log, offset), numbered(0..offset));
    let err = block_on(log.append(&[b"x".to_vec()], 0)).unwrap_err();
    let AppendError::Damaged(why) = &err else {
        panic!("not refused as damaged: {err}");
    };
    assert!(
        why.contains("00000000000000000000.log") && why.contains(&format!("byte {position}")),
        "{err}"
    );
    assert!(why.contains("hadron repair"), "{err}");
}

#[test]
fn a_torn_tail_is_cut_and_reported() {
    // A clean reopen reports nothing.
    let clean = SimStorage::new(30, SimFaults::default());
    log_of(&clean, small_config(), 20, false);
    assert_eq!(
        open(&clean, small_config()).recovery(),
        &Recovery::default()
    );
    // The last batch torn, as a crash leaves it (no open since it was
    // written recorded it durable).
    let sim = SimStorage::new(30, SimFaults::default());
    let positions = log_of(&sim, small_config(), 20, false);
    let last = positions[19];
    sim.flip_bit(&seg_path(0), last + 60, 2).unwrap();
    let log = open(&sim, small_config());
    assert_eq!(log.damage(), None);
    let cut = log.recovery().cut.clone().expect("the cut is reported");
    assert_eq!(cut.path, seg_path(0));
    assert_eq!((cut.position, cut.offset), (last, 19));
    assert_eq!(cut.bytes, (BATCH_HEADER_BYTES + 4 + 150) as u64, "{cut}");
    assert!(cut.reason.contains("crc"), "{cut}");
    assert!(
        cut.to_string().contains(&format!("at byte {last}")),
        "{cut}"
    );
    assert_eq!(append(&log, &[b"next".to_vec()], 0).base_offset, 19);
}

#[test]
fn a_flipped_byte_below_the_checkpoint_makes_the_log_read_only() {
    let sim = SimStorage::new(31, SimFaults::default());
    let positions = log_of(&sim, small_config(), 60, true);
    sim.flip_bit(&seg_path(0), positions[10] + 50, 0).unwrap();
    let before = sim.durable_bytes(&seg_path(0)).unwrap();
    let log = open(&sim, small_config());
    expect_damaged(&log, positions[10], 10);
    assert!(block_on(log.sync()).is_ok(), "nothing to sync");
    assert_eq!(
        block_on(log.apply_retention(u64::MAX)).unwrap(),
        RetentionReport::default()
    );
    drop(log);
    assert_eq!(
        sim.durable_bytes(&seg_path(0)).unwrap(),
        before,
        "a damaged segment is left as it is"
    );
    // And it stays damaged until repaired.
    expect_damaged(&open(&sim, small_config()), positions[10], 10);
}

#[test]
fn a_flipped_byte_with_valid_batches_beyond_one_write_round_is_damage() {
    // No checkpoint covers these batches (as after a crash): the batches
    // found beyond what one round could have torn tell the damage.
    let sim = SimStorage::new(32, SimFaults::default());
    let positions = log_of(&sim, round_config(), 1000, false);
    sim.flip_bit(&seg_path(0), positions[10] + 7, 5).unwrap();
    let log = open(&sim, round_config());
    expect_damaged(&log, positions[10], 10);
    assert!(
        log.damage()
            .unwrap()
            .reason
            .contains("follows with offsets in sequence"),
        "{}",
        log.damage().unwrap()
    );
}

#[test]
fn a_bad_batch_within_one_write_round_of_the_end_is_cut_as_a_torn_tail() {
    // Within the last round's reach it cannot be told from a crash's tear:
    // it is cut, and the report names the later offsets it held.
    let sim = SimStorage::new(33, SimFaults::default());
    let positions = log_of(&sim, round_config(), 1000, false);
    sim.flip_bit(&seg_path(0), positions[950] + 7, 5).unwrap();
    let log = open(&sim, round_config());
    assert_eq!(log.damage(), None);
    let cut = log.recovery().cut.clone().unwrap();
    assert_eq!((cut.position, cut.offset), (positions[950], 950));
    assert_eq!(cut.later_next_offset, Some(1000), "{cut}");
    assert!(cut.to_string().contains("offsets from 950 to 999"), "{cut}");
    assert_eq!(log.stats().next_offset, 950);
}

#[test]
fn a_zeroed_page_in_the_middle_is_damage() {
    for checkpoint in [true, false] {
        let sim = SimStorage::new(34, SimFaults::default());
        let positions = log_of(&sim, round_config(), 1000, checkpoint);
        sim.plant(&seg_path(0), 8192, &[0; 4096]).unwrap();
        let first_bad = positions.iter().position(|&p| p + 194 > 8192).unwrap();
        let log = open(&sim, round_config());
        expect_damaged(&log, positions[first_bad], first_bad as u64);
    }
}

#[test]
fn a_truncated_active_segment_is_damage_when_the_checkpoint_says_more_was_durable() {
    let sim = SimStorage::new(35, SimFaults::default());
    let positions = log_of(&sim, small_config(), 60, true);
    sim.set_len(&seg_path(0), positions[30]).unwrap();
    let log = open(&sim, small_config());
    expect_damaged(&log, positions[30], 30);
    assert!(
        log.damage().unwrap().reason.contains("recorded durable"),
        "{}",
        log.damage().unwrap()
    );
}

#[test]
fn repair_keeps_the_cut_bytes_and_new_appends_get_offsets_above_the_cut_ones() {
    let sim = SimStorage::new(36, SimFaults::default());
    let positions = log_of(&sim, small_config(), 60, true);
    let at = positions[10];
    sim.flip_bit(&seg_path(0), at + 50, 0).unwrap();
    let damaged = sim.durable_bytes(&seg_path(0)).unwrap();
    let data_end = positions[59] + (BATCH_HEADER_BYTES + 4 + 150) as u64;
    let report = block_on(SimLog::repair(sim.clone(), &dir(), small_config()))
        .unwrap()
        .expect("something to repair");
    assert_eq!((report.damage.position, report.damage.offset), (at, 10));
    assert_eq!(report.next_offset, 60, "{report}");
    let cut_path = dir().join(format!("00000000000000000000.log.cut-{at}"));
    assert_eq!(report.cut_file.as_deref(), Some(cut_path.as_path()));
    assert_eq!(report.cut_bytes, data_end - at);
    assert_eq!(
        sim.durable_bytes(&cut_path).unwrap(),
        damaged[at as usize..data_end as usize],
        "the cut bytes are kept as they were"
    );
    // The log continues in a new segment above every offset seen.
    let log = open(&sim, small_config());
    assert_eq!(log.damage(), None);
    assert_eq!(read_until(&log, 10), numbered(0..10));
    assert_eq!(append(&log, &[b"after".to_vec()], 0).base_offset, 60);
    assert!(sim.paths().contains(&seg_path(60)));
    drop(log);
    let log = open(&sim, small_config());
    // A read in the skipped range goes on after it.
    for from in [10, 35, 59, 60] {
        let read = block_on(log.read(from, 100)).unwrap();
        let batch = Batches::new(&read.bytes).next().unwrap().unwrap();
        assert_eq!(
            batch.records().next().unwrap(),
            (60, &b"after"[..]),
            "from {from}"
        );
        assert_eq!(read.next_offset, 61);
    }
    assert_eq!(log.stats().next_offset, 61);
    drop(log);
    // Nothing left to repair; the cut file stays.
    assert_eq!(
        block_on(SimLog::repair(sim.clone(), &dir(), small_config())).unwrap(),
        None
    );
    assert!(sim.paths().contains(&cut_path));
}

#[test]
fn repair_of_a_truncation_continues_above_the_offsets_recorded_durable() {
    let sim = SimStorage::new(37, SimFaults::default());
    let positions = log_of(&sim, small_config(), 60, true);
    sim.set_len(&seg_path(0), positions[30]).unwrap();
    let report = block_on(SimLog::repair(sim.clone(), &dir(), small_config()))
        .unwrap()
        .unwrap();
    assert_eq!((report.damage.offset, report.next_offset), (30, 60));
    assert_eq!(report.cut_file, None, "no bytes were left to keep");
    let log = open(&sim, small_config());
    assert_eq!(append(&log, &[b"after".to_vec()], 0).base_offset, 60);
}

#[test]
fn repair_of_an_undamaged_log_changes_nothing() {
    let sim = SimStorage::new(38, SimFaults::default());
    log_of(&sim, small_config(), 20, true);
    let paths = sim.paths();
    assert_eq!(
        block_on(SimLog::repair(sim.clone(), &dir(), small_config())).unwrap(),
        None
    );
    assert_eq!(sim.paths(), paths);
}

/// A log of several segments; returns their bases.
fn segmented_log(sim: &SimStorage) -> Vec<u64> {
    let log = open(sim, small_config());
    append_numbered(&log, 0..250, 700);
    let bases: Vec<u64> = log.segments().iter().map(|s| s.base_offset).collect();
    assert!(bases.len() >= 3, "{bases:?}");
    bases
}

#[test]
fn a_missing_first_middle_or_last_segment_refuses_to_open_and_names_it() {
    for which in ["first", "middle", "last"] {
        let sim = SimStorage::new(39, SimFaults::default());
        let bases = segmented_log(&sim);
        let gone = match which {
            "first" => bases[0],
            "middle" => bases[1],
            _ => *bases.last().unwrap(),
        };
        sim.delete(&seg_path(gone));
        sim.delete(&idx_path(gone));
        let err = block_on(Log::open(sim.clone(), &dir(), small_config())).unwrap_err();
        assert!(
            matches!(&err, OpenError::Missing { path, .. } if *path == seg_path(gone)),
            "{which}: {err}"
        );
        assert!(
            err.to_string().contains(&format!("{gone:020}.log")),
            "{which}: {err}"
        );
    }
    // Every segment file gone: the log does not open as a new, empty one.
    let sim = SimStorage::new(40, SimFaults::default());
    for base in segmented_log(&sim) {
        sim.delete(&seg_path(base));
    }
    let err = block_on(Log::open(sim.clone(), &dir(), small_config())).unwrap_err();
    assert!(matches!(err, OpenError::Missing { .. }), "{err}");
}

#[test]
fn retention_moves_the_recorded_start_so_deleted_segments_are_not_missing() {
    let sim = SimStorage::new(41, SimFaults::default());
    let bases = segmented_log(&sim);
    let config = LogConfig {
        retention: Retention {
            max_age_ms: None,
            max_bytes: Some(1),
        },
        ..small_config()
    };
    let log = open(&sim, config);
    let report = block_on(log.apply_retention(0)).unwrap();
    assert_eq!(report.segments, bases.len() - 1);
    drop(log);
    let log = open(&sim, small_config());
    assert_eq!(log.stats().start_offset, *bases.last().unwrap());
}

// ---- The crash-consistency model check ----------------------------------

/// One seeded life: random concurrent appends, faults and crashes on a
/// simulated disk; after every crash the log is reopened and what reads back
/// must be a prefix, byte for byte, of what was appended, holding every
/// append that was acknowledged as durable.
/// One seeded life of a log that crashes again and again, checked against a
/// model. Under [`Durability::Always`] an append's `Ok` is its ack; under
/// `Interval` (an hour, so only `sync` and sealed segments sync) a `sync`
/// that returned `Ok` acks every offset taken before it was called.
fn crash_life(seed: u64, cycles: usize, retention: Retention, durability: Durability) -> u64 {
    let config = LogConfig {
        index_interval_bytes: 256,
        retention,
        durability,
        ..small_config()
    };
    crash_life_with(seed, cycles, config)
}

/// Checks a log reopened after a crash against the model: no damage, and
/// from the log's start (retention may have dropped a prefix) the model's
/// records byte for byte, holding every acknowledged one. Returns the end.
fn check_reopened(log: &SimLog, model: &[Vec<u8>], acked: u64, cycle: usize) -> u64 {
    // What a crash leaves is a torn tail, never damage.
    assert_eq!(
        log.damage(),
        None,
        "cycle {cycle}: a crash taken for damage"
    );
    // Retention may have dropped a prefix; what is left must be the
    // model from the log's start on.
    let start = log.stats().start_offset;
    let back = read_all(log);
    let end = start + back.len() as u64;
    assert!(
        end <= model.len() as u64,
        "cycle {cycle}: more back than appended"
    );
    for (i, (o, r)) in back.iter().enumerate() {
        let want = start + i as u64;
        assert_eq!(*o, want, "cycle {cycle}: offsets are dense");
        assert_eq!(
            r, &model[want as usize],
            "cycle {cycle}: offset {want} differs"
        );
    }
    assert!(
        end >= acked,
        "cycle {cycle}: records up to {end} back, {acked} acknowledged"
    );
    assert_eq!(log.stats().next_offset, end);
    check_raft_indexes(log, cycle);
    end
}

/// Every batch from the log's start carries term 1 and the Raft index one
/// past the batch before it, and the log's next index follows the last.
fn check_raft_indexes(log: &SimLog, cycle: usize) {
    let mut offset = log.stats().start_offset;
    let end = log.visible_offset();
    let mut last: Option<u64> = None;
    while offset < end {
        let read = block_on(log.read(offset, 1 << 20)).unwrap();
        for batch in Batches::new(&read.bytes) {
            let h = batch.unwrap().header;
            if h.next_offset() <= offset {
                continue;
            }
            assert_eq!((h.version, h.term), (2, 1), "cycle {cycle}: {h:?}");
            if let Some(last) = last {
                assert_eq!(h.raft_index, last + 1, "cycle {cycle}: indexes consecutive");
            }
            last = Some(h.raft_index);
        }
        offset = read.next_offset;
    }
    if let Some(last) = last {
        assert_eq!(log.next_index(), last + 1, "cycle {cycle}: next index");
    }
}

/// 1 to 8 batches of 1 to 4 random records of up to 900 bytes.
fn random_batches(rng: &mut SimRng) -> Vec<Vec<Vec<u8>>> {
    (0..rng.below(8) + 1)
        .map(|_| {
            (0..rng.below(4) + 1)
                .map(|_| {
                    let len = rng.below(900) as usize;
                    (0..len).map(|_| rng.next_u64() as u8).collect()
                })
                .collect()
        })
        .collect()
}

/// [`crash_life`] with any configuration.
fn crash_life_with(seed: u64, cycles: usize, config: LogConfig) -> u64 {
    let durability = config.durability;
    let mut rng = SimRng::new(seed ^ 0xC0FF_EE00);
    let quiet = SimFaults {
        yields_max: 2,
        ..SimFaults::default()
    };
    let sim = SimStorage::new(seed, quiet);
    let always = durability == Durability::Always;
    let mut recycled = 0;
    // Every record that was given an offset, in offset order.
    let mut model: Vec<Vec<u8>> = Vec::new();
    // Offsets below this were acknowledged as durable.
    let mut acked = 0u64;
    for cycle in 0..cycles {
        if std::env::var("HADRON_CRASH_DEBUG").is_ok() {
            for p in sim.paths() {
                let w = sim.written_bytes(&p).unwrap();
                let n = Batches::new(&w).map_while(|b| b.ok()).count();
                eprintln!("cycle {cycle}: {} len {} batches {n}", p.display(), w.len());
            }
        }
        let log = block_on(Log::open(sim.clone(), &dir(), config))
            .unwrap_or_else(|e| panic!("cycle {cycle}: open failed: {e}"));
        let end = check_reopened(&log, &model, acked, cycle);
        model.truncate(end as usize);
        acked = end;

        if rng.below(3) != 0 {
            sim.crash_after_ops(rng.below(80) + 1);
        }
        if rng.below(6) == 0 {
            sim.set_faults(SimFaults {
                write_fail_ppm: 30_000,
                sync_fail_ppm: 30_000,
                ..quiet
            });
        }
        for _ in 0..rng.below(6) + 1 {
            let batches = random_batches(&mut rng);
            let first = log.stats().next_offset;
            let results = block_on(join_all(
                batches.iter().map(|b| log.append(b, cycle as u64)),
            ));
            // Appends take offsets in call order until the log is poisoned;
            // the ones that took offsets are a prefix of the calls.
            let taken = log.stats().next_offset;
            let mut at = first;
            for (b, r) in batches.iter().zip(&results) {
                if at >= taken {
                    assert!(
                        r.is_err(),
                        "cycle {cycle}: an append past the end succeeded"
                    );
                    continue;
                }
                if let Ok(a) = r {
                    assert_eq!(a.base_offset, at, "cycle {cycle}: offsets in call order");
                    if always {
                        acked = acked.max(a.last_offset + 1);
                    }
                }
                model.extend(b.iter().cloned());
                at += b.len() as u64;
            }
            assert_eq!(at, taken, "cycle {cycle}: offsets taken by whole batches");
            if !always && rng.below(2) == 0 && block_on(log.sync()).is_ok() {
                acked = acked.max(taken);
            }
            if log.poisoned().is_some() || sim.is_frozen() {
                break;
            }
            if rng.below(4) == 0 {
                // Failures here come from injected faults or the crash.
                let _ = block_on(log.apply_retention(0));
            }
        }
        recycled += log.stats().commits.segments_recycled;
        drop(log);
        sim.disarm_crash();
        sim.set_faults(quiet);
        let mode = if rng.below(2) == 0 {
            CrashMode::Torn
        } else {
            CrashMode::DropUnsynced
        };
        if sim.is_frozen() {
            sim.restart(mode);
        } else if rng.below(2) == 0 {
            sim.crash(mode);
        }
    }
    recycled
}

#[test]
fn crash_consistency_against_a_model_over_many_seeded_lives() {
    let seeds: Vec<u64> = match std::env::var("HADRON_CRASH_SEED") {
        Ok(s) => vec![s.parse().expect("HADRON_CRASH_SEED must be a number")],
        Err(_) => (0..250).collect(),
    };
    for seed in seeds {
        let outcome = std::panic::catch_unwind(|| {
            crash_life(seed, 16, Retention::default(), Durability::Always)
        });
        if outcome.is_err() {
            panic!(
                "crash consistency failed for seed {seed}; replay with HADRON_CRASH_SEED={seed}"
            );
        }
    }
}

#[test]
fn crash_consistency_holds_while_retention_recycles_segment_files() {
    // The same lives with a size limit of two segments: the log rolls into
    // recycled files that still hold older batches, and crashes land
    // during retirements, renames and the first writes into such files.
    let seeds: Vec<u64> = match std::env::var("HADRON_CRASH_SEED") {
        Ok(s) => vec![s.parse().expect("HADRON_CRASH_SEED must be a number")],
        Err(_) => (1_000..1_150).collect(),
    };
    let retention = Retention {
        max_age_ms: None,
        max_bytes: Some(2 * small_config().segment_bytes),
    };
    let mut recycled = 0;
    for seed in seeds.iter().copied() {
        match std::panic::catch_unwind(|| crash_life(seed, 24, retention, Durability::Always)) {
            Ok(n) => recycled += n,
            Err(_) => panic!(
                "crash consistency with recycling failed for seed {seed}; replay with HADRON_CRASH_SEED={seed}"
            ),
        }
    }
    if seeds.len() > 1 {
        assert!(
            recycled >= 50,
            "only {recycled} segments began in recycled files"
        );
    }
}

#[test]
fn crash_consistency_of_fdatasync_rounds_over_many_seeded_lives() {
    // `always` writes through and needs no fdatasync; `interval` still syncs
    // with pipelined fdatasyncs (`sync`, sealed segments): the same lives,
    // with a sync's `Ok` as the ack.
    let seeds: Vec<u64> = match std::env::var("HADRON_CRASH_SEED") {
        Ok(s) => vec![s.parse().expect("HADRON_CRASH_SEED must be a number")],
        Err(_) => (2_000..2_200).collect(),
    };
    let interval = Durability::Interval(Duration::from_secs(3600));
    for seed in seeds {
        let outcome =
            std::panic::catch_unwind(|| crash_life(seed, 16, Retention::default(), interval));
        if outcome.is_err() {
            panic!(
                "crash consistency (interval) failed for seed {seed}; replay with HADRON_CRASH_SEED={seed}"
            );
        }
    }
}

#[test]
fn crash_consistency_with_write_rounds_smaller_than_a_segment_never_reports_damage() {
    // With pending_bytes_max well below the segment size, recovery looks
    // beyond the last round's reach for later batches (the damage test):
    // whatever a crash tears must never be taken for damage.
    let seeds: Vec<u64> = match std::env::var("HADRON_CRASH_SEED") {
        Ok(s) => vec![s.parse().expect("HADRON_CRASH_SEED must be a number")],
        Err(_) => (3_000..3_150).collect(),
    };
    let config = LogConfig {
        index_interval_bytes: 256,
        pending_bytes_max: 16 << 10,
        batch_bytes_max: 8 << 10,
        ..small_config()
    };
    assert!(recovery::tear_bytes_max(&config) < config.segment_bytes / 2);
    for seed in seeds {
        if std::panic::catch_unwind(|| crash_life_with(seed, 16, config)).is_err() {
            panic!(
                "crash consistency (small rounds) failed for seed {seed}; replay with HADRON_CRASH_SEED={seed}"
            );
        }
    }
}

/// Polls `first` and `second` in turn, `polls` times at most, then drops
/// `first` (wherever it stands) and polls `second` until it resolves: what
/// it returned, or `None` if it still waits after 10,000 polls (the
/// simulator's operations wake themselves, so bounded polling ends unless
/// it waits on something that will never happen).
fn drop_first_after<A: Future, B: Future>(
    mut first: std::pin::Pin<Box<A>>,
    mut second: std::pin::Pin<Box<B>>,
    polls: u64,
) -> Option<B::Output> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    for _ in 0..polls {
        if first.as_mut().poll(&mut cx).is_ready() {
            break;
        }
        if let std::task::Poll::Ready(r) = second.as_mut().poll(&mut cx) {
            return Some(r);
        }
    }
    drop(first);
    (0..10_000).find_map(|_| match second.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(r) => Some(r),
        std::task::Poll::Pending => None,
    })
}

#[test]
fn a_sync_dropped_at_any_point_leaves_the_log_able_to_commit() {
    // Under `interval`: two syncs share a round; drop the first one's
    // future after each possible number of polls (as the leader writing,
    // awaiting the round's fdatasync, or waiting): the other must still
    // resolve, and what it covers be durable.
    let faults = SimFaults {
        yields_max: 3,
        ..SimFaults::default()
    };
    let config = LogConfig {
        durability: Durability::Interval(Duration::from_secs(3600)),
        ..small_config()
    };
    for polls in 0..24 {
        let sim = SimStorage::new(polls, faults);
        let log = open(&sim, config);
        append(&log, &[record(0, 300)], 1);
        append(&log, &[record(1, 300)], 1);
        // Both cover both records: the second waits on the first's round.
        let first = Box::pin(log.sync());
        let second = Box::pin(log.sync());
        drop_first_after(first, second, polls)
            .unwrap_or_else(|| panic!("polls {polls}: the second sync never resolved"))
            .unwrap();
        assert_eq!(log.stats().durable_offset, 2, "polls {polls}");
        drop(log);
        sim.crash(CrashMode::DropUnsynced);
        let log = open(&sim, config);
        assert_eq!(
            read_all(&log),
            vec![(0, record(0, 300)), (1, record(1, 300))],
            "polls {polls}"
        );
    }
}

#[test]
fn an_append_dropped_at_any_point_leaves_the_log_able_to_commit() {
    // Two appends share a round; drop the first one's future after each
    // possible number of polls: as the leader writing (a write-through
    // write), or as a waiter. The other must still resolve (not wait
    // forever on a write nobody awaits), and be durable.
    let faults = SimFaults {
        yields_max: 3,
        ..SimFaults::default()
    };
    for polls in 0..24 {
        let sim = SimStorage::new(polls, faults);
        let log = open(&sim, small_config());
        let (a, b) = ([record(0, 300)], [record(1, 300)]);
        let first = Box::pin(log.append(&a, 1));
        let second = Box::pin(log.append(&b, 1));
        let appended = drop_first_after(first, second, polls)
            .unwrap_or_else(|| panic!("polls {polls}: the second append never resolved"))
            .unwrap();
        assert!(
            log.stats().durable_offset > appended.last_offset,
            "polls {polls}"
        );
        let records = read_all(&log);
        assert!(records.iter().any(|(_, r)| *r == b[0]), "polls {polls}");
    }
}

/// A config whose batches may be far longer than a read window (a page
/// plus the index interval).
fn large_batch_config(durability: Durability) -> LogConfig {
    LogConfig {
        segment_bytes: 4 << 20,
        segment_preallocate_bytes: 1 << 20,
        index_interval_bytes: 4096,
        durability,
        retention: Retention::default(),
        write_bytes_max: 256 << 10,
        pending_bytes_max: 4 << 20,
        batch_bytes_max: 1 << 20,
    }
}

/// Small records, one record of 600 KiB, a batch of 64 x 5 KiB and more
/// small ones: what a partition holds when a client publishes a large event
/// or a large batch between ordinary ones.
fn append_large_and_small(log: &SimLog) -> Vec<(u64, Vec<u8>)> {
    let mut expected = Vec::new();
    let mut add = |records: Vec<Vec<u8>>| {
        let appended = append(log, &records, 1);
        for (i, r) in records.into_iter().enumerate() {
            expected.push((appended.base_offset + i as u64, r));
        }
    };
    for i in 0..3 {
        add(vec![record(i, 100)]);
    }
    add(vec![record(3, 600 << 10)]);
    add((0..64).map(|j| record(100 + j, 5 << 10)).collect());
    for i in 0..3 {
        add(vec![record(200 + i, 100)]);
    }
    add(vec![record(300, (1 << 20) - BATCH_HEADER_BYTES - 4)]);
    expected
}

/// Reads every record by `read_records(offset, bytes_max)` from each
/// offset, checking that the first record is the one at that offset,
/// whole, and that the records returned follow it in order.
fn check_every_offset(log: &SimLog, expected: &[(u64, Vec<u8>)], bytes_max: usize) {
    for (i, (offset, bytes)) in expected.iter().enumerate() {
        let read = block_on(log.read_records(*offset, bytes_max))
            .unwrap_or_else(|e| panic!("read_records({offset}, {bytes_max}): {e}"));
        assert!(!read.records.is_empty(), "nothing at {offset}");
        assert_eq!(read.records[0].0, *offset);
        assert_eq!(&read.records[0].1[..], &bytes[..], "record {offset}");
        for (j, (o, r)) in read.records.iter().enumerate() {
            assert_eq!((*o, &r[..]), (expected[i + j].0, &expected[i + j].1[..]));
        }
        assert_eq!(read.next_offset, read.records.last().unwrap().0 + 1);
        let total: usize = read.records.iter().map(|(_, r)| r.len()).sum();
        assert!(
            read.records.len() == 1 || total <= bytes_max,
            "{total} bytes over {bytes_max} in more than one record"
        );
    }
}

/// A read returns the whole batch at the read position whatever its size:
/// a batch longer than the read window is read again by its length, not
/// taken for a corrupt segment. Checked from the tail buffer, and from the
/// file after a reopen, with tiny and large `bytes_max`, under both
/// durability modes.
#[test]
fn a_batch_longer_than_the_read_window_is_read_whole() {
    for durability in [Durability::Always, Durability::Never] {
        let sim = SimStorage::new(7, SimFaults::default());
        let config = large_batch_config(durability);
        let log = open(&sim, config);
        let expected = append_large_and_small(&log);
        block_on(log.sync()).unwrap();
        for bytes_max in [1, 4096, 64 << 10, 1 << 20] {
            check_every_offset(&log, &expected, bytes_max);
        }
        drop(log);
        let log = open(&sim, config);
        for bytes_max in [1, 4096, 64 << 10, 1 << 20] {
            check_every_offset(&log, &expected, bytes_max);
        }
        assert_eq!(read_all(&log), expected);
    }
}

/// Only a file that really ends inside a batch is corrupt: cutting the
/// sealed segment's file inside its large batch is reported as corrupt
/// when that batch is read.
#[test]
fn a_batch_cut_short_in_the_file_is_corrupt_when_read() {
    let sim = SimStorage::new(9, SimFaults::default());
    let config = large_batch_config(Durability::Always);
    let log = open(&sim, config);
    let expected = append_large_and_small(&log);
    block_on(log.sync()).unwrap();
    // The 600 KiB record's batch starts after three small batches.
    let big = expected[3].0;
    let start = 3 * (BATCH_HEADER_BYTES + 4 + 100) as u64;
    sim.set_len(&seg_path(0), start + 100_000).unwrap();
    // The log still believes the bytes are there (no reopen): the read
    // comes back short and says so.
    let err = block_on(log.read_records(big, 1)).unwrap_err();
    assert!(
        matches!(err, ReadError::Corrupt { .. } | ReadError::Io(_)),
        "{err}"
    );
}
