//! Version-2 formats (Raft term and index in every batch, control batches,
//! `log.meta`'s Raft area) and the version-1 data they must keep reading,
//! produced by the old encoders kept as test fixtures.

use super::*;
use crate::log::batch::{BatchKind, BatchStamp, encode_into, encode_v1_into};
use crate::log::meta::LogMeta;

/// Every events record from the log's start, with the headers of all its
/// batches (control ones included).
fn read_everything(log: &SimLog) -> (Vec<(u64, Vec<u8>)>, Vec<batch::BatchHeader>) {
    let (mut records, mut headers) = (Vec::new(), Vec::new());
    let mut offset = log.stats().start_offset;
    let end = log.visible_offset();
    while offset < end {
        let read = block_on(log.read(offset, 1 << 20)).unwrap();
        for batch in Batches::new(&read.bytes) {
            let batch = batch.unwrap();
            headers.push(batch.header);
            if batch.header.kind == BatchKind::Events {
                records.extend(batch.records().map(|(o, r)| (o, r.to_vec())));
            }
        }
        offset = read.next_offset;
    }
    (records, headers)
}

fn v1_log(sim: &SimStorage, n: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    for o in 0..n {
        encode_v1_into(&mut bytes, o, 1_000 + o, &[record(o, 150)]);
    }
    let data = bytes.len() as u64;
    bytes.resize(small_config().segment_bytes as usize, 0);
    sim.put_file(&seg_path(0), &bytes);
    let meta = LogMeta {
        seq: 1,
        active_base: Some(0),
        durable_position: data,
        durable_next: n,
        ..LogMeta::default()
    };
    let mut file = vec![0u8; 4096];
    file.extend_from_slice(&meta.encode_v1());
    sim.put_file(&meta::meta_path(&dir()), &file);
    bytes
}

#[test]
fn a_version_1_log_opens_reads_and_continues_in_a_version_2_segment() {
    let sim = SimStorage::new(60, SimFaults::default());
    v1_log(&sim, 5);
    let log = open(&sim, small_config());
    assert_eq!(log.damage(), None);
    let (records, headers) = read_everything(&log);
    assert_eq!(
        records,
        (0..5).map(|o| (o, record(o, 150))).collect::<Vec<_>>()
    );
    assert!(headers.iter().all(|h| h.version == 1 && h.term == 0));
    assert_eq!(log.next_index(), 1, "version-1 batches have no Raft index");
    // New batches go to a new version-2 segment, from index 1.
    assert_eq!(append(&log, &[b"a".to_vec()], 0).base_offset, 5);
    assert_eq!(append(&log, &[b"b".to_vec()], 0).base_offset, 6);
    assert!(
        sim.durable_bytes(&seg_path(5)).is_some(),
        "rolled at offset 5"
    );
    drop(log);
    let log = open(&sim, small_config());
    let (records, headers) = read_everything(&log);
    assert_eq!(records.len(), 7);
    assert_eq!(&records[5..], &[(5, b"a".to_vec()), (6, b"b".to_vec())]);
    let v2: Vec<_> = headers[5..]
        .iter()
        .map(|h| (h.version, h.term, h.raft_index))
        .collect();
    assert_eq!(v2, vec![(2, 1, 1), (2, 1, 2)]);
    assert_eq!(log.next_index(), 3);
    let meta = block_on(meta::read(&sim, &dir())).unwrap().unwrap();
    assert_eq!((meta.raft.term, meta.raft.active_base_index), (1, 1));
    // Bytes recorded durable cut short in the version-2 segment are damage
    // (not a torn tail); repair cuts them and the indexes continue.
    drop(log);
    let end = 2 * (BATCH_HEADER_BYTES as u64 + 5);
    sim.set_len(&seg_path(5), end - 3).unwrap();
    let log = open(&sim, small_config());
    let damage = log.damage().unwrap();
    assert_eq!(
        (damage.path.clone(), damage.position, damage.offset),
        (seg_path(5), end / 2, 6)
    );
    drop(log);
    let report = block_on(SimLog::repair(sim.clone(), &dir(), small_config()))
        .unwrap()
        .expect("something to repair");
    // Repair skips the offsets that may have been acknowledged (6), not
    // the Raft index: a single node's index 2 was never acknowledged to
    // anyone as an entry.
    assert_eq!(report.next_offset, 7, "{report}");
    let log = open(&sim, small_config());
    assert_eq!(log.damage(), None);
    assert_eq!(log.next_index(), 2);
    assert_eq!(append(&log, &[b"c".to_vec()], 0).base_offset, 7);
    drop(log);
    let log = open(&sim, small_config());
    let (records, headers) = read_everything(&log);
    assert_eq!(records.last(), Some(&(7, b"c".to_vec())));
    assert_eq!(headers.last().map(|h| h.raft_index), Some(2));
}

