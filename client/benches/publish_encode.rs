//! Criterion micro-benchmarks of the publisher's CPU cost per event, without
//! a server: `encode_publish_frames` runs the code `Publisher::publish_batch`
//! runs before it writes to a socket (id and source filling, event
//! encoding, grouping by partition, frame splitting, frame encoding).
//!
//! - `publish_encode/<size>`: a 64-event batch shaped like loadgen's (ids
//!   given, no source, one subject, `<size>` bytes of data), built outside
//!   the measurement.
//! - `publish_encode_generated_ids/<size>`: the same without ids, so the
//!   client generates them.
//!
//! Each reports time per batch and elements (events) per second; ns/event
//! is the time divided by 64. Dropping the consumed events is measured too,
//! as it is in a real publish.

#![expect(
    clippy::unwrap_used,
    reason = "benchmark setup panics on failure by design"
)]

use std::fmt::Write as _;
use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use hadron::{NewEvent, encode_publish_frames};
use hadron_wire::{Encoder, Limits};

/// Events per batch (loadgen's default `--batch`).
const BATCH_EVENTS: usize = 64;
/// Payload sizes measured.
const SIZES: [(&str, usize); 2] = [("100B", 100), ("1KiB", 1024)];

fn events(data_bytes: usize, with_ids: bool) -> Vec<NewEvent> {
    let data: Vec<u8> = (0..data_bytes).map(|i| b'a' + (i % 26) as u8).collect();
    (0..BATCH_EVENTS)
        .map(|i| NewEvent {
            id: if with_ids {
                format!("lg18a3f-100000-{i}")
            } else {
                String::new()
            },
            ty: "loadgen.test".to_owned(),
            subject: Some("lg-100000".to_owned()),
            data: data.clone(),
            ..NewEvent::default()
        })
        .collect()
}

fn bench_encode(c: &mut Criterion, group_name: &str, with_ids: bool) {
    let mut group = c.benchmark_group(group_name);
    group.throughput(Throughput::Elements(BATCH_EVENTS as u64));
    for (name, size) in SIZES {
        let template = events(size, with_ids);
        // Long-lived, as a connection's encoder is.
        let mut encoder = Encoder::new(&Limits::DEFAULT);
        let mut n = 0u64;
        group.bench_function(name, |b| {
            b.iter_batched(
                || template.clone(),
                |events| {
                    let frames = encode_publish_frames(
                        &mut encoder,
                        "events",
                        "loadgen-0",
                        8,
                        Limits::DEFAULT.frame_bytes_max,
                        events,
                        |id| {
                            n += 1;
                            let _ = write!(id, "loadgen-0-18a3f0c2d4e5f607-1a2b-{n}");
                        },
                    )
                    .unwrap();
                    black_box(frames)
                },
                // One input at a time, so the heap stays in the steady
                // state of a publisher (build a batch, publish it, drop it)
                // instead of holding hundreds of prepared batches; the
                // timer's overhead is small against tens of microseconds.
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

fn publish_encode(c: &mut Criterion) {
    bench_encode(c, "publish_encode", true);
}

fn publish_encode_generated_ids(c: &mut Criterion) {
    bench_encode(c, "publish_encode_generated_ids", false);
}

criterion_group!(benches, publish_encode, publish_encode_generated_ids);
criterion_main!(benches);
