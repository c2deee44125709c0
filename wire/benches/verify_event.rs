//! Criterion micro-benchmark of `hadron_wire::verify_event` (the
//! specialised Event verifier) against the generic flatbuffers verifier it
//! replaced, on the same events in the same process, so the result reads
//! as a ratio.
//!
//!   cargo bench -p hadron-wire --bench verify_event

#![expect(
    clippy::unwrap_used,
    reason = "benchmark setup panics on failure by design"
)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use hadron_wire::{Limits, verify_event};

mod events;

fn verify(c: &mut Criterion) {
    let limits = Limits::DEFAULT;
    for (name, bytes) in events::events() {
        // Both must accept the event, or the comparison is meaningless.
        events::verify_event_generic(&bytes, &limits).unwrap();
        verify_event(&bytes, &limits).unwrap();
        let mut group = c.benchmark_group(format!("verify_event/{name}_{}B", bytes.len()));
        group.bench_function("generic", |b| {
            b.iter(|| events::verify_event_generic(black_box(&bytes), &limits).is_ok())
        });
        group.bench_function("specialised", |b| {
            b.iter(|| verify_event(black_box(&bytes), &limits).is_ok())
        });
        group.finish();
    }
}

criterion_group!(benches, verify);
criterion_main!(benches);
