//! A flatbuffers verifier written for one shape of frame: a `Frame` whose
//! body is a `Publish` (with its `EventBytes` tables, each holding one
//! `[ubyte]` vector), from `wire/schema/hadron.fbs`. Publish frames are
//! most of what a server reads, and the generic verifier
//! (`flatbuffers::root_with_opts::<fb::Frame>`) spends more on its
//! per-field `Result` plumbing and error tracing than on the checks
//! themselves, once per `EventBytes`. Every other frame is left to the
//! generic verifier.
//!
//! The buffer it checks (all integers little-endian; positions are from
//! the start of the buffer, which is the alignment reference; tables,
//! vtables, strings and vectors as in `event/verify.rs`):
//!
//! ```text
//! 0          root: u32 ──────────────► Frame table (4-aligned)
//!
//! Frame      slots 4 request_id: u64 (8-aligned)
//!                  6 body_type: u8    (3 = Publish)
//!                  8 body: uoffset ──► Publish table
//! Publish    slots 4 stream: string (required)
//!                  6 partition: u32 (4-aligned)
//!                  8 events: uoffset ──► len: u32, len uoffsets ──► EventBytes
//! EventBytes slot  4 bytes: uoffset ──► len: u32, len bytes (required)
//! ```
//!
//! Invariant: `publish_frame` answers
//! - `Ok(Some(frame))` only for a buffer the generic verifier accepts with
//!   the same `VerifierOptions`, whose body is a `Publish`;
//! - `Err(reject)` only for a buffer the generic verifier rejects, with
//!   the same first failure (variant, range, position);
//! - `Ok(None)` when the frame has no body, an inconsistent union, or a
//!   body other than `Publish`, or is larger than `EVENT_BYTES_MAX`: the
//!   caller then runs the generic verifier, whose verdict stands.
//!
//! It holds because the checks are the generic verifier's, run in its
//! order, by the same `Verifier` that checks events (`event/verify.rs`,
//! whose header lists them): the root uoffset; the Frame table (depth 1);
//! `request_id`; the `body` slot, then the `body_type` slot (the generic
//! verifier reads the union's value slot before its tag); the tag byte;
//! the body's uoffset; the Publish table (depth 2); `stream`, `partition`,
//! `events`; and for each element, its uoffset, the EventBytes table
//! (depth 3) and its `bytes`. Every read counts against the apparent size
//! exactly as the generic verifier counts it, compared lazily as there.
//!
//! The tests below check the invariant differentially: Publish frames of
//! many shapes, from this crate's encoder and built by hand (shared
//! strings and tables, empty vectors, absent defaults), mutated thousands
//! of times (bit flips, byte overwrites, truncation, offsets pointed
//! elsewhere, vtables and slots changed, lengths enlarged, bad UTF-8,
//! union tags changed), under default limits and limits at and around the
//! frame's own depth, table count and apparent size, must get the same
//! verdict and first failure from both verifiers, and `decode` must return
//! exactly what it returned with the generic verifier alone.

use flatbuffers::VerifierOptions;

use crate::event::verify::{EVENT_BYTES_MAX, Reject, Verifier};
use crate::generated as fb;

/// The nesting depth of each table, as the generic verifier counts it
/// against `max_depth`.
const FRAME_DEPTH: usize = 1;
const PUBLISH_DEPTH: usize = 2;
const EVENT_BYTES_DEPTH: usize = 3;

const REQUEST_ID_BYTES: usize = 8;
const PARTITION_BYTES: usize = 4;
const BODY_TYPE_BYTES: usize = 1;

const _: () = assert!(REQUEST_ID_BYTES == size_of::<u64>());
const _: () = assert!(PARTITION_BYTES == size_of::<u32>());
const _: () = assert!(BODY_TYPE_BYTES == size_of::<fb::Body>());
// The default limits admit a Publish frame.
const _: () = assert!(EVENT_BYTES_DEPTH <= super::DEPTH_MAX_DEFAULT);
// `Verifier::field` reads slots as `u16`s at even offsets past the vtable's
// two header fields.
const _: () = {
    let slots = [
        fb::Frame::VT_REQUEST_ID,
        fb::Frame::VT_BODY_TYPE,
        fb::Frame::VT_BODY,
        fb::Publish::VT_STREAM,
        fb::Publish::VT_PARTITION,
        fb::Publish::VT_EVENTS,
        fb::EventBytes::VT_BYTES,
    ];
    let mut i = 0;
    while i < slots.len() {
        assert!(slots[i].is_multiple_of(2) && slots[i] >= 4);
        i += 1;
    }
};

