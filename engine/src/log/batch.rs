//! The record batch: the unit of write, checksum and delivery.
//!
//! A batch is a fixed 40-byte little-endian header followed by its records,
//! each an opaque byte string with a `u32` length prefix. Records are stored
//! exactly as the caller gave them (for Hadron, the event in its wire
//! encoding), so what a publisher sent is what a subscriber receives.
//!
//! ```text
//!  0        4        8    9    10       12       16                24       28       32                40
//!  +--------+--------+----+----+--------+--------+-----------------+--------+--------+-----------------+
//!  | magic  | crc32  |ver |flag|reservd |payload | base_offset     | record | reservd| first_timestamp |
//!  | "HDRB" |        | 1  | 0  |   0    | _bytes |                 | _count |   0    | _ms             |
//!  +--------+--------+----+----+--------+--------+-----------------+--------+--------+-----------------+
//!  | payload: record_count x ( u32 len | len bytes ), exactly payload_bytes long                      |
//!  +-----------------------------------------------------------------------------------------------------+
//! ```
//!
//! - `crc32` (crc32fast, IEEE) covers header bytes 8..40 and the payload.
//! - `magic` is outside the checksum: a zero magic marks the end of the data
//!   in a preallocated, zero-filled segment.
//! - A batch is valid only when the magic, version, flags and reserved fields
//!   are as shown, the counts are within limits, the checksum matches, and the
//!   record lengths add up to exactly `payload_bytes`.
//!
//! The same diagram is in `docs/formats/segment.md`.

use std::fmt;

use bytes::BufMut;

/// Header length in bytes.
pub const BATCH_HEADER_BYTES: usize = 40;
/// `b"HDRB"` read as a little-endian `u32`.
pub const BATCH_MAGIC: u32 = u32::from_le_bytes(*b"HDRB");
/// The only batch format version written and read.
pub const BATCH_VERSION: u8 = 1;
/// Bytes of a record's length prefix.
pub const RECORD_PREFIX_BYTES: usize = 4;
/// Most records in one batch.
pub const BATCH_RECORDS_MAX: u32 = 1 << 16;
/// Most bytes in one batch, header included. Also bounds a record.
pub const BATCH_BYTES_MAX: usize = 16 << 20;

const _: () = assert!(BATCH_HEADER_BYTES.is_multiple_of(8));
const _: () = assert!(BATCH_BYTES_MAX <= u32::MAX as usize);

/// A decoded, not yet verified batch header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
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
}

impl BatchHeader {
    /// Whole batch length: header plus payload.
    pub fn batch_bytes(&self) -> usize {
        BATCH_HEADER_BYTES + self.payload_bytes as usize
    }

    /// Offset of the last record.
    pub fn last_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count) - 1
    }

    /// The offset after the last record.
    pub fn next_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count)
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
    /// Non-zero flags or reserved fields.
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
            BatchError::BadReserved => write!(f, "non-zero reserved batch fields"),
            BatchError::BadCounts => write!(f, "batch record count or size out of range"),
            BatchError::BadCrc { stored, computed } => {
                write!(
                    f,
                    "batch crc mismatch: stored {stored:#010x}, computed {computed:#010x}"
                )
            }
            BatchError::BadRecords => write!(f, "record lengths do not match the batch payload"),
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

/// The bytes a batch of `records` takes.
pub fn encoded_len<R: AsRef<[u8]>>(records: &[R]) -> usize {
    BATCH_HEADER_BYTES
        + records
            .iter()
            .map(|r| RECORD_PREFIX_BYTES + r.as_ref().len())
            .sum::<usize>()
}

