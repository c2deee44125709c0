//! A writer for one `Event` flatbuffer (root table `Event`, plain finish, no
//! size prefix), without flatbuffers' builder: it sizes the event, reserves
//! that many bytes once, and appends the buffer to the caller's `Vec<u8>`
//! front to back. The builder writes back to front into its own buffer,
//! searches its earlier vtables for a duplicate of each new one and is then
//! copied out; the publish path paid for all of that on every event.
//!
//! How it writes, cheaply: the head (root, vtables, Event table, at most
//! `HEAD_BYTES_MAX` bytes at positions known once the event is sized) is
//! assembled on the stack and appended in one copy; the strings and
//! attributes after it are written into bytes zeroed in one go, so their
//! padding costs nothing; the data is appended last. `benches/encode_event`
//! measures it against the builder.
//!
//! The buffer it writes (all integers little-endian; positions are from
//! the event's first byte, the alignment reference of a flatbuffer, so an
//! event appended at any position of a batch buffer, or copied elsewhere,
//! is the same valid buffer):
//!
//! ```text
//! 0        root: u32 ───────────────► Event table
//! 4        Event vtable (2-aligned):
//!            vtable_bytes: u16       4 + 2 * slots, up to the last present
//!                                    field (`type` at least)
//!            table_bytes: u16        the Event table's inline size
//!            slot: u16 each          field position - table, 0 = absent
//!          0, 2, 4 or 6 zero bytes   so that the table is 4-aligned and,
//!                                    with time_ms, table + 4 is 8-aligned
//! table    Event table:
//!            soffset: i32            table - 4 ──► the vtable at 4
//!            time_ms: i64            if present (8-aligned)
//!            uoffset: u32 each       id, source, specversion, type, then
//!                                    subject, datacontenttype, attributes
//!                                    and data where present ──► below
//!          Attribute vtable, when there are attributes (8 bytes):
//!            8, 12, key at 4, value at 8
//! objects  in the Event's slot order, each 4-aligned:
//!            strings                 id, source, specversion, type,
//!                                    [subject], [datacontenttype]
//!            [attributes]            len: u32 = n, then n uoffsets ──►
//!                                    n times: Attribute table (soffset ──►
//!                                    the Attribute vtable; key uoffset = 8;
//!                                    value uoffset = 4 + key's bytes), key
//!                                    string, value string
//!            [data]                  len: u32, then len bytes
//!          zero bytes to a multiple of 4
//!
//! string   len: u32, len bytes of UTF-8, 0, zero bytes to a multiple of 4
//! ```
//!
//! Why this is a valid `Event` buffer, in the terms the verifiers check
//! (see `verify`'s module header):
//!
//! - every uoffset leads forward to an object inside the buffer (root to
//!   table, table fields to the objects after the vtables, vector elements
//!   to the tables after them, attribute fields to the strings after their
//!   table); every soffset leads back to a vtable inside the buffer;
//! - every `u32`/`i32` sits at a multiple of 4 (the root, the table, which
//!   is followed only by 4-byte fields, and every object, since each one's
//!   size is padded to 4), time_ms at a multiple of 8, and the vtables (at
//!   4 and at the end of the Event table) at multiples of 2 with even
//!   lengths;
//! - strings come from `&str`s, so they are UTF-8, and each is followed by
//!   a 0 byte; `id`, `source`, `type`, `key` and `value` are always written;
//! - the event is at most `EVENT_BYTES_MAX` (2^31 - 1) bytes, asserted
//!   before anything is written, so every position and length fits its
//!   `u32`/`i32` and every vtable slot its `u16` (the Event table is at
//!   most `EVENT_TABLE_BYTES_MAX` bytes). A larger event panics, as the
//!   builder did: flatbuffers cannot hold it, and no frame could carry it.
//!
//! The verifiers do the same work on it as on the builder's layout of the
//! same event: the same tables (the Event and one per attribute), nested
//! as deep, and the same apparent size (vtables trimmed after the last
//! present field, as the builder trims them, and one Attribute vtable
//! shared by every attribute, as the builder's deduplication shares it).
//! So an event within the limits as the builder wrote it is within them
//! as written here.
//!
//! The tests in `event` check all of this against the builder that was
//! here before: random events, appended at random positions after junk,
//! must pass both verifiers and decode as the builder's bytes decode; the
//! tests in `verify` compare the work.

