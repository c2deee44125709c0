//! The property checks that the fuzz targets in `wire/fuzz` and the
//! corpus-replay test (`wire/tests/fuzz_corpus.rs`) share, one function per
//! target, named after it. Each takes arbitrary bytes and panics when a
//! property is broken: a panic is what libFuzzer catches and reports, and
//! what the replay test catches per corpus file to name the input. On bytes
//! that keep every property they return quietly, whatever the bytes were.
//!
//! Keeping the checks here rather than in the targets lets the checked-in
//! corpora (`wire/fuzz/corpus/<target>/`) run under a plain
//! `cargo test -p hadron-wire` on the stable toolchain, without libFuzzer.
//! It is not part of the crate's API.

#![doc(hidden)]

use crate::{
    DecodeError, LENGTH_PREFIX_BYTES, Limits, Message, check, decode, decode_event, encode, fb,
};

/// The `decode_frame` target: feed `data` to what a Hadron receiver does
/// with a TCP byte stream (check, decode, then decode every carried event)
/// and require that nothing panics and that whatever decodes re-encodes to
/// a frame that decodes to the same thing.
#[expect(
    clippy::expect_used,
    reason = "a fuzz property check reports a broken property by panicking"
)]
pub fn decode_frame(data: &[u8]) {
    // Small limits so the fuzzer reaches the limit checks too.
    let limits = Limits {
        frame_bytes_max: 1 << 16,
        depth_max: 8,
        tables_max: 1024,
    };
    let mut rest = data;
    while let Ok(Some(total)) = check(rest, &limits) {
        let body = &rest[LENGTH_PREFIX_BYTES..total];
        if let Ok(frame) = decode(body, &limits) {
            for event in carried_events(&frame.message) {
                let _ = decode_event(event, &limits);
            }
            let again = encode(frame.request_id, &frame.message).expect("re-encode");
            let back = decode(&again[LENGTH_PREFIX_BYTES..], &Limits::DEFAULT).expect("re-decode");
            assert_eq!(back, frame);
        }
        rest = &rest[total..];
    }
    let _ = decode(data, &limits);
    let _ = decode_event(data, &limits);
}

/// The `Event` buffers a message carries, for `decode_frame` to decode too.
/// Messages that carry none (and any added later) fall to the `_` arm.
pub(crate) fn carried_events<'a>(message: &Message<'a>) -> Vec<&'a [u8]> {
    match message {
        Message::Publish(m) => m.events.clone(),
        Message::FetchOk(m) => m.records.iter().map(|r| r.event).collect(),
        Message::Delivery(m) => vec![m.event],
        Message::StageDelivery(m) => {
            let mut all = vec![m.root];
            all.extend(m.inputs.iter().map(|i| i.event));
            all
        }
        Message::StageAck(m) => vec![m.output],
        Message::StageAcks(m) => m.acks.iter().map(|a| a.output).collect(),
        _ => Vec::new(),
    }
}

/// The `verify_event` target: `crate::verify_event`'s specialised verifier
/// against flatbuffers' generic verifier on arbitrary bytes. They must
/// agree: the same verdict, on rejection the same error, on acceptance the
/// same values from every accessor. The first byte picks the limits, so the
/// depth, table and apparent-size limits are checked too; the rest is the
/// buffer.
pub fn verify_event(data: &[u8]) {
    let Some((&knob, buf)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        frame_bytes_max: match knob & 3 {
            0 => buf.len(),
            1 => buf.len() / 2 + 1,
            _ => 1 << 20,
        },
        depth_max: usize::from((knob >> 2) & 3),
        tables_max: match knob >> 4 {
            0 => 1,
            1 => 2,
            2 => 3,
            _ => 1024,
        },
    };
    let ours = crate::verify_event(buf, &limits);
    if buf.len() > limits.frame_bytes_max {
        assert!(
            matches!(ours, Err(DecodeError::TooLarge { .. })),
            "a {} byte buffer over frame_bytes_max {} gave {ours:?}",
            buf.len(),
            limits.frame_bytes_max
        );
        return;
    }
    let theirs = flatbuffers::root_with_opts::<fb::Event>(&limits.verifier_options(), buf);
    match (ours, theirs) {
        (Ok(ours), Ok(theirs)) => assert_eq!(read(ours), read(theirs)),
        (Err(DecodeError::Malformed(ours)), Err(theirs)) => assert_eq!(ours, theirs),
        (ours, theirs) => panic!("verifiers disagree: {ours:?} / {theirs:?}"),
    }
}

/// Every field of an `Event` as its accessors read it.
type Fields<'a> = (
    &'a str,
    &'a str,
    Option<&'a str>,
    &'a str,
    Option<&'a str>,
    Option<i64>,
    Option<&'a str>,
    Option<Vec<(&'a str, &'a str)>>,
    Option<&'a [u8]>,
);

fn read(e: fb::Event<'_>) -> Fields<'_> {
    (
        e.id(),
        e.source(),
        e.specversion(),
        e.type_(),
        e.subject(),
        e.time_ms(),
        e.datacontenttype(),
        e.attributes()
            .map(|list| list.iter().map(|a| (a.key(), a.value())).collect()),
        e.data().map(|d| d.bytes()),
    )
}
