//! A writer for one `Publish` frame (length prefix, then a `Frame`
//! flatbuffer whose body is a `Publish`), without flatbuffers' builder: it
//! sizes the frame, checks the size, and then appends it to the caller's
//! buffer front to back, copying each event's bytes once. The builder wrote
//! back to front into its own buffer (copying every event there), searched
//! its vtables for a duplicate on every `EventBytes` table, and was then
//! copied into the connection's outgoing buffer; the publish path paid for
//! all of that on every frame. `benches/encode_publish` measures the two.
//!
//! The frame it writes (all integers little-endian; positions are from the
//! flatbuffer's first byte, the byte after the length prefix, which is the
//! alignment reference of a flatbuffer: the frame may be appended at any
//! position of an outgoing buffer, and a receiver reads the body from any
//! address, so alignment only ever counts from there):
//!
//! ```text
//! prefix   n: u32                  the flatbuffer's length, 4 + n in all
//! 0        root: u32 = 16 ──────────────────► Frame table
//! 4        Frame vtable:           10, 20, request_id at 8,
//!                                  body_type at 16, body at 4
//! 14       2 zero bytes
//! 16       Frame table:
//!            soffset: i32 = 12     ──► the Frame vtable at 4
//! 20         body: u32 = 32        ──► the Publish table at 52
//! 24         request_id: u64       (8-aligned)
//! 32         body_type: u8         `Body::Publish`
//! 33         3 zero bytes
//! 36       Publish vtable:         10, 16, stream at 4, partition at 8,
//!                                  events at 12
//! 46       EventBytes vtable:      6, 8, bytes at 4 (shared by every
//!                                  EventBytes table)
//! 52       Publish table:
//!            soffset: i32 = 16     ──► the Publish vtable at 36
//! 56         stream: u32           ──► the stream string at 72 + 4 * count
//! 60         partition: u32
//! 64         events: u32 = 4       ──► the events vector at 68
//! 68       events vector:          count: u32, then count uoffsets ──►
//!                                  the EventBytes tables below, in order
//! 72+4*count stream string:        len: u32, len bytes of UTF-8, 0, zero
//!                                  bytes to a multiple of 4
//! tables   per event, in order, each 4-aligned:
//!            soffset: i32          table - 46 ──► the EventBytes vtable
//!            bytes: u32 = 4        ──► the vector right after the table
//!            len: u32, then len bytes (the event, copied once), zero bytes
//!            to a multiple of 4
//! ```
//!
//! Every field is written, even at its default (`request_id` 0,
//! `partition` 0, no events: an empty vector), so the head (the first
//! `HEAD_BYTES` bytes) is the same template for every frame, filled in at
//! fixed positions. A reader cannot tell an explicit default from an absent
//! field, so the frame decodes to the message the builder's frame decodes
//! to.
//!
//! Why this is a valid `Frame` buffer, in the terms flatbuffers' verifier
//! checks:
//!
//! - every uoffset leads forward to an object inside the buffer (root to
//!   the Frame table, body to the Publish table, stream and events to the
//!   objects after the Publish table, each vector element to its
//!   EventBytes table, each `bytes` field to the vector right after its
//!   table); every soffset leads back to a vtable inside the buffer, and
//!   every vtable's slots lie inside its table's inline size;
//! - every `u32`/`i32` sits at a multiple of 4 (the head's fields by the
//!   diagram, and every object after it because the head, the events
//!   vector, a string and an event's table and vector each take a multiple
//!   of 4 bytes), `request_id` at a multiple of 8, and the vtables at
//!   multiples of 2;
//! - `body_type` names `Publish` and `body` leads to a `Publish` table; the
//!   stream string comes from a `&str`, so it is UTF-8, and is followed by a
//!   0 byte; `stream` and every `bytes` are always written (both required);
//! - the frame is at most `FLATBUFFER_BYTES_MAX` (2^31 - 1) bytes, checked
//!   before anything is written (`frame_bytes` saturates, and the encoder
//!   refuses a larger frame), so every position and length fits its
//!   `u32`/`i32`.
//!
//! The verifier does the same work on it as on the builder's layout of the
//! same message: the same tables (Frame, Publish, one EventBytes per
//! event), nested as deep, and about the same apparent size (the builder
//! too shares one EventBytes vtable across the frame). The two layouts
//! differ only in padding and in the defaults the builder leaves out, so
//! their sizes differ by a few bytes (see `Encoder::encode_into` for how
//! the frame limit applies).
//!
//! The tests below check this against the builder: random messages,
//! appended after junk so that the frame starts at every alignment, must
//! pass `split_frame`, `decode` and the verifier with its default options,
//! and decode as the builder's frames decode.

