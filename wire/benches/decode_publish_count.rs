//! Runs one Publish frame decoder in a loop, for instruction counts under
//! callgrind (hardware counters are not available everywhere). Setup and
//! process start cancel out between two runs with different iteration
//! counts:
//!
//!   cargo bench -p hadron-wire --bench decode_publish_count --no-run
//!   B=$(ls -t $CARGO_TARGET_DIR/release/deps/decode_publish_count-* | grep -v '\.d$' | head -1)
//!   for n in 1000 11000; do
//!     valgrind --tool=callgrind --callgrind-out-file=/dev/null $B specialised $n
//!   done
//!   # instructions per decode = (Ir(11000) - Ir(1000)) / 10000
//!
//! Without arguments (as `cargo bench` runs it) it decodes the frame once
//! with each decoder and prints this usage.

#![expect(
    clippy::unwrap_used,
    reason = "benchmark setup panics on failure by design"
)]

use std::hint::black_box;
use std::process::ExitCode;

use hadron_wire::Limits;

mod frames;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let limits = Limits::DEFAULT;
    let events = frames::events();
    let body = frames::frame(&events);
    let [decoder, iterations] = args.as_slice() else {
        assert_eq!(
            frames::decode_specialised(&body, &limits).unwrap(),
            frames::decode_generic(&body, &limits).unwrap()
        );
        println!("usage: decode_publish_count <generic|specialised> <iterations>");
        return ExitCode::SUCCESS;
    };
    let Ok(iterations) = iterations.parse::<u64>() else {
        eprintln!("iterations must be a number, not {iterations}");
        return ExitCode::FAILURE;
    };
    let decode = match decoder.as_str() {
        "generic" => frames::decode_generic,
        "specialised" => frames::decode_specialised,
        other => {
            eprintln!("unknown decoder {other}; generic or specialised");
            return ExitCode::FAILURE;
        }
    };
    let mut events_decoded = 0;
    for _ in 0..iterations {
        events_decoded += decode(black_box(&body), &limits).unwrap().events.len();
    }
    assert_eq!(events_decoded as u64, iterations * frames::EVENTS as u64);
    ExitCode::SUCCESS
}
