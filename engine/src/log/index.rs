//! The sparse offset index of one segment (`<base>.idx`).
//!
//! Every `index_interval_bytes` of log data, the log records where a batch
//! starts: the batch's base offset relative to the segment's base, and its
//! byte position in the segment. A lookup finds the last entry at or before
//! the wanted offset and scans batch headers forward from there.
//!
//! ```text
//!  0                 4                 8
//!  +-----------------+-----------------+----
//!  | relative_offset | position        | ... next entry, 8 bytes each
//!  | u32 LE          | u32 LE          |
//!  +-----------------+-----------------+----
//! ```
//!
//! - The batch at position 0 is never indexed: it is where every scan starts
//!   without an index.
//! - Both fields strictly increase from entry to entry. The first entry that
//!   does not (in particular the zero fill after the last page written) ends
//!   the index, so a torn or stale tail is cut off by reading alone.
//! - The index is a hint: recovery checks that its last entry points at a
//!   valid batch with the offset it claims before trusting it, and rebuilds
//!   it from the log when it is missing or wrong.
//! - Sealed segments' index files are read through a read-only memory map;
//!   the active segment's index lives in memory and is written one full
//!   4 KiB page at a time, and whole when the segment is sealed.
//!
//! The same diagram is in `docs/formats/index.md`.

/// Bytes of one entry.
pub const INDEX_ENTRY_BYTES: usize = 8;

/// One index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// Base offset of the batch minus the segment's base offset.
    pub relative_offset: u32,
    /// Byte position of the batch in the segment.
    pub position: u32,
}

fn entry_at(bytes: &[u8], i: usize) -> IndexEntry {
    let at = i * INDEX_ENTRY_BYTES;
    IndexEntry {
        relative_offset: u32::from_le_bytes([
            bytes[at],
            bytes[at + 1],
            bytes[at + 2],
            bytes[at + 3],
        ]),
        position: u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]]),
    }
}

/// Appends `entry` to the raw index `bytes`.
pub fn push(bytes: &mut Vec<u8>, entry: IndexEntry) {
    if let Some(last) = last(bytes) {
        assert!(entry.relative_offset > last.relative_offset && entry.position > last.position);
    }
    assert!(entry.position > 0);
    bytes.extend_from_slice(&entry.relative_offset.to_le_bytes());
    bytes.extend_from_slice(&entry.position.to_le_bytes());
}

/// Number of entries in `bytes` (which holds whole, valid entries).
pub fn len(bytes: &[u8]) -> usize {
    bytes.len() / INDEX_ENTRY_BYTES
}

/// The entry `i` of `bytes`.
pub fn get(bytes: &[u8], i: usize) -> IndexEntry {
    entry_at(bytes, i)
}

/// The last entry, if any.
pub fn last(bytes: &[u8]) -> Option<IndexEntry> {
    let n = len(bytes);
    (n > 0).then(|| entry_at(bytes, n - 1))
}

/// The number of leading entries of raw index bytes that are well formed:
/// positive positions, both fields strictly increasing, positions below
/// `data_bytes`.
pub fn valid_prefix(bytes: &[u8], data_bytes: u64) -> usize {
    let mut prev: Option<IndexEntry> = None;
    for i in 0..len(bytes) {
        let e = entry_at(bytes, i);
        let increasing =
            prev.is_none_or(|p| e.relative_offset > p.relative_offset && e.position > p.position);
        if e.position == 0 || !increasing || u64::from(e.position) >= data_bytes {
            return i;
        }
        prev = Some(e);
    }
    len(bytes)
}

/// The byte position to start scanning from for `relative_offset`: that of
/// the last entry whose offset is at or before it, or 0.
pub fn lookup(bytes: &[u8], relative_offset: u32) -> u64 {
    let n = len(bytes);
    // Binary search for the first entry past the offset.
    let (mut lo, mut hi) = (0usize, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if entry_at(bytes, mid).relative_offset <= relative_offset {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    if lo == 0 {
        0
    } else {
        u64::from(entry_at(bytes, lo - 1).position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(entries: &[(u32, u32)]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for &(relative_offset, position) in entries {
            push(
                &mut bytes,
                IndexEntry {
                    relative_offset,
                    position,
                },
            );
        }
        bytes
    }

    #[test]
    fn lookup_finds_the_last_entry_at_or_before() {
        let idx = index(&[(10, 4096), (20, 8192), (35, 12288)]);
        assert_eq!(lookup(&idx, 0), 0);
        assert_eq!(lookup(&idx, 9), 0);
        assert_eq!(lookup(&idx, 10), 4096);
        assert_eq!(lookup(&idx, 19), 4096);
        assert_eq!(lookup(&idx, 20), 8192);
        assert_eq!(lookup(&idx, 1000), 12288);
        assert_eq!(lookup(&[], 5), 0);
    }

    #[test]
    fn layout_is_two_little_endian_u32s() {
        let idx = index(&[(0x0102_0304, 0x0A0B_0C0D)]);
        assert_eq!(idx, vec![4, 3, 2, 1, 0x0D, 0x0C, 0x0B, 0x0A]);
    }

    #[test]
    fn valid_prefix_stops_at_zero_fill_disorder_and_out_of_range() {
        let mut idx = index(&[(10, 4096), (20, 8192)]);
        idx.extend_from_slice(&[0; 16]);
        assert_eq!(valid_prefix(&idx, 1 << 20), 2);
        let mut disordered = index(&[(10, 4096), (20, 8192)]);
        disordered.extend_from_slice(&15u32.to_le_bytes());
        disordered.extend_from_slice(&9000u32.to_le_bytes());
        assert_eq!(valid_prefix(&disordered, 1 << 20), 2);
        assert_eq!(valid_prefix(&index(&[(10, 4096), (20, 8192)]), 8192), 1);
        // A torn entry (not 8 bytes) is ignored.
        let mut torn = index(&[(10, 4096)]);
        torn.extend_from_slice(&[1, 2, 3]);
        assert_eq!(valid_prefix(&torn, 1 << 20), 1);
    }
}
