//! Fuzz target: `verify_event`'s specialised verifier against flatbuffers'
//! generic verifier on arbitrary bytes. They must agree: the same verdict,
//! on rejection the same error, on acceptance the same values from every
//! accessor. The first byte picks the limits, so the depth, table and
//! apparent-size limits are fuzzed too. Seed the corpus with real events
//! (any `Event` buffers) to start from valid structure.

#![no_main]

use hadron_wire::{DecodeError, Limits, fb, verify_event};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
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
    let ours = verify_event(buf, &limits);
    if buf.len() > limits.frame_bytes_max {
        assert!(matches!(ours, Err(DecodeError::TooLarge { .. })));
        return;
    }
    let theirs = flatbuffers::root_with_opts::<fb::Event>(&limits.verifier_options(), buf);
    match (ours, theirs) {
        (Ok(ours), Ok(theirs)) => assert_eq!(read(ours), read(theirs)),
        (Err(DecodeError::Malformed(ours)), Err(theirs)) => assert_eq!(ours, theirs),
        (ours, theirs) => panic!("verifiers disagree: {ours:?} / {theirs:?}"),
    }
});

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
