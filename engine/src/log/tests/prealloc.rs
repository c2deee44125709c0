//! The active segment's file allocated in steps (see "Preallocation" in
//! `log/segment.rs`): it grows a step at a time as it is written and never
//! past the segment; a crash that loses an extension keeps every durable
//! batch and cuts only a torn tail; a file that ends at its data is a clean
//! end; recycled files keep their length.

use super::*;

/// `small_config`'s step: four to a segment.
const STEP: u64 = 16 << 10;

/// The length the active segment's file must have while its data ends at
/// `end`: the page-padded end in whole steps, at least one, at most the
/// segment.
fn allocation_at(end: u64, segment_bytes: u64) -> u64 {
    let written = crate::storage::align_up(end);
    (written.div_ceil(STEP).max(1) * STEP).min(segment_bytes)
}

fn file_len(sim: &SimStorage, base: u64) -> u64 {
    sim.written_bytes(&seg_path(base)).unwrap().len() as u64
}

fn durable_len(sim: &SimStorage, base: u64) -> u64 {
    sim.durable_bytes(&seg_path(base)).unwrap().len() as u64
}

#[test]
fn a_segment_file_grows_in_steps_as_it_is_written_and_never_past_segment_bytes() {
    let sim = SimStorage::new(7, SimFaults::default());
    let config = small_config();
    assert_eq!(config.segment_preallocate_bytes, STEP);
    let log = open(&sim, config);
    let mut expected = Vec::new();
    let mut lengths = Vec::new();
    for i in 0..200u64 {
        expected.extend(append_numbered(&log, i..i + 1, 700));
        let seg = *log.segments().first().unwrap();
        if seg.base_offset != 0 {
            break;
        }
        let len = file_len(&sim, 0);
        if log.segments().len() == 1 {
            // Still the active segment: allocated a step ahead of its data.
            assert_eq!(len, allocation_at(seg.bytes, config.segment_bytes));
            // Under `always` the extension is durable with the write.
            assert_eq!(durable_len(&sim, 0), len);
        }
        assert!(len <= config.segment_bytes, "{len}");
        if lengths.last() != Some(&len) {
            lengths.push(len);
        }
    }
    // The first segment was allocated one step at a time, then sealed and
    // truncated to its data.
    let sealed = log.segments()[0];
    assert!(log.segments().len() > 1, "the log never rolled");
    let mut steps: Vec<u64> = (1..=4).map(|k| k * STEP).collect();
    steps.push(sealed.bytes);
    assert_eq!(lengths, steps);
    // The new active segment began with one step.
    let active = *log.segments().last().unwrap();
    assert_eq!(
        file_len(&sim, active.base_offset),
        allocation_at(active.bytes, config.segment_bytes)
    );
    assert_eq!(read_all(&log), expected);
}

#[test]
fn a_crash_that_loses_an_extension_keeps_every_durable_batch_and_cuts_only_a_torn_tail() {
    let config = LogConfig {
        durability: Durability::Interval(Duration::from_secs(3600)),
        ..small_config()
    };
    for seed in 0..60u64 {
        let mode = if seed % 2 == 0 {
            CrashMode::DropUnsynced
        } else {
            CrashMode::Torn
        };
        let sim = SimStorage::new(seed, SimFaults::default());
        let log = open(&sim, config);
        // Durable: most of the first step.
        let mut model = append_numbered(&log, 0..14, 900);
        block_on(log.sync()).unwrap();
        let acked = model.len();
        let durable_end = log.segments()[0].bytes;
        assert_eq!(durable_len(&sim, 0), STEP);
        // Written, not synced: past the first step, so the file was
        // extended, and the extension is not durable either.
        model.extend(append_numbered(&log, 14..30, 900));
        block_on(log.write_pending());
        assert_eq!(file_len(&sim, 0), 2 * STEP, "seed {seed}");
        assert_eq!(durable_len(&sim, 0), STEP, "seed {seed}");
        drop(log);
        sim.crash(mode);

        let log = open(&sim, config);
        assert_eq!(
            log.damage(),
            None,
            "seed {seed}: a lost extension is no damage"
        );
        let got = read_all(&log);
        assert!(got.len() >= acked, "seed {seed}: lost a durable batch");
        assert_eq!(got[..], model[..got.len()], "seed {seed}");
        if let Some(cut) = &log.recovery().cut {
            assert!(cut.position >= durable_end, "seed {seed}: {cut}");
            assert_eq!(cut.offset, got.len() as u64, "seed {seed}");
        }
        let end = log.segments()[0].bytes;
        assert_eq!(file_len(&sim, 0), allocation_at(end, config.segment_bytes));
        // It goes on from there, extending again as it is written.
        let next = got.len() as u64;
        let mut expected = got;
        expected.extend(append_numbered(&log, next..next + 20, 900));
        block_on(log.sync()).unwrap();
        assert_eq!(read_all(&log), expected, "seed {seed}");
        drop(log);
        sim.crash(mode);
        let log = open(&sim, config);
        assert_eq!(log.recovery(), &Recovery::default(), "seed {seed}");
        assert_eq!(read_all(&log), expected, "seed {seed}");
    }
}