/// Verifies `buf` as a `Frame` with a `Publish` body under `options` and
/// returns its root table; `Ok(None)` when the frame is not one this
/// verifier decides (see the module header).
pub(crate) fn publish_frame<'b>(
    buf: &'b [u8],
    options: &VerifierOptions,
) -> Result<Option<fb::Frame<'b>>, Reject> {
    if verify(buf, options)?.is_none() {
        return Ok(None);
    }
    // SAFETY: `verify` returned `Some`, which it does only for buffers that
    // `flatbuffers::root_with_opts::<fb::Frame>` accepts with the same
    // options (it runs every check that verifier runs on a Frame with a
    // Publish body; see the module header, and
    // `tests::mutations_agree_with_the_generic_verifier`), and that
    // verifier itself returns `root_unchecked::<fb::Frame>(buf)` once it
    // has accepted a buffer: the accessors of the returned table only reach
    // offsets, strings, vectors and sub-tables checked above.
    #[expect(
        unsafe_code,
        reason = "the one unchecked root constructor, after the specialised verifier"
    )]
    let frame = unsafe { flatbuffers::root_unchecked::<fb::Frame<'b>>(buf) };
    Ok(Some(frame))
}

/// Verifies `buf` as a `Frame` with a `Publish` body under `options`,
/// returning the root table's position, or `None` when the frame is not
/// one this verifier decides.
pub(crate) fn verify(buf: &[u8], options: &VerifierOptions) -> Result<Option<usize>, Reject> {
    if buf.len() > EVENT_BYTES_MAX {
        return Ok(None);
    }
    let mut v = Verifier::new(buf, options);
    match frame(&mut v) {
        // Not ours: the generic verifier decides, apparent size included.
        Ok(None) => Ok(None),
        result => v.settle(result),
    }
}

/// The Frame table and, when its body is a `Publish`, everything under it.
fn frame(v: &mut Verifier<'_, '_>) -> Result<Option<usize>, Reject> {
    let root = v.uoffset(0)?;
    let vtable = v.table(root, FRAME_DEPTH)?;
    if let Some(at) = v.field(root, vtable, fb::Frame::VT_REQUEST_ID) {
        v.aligned::<u64>(at)?;
        v.fixed::<REQUEST_ID_BYTES>(at)?;
    }
    // The generic verifier reads the union's value slot, then its tag slot.
    let body = v.field(root, vtable, fb::Frame::VT_BODY);
    let body_type = v.field(root, vtable, fb::Frame::VT_BODY_TYPE);
    let (Some(body_type), Some(body)) = (body_type, body) else {
        // No body (fine, and reported by `Message::from_verified`), or an
        // inconsistent union: left to the generic verifier.
        return Ok(None);
    };
    v.aligned::<u8>(body_type)?;
    let [tag] = v.fixed::<BODY_TYPE_BYTES>(body_type)?;
    if fb::Body(tag) != fb::Body::Publish {
        return Ok(None);
    }
    let publish = v.follow(body)?;
    publish_table(v, publish)?;
    Ok(Some(root))
}

fn publish_table(v: &mut Verifier<'_, '_>, table: usize) -> Result<(), Reject> {
    let vtable = v.table(table, PUBLISH_DEPTH)?;
    v.string_field(table, vtable, fb::Publish::VT_STREAM, Some("stream"))?;
    if let Some(at) = v.field(table, vtable, fb::Publish::VT_PARTITION) {
        v.aligned::<u32>(at)?;
        v.fixed::<PARTITION_BYTES>(at)?;
    }
    if let Some(at) = v.field(table, vtable, fb::Publish::VT_EVENTS) {
        v.tables_vector(at, event_bytes_table)?;
    }
    Ok(())
}

