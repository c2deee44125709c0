//! Damage to a restarting node's log in the replicated-partition
//! simulation (`replica_repair.rs`, docs/replication.md section 10): one
//! kind drawn per damaged restart, always on one node at a time (recovery
//! needs one good copy of every acknowledged batch).
//!
//! - a bit of a sealed segment's batch payload, anywhere in it (the tail
//!   the engine's own open verifies included);
//! - the same with the segment's index file removed or cut short (as
//!   after a crash), so that the engine's open scans the segment whole;
//! - a bit of a batch header (term, Raft index, offsets, lengths) in any
//!   segment, which also keeps the Raft index from loading;
//! - a bit of an event batch in the active segment below the durable
//!   watermark `log.meta` records (the engine's open alone would go
//!   read-only);
//! - a bit of an event batch in the active segment past the watermark:
//!   cut as a torn tail with no marker (the recovery cannot tell it from
//!   one), or as damage when later batches prove it.

use std::path::{Path, PathBuf};

use futures::executor::block_on;
use hadron_engine::log::batch::{BatchKind, Batches};
use hadron_engine::storage::sim::SimStorage;

use super::{DIR, Sim};

/// The kinds of damage, as counted in [`DamageCounts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DamageKind {
    SealedPayload,
    SealedIndexGone,
    Header,
    ActiveBelowWatermark,
    ActivePastWatermark,
    /// Both slots of `log.meta` bad: the start refuses, changing nothing;
    /// the operator then restores the file (a copy from while it was down).
    MetaLost,
}

const KINDS: [DamageKind; 6] = [
    DamageKind::SealedPayload,
    DamageKind::SealedIndexGone,
    DamageKind::Header,
    DamageKind::ActiveBelowWatermark,
    DamageKind::ActivePastWatermark,
    DamageKind::MetaLost,
];

/// Damaged logs per kind, in the order of [`DamageKind`].
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct DamageCounts(pub(super) [u64; 6]);

impl std::ops::AddAssign for DamageCounts {
    fn add_assign(&mut self, o: DamageCounts) {
        for (a, b) in self.0.iter_mut().zip(o.0) {
            *a += b;
        }
    }
}

/// A batch in a segment: the file, where it starts, its header and total
/// bytes, and whether it holds events.
struct Found {
    path: PathBuf,
    at: u64,
    header: u64,
    len: u64,
    events: bool,
}

/// The batches of each segment of the log in `storage`'s partition log,
/// oldest segment first, by their durable bytes.
fn segments(storage: &SimStorage) -> Vec<(PathBuf, Vec<Found>)> {
    let mut paths: Vec<_> = storage
        .paths()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .filter(|p| p.parent().is_some_and(|d| d.ends_with("log")))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let bytes = storage.durable_bytes(&path).unwrap_or_default();
            let mut at = 0usize;
            let mut found = Vec::new();
            for b in Batches::new(&bytes) {
                let Ok(b) = b else { break };
                let len = b.header.batch_bytes();
                found.push(Found {
                    path: path.clone(),
                    at: at as u64,
                    header: b.header.header_bytes() as u64,
                    len: len as u64,
                    events: b.header.kind == BatchKind::Events,
                });
                at += len;
            }
            (path, found)
        })
        .collect()
}

