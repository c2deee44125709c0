//! A flatbuffers verifier written for one table: `Event` (with its
//! `Attribute` sub-tables and its `data` byte vector) from
//! `wire/schema/hadron.fbs`. It replaces the generic verifier
//! (`flatbuffers::root_with_opts::<fb::Event>`) on the publish path, where
//! that verifier's per-field `Result` plumbing and error tracing cost more
//! than the checks themselves.
//!
//! The buffer it checks (all integers little-endian; positions are from
//! the start of the buffer, which is the alignment reference):
//!
//! ```text
//! 0        root: u32 ──────────────► table (4-aligned)
//!
//! table    soffset: i32              vtable = table - soffset, inside the buffer
//!          fields at table + slot    (anywhere the slots say; the table's
//!                                     declared inline size is not used)
//!
//! vtable   vtable_bytes: u16         even; the whole vtable inside the buffer
//! (2-al.)  table_bytes:  u16         (not read by the accessors, not checked)
//!          slot[4..vtable_bytes]: u16, 0 = absent; slots past vtable_bytes
//!                                     are absent
//!
//! Event slots      4 id: string (required)      6 source: string (required)
//!                  8 specversion: string       10 type: string (required)
//!                 12 subject: string           14 time_ms: i64 (8-aligned)
//!                 16 datacontenttype: string   18 attributes: [Attribute]
//!                 20 data: [ubyte]
//! Attribute slots  4 key: string (required)     6 value: string (required)
//!
//! string / vector field   uoffset: u32 (4-aligned) ──► len: u32 (4-aligned)
//!                         then len bytes (string: valid UTF-8, then a 0 byte)
//!                         or len uoffsets (vector of tables, each ──► table)
//! ```
//!
//! Invariant: `verify` accepts exactly the buffers that the generic
//! verifier accepts with the same `VerifierOptions`, and for a rejected
//! buffer names the same first failure (variant, range, position), because
//! it runs the same checks in the same order:
//!
//! - every read is aligned for its type relative to the buffer start and
//!   inside the buffer; every string and vector lies inside the buffer;
//! - each table's soffset leads inside the buffer, its vtable length is even
//!   and the vtable lies inside the buffer; a slot beyond the vtable is an
//!   absent field;
//! - strings are valid UTF-8 followed by a 0 byte (unless the options say
//!   to ignore missing terminators);
//! - `id`, `source`, `type`, `key` and `value` are present;
//! - tables count against `max_tables` and nest against `max_depth` (Event
//!   at depth 1, Attribute at depth 2), and every byte range visited counts
//!   against `max_apparent_size`, so shared sub-objects cannot multiply the
//!   work. Fixed-size reads add to the apparent size without comparing it
//!   to the limit; every variable-size range (vtables, strings, vectors)
//!   and the end of verification compare. Because the count only grows,
//!   reporting `ApparentSizeTooLarge` whenever it is over the limit at the
//!   first failure or at the end gives the generic verifier's answer, and
//!   the work past the crossing is bounded by a few fixed-size reads.
//!
//! It is stricter in one respect only: the buffer must be at most
//! `EVENT_BYTES_MAX` bytes, flatbuffers' own size limit, which no builder
//! exceeds and which keeps the accessors' signed position arithmetic exact.
//!
//! The tests below check the invariant differentially: events of many
//! shapes, as flatbuffers' builder lays them out and as `encode_event`
//! does, mutated thousands of times (bit flips, byte overwrites,
//! truncation, offsets pointed elsewhere, lengths enlarged), under varied
//! limits, must get the same verdict and the same first failure from both
//! verifiers, and every accessor must read the same values through both.
//! The `verify_event` target in `wire/fuzz` does the same for arbitrary
//! bytes. Neither runs on a 32-bit target, where `offset_by` saturates.

use core::any::type_name;
use core::str::Utf8Error;

use flatbuffers::{InvalidFlatbuffer, VerifierOptions};

use crate::generated as fb;

/// The largest buffer this verifier accepts: flatbuffers' own limit on a
/// buffer (`FLATBUFFERS_MAX_BUFFER_SIZE`, 2 GiB - 1). Below it every
/// position fits an `i32`, which the generated accessors rely on when they
/// follow a table's soffset.
pub(crate) const EVENT_BYTES_MAX: usize = i32::MAX as usize;

/// The nesting depth of the `Event` table and of its `Attribute` tables, as
/// the generic verifier counts them against `max_depth`.
const EVENT_DEPTH: usize = 1;
const ATTRIBUTE_DEPTH: usize = 2;

const UOFFSET_BYTES: usize = 4;
const SOFFSET_BYTES: usize = 4;
const VOFFSET_BYTES: usize = 2;
const TIME_MS_BYTES: usize = 8;

const _: () = assert!(UOFFSET_BYTES == size_of::<flatbuffers::UOffsetT>());
const _: () = assert!(SOFFSET_BYTES == size_of::<flatbuffers::SOffsetT>());
const _: () = assert!(VOFFSET_BYTES == size_of::<flatbuffers::VOffsetT>());
const _: () = assert!(TIME_MS_BYTES == size_of::<i64>());
// `Verifier::field` reads slots as `u16`s at even offsets past the vtable's
// two header fields.
const _: () = {
    let slots = [
        fb::Event::VT_ID,
        fb::Event::VT_SOURCE,
        fb::Event::VT_SPECVERSION,
        fb::Event::VT_TYPE_,
        fb::Event::VT_SUBJECT,
        fb::Event::VT_TIME_MS,
        fb::Event::VT_DATACONTENTTYPE,
        fb::Event::VT_ATTRIBUTES,
        fb::Event::VT_DATA,
        fb::Attribute::VT_KEY,
        fb::Attribute::VT_VALUE,
    ];
    let mut i = 0;
    while i < slots.len() {
        assert!(slots[i].is_multiple_of(2) && slots[i] >= 4);
        i += 1;
    }
};

