//! Criterion micro-benchmark of `EventEncoder::encode_into` (the
//! hand-written writer) against the `FlatBufferBuilder` encoding it
//! replaced, on the same events in the same process, so the result reads
//! as a ratio. Both append one event to a reused buffer, as the client
//! does for each event of a batch.
//!
//!   cargo bench -p hadron-wire --bench encode_event
//!
//! On a busy machine the times wander; `encode_event_count` gives
//! instruction counts, which do not.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use hadron_wire::EventEncoder;

mod encoders;

fn encode(c: &mut Criterion) {
    let mut builder = encoders::BuilderEncoder::new();
    let mut writer = EventEncoder::new();
    let mut out = Vec::with_capacity(4096);
    for case in encoders::cases() {
        let len = encoders::check(&case);
        let more = || case.more_attributes.iter().copied();
        let mut group = c.benchmark_group(format!("encode_event/{}_{len}B", case.name));
        group.bench_function("builder", |b| {
            b.iter(|| {
                out.clear();
                builder.encode_into(black_box(&case.event), more(), &mut out)
            })
        });
        group.bench_function("writer", |b| {
            b.iter(|| {
                out.clear();
                writer.encode_into(black_box(&case.event), more(), &mut out)
            })
        });
        group.finish();
    }
}

criterion_group!(benches, encode);
criterion_main!(benches);