impl Sim {
    /// Damages node `i`'s partition log with a kind drawn by the seed.
    pub(super) fn damage(&mut self, i: usize) {
        let kind = KINDS[self.rng.below(KINDS.len() as u64) as usize];
        let storage = self.nodes[i].storage.clone();
        if kind == DamageKind::MetaLost {
            if self.lose_meta(i) {
                self.coverage.damaged += 1;
                self.coverage.damage_kinds.0[kind as usize] += 1;
            }
            return;
        }
        let mut segs = segments(&storage);
        let Some((active_path, active)) = segs.pop() else {
            return;
        };
        let watermark = block_on(hadron_engine::log::meta::read(
            &storage,
            active_path.parent().unwrap_or(std::path::Path::new(DIR)),
        ))
        .ok()
        .flatten()
        .map_or(0, |m| m.durable_position);
        let sealed = segs.iter().flat_map(|(_, f)| f);
        let targets: Vec<&Found> = match kind {
            DamageKind::SealedPayload | DamageKind::SealedIndexGone => {
                sealed.filter(|f| f.events).collect()
            }
            DamageKind::Header => sealed.chain(&active).collect(),
            DamageKind::ActiveBelowWatermark => active
                .iter()
                .filter(|f| f.events && f.at + f.len <= watermark)
                .collect(),
            DamageKind::ActivePastWatermark => active
                .iter()
                .filter(|f| f.events && f.at >= watermark)
                .collect(),
            DamageKind::MetaLost => Vec::new(),
        };
        if targets.is_empty() {
            return;
        }
        let t = targets[self.rng.below(targets.len() as u64) as usize];
        let pos = match kind {
            // Past the magic (outside the checksum) and the CRC itself.
            DamageKind::Header => t.at + 8 + self.rng.below(t.header - 8),
            _ => t.at + t.header + self.rng.below(t.len - t.header),
        };
        let bit = self.rng.below(8) as u8;
        let path = t.path.clone();
        if storage.flip_bit(&path, pos, bit).is_err() {
            return;
        }
        if kind == DamageKind::SealedIndexGone {
            let idx = path.with_extension("idx");
            if self.rng.below(2) == 0 {
                storage.delete(&idx);
            } else if let Some(len) = storage.durable_bytes(&idx).map(|b| b.len() as u64) {
                let _ = storage.set_len(&idx, len / 2 + 3);
            }
        }
        self.coverage.damaged += 1;
        self.coverage.damage_kinds.0[kind as usize] += 1;
        self.say(|| {
            format!(
                "node {} damaged ({kind:?}): {} byte {pos}",
                i + 1,
                path.display()
            )
        });
    }
}

impl Sim {
    /// Overwrites both slots of node `i`'s partition `log.meta` with
    /// garbage and checks that its start refuses, naming the file, and
    /// changes nothing on disk; then restores the file. Returns whether
    /// there was a file to damage.
    fn lose_meta(&mut self, i: usize) -> bool {
        let storage = self.nodes[i].storage.clone();
        let dir = crate::shard::partition::partition_dir(Path::new(DIR), "s", 0).join("log");
        let path = hadron_engine::log::meta::meta_path(&dir);
        let Some(good) = storage.durable_bytes(&path).filter(|b| !b.is_empty()) else {
            return false;
        };
        let garbage: Vec<u8> = (0..8192).map(|_| 1 | self.rng.below(256) as u8).collect();
        storage.put_file(&path, &garbage);
        let image = |s: &SimStorage| -> Vec<(PathBuf, Option<Vec<u8>>)> {
            let mut paths = s.paths();
            paths.sort();
            paths
                .into_iter()
                .map(|p| (p.clone(), s.durable_bytes(&p)))
                .collect()
        };
        let before = image(&storage);
        let (opening, clock) = (storage.clone(), self.clock.clone());
        let got = self
            .pool
            .run_until(async move { super::open_partition(&opening, clock).await.map(|_| ()) });
        let seed = self.seed;
        let Err(e) = got else {
            panic!(
                "seed {seed}: node {} opened with both log.meta slots bad",
                i + 1
            );
        };
        assert!(
            e.contains("neither of its two slots is valid") && e.contains(&*path.to_string_lossy()),
            "seed {seed}: {e}"
        );
        assert!(
            image(&storage) == before,
            "seed {seed}: the refused start changed files"
        );
        self.say(|| format!("node {} refused its start (log.meta lost): {e}", i + 1));
        storage.put_file(&path, &good);
        true
    }
}
