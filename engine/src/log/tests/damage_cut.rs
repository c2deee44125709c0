//! A replicated log's open that cuts it before damage anywhere
//! (`log/damage_cut.rs`): each kind of damage is found and cut, the
//! highest term is reported past the damage too, a single-node open still
//! refuses or goes read-only, and a crash at every storage operation of the
//! cut leaves a log that opens as before or as cut.

use super::raft::{append_entries, bytes_of};
use super::*;

/// Entries 1..200: terms 1 below 120, 3 from 120 on, in several segments
/// (all durable, every sealed segment finalized); returns their bytes.
fn replicated_log(sim: &SimStorage) -> Vec<Vec<u8>> {
    let log = open(sim, small_config());
    let mut old = append_entries(&log, 1, 120, 1);
    old.extend(append_entries(&log, 120, 200, 3));
    block_on(log.sync_index(200)).unwrap();
    block_on(log.checkpoint()).unwrap();
    assert!(
        log.segments().len() >= 4,
        "{} segments",
        log.segments().len()
    );
    old
}

/// The byte positions of the batches in a segment's durable bytes, with
/// their Raft indexes.
fn batches_in(sim: &SimStorage, base: u64) -> Vec<(u64, u64)> {
    let bytes = sim.durable_bytes(&seg_path(base)).unwrap();
    let mut out = Vec::new();
    let mut at = 0usize;
    while let Ok(h) = batch::verify(&bytes[at..]) {
        out.push((at as u64, h.raft_index));
        at += h.batch_bytes();
    }
    out
}

/// The base offsets of the log's segments.
fn bases(sim: &SimStorage) -> Vec<u64> {
    let mut b: Vec<u64> = sim
        .paths()
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .filter_map(|p| p.file_stem()?.to_str()?.parse().ok())
        .collect();
    b.sort_unstable();
    b
}

fn find(sim: &SimStorage) -> Option<DamageFound> {
    block_on(Log::find_damage(sim, &dir(), &small_config())).unwrap()
}

fn open_cut(sim: &SimStorage, found: &DamageFound) -> SimLog {
    let log = block_on(Log::open_cut(sim.clone(), &dir(), small_config(), found)).unwrap();
    block_on(log.load_raft_index()).unwrap();
    log
}

/// After the cut: the log holds exactly the entries before `index`, opens
/// writable, and goes on from there.
fn check_cut(log: &SimLog, old: &[Vec<u8>], index: u64) {
    assert!(log.damage().is_none(), "{:?}", log.damage());
    assert_eq!(log.last_index(), index - 1);
    assert!(bytes_of(log) == old[..index as usize - 1], "a prefix");
    append_entries(log, index, index + 3, 4);
    block_on(log.sync_index(index + 3)).unwrap();
    assert_eq!(log.last_index(), index + 2);
}

#[test]
fn a_sealed_payload_flip_without_its_index_is_cut_where_open_refused() {
    let sim = SimStorage::new(71, SimFaults::default());
    let old = replicated_log(&sim);
    let b = bases(&sim);
    let (pos, index) = batches_in(&sim, b[1])[3];
    sim.flip_bit(&seg_path(b[1]), pos + 100, 2).unwrap();
    sim.delete(&idx_path(b[1]));
    // A single node refuses, as before.
    let err = block_on(Log::open(sim.clone(), &dir(), small_config())).err();
    assert!(
        matches!(&err, Some(OpenError::Corrupt { position, .. }) if *position == pos),
        "{err:?}"
    );
    let found = find(&sim).unwrap();
    assert_eq!(
        (found.segment_base, found.position, found.raft_index),
        (b[1], pos, index)
    );
    assert!(found.sealed && found.path == seg_path(b[1]), "{found}");
    assert_eq!(found.term_max, 3, "the terms past the damage count");
    let log = open_cut(&sim, &found);
    check_cut(&log, &old, index);
    assert_eq!(bases(&sim), b[..2].to_vec(), "the later segments are gone");
    drop(log);
    // Reopened, it is whole.
    assert_eq!(find(&sim), None);
}