/// Why `verify` rejected a buffer: the first check that failed, in the
/// generic verifier's order. Small and `Copy` so the accept path carries no
/// large error value; `InvalidFlatbuffer::from` gives the generic verifier's
/// error for it, without that verifier's field trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reject {
    /// A `ty` read at `position` is not aligned to `ty`'s alignment.
    Unaligned {
        position: usize,
        ty: &'static str,
    },
    /// The bytes `start..end` run past the end of the buffer.
    OutOfBounds {
        start: usize,
        end: usize,
    },
    /// The table at `position` has a vtable offset leading outside the
    /// buffer.
    SignedOffsetOutOfBounds {
        soffset: i32,
        position: usize,
    },
    /// The string in `start..end` is not UTF-8.
    Utf8 {
        error: Utf8Error,
        start: usize,
        end: usize,
    },
    /// The string in `start..end` is not followed by a 0 byte.
    MissingNullTerminator {
        start: usize,
        end: usize,
    },
    /// A required field is absent (named as the generated verifier names
    /// it, e.g. `type_`).
    MissingRequired {
        field: &'static str,
    },
    TooManyTables,
    ApparentSizeTooLarge,
    DepthLimitReached,
    /// The buffer is `len` bytes, more than `EVENT_BYTES_MAX`: larger than
    /// any flatbuffer may be. (`verify_event` reports this as
    /// `DecodeError::TooLarge` before verifying.)
    TooLarge {
        len: usize,
    },
}

impl From<Reject> for InvalidFlatbuffer {
    fn from(reject: Reject) -> InvalidFlatbuffer {
        match reject {
            Reject::Unaligned { position, ty } => InvalidFlatbuffer::Unaligned {
                position,
                unaligned_type: ty.into(),
                error_trace: Default::default(),
            },
            Reject::OutOfBounds { start, end } => InvalidFlatbuffer::RangeOutOfBounds {
                range: start..end,
                error_trace: Default::default(),
            },
            Reject::SignedOffsetOutOfBounds { soffset, position } => {
                InvalidFlatbuffer::SignedOffsetOutOfBounds {
                    soffset,
                    position,
                    error_trace: Default::default(),
                }
            }
            Reject::Utf8 { error, start, end } => InvalidFlatbuffer::Utf8Error {
                error,
                range: start..end,
                error_trace: Default::default(),
            },
            Reject::MissingNullTerminator { start, end } => {
                InvalidFlatbuffer::MissingNullTerminator {
                    range: start..end,
                    error_trace: Default::default(),
                }
            }
            Reject::MissingRequired { field } => InvalidFlatbuffer::MissingRequiredField {
                required: field.into(),
                error_trace: Default::default(),
            },
            Reject::TooManyTables => InvalidFlatbuffer::TooManyTables,
            Reject::ApparentSizeTooLarge => InvalidFlatbuffer::ApparentSizeTooLarge,
            Reject::DepthLimitReached => InvalidFlatbuffer::DepthLimitReached,
            // The nearest of the generic verifier's errors: the buffer is
            // larger than a flatbuffer can be.
            Reject::TooLarge { .. } => InvalidFlatbuffer::ApparentSizeTooLarge,
        }
    }
}

/// Verifies `buf` as an `Event` flatbuffer under `options` and returns its
/// root table.
pub(crate) fn event<'b>(buf: &'b [u8], options: &VerifierOptions) -> Result<fb::Event<'b>, Reject> {
    verify(buf, options)?;
    // SAFETY: `verify` accepted `buf`. It accepts only buffers that
    // `flatbuffers::root_with_opts::<fb::Event>` accepts with the same
    // options (it runs every check that verifier runs for this schema; see
    // the module header, and `tests::mutations_agree_with_the_generic_verifier`),
    // and that verifier itself returns `root_unchecked::<fb::Event>(buf)`
    // once it has accepted a buffer: the accessors of the returned table
    // only reach offsets, strings, vectors and sub-tables checked above.
    #[expect(
        unsafe_code,
        reason = "the one unchecked root constructor, after the specialised verifier"
    )]
    let event = unsafe { flatbuffers::root_unchecked::<fb::Event<'b>>(buf) };
    Ok(event)
}

/// Verifies `buf` as an `Event` flatbuffer under `options`, returning the
/// root table's position. See the module header for what is checked.
pub(crate) fn verify(buf: &[u8], options: &VerifierOptions) -> Result<usize, Reject> {
    if buf.len() > EVENT_BYTES_MAX {
        return Err(Reject::TooLarge { len: buf.len() });
    }
    let mut v = Verifier::new(buf, options);
    let result = v.event();
    v.settle(result)
}

/// `position + offset`, for a `position` inside the buffer (plus at most a
/// vtable slot or a header) and an `offset` read from a `u32` or a vector
/// length in bytes: exact where `usize` has 64 bits, since the sum stays
/// below 2^35, and saturating (as the generic verifier's arithmetic is)
/// where it is narrower, so an overflowing sum is out of bounds either way.
#[inline(always)]
fn offset_by(position: usize, offset: usize) -> usize {
    if usize::BITS >= 64 {
        position + offset
    } else {
        position.saturating_add(offset)
    }
}

/// One verification's state, and the checks every table, field, string
/// and vector gets, each exactly as the generic verifier runs it. Shared
/// with `frame::verify`, which checks `Frame`s with a `Publish` body the
/// same way.
pub(crate) struct Verifier<'b, 'o> {
    buf: &'b [u8],
    options: &'o VerifierOptions,
    /// Bytes visited so far, counted as the generic verifier counts them:
    /// shared sub-objects count once per visit. It cannot overflow: each
    /// of at most `len / 4` tables adds less than `2 * len + 2^17`, and
    /// `len <= EVENT_BYTES_MAX`, so it stays below 2^63.
    apparent_bytes: u64,
    /// Tables visited so far.
    tables: usize,
}

impl<'b, 'o> Verifier<'b, 'o> {
    /// A verifier at the start of `buf`, which must be at most
    /// `EVENT_BYTES_MAX` bytes (callers check, and reject or fall back).
    pub(crate) fn new(buf: &'b [u8], options: &'o VerifierOptions) -> Verifier<'b, 'o> {
        debug_assert!(buf.len() <= EVENT_BYTES_MAX);
        Verifier {
            buf,
            options,
            apparent_bytes: 0,
            tables: 0,
        }
    }

    /// `result`, unless the apparent size is over its limit, which is
    /// compared lazily (see the module header): once over the limit, the
    /// generic verifier would have stopped there, whatever came later.
    pub(crate) fn settle<T>(&self, result: Result<T, Reject>) -> Result<T, Reject> {
        if self.apparent_bytes > self.options.max_apparent_size as u64 {
            return Err(Reject::ApparentSizeTooLarge);
        }
        result
    }

