//! What the two seeded simulations (`partition/sim_tests.rs`, `sim/`)
//! share: choosing and running the seeds, and reading a partition back.

use std::fmt::Debug;
use std::ops::AddAssign;

use hadron_engine::log::batch::Batches;
use hadron_engine::storage::Storage;

use super::clock::Clock;
use super::partition::Partition;

/// The seeds to run: `HADRON_SIM_SEED` alone, else `0..HADRON_SIM_SEEDS`
/// (a longer soak than CI's), else `0..default`.
pub fn seeds(default: u64) -> Vec<u64> {
    if let Ok(s) = std::env::var("HADRON_SIM_SEED") {
        return vec![s.parse().expect("HADRON_SIM_SEED must be a number")];
    }
    match std::env::var("HADRON_SIM_SEEDS") {
        Ok(n) => (0..n.parse().expect("HADRON_SIM_SEEDS must be a number")).collect(),
        Err(_) => (0..default).collect(),
    }
}

/// Runs `run` for every seed of [`seeds`], adding up what each exercised;
/// the first seed that fails is named with the command that replays it
/// (`cargo test -p hadron-server <filter>`). Returns the seeds run and the
/// sum.
pub fn run_seeds<C: AddAssign + Default + Debug>(
    filter: &str,
    default: u64,
    run: impl Fn(u64) -> C + std::panic::RefUnwindSafe,
) -> (usize, C) {
    let seeds = seeds(default);
    let mut total = C::default();
    for &seed in &seeds {
        match std::panic::catch_unwind(|| run(seed)) {
            Ok(coverage) => total += coverage,
            Err(_) => panic!(
                "the simulation failed for seed {seed}; replay it with\n    HADRON_SIM_SEED={seed} cargo test -p hadron-server {filter}"
            ),
        }
    }
    eprintln!("{} seeds: {total:?}", seeds.len());
    (seeds.len(), total)
}

/// Folds `value` into a run's trace digest (FNV-1a style), so that two
/// runs of a seed can be compared by one number.
pub fn fold_trace(trace: u64, value: u64) -> u64 {
    (trace ^ value).wrapping_mul(0x100_0000_01B3)
}

/// Every record of a partition's log: (offset, its batch's timestamp,
/// bytes).
pub async fn read_back<S: Storage, C: Clock>(p: &Partition<S, C>) -> Vec<(u64, u64, Vec<u8>)> {
    let end = p.log.visible_offset();
    let mut at = p.log.stats().start_offset;
    let mut out = Vec::new();
    while at < end {
        let read = p
            .log
            .read(at, 1 << 20)
            .await
            .unwrap_or_else(|e| panic!("reading back offset {at}: {e}"));
        for batch in Batches::new(&read.bytes) {
            let batch = batch.unwrap_or_else(|e| panic!("reading back offset {at}: {e}"));
            if batch.header.kind.is_control() {
                continue;
            }
            let at_ms = batch.header.first_timestamp_ms;
            for (offset, record) in batch.records() {
                if offset >= at && offset < end {
                    out.push((offset, at_ms, record.to_vec()));
                }
            }
        }
        assert!(read.next_offset > at, "reading back makes progress");
        at = read.next_offset;
    }
    out
}
