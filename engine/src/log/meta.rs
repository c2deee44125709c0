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
//!  |"HDRM"|      | 2   |     |count  |      |             |            |
//!  +------+------+-----+-----+-------+------+-------------+------------+
//!  40                48              56           64               72
//!  +-----------------+---------------+------------+----------------+
//!  |durable_position |durable_next   |next_floor  |tear_bytes_max  |
//!  +-----------------+---------------+------------+----------------+
//!  72: gaps_count x ( from u64 | to u64 ), then zeros to 3072
//!
//!  version 2 adds the Raft state at 3072 (version 1 ends at the gaps):
//!  3072   3080   3088    3096          3104              3112
//!  +------+------+-------+-------------+-----------------+
//!  |term  |vote  |commit |start_index  |active_base_index|
//!  +------+------+-------+-------------+-----------------+
//!  3112: conf_count u16 x 4 (voters, learners, voters_outgoing,
//!        learners_next, at most CONF_IDS_MAX in all), 3120: auto_leave u8,
//!  3121..3128: start_term, 7 bytes little-endian (at most RAFT_TERM_MAX),
//!  3128: the ids, u64 each, list after list
//! ```
//!
//! - `crc32` (crc32fast) covers bytes 8..(72 + 16 x gaps_count) and, in
//!   version 2, bytes 3072..(3128 + 8 x ids).
//! - `term`, `vote`, `commit`: Raft's hard state; the conf state's lists:
//!   Raft's conf state as of the last conf change applied.
//! - `start_index`: the Raft index of the log's first batch (0: not known,
//!   a log whose start holds version-1 batches).
//! - `start_term`: the term of the batch at `start_index - 1` (0: not
//!   known): set by retention from the last batch it deletes, and by
//!   [`Log::restart_at`](super::Log::restart_at) to the snapshot's term.
//!   Written before it existed as reserved zeros, so older version-2 files
//!   read as 0 (not known).
//! - `active_base_index`: the Raft index of segment `active_base`'s first
//!   batch, written with `active_base`: the next index of a log whose
//!   active segment is empty.
//! - `flags` bit 0: `active_base` is set (a segment file was created).
//!   Bit 1: a restart is under way ([`Log::restart_at`](super::Log::restart_at)):
//!   every segment file is discarded and the log begins empty at
//!   `start_offset`, its next Raft index `active_base_index`; open finishes
//!   it (deletes every segment file, creates the empty one) and clears it.
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
const META_VERSION: u16 = 2;
const META_VERSION_V1: u16 = 1;
/// Where version 2's Raft area begins.
const RAFT_AT: usize = 3072;
const RAFT_FIXED_BYTES: usize = 56;
const SLOT_BYTES: usize = IO_ALIGN_BYTES as usize;
/// Most ids in the conf state's four lists together (raft-rs's replicas of
/// one group: a partition has at most 7 voters; the metadata group up to
/// 7 voters and a learner per other node): what fits in the slot.
pub const CONF_IDS_MAX: usize = (SLOT_BYTES - RAFT_AT - RAFT_FIXED_BYTES) / 8;
const FIXED_BYTES: usize = 72;
const GAP_BYTES: usize = 16;
/// Most offset ranges skipped by repairs that a log remembers (ranges
/// below the log's start are forgotten). A repair past it is refused.
pub const REPAIR_GAPS_MAX: usize = 128;
const FLAG_ACTIVE: u16 = 1;
const FLAG_RESTART: u16 = 2;
/// The largest term `log.meta` holds as `start_term` (7 bytes): Raft terms
/// grow by one per election and never come near it.
pub const RAFT_TERM_MAX: u64 = (1 << 56) - 1;
/// Where `start_term` lies in the Raft area, and its width.
const START_TERM_AT: usize = RAFT_AT + 49;
const START_TERM_BYTES: usize = 7;
const _: () = assert!(START_TERM_AT + START_TERM_BYTES == RAFT_AT + RAFT_FIXED_BYTES);

const _: () = assert!(FIXED_BYTES + REPAIR_GAPS_MAX * GAP_BYTES <= RAFT_AT);
const _: () = assert!(RAFT_AT + RAFT_FIXED_BYTES + CONF_IDS_MAX * 8 <= SLOT_BYTES);

