//! A full disk (see "Disk full" in `log/append.rs`): an allocation that
//! fails with ENOSPC refuses the round without poisoning, keeps its batches
//! staged at their offsets, and a later round writes and syncs them once
//! space is freed; `pending_bytes_max` bounds what stays staged; a failed
//! write still poisons.

use super::*;

const STEP: u64 = 16 << 10;

fn full() -> SimFaults {
    SimFaults {
        disk_full: true,
        ..SimFaults::default()
    }
}

fn assert_disk_full(err: &AppendError) {
    assert!(
        matches!(err, AppendError::DiskFull { path, needed, why }
            if path == &seg_path(0) && *needed > 0 && why.contains("ENOSPC")),
        "{err:?}"
    );
    assert!(err.to_string().starts_with("disk full:"), "{err}");
}

#[test]
fn a_full_disk_refuses_the_round_without_poisoning_and_writes_the_staged_batches_once_freed() {
    for mode in [CrashMode::DropUnsynced, CrashMode::Torn] {
        let sim = SimStorage::new(11, SimFaults::default());
        let log = open(&sim, small_config());
        // Fill the first step exactly to its end, so that the next batch
        // needs the file extended.
        let mut expected = append_numbered(&log, 0..4, 4000);
        assert!(log.stats().bytes <= STEP);
        let durable_before = log.stats().durable_offset;
        assert_eq!(durable_before, 4);

        sim.set_faults(full());
        let staged: Vec<(u64, Vec<u8>)> = (4..8).map(|i| (i, record(i, 4000))).collect();
        for (i, r) in &staged {
            let err = block_on(log.append(std::slice::from_ref(r), *i)).unwrap_err();
            assert_disk_full(&err);
        }
        assert!(log.poisoned().is_none());
        assert!(log.disk_full().is_some());
        // Nothing written, nothing durable, offsets taken in order.
        assert_eq!(log.stats().durable_offset, durable_before);
        assert_eq!(log.stats().next_offset, 8);
        assert_eq!(read_all(&log), expected);
        assert_eq!(
            sim.written_bytes(&seg_path(0)).unwrap().len() as u64,
            STEP,
            "the failed allocation changed the file"
        );
        assert_disk_full(&block_on(log.sync()).unwrap_err());

        // Space is freed: the next round writes and syncs what was staged.
        sim.set_faults(SimFaults::default());
        let next = append(&log, &[record(8, 100)], 8);
        assert_eq!(next.base_offset, 8);
        assert!(log.disk_full().is_none());
        assert_eq!(log.stats().durable_offset, 9);
        expected.extend(staged);
        expected.push((8, record(8, 100)));
        assert_eq!(read_all(&log), expected);

        drop(log);
        sim.crash(mode);
        let log = open(&sim, small_config());
        assert_eq!(read_all(&log), expected, "{mode:?}");
        assert_eq!(log.stats().next_offset, 9);
    }
}

#[test]
fn a_full_disk_at_a_new_segment_keeps_the_sealed_one_and_creates_the_next_once_freed() {
    let sim = SimStorage::new(12, SimFaults::default());
    let config = small_config();
    let log = open(&sim, config);
    // 15 batches of 4000 bytes (and their headers) fill most of the 64 KiB
    // segment; the 17th does not fit and rolls.
    let mut expected = append_numbered(&log, 0..16, 4000);
    assert_eq!(log.segments().len(), 1);
    sim.set_faults(full());
    let mut rolled_to = None;
    for i in 16..40u64 {
        let r = record(i, 4000);
        match block_on(log.append(std::slice::from_ref(&r), i)) {
            Ok(a) => assert_eq!(a.base_offset, i),
            Err(err) => {
                let AppendError::DiskFull { path, .. } = &err else {
                    panic!("{err:?}");
                };
                rolled_to = Some(path.clone());
            }
        }
        expected.push((i, r));
        if rolled_to.is_some() {
            break;
        }
    }
    let last = expected.last().unwrap().0;
    let base = log.segments().last().unwrap().base_offset;
    assert!(base > 0, "no roll");
    assert_eq!(rolled_to, Some(seg_path(base)));
    assert!(log.poisoned().is_none());
    // The sealed segment is complete and durable; the new one has no file.
    assert_eq!(log.stats().durable_offset, base);
    assert!(sim.written_bytes(&seg_path(base)).is_none());

    sim.set_faults(SimFaults::default());
    block_on(log.sync()).unwrap();
    assert_eq!(log.stats().durable_offset, last + 1);
    drop(log);
    sim.crash(CrashMode::Torn);
    let log = open(&sim, config);
    assert_eq!(read_all(&log), expected);
}

