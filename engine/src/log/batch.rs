//! The record batch: the unit of write, checksum, delivery and (for
//! replication) of a Raft entry.
//!
//! A batch is a fixed little-endian header followed by its records, each an
//! opaque byte string with a `u32` length prefix. Records are stored exactly
//! as the caller gave them (for Hadron, the event in its wire encoding), so
//! what a publisher sent is what a subscriber receives. Version 2 (written)
//! has a 56-byte header carrying the batch's Raft term and index; version 1
//! (40 bytes, no term or index, events only) is still read.
//!
//! ```text
//!  version 2:
//!  0        4        8    9    10   11   12       16                24       28       32                40
//!  +--------+--------+----+----+----+----+--------+-----------------+--------+--------+-----------------+
//!  | magic  | crc32  |ver |flag|kind|rsvd|payload | base_offset     | record | reservd| first_timestamp |
//!  | "HDRB" |        | 2  |    |    | 0  | _bytes |                 | _count |   0    | _ms             |
//!  +--------+--------+----+----+----+----+--------+-----------------+--------+--------+-----------------+
//!  40                48                56
//!  +-----------------+-----------------+
//!  | term            | raft_index      |   payload follows at 56
//!  +-----------------+-----------------+
//!  | payload: record_count x ( u32 len | len bytes ), exactly payload_bytes long
//!  +----------------------------------------------------------------------------
//!
//!  version 1: bytes 0..40 as above with ver 1 and flags, kind 0; payload at 40.
//! ```
//!
//! - `crc32` (crc32fast, IEEE) covers header bytes 8..header end and the
//!   payload.
//! - `magic` is outside the checksum: a zero magic marks the end of the data
//!   in a preallocated, zero-filled segment.
//! - `flags` bit 0 (`control`) is set exactly when `kind` is not 0 (events).
//!   A control batch (kind 1: Raft's empty entry, one empty record; kind 2:
//!   a Raft conf change, one record) takes no offsets: its `base_offset` is
//!   the next event offset, and so is its next offset.
//! - A batch is valid only when the magic, version, flags, kind and reserved
//!   fields are as shown, the counts are within limits, the checksum
//!   matches, and the record lengths add up to exactly `payload_bytes`.
//!   Version 1 reads as events with term 0 and index 0.
//!
//! The same diagram is in `docs/formats/segment.md`.

use std::fmt;

use bytes::BufMut;

/// Header length in bytes of the version written (2), and the most a
/// header of any version takes: what a caller budgets for a batch.
pub const BATCH_HEADER_BYTES: usize = 56;
/// Header length in bytes of version 1, the shortest header read.
pub const BATCH_V1_HEADER_BYTES: usize = 40;
/// `b"HDRB"` read as a little-endian `u32`.
pub const BATCH_MAGIC: u32 = u32::from_le_bytes(*b"HDRB");
/// The batch format version written.
pub const BATCH_VERSION: u8 = 2;
/// The version before replication: still read, never written.
pub const BATCH_VERSION_V1: u8 = 1;
/// `flags` bit 0: a control batch, whose records take no offsets.
const FLAG_CONTROL: u8 = 1;
/// Bytes read before the version is known.
const VERSION_END_BYTES: usize = 9;
/// Bytes of a record's length prefix.
pub const RECORD_PREFIX_BYTES: usize = 4;
/// Most records in one batch.
pub const BATCH_RECORDS_MAX: u32 = 1 << 16;
/// Most bytes in one batch, header included. Also bounds a record.
pub const BATCH_BYTES_MAX: usize = 16 << 20;

const _: () = assert!(BATCH_HEADER_BYTES.is_multiple_of(8));
const _: () = assert!(BATCH_V1_HEADER_BYTES.is_multiple_of(8));
const _: () = assert!(BATCH_V1_HEADER_BYTES < BATCH_HEADER_BYTES);

/// What a batch holds: events, or a Raft entry that is not events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BatchKind {
    /// Events: each record takes one offset.
    Events,
    /// Raft's empty entry, appended by a new leader at its term (one empty
    /// record). A control batch: takes no offsets.
    RaftEmpty,
    /// A Raft conf change (one record, the `ConfChangeV2` protobuf). A
    /// control batch: takes no offsets.
    ConfChange,
}