#[test]
fn a_sealed_payload_flip_behind_a_good_index_is_found_though_open_passes() {
    let sim = SimStorage::new(72, SimFaults::default());
    let old = replicated_log(&sim);
    let b = bases(&sim);
    let (pos, index) = batches_in(&sim, b[0])[2];
    sim.flip_bit(&seg_path(b[0]), pos + 80, 5).unwrap();
    // The index's last entry and the tail after it are whole: open passes.
    drop(open(&sim, small_config()));
    let found = find(&sim).unwrap();
    assert_eq!((found.segment_base, found.raft_index), (b[0], index));
    check_cut(&open_cut(&sim, &found), &old, index);
}

#[test]
fn a_sealed_header_flip_that_breaks_the_raft_index_is_cut() {
    let sim = SimStorage::new(73, SimFaults::default());
    let old = replicated_log(&sim);
    let b = bases(&sim);
    let (pos, index) = batches_in(&sim, b[2])[1];
    // The raft_index field (bytes 48..56 of the header).
    sim.flip_bit(&seg_path(b[2]), pos + 49, 0).unwrap();
    let found = find(&sim).unwrap();
    assert_eq!(
        (found.segment_base, found.position, found.raft_index),
        (b[2], pos, index)
    );
    check_cut(&open_cut(&sim, &found), &old, index);
}

#[test]
fn active_damage_below_the_watermark_is_cut_where_open_went_read_only() {
    let sim = SimStorage::new(74, SimFaults::default());
    let old = replicated_log(&sim);
    let b = bases(&sim);
    let active = *b.last().unwrap();
    let (pos, index) = batches_in(&sim, active)[1];
    sim.flip_bit(&seg_path(active), pos + 70, 1).unwrap();
    let log = open(&sim, small_config());
    assert!(log.damage().is_some(), "a single node goes read-only");
    drop(log);
    let found = find(&sim).unwrap();
    assert!(!found.sealed);
    assert_eq!((found.position, found.raft_index), (pos, index));
    assert_eq!(found.term_max, 3);
    check_cut(&open_cut(&sim, &found), &old, index);
}

#[test]
fn the_term_recorded_in_log_meta_counts_and_a_torn_tail_is_not_damage() {
    let sim = SimStorage::new(75, SimFaults::default());
    replicated_log(&sim);
    let log = open(&sim, small_config());
    let mut state = log.raft_meta();
    state.term = 9;
    block_on(log.write_raft_state(&state)).unwrap();
    // A torn tail: a batch appended and written but never synced.
    append_entries(&log, 200, 201, 9);
    drop(log);
    sim.restart(CrashMode::Torn);
    assert_eq!(find(&sim), None, "whole, or a torn tail open cuts");
    let b = bases(&sim);
    let (pos, _) = batches_in(&sim, b[0])[0];
    sim.flip_bit(&seg_path(b[0]), pos + 60, 0).unwrap();
    let found = find(&sim).unwrap();
    assert_eq!((found.raft_index, found.term_max), (1, 9));
    let log = open_cut(&sim, &found);
    assert_eq!((log.first_index(), log.last_index()), (1, 0), "empty");
}

/// A crash at every storage operation of a cut two segments back: the log
/// then opens as before (a single node still refuses it) or as cut, and a
/// second `find_damage` + `open_cut` ends at the same log.
#[test]
fn a_crash_during_the_cut_leaves_a_log_that_opens_as_before_or_as_cut() {
    let mut completed = false;
    let mut before = 0;
    let mut cut = 0;
    for ops in 1..100u64 {
        let mode = [CrashMode::DropUnsynced, CrashMode::Torn][ops as usize % 2];
        let sim = SimStorage::new(80 + ops, SimFaults::default());
        let old = replicated_log(&sim);
        let b = bases(&sim);
        let (pos, index) = batches_in(&sim, b[b.len() - 3])[2];
        sim.flip_bit(&seg_path(b[b.len() - 3]), pos + 90, 3)
            .unwrap();
        let found = find(&sim).unwrap();
        sim.crash_after_ops(ops);
        let result = block_on(Log::open_cut(sim.clone(), &dir(), small_config(), &found));
        if result.is_ok() && !sim.is_frozen() {
            completed = true;
            break;
        }
        drop(result);
        sim.restart(mode);
        match find(&sim) {
            Some(again) => {
                before += 1;
                assert_eq!(
                    (again.position, again.raft_index),
                    (pos, index),
                    "ops {ops}"
                );
                check_cut(&open_cut(&sim, &again), &old, index);
            }
            None => {
                cut += 1;
                let log = open(&sim, small_config());
                block_on(log.load_raft_index()).unwrap();
                check_cut(&log, &old, index);
            }
        }
    }
    assert!(completed, "the cut completed within the operations tried");
    assert!(
        before > 0 && cut > 0,
        "crashed before ({before}) and after ({cut}) the cut"
    );
}