use crate::event::verify::EVENT_BYTES_MAX;
use crate::event::{EventRef, SPECVERSION};
use crate::generated as fb;

const UOFFSET_BYTES: usize = 4;
const SOFFSET_BYTES: usize = 4;
const VOFFSET_BYTES: usize = 2;
const TIME_MS_BYTES: usize = 8;
/// A vtable's two header fields: its own length and its table's.
const VTABLE_HEADER_BYTES: usize = 2 * VOFFSET_BYTES;

/// Where the Event vtable starts: right after the root uoffset.
const EVENT_VTABLE_AT: usize = UOFFSET_BYTES;
/// The Event's slots: `id` (4) through `data` (20).
const EVENT_SLOTS: usize = (fb::Event::VT_DATA as usize - VTABLE_HEADER_BYTES) / VOFFSET_BYTES + 1;
/// The Event's uoffset fields: every field but `time_ms`.
const EVENT_UOFFSET_FIELDS: usize = EVENT_SLOTS - 1;
/// The largest Event table: soffset, time_ms and every uoffset field.
const EVENT_TABLE_BYTES_MAX: usize =
    SOFFSET_BYTES + TIME_MS_BYTES + EVENT_UOFFSET_FIELDS * UOFFSET_BYTES;

/// The Event's uoffset fields' slots: all but `time_ms`, in order.
const EVENT_UOFFSET_SLOTS: [flatbuffers::VOffsetT; EVENT_UOFFSET_FIELDS] = [
    fb::Event::VT_ID,
    fb::Event::VT_SOURCE,
    fb::Event::VT_SPECVERSION,
    fb::Event::VT_TYPE_,
    fb::Event::VT_SUBJECT,
    fb::Event::VT_DATACONTENTTYPE,
    fb::Event::VT_ATTRIBUTES,
    fb::Event::VT_DATA,
];
/// The most zero bytes between the Event vtable and its table: the vtable
/// ends at an even position, rounding that up to 4 adds at most 2, and
/// moving on to 4 past a multiple of 8 (so that time_ms, after the
/// soffset, is 8-aligned) adds 4 more.
const TABLE_PADDING_BYTES_MAX: usize = 6;
/// The largest head: the root, the Event vtable with every slot, the
/// padding, the Event table and the Attribute vtable.
const HEAD_BYTES_MAX: usize = UOFFSET_BYTES
    + VTABLE_HEADER_BYTES
    + EVENT_SLOTS * VOFFSET_BYTES
    + TABLE_PADDING_BYTES_MAX
    + EVENT_TABLE_BYTES_MAX
    + ATTRIBUTE_VTABLE_BYTES;

/// The Attribute vtable: its header, then `key` and `value` at 4 and 8.
const ATTRIBUTE_VTABLE_BYTES: usize = VTABLE_HEADER_BYTES + 2 * VOFFSET_BYTES;
const ATTRIBUTE_TABLE_BYTES: usize = SOFFSET_BYTES + 2 * UOFFSET_BYTES;
const ATTRIBUTE_KEY_FIELD: usize = SOFFSET_BYTES;
const ATTRIBUTE_VALUE_FIELD: usize = SOFFSET_BYTES + UOFFSET_BYTES;
const ATTRIBUTE_VTABLE: [u8; ATTRIBUTE_VTABLE_BYTES] = {
    let fields = [
        ATTRIBUTE_VTABLE_BYTES as u16,
        ATTRIBUTE_TABLE_BYTES as u16,
        ATTRIBUTE_KEY_FIELD as u16,
        ATTRIBUTE_VALUE_FIELD as u16,
    ];
    let mut bytes = [0; ATTRIBUTE_VTABLE_BYTES];
    let mut i = 0;
    while i < fields.len() {
        let le = fields[i].to_le_bytes();
        bytes[2 * i] = le[0];
        bytes[2 * i + 1] = le[1];
        i += 1;
    }
    bytes
};