use bytes::BufMut;

use crate::generated as fb;
use crate::message::Publish;

/// The largest buffer flatbuffers can address (its offsets are 32-bit,
/// soffsets signed). The builder panicked past it.
pub(crate) const FLATBUFFER_BYTES_MAX: usize = i32::MAX as usize;

const UOFFSET_BYTES: usize = 4;
const SOFFSET_BYTES: usize = 4;
const VOFFSET_BYTES: usize = 2;

const ROOT_AT: usize = 0;
const FRAME_VTABLE_AT: usize = 4;
const FRAME_VTABLE_BYTES: usize = 10;
const FRAME_TABLE_AT: usize = 16;
const FRAME_BODY_FIELD: usize = 4;
const FRAME_REQUEST_ID_FIELD: usize = 8;
const FRAME_BODY_TYPE_FIELD: usize = 16;
/// soffset, body, request_id, body_type and 3 bytes of padding.
const FRAME_TABLE_BYTES: usize = 20;
const PUBLISH_VTABLE_AT: usize = FRAME_TABLE_AT + FRAME_TABLE_BYTES;
const PUBLISH_VTABLE_BYTES: usize = 10;
const EVENT_BYTES_VTABLE_AT: usize = PUBLISH_VTABLE_AT + PUBLISH_VTABLE_BYTES;
const EVENT_BYTES_VTABLE_BYTES: usize = 6;
const PUBLISH_TABLE_AT: usize = EVENT_BYTES_VTABLE_AT + EVENT_BYTES_VTABLE_BYTES;
const PUBLISH_STREAM_FIELD: usize = 4;
const PUBLISH_PARTITION_FIELD: usize = 8;
const PUBLISH_EVENTS_FIELD: usize = 12;
/// soffset, stream, partition, events.
const PUBLISH_TABLE_BYTES: usize = 16;
const EVENTS_VECTOR_AT: usize = PUBLISH_TABLE_AT + PUBLISH_TABLE_BYTES;
/// The part of every frame that is the same template: root, vtables, the
/// Frame and Publish tables.
const HEAD_BYTES: usize = EVENTS_VECTOR_AT;
/// An EventBytes table (soffset, bytes) and its vector's length.
const EVENT_HEADER_BYTES: usize = SOFFSET_BYTES + UOFFSET_BYTES + UOFFSET_BYTES;

// The schema's slots are where this writer puts them.
const _: () = {
    assert!(fb::Frame::VT_REQUEST_ID as usize == 4);
    assert!(fb::Frame::VT_BODY_TYPE as usize == 6);
    assert!(fb::Frame::VT_BODY as usize == 8);
    assert!(fb::Publish::VT_STREAM as usize == 4);
    assert!(fb::Publish::VT_PARTITION as usize == 6);
    assert!(fb::Publish::VT_EVENTS as usize == 8);
    assert!(fb::EventBytes::VT_BYTES as usize == 4);
};
// The layout in the module header: vtables at even positions and as long
// as their slots, tables 4-aligned, request_id 8-aligned, and the head a
// multiple of 4 so every object after it is 4-aligned.
const _: () = {
    assert!(FRAME_VTABLE_AT.is_multiple_of(VOFFSET_BYTES));
    assert!(FRAME_VTABLE_BYTES == 4 + 3 * VOFFSET_BYTES);
    assert!(FRAME_VTABLE_AT + FRAME_VTABLE_BYTES <= FRAME_TABLE_AT);
    assert!(FRAME_TABLE_AT.is_multiple_of(4));
    assert!((FRAME_TABLE_AT + FRAME_REQUEST_ID_FIELD).is_multiple_of(8));
    assert!(FRAME_BODY_TYPE_FIELD < FRAME_TABLE_BYTES);
    assert!(PUBLISH_VTABLE_AT.is_multiple_of(VOFFSET_BYTES));
    assert!(PUBLISH_VTABLE_BYTES == 4 + 3 * VOFFSET_BYTES);
    assert!(EVENT_BYTES_VTABLE_AT.is_multiple_of(VOFFSET_BYTES));
    assert!(EVENT_BYTES_VTABLE_BYTES == 4 + VOFFSET_BYTES);
    assert!(PUBLISH_TABLE_AT.is_multiple_of(4));
    assert!(HEAD_BYTES.is_multiple_of(4));
    assert!(HEAD_BYTES == 68);
    assert!(FLATBUFFER_BYTES_MAX <= u32::MAX as usize);
};