/// Appends the batch of `records` to `out`. The caller has checked the limits
/// ([`encoded_len`] ≤ [`BATCH_BYTES_MAX`], 1..=[`BATCH_RECORDS_MAX`] records).
pub fn encode_into<B, R>(out: &mut B, base_offset: u64, first_timestamp_ms: u64, records: &[R])
where
    B: BufMut + AsMut<[u8]>,
    R: AsRef<[u8]>,
{
    let len = encoded_len(records);
    assert!(len <= BATCH_BYTES_MAX);
    assert!(!records.is_empty() && records.len() <= BATCH_RECORDS_MAX as usize);
    let start = out.as_mut().len();
    out.put_u32_le(BATCH_MAGIC);
    out.put_u32_le(0); // crc, filled in below
    out.put_slice(&[BATCH_VERSION, 0, 0, 0]);
    out.put_u32_le((len - BATCH_HEADER_BYTES) as u32);
    out.put_u64_le(base_offset);
    out.put_u32_le(records.len() as u32);
    out.put_u32_le(0);
    out.put_u64_le(first_timestamp_ms);
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

/// Decodes and sanity-checks a header, without the checksum.
pub fn parse_header(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    if bytes.len() < BATCH_HEADER_BYTES {
        return Err(BatchError::Incomplete {
            need: BATCH_HEADER_BYTES,
            have: bytes.len(),
        });
    }
    let magic = u32_at(bytes, 0);
    if magic == 0 {
        return Err(BatchError::Zero);
    }
    if magic != BATCH_MAGIC {
        return Err(BatchError::BadMagic(magic));
    }
    if bytes[8] != BATCH_VERSION {
        return Err(BatchError::BadVersion(bytes[8]));
    }
    if bytes[9] != 0 || bytes[10] != 0 || bytes[11] != 0 || u32_at(bytes, 28) != 0 {
        return Err(BatchError::BadReserved);
    }
    let header = BatchHeader {
        crc: u32_at(bytes, 4),
        payload_bytes: u32_at(bytes, 12),
        base_offset: u64_at(bytes, 16),
        record_count: u32_at(bytes, 24),
        first_timestamp_ms: u64_at(bytes, 32),
    };
    let min_payload = header.record_count as usize * RECORD_PREFIX_BYTES;
    if header.record_count == 0
        || header.record_count > BATCH_RECORDS_MAX
        || header.batch_bytes() > BATCH_BYTES_MAX
        || (header.payload_bytes as usize) < min_payload
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
    let mut at = BATCH_HEADER_BYTES;
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
    /// The records with their offsets, in order.
    pub fn records(&self) -> Records<'a> {
        Records {
            bytes: self.bytes,
            at: BATCH_HEADER_BYTES,
            offset: self.header.base_offset,
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
        self.offset += 1;
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

    fn sample() -> Vec<u8> {
        let mut out = Vec::new();
        encode_into(
            &mut out,
            42,
            1_700_000_000_000,
            &[&b"alpha"[..], b"", b"gamma!"],
        );
        out
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
        assert_eq!(bytes[8], BATCH_VERSION);
        assert_eq!(
            u32_at(&bytes, 12) as usize,
            bytes.len() - BATCH_HEADER_BYTES
        );
        assert_eq!(u64_at(&bytes, 16), 42);
        assert_eq!(u32_at(&bytes, 24), 3);
        assert_eq!(u64_at(&bytes, 32), 1_700_000_000_000);
        assert_eq!(u32_at(&bytes, 40), 5, "first record's length prefix");
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let bytes = sample();
        for i in 0..bytes.len() * 8 {
            let mut bad = bytes.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(verify(&bad).is_err(), "flip of bit {i} went unnoticed");
        }
    }

    #[test]
    fn every_truncation_is_incomplete() {
        let bytes = sample();
        for len in 0..bytes.len() {
            assert!(
                matches!(verify(&bytes[..len]), Err(BatchError::Incomplete { .. })),
                "truncated to {len}"
            );
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
        bytes[40..44].copy_from_slice(&6u32.to_le_bytes());
        let crc = crc32fast::hash(&bytes[8..]);
        bytes[4..8].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(verify(&bytes), Err(BatchError::BadRecords));
    }

    #[test]
    fn batches_iterates_and_stops_at_garbage() {
        let mut bytes = sample();
        encode_into(&mut bytes, 45, 0, &[b"x"]);
        bytes.extend_from_slice(&[0xFF; 50]);
        let mut it = Batches::new(&bytes);
        assert_eq!(it.next().unwrap().unwrap().header.base_offset, 42);
        assert_eq!(it.next().unwrap().unwrap().header.base_offset, 45);
        assert!(it.next().unwrap().is_err());
        assert!(it.next().is_none());
    }
}