// The schema's slots are where this writer puts them: the Event's nine in
// order from 4, and the Attribute's two at the first two slots.
const _: () = {
    let event = [
        fb::Event::VT_ID,
        fb::Event::VT_SOURCE,
        fb::Event::VT_SPECVERSION,
        fb::Event::VT_TYPE_,
        fb::Event::VT_SUBJECT,
        fb::Event::VT_TIME_MS,
        fb::Event::VT_DATACONTENTTYPE,
        fb::Event::VT_ATTRIBUTES,
        fb::Event::VT_DATA,
    ];
    assert!(event.len() == EVENT_SLOTS);
    let mut i = 0;
    while i < event.len() {
        assert!(event[i] as usize == VTABLE_HEADER_BYTES + i * VOFFSET_BYTES);
        i += 1;
    }
    assert!(fb::Attribute::VT_KEY as usize == VTABLE_HEADER_BYTES);
    assert!(fb::Attribute::VT_VALUE as usize == VTABLE_HEADER_BYTES + VOFFSET_BYTES);
};
// Vtable slots are `u16`s, and every object starts 4-aligned because every
// size below is a multiple of 4.
const _: () = assert!(EVENT_TABLE_BYTES_MAX <= u16::MAX as usize);
const _: () = assert!(ATTRIBUTE_VTABLE_BYTES.is_multiple_of(4));
const _: () = assert!(ATTRIBUTE_TABLE_BYTES.is_multiple_of(4));
const _: () = assert!(EVENT_BYTES_MAX <= i32::MAX as usize);