/// The head of every Publish frame, with `request_id`, the stream's
/// uoffset and `partition` left at 0.
const HEAD: [u8; HEAD_BYTES] = {
    let mut head = [0u8; HEAD_BYTES];
    head = put_u32(head, ROOT_AT, FRAME_TABLE_AT as u32);
    // Frame vtable.
    let frame_slots = [
        FRAME_VTABLE_BYTES,
        FRAME_TABLE_BYTES,
        FRAME_REQUEST_ID_FIELD,
        FRAME_BODY_TYPE_FIELD,
        FRAME_BODY_FIELD,
    ];
    let mut i = 0;
    while i < frame_slots.len() {
        head = put_u16(head, FRAME_VTABLE_AT + 2 * i, frame_slots[i] as u16);
        i += 1;
    }
    // Frame table.
    let frame = FRAME_TABLE_AT;
    head = put_u32(head, frame, (frame - FRAME_VTABLE_AT) as u32);
    let body = frame + FRAME_BODY_FIELD;
    head = put_u32(head, body, (PUBLISH_TABLE_AT - body) as u32);
    head[frame + FRAME_BODY_TYPE_FIELD] = fb::Body::Publish.0;
    // Publish vtable, EventBytes vtable.
    let publish_slots = [
        PUBLISH_VTABLE_BYTES,
        PUBLISH_TABLE_BYTES,
        PUBLISH_STREAM_FIELD,
        PUBLISH_PARTITION_FIELD,
        PUBLISH_EVENTS_FIELD,
    ];
    let mut i = 0;
    while i < publish_slots.len() {
        head = put_u16(head, PUBLISH_VTABLE_AT + 2 * i, publish_slots[i] as u16);
        i += 1;
    }
    head = put_u16(head, EVENT_BYTES_VTABLE_AT, EVENT_BYTES_VTABLE_BYTES as u16);
    head = put_u16(
        head,
        EVENT_BYTES_VTABLE_AT + 2,
        (SOFFSET_BYTES + UOFFSET_BYTES) as u16,
    );
    head = put_u16(head, EVENT_BYTES_VTABLE_AT + 4, SOFFSET_BYTES as u16);
    // Publish table: its vtable, and the events vector right after it.
    let publish = PUBLISH_TABLE_AT;
    head = put_u32(head, publish, (publish - PUBLISH_VTABLE_AT) as u32);
    let events = publish + PUBLISH_EVENTS_FIELD;
    head = put_u32(head, events, (EVENTS_VECTOR_AT - events) as u32);
    head
};

const fn put_u16(mut head: [u8; HEAD_BYTES], at: usize, value: u16) -> [u8; HEAD_BYTES] {
    let le = value.to_le_bytes();
    head[at] = le[0];
    head[at + 1] = le[1];
    head
}

const fn put_u32(mut head: [u8; HEAD_BYTES], at: usize, value: u32) -> [u8; HEAD_BYTES] {
    let le = value.to_le_bytes();
    let mut i = 0;
    while i < 4 {
        head[at + i] = le[i];
        i += 1;
    }
    head
}