impl BatchKind {
    /// Its `kind` byte.
    pub fn code(self) -> u8 {
        match self {
            BatchKind::Events => 0,
            BatchKind::RaftEmpty => 1,
            BatchKind::ConfChange => 2,
        }
    }

    fn from_code(code: u8) -> Option<BatchKind> {
        match code {
            0 => Some(BatchKind::Events),
            1 => Some(BatchKind::RaftEmpty),
            2 => Some(BatchKind::ConfChange),
            _ => None,
        }
    }

    /// Whether its records take no offsets.
    pub fn is_control(self) -> bool {
        self != BatchKind::Events
    }
}

/// What a batch is stamped with besides its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchStamp {
    /// Events or a control entry.
    pub kind: BatchKind,
    /// Offset of the first record (for a control batch, the next offset).
    pub base_offset: u64,
    /// Timestamp given with the append, in milliseconds since the epoch.
    pub first_timestamp_ms: u64,
    /// The Raft term of the entry (at least 1).
    pub term: u64,
    /// The Raft index of the entry (at least 1).
    pub raft_index: u64,
}
const _: () = assert!(BATCH_BYTES_MAX <= u32::MAX as usize);

/// A decoded, not yet verified batch header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// The format version: 2, or 1 for a batch written before replication.
    pub version: u8,
    /// Events or a control entry (always events in version 1).
    pub kind: BatchKind,
    /// The stored checksum.
    pub crc: u32,
    /// Bytes of records after the header.
    pub payload_bytes: u32,
    /// Offset of the first record.
    pub base_offset: u64,
    /// Number of records (at least 1).
    pub record_count: u32,
    /// Timestamp given with the append, in milliseconds since the epoch.
    pub first_timestamp_ms: u64,
    /// The Raft term of the entry (0 in version 1).
    pub term: u64,
    /// The Raft index of the entry (0 in version 1).
    pub raft_index: u64,
}

impl BatchHeader {
    /// Header length of this batch's version.
    pub fn header_bytes(&self) -> usize {
        header_bytes_of(self.version)
    }

    /// Whole batch length: header plus payload.
    pub fn batch_bytes(&self) -> usize {
        self.header_bytes() + self.payload_bytes as usize
    }

    /// Offsets the batch takes: its record count, or 0 for a control batch.
    pub fn offsets_taken(&self) -> u64 {
        if self.kind.is_control() {
            0
        } else {
            u64::from(self.record_count)
        }
    }

    /// Offset of the last record of an events batch.
    pub fn last_offset(&self) -> u64 {
        assert!(!self.kind.is_control(), "a control batch has no offsets");
        self.base_offset + u64::from(self.record_count) - 1
    }

    /// The offset after the batch: after its last record, or its base for
    /// a control batch.
    pub fn next_offset(&self) -> u64 {
        self.base_offset + self.offsets_taken()
    }
}

fn header_bytes_of(version: u8) -> usize {
    if version == BATCH_VERSION_V1 {
        BATCH_V1_HEADER_BYTES
    } else {
        BATCH_HEADER_BYTES
    }
}