/// Appends `event`, with its attributes followed by `more_attributes`, to
/// `out` as a finished `Event` flatbuffer and returns its length (a
/// multiple of 4). An empty `specversion` is written as `SPECVERSION`;
/// absent optional fields, no attributes and empty data are not written.
///
/// `more_attributes` is iterated twice, once to size the event and once to
/// write it; if the second pass yields other attributes than the first, it
/// panics rather than write a broken buffer. So does an event over
/// `EVENT_BYTES_MAX` bytes.
pub(crate) fn event<'m, M>(out: &mut Vec<u8>, event: &EventRef<'_>, more_attributes: M) -> usize
where
    M: Iterator<Item = (&'m str, &'m str)> + Clone,
{
    let specversion = if event.specversion.is_empty() {
        SPECVERSION
    } else {
        event.specversion
    };

    // Size the attributes: the vector, then each table and its strings.
    let mut attributes = 0usize;
    let mut attribute_bytes = 0usize;
    let mut size_attribute = |key: &str, value: &str| {
        attributes += 1;
        attribute_bytes = attribute_bytes
            .saturating_add(UOFFSET_BYTES + ATTRIBUTE_TABLE_BYTES)
            .saturating_add(string_bytes(key))
            .saturating_add(string_bytes(value));
    };
    for &(key, value) in &event.attributes {
        size_attribute(key, value);
    }
    for (key, value) in more_attributes.clone() {
        size_attribute(key, value);
    }
    let has_attributes = attributes > 0;
    let has_data = !event.data.is_empty();
    let attributes_bytes = if has_attributes {
        attribute_bytes.saturating_add(UOFFSET_BYTES)
    } else {
        0
    };
    let data_bytes = if has_data {
        event.data.len().saturating_add(UOFFSET_BYTES)
    } else {
        0
    };

    // The Event's uoffset fields in slot order, with the bytes of the
    // object each leads to, 0 when absent (no present object is empty).
    // The objects follow the vtables in this order.
    let objects: [usize; EVENT_UOFFSET_FIELDS] = [
        string_bytes(event.id),
        string_bytes(event.source),
        string_bytes(specversion),
        string_bytes(event.ty),
        event.subject.map_or(0, string_bytes),
        event.datacontenttype.map_or(0, string_bytes),
        attributes_bytes,
        data_bytes,
    ];

    // The root, the Event vtable, the Event table and the Attribute vtable
    // (the head) are assembled on the stack first: their positions are
    // small and known, so this is cheap straight-line code. The vtable's
    // slots go in as the table's fields are placed.
    let mut head = [0u8; HEAD_BYTES_MAX];
    let mut table_bytes = SOFFSET_BYTES;
    let mut last_slot = fb::Event::VT_TYPE_;
    if event.time_ms.is_some() {
        put(
            &mut head,
            EVENT_VTABLE_AT + usize::from(fb::Event::VT_TIME_MS),
            &voffset(table_bytes).to_le_bytes(),
        );
        last_slot = fb::Event::VT_TIME_MS;
        table_bytes += TIME_MS_BYTES;
    }
    for (&slot, &bytes) in EVENT_UOFFSET_SLOTS.iter().zip(&objects) {
        if bytes != 0 {
            put(
                &mut head,
                EVENT_VTABLE_AT + usize::from(slot),
                &voffset(table_bytes).to_le_bytes(),
            );
            last_slot = last_slot.max(slot);
            table_bytes += UOFFSET_BYTES;
        }
    }
    let vtable_bytes = usize::from(last_slot) + VOFFSET_BYTES;
    let mut table = (EVENT_VTABLE_AT + vtable_bytes).next_multiple_of(4);
    if event.time_ms.is_some() && !(table + SOFFSET_BYTES).is_multiple_of(TIME_MS_BYTES) {
        table += 4;
    }
    let attribute_vtable = table + table_bytes;
    let objects_at = attribute_vtable
        + if has_attributes {
            ATTRIBUTE_VTABLE_BYTES
        } else {
            0
        };
    let end = objects
        .iter()
        .fold(objects_at, |end, &bytes| end.saturating_add(bytes));
    let data_at = end - data_bytes;
    let total = end.saturating_add(3) & !3;
    assert!(
        total <= EVENT_BYTES_MAX,
        "an event of {total} bytes or more is over flatbuffers' limit of {EVENT_BYTES_MAX}"
    );
    assert!(objects_at <= HEAD_BYTES_MAX);

    put(&mut head, 0, &u32_of(table).to_le_bytes());
    put(
        &mut head,
        EVENT_VTABLE_AT,
        &voffset(vtable_bytes).to_le_bytes(),
    );
    put(
        &mut head,
        EVENT_VTABLE_AT + VOFFSET_BYTES,
        &voffset(table_bytes).to_le_bytes(),
    );
    put(
        &mut head,
        table,
        &i32_of(table - EVENT_VTABLE_AT).to_le_bytes(),
    );
    let mut field = table + SOFFSET_BYTES;
    if let Some(time_ms) = event.time_ms {
        put(&mut head, field, &time_ms.to_le_bytes());
        field += TIME_MS_BYTES;
    }
    let mut object = objects_at;
    for &bytes in &objects {
        if bytes != 0 {
            put(&mut head, field, &u32_of(object - field).to_le_bytes());
            field += UOFFSET_BYTES;
            object += bytes;
        }
    }
    if has_attributes {
        put(&mut head, attribute_vtable, &ATTRIBUTE_VTABLE);
    }

    // The head, then everything before the data vector written into zeroed
    // bytes (padding is left as it is), then the data appended.
    let start = out.len();
    out.reserve(total);
    out.extend_from_slice(&head[..objects_at]);
    out.resize(start + data_at, 0);
    let mut w = Cursor {
        buf: &mut out[start..],
        at: objects_at,
    };
    for string in [event.id, event.source, specversion, event.ty] {
        w.put_string(string);
    }
    if let Some(subject) = event.subject {
        w.put_string(subject);
    }
    if let Some(datacontenttype) = event.datacontenttype {
        w.put_string(datacontenttype);
    }
    if has_attributes {
        w.put_u32(u32_of(attributes));
        let elements = w.at;
        w.at += attributes * UOFFSET_BYTES;
        // Each element is written with its table, from where the table
        // was written, not where the sizing pass expected it.
        let mut written = 0;
        let mut write_attribute = |w: &mut Cursor<'_>, key: &str, value: &str| {
            assert!(
                written < attributes,
                "more_attributes yielded more attributes the second time"
            );
            let element = elements + written * UOFFSET_BYTES;
            w.put_u32_at(element, u32_of(w.at - element));
            w.put_i32(i32_of(w.at - attribute_vtable));
            // The key string follows the table, the value string the key.
            w.put_u32(u32_of(ATTRIBUTE_TABLE_BYTES - ATTRIBUTE_KEY_FIELD));
            w.put_u32(u32_of(
                ATTRIBUTE_TABLE_BYTES - ATTRIBUTE_VALUE_FIELD + string_bytes(key),
            ));
            w.put_string(key);
            w.put_string(value);
            written += 1;
        };
        for &(key, value) in &event.attributes {
            write_attribute(&mut w, key, value);
        }
        for (key, value) in more_attributes {
            write_attribute(&mut w, key, value);
        }
        assert_eq!(
            (written, w.at),
            (attributes, data_at),
            "more_attributes yielded other attributes the second time"
        );
    }
    assert_eq!(w.at, data_at);
    if has_data {
        out.extend_from_slice(&u32_of(event.data.len()).to_le_bytes());
        out.extend_from_slice(event.data);
    }
    out.resize(start + total, 0);
    total
}