/// The bytes of the flatbuffer `write` writes for `publish` (the length
/// prefix excluded): a multiple of 4. Saturates at `usize::MAX` for a
/// message no frame could hold.
pub(crate) fn frame_bytes(publish: &Publish<'_>) -> usize {
    let events = publish.events.len();
    let mut bytes = HEAD_BYTES
        .saturating_add(events.saturating_add(1).saturating_mul(UOFFSET_BYTES))
        .saturating_add(string_bytes(publish.stream));
    for event in &publish.events {
        bytes = bytes.saturating_add(event_bytes(event));
    }
    bytes
}

/// Appends the frame for `request_id` and `publish` to `out`: its length
/// prefix, then the `frame_bytes` (passed in, as the caller has checked
/// it) bytes of its flatbuffer. Panics if `frame_bytes` is not what
/// `frame_bytes(publish)` returns, or is over `FLATBUFFER_BYTES_MAX`.
pub(crate) fn write<B: BufMut>(
    out: &mut B,
    request_id: u64,
    publish: &Publish<'_>,
    frame_bytes: usize,
) {
    assert!(
        frame_bytes <= FLATBUFFER_BYTES_MAX,
        "a frame of {frame_bytes} bytes is over flatbuffers' limit of {FLATBUFFER_BYTES_MAX}"
    );
    let events = publish.events.len();
    let events_vector_bytes = (events + 1) * UOFFSET_BYTES;
    let stream_at = EVENTS_VECTOR_AT + events_vector_bytes;
    let stream_bytes = string_bytes(publish.stream);

    let mut head = HEAD;
    let mut put = |at: usize, bytes: &[u8]| head[at..at + bytes.len()].copy_from_slice(bytes);
    let stream_field = PUBLISH_TABLE_AT + PUBLISH_STREAM_FIELD;
    put(
        FRAME_TABLE_AT + FRAME_REQUEST_ID_FIELD,
        &request_id.to_le_bytes(),
    );
    put(
        stream_field,
        &u32_of(stream_at - stream_field).to_le_bytes(),
    );
    put(
        PUBLISH_TABLE_AT + PUBLISH_PARTITION_FIELD,
        &publish.partition.to_le_bytes(),
    );

    out.put_u32_le(u32_of(frame_bytes));
    out.put_slice(&head);
    out.put_u32_le(u32_of(events));

    // The events vector: each element leads to its event's table, which
    // follow the stream string in order.
    let mut table = stream_at + stream_bytes;
    for (i, event) in publish.events.iter().enumerate() {
        let element = EVENTS_VECTOR_AT + UOFFSET_BYTES * (i + 1);
        out.put_u32_le(u32_of(table - element));
        table += event_bytes(event);
    }
    assert_eq!(table, frame_bytes, "frame_bytes is not this frame's size");

    put_string(out, publish.stream);

    // The EventBytes tables, each followed by its byte vector.
    let mut table = stream_at + stream_bytes;
    for event in &publish.events {
        let mut header = [0u8; EVENT_HEADER_BYTES];
        header[..4].copy_from_slice(&i32_of(table - EVENT_BYTES_VTABLE_AT).to_le_bytes());
        header[4..8].copy_from_slice(&u32_of(UOFFSET_BYTES).to_le_bytes());
        header[8..].copy_from_slice(&u32_of(event.len()).to_le_bytes());
        out.put_slice(&header);
        out.put_slice(event);
        out.put_bytes(0, padding(event.len()));
        table += event_bytes(event);
    }
}

/// Writes a string: its length, its bytes, its 0 terminator and zero
/// padding to a multiple of 4.
fn put_string<B: BufMut>(out: &mut B, s: &str) {
    out.put_u32_le(u32_of(s.len()));
    out.put_slice(s.as_bytes());
    out.put_bytes(0, string_bytes(s) - UOFFSET_BYTES - s.len());
}

/// The zero bytes after `len` bytes up to a multiple of 4.
#[inline(always)]
fn padding(len: usize) -> usize {
    len.wrapping_neg() & 3
}

/// The bytes a string takes: its length, its bytes, a 0 terminator, and
/// zero padding to a multiple of 4 (so 1 to 4 bytes after the string).
/// Saturates, for a string no frame could hold.
#[inline(always)]
fn string_bytes(s: &str) -> usize {
    s.len().saturating_add(UOFFSET_BYTES + 4) & !3
}

