//! `loadgen`: Hadron's macro benchmark. It drives the real client over the
//! real protocol and reports throughput and latency percentiles (HDR
//! histograms) for three scenarios: `publish` (publish to ack), `e2e`
//! (publish to delivery in a consumer group) and `pipeline` (the seed's
//! five-stage DAG, publish to `sync`). `--target nats` runs `publish`
//! against NATS JetStream, the peer baseline.
//!
//! ```sh
//! loadgen publish --url 127.0.0.1:7000 --connections 4 --batch 64 --size 256 --duration 10 --json
//! ```
//!
//! Layout: `args` (flags and their limits), `schedule` (when each batch is
//! due, what is measured, latency recording), `run` (the worker loop and
//! the progress line, shared by the targets), `target_hadron` and
//! `target_nats` (the systems under test), `rss` (the server's memory),
//! `report` (the JSON object and the table).

mod args;
mod report;
mod rss;
mod run;
mod schedule;
mod target_hadron;
mod target_nats;

/// mimalloc instead of the system allocator, so that the load generator
/// spends less of the machine it shares with the server on allocation
/// (glibc's malloc and free were about a quarter of its samples in the
/// pipeline scenario, most of it in decoded events and strings).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use clap::Parser;

use args::{Cli, Target};

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    if let Err(e) = cli.scenario.validate() {
        eprintln!("loadgen: {e}");
        return ExitCode::from(2);
    }
    // Resolved here so that the report's parameters show the count used.
    let threads = cli.scenario.args().threads();
    cli.scenario.args_mut().threads = Some(threads as u32);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadgen: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let args = cli.scenario.args();
    let result = runtime.block_on(async {
        match args.target {
            Target::Hadron => target_hadron::run(&cli.scenario).await,
            Target::Nats => target_nats::run(&cli.scenario).await,
        }
    });
    // Background tasks (subscriptions, reconnects) end with the runtime.
    runtime.shutdown_background();
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", report.table());
    if args.json {
        match report.json() {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("loadgen: cannot write the JSON report: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