fn event_bytes_table(v: &mut Verifier<'_, '_>, table: usize) -> Result<(), Reject> {
    let vtable = v.table(table, EVENT_BYTES_DEPTH)?;
    match v.field(table, vtable, fb::EventBytes::VT_BYTES) {
        Some(at) => v.bytes(at).map(drop),
        None => Err(Reject::MissingRequired { field: "bytes" }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use flatbuffers::{FlatBufferBuilder, InvalidFlatbuffer};

    use super::*;
    use crate::encode;
    use crate::event::{EventRef, encode_event};
    use crate::frame::{DecodeError, Limits, decode, decode_generic, verify_frame};
    use crate::message::tests::{sample_event, sample_messages};
    use crate::message::{Message, Publish};
    use crate::tests::{Rng, run_cases};
    use crate::verify_mutations::{Layout, MUTATIONS, Mutation, mutate, put};

    fn generic<'b>(
        buf: &'b [u8],
        options: &VerifierOptions,
    ) -> Result<fb::Frame<'b>, InvalidFlatbuffer> {
        flatbuffers::root_with_opts::<fb::Frame>(options, buf)
    }

    /// An error's first line: its variant and where, without the generic
    /// verifier's field trace (which `Reject` does not carry).
    fn headline(error: &InvalidFlatbuffer) -> String {
        error.to_string().lines().next().unwrap_or("").to_owned()
    }

    /// Everything the generated accessors read from a Frame with a Publish
    /// body, with each event's position in the buffer, so that both
    /// verifiers are seen to hand out the very same bytes.
    #[derive(Debug, PartialEq)]
    struct Fields<'a> {
        loc: usize,
        request_id: u64,
        stream: &'a str,
        partition: u32,
        events: Option<Vec<(usize, &'a [u8])>>,
    }

    fn fields<'a>(buf: &'a [u8], frame: fb::Frame<'a>) -> Fields<'a> {
        let publish = frame.body_as_publish().unwrap();
        let at = |bytes: &[u8]| bytes.as_ptr() as usize - buf.as_ptr() as usize;
        Fields {
            loc: frame._tab.loc(),
            request_id: frame.request_id(),
            stream: publish.stream(),
            partition: publish.partition(),
            events: publish.events().map(|list| {
                list.iter()
                    .map(|e| (at(e.bytes().bytes()), e.bytes().bytes()))
                    .collect()
            }),
        }
    }

    // ------------------------------------------------------ valid frames

    /// An event of loadgen's shape: about 240 bytes with 100 data bytes.
    fn loadgen_event(i: usize, data_bytes: usize) -> Vec<u8> {
        let data: Vec<u8> = (0..data_bytes)
            .map(|j| b'a' + ((i + j) % 26) as u8)
            .collect();
        encode_event(&EventRef {
            id: &format!("lg7f3a--100000-{i}"),
            source: "loadgen-0",
            specversion: crate::SPECVERSION,
            ty: "loadgen.root",
            subject: Some("lg-100000"),
            data: &data,
            ..EventRef::default()
        })
    }

    /// A frame body (no length prefix) as this crate's encoder writes it.
    fn encoded(request_id: u64, publish: Publish<'_>) -> Vec<u8> {
        encode(request_id, &Message::Publish(publish)).unwrap()[4..].to_vec()
    }

    /// A Publish frame built with the generated builder directly, for
    /// shapes the encoder does not write: `copies` references to one
    /// EventBytes table (or, with `copies` 0, an empty events vector),
    /// defaults written out when `force_defaults`.
    fn built(copies: usize, event_bytes: usize, stream: &str, force_defaults: bool) -> Vec<u8> {
        let mut fbb = FlatBufferBuilder::new();
        fbb.force_defaults(force_defaults);
        let bytes = fbb.create_vector(&vec![0xa5u8; event_bytes]);
        let event = fb::EventBytes::create(&mut fbb, &fb::EventBytesArgs { bytes: Some(bytes) });
        let events = fbb.create_vector(&vec![event; copies]);
        let stream = fbb.create_string(stream);
        let publish = fb::Publish::create(
            &mut fbb,
            &fb::PublishArgs {
                stream: Some(stream),
                partition: if force_defaults { 0 } else { 9 },
                events: Some(events),
            },
        );
        let root = fb::Frame::create(
            &mut fbb,
            &fb::FrameArgs {
                request_id: if force_defaults { 0 } else { 3 },
                body_type: fb::Body::Publish,
                body: Some(publish.as_union_value()),
            },
        );
        fbb.finish_minimal(root);
        fbb.finished_data().to_vec()
    }

    /// Valid Publish frames of every shape the differential test starts
    /// from.
    fn samples() -> Vec<(&'static str, Vec<u8>)> {
        let event = sample_event();
        let loadgen: Vec<Vec<u8>> = (0..64).map(|i| loadgen_event(i, 100)).collect();
        let sizes: Vec<Vec<u8>> = [0, 1, 3, 4, 7, 300].iter().map(|&n| vec![7u8; n]).collect();
        vec![
            (
                "one_event",
                encoded(
                    1,
                    Publish {
                        stream: "events",
                        partition: 0,
                        events: vec![&event],
                    },
                ),
            ),
            (
                "loadgen_64",
                encoded(
                    100_000,
                    Publish {
                        stream: "loadgen",
                        partition: 3,
                        events: loadgen.iter().map(Vec::as_slice).collect(),
                    },
                ),
            ),
            (
                "loadgen_4",
                encoded(
                    7,
                    Publish {
                        stream: "loadgen",
                        partition: 1,
                        events: loadgen[..4].iter().map(Vec::as_slice).collect(),
                    },
                ),
            ),
            (
                "no_events",
                encoded(
                    2,
                    Publish {
                        stream: "s",
                        partition: 7,
                        events: Vec::new(),
                    },
                ),
            ),
            (
                "odd_sizes_unicode",
                encoded(
                    u64::MAX,
                    Publish {
                        stream: "strëam-日本-🦀",
                        partition: u32::MAX,
                        events: sizes.iter().map(Vec::as_slice).collect(),
                    },
                ),
            ),
            ("shared", built(5, 9, "shared", false)),
            ("empty_vector_defaults", built(0, 0, "", true)),
        ]
    }

    fn u16_at(buf: &[u8], at: usize) -> usize {
        u16::from_le_bytes(buf[at..at + 2].try_into().unwrap()) as usize
    }

    fn u32_at(buf: &[u8], at: usize) -> usize {
        u32::from_le_bytes(buf[at..at + 4].try_into().unwrap()) as usize
    }

    /// Records the table at `table` and returns the position of the field
    /// in each slot (`None` when absent).
    fn walk_table(
        buf: &[u8],
        table: usize,
        layout: &mut Layout,
    ) -> impl Fn(u16) -> Option<usize> + use<> {
        layout.tables.push(table);
        let soffset = i32::from_le_bytes(buf[table..table + 4].try_into().unwrap());
        let vtable = (table as i64 - i64::from(soffset)) as usize;
        layout.vtables.push(vtable);
        let vtable_bytes = u16_at(buf, vtable);
        layout
            .slots
            .extend((4..vtable_bytes).step_by(2).map(|s| vtable + s));
        let offsets: Vec<usize> = (0..vtable_bytes)
            .step_by(2)
            .map(|s| u16_at(buf, vtable + s))
            .collect();
        move |slot| match offsets.get(usize::from(slot) / 2) {
            Some(&offset) if offset != 0 => Some(table + offset),
            _ => None,
        }
    }

    /// Where a valid frame keeps the things worth corrupting, found by
    /// walking it (trusted: it came from a builder).
    fn layout(buf: &[u8]) -> Layout {
        let mut layout = Layout::new(&[0, 2, 4, 6, 8]);
        layout.uoffsets.push(0);
        let frame = walk_table(buf, u32_at(buf, 0), &mut layout);
        layout.tags.extend(frame(fb::Frame::VT_BODY_TYPE));
        let at = frame(fb::Frame::VT_BODY).unwrap();
        layout.uoffsets.push(at);
        let publish = walk_table(buf, at + u32_at(buf, at), &mut layout);
        let at = publish(fb::Publish::VT_STREAM).unwrap();
        layout.uoffsets.push(at);
        let string = at + u32_at(buf, at);
        let len = u32_at(buf, string);
        layout.lengths.push(string);
        layout.string_bytes.extend(string + 4..string + 4 + len);
        layout.terminators.push(string + 4 + len);
        if let Some(at) = publish(fb::Publish::VT_EVENTS) {
            layout.uoffsets.push(at);
            let vector = at + u32_at(buf, at);
            layout.lengths.push(vector);
            for i in 0..u32_at(buf, vector) {
                let element = vector + 4 + 4 * i;
                layout.uoffsets.push(element);
                let event = walk_table(buf, element + u32_at(buf, element), &mut layout);
                let at = event(fb::EventBytes::VT_BYTES).unwrap();
                layout.uoffsets.push(at);
                layout.lengths.push(at + u32_at(buf, at));
            }
        }
        layout
    }

    /// What verifying a valid `buf` counts against the limits: its
    /// apparent size and its tables.
    fn work(buf: &[u8]) -> (u64, usize) {
        let options = VerifierOptions::default();
        let mut v = Verifier::new(buf, &options);
        assert!(frame(&mut v).unwrap().is_some());
        (v.apparent_bytes(), v.tables())
    }

    // --------------------------------------------------------- mutation

    /// Limits for one case: the defaults, random ones, or verifier options
    /// at and around what the valid frame needs (`work`: its apparent size
    /// and tables; `depth`: its deepest table), which `Limits` cannot
    /// express exactly. `Limits` come back too when they made the options,
    /// so that `decode` can be compared as well.
    fn random_options(
        rng: &mut Rng,
        len: usize,
        (apparent, tables): (u64, usize),
        depth: usize,
    ) -> (VerifierOptions, Option<Limits>) {
        let limits = match rng.below(3) {
            0 => Limits::DEFAULT,
            1 => Limits {
                frame_bytes_max: match rng.below(4) {
                    0 => len / 4 + rng.below(len),
                    1 => len,
                    2 => 2 * len,
                    _ => Limits::DEFAULT.frame_bytes_max,
                },
                depth_max: [0, 1, 2, 3, 8][rng.below(5)],
                tables_max: match rng.below(5) {
                    0 => rng.below(3),
                    1 => rng.below(tables + 1),
                    2 => tables,
                    _ => Limits::DEFAULT.tables_max,
                },
            },
            _ => {
                let around = |rng: &mut Rng, n: usize| n.saturating_sub(1) + rng.below(3);
                let options = VerifierOptions {
                    max_depth: around(rng, depth),
                    max_tables: if rng.below(2) == 0 {
                        around(rng, tables)
                    } else {
                        Limits::DEFAULT.tables_max
                    },
                    max_apparent_size: match rng.below(3) {
                        0 => around(rng, apparent as usize),
                        1 => rng.below(apparent as usize + 1),
                        _ => Limits::DEFAULT.frame_bytes_max,
                    },
                    ignore_missing_null_terminator: rng.below(4) == 0,
                };
                return (options, None);
            }
        };
        (limits.verifier_options(), Some(limits))
    }

    /// Verdicts of one kind of case.
    #[derive(Debug, Default, Clone, Copy)]
    struct Tally {
        cases: u64,
        both_accept: u64,
        both_reject: u64,
        /// Not a Publish frame after the damage: left to the generic
        /// verifier.
        fell_back: u64,
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
            self.fell_back += other.fell_back;
            self.new_only += other.new_only;
            self.generic_only += other.generic_only;
            self.different_error += other.different_error;
        }
    }

    /// Runs both verifiers over `buf` under `options`, counts the verdict
    /// in `tally`, and describes any disagreement in `disagreements`. On
    /// agreement to accept, every accessor must read the same through both.
    /// With `limits`, `verify_frame` and `decode` must also return exactly
    /// what the generic verifier alone made them return, errors included.
    fn compare(
        buf: &[u8],
        options: &VerifierOptions,
        limits: Option<&Limits>,
        tally: &mut Tally,
        disagreements: &mut Vec<String>,
    ) {
        tally.cases += 1;
        let ours = verify(buf, options);
        let theirs = generic(buf, options);
        match (&ours, &theirs) {
            (Ok(Some(root)), Ok(frame)) => {
                tally.both_accept += 1;
                assert_eq!(*root, frame._tab.loc());
                let ours = publish_frame(buf, options).unwrap().unwrap();
                assert_eq!(fields(buf, ours), fields(buf, *frame));
            }
            (Ok(Some(_)), Err(error)) => {
                tally.new_only += 1;
                disagreements.push(format!("only the new verifier accepts; generic: {error}"));
            }
            (Ok(None), theirs) => {
                tally.fell_back += 1;
                // A Publish frame the generic verifier accepts is the
                // specialised verifier's to decide.
                if let Ok(frame) = theirs
                    && frame.body_type() == fb::Body::Publish
                {
                    disagreements.push("fell back on a valid Publish frame".into());
                }
            }
            (Err(reject), Err(error)) => {
                tally.both_reject += 1;
                let ours = headline(&InvalidFlatbuffer::from(*reject));
                if ours != headline(error) {
                    tally.different_error += 1;
                    disagreements.push(format!("new: {ours} / generic: {error}"));
                }
            }
            (Err(reject), Ok(_)) => {
                tally.generic_only += 1;
                disagreements.push(format!(
                    "only the generic verifier accepts; new: {reject:?}"
                ));
            }
        }
        if let Some(limits) = limits {
            assert_eq!(decode(buf, limits), decode_generic(buf, limits));
            let loc = |frame: fb::Frame<'_>| frame._tab.loc();
            let before = match buf.len() > limits.frame_bytes_max {
                true => None,
                false => Some(theirs.map(loc).map_err(DecodeError::Malformed)),
            };
            match verify_frame(buf, limits) {
                Err(DecodeError::TooLarge { .. }) => assert_eq!(before, None),
                after => assert_eq!(Some(after.map(loc)), before),
            }
        }
    }

    /// Cases for the differential test; `HADRON_WIRE_VERIFY_CASES`
    /// overrides it for a longer run.
    fn differential_cases() -> u64 {
        std::env::var("HADRON_WIRE_VERIFY_CASES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(30_000)
    }

    /// The deepest table of a valid frame: EventBytes when it has any.
    fn depth_of(layout: &Layout) -> usize {
        if layout.tables.len() > 2 {
            EVENT_BYTES_DEPTH
        } else {
            PUBLISH_DEPTH
        }
    }

    /// The differential test: valid Publish frames of every sample shape,
    /// each mutated once (or, one case in five, two or three times), under
    /// default, random or boundary limits. The specialised verifier must
    /// never accept what the generic one rejects; the test also requires
    /// the reverse, and the same first failure for every buffer both
    /// reject.
    #[test]
    fn mutations_agree_with_the_generic_verifier() {
        let samples: Vec<_> = samples()
            .into_iter()
            .map(|(name, buf)| {
                let layout = layout(&buf);
                let work = work(&buf);
                (name, buf, layout, work)
            })
            .collect();
        let mut tallies: BTreeMap<Mutation, Tally> = BTreeMap::new();
        let mut disagreements = Vec::new();
        run_cases(
            "frame::mutations_agree_with_the_generic_verifier",
            differential_cases(),
            |rng| {
                let (_, valid, layout, work) = &samples[rng.below(samples.len())];
                let mut buf = valid.clone();
                let first = MUTATIONS[rng.below(MUTATIONS.len())];
                mutate(rng, &mut buf, layout, first);
                if rng.below(5) == 0 {
                    for _ in 0..1 + rng.below(2) {
                        let next = MUTATIONS[rng.below(MUTATIONS.len())];
                        mutate(rng, &mut buf, layout, next);
                    }
                }
                let (options, limits) = random_options(rng, buf.len(), *work, depth_of(layout));
                let tally = tallies.entry(first).or_default();
                compare(&buf, &options, limits.as_ref(), tally, &mut disagreements);
            },
        );
        let mut total = Tally::default();
        println!(
            "{:<13} {:>7} {:>12} {:>12} {:>10} {:>9} {:>13} {:>16}",
            "mutation",
            "cases",
            "both accept",
            "both reject",
            "fell back",
            "new only",
            "generic only",
            "different error"
        );
        for (mutation, t) in &tallies {
            println!(
                "{:<13} {:>7} {:>12} {:>12} {:>10} {:>9} {:>13} {:>16}",
                format!("{mutation:?}"),
                t.cases,
                t.both_accept,
                t.both_reject,
                t.fell_back,
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
        assert_eq!(disagreements, Vec::<String>::new(), "{total:?}");
        assert_eq!(total.new_only, 0, "the new verifier accepted a bad buffer");
        assert_eq!(total.generic_only, 0, "the new verifier is stricter");
        assert_eq!(total.different_error, 0, "the first failures differ");
        // The mutations must reach every verdict, or the test proves
        // little.
        assert!(total.both_accept > total.cases / 20, "{total:?}");
        assert!(total.both_reject > total.cases / 2, "{total:?}");
        assert!(total.fell_back > total.cases / 100, "{total:?}");
    }

    // ------------------------------------------------------ named cases

    /// Random Publish messages, as the encoder writes them, are accepted
    /// by the specialised verifier and decode to the message sent, with
    /// each event's bytes where the generic verifier finds them.
    #[test]
    fn encoded_publish_frames_are_accepted() {
        for (name, buf) in samples() {
            let options = Limits::DEFAULT.verifier_options();
            let theirs = generic(&buf, &options).unwrap();
            let ours = publish_frame(&buf, &options)
                .unwrap_or_else(|e| panic!("{name}: {e:?}"))
                .unwrap_or_else(|| panic!("{name}: fell back"));
            assert_eq!(fields(&buf, ours), fields(&buf, theirs), "{name}");
        }
        run_cases("encoded_publish_frames_are_accepted", 500, |rng| {
            let events: Vec<Vec<u8>> = (0..rng.below(70))
                .map(|i| match rng.below(3) {
                    0 => loadgen_event(i, rng.below(300)),
                    _ => rng.bytes_upto(300),
                })
                .collect();
            let stream = rng.string_upto(24);
            let publish = Publish {
                stream: &stream,
                partition: rng.next_u64() as u32,
                events: events.iter().map(Vec::as_slice).collect(),
            };
            let request_id = rng.next_u64();
            let buf = encoded(request_id, publish.clone());
            let options = Limits::DEFAULT.verifier_options();
            let ours = publish_frame(&buf, &options).unwrap().unwrap();
            let theirs = generic(&buf, &options).unwrap();
            assert_eq!(fields(&buf, ours), fields(&buf, theirs));
            let decoded = decode(&buf, &Limits::DEFAULT).unwrap();
            assert_eq!(decoded.request_id, request_id);
            assert_eq!(decoded.message, Message::Publish(publish));
            let Message::Publish(decoded) = decoded.message else {
                unreachable!()
            };
            let slices = |p: &Publish<'_>| -> Vec<(usize, usize)> {
                p.events
                    .iter()
                    .map(|e| (e.as_ptr() as usize - buf.as_ptr() as usize, e.len()))
                    .collect()
            };
            let Message::Publish(before) = decode_generic(&buf, &Limits::DEFAULT).unwrap().message
            else {
                unreachable!()
            };
            assert_eq!(slices(&decoded), slices(&before));
        });
    }

    /// Every other body goes to the generic verifier, and decodes as before.
    #[test]
    fn other_bodies_fall_back() {
        let event = sample_event();
        let mut publish = 0;
        for message in sample_messages(&event) {
            let frame = encode(9, &message).unwrap();
            let buf = &frame[4..];
            let options = Limits::DEFAULT.verifier_options();
            match (&message, verify(buf, &options)) {
                (Message::Publish(_), Ok(Some(_))) => publish += 1,
                (Message::Publish(_), other) => panic!("Publish: {other:?}"),
                (_, Ok(None)) => {}
                (_, other) => panic!("{}: {other:?}", message.name()),
            }
            assert_eq!(
                decode(buf, &Limits::DEFAULT),
                decode_generic(buf, &Limits::DEFAULT)
            );
            assert_eq!(decode(buf, &Limits::DEFAULT).unwrap().message, message);
        }
        assert!(publish > 0);
    }

    /// The depth, table and apparent-size limits at, just below and just
    /// above what each sample needs: the generic verifier must accept
    /// exactly when every limit is met (so the specialised verifier counts
    /// as it does), and both must agree on every combination.
    #[test]
    fn limits_at_and_around_their_boundaries() {
        let mut tally = Tally::default();
        let mut disagreements = Vec::new();
        for (name, buf) in samples() {
            let (apparent, tables) = work(&buf);
            let depth = depth_of(&layout(&buf));
            for max_depth in 0..=depth + 1 {
                for max_tables in tables - 1..=tables + 1 {
                    for max_apparent_size in apparent - 1..=apparent + 1 {
                        let options = VerifierOptions {
                            max_depth,
                            max_tables,
                            max_apparent_size: max_apparent_size as usize,
                            ..VerifierOptions::default()
                        };
                        let fits = max_depth >= depth
                            && max_tables >= tables
                            && max_apparent_size >= apparent;
                        assert_eq!(
                            generic(&buf, &options).is_ok(),
                            fits,
                            "{name}: {options:?}, needs {apparent} bytes, {tables} tables, depth {depth}"
                        );
                        compare(&buf, &options, None, &mut tally, &mut disagreements);
                    }
                }
            }
        }
        assert_eq!(disagreements, Vec::<String>::new(), "{tally:?}");
        assert!(tally.both_accept > 0 && tally.both_reject > 0, "{tally:?}");
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

    /// The position of what the uoffset in `slot` leads to.
    fn target_of(buf: &[u8], table: usize, slot: u16) -> usize {
        let at = field_at(buf, table, slot);
        at + u32_at(buf, at)
    }

    #[test]
    fn each_failure_is_the_generic_verifiers_first_failure() {
        let (_, full) = samples().remove(2);
        let len = full.len();
        let root = u32_at(&full, 0);
        let publish = target_of(&full, root, fb::Frame::VT_BODY);
        let stream = target_of(&full, publish, fb::Publish::VT_STREAM);
        let stream_len = u32_at(&full, stream);
        let events = target_of(&full, publish, fb::Publish::VT_EVENTS);
        let first_event = events + 4 + u32_at(&full, events + 4);
        let first_bytes = target_of(&full, first_event, fb::EventBytes::VT_BYTES);
        let partition_slot = slot_at(&full, publish, fb::Publish::VT_PARTITION);
        let partition = field_at(&full, publish, fb::Publish::VT_PARTITION);
        let request_id_slot = slot_at(&full, root, fb::Frame::VT_REQUEST_ID);
        let request_id = field_at(&full, root, fb::Frame::VT_REQUEST_ID);
        let mut bad_utf8 = full.clone();
        bad_utf8[stream + 4] = 0xff;
        let mut no_terminator = full.clone();
        no_terminator[stream + 4 + stream_len] = b'x';
        let (apparent, tables) = work(&full);
        let default = Limits::DEFAULT.verifier_options();

        let cases: Vec<(&str, Vec<u8>, VerifierOptions, Reject)> = vec![
            (
                "empty",
                Vec::new(),
                default.clone(),
                Reject::OutOfBounds { start: 0, end: 4 },
            ),
            (
                "root offset unaligned",
                with_u32(&full, 0, 2),
                default.clone(),
                Reject::Unaligned {
                    position: 2,
                    ty: "i32",
                },
            ),
            (
                "body offset past the end",
                with_u32(
                    &full,
                    field_at(&full, root, fb::Frame::VT_BODY),
                    (len - field_at(&full, root, fb::Frame::VT_BODY)) as u32,
                ),
                default.clone(),
                Reject::OutOfBounds {
                    start: len,
                    end: len + 4,
                },
            ),
            (
                "request_id unaligned",
                with_u16(&full, request_id_slot, (request_id - root + 4) as u16),
                default.clone(),
                Reject::Unaligned {
                    position: request_id + 4,
                    ty: "u64",
                },
            ),
            (
                "partition unaligned",
                with_u16(&full, partition_slot, (partition - publish + 2) as u16),
                default.clone(),
                Reject::Unaligned {
                    position: partition + 2,
                    ty: "u32",
                },
            ),
            (
                "stream absent",
                with_u16(&full, slot_at(&full, publish, fb::Publish::VT_STREAM), 0),
                default.clone(),
                Reject::MissingRequired { field: "stream" },
            ),
            (
                "stream not UTF-8",
                bad_utf8.clone(),
                default.clone(),
                Reject::Utf8 {
                    error: core::str::from_utf8(&bad_utf8[stream + 4..stream + 4 + stream_len])
                        .unwrap_err(),
                    start: stream + 4,
                    end: stream + 4 + stream_len,
                },
            ),
            (
                "stream terminator overwritten",
                no_terminator,
                default.clone(),
                Reject::MissingNullTerminator {
                    start: stream + 4,
                    end: stream + 4 + stream_len,
                },
            ),
            (
                "event bytes absent",
                with_u16(
                    &full,
                    slot_at(&full, first_event, fb::EventBytes::VT_BYTES),
                    0,
                ),
                default.clone(),
                Reject::MissingRequired { field: "bytes" },
            ),
            (
                "event count huge",
                with_u32(&full, events, 0x4000_0000),
                default.clone(),
                Reject::OutOfBounds {
                    start: events + 4,
                    end: events + 4 + (1 << 32),
                },
            ),
            (
                "event bytes length huge",
                with_u32(&full, first_bytes, u32::MAX),
                default.clone(),
                Reject::OutOfBounds {
                    start: first_bytes + 4,
                    end: first_bytes + 4 + u32::MAX as usize,
                },
            ),
            (
                "no depth for EventBytes",
                full.clone(),
                VerifierOptions {
                    max_depth: EVENT_BYTES_DEPTH - 1,
                    ..default.clone()
                },
                Reject::DepthLimitReached,
            ),
            (
                "one table too many",
                full.clone(),
                VerifierOptions {
                    max_tables: tables - 1,
                    ..default.clone()
                },
                Reject::TooManyTables,
            ),
            (
                "one byte too many",
                full.clone(),
                VerifierOptions {
                    max_apparent_size: apparent as usize - 1,
                    ..default.clone()
                },
                Reject::ApparentSizeTooLarge,
            ),
        ];
        for (what, buf, options, expected) in cases {
            assert_eq!(verify(&buf, &options), Err(expected), "{what}");
            let theirs = generic(&buf, &options).unwrap_err();
            assert_eq!(
                headline(&expected.into()),
                headline(&theirs),
                "{what}: the generic verifier fails first elsewhere"
            );
        }
        // Through `decode`, the error is the generic verifier's, trace and
        // all.
        for buf in [bad_utf8, with_u32(&full, events, 0x4000_0000)] {
            let err = decode(&buf, &Limits::DEFAULT).unwrap_err();
            let theirs = generic(&buf, &default).unwrap_err();
            assert_eq!(err, DecodeError::Malformed(theirs.clone()));
            assert_eq!(err.to_string(), format!("malformed flatbuffer: {theirs}"));
        }
    }

    /// Frames that are not the specialised verifier's to decide: their
    /// verdict comes from the generic verifier, unchanged.
    #[test]
    fn union_changes_fall_back() {
        let (_, full) = samples().remove(2);
        let root = u32_at(&full, 0);
        let tag = field_at(&full, root, fb::Frame::VT_BODY_TYPE);
        let mut cases = Vec::new();
        for body in [0, 1, 2, 4, 5, 12, 23, 24, 25, 26, 200, 255] {
            let mut buf = full.clone();
            buf[tag] = body;
            cases.push(buf);
        }
        cases.push(with_u16(&full, slot_at(&full, root, fb::Frame::VT_BODY), 0));
        cases.push(with_u16(
            &full,
            slot_at(&full, root, fb::Frame::VT_BODY_TYPE),
            0,
        ));
        let options = Limits::DEFAULT.verifier_options();
        for buf in cases {
            assert_eq!(verify(&buf, &options), Ok(None));
            assert_eq!(
                decode(&buf, &Limits::DEFAULT),
                decode_generic(&buf, &Limits::DEFAULT)
            );
        }
    }

    /// Truncation at every byte offset of every sample, under the default
    /// limits: the same verdict and first failure from both verifiers.
    #[test]
    fn truncation_at_every_offset_agrees() {
        let mut tally = Tally::default();
        let mut disagreements = Vec::new();
        let limits = Limits::DEFAULT;
        for (_, buf) in samples() {
            for end in 0..=buf.len() {
                compare(
                    &buf[..end],
                    &limits.verifier_options(),
                    Some(&limits),
                    &mut tally,
                    &mut disagreements,
                );
            }
        }
        assert_eq!(disagreements, Vec::<String>::new(), "{tally:?}");
        assert!(tally.both_reject > tally.both_accept, "{tally:?}");
    }

    /// The apparent-size limit must stop the work, not only the verdict:
    /// 16,384 references to one EventBytes table of 64 KiB add up to
    /// 1 GiB; the verifier may overshoot the limit by at most one span
    /// (at most the buffer) and a few fixed reads.
    #[test]
    fn apparent_size_limit_bounds_the_work() {
        let buf = built(16_384, 64 << 10, "s", false);
        let limits = Limits {
            frame_bytes_max: buf.len(),
            ..Limits::DEFAULT
        };
        let options = limits.verifier_options();
        let mut v = Verifier::new(&buf, &options);
        assert_eq!(frame(&mut v), Err(Reject::ApparentSizeTooLarge));
        let overshoot = v.apparent_bytes() - options.max_apparent_size as u64;
        assert!(overshoot <= buf.len() as u64, "{overshoot}");
        assert_eq!(
            decode(&buf, &limits),
            Err(DecodeError::Malformed(
                InvalidFlatbuffer::ApparentSizeTooLarge
            ))
        );
        assert_eq!(decode(&buf, &limits), decode_generic(&buf, &limits));
        // Within the default limits, some sharing is fine.
        let shared = built(1000, 1024, "s", false);
        assert!(decode(&shared, &Limits::DEFAULT).is_ok());
    }
}