/// The bytes one event takes: its EventBytes table, its vector's length,
/// its bytes and zero padding to a multiple of 4. Saturates.
#[inline(always)]
fn event_bytes(event: &[u8]) -> usize {
    event.len().saturating_add(EVENT_HEADER_BYTES + 3) & !3
}

/// A position or length within a frame, which `write` has asserted is at
/// most `FLATBUFFER_BYTES_MAX` bytes: it fits.
#[inline(always)]
fn u32_of(n: usize) -> u32 {
    u32::try_from(n).unwrap_or_else(|_| unreachable!("{n} is past any frame"))
}

#[inline(always)]
fn i32_of(n: usize) -> i32 {
    i32::try_from(n).unwrap_or_else(|_| unreachable!("{n} is past any frame"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{LENGTH_PREFIX_BYTES, Limits, decode, split_frame};
    use crate::message::{EncodeError, Encoder, Message};
    use crate::tests::{Rng, run_cases};

    /// What a frame's flatbuffer reads as through the generated accessors:
    /// request_id, body type, stream, partition and the events' bytes.
    type Read<'a> = (u64, fb::Body, &'a str, u32, Vec<&'a [u8]>);

    fn read(frame: fb::Frame<'_>) -> Read<'_> {
        let publish = frame.body_as_publish().unwrap();
        let events = publish
            .events()
            .map(|v| v.iter().map(|e| e.bytes().bytes()).collect())
            .unwrap_or_default();
        (
            frame.request_id(),
            frame.body_type(),
            publish.stream(),
            publish.partition(),
            events,
        )
    }

    /// The builder's flatbuffer (prefix excluded) for the same frame.
    fn built(request_id: u64, message: &Message<'_>) -> Vec<u8> {
        let mut encoder = Encoder::new(&Limits {
            frame_bytes_max: usize::MAX,
            ..Limits::DEFAULT
        });
        let (prefix, data) = encoder.build(request_id, message).unwrap();
        assert_eq!(prefix as usize, data.len());
        data.to_vec()
    }

    /// Checks `body`, the flatbuffer the writer wrote for `request_id` and
    /// `message`, against the builder's: both verifiers accept it and it
    /// reads and decodes as the builder's frame does. Returns the writer's
    /// size minus the builder's.
    fn check_against_builder(body: &[u8], request_id: u64, message: &Message<'_>) -> isize {
        let reference = built(request_id, message);
        let limits = Limits::DEFAULT;
        let decoded = decode(body, &limits).unwrap();
        let theirs = decode(&reference, &limits).unwrap();
        assert_eq!(decoded, theirs);
        assert_eq!(decoded.request_id, request_id);
        assert_eq!(&decoded.message, message);

        let options = limits.verifier_options();
        let reference = flatbuffers::root_with_opts::<fb::Frame>(&options, &reference).unwrap();
        let generic = flatbuffers::root_with_opts::<fb::Frame>(&options, body).unwrap();
        let generic_default = flatbuffers::root::<fb::Frame>(body).unwrap();
        assert_eq!(read(generic), read(reference));
        assert_eq!(read(generic_default), read(reference));
        body.len() as isize - built(request_id, message).len() as isize
    }

    /// A stream name of 0, a few or a few hundred characters, some of
    /// them 2, 3 and 4 bytes of UTF-8.
    fn random_stream(rng: &mut Rng) -> String {
        const CHARS: [char; 8] = ['a', 'z', '-', '.', 'é', 'ß', '日', '🦀'];
        let longest = [1, 9, 301][rng.below(3)];
        let len = rng.below(longest);
        let ascii = rng.below(2) == 0;
        (0..len)
            .map(|_| {
                if ascii {
                    char::from(b'a' + rng.below(26) as u8)
                } else {
                    CHARS[rng.below(CHARS.len())]
                }
            })
            .collect()
    }

    /// 0 to 199 events of 0 to 2999 bytes, many of them empty or small.
    fn random_events(rng: &mut Rng) -> Vec<Vec<u8>> {
        let count = match rng.below(4) {
            0 => rng.below(3),
            1 => rng.below(16),
            _ => rng.below(200),
        };
        let largest = [1, 5, 300, 3000][rng.below(4)];
        (0..count).map(|_| rng.bytes_upto(largest)).collect()
    }

    fn edge_or_random(rng: &mut Rng, edges: &[u64]) -> u64 {
        if rng.below(2) == 0 {
            edges[rng.below(edges.len())]
        } else {
            rng.next_u64()
        }
    }

    /// Random Publish messages, each appended by an `Encoder` to a buffer
    /// that already holds 0 to 7 junk bytes (so the frame starts at every
    /// alignment of the buffer's address), as a `Vec` or a `BytesMut`:
    /// the frame must split, decode and verify as the builder's frame of
    /// the same message does, `encode` must write the same bytes, and the
    /// two sizes must stay as close as `Encoder::encode_into` says.
    #[test]
    fn writer_agrees_with_the_builder_on_random_publishes() {
        let mut encoder = Encoder::default();
        let (mut smallest, mut largest) = (isize::MAX, isize::MIN);
        run_cases(
            "writer_agrees_with_the_builder_on_random_publishes",
            600,
            |rng| {
                let stream = random_stream(rng);
                let events = random_events(rng);
                let message = Message::Publish(Publish {
                    stream: &stream,
                    partition: edge_or_random(rng, &[0, 1, u64::from(u32::MAX)]) as u32,
                    events: events.iter().map(Vec::as_slice).collect(),
                });
                let request_id = edge_or_random(rng, &[0, 1, u64::MAX]);

                let junk_bytes = rng.below(8);
                let junk = rng.bytes(junk_bytes);
                let out = if rng.below(2) == 0 {
                    let mut out = junk.clone();
                    let len = encoder.encode_into(request_id, &message, &mut out).unwrap();
                    assert_eq!(out.len(), junk.len() + len);
                    out
                } else {
                    let mut out = bytes::BytesMut::from(&junk[..]);
                    let len = encoder.encode_into(request_id, &message, &mut out).unwrap();
                    assert_eq!(out.len(), junk.len() + len);
                    out.to_vec()
                };
                assert_eq!(&out[..junk.len()], &junk[..], "the junk before it is kept");
                let (body, used) = split_frame(&out[junk.len()..], &Limits::DEFAULT)
                    .unwrap()
                    .unwrap();
                assert_eq!(used, out.len() - junk.len());
                assert!(body.len().is_multiple_of(4));
                let Message::Publish(publish) = &message else {
                    unreachable!()
                };
                assert_eq!(body.len(), frame_bytes(publish));
                let growth = check_against_builder(body, request_id, &message);
                assert!((-12..=28).contains(&growth), "{growth}");
                if request_id != 0 && !publish.events.is_empty() {
                    // A client's publish: never larger than the builder's.
                    assert!((-12..=0).contains(&growth), "{growth}");
                }
                smallest = smallest.min(growth);
                largest = largest.max(growth);

                assert_eq!(
                    encoder.encode(request_id, &message).unwrap(),
                    &out[junk.len()..]
                );
            },
        );
        println!("writer's size minus the builder's: {smallest} to {largest} bytes");
    }

    /// The frame limit applies to the bytes written: a frame of exactly
    /// `frame_bytes_max` bytes goes out, one a byte over is refused with
    /// nothing appended; and where the writer's size equals the builder's,
    /// the two agree at the boundary.
    #[test]
    fn the_frame_limit_applies_at_exactly_the_written_size() {
        let big = vec![0xabu8; 1000];
        let odd = vec![0xcdu8; 333];
        let cases: [(u64, Publish<'_>); 4] = [
            (
                7,
                Publish {
                    stream: "events",
                    partition: 3,
                    events: vec![&big, &odd, &big],
                },
            ),
            (
                u64::MAX,
                Publish {
                    stream: "é",
                    partition: u32::MAX,
                    events: vec![&odd; 64],
                },
            ),
            (0, Publish::default()),
            (
                1,
                Publish {
                    stream: "s",
                    partition: 0,
                    events: vec![&[]],
                },
            ),
        ];
        for (request_id, publish) in cases {
            let written = frame_bytes(&publish);
            let message = Message::Publish(publish);
            let builder = built(request_id, &message).len();
            for max in [written - 1, written, builder - 1, builder] {
                let mut encoder = Encoder::new(&Limits {
                    frame_bytes_max: max,
                    ..Limits::DEFAULT
                });
                let mut out = b"junk".to_vec();
                let result = encoder.encode_into(request_id, &message, &mut out);
                if written <= max {
                    assert_eq!(result, Ok(LENGTH_PREFIX_BYTES + written));
                    assert_eq!(out.len(), 4 + LENGTH_PREFIX_BYTES + written);
                } else {
                    assert_eq!(result, Err(EncodeError::TooLarge { have: written, max }));
                    assert_eq!(out, b"junk", "nothing appended on error");
                    assert_eq!(
                        encoder.encode(request_id, &message),
                        Err(EncodeError::TooLarge { have: written, max })
                    );
                }
                // The builder's verdict, as the encoder gave it before.
                let builder_accepts = encoder.build(request_id, &message).is_ok();
                assert_eq!(builder_accepts, builder <= max);
                if written == builder {
                    assert_eq!(result.is_ok(), builder_accepts, "max {max}");
                }
            }
        }
    }

    /// The layout the module header draws, for one frame: the head's
    /// fields where the diagram puts them, and every EventBytes table
    /// pointing at the one shared, trimmed EventBytes vtable (the
    /// differential tests alone would accept a table that borrows the
    /// Publish vtable, whose first slot happens to match).
    #[test]
    fn writer_lays_the_frame_out_as_documented() {
        let (a, b) = (vec![1u8; 5], vec![2u8; 8]);
        let publish = Publish {
            stream: "ab",
            partition: 9,
            events: vec![&a, &[], &b],
        };
        let frame = Encoder::default()
            .encode(0x0102_0304_0506_0708, &Message::Publish(publish.clone()))
            .unwrap();
        let body = &frame[LENGTH_PREFIX_BYTES..];
        let u32_at = |at: usize| u32::from_le_bytes(body[at..at + 4].try_into().unwrap()) as usize;

        assert_eq!(u32_at(0), 16, "root");
        assert_eq!(&body[4..16], &[10, 0, 20, 0, 8, 0, 16, 0, 4, 0, 0, 0]);
        assert_eq!(u32_at(16), 12, "Frame soffset");
        assert_eq!(16 + 4 + u32_at(20), 52, "body");
        assert_eq!(&body[24..32], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(&body[32..36], &[fb::Body::Publish.0, 0, 0, 0]);
        assert_eq!(&body[36..46], &[10, 0, 16, 0, 4, 0, 8, 0, 12, 0]);
        assert_eq!(&body[46..52], &[6, 0, 8, 0, 4, 0], "EventBytes vtable");
        assert_eq!(u32_at(52), 16, "Publish soffset");
        let stream = 56 + u32_at(56);
        assert_eq!(stream, 72 + 4 * 3);
        assert_eq!(&body[stream..stream + 8], b"\x02\0\0\0ab\0\0");
        assert_eq!(u32_at(60), 9, "partition");
        assert_eq!(64 + u32_at(64), 68, "events");
        assert_eq!(u32_at(68), 3);
        let mut expected_table = stream + 8;
        for (i, event) in publish.events.iter().enumerate() {
            let element = 72 + 4 * i;
            let table = element + u32_at(element);
            assert_eq!(table, expected_table, "event {i} follows the one before");
            assert_eq!(table - u32_at(table), 46, "event {i}'s vtable");
            assert_eq!(u32_at(table + 4), 4, "event {i}'s vector follows it");
            assert_eq!(u32_at(table + 8), event.len());
            assert_eq!(&body[table + 12..table + 12 + event.len()], *event);
            expected_table = table + (12 + event.len()).next_multiple_of(4);
        }
        assert_eq!(body.len(), expected_table);
        assert_eq!(body.len(), frame_bytes(&publish));
    }
}