/// Why bytes are not a valid batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BatchError {
    /// Fewer bytes than the header, or than the header says the batch has.
    Incomplete {
        /// Bytes the batch needs.
        need: usize,
        /// Bytes there are.
        have: usize,
    },
    /// A zero magic: the zero-filled end of a preallocated segment.
    Zero,
    /// The magic is not `HDRB`.
    BadMagic(u32),
    /// A version this build does not read.
    BadVersion(u8),
    /// Non-zero reserved fields, an unknown kind, flags that do not match
    /// the kind, or a control kind in version 1.
    BadReserved,
    /// `record_count` of 0 or over [`BATCH_RECORDS_MAX`], or a payload over
    /// [`BATCH_BYTES_MAX`].
    BadCounts,
    /// The checksum does not match.
    BadCrc {
        /// The checksum in the header.
        stored: u32,
        /// The checksum of the bytes.
        computed: u32,
    },
    /// The record length prefixes do not add up to the payload.
    BadRecords,
    /// A valid batch that does not follow the one before it: a Raft index
    /// not one past the previous batch's, a term below its term, or a
    /// version-1 batch after a version-2 one.
    OutOfSequence {
        /// The batch's Raft index (0 for version 1).
        raft_index: u64,
        /// The batch's term (0 for version 1).
        term: u64,
    },
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchError::Incomplete { need, have } => {
                write!(f, "incomplete batch: need {need} bytes, have {have}")
            }
            BatchError::Zero => write!(f, "zero-filled space, not a batch"),
            BatchError::BadMagic(m) => write!(f, "bad batch magic {m:#010x}"),
            BatchError::BadVersion(v) => write!(f, "unsupported batch version {v}"),
            BatchError::BadReserved => write!(
                f,
                "non-zero reserved batch fields, or flags not matching the kind"
            ),
            BatchError::BadCounts => write!(f, "batch record count or size out of range"),
            BatchError::BadCrc { stored, computed } => {
                write!(
                    f,
                    "batch crc mismatch: stored {stored:#010x}, computed {computed:#010x}"
                )
            }
            BatchError::BadRecords => write!(f, "record lengths do not match the batch payload"),
            BatchError::OutOfSequence { raft_index, term } => write!(
                f,
                "batch out of sequence: raft index {raft_index} at term {term} does not follow the batch before it"
            ),
        }
    }
}

impl std::error::Error for BatchError {}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// The bytes a (version 2) batch of `records` takes.
pub fn encoded_len<R: AsRef<[u8]>>(records: &[R]) -> usize {
    BATCH_HEADER_BYTES
        + records
            .iter()
            .map(|r| RECORD_PREFIX_BYTES + r.as_ref().len())
            .sum::<usize>()
}

