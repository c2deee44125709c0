//! The log's metadata file, `log.meta`: what recovery needs to know that the
//! segment files alone cannot tell it.
//!
//! - Which segments must exist: the log's start offset (the first segment's
//!   base) and the base of the newest segment file created. A segment file
//!   missing at the start, in the middle or at the end is then an open
//!   error, not a log that silently begins later or ends earlier.
//! - How far the active segment was known durable (a watermark recorded at
//!   open, at each roll and at [`Log::checkpoint`](super::Log::checkpoint)):
//!   bad bytes below it are damage, never a torn tail.
//! - How much the last write round could leave torn (`tear_bytes_max`, from
//!   the configuration of the life that wrote the segment).
//! - What `repair` did: the floor under which no offset is handed out again
//!   and the offset ranges it skipped between two segments.
//!
//! Every value is a bound that stays true when an older version is read:
//! each is written (durably: the file is write-through) before the action that relies on it
//! (a segment's deletion, a repair's cut) and after the one it records (a
//! segment's creation). So the file is written in place, alternating between
//! two 4 KiB slots, each with a sequence number and a checksum: a write torn
//! by a crash leaves the other slot, which is older and still true.
//!
//! ```text
//!  slot (4096 bytes, at 0 and at 4096), little-endian:
//!  0      4      8     10    12      16     24            32           40
//!  +------+------+-----+-----+-------+------+-------------+------------+
//!  |magic |crc32 |ver  |flags|gaps   |seq   |start_offset |active_base |
//!  |"HDRM"|      | 1   |     |count  |      |             |            |
//!  +------+------+-----+-----+-------+------+-------------+------------+
//!  40                48              56           64               72
//!  +-----------------+---------------+------------+----------------+
//!  |durable_position |durable_next   |next_floor  |tear_bytes_max  |
//!  +-----------------+---------------+------------+----------------+
//!  72: gaps_count x ( from u64 | to u64 ), then zeros to 4096
//! ```
//!
//! - `crc32` (crc32fast) covers bytes 8..(72 + 16 x gaps_count).
//! - `flags` bit 0: `active_base` is set (a segment file was created).
//! - `durable_position`/`durable_next`: bytes and the next offset of
//!   segment `active_base` known durable.
//! - `tear_bytes_max`: `u64::MAX` when the segment was written buffered
//!   (unsynced writes of any extent may be torn).
//!
//! The same diagram is in `docs/formats/segment.md`.

use std::io;
use std::path::{Path, PathBuf};

use crate::storage::{IO_ALIGN_BYTES, Storage, StorageFile, Writes};

/// The file's name in the log's directory.
pub const META_FILE: &str = "log.meta";
/// `b"HDRM"` read as a little-endian `u32`.
const META_MAGIC: u32 = u32::from_le_bytes(*b"HDRM");
const META_VERSION: u16 = 1;
const SLOT_BYTES: usize = IO_ALIGN_BYTES as usize;
const FIXED_BYTES: usize = 72;
const GAP_BYTES: usize = 16;
/// Most offset ranges skipped by repairs that a log remembers (ranges
/// below the log's start are forgotten). A repair past it is refused.
pub const REPAIR_GAPS_MAX: usize = 128;
const FLAG_ACTIVE: u16 = 1;

const _: () = assert!(FIXED_BYTES + REPAIR_GAPS_MAX * GAP_BYTES <= SLOT_BYTES);

/// What `log.meta` holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogMeta {
    /// Bumped by every write; the slot with the higher one is current.
    pub seq: u64,
    /// The log's first offset: no segment file below it is needed, every one
    /// from it on is.
    pub start_offset: u64,
    /// The newest segment file created, if any.
    pub active_base: Option<u64>,
    /// Bytes of segment `active_base` known durable.
    pub durable_position: u64,
    /// The offset after those bytes.
    pub durable_next: u64,
    /// No offset below this may be given again (set by repair).
    pub next_floor: u64,
    /// Bytes the last write round could leave torn at a crash.
    pub tear_bytes_max: u64,
    /// Offset ranges `from..to` that repair skipped: a segment ending at
    /// `from` may be followed by one beginning at `to`.
    pub gaps: Vec<(u64, u64)>,
}