/// Builds a log of `n` durable records of 900 bytes in one segment and
/// returns its segment's bytes of data (the file's image cut to them) and
/// the start of its last batch.
fn written_segment(sim: &SimStorage, n: u64, checkpoint: bool) -> (Vec<u8>, u64) {
    let log = open(sim, small_config());
    append_numbered(&log, 0..n - 1, 900);
    let last_start = log.segments()[0].bytes;
    append_numbered(&log, n - 1..n, 900);
    if checkpoint {
        block_on(log.checkpoint()).unwrap();
    }
    let end = log.segments()[0].bytes as usize;
    drop(log);
    let mut image = sim.durable_bytes(&seg_path(0)).unwrap();
    image.truncate(end);
    (image, last_start)
}

#[test]
fn an_active_segment_whose_file_ends_at_its_data_opens_clean() {
    let sim = SimStorage::new(3, SimFaults::default());
    let (image, _) = written_segment(&sim, 20, true);
    // As a crash leaves it when the file was never extended past its data
    // (not even to the end of the last page).
    sim.put_file(&seg_path(0), &image);
    let log = open(&sim, small_config());
    assert_eq!(log.recovery(), &Recovery::default());
    let expected: Vec<(u64, Vec<u8>)> = (0..20).map(|i| (i, record(i, 900))).collect();
    assert_eq!(read_all(&log), expected);
    let end = image.len() as u64;
    assert_eq!(file_len(&sim, 0), allocation_at(end, STEP * 4));
    let mut expected = expected;
    expected.extend(append_numbered(&log, 20..60, 900));
    assert_eq!(read_all(&log), expected);
}

#[test]
fn an_active_segment_whose_file_ends_inside_a_batch_past_the_watermark_is_a_torn_tail() {
    let sim = SimStorage::new(4, SimFaults::default());
    let (image, last_start) = written_segment(&sim, 20, false);
    sim.put_file(&seg_path(0), &image[..image.len() - 100]);
    let log = open(&sim, small_config());
    assert_eq!(log.damage(), None);
    let cut = log.recovery().cut.clone().expect("a torn tail cut");
    assert_eq!((cut.position, cut.offset), (last_start, 19), "{cut}");
    let expected: Vec<(u64, Vec<u8>)> = (0..19).map(|i| (i, record(i, 900))).collect();
    assert_eq!(read_all(&log), expected);
    assert_eq!(
        file_len(&sim, 0),
        allocation_at(last_start, STEP * 4),
        "cut and allocated again from the data's end"
    );
}

#[test]
fn an_active_segment_whose_file_ends_below_the_watermark_is_damage() {
    let sim = SimStorage::new(5, SimFaults::default());
    let (image, last_start) = written_segment(&sim, 20, true);
    sim.put_file(&seg_path(0), &image[..image.len() - 100]);
    let log = open(&sim, small_config());
    let damage = log
        .damage()
        .expect("a file cut below its watermark is damage");
    assert_eq!(
        (damage.position, damage.offset),
        (last_start, 19),
        "{damage}"
    );
    // Read-only: nothing on disk changed.
    assert_eq!(file_len(&sim, 0), image.len() as u64 - 100);
}

#[test]
fn a_segment_begun_in_a_recycled_file_keeps_its_length_and_its_old_batches_stay_unread() {
    let sim = SimStorage::new(62, SimFaults::default());
    let mut config = small_config();
    config.retention.max_bytes = Some(config.segment_bytes);
    let log = open(&sim, config);
    let mut expected = Vec::new();
    let mut recycled_seen = false;
    for i in 0..300u64 {
        expected.extend(append_numbered(&log, i..i + 1, 900));
        let active = *log.segments().last().unwrap();
        let len = file_len(&sim, active.base_offset);
        assert!(len <= config.segment_bytes, "{len}");
        // Every write lies inside the file (a recycled one's length need
        // not be a whole number of steps, nor even of pages).
        assert!(
            len >= crate::storage::align_up(active.bytes),
            "{len} {active:?}"
        );
        // A recycled file is longer than a new one's first step: it keeps
        // the length (and blocks) its older segment had.
        recycled_seen |= len > allocation_at(active.bytes, config.segment_bytes);
    }
    assert!(log.stats().commits.segments_recycled >= 2);
    assert!(recycled_seen, "no segment began in a recycled file");
    let start = log.stats().start_offset as usize;
    assert_eq!(read_all(&log), expected[start..]);
    drop(log);
    for mode in [CrashMode::DropUnsynced, CrashMode::Torn] {
        sim.crash(mode);
        let log = open(&sim, config);
        assert_eq!(log.damage(), None);
        assert_eq!(read_all(&log), expected[start..]);
    }
}
