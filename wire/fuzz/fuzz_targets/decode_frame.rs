//! Fuzz target: feed arbitrary bytes to what a Hadron receiver does with a
//! TCP byte stream (check, decode, then verify every carried event) and
//! require that nothing panics and that whatever decodes re-encodes to a
//! frame that decodes to the same thing. The check lives in
//! `hadron_wire::fuzz_checks`, which the corpus-replay test shares.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| hadron_wire::fuzz_checks::decode_frame(data));