#[test]
fn a_full_disk_refuses_appends_past_pending_bytes_max_instead_of_queueing_them() {
    let sim = SimStorage::new(13, SimFaults::default());
    let config = LogConfig {
        durability: Durability::Never,
        pending_bytes_max: 32 << 10,
        ..small_config()
    };
    let log = open(&sim, config);
    let mut expected = append_numbered(&log, 0..3, 4000);
    block_on(log.sync()).unwrap();
    sim.set_faults(full());
    let mut refused = None;
    for i in 3..40u64 {
        let r = record(i, 4000);
        match block_on(log.append(std::slice::from_ref(&r), i)) {
            Ok(a) => {
                assert_eq!(a.base_offset, i);
                expected.push((i, r));
            }
            Err(err) => {
                assert_disk_full(&err);
                refused = Some(i);
                break;
            }
        }
    }
    let refused = refused.expect("appends past pending_bytes_max were queued");
    assert_eq!(
        log.stats().next_offset,
        refused,
        "the refused batch was staged"
    );
    assert!(log.poisoned().is_none());

    sim.set_faults(SimFaults::default());
    let r = record(refused, 4000);
    assert_eq!(
        append(&log, std::slice::from_ref(&r), refused).base_offset,
        refused
    );
    expected.push((refused, r));
    block_on(log.sync()).unwrap();
    drop(log);
    sim.crash(CrashMode::DropUnsynced);
    let log = open(&sim, config);
    assert_eq!(read_all(&log), expected);
}

#[test]
fn an_allocation_error_other_than_a_full_disk_and_a_failed_write_still_poison() {
    // A failed write: poisons, as before.
    let sim = SimStorage::new(14, SimFaults::default());
    let log = open(&sim, small_config());
    append_numbered(&log, 0..2, 100);
    sim.set_faults(SimFaults {
        write_fail_ppm: 1_000_000,
        disk_full: true,
        ..SimFaults::default()
    });
    // Within the allocated step, so the write (not an allocation) fails.
    let err = block_on(log.append(&[record(2, 100)], 2)).unwrap_err();
    assert!(
        matches!(&err, AppendError::Poisoned(why) if why.contains("write")),
        "{err}"
    );
    sim.set_faults(SimFaults::default());
    assert!(matches!(
        block_on(log.append(&[record(3, 100)], 3)),
        Err(AppendError::Poisoned(_))
    ));
    assert!(log.disk_full().is_none());
}

#[test]
fn only_enospc_and_edquot_count_as_a_full_disk() {
    let path = seg_path(0);
    for (kind, full) in [
        (io::ErrorKind::StorageFull, true),
        (io::ErrorKind::QuotaExceeded, true),
        (io::ErrorKind::Other, false),
        (io::ErrorKind::PermissionDenied, false),
    ] {
        let e = super::super::append::FlushError::from_allocation(
            "preallocate of",
            &path,
            STEP,
            io::Error::new(kind, "x"),
        );
        let got = matches!(e, super::super::append::FlushError::DiskFull(_));
        assert_eq!(got, full, "{kind:?}");
    }
    let e = io::Error::from_raw_os_error(28);
    assert_eq!(e.kind(), io::ErrorKind::StorageFull);
    let e = io::Error::from_raw_os_error(122);
    assert_eq!(e.kind(), io::ErrorKind::QuotaExceeded);
}
