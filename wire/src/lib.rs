//! Hadron's wire protocol. The schema in `wire/schema/` is the source of
//! truth; this crate frames, verifies and decodes it without doing any I/O.

/// The largest frame, length prefix excluded, that either side accepts.
pub const FRAME_BYTES_MAX: usize = 16 << 20;