/// A version-2 segment as a cluster would leave it: events at term 1, a
/// new leader's empty entry and a conf change at term 2 among events.
fn raft_segment() -> (Vec<u8>, Vec<u64>) {
    let entries: [(BatchKind, u64, u64, Vec<Vec<u8>>); 5] = [
        (
            BatchKind::Events,
            1,
            0,
            vec![record(0, 150), record(1, 150)],
        ),
        (BatchKind::RaftEmpty, 2, 2, vec![vec![]]),
        (BatchKind::Events, 2, 2, vec![record(2, 150)]),
        (BatchKind::ConfChange, 2, 3, vec![b"conf change".to_vec()]),
        (BatchKind::Events, 2, 3, vec![record(3, 150)]),
    ];
    let (mut bytes, mut positions) = (Vec::new(), Vec::new());
    for (i, (kind, term, base_offset, records)) in entries.into_iter().enumerate() {
        positions.push(bytes.len() as u64);
        let stamp = BatchStamp {
            kind,
            base_offset,
            first_timestamp_ms: 0,
            term,
            raft_index: i as u64 + 1,
        };
        encode_into(&mut bytes, &stamp, &records);
    }
    (bytes, positions)
}

fn put_active(sim: &SimStorage, bytes: &[u8]) {
    let mut image = bytes.to_vec();
    image.resize(small_config().segment_bytes as usize, 0);
    sim.put_file(&seg_path(0), &image);
}

#[test]
fn control_batches_take_no_offsets_and_the_term_continues() {
    let sim = SimStorage::new(61, SimFaults::default());
    let (bytes, _) = raft_segment();
    put_active(&sim, &bytes);
    let log = open(&sim, small_config());
    assert_eq!(log.damage(), None);
    let (records, headers) = read_everything(&log);
    assert_eq!(
        records,
        (0..4).map(|o| (o, record(o, 150))).collect::<Vec<_>>()
    );
    assert_eq!(headers.len(), 5);
    assert_eq!((log.stats().next_offset, log.next_index()), (4, 6));
    // A read from an offset a control batch shares starts at the events.
    let read = block_on(log.read(3, 1 << 20)).unwrap();
    let first = Batches::new(&read.bytes).next().unwrap().unwrap().header;
    assert_eq!((first.kind, first.raft_index), (BatchKind::Events, 5));
    // The next batch continues at the last term, never below it.
    append(&log, &[b"x".to_vec()], 0);
    drop(log);
    let log = open(&sim, small_config());
    let (_, headers) = read_everything(&log);
    let last = headers.last().unwrap();
    assert_eq!((last.term, last.raft_index, last.base_offset), (2, 6, 4));
}

/// `read_records` (what fetch, groups and pipelines read through) returns
/// the records of event batches only: a control batch's record shares the
/// next event's offset and is no event (a replicated partition's log holds
/// one at every new leader's term).
#[test]
fn read_records_skips_control_batches_from_every_offset() {
    let sim = SimStorage::new(62, SimFaults::default());
    let (bytes, _) = raft_segment();
    put_active(&sim, &bytes);
    let log = open(&sim, small_config());
    for from in 0..4 {
        let read = block_on(log.read_records(from, 1 << 20)).unwrap();
        let got: Vec<(u64, Vec<u8>)> = read.records.iter().map(|(o, r)| (*o, r.to_vec())).collect();
        assert_eq!(
            got,
            (from..4).map(|o| (o, record(o, 150))).collect::<Vec<_>>(),
            "from offset {from}"
        );
        assert_eq!(read.next_offset, 4);
    }
    // One record at a time: each read moves past the control batches.
    let mut offset = 0;
    while offset < 4 {
        let read = block_on(log.read_records(offset, 1)).unwrap();
        assert_eq!(read.records[0].0, offset);
        assert_eq!(read.records[0].1.as_ref(), record(offset, 150).as_slice());
        offset = read.next_offset;
    }
}

#[test]
fn recovery_cuts_a_version_2_tail_torn_at_every_byte() {
    let (bytes, positions) = raft_segment();
    let last = positions[4] as usize;
    for cut in last..bytes.len() {
        let sim = SimStorage::new(cut as u64, SimFaults::default());
        put_active(&sim, &bytes[..cut]);
        let log = open(&sim, small_config());
        assert_eq!(log.damage(), None, "cut at {cut}");
        assert_eq!(
            (log.stats().next_offset, log.next_index()),
            (3, 5),
            "cut at {cut}: the conf change is kept, its offset shared"
        );
    }
}

#[test]
fn recovery_cuts_at_a_batch_out_of_raft_sequence() {
    let (bytes, _) = raft_segment();
    let cases = [
        ("an index skipped", 1u64, 7u64),
        ("an index repeated", 2, 5),
        ("a term fallen", 1, 6),
    ];
    for (i, (what, term, raft_index)) in cases.into_iter().enumerate() {
        let mut image = bytes.clone();
        let stamp = BatchStamp {
            kind: BatchKind::Events,
            base_offset: 4,
            first_timestamp_ms: 0,
            term,
            raft_index,
        };
        encode_into(&mut image, &stamp, &[record(4, 150)]);
        let sim = SimStorage::new(70 + i as u64, SimFaults::default());
        put_active(&sim, &image);
        let log = open(&sim, small_config());
        assert_eq!(log.damage(), None, "{what}");
        assert_eq!(
            (log.stats().next_offset, log.next_index()),
            (4, 6),
            "{what}: cut before it"
        );
        let cut = log.recovery().cut.as_ref().map(|c| c.position);
        assert_eq!(cut, Some(bytes.len() as u64), "{what}");
    }
}