/// Raft's state for the log's group, in `log.meta` version 2 (all zero when
/// read from version 1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RaftMeta {
    /// Hard state: the current term, the vote in it (0: none), the commit
    /// index.
    pub term: u64,
    pub vote: u64,
    pub commit: u64,
    /// The Raft index of the log's first batch (0: not known).
    pub start_index: u64,
    /// The term of the batch at `start_index - 1` (0: not known); at most
    /// [`RAFT_TERM_MAX`].
    pub start_term: u64,
    /// The Raft index of segment `active_base`'s first batch.
    pub active_base_index: u64,
    /// Conf state: each list at most [`CONF_IDS_MAX`] ids.
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    pub voters_outgoing: Vec<u64>,
    pub learners_next: Vec<u64>,
    pub auto_leave: bool,
}

impl RaftMeta {
    fn lists(&self) -> [&Vec<u64>; 4] {
        [
            &self.voters,
            &self.learners,
            &self.voters_outgoing,
            &self.learners_next,
        ]
    }

    /// Writes the area into `slot` and returns where it ends.
    fn encode(&self, slot: &mut [u8]) -> usize {
        for (i, v) in [
            self.term,
            self.vote,
            self.commit,
            self.start_index,
            self.active_base_index,
        ]
        .into_iter()
        .enumerate()
        {
            let at = RAFT_AT + 8 * i;
            slot[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        let mut at = RAFT_AT + RAFT_FIXED_BYTES;
        let total: usize = self.lists().iter().map(|l| l.len()).sum();
        assert!(total <= CONF_IDS_MAX);
        for (i, list) in self.lists().into_iter().enumerate() {
            let c = RAFT_AT + 40 + 2 * i;
            slot[c..c + 2].copy_from_slice(&(list.len() as u16).to_le_bytes());
            for id in list {
                slot[at..at + 8].copy_from_slice(&id.to_le_bytes());
                at += 8;
            }
        }
        slot[RAFT_AT + 48] = u8::from(self.auto_leave);
        assert!(self.start_term <= RAFT_TERM_MAX, "start_term over 7 bytes");
        slot[START_TERM_AT..START_TERM_AT + START_TERM_BYTES]
            .copy_from_slice(&self.start_term.to_le_bytes()[..START_TERM_BYTES]);
        at
    }

    /// Reads the area of `slot`; `None` when a count is over the limit or
    /// a reserved byte is set. Returns where it ends.
    fn decode(slot: &[u8]) -> Option<(RaftMeta, usize)> {
        let u64_at = |at: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&slot[at..at + 8]);
            u64::from_le_bytes(x)
        };
        let mut at = RAFT_AT + RAFT_FIXED_BYTES;
        let mut lists: [Vec<u64>; 4] = Default::default();
        let mut total = 0;
        for (i, list) in lists.iter_mut().enumerate() {
            let c = RAFT_AT + 40 + 2 * i;
            let n = usize::from(u16::from_le_bytes([slot[c], slot[c + 1]]));
            total += n;
            if total > CONF_IDS_MAX {
                return None;
            }
            for _ in 0..n {
                list.push(u64_at(at));
                at += 8;
            }
        }
        let auto_leave = match slot[RAFT_AT + 48] {
            0 => false,
            1 => true,
            _ => return None,
        };
        let mut term = [0u8; 8];
        term[..START_TERM_BYTES]
            .copy_from_slice(&slot[START_TERM_AT..START_TERM_AT + START_TERM_BYTES]);
        let [voters, learners, voters_outgoing, learners_next] = lists;
        let raft = RaftMeta {
            term: u64_at(RAFT_AT),
            vote: u64_at(RAFT_AT + 8),
            commit: u64_at(RAFT_AT + 16),
            start_index: u64_at(RAFT_AT + 24),
            start_term: u64::from_le_bytes(term),
            active_base_index: u64_at(RAFT_AT + 32),
            voters,
            learners,
            voters_outgoing,
            learners_next,
            auto_leave,
        };
        Some((raft, at))
    }
}

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
    /// Raft's state (version 2).
    pub raft: RaftMeta,
    /// A restart is under way: open discards every segment file and
    /// begins the log empty at `start_offset` (flags bit 1).
    pub restarting: bool,
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
        } | if self.restarting { FLAG_RESTART } else { 0 };
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
        let raft_end = self.raft.encode(&mut out);
        let mut crc = crc32fast::Hasher::new();
        crc.update(&out[8..at]);
        crc.update(&out[RAFT_AT..raft_end]);
        out[4..8].copy_from_slice(&crc.finalize().to_le_bytes());
        out
    }

    /// Version 1's encoding, as before replication, kept to produce
    /// version-1 slots for the tests that prove they are still read.
    #[cfg(test)]
    pub(super) fn encode_v1(&self) -> Vec<u8> {
        let mut out = self.encode();
        out[RAFT_AT..].fill(0);
        out[8..10].copy_from_slice(&META_VERSION_V1.to_le_bytes());
        let end = FIXED_BYTES + self.gaps.len() * GAP_BYTES;
        let crc = crc32fast::hash(&out[8..end]);
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
        if slot.len() < SLOT_BYTES || slot[0..4] != META_MAGIC.to_le_bytes() {
            return None;
        }
        let version = u16::from_le_bytes([slot[8], slot[9]]);
        if version != META_VERSION && version != META_VERSION_V1 {
            return None;
        }
        let flags = u16::from_le_bytes([slot[10], slot[11]]);
        let gaps = u32::from_le_bytes([slot[12], slot[13], slot[14], slot[15]]) as usize;
        if gaps > REPAIR_GAPS_MAX {
            return None;
        }
        let end = FIXED_BYTES + gaps * GAP_BYTES;
        let crc = u32::from_le_bytes([slot[4], slot[5], slot[6], slot[7]]);
        let mut computed = crc32fast::Hasher::new();
        computed.update(&slot[8..end]);
        let raft = if version == META_VERSION {
            let (raft, raft_end) = RaftMeta::decode(slot)?;
            computed.update(&slot[RAFT_AT..raft_end]);
            raft
        } else {
            RaftMeta::default()
        };
        if computed.finalize() != crc {
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
            raft,
            restarting: flags & FLAG_RESTART != 0,
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

/// What `dir`'s `log.meta` holds, for a caller that must not take a lost
/// file for a new one ([`read`] answers `None` for both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaState {
    /// No file: a new log, or one from before the file existed.
    Absent,
    /// A valid slot.
    Valid,
    /// Neither slot valid and the first slot never written (all zeros):
    /// the file's first write (into the second slot, `seq` 1) was torn by
    /// a crash, so it never recorded anything.
    FirstWriteTorn,
    /// Neither slot valid although both were written: what the file
    /// recorded (for a Raft log, the term and vote) is lost.
    Lost,
}

/// Tells apart the states of `dir`'s metadata file (see [`MetaState`]).
pub async fn state<S: Storage>(storage: &S, dir: &Path) -> io::Result<MetaState> {
    let file = match storage.open(&meta_path(dir)).await {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(MetaState::Absent),
        Err(e) => return Err(e),
    };
    let bytes = file.read_at(0, 2 * SLOT_BYTES).await?;
    let first = bytes.get(..SLOT_BYTES.min(bytes.len())).unwrap_or(&[]);
    let second = bytes.get(SLOT_BYTES..).unwrap_or(&[]);
    if LogMeta::decode(first).is_some() || LogMeta::decode(second).is_some() {
        return Ok(MetaState::Valid);
    }
    Ok(if first.iter().all(|&b| b == 0) {
        MetaState::FirstWriteTorn
    } else {
        MetaState::Lost
    })
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
            raft: RaftMeta {
                term: 4,
                vote: 2,
                commit: 99,
                start_index: 1,
                start_term: RAFT_TERM_MAX,
                active_base_index: 57,
                voters: vec![1, 2, 3],
                learners: vec![4],
                voters_outgoing: vec![1, 2, 5],
                learners_next: vec![],
                auto_leave: true,
            },
            restarting: true,
        };
        let bytes = meta.encode();
        assert_eq!(LogMeta::decode(&bytes), Some(meta.clone()));
        for at in [
            0, 5, 9, 10, 20, 33, 72, 90, 3072, 3100, 3112, 3120, 3121, 3127, 3130, 3180,
        ] {
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

    #[test]
    fn a_version_1_slot_still_reads_with_no_raft_state() {
        let meta = LogMeta {
            seq: 3,
            start_offset: 10,
            active_base: Some(4711),
            durable_position: 8192,
            durable_next: 4800,
            next_floor: 0,
            tear_bytes_max: 4096,
            gaps: vec![(100, 200)],
            raft: RaftMeta::default(),
            restarting: false,
        };
        let v1 = meta.encode_v1();
        assert_eq!(&v1[8..10], &[1, 0]);
        assert_eq!(LogMeta::decode(&v1), Some(meta));
    }

    /// A metadata group of 64 nodes mid-change (5 voters, 59 learners, 5
    /// outgoing voters, 5 learners next) fits; one id past the slot's room
    /// in all is refused as it is read.
    #[test]
    fn a_conf_state_of_a_large_clusters_learners_round_trips() {
        let meta = LogMeta {
            raft: RaftMeta {
                voters: (1..=5).collect(),
                learners: (6..=64).collect(),
                voters_outgoing: (1..=5).collect(),
                learners_next: (60..=64).collect(),
                ..RaftMeta::default()
            },
            ..LogMeta::default()
        };
        assert_eq!(LogMeta::decode(&meta.encode()), Some(meta.clone()));
        // The counts are checked before the ids are read (the checksum
        // after): a total past the slot's room is refused, not read past
        // the slot's end.
        let mut bytes = meta.encode();
        let room = (CONF_IDS_MAX - 74 + 59) as u16;
        bytes[RAFT_AT + 42..RAFT_AT + 44].copy_from_slice(&room.to_le_bytes());
        assert!(RaftMeta::decode(&bytes).is_some());
        bytes[RAFT_AT + 42..RAFT_AT + 44].copy_from_slice(&(room + 1).to_le_bytes());
        assert_eq!(RaftMeta::decode(&bytes), None);
    }

    #[test]
    fn a_conf_list_over_its_limit_is_invalid() {
        let meta = LogMeta {
            raft: RaftMeta {
                voters: vec![1],
                ..RaftMeta::default()
            },
            ..LogMeta::default()
        };
        let mut bytes = meta.encode();
        bytes[RAFT_AT + 40..RAFT_AT + 42].copy_from_slice(&(CONF_IDS_MAX as u16 + 1).to_le_bytes());
        assert_eq!(LogMeta::decode(&bytes), None);
    }

    /// `start_term` took over bytes that version 2 wrote as zeros: a slot
    /// written before it existed reads as "not known" (0), and one byte
    /// of it is a little-endian 7-byte integer.
    #[test]
    fn start_term_lies_in_the_formerly_reserved_bytes_and_reads_0_from_older_slots() {
        let meta = LogMeta {
            raft: RaftMeta {
                start_index: 8,
                ..RaftMeta::default()
            },
            ..LogMeta::default()
        };
        let bytes = meta.encode();
        assert!(bytes[RAFT_AT + 49..RAFT_AT + 56].iter().all(|&b| b == 0));
        assert_eq!(LogMeta::decode(&bytes).unwrap().raft.start_term, 0);
        let with = LogMeta {
            raft: RaftMeta {
                start_term: 0x0001_0203_0405_0607,
                ..meta.raft.clone()
            },
            ..meta
        };
        let bytes = with.encode();
        assert_eq!(&bytes[RAFT_AT + 49..RAFT_AT + 56], &[7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(LogMeta::decode(&bytes), Some(with));
    }

    #[test]
    #[should_panic(expected = "start_term over 7 bytes")]
    fn a_start_term_over_7_bytes_is_never_written() {
        let meta = LogMeta {
            raft: RaftMeta {
                start_term: RAFT_TERM_MAX + 1,
                ..RaftMeta::default()
            },
            ..LogMeta::default()
        };
        meta.encode();
    }
}
