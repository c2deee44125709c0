//! Criterion micro-benchmark of `hadron_wire::decode` on a Publish frame
//! (64 loadgen events of about 240 bytes), which verifies it with the
//! specialised Publish verifier, against the generic flatbuffers verifier
//! decode used before, on the same frame in the same process, so the
//! result reads as a ratio.
//!
//!   cargo bench -p hadron-wire --bench decode_publish

#![expect(
    clippy::unwrap_used,
    reason = "benchmark setup panics on failure by design"
)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use hadron_wire::Limits;

mod frames;

fn decode(c: &mut Criterion) {
    let limits = Limits::DEFAULT;
    let events = frames::events();
    let body = frames::frame(&events);
    // Both must decode the frame to the same events, or the comparison is
    // meaningless.
    let generic = frames::decode_generic(&body, &limits).unwrap();
    assert_eq!(generic.events.len(), frames::EVENTS);
    assert_eq!(frames::decode_specialised(&body, &limits).unwrap(), generic);
    let mut group = c.benchmark_group(format!(
        "decode_publish/{}x{}B_{}B",
        events.len(),
        events[0].len(),
        body.len()
    ));
    group.bench_function("generic", |b| {
        b.iter(|| frames::decode_generic(black_box(&body), &limits).is_ok())
    });
    group.bench_function("specialised", |b| {
        b.iter(|| frames::decode_specialised(black_box(&body), &limits).is_ok())
    });
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