    /// Bytes visited so far (see `apparent_bytes`).
    #[cfg(test)]
    pub(crate) fn apparent_bytes(&self) -> u64 {
        self.apparent_bytes
    }

    /// Tables visited so far.
    #[cfg(test)]
    pub(crate) fn tables(&self) -> usize {
        self.tables
    }
}

impl<'b> Verifier<'b, '_> {
    fn event(&mut self) -> Result<usize, Reject> {
        let root = self.uoffset(0)?;
        let vtable = self.table(root, EVENT_DEPTH)?;
        self.string_field(root, vtable, fb::Event::VT_ID, Some("id"))?;
        self.string_field(root, vtable, fb::Event::VT_SOURCE, Some("source"))?;
        self.string_field(root, vtable, fb::Event::VT_SPECVERSION, None)?;
        self.string_field(root, vtable, fb::Event::VT_TYPE_, Some("type_"))?;
        self.string_field(root, vtable, fb::Event::VT_SUBJECT, None)?;
        if let Some(at) = self.field(root, vtable, fb::Event::VT_TIME_MS) {
            self.aligned::<i64>(at)?;
            self.fixed::<TIME_MS_BYTES>(at)?;
        }
        self.string_field(root, vtable, fb::Event::VT_DATACONTENTTYPE, None)?;
        if let Some(at) = self.field(root, vtable, fb::Event::VT_ATTRIBUTES) {
            self.attributes(at)?;
        }
        if let Some(at) = self.field(root, vtable, fb::Event::VT_DATA) {
            self.bytes(at)?;
        }
        Ok(root)
    }

    /// The `[Attribute]` vector whose uoffset is at `at`.
    fn attributes(&mut self, at: usize) -> Result<(), Reject> {
        self.tables_vector(at, Self::attribute)
    }

    /// Checks the vector of tables whose uoffset is at `at`: its length and
    /// range, then each element's uoffset, and `table` on the table each
    /// leads to, in order.
    #[inline(always)]
    pub(crate) fn tables_vector(
        &mut self,
        at: usize,
        mut table: impl FnMut(&mut Self, usize) -> Result<(), Reject>,
    ) -> Result<(), Reject> {
        let vector = self.follow(at)?;
        let len = self.uoffset(vector)?;
        // `vector` is 4-aligned, so its elements are too.
        let start = vector + UOFFSET_BYTES;
        let elements = self.span(start, len.saturating_mul(UOFFSET_BYTES))?;
        for (i, element) in elements.chunks_exact(UOFFSET_BYTES).enumerate() {
            self.apparent_bytes += UOFFSET_BYTES as u64;
            let mut offset = [0; UOFFSET_BYTES];
            offset.copy_from_slice(element);
            let position = start + i * UOFFSET_BYTES;
            table(
                self,
                offset_by(position, u32::from_le_bytes(offset) as usize),
            )?;
        }
        Ok(())
    }

    /// Checks the `[ubyte]` vector whose uoffset is at `at` and returns its
    /// bytes.
    #[inline(always)]
    pub(crate) fn bytes(&mut self, at: usize) -> Result<&'b [u8], Reject> {
        let vector = self.follow(at)?;
        let len = self.uoffset(vector)?;
        self.span(vector + UOFFSET_BYTES, len)
    }

    fn attribute(&mut self, table: usize) -> Result<(), Reject> {
        let vtable = self.table(table, ATTRIBUTE_DEPTH)?;
        self.string_field(table, vtable, fb::Attribute::VT_KEY, Some("key"))?;
        self.string_field(table, vtable, fb::Attribute::VT_VALUE, Some("value"))
    }

    /// Checks the table at `table` (its soffset and vtable), counts it, and
    /// returns its vtable's bytes.
    pub(crate) fn table(&mut self, table: usize, depth: usize) -> Result<&'b [u8], Reject> {
        self.aligned::<i32>(table)?;
        let soffset = i32::from_le_bytes(self.fixed::<SOFFSET_BYTES>(table)?);
        // A positive soffset points backwards.
        let vtable = if soffset > 0 {
            table.checked_sub(soffset.unsigned_abs() as usize)
        } else {
            table.checked_add(soffset.unsigned_abs() as usize)
        };
        let vtable = match vtable {
            Some(vtable) if vtable < self.buf.len() => vtable,
            _ => {
                return Err(Reject::SignedOffsetOutOfBounds {
                    soffset,
                    position: table,
                });
            }
        };
        self.aligned::<u16>(vtable)?;
        let vtable_bytes = u16::from_le_bytes(self.fixed::<VOFFSET_BYTES>(vtable)?) as usize;
        self.aligned::<u16>(vtable + vtable_bytes)?;
        let slots = self.span(vtable, vtable_bytes)?;
        self.tables += 1;
        if self.tables > self.options.max_tables {
            return Err(Reject::TooManyTables);
        }
        if depth > self.options.max_depth {
            return Err(Reject::DepthLimitReached);
        }
        Ok(slots)
    }

    /// The position of the field in `slot` of the table at `table`, or
    /// `None` when the field is absent.
    #[inline(always)]
    pub(crate) fn field(
        &mut self,
        table: usize,
        vtable: &[u8],
        slot: flatbuffers::VOffsetT,
    ) -> Option<usize> {
        // Slots and `vtable.len()` are both even, so a slot either lies
        // wholly inside the vtable or wholly past it (absent).
        let slot = slot as usize;
        let bytes = vtable.get(slot..)?.first_chunk::<VOFFSET_BYTES>()?;
        self.apparent_bytes += VOFFSET_BYTES as u64;
        match u16::from_le_bytes(*bytes) {
            0 => None,
            offset => Some(table + offset as usize),
        }
    }

    /// Checks the string field in `slot`, which must be present when
    /// `required` names it.
    #[inline(always)]
    pub(crate) fn string_field(
        &mut self,
        table: usize,
        vtable: &[u8],
        slot: flatbuffers::VOffsetT,
        required: Option<&'static str>,
    ) -> Result<(), Reject> {
        match (self.field(table, vtable, slot), required) {
            (Some(at), _) => self.string(at),
            (None, Some(field)) => Err(Reject::MissingRequired { field }),
            (None, None) => Ok(()),
        }
    }

    /// Checks the string whose uoffset is at `at`.
    #[inline(always)]
    pub(crate) fn string(&mut self, at: usize) -> Result<(), Reject> {
        let string = self.follow(at)?;
        let len = self.uoffset(string)?;
        let start = string + UOFFSET_BYTES;
        let bytes = self.span(start, len)?;
        let end = start + len;
        if !bytes.is_ascii()
            && let Err(error) = core::str::from_utf8(bytes)
        {
            return Err(Reject::Utf8 { error, start, end });
        }
        if !self.options.ignore_missing_null_terminator && self.buf.get(end) != Some(&0) {
            return Err(Reject::MissingNullTerminator { start, end });
        }
        Ok(())
    }

    /// Reads the uoffset at `at` and returns the position it leads to.
    #[inline(always)]
    pub(crate) fn follow(&mut self, at: usize) -> Result<usize, Reject> {
        Ok(offset_by(at, self.uoffset(at)?))
    }

    /// Reads the `u32` (an offset or a length) at `at`.
    #[inline(always)]
    pub(crate) fn uoffset(&mut self, at: usize) -> Result<usize, Reject> {
        self.aligned::<u32>(at)?;
        Ok(u32::from_le_bytes(self.fixed::<UOFFSET_BYTES>(at)?) as usize)
    }

    #[inline(always)]
    pub(crate) fn aligned<T>(&self, at: usize) -> Result<(), Reject> {
        if at.is_multiple_of(align_of::<T>()) {
            Ok(())
        } else {
            Err(Reject::Unaligned {
                position: at,
                ty: type_name::<T>(),
            })
        }
    }

    /// The `N` bytes at `at`, counted towards the apparent size (compared
    /// with its limit later: see `verify`).
    #[inline(always)]
    pub(crate) fn fixed<const N: usize>(&mut self, at: usize) -> Result<[u8; N], Reject> {
        let bytes = at
            .checked_add(N)
            .and_then(|end| self.buf.get(at..end))
            .and_then(|bytes| bytes.first_chunk::<N>());
        let Some(bytes) = bytes else {
            return Err(Reject::OutOfBounds {
                start: at,
                end: at.saturating_add(N),
            });
        };
        self.apparent_bytes += N as u64;
        Ok(*bytes)
    }

    /// The `len` bytes at `start`, counted towards the apparent size and
    /// compared with its limit, so that no more work is done on a buffer
    /// whose shared parts add up past it.
    #[inline(always)]
    pub(crate) fn span(&mut self, start: usize, len: usize) -> Result<&'b [u8], Reject> {
        let bytes = start
            .checked_add(len)
            .and_then(|end| self.buf.get(start..end));
        let Some(bytes) = bytes else {
            return Err(Reject::OutOfBounds {
                start,
                end: start.saturating_add(len),
            });
        };
        self.apparent_bytes += len as u64;
        if self.apparent_bytes > self.options.max_apparent_size as u64 {
            return Err(Reject::ApparentSizeTooLarge);
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use flatbuffers::{FlatBufferBuilder, WIPOffset};

    use super::*;
    use crate::event::{Event, EventRef, decode_event, encode_event, verify_event};
    use crate::frame::{DecodeError, Limits};
    use crate::tests::{Rng, run_cases};
    use crate::verify_mutations::{Layout, MUTATIONS, Mutation, mutate, put};

    fn generic<'b>(
        buf: &'b [u8],
        options: &VerifierOptions,
    ) -> Result<fb::Event<'b>, InvalidFlatbuffer> {
        flatbuffers::root_with_opts::<fb::Event>(options, buf)
    }

    /// An error's first line: its variant and where, without the generic
    /// verifier's field trace (which `Reject` does not carry).
    fn headline(error: &InvalidFlatbuffer) -> String {
        error.to_string().lines().next().unwrap_or("").to_owned()
    }

    /// Everything the generated accessors read from an `Event`.
    #[derive(Debug, PartialEq)]
    struct Fields<'a> {
        loc: usize,
        id: &'a str,
        source: &'a str,
        specversion: Option<&'a str>,
        ty: &'a str,
        subject: Option<&'a str>,
        time_ms: Option<i64>,
        datacontenttype: Option<&'a str>,
        attributes: Option<Vec<(&'a str, &'a str)>>,
        data: Option<&'a [u8]>,
    }

    fn fields(event: fb::Event<'_>) -> Fields<'_> {
        Fields {
            loc: event._tab.loc(),
            id: event.id(),
            source: event.source(),
            specversion: event.specversion(),
            ty: event.type_(),
            subject: event.subject(),
            time_ms: event.time_ms(),
            datacontenttype: event.datacontenttype(),
            attributes: event
                .attributes()
                .map(|list| list.iter().map(|a| (a.key(), a.value())).collect()),
            data: event.data().map(|d| d.bytes()),
        }
    }

    // ------------------------------------------------------ valid events

    /// The builder's encoding of `event`, as this crate wrote events
    /// before its own writer (and as other languages' clients write them).
    fn built(event: &EventRef<'_>) -> Vec<u8> {
        crate::event::reference::encode(event, [])
    }

    fn loadgen_event(encode: fn(&EventRef<'_>) -> Vec<u8>, data_bytes: usize) -> Vec<u8> {
        let data: Vec<u8> = (0..data_bytes).map(|i| b'a' + (i % 26) as u8).collect();
        encode(&EventRef {
            id: "lg7f3a--100000-0",
            source: "loadgen-0",
            specversion: crate::SPECVERSION,
            ty: "loadgen.root",
            subject: Some("lg-100000"),
            data: &data,
            ..EventRef::default()
        })
    }

    /// An `Event` built with the generated builder directly, for shapes
    /// neither `encode_event` nor `built` writes: no `specversion`, empty vectors,
    /// strings and tables shared between fields.
    fn shared_event(copies: usize, key_bytes: usize, empty_vectors: bool) -> Vec<u8> {
        let mut fbb = FlatBufferBuilder::new();
        let key = fbb.create_string(&"k".repeat(key_bytes));
        let attribute = fb::Attribute::create(
            &mut fbb,
            &fb::AttributeArgs {
                key: Some(key),
                value: Some(key),
            },
        );
        let attributes = fbb.create_vector(&vec![attribute; copies]);
        let empty: &[WIPOffset<fb::Attribute<'_>>] = &[];
        let empty_attributes = fbb.create_vector(empty);
        let empty_data = fbb.create_vector::<u8>(&[]);
        let id = fbb.create_string("shared");
        let event = fb::Event::create(
            &mut fbb,
            &fb::EventArgs {
                id: Some(id),
                source: Some(id),
                type_: Some(id),
                time_ms: Some(i64::MIN),
                attributes: Some(if empty_vectors {
                    empty_attributes
                } else {
                    attributes
                }),
                data: empty_vectors.then_some(empty_data),
                ..fb::EventArgs::default()
            },
        );
        fbb.finish_minimal(event);
        fbb.finished_data().to_vec()
    }

    /// Valid events of every shape the differential test starts from: as
    /// the builder lays them out, then (`_written`) as `encode_event` does.
    fn samples() -> Vec<(&'static str, Vec<u8>)> {
        let minimal = Event {
            id: "1".into(),
            source: "s".into(),
            ty: "t".into(),
            ..Event::default()
        };
        let full = Event {
            id: "evt-7".into(),
            source: "example-cloud-app".into(),
            specversion: "1.0".into(),
            ty: "service.created".into(),
            subject: Some("svc-42".into()),
            time_ms: Some(-5),
            datacontenttype: Some("application/json".into()),
            attributes: vec![
                ("tenant".into(), "acme".into()),
                ("region".into(), "eu".into()),
            ],
            data: b"{\"plan\":\"small\"}".to_vec(),
        };
        let many_attributes = Event {
            id: "many".into(),
            source: "src".into(),
            ty: "ty".into(),
            attributes: (0..40)
                .map(|i| ("k".repeat(i % 5), format!("v{i}-é")))
                .collect(),
            data: vec![0; 3],
            ..Event::default()
        };
        let unicode = Event {
            id: "ïd-日本".into(),
            source: "sourcé".into(),
            ty: "tÿpe-🦀".into(),
            subject: Some("sübject".into()),
            datacontenttype: Some("text/plain; charset=ütf-8".into()),
            attributes: vec![("ké".into(), "vä".into())],
            ..Event::default()
        };
        let large_data = Event {
            data: (0..16_384).map(|i| i as u8).collect(),
            time_ms: Some(i64::MAX),
            ..full.clone()
        };
        vec![
            ("minimal", built(&minimal.as_event_ref())),
            ("full", built(&full.as_event_ref())),
            ("loadgen_100", loadgen_event(built, 100)),
            ("loadgen_1k", loadgen_event(built, 1024)),
            ("many_attributes", built(&many_attributes.as_event_ref())),
            ("unicode", built(&unicode.as_event_ref())),
            ("large_data", built(&large_data.as_event_ref())),
            ("shared", shared_event(8, 5, false)),
            ("empty_vectors", shared_event(0, 0, true)),
            ("minimal_written", minimal.encode()),
            ("full_written", full.encode()),
            ("loadgen_100_written", loadgen_event(encode_event, 100)),
            ("loadgen_1k_written", loadgen_event(encode_event, 1024)),
            ("many_attributes_written", many_attributes.encode()),
            ("unicode_written", unicode.encode()),
            ("large_data_written", large_data.encode()),
        ]
    }

    #[derive(Clone, Copy)]
    enum Kind {
        String,
        Scalar,
        Bytes,
        Attributes,
    }

    const EVENT_KINDS: [(u16, Kind); 9] = [
        (fb::Event::VT_ID, Kind::String),
        (fb::Event::VT_SOURCE, Kind::String),
        (fb::Event::VT_SPECVERSION, Kind::String),
        (fb::Event::VT_TYPE_, Kind::String),
        (fb::Event::VT_SUBJECT, Kind::String),
        (fb::Event::VT_TIME_MS, Kind::Scalar),
        (fb::Event::VT_DATACONTENTTYPE, Kind::String),
        (fb::Event::VT_ATTRIBUTES, Kind::Attributes),
        (fb::Event::VT_DATA, Kind::Bytes),
    ];
    const ATTRIBUTE_KINDS: [(u16, Kind); 2] = [
        (fb::Attribute::VT_KEY, Kind::String),
        (fb::Attribute::VT_VALUE, Kind::String),
    ];

    fn u16_at(buf: &[u8], at: usize) -> usize {
        u16::from_le_bytes(buf[at..at + 2].try_into().unwrap()) as usize
    }

    fn u32_at(buf: &[u8], at: usize) -> usize {
        u32::from_le_bytes(buf[at..at + 4].try_into().unwrap()) as usize
    }

    /// Where a valid event keeps the things worth corrupting, found by
    /// walking it (trusted: it came from the builder, or verified).
    fn layout(buf: &[u8]) -> Layout {
        let mut layout = Layout::new(&[0, 2, 4, 6]);
        layout.uoffsets.push(0);
        walk_table(buf, u32_at(buf, 0), &EVENT_KINDS, &mut layout);
        layout
    }

    fn walk_table(buf: &[u8], table: usize, kinds: &[(u16, Kind)], layout: &mut Layout) {
        layout.tables.push(table);
        let soffset = i32::from_le_bytes(buf[table..table + 4].try_into().unwrap());
        let vtable = (table as i64 - i64::from(soffset)) as usize;
        layout.vtables.push(vtable);
        let vtable_bytes = u16_at(buf, vtable);
        layout
            .slots
            .extend((4..vtable_bytes).step_by(2).map(|s| vtable + s));
        for &(slot, kind) in kinds {
            let slot = usize::from(slot);
            if slot >= vtable_bytes || u16_at(buf, vtable + slot) == 0 {
                continue;
            }
            let at = table + u16_at(buf, vtable + slot);
            if matches!(kind, Kind::Scalar) {
                continue;
            }
            layout.uoffsets.push(at);
            let target = at + u32_at(buf, at);
            layout.lengths.push(target);
            let len = u32_at(buf, target);
            match kind {
                Kind::String => {
                    layout.string_bytes.extend(target + 4..target + 4 + len);
                    layout.terminators.push(target + 4 + len);
                }
                Kind::Attributes => {
                    for i in 0..len {
                        let element = target + 4 + 4 * i;
                        layout.uoffsets.push(element);
                        let child = element + u32_at(buf, element);
                        walk_table(buf, child, &ATTRIBUTE_KINDS, layout);
                    }
                }
                Kind::Scalar | Kind::Bytes => {}
            }
        }
    }

    // --------------------------------------------------------- mutation

    /// Limits for one case: mostly the defaults, sometimes tight enough
    /// that the table, depth and apparent-size limits decide.
    fn random_limits(rng: &mut Rng, len: usize, tables: usize) -> Limits {
        if rng.below(3) != 0 {
            return Limits::DEFAULT;
        }
        Limits {
            frame_bytes_max: match rng.below(4) {
                0 => len / 4 + rng.below(len),
                1 => len,
                2 => 2 * len,
                _ => Limits::DEFAULT.frame_bytes_max,
            },
            depth_max: [0, 1, 2, 8][rng.below(4)],
            tables_max: match rng.below(5) {
                0 => rng.below(3),
                1 => rng.below(tables + 1),
                2 => tables,
                _ => Limits::DEFAULT.tables_max,
            },
        }
    }

    /// Verdicts of one kind of case.
    #[derive(Debug, Default, Clone, Copy)]
    struct Tally {
        cases: u64,
        both_accept: u64,
        both_reject: u64,
        /// Accepted by the specialised verifier only: must never happen.
        new_only: u64,
        /// Accepted by the generic verifier only.
        generic_only: u64,
        /// Both rejected, but with a different first failure.
        different_error: u64,
    }

    impl Tally {
        fn add(&mut self, other: &Tally) {
            self.cases += other.cases;
            self.both_accept += other.both_accept;
            self.both_reject += other.both_reject;
            self.new_only += other.new_only;
            self.generic_only += other.generic_only;
            self.different_error += other.different_error;
        }
    }

    /// Runs both verifiers over `buf` under `limits`, counts the verdict
    /// in `tally`, and describes any disagreement in `disagreements`. On
    /// agreement to accept, every accessor must read the same through both;
    /// `verify_event` must give the specialised verdict, and on rejection
    /// the generic verifier's error exactly.
    fn compare(buf: &[u8], limits: &Limits, tally: &mut Tally, disagreements: &mut Vec<String>) {
        let options = limits.verifier_options();
        tally.cases += 1;
        let ours = verify(buf, &options);
        let theirs = generic(buf, &options);
        match (&ours, &theirs) {
            (Ok(root), Ok(event)) => {
                tally.both_accept += 1;
                assert_eq!(*root, event._tab.loc());
                let ours = event_of(buf, &options);
                assert_eq!(fields(ours), fields(*event));
            }
            (Err(reject), Err(error)) => {
                tally.both_reject += 1;
                let ours = headline(&InvalidFlatbuffer::from(*reject));
                if ours != headline(error) {
                    tally.different_error += 1;
                    disagreements.push(format!("new: {ours} / generic: {error}"));
                }
            }
            (Ok(_), Err(error)) => {
                tally.new_only += 1;
                disagreements.push(format!("only the new verifier accepts; generic: {error}"));
            }
            (Err(reject), Ok(_)) => {
                tally.generic_only += 1;
                disagreements.push(format!(
                    "only the generic verifier accepts; new: {reject:?}"
                ));
            }
        }
        if buf.len() <= limits.frame_bytes_max {
            match verify_event(buf, limits) {
                Ok(event) => {
                    assert!(ours.is_ok());
                    let expected = fields(*theirs.as_ref().unwrap());
                    assert_eq!(fields(event), expected);
                    let decoded = decode_event(buf, limits).unwrap();
                    assert_eq!(decoded.id, expected.id);
                    assert_eq!(decoded.ty, expected.ty);
                    assert_eq!(decoded.attributes, expected.attributes.unwrap_or_default());
                    assert_eq!(decoded.data, expected.data.unwrap_or_default());
                }
                Err(DecodeError::Malformed(error)) => {
                    assert!(ours.is_err());
                    if let Err(theirs) = theirs {
                        assert_eq!(error, theirs, "verify_event reports the traced error");
                    }
                }
                Err(other) => panic!("verify_event: unexpected {other}"),
            }
        }
    }

    fn event_of<'b>(buf: &'b [u8], options: &VerifierOptions) -> fb::Event<'b> {
        event(buf, options).unwrap()
    }

    /// Cases for the differential test; `HADRON_WIRE_VERIFY_CASES`
    /// overrides it for a longer run.
    fn differential_cases() -> u64 {
        std::env::var("HADRON_WIRE_VERIFY_CASES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60_000)
    }

    /// The differential test: valid events of every sample shape, each
    /// mutated once (or, one case in five, two or three times), under
    /// default or tight limits. The specialised verifier must never accept
    /// what the generic one rejects; the test also requires the reverse,
    /// and the same first failure for every buffer both reject.
    #[test]
    fn mutations_agree_with_the_generic_verifier() {
        let samples: Vec<_> = samples()
            .into_iter()
            .map(|(name, buf)| {
                let layout = layout(&buf);
                (name, buf, layout)
            })
            .collect();
        // An event has no union, so no tag to change: leave `Tag` out
        // rather than let it fall back to a bit flip.
        let mutations: Vec<Mutation> = MUTATIONS
            .into_iter()
            .filter(|&m| m != Mutation::Tag)
            .collect();
        let mut tallies: BTreeMap<Mutation, Tally> = BTreeMap::new();
        let mut disagreements = Vec::new();
        run_cases(
            "mutations_agree_with_the_generic_verifier",
            differential_cases(),
            |rng| {
                let (_, valid, layout) = &samples[rng.below(samples.len())];
                let mut buf = valid.clone();
                let first = mutations[rng.below(mutations.len())];
                mutate(rng, &mut buf, layout, first);
                if rng.below(5) == 0 {
                    for _ in 0..1 + rng.below(2) {
                        let next = mutations[rng.below(mutations.len())];
                        mutate(rng, &mut buf, layout, next);
                    }
                }
                let limits = random_limits(rng, buf.len(), layout.tables.len());
                let tally = tallies.entry(first).or_default();
                compare(&buf, &limits, tally, &mut disagreements);
            },
        );
        let mut total = Tally::default();
        println!(
            "{:<14} {:>8} {:>12} {:>12} {:>9} {:>13} {:>16}",
            "mutation",
            "cases",
            "both accept",
            "both reject",
            "new only",
            "generic only",
            "different error"
        );
        for (mutation, t) in &tallies {
            println!(
                "{:<14} {:>8} {:>12} {:>12} {:>9} {:>13} {:>16}",
                format!("{mutation:?}"),
                t.cases,
                t.both_accept,
                t.both_reject,
                t.new_only,
                t.generic_only,
                t.different_error
            );
            total.add(t);
        }
        println!("total: {total:?}");
        for d in disagreements.iter().take(10) {
            println!("disagreement: {d}");
        }
        assert_eq!(total.new_only, 0, "the new verifier accepted a bad buffer");
        assert_eq!(total.generic_only, 0, "the new verifier is stricter");
        assert_eq!(total.different_error, 0, "the first failures differ");
        // The mutations must reach both verdicts, or the test proves little.
        assert!(total.both_accept > total.cases / 20, "{total:?}");
        assert!(total.both_reject > total.cases / 2, "{total:?}");
    }

    // ------------------------------------------------------ named cases

    #[test]
    fn encoded_events_are_accepted() {
        for (name, buf) in samples() {
            let options = Limits::DEFAULT.verifier_options();
            let theirs = generic(&buf, &options).unwrap();
            let ours = event(&buf, &options).unwrap_or_else(|e| panic!("{name}: {e:?}"));
            assert_eq!(fields(ours), fields(theirs), "{name}");
        }
        run_cases("encoded_events_are_accepted", 2000, |rng| {
            let event = Event {
                id: rng.string_upto(16),
                source: rng.string_upto(16),
                ty: rng.string_upto(16),
                subject: (rng.below(2) == 0).then(|| rng.string_upto(8)),
                time_ms: (rng.below(2) == 0).then(|| rng.next_u64() as i64),
                datacontenttype: (rng.below(2) == 0).then(|| rng.string_upto(8)),
                attributes: (0..rng.below(6))
                    .map(|_| (rng.string_upto(6), rng.string_upto(6)))
                    .collect(),
                data: rng.bytes_upto(300),
                ..Event::default()
            };
            let built = built(&event.as_event_ref());
            let written = event.encode();
            for buf in [&built, &written] {
                let decoded = decode_event(buf, &Limits::DEFAULT).unwrap();
                assert_eq!(decoded.to_event(), event);
            }
            assert_eq!(work(&written), work(&built));
        });
    }

    /// What verifying a valid `buf` counts against the limits: its
    /// apparent size and its tables.
    fn work(buf: &[u8]) -> (u64, usize) {
        let options = Limits::DEFAULT.verifier_options();
        let mut v = Verifier {
            buf,
            options: &options,
            apparent_bytes: 0,
            tables: 0,
        };
        v.event().unwrap();
        (v.apparent_bytes, v.tables)
    }

    /// `encode_event` lays an event out differently from the builder, but
    /// the verifiers do the same work on it (the same vtables, strings,
    /// vectors and tables), so an event within the limits one way is
    /// within them the other way.
    #[test]
    fn written_events_count_as_built_ones() {
        let samples = samples();
        let mut pairs = 0;
        for (name, written) in &samples {
            let Some(built_name) = name.strip_suffix("_written") else {
                continue;
            };
            let (_, built) = samples.iter().find(|(n, _)| *n == built_name).unwrap();
            assert_eq!(work(written), work(built), "{name}");
            pairs += 1;
        }
        assert_eq!(pairs, 7);
    }

    /// `buf` with the `u32` at `at` replaced.
    fn with_u32(buf: &[u8], at: usize, value: u32) -> Vec<u8> {
        let mut buf = buf.to_vec();
        put(&mut buf, at, &value.to_le_bytes());
        buf
    }

    fn with_u16(buf: &[u8], at: usize, value: u16) -> Vec<u8> {
        let mut buf = buf.to_vec();
        put(&mut buf, at, &value.to_le_bytes());
        buf
    }

    /// The vtable slot position of `slot` in the table at `table`.
    fn slot_at(buf: &[u8], table: usize, slot: u16) -> usize {
        let soffset = i32::from_le_bytes(buf[table..table + 4].try_into().unwrap());
        (table as i64 - i64::from(soffset)) as usize + usize::from(slot)
    }

    /// The position of the uoffset or scalar in `slot` of the table at
    /// `table`.
    fn field_at(buf: &[u8], table: usize, slot: u16) -> usize {
        table + u16_at(buf, slot_at(buf, table, slot))
    }

    /// The position of the length of the string or vector in `slot`.
    fn target_of(buf: &[u8], table: usize, slot: u16) -> usize {
        let at = field_at(buf, table, slot);
        at + u32_at(buf, at)
    }

    #[test]
    fn each_failure_is_the_generic_verifiers_first_failure() {
        let full = samples().remove(1).1;
        let len = full.len();
        let root = u32_at(&full, 0);
        let first_attribute = {
            let vector = target_of(&full, root, fb::Event::VT_ATTRIBUTES);
            vector + 4 + u32_at(&full, vector + 4)
        };
        let id = target_of(&full, root, fb::Event::VT_ID);
        let id_len = u32_at(&full, id);
        // The string nearest the end: only its terminator and padding
        // (zeros, valid UTF-8) follow it.
        let last = layout(&full)
            .lengths
            .into_iter()
            .max_by_key(|&at| at + 4 + u32_at(&full, at))
            .unwrap();
        let time_ms = field_at(&full, root, fb::Event::VT_TIME_MS);
        let vtable = slot_at(&full, root, 0);
        let mut bad_utf8 = full.clone();
        bad_utf8[id + 4] = 0xff;
        let mut no_terminator = full.clone();
        no_terminator[id + 4 + id_len] = b'x';
        let misaligned_time = (time_ms - root + 4) as u16;
        let shared = shared_event(1000, 1024, false);

        let default = Limits::DEFAULT;
        let cases: Vec<(&str, Vec<u8>, Limits, Reject)> = vec![
            (
                "empty",
                Vec::new(),
                default,
                Reject::OutOfBounds { start: 0, end: 4 },
            ),
            (
                "root offset unaligned",
                with_u32(&full, 0, 2),
                default,
                Reject::Unaligned {
                    position: 2,
                    ty: "i32",
                },
            ),
            (
                "root offset past the end",
                with_u32(&full, 0, len as u32),
                default,
                Reject::OutOfBounds {
                    start: len,
                    end: len + 4,
                },
            ),
            (
                "vtable before the buffer",
                with_u32(&full, root, root as u32 + 2),
                default,
                Reject::SignedOffsetOutOfBounds {
                    soffset: root as i32 + 2,
                    position: root,
                },
            ),
            (
                "vtable past the end",
                with_u32(&full, root, (root as i32 - len as i32) as u32),
                default,
                Reject::SignedOffsetOutOfBounds {
                    soffset: root as i32 - len as i32,
                    position: root,
                },
            ),
            (
                "vtable unaligned",
                with_u32(&full, root, (root - vtable - 1) as u32),
                default,
                Reject::Unaligned {
                    position: vtable + 1,
                    ty: "u16",
                },
            ),
            (
                "vtable length odd",
                with_u16(&full, vtable, 21),
                default,
                Reject::Unaligned {
                    position: vtable + 21,
                    ty: "u16",
                },
            ),
            (
                "vtable past the end",
                with_u16(&full, vtable, 0xfffe),
                default,
                Reject::OutOfBounds {
                    start: vtable,
                    end: vtable + 0xfffe,
                },
            ),
            (
                "id absent",
                with_u16(&full, slot_at(&full, root, fb::Event::VT_ID), 0),
                default,
                Reject::MissingRequired { field: "id" },
            ),
            (
                "type beyond a short vtable",
                with_u16(&full, vtable, fb::Event::VT_TYPE_),
                default,
                Reject::MissingRequired { field: "type_" },
            ),
            (
                "attribute value absent",
                with_u16(
                    &full,
                    slot_at(&full, first_attribute, fb::Attribute::VT_VALUE),
                    0,
                ),
                default,
                Reject::MissingRequired { field: "value" },
            ),
            (
                "string runs past the end",
                with_u32(&full, id, (len - id - 4 + 1) as u32),
                default,
                Reject::OutOfBounds {
                    start: id + 4,
                    end: len + 1,
                },
            ),
            (
                "last string ends at the end, no terminator",
                with_u32(&full, last, (len - last - 4) as u32),
                default,
                Reject::MissingNullTerminator {
                    start: last + 4,
                    end: len,
                },
            ),
            (
                "string not UTF-8",
                bad_utf8.clone(),
                default,
                Reject::Utf8 {
                    error: core::str::from_utf8(&bad_utf8[id + 4..id + 4 + id_len]).unwrap_err(),
                    start: id + 4,
                    end: id + 4 + id_len,
                },
            ),
            (
                "terminator overwritten",
                no_terminator,
                default,
                Reject::MissingNullTerminator {
                    start: id + 4,
                    end: id + 4 + id_len,
                },
            ),
            (
                "time_ms unaligned",
                with_u16(
                    &full,
                    slot_at(&full, root, fb::Event::VT_TIME_MS),
                    misaligned_time,
                ),
                default,
                Reject::Unaligned {
                    position: root + usize::from(misaligned_time),
                    ty: "i64",
                },
            ),
            (
                "attribute count enlarged",
                with_u32(
                    &full,
                    target_of(&full, root, fb::Event::VT_ATTRIBUTES),
                    0x4000_0000,
                ),
                default,
                Reject::OutOfBounds {
                    start: target_of(&full, root, fb::Event::VT_ATTRIBUTES) + 4,
                    end: target_of(&full, root, fb::Event::VT_ATTRIBUTES) + 4 + (1 << 32),
                },
            ),
            (
                "no depth for the event",
                full.clone(),
                Limits {
                    depth_max: 0,
                    ..default
                },
                Reject::DepthLimitReached,
            ),
            (
                "no depth for attributes",
                full.clone(),
                Limits {
                    depth_max: 1,
                    ..default
                },
                Reject::DepthLimitReached,
            ),
            (
                "too many tables",
                full.clone(),
                Limits {
                    tables_max: 2,
                    ..default
                },
                Reject::TooManyTables,
            ),
            (
                "one shared attribute table, 1000 times",
                shared.clone(),
                Limits {
                    tables_max: 1000,
                    ..default
                },
                Reject::TooManyTables,
            ),
            (
                "one shared 1 KiB key, 2000 times",
                shared.clone(),
                Limits {
                    frame_bytes_max: shared.len(),
                    ..default
                },
                Reject::ApparentSizeTooLarge,
            ),
        ];
        for (what, buf, limits, expected) in cases {
            let options = limits.verifier_options();
            assert_eq!(verify(&buf, &options), Err(expected), "{what}");
            let theirs = generic(&buf, &options).unwrap_err();
            assert_eq!(
                headline(&expected.into()),
                headline(&theirs),
                "{what}: the generic verifier fails first elsewhere"
            );
            assert_eq!(
                verify_event(&buf, &limits).map(fields),
                Err(DecodeError::Malformed(theirs)),
                "{what}"
            );
        }
        // Within the default limits, sharing is fine.
        assert!(verify_event(&shared, &default).is_ok());
    }

    /// Truncation at every byte offset of every sample, under the default
    /// limits: the same verdict and first failure from both verifiers.
    #[test]
    fn truncation_at_every_offset_agrees() {
        let mut tally = Tally::default();
        let mut disagreements = Vec::new();
        for (_, buf) in samples() {
            for end in 0..=buf.len() {
                compare(
                    &buf[..end],
                    &Limits::DEFAULT,
                    &mut tally,
                    &mut disagreements,
                );
            }
        }
        assert_eq!(disagreements, Vec::<String>::new(), "{tally:?}");
        assert!(tally.both_reject > tally.both_accept, "{tally:?}");
    }

    /// The apparent-size limit must stop the work, not only the verdict:
    /// 16,384 references to one attribute whose key and value are one
    /// 64 KiB string would have the verifier scan 2 GiB of UTF-8 if it
    /// compared the count only at the end. It may overshoot the limit by
    /// at most one span (at most the buffer) and a few fixed reads.
    #[test]
    fn apparent_size_limit_bounds_the_work() {
        let buf = shared_event(16_384, 64 << 10, false);
        let limits = Limits {
            frame_bytes_max: buf.len(),
            ..Limits::DEFAULT
        };
        let options = limits.verifier_options();
        let mut v = Verifier {
            buf: &buf,
            options: &options,
            apparent_bytes: 0,
            tables: 0,
        };
        assert_eq!(v.event(), Err(Reject::ApparentSizeTooLarge));
        let overshoot = v.apparent_bytes - options.max_apparent_size as u64;
        assert!(overshoot <= buf.len() as u64, "{overshoot}");
        assert_eq!(
            generic(&buf, &options).map(fields),
            Err(InvalidFlatbuffer::ApparentSizeTooLarge)
        );
    }
}
