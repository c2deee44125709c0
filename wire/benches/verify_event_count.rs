//! Runs one Event verifier in a loop, for instruction counts under
//! callgrind (hardware counters are not available everywhere). Setup and
//! process start cancel out between two runs with different iteration
//! counts:
//!
//!   cargo bench -p hadron-wire --bench verify_event_count --no-run
//!   B=$(ls -t $CARGO_TARGET_DIR/release/deps/verify_event_count-* | grep -v '\.d$' | head -1)
//!   for n in 10000 110000; do
//!     valgrind --tool=callgrind --callgrind-out-file=/dev/null $B specialised data_100 $n
//!   done
//!   # instructions per verify = (Ir(110000) - Ir(10000)) / 100000
//!
//! Without arguments (as `cargo bench` runs it) it verifies each event
//! once with each verifier and prints this usage.

#![expect(
    clippy::unwrap_used,
    reason = "benchmark setup panics on failure by design"
)]

use std::hint::black_box;
use std::process::ExitCode;

use hadron_wire::{Limits, verify_event};

mod events;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let limits = Limits::DEFAULT;
    let events = events::events();
    let names: Vec<&str> = events.iter().map(|(name, _)| *name).collect();
    let [verifier, event, iterations] = args.as_slice() else {
        for (_, bytes) in &events {
            events::verify_event_generic(bytes, &limits).unwrap();
            verify_event(bytes, &limits).unwrap();
        }
        println!(
            "usage: verify_event_count <generic|specialised> <{}> <iterations>",
            names.join("|")
        );
        return ExitCode::SUCCESS;
    };
    let Some((_, bytes)) = events.iter().find(|(name, _)| name == event) else {
        eprintln!("unknown event {event}; one of {}", names.join(", "));
        return ExitCode::FAILURE;
    };
    let Ok(iterations) = iterations.parse::<u64>() else {
        eprintln!("iterations must be a number, not {iterations}");
        return ExitCode::FAILURE;
    };
    let mut accepted = 0u64;
    match verifier.as_str() {
        "generic" => {
            for _ in 0..iterations {
                accepted +=
                    u64::from(events::verify_event_generic(black_box(bytes), &limits).is_ok());
            }
        }
        "specialised" => {
            for _ in 0..iterations {
                accepted += u64::from(verify_event(black_box(bytes), &limits).is_ok());
            }
        }
        other => {
            eprintln!("unknown verifier {other}; generic or specialised");
            return ExitCode::FAILURE;
        }
    }
    assert_eq!(accepted, iterations, "every verification must accept");
    ExitCode::SUCCESS
}