/// A Raft log's per-round checkpoint (`EngineLogStore::persist` when the
/// hard state did not change) puts the entries synced below the
/// watermark, so damage to them is found, and claims none of the bytes
/// not synced: a torn tail after them is cut as such.
#[test]
fn the_round_checkpoint_covers_the_synced_entries_and_claims_no_unsynced_byte() {
    let sim = SimStorage::new(76, SimFaults::default());
    replicated_log(&sim);
    let log = open(&sim, small_config());
    block_on(log.load_raft_index()).unwrap();
    append_entries(&log, 200, 210, 3);
    block_on(log.sync_index(210)).unwrap();
    append_entries(&log, 210, 215, 3);
    block_on(log.checkpoint()).unwrap();
    drop(log);
    sim.restart(CrashMode::Torn);
    assert_eq!(find(&sim), None, "the tail not synced is a torn tail");
    let active = *bases(&sim).last().unwrap();
    let (pos, _) = batches_in(&sim, active)
        .into_iter()
        .find(|&(_, index)| index == 205)
        .unwrap();
    sim.flip_bit(&seg_path(active), pos + 70, 1).unwrap();
    let found = find(&sim).unwrap();
    assert_eq!((found.raft_index, found.sealed), (205, false));
}

/// Both slots of `log.meta` bad is told from a missing file and from a
/// torn first write (`meta::state`), which `meta::read` answers alike.
#[test]
fn both_log_meta_slots_bad_is_lost_and_not_a_torn_first_write() {
    let sim = SimStorage::new(79, SimFaults::default());
    assert_eq!(
        block_on(meta::state(&sim, &dir())).unwrap(),
        meta::MetaState::Absent
    );
    replicated_log(&sim);
    assert_eq!(
        block_on(meta::state(&sim, &dir())).unwrap(),
        meta::MetaState::Valid
    );
    let path = meta::meta_path(&dir());
    let good = sim.durable_bytes(&path).unwrap();
    assert_eq!(good.len(), 8192, "two slots written");
    // One slot bad: the other is read.
    sim.flip_bit(&path, 5, 3).unwrap();
    assert_eq!(
        block_on(meta::state(&sim, &dir())).unwrap(),
        meta::MetaState::Valid
    );
    // Both bad: lost, and `read` cannot tell it from no file.
    sim.flip_bit(&path, 4096 + 5, 3).unwrap();
    assert_eq!(
        block_on(meta::state(&sim, &dir())).unwrap(),
        meta::MetaState::Lost
    );
    assert!(block_on(meta::read(&sim, &dir())).unwrap().is_none());
    // Garbage over the whole file: lost.
    sim.put_file(&path, &[0xA5; 8192]);
    assert_eq!(
        block_on(meta::state(&sim, &dir())).unwrap(),
        meta::MetaState::Lost
    );
    // The first write (the second slot) torn, the first slot never
    // written: nothing was recorded.
    let mut torn = vec![0u8; 8192];
    torn[4096..6000].copy_from_slice(&good[4096..6000]);
    sim.put_file(&path, &torn);
    assert_eq!(
        block_on(meta::state(&sim, &dir())).unwrap(),
        meta::MetaState::FirstWriteTorn
    );
    let mut short = vec![0u8; 4096 + 512];
    short[4096..].copy_from_slice(&good[4096..4096 + 512]);
    sim.put_file(&path, &short);
    assert_eq!(
        block_on(meta::state(&sim, &dir())).unwrap(),
        meta::MetaState::FirstWriteTorn
    );
}
