//! Fuzz target: `verify_event`'s specialised verifier against flatbuffers'
//! generic verifier on arbitrary bytes. They must agree: the same verdict,
//! on rejection the same error, on acceptance the same values from every
//! accessor. The first byte picks the limits, so the depth, table and
//! apparent-size limits are fuzzed too. The check lives in
//! `hadron_wire::fuzz_checks`, which the corpus-replay test shares; the
//! checked-in corpus starts from real events (`wire/examples/fuzz_seeds.rs`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| hadron_wire::fuzz_checks::verify_event(data));
