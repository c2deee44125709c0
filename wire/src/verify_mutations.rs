//! The damage the differential tests of `event::verify` and
//! `frame::verify` do to valid buffers before handing them to both the
//! specialised and the generic flatbuffer verifier. A `Layout` says where a
//! valid buffer keeps its offsets, vtables, lengths, strings and union tags;
//! `mutate` corrupts one of them (or any byte), so that every check of a
//! verifier is reached from both sides of its boundary.
//!
//! Each test walks its own buffers into a `Layout` and draws its own limits;
//! only the damage is shared, so that both verifiers are held to the same
//! kinds of it.

use crate::generated as fb;
use crate::tests::Rng;

/// Where a valid event or frame keeps the things worth corrupting, found by
/// walking it (trusted: it came from a builder, or verified).
#[derive(Debug)]
pub(crate) struct Layout {
    /// Positions of uoffsets: the root, a frame's body, string and vector
    /// fields, vector elements.
    pub(crate) uoffsets: Vec<usize>,
    /// Positions of tables (their soffsets).
    pub(crate) tables: Vec<usize>,
    pub(crate) vtables: Vec<usize>,
    /// Positions of vtable slots (`u16`s after the two header fields).
    pub(crate) slots: Vec<usize>,
    /// Positions of the length of every string and vector.
    pub(crate) lengths: Vec<usize>,
    /// Positions of string bytes, and of string terminators.
    pub(crate) string_bytes: Vec<usize>,
    pub(crate) terminators: Vec<usize>,
    /// Position of the union tag (frames only).
    pub(crate) tags: Vec<usize>,
    /// The small vtable lengths `Mutation::VtableLength` sets now and then,
    /// besides random and nudged ones.
    pub(crate) vtable_lengths: &'static [i64],
}

impl Layout {
    /// An empty layout, to be filled in by walking a buffer.
    pub(crate) fn new(vtable_lengths: &'static [i64]) -> Layout {
        assert!(!vtable_lengths.is_empty());
        Layout {
            uoffsets: Vec::new(),
            tables: Vec::new(),
            vtables: Vec::new(),
            slots: Vec::new(),
            lengths: Vec::new(),
            string_bytes: Vec::new(),
            terminators: Vec::new(),
            tags: Vec::new(),
            vtable_lengths,
        }
    }
}

/// The kinds of damage the differential tests do to a valid event or frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Mutation {
    /// Flip one to three random bits anywhere.
    BitFlip,
    /// Overwrite a random byte with a random or boundary value.
    ByteOverwrite,
    /// Cut bytes off the end.
    Truncate,
    /// Append random bytes.
    Extend,
    /// Point a uoffset (root, a frame's body, field, vector element)
    /// elsewhere: at another table, string, vector or vtable, at random, off
    /// by a little (misaligned), at itself, past the end.
    Repoint,
    /// Point a table's soffset at another vtable, at random, off by a
    /// little, at the table itself, at extremes.
    SOffset,
    /// Change a vtable slot: absent (a required field, a union half),
    /// random, off by a little, another field's offset.
    Slot,
    /// Change a vtable's length (or its table-size field).
    VtableLength,
    /// Enlarge (now and then shrink) a string or vector length, up to
    /// huge.
    Enlarge,
    /// Put a byte that breaks UTF-8 into a string (a frame's stream name).
    Utf8,
    /// Overwrite a string's 0 terminator (a frame's stream name's).
    Terminator,
    /// Change the union tag: no body, a neighbour, unknown, random. Frames
    /// only: an event has no union.
    Tag,
}

/// Every mutation, in the order the tests draw them from.
pub(crate) const MUTATIONS: [Mutation; 12] = [
    Mutation::BitFlip,
    Mutation::ByteOverwrite,
    Mutation::Truncate,
    Mutation::Extend,
    Mutation::Repoint,
    Mutation::SOffset,
    Mutation::Slot,
    Mutation::VtableLength,
    Mutation::Enlarge,
    Mutation::Utf8,
    Mutation::Terminator,
    Mutation::Tag,
];

fn pick(rng: &mut Rng, from: &[usize]) -> Option<usize> {
    (!from.is_empty()).then(|| from[rng.below(from.len())])
}

pub(crate) fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(dst) = buf.get_mut(at..at + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}

fn read_u32(buf: &[u8], at: usize) -> u32 {
    buf.get(at..at + 4)
        .map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap()))
}

fn read_u16(buf: &[u8], at: usize) -> u16 {
    buf.get(at..at + 2)
        .map_or(0, |b| u16::from_le_bytes(b.try_into().unwrap()))
}

/// A small signed nudge: +-1, 2, 4 or 8.
fn nudge(rng: &mut Rng) -> i64 {
    let step = [1, 2, 4, 8][rng.below(4)];
    if rng.below(2) == 0 { step } else { -step }
}