impl LogMeta {
    fn encode(&self) -> Vec<u8> {
        assert!(self.gaps.len() <= REPAIR_GAPS_MAX);
        let mut out = vec![0u8; SLOT_BYTES];
        out[0..4].copy_from_slice(&META_MAGIC.to_le_bytes());
        out[8..10].copy_from_slice(&META_VERSION.to_le_bytes());
        let flags = if self.active_base.is_some() {
            FLAG_ACTIVE
        } else {
            0
        };
        out[10..12].copy_from_slice(&flags.to_le_bytes());
        out[12..16].copy_from_slice(&(self.gaps.len() as u32).to_le_bytes());
        for (at, v) in [
            (16, self.seq),
            (24, self.start_offset),
            (32, self.active_base.unwrap_or(0)),
            (40, self.durable_position),
            (48, self.durable_next),
            (56, self.next_floor),
            (64, self.tear_bytes_max),
        ] {
            out[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        let mut at = FIXED_BYTES;
        for &(from, to) in &self.gaps {
            out[at..at + 8].copy_from_slice(&from.to_le_bytes());
            out[at + 8..at + 16].copy_from_slice(&to.to_le_bytes());
            at += GAP_BYTES;
        }
        let crc = crc32fast::hash(&out[8..at]);
        out[4..8].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes one slot; `None` unless it is whole and its checksum matches.
    fn decode(slot: &[u8]) -> Option<LogMeta> {
        let u64_at = |at: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&slot[at..at + 8]);
            u64::from_le_bytes(x)
        };
        if slot.len() < SLOT_BYTES
            || slot[0..4] != META_MAGIC.to_le_bytes()
            || slot[8..10] != META_VERSION.to_le_bytes()
        {
            return None;
        }
        let flags = u16::from_le_bytes([slot[10], slot[11]]);
        let gaps = u32::from_le_bytes([slot[12], slot[13], slot[14], slot[15]]) as usize;
        if gaps > REPAIR_GAPS_MAX {
            return None;
        }
        let end = FIXED_BYTES + gaps * GAP_BYTES;
        let crc = u32::from_le_bytes([slot[4], slot[5], slot[6], slot[7]]);
        if crc32fast::hash(&slot[8..end]) != crc {
            return None;
        }
        Some(LogMeta {
            seq: u64_at(16),
            start_offset: u64_at(24),
            active_base: (flags & FLAG_ACTIVE != 0).then(|| u64_at(32)),
            durable_position: u64_at(40),
            durable_next: u64_at(48),
            next_floor: u64_at(56),
            tear_bytes_max: u64_at(64),
            gaps: (0..gaps)
                .map(|i| {
                    let at = FIXED_BYTES + i * GAP_BYTES;
                    (u64_at(at), u64_at(at + 8))
                })
                .collect(),
        })
    }

    /// Whether repair recorded that a segment ending at `from` is followed
    /// by one beginning at `to`.
    pub fn skips(&self, from: u64, to: u64) -> bool {
        self.gaps.contains(&(from, to))
    }
}

/// The path of `dir`'s metadata file.
pub fn meta_path(dir: &Path) -> PathBuf {
    dir.join(META_FILE)
}

/// Reads `dir`'s metadata: the newer valid slot, or `None` when the file
/// does not exist or neither slot is valid (a file whose first write was
/// torn by a crash; a log from before the file existed).
pub async fn read<S: Storage>(storage: &S, dir: &Path) -> io::Result<Option<LogMeta>> {
    let path = meta_path(dir);
    let file = match storage.open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let bytes = file.read_at(0, 2 * SLOT_BYTES).await?;
    let slots = [
        bytes.get(..SLOT_BYTES).and_then(LogMeta::decode),
        bytes.get(SLOT_BYTES..).and_then(LogMeta::decode),
    ];
    Ok(slots.into_iter().flatten().max_by_key(|m| m.seq))
}

/// Writes `meta` (whose `seq` the caller has bumped) into its slot of the
/// open file `file` (opened write-through), or creates the file when there
/// is none, durably. Returns the file, to be kept for the next write.
pub async fn write<S: Storage>(
    storage: &S,
    dir: &Path,
    file: Option<std::rc::Rc<S::File>>,
    meta: &LogMeta,
) -> io::Result<std::rc::Rc<S::File>> {
    let path = meta_path(dir);
    // Write-through: the slot's write is durable when it returns, with no
    // fdatasync (one request, and none counted against the log's rounds).
    let (file, created) = match file {
        Some(f) => (f, false),
        None => match storage.open_with(&path, Writes::Through).await {
            Ok(f) => (std::rc::Rc::new(f), false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => (
                std::rc::Rc::new(storage.create_with(&path, Writes::Through).await?),
                true,
            ),
            Err(e) => return Err(e),
        },
    };
    let slot = (meta.seq % 2) as usize * SLOT_BYTES;
    let encoded = meta.encode();
    let mut buf = file.alloc_buf(SLOT_BYTES);
    buf.as_mut().copy_from_slice(&encoded);
    file.write_at(buf, slot as u64).await?;
    if created {
        storage.sync_dir(dir).await?;
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_round_trips_and_a_flipped_bit_makes_it_invalid() {
        let meta = LogMeta {
            seq: 7,
            start_offset: 10,
            active_base: Some(4711),
            durable_position: 8192,
            durable_next: 4800,
            next_floor: 3,
            tear_bytes_max: u64::MAX,
            gaps: vec![(100, 200), (300, 310)],
        };
        let bytes = meta.encode();
        assert_eq!(LogMeta::decode(&bytes), Some(meta.clone()));
        for at in [0, 5, 9, 20, 33, 72, 90] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x10;
            assert_eq!(LogMeta::decode(&bad), None, "flip at {at}");
        }
        let none = LogMeta {
            active_base: None,
            ..meta
        };
        assert_eq!(LogMeta::decode(&none.encode()), Some(none));
    }
}