/// Writes `bytes` into `head` at `at`.
#[inline(always)]
fn put(head: &mut [u8; HEAD_BYTES_MAX], at: usize, bytes: &[u8]) {
    head[at..at + bytes.len()].copy_from_slice(bytes);
}

/// Writes front to back into zeroed bytes: what it skips stays 0. Writing
/// past the end panics (it cannot happen: the writer sized the bytes).
struct Cursor<'b> {
    buf: &'b mut [u8],
    /// The next position to write.
    at: usize,
}

impl Cursor<'_> {
    #[inline(always)]
    fn put(&mut self, bytes: &[u8]) {
        self.buf[self.at..self.at + bytes.len()].copy_from_slice(bytes);
        self.at += bytes.len();
    }

    #[inline(always)]
    fn put_u32(&mut self, value: u32) {
        self.put(&value.to_le_bytes());
    }

    #[inline(always)]
    fn put_i32(&mut self, value: i32) {
        self.put(&value.to_le_bytes());
    }

    /// Writes `value` at `at`, behind the cursor.
    #[inline(always)]
    fn put_u32_at(&mut self, at: usize, value: u32) {
        self.buf[at..at + UOFFSET_BYTES].copy_from_slice(&value.to_le_bytes());
    }

    /// Writes a string: its length, its bytes, and (skipped, so 0) its
    /// terminator and padding.
    #[inline(always)]
    fn put_string(&mut self, s: &str) {
        let end = self.at + string_bytes(s);
        self.put_u32(u32_of(s.len()));
        self.put(s.as_bytes());
        self.at = end;
    }
}

/// The bytes a string takes: its length, its bytes, a 0 terminator, and
/// zero padding to a multiple of 4 (so 1 to 4 bytes after the string).
/// Saturates, for a string no event could hold.
#[inline(always)]
fn string_bytes(s: &str) -> usize {
    s.len().saturating_add(UOFFSET_BYTES + 4) & !3
}

/// A position within the Event table or a vtable length: at most
/// `EVENT_TABLE_BYTES_MAX` (checked at compile time to fit).
#[inline(always)]
fn voffset(n: usize) -> u16 {
    u16::try_from(n).unwrap_or_else(|_| unreachable!("{n} is past any vtable slot"))
}

/// A position or length within an event, which `event` has asserted is at
/// most `EVENT_BYTES_MAX` bytes: it fits.
#[inline(always)]
fn u32_of(n: usize) -> u32 {
    u32::try_from(n).unwrap_or_else(|_| unreachable!("{n} is past any event"))
}

#[inline(always)]
fn i32_of(n: usize) -> i32 {
    i32::try_from(n).unwrap_or_else(|_| unreachable!("{n} is past any event"))
}