/// Applies `mutation` to `buf`, a valid event or frame (before earlier
/// mutations) laid out as `layout`. A mutation with nothing to aim at (an
/// event without strings, say) flips a bit instead.
pub(crate) fn mutate(rng: &mut Rng, buf: &mut Vec<u8>, layout: &Layout, mutation: Mutation) {
    if buf.is_empty() {
        return;
    }
    let len = buf.len();
    let targets = || {
        [
            &layout.tables,
            &layout.vtables,
            &layout.lengths,
            &layout.uoffsets,
        ]
        .into_iter()
        .flatten()
        .copied()
        .collect::<Vec<_>>()
    };
    let aimed = match mutation {
        Mutation::BitFlip => None,
        Mutation::ByteOverwrite => {
            let at = rng.below(len);
            buf[at] = if rng.below(2) == 0 {
                rng.next_u64() as u8
            } else {
                [0x00, 0x01, 0x02, 0x04, 0x7f, 0x80, 0xfe, 0xff][rng.below(8)]
            };
            Some(())
        }
        Mutation::Truncate => {
            let cut = if rng.below(2) == 0 {
                1 + rng.below(8)
            } else {
                1 + rng.below(len)
            };
            buf.truncate(len.saturating_sub(cut));
            Some(())
        }
        Mutation::Extend => {
            let n = 1 + rng.below(16);
            let extra = rng.bytes(n);
            buf.extend_from_slice(&extra);
            Some(())
        }
        Mutation::Repoint => pick(rng, &layout.uoffsets).map(|at| {
            let old = i64::from(read_u32(buf, at));
            let at = at as i64;
            let offset = match rng.below(6) {
                0 => pick(rng, &targets()).map_or(0, |t| t as i64 - at),
                1 => rng.below(len + 16) as i64 - at,
                2 => old + nudge(rng),
                3 => 0,
                4 => i64::from(u32::MAX) - rng.below(8) as i64,
                _ => len as i64 - rng.below(8) as i64 - at,
            };
            put(buf, at as usize, &(offset as u32).to_le_bytes());
        }),
        Mutation::SOffset => pick(rng, &layout.tables).map(|table| {
            let old = i64::from(read_u32(buf, table) as i32);
            let t = table as i64;
            let soffset = match rng.below(6) {
                0 => pick(rng, &layout.vtables).map_or(0, |v| t - v as i64),
                1 => t - rng.below(len + 8) as i64,
                2 => old + nudge(rng),
                3 => 0,
                4 => [i64::from(i32::MIN), i64::from(i32::MAX), -1, 1][rng.below(4)],
                _ => t - len as i64 + rng.below(4) as i64,
            };
            put(buf, table, &(soffset as i32).to_le_bytes());
        }),
        Mutation::Slot => pick(rng, &layout.slots).map(|at| {
            let old = i64::from(read_u16(buf, at));
            let value = match rng.below(5) {
                0 => 0,
                1 => rng.next_u64() as u16 as i64,
                2 => old + nudge(rng),
                3 => pick(rng, &layout.slots).map_or(0, |s| i64::from(read_u16(buf, s))),
                _ => rng.below(64) as i64,
            };
            put(buf, at, &(value as u16).to_le_bytes());
        }),
        Mutation::VtableLength => pick(rng, &layout.vtables).map(|vtable| {
            // Now and then the table-size field, which no one reads.
            let at = if rng.below(4) == 0 {
                vtable + 2
            } else {
                vtable
            };
            let old = i64::from(read_u16(buf, at));
            let value = match rng.below(5) {
                0 => layout.vtable_lengths[rng.below(layout.vtable_lengths.len())],
                1 => old + nudge(rng),
                2 => rng.next_u64() as u16 as i64,
                3 => 0xffff,
                _ => old + 2 * rng.below(8) as i64,
            };
            put(buf, at, &(value as u16).to_le_bytes());
        }),
        Mutation::Enlarge => pick(rng, &layout.lengths).map(|at| {
            let old = i64::from(read_u32(buf, at));
            let to_end = len as i64 - at as i64 - 4;
            let value = match rng.below(8) {
                0 => old + 1,
                1 => old + 1 + rng.below(16) as i64,
                2 => to_end,
                3 => to_end + 1,
                4 => to_end / 4 + rng.below(2) as i64,
                5 => i64::from(u32::MAX),
                6 => 0x4000_0000,
                _ => old - 1 - rng.below(2) as i64,
            };
            put(buf, at, &(value.max(0) as u32).to_le_bytes());
        }),
        Mutation::Utf8 => pick(rng, &layout.string_bytes).map(|at| {
            let bad = [0x80, 0xbf, 0xc0, 0xc3, 0xe2, 0xed, 0xf0, 0xf4, 0xf8, 0xff];
            put(buf, at, &[bad[rng.below(bad.len())]]);
        }),
        Mutation::Terminator => pick(rng, &layout.terminators).map(|at| {
            put(buf, at, &[1 + rng.below(255) as u8]);
        }),
        Mutation::Tag => pick(rng, &layout.tags).map(|at| {
            let publish = fb::Body::Publish.0;
            let tag = match rng.below(4) {
                0 => fb::Body::NONE.0,
                1 => [publish - 1, publish + 1, fb::Body::AckOk.0][rng.below(3)],
                2 => fb::Body::ENUM_MAX + 1 + rng.below(8) as u8,
                _ => rng.next_u64() as u8,
            };
            put(buf, at, &[tag]);
        }),
    };
    if aimed.is_none() {
        for _ in 0..1 + rng.below(3) {
            let at = rng.below(buf.len());
            buf[at] ^= 1 << rng.below(8);
        }
    }
}