/// Appends the version-2 batch of `records` stamped `stamp` to `out`. The
/// caller has checked the limits ([`encoded_len`] ≤ [`BATCH_BYTES_MAX`],
/// 1..=[`BATCH_RECORDS_MAX`] records).
pub fn encode_into<B, R>(out: &mut B, stamp: &BatchStamp, records: &[R])
where
    B: BufMut + AsMut<[u8]>,
    R: AsRef<[u8]>,
{
    let len = encoded_len(records);
    assert!(len <= BATCH_BYTES_MAX);
    assert!(!records.is_empty() && records.len() <= BATCH_RECORDS_MAX as usize);
    assert!(stamp.term >= 1 && stamp.raft_index >= 1);
    let start = out.as_mut().len();
    let flags = if stamp.kind.is_control() {
        FLAG_CONTROL
    } else {
        0
    };
    out.put_u32_le(BATCH_MAGIC);
    out.put_u32_le(0); // crc, filled in below
    out.put_slice(&[BATCH_VERSION, flags, stamp.kind.code(), 0]);
    out.put_u32_le((len - BATCH_HEADER_BYTES) as u32);
    out.put_u64_le(stamp.base_offset);
    out.put_u32_le(records.len() as u32);
    out.put_u32_le(0);
    out.put_u64_le(stamp.first_timestamp_ms);
    out.put_u64_le(stamp.term);
    out.put_u64_le(stamp.raft_index);
    for record in records {
        let record = record.as_ref();
        out.put_u32_le(record.len() as u32);
        out.put_slice(record);
    }
    let batch = &mut out.as_mut()[start..];
    assert_eq!(batch.len(), len);
    let crc = crc32fast::hash(&batch[8..]);
    batch[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// Rewrites the base offset, term and Raft index of the version-2 batch
/// `batch` (as [`encode_into`] wrote it) and its checksum: a replicated
/// partition's leader encodes a publish's batch before it knows where Raft
/// will put it, then stamps it once it does (docs/replication.md section
/// 3). Refuses bytes that are not one whole version-2 batch, or a term or
/// index of 0.
pub fn restamp(
    batch: &mut [u8],
    base_offset: u64,
    term: u64,
    raft_index: u64,
) -> Result<(), String> {
    let header = parse_header(batch).map_err(|e| e.to_string())?;
    if header.version != BATCH_VERSION || header.batch_bytes() != batch.len() {
        return Err(format!(
            "restamp takes one whole version-{BATCH_VERSION} batch, got version {} of {} bytes in {} bytes",
            header.version,
            header.batch_bytes(),
            batch.len()
        ));
    }
    if term == 0 || raft_index == 0 {
        return Err(format!(
            "a batch is stamped with term and index 1 and up, not term {term} index {raft_index}"
        ));
    }
    batch[16..24].copy_from_slice(&base_offset.to_le_bytes());
    batch[40..48].copy_from_slice(&term.to_le_bytes());
    batch[48..56].copy_from_slice(&raft_index.to_le_bytes());
    let crc = crc32fast::hash(&batch[8..]);
    batch[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// The version-1 encoder as it was before replication, kept to produce
/// version-1 bytes for the tests that prove they are still read.
#[cfg(test)]
pub fn encode_v1_into<R: AsRef<[u8]>>(
    out: &mut Vec<u8>,
    base_offset: u64,
    first_timestamp_ms: u64,
    records: &[R],
) {
    let len = BATCH_V1_HEADER_BYTES
        + records
            .iter()
            .map(|r| RECORD_PREFIX_BYTES + r.as_ref().len())
            .sum::<usize>();
    let start = out.len();
    out.put_u32_le(BATCH_MAGIC);
    out.put_u32_le(0);
    out.put_slice(&[BATCH_VERSION_V1, 0, 0, 0]);
    out.put_u32_le((len - BATCH_V1_HEADER_BYTES) as u32);
    out.put_u64_le(base_offset);
    out.put_u32_le(records.len() as u32);
    out.put_u32_le(0);
    out.put_u64_le(first_timestamp_ms);
    for record in records {
        let record = record.as_ref();
        out.put_u32_le(record.len() as u32);
        out.put_slice(record);
    }
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes and sanity-checks a header, without the checksum. Too few bytes
/// give `Incomplete` with `need` at least the header's length (the shortest
/// header's, before the version byte is there).
pub fn parse_header(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    if bytes.len() >= 4 && u32_at(bytes, 0) == 0 {
        return Err(BatchError::Zero);
    }
    if bytes.len() < VERSION_END_BYTES {
        return Err(BatchError::Incomplete {
            need: BATCH_V1_HEADER_BYTES,
            have: bytes.len(),
        });
    }
    let magic = u32_at(bytes, 0);
    if magic != BATCH_MAGIC {
        return Err(BatchError::BadMagic(magic));
    }
    let version = bytes[8];
    if version != BATCH_VERSION && version != BATCH_VERSION_V1 {
        return Err(BatchError::BadVersion(version));
    }
    let header_bytes = header_bytes_of(version);
    if bytes.len() < header_bytes {
        return Err(BatchError::Incomplete {
            need: header_bytes,
            have: bytes.len(),
        });
    }
    let kind = BatchKind::from_code(bytes[10]).ok_or(BatchError::BadReserved)?;
    let flags_right = bytes[9] == if kind.is_control() { FLAG_CONTROL } else { 0 };
    let v1_right = version == BATCH_VERSION || kind == BatchKind::Events;
    if !flags_right || !v1_right || bytes[11] != 0 || u32_at(bytes, 28) != 0 {
        return Err(BatchError::BadReserved);
    }
    let (term, raft_index) = if version == BATCH_VERSION {
        (u64_at(bytes, 40), u64_at(bytes, 48))
    } else {
        (0, 0)
    };
    let header = BatchHeader {
        version,
        kind,
        crc: u32_at(bytes, 4),
        payload_bytes: u32_at(bytes, 12),
        base_offset: u64_at(bytes, 16),
        record_count: u32_at(bytes, 24),
        first_timestamp_ms: u64_at(bytes, 32),
        term,
        raft_index,
    };
    let min_payload = header.record_count as usize * RECORD_PREFIX_BYTES;
    if header.record_count == 0
        || header.record_count > BATCH_RECORDS_MAX
        || header.batch_bytes() > BATCH_BYTES_MAX
        || (header.payload_bytes as usize) < min_payload
        || (version == BATCH_VERSION && (term == 0 || raft_index == 0))
    {
        return Err(BatchError::BadCounts);
    }
    Ok(header)
}

/// Verifies the batch at the start of `bytes` completely (header, checksum,
/// record framing) and returns its header.
pub fn verify(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = parse_header(bytes)?;
    let len = header.batch_bytes();
    if bytes.len() < len {
        return Err(BatchError::Incomplete {
            need: len,
            have: bytes.len(),
        });
    }
    let computed = crc32fast::hash(&bytes[8..len]);
    if computed != header.crc {
        return Err(BatchError::BadCrc {
            stored: header.crc,
            computed,
        });
    }
    let mut at = header.header_bytes();
    for _ in 0..header.record_count {
        if at + RECORD_PREFIX_BYTES > len {
            return Err(BatchError::BadRecords);
        }
        at += RECORD_PREFIX_BYTES + u32_at(bytes, at) as usize;
    }
    if at != len {
        return Err(BatchError::BadRecords);
    }
    Ok(header)
}

/// A verified batch borrowed from a buffer.
#[derive(Debug, Clone, Copy)]
pub struct BatchRef<'a> {
    /// Its header.
    pub header: BatchHeader,
    /// The whole batch, header included.
    pub bytes: &'a [u8],
}

impl<'a> BatchRef<'a> {
    /// The records with their offsets, in order. A control batch's
    /// records take no offsets: each is given the batch's base offset.
    pub fn records(&self) -> Records<'a> {
        Records {
            bytes: self.bytes,
            at: self.header.header_bytes(),
            offset: self.header.base_offset,
            step: u64::from(!self.header.kind.is_control()),
            left: self.header.record_count,
        }
    }
}

/// Iterator over a verified batch's `(offset, record)` pairs.
#[derive(Debug, Clone)]
pub struct Records<'a> {
    bytes: &'a [u8],
    at: usize,
    offset: u64,
    step: u64,
    left: u32,
}

impl<'a> Iterator for Records<'a> {
    type Item = (u64, &'a [u8]);
    fn next(&mut self) -> Option<(u64, &'a [u8])> {
        if self.left == 0 {
            return None;
        }
        // `verify` proved every prefix and record lies inside `bytes`.
        let len = u32_at(self.bytes, self.at) as usize;
        let start = self.at + RECORD_PREFIX_BYTES;
        let record = &self.bytes[start..start + len];
        let item = (self.offset, record);
        self.at = start + len;
        self.offset += self.step;
        self.left -= 1;
        Some(item)
    }
}

/// Iterator over the whole batches at the start of a buffer, each verified.
/// It stops (with `None`) at the end of the buffer and yields an error, once,
/// for bytes that are not a valid batch.
#[derive(Debug, Clone)]
pub struct Batches<'a> {
    bytes: &'a [u8],
    failed: bool,
}

impl<'a> Batches<'a> {
    /// Batches in `bytes`, which holds whole batches back to back (what
    /// [`crate::Log::read`] returns).
    pub fn new(bytes: &'a [u8]) -> Self {
        Batches {
            bytes,
            failed: false,
        }
    }
}

impl<'a> Iterator for Batches<'a> {
    type Item = Result<BatchRef<'a>, BatchError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.bytes.is_empty() || self.failed {
            return None;
        }
        match verify(self.bytes) {
            Ok(header) => {
                let (batch, rest) = self.bytes.split_at(header.batch_bytes());
                self.bytes = rest;
                Some(Ok(BatchRef {
                    header,
                    bytes: batch,
                }))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(base_offset: u64, first_timestamp_ms: u64) -> BatchStamp {
        BatchStamp {
            kind: BatchKind::Events,
            base_offset,
            first_timestamp_ms,
            term: 3,
            raft_index: 17,
        }
    }

    fn sample() -> Vec<u8> {
        let mut out = Vec::new();
        encode_into(
            &mut out,
            &stamp(42, 1_700_000_000_000),
            &[&b"alpha"[..], b"", b"gamma!"],
        );
        out
    }

    fn sample_v1() -> Vec<u8> {
        let mut out = Vec::new();
        encode_v1_into(
            &mut out,
            42,
            1_700_000_000_000,
            &[&b"alpha"[..], b"", b"gamma!"],
        );
        out
    }

    fn control(kind: BatchKind, record: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let stamp = BatchStamp {
            kind,
            first_timestamp_ms: 0,
            ..stamp(45, 0)
        };
        encode_into(&mut out, &stamp, &[record]);
        out
    }

    #[test]
    fn restamp_gives_the_bytes_encode_would_have_written_at_that_place() {
        let mut bytes = sample();
        restamp(&mut bytes, 1_000, 9, 123).unwrap();
        let mut expected = Vec::new();
        let at = BatchStamp {
            base_offset: 1_000,
            term: 9,
            raft_index: 123,
            ..stamp(0, 1_700_000_000_000)
        };
        encode_into(&mut expected, &at, &[&b"alpha"[..], b"", b"gamma!"]);
        assert_eq!(bytes, expected);
        assert_eq!(verify(&bytes).unwrap().raft_index, 123);
        // Not a whole batch, a version-1 batch, or term 0: refused, unchanged.
        let before = bytes.clone();
        let short = bytes.len() - 1;
        assert!(restamp(&mut bytes[..short], 1, 1, 1).is_err());
        assert!(restamp(&mut bytes, 1, 0, 1).unwrap_err().contains("term 0"));
        assert_eq!(bytes, before);
        assert!(
            restamp(&mut sample_v1(), 1, 1, 1)
                .unwrap_err()
                .contains("version 1")
        );
    }

    #[test]
    fn round_trip_keeps_offsets_records_and_timestamp() {
        let bytes = sample();
        assert_eq!(bytes.len(), encoded_len(&[&b"alpha"[..], b"", b"gamma!"]));
        let header = verify(&bytes).unwrap();
        assert_eq!(header.base_offset, 42);
        assert_eq!(header.record_count, 3);
        assert_eq!(header.last_offset(), 44);
        assert_eq!(header.first_timestamp_ms, 1_700_000_000_000);
        assert_eq!((header.version, header.kind), (2, BatchKind::Events));
        assert_eq!((header.term, header.raft_index), (3, 17));
        let batch = Batches::new(&bytes).next().unwrap().unwrap();
        let records: Vec<_> = batch.records().collect();
        assert_eq!(
            records,
            vec![(42, &b"alpha"[..]), (43, &b""[..]), (44, &b"gamma!"[..])]
        );
    }

    #[test]
    fn header_layout_matches_the_diagram() {
        let bytes = sample();
        assert_eq!(&bytes[0..4], b"HDRB");
        assert_eq!(&bytes[8..12], &[2, 0, 0, 0]);
        assert_eq!(
            u32_at(&bytes, 12) as usize,
            bytes.len() - BATCH_HEADER_BYTES
        );
        assert_eq!(u64_at(&bytes, 16), 42);
        assert_eq!(u32_at(&bytes, 24), 3);
        assert_eq!(u64_at(&bytes, 32), 1_700_000_000_000);
        assert_eq!(u64_at(&bytes, 40), 3, "term");
        assert_eq!(u64_at(&bytes, 48), 17, "raft index");
        assert_eq!(u32_at(&bytes, 56), 5, "first record's length prefix");
        let control = control(BatchKind::ConfChange, b"cc");
        assert_eq!(
            &control[8..12],
            &[2, 1, 2, 0],
            "version, control flag, kind"
        );
    }

    #[test]
    fn version_1_bytes_from_the_old_encoder_still_read_as_events() {
        let bytes = sample_v1();
        assert_eq!(bytes.len(), 40 + 3 * 4 + 11);
        let header = verify(&bytes).unwrap();
        assert_eq!((header.version, header.kind), (1, BatchKind::Events));
        assert_eq!((header.term, header.raft_index), (0, 0));
        assert_eq!(header.header_bytes(), BATCH_V1_HEADER_BYTES);
        assert_eq!(header.batch_bytes(), bytes.len());
        assert_eq!(header.next_offset(), 45);
        let batch = Batches::new(&bytes).next().unwrap().unwrap();
        let records: Vec<_> = batch.records().collect();
        assert_eq!(
            records,
            vec![(42, &b"alpha"[..]), (43, &b""[..]), (44, &b"gamma!"[..])]
        );
        // A version-1 header claiming a control kind is not valid.
        let mut bad = sample_v1();
        bad[9] = 1;
        bad[10] = 1;
        assert_eq!(parse_header(&bad), Err(BatchError::BadReserved));
        // Short of a whole version-1 header, the need is the v1 header.
        assert_eq!(
            parse_header(&bytes[..20]),
            Err(BatchError::Incomplete { need: 40, have: 20 })
        );
        assert_eq!(
            parse_header(&sample()[..44]),
            Err(BatchError::Incomplete { need: 56, have: 44 })
        );
    }

    #[test]
    fn a_control_batch_takes_no_offsets() {
        let bytes = control(BatchKind::RaftEmpty, b"");
        let header = verify(&bytes).unwrap();
        assert_eq!(header.kind, BatchKind::RaftEmpty);
        assert_eq!((header.base_offset, header.next_offset()), (45, 45));
        assert_eq!(header.offsets_taken(), 0);
        let batch = Batches::new(&bytes).next().unwrap().unwrap();
        assert_eq!(batch.records().collect::<Vec<_>>(), vec![(45, &b""[..])]);
        // Flags must match the kind both ways.
        let mut bad = bytes.clone();
        bad[9] = 0;
        assert_eq!(parse_header(&bad), Err(BatchError::BadReserved));
        let mut bad = sample();
        bad[9] = 1;
        assert_eq!(parse_header(&bad), Err(BatchError::BadReserved));
        let mut bad = bytes;
        bad[10] = 3;
        assert_eq!(parse_header(&bad), Err(BatchError::BadReserved));
    }

    #[test]
    fn a_version_2_batch_needs_a_term_and_an_index() {
        for at in [40, 48] {
            let mut bad = sample();
            bad[at..at + 8].copy_from_slice(&0u64.to_le_bytes());
            assert_eq!(parse_header(&bad), Err(BatchError::BadCounts), "{at}");
        }
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        for bytes in [sample(), sample_v1(), control(BatchKind::ConfChange, b"cc")] {
            for i in 0..bytes.len() * 8 {
                let mut bad = bytes.clone();
                bad[i / 8] ^= 1 << (i % 8);
                assert!(verify(&bad).is_err(), "flip of bit {i} went unnoticed");
            }
        }
    }

    #[test]
    fn every_truncation_is_incomplete() {
        for bytes in [sample(), sample_v1()] {
            for len in 0..bytes.len() {
                assert!(
                    matches!(verify(&bytes[..len]), Err(BatchError::Incomplete { .. })),
                    "truncated to {len}"
                );
            }
        }
    }

    #[test]
    fn zero_fill_is_recognised() {
        assert_eq!(verify(&[0u8; 64]), Err(BatchError::Zero));
    }

    #[test]
    fn limits_are_enforced_on_decode() {
        let mut bytes = sample();
        bytes[24..28].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(parse_header(&bytes), Err(BatchError::BadCounts));
        bytes[24..28].copy_from_slice(&(BATCH_RECORDS_MAX + 1).to_le_bytes());
        assert_eq!(parse_header(&bytes), Err(BatchError::BadCounts));
        let mut bytes = sample();
        bytes[12..16].copy_from_slice(&(BATCH_BYTES_MAX as u32).to_le_bytes());
        assert_eq!(parse_header(&bytes), Err(BatchError::BadCounts));
    }

    #[test]
    fn record_lengths_must_fill_the_payload_exactly() {
        // A batch whose checksum is right but whose records overrun.
        let mut bytes = sample();
        bytes[56..60].copy_from_slice(&6u32.to_le_bytes());
        let crc = crc32fast::hash(&bytes[8..]);
        bytes[4..8].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(verify(&bytes), Err(BatchError::BadRecords));
    }

    #[test]
    fn batches_iterates_and_stops_at_garbage() {
        let mut bytes = sample();
        encode_into(&mut bytes, &stamp(45, 0), &[b"x"]);
        encode_v1_into(&mut bytes, 46, 0, &[b"y"]);
        bytes.extend_from_slice(&[0xFF; 50]);
        let mut it = Batches::new(&bytes);
        assert_eq!(it.next().unwrap().unwrap().header.base_offset, 42);
        assert_eq!(it.next().unwrap().unwrap().header.base_offset, 45);
        assert_eq!(it.next().unwrap().unwrap().header.version, 1);
        assert!(it.next().unwrap().is_err());
        assert!(it.next().is_none());
    }
}
