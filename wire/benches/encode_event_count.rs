//! Runs one Event encoder in a loop, for instruction counts under
//! callgrind (hardware counters are not available everywhere, and times
//! wander on a shared machine). Setup and process start cancel out between
//! two runs with different iteration counts:
//!
//!   cargo bench -p hadron-wire --bench encode_event_count --no-run
//!   B=$(ls -t $CARGO_TARGET_DIR/release/deps/encode_event_count-* | grep -v '\.d$' | head -1)
//!   for n in 10000 110000; do
//!     valgrind --tool=callgrind --callgrind-out-file=/dev/null $B writer loadgen_data_100 $n
//!   done
//!   # instructions per encode = (Ir(110000) - Ir(10000)) / 100000
//!
//! Without arguments (as `cargo bench` runs it) it checks that both
//! encoders encode each event alike and prints this usage.

use std::hint::black_box;
use std::process::ExitCode;

use hadron_wire::EventEncoder;

mod encoders;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cases = encoders::cases();
    let names: Vec<&str> = cases.iter().map(|case| case.name).collect();
    let [encoder, event, iterations] = args.as_slice() else {
        for case in &cases {
            encoders::check(case);
        }
        println!(
            "usage: encode_event_count <builder|writer> <{}> <iterations>",
            names.join("|")
        );
        return ExitCode::SUCCESS;
    };
    let Some(case) = cases.iter().find(|case| case.name == event) else {
        eprintln!("unknown event {event}; one of {}", names.join(", "));
        return ExitCode::FAILURE;
    };
    let Ok(iterations) = iterations.parse::<u64>() else {
        eprintln!("iterations must be a number, not {iterations}");
        return ExitCode::FAILURE;
    };
    let expected = encoders::check(case) as u64;
    let more = || case.more_attributes.iter().copied();
    let mut out = Vec::with_capacity(4096);
    let mut bytes = 0u64;
    match encoder.as_str() {
        "builder" => {
            let mut builder = encoders::BuilderEncoder::new();
            for _ in 0..iterations {
                out.clear();
                bytes += builder.encode_into(black_box(&case.event), more(), &mut out) as u64;
            }
        }
        "writer" => {
            let mut writer = EventEncoder::new();
            for _ in 0..iterations {
                out.clear();
                bytes += writer.encode_into(black_box(&case.event), more(), &mut out) as u64;
            }
        }
        other => {
            eprintln!("unknown encoder {other}; builder or writer");
            return ExitCode::FAILURE;
        }
    }
    // The builder's layout differs, so only the writer's length is known.
    if encoder == "writer" {
        assert_eq!(bytes, expected * iterations);
    }
    black_box(bytes);
    ExitCode::SUCCESS
}
