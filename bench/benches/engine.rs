//! Criterion micro-benchmarks of the storage engine's hot paths: batch
//! encode + CRC, batch verification, sparse index lookup, and append through
//! the log on simulated storage (engine CPU cost without a disk).

#![expect(
    clippy::unwrap_used,
    reason = "benchmark setup panics on failure by design"
)]

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures::executor::block_on;
use hadron_engine::log::batch;
use hadron_engine::log::index::{self, IndexEntry};
use hadron_engine::storage::sim::{SimFaults, SimStorage};
use hadron_engine::{Durability, Log, LogConfig};

fn records(n: usize, len: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| vec![i as u8; len]).collect()
}

fn batch_encode_and_verify(c: &mut Criterion) {
    let recs = records(16, 1024);
    let len = batch::encoded_len(&recs);
    let mut group = c.benchmark_group("batch");
    group.throughput(Throughput::Bytes(len as u64));
    let mut buf = BytesMut::with_capacity(len);
    let stamp = batch::BatchStamp {
        kind: batch::BatchKind::Events,
        base_offset: 42,
        first_timestamp_ms: 0,
        term: 1,
        raft_index: 1,
    };
    group.bench_function("encode_crc_16x1KiB", |b| {
        b.iter(|| {
            buf.clear();
            batch::encode_into(&mut buf, black_box(&stamp), black_box(&recs));
            black_box(&buf);
        })
    });
    let mut encoded = BytesMut::new();
    batch::encode_into(&mut encoded, &stamp, &recs);
    group.bench_function("verify_16x1KiB", |b| {
        b.iter(|| black_box(batch::verify(black_box(&encoded)).is_ok()))
    });
    group.finish();
}

fn index_lookup(c: &mut Criterion) {
    // A full 128 MiB segment indexed every 4 KiB: 32,768 entries.
    let mut idx = Vec::new();
    for i in 1..=32_768u32 {
        index::push(
            &mut idx,
            IndexEntry {
                relative_offset: i * 4,
                position: i * 4096,
            },
        );
    }
    let mut x = 0x9E37_79B9u32;
    c.bench_function("index/lookup_32768_entries", |b| {
        b.iter(|| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            black_box(index::lookup(black_box(&idx), x % (32_768 * 4)))
        })
    });
}

fn append_sim(c: &mut Criterion) {
    let recs = records(16, 1024);
    let config = LogConfig {
        durability: Durability::Never,
        segment_bytes: 64 << 20,
        ..LogConfig::default()
    };
    let mut group = c.benchmark_group("log");
    group.throughput(Throughput::Bytes(batch::encoded_len(&recs) as u64));
    group.bench_function("append_16x1KiB_sim_storage", |b| {
        b.iter_custom(|iters| {
            // A fresh log every few thousand appends keeps the simulated
            // disk's memory bounded; setup is not timed.
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(2_000);
                let sim = SimStorage::new(1, SimFaults::default());
                let log = block_on(Log::open(sim, Path::new("/bench"), config)).unwrap();
                let start = Instant::now();
                block_on(async {
                    for _ in 0..n {
                        black_box(log.append(&recs, 0).await.unwrap());
                    }
                });
                total += start.elapsed();
                left -= n;
            }
            total
        })
    });
    group.finish();
}

fn stage_completion(c: &mut Criterion) {
    use hadron_engine::pipeline::{Dag, ExecutionIndex};
    // The seed's DAG: deploy; billing, monitoring, notify; sync after all.
    let dag = Dag::new(&[vec![], vec![0], vec![0], vec![0], vec![0, 1, 2, 3]]).unwrap();
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(5));
    // `live` executions at once (50 is the seed's maxParallel); each
    // iteration runs the oldest to the end (5 dispatches and 5 completions)
    // and starts a new one.
    for live in [50u64, 1_000] {
        let mut idx = ExecutionIndex::new(dag.clone(), live as usize);
        for root in 0..live {
            idx.start(root, 0);
        }
        let mut next = live;
        group.bench_function(format!("seed_dag_5_stage_completions_{live}_live"), |b| {
            b.iter(|| {
                let r = idx.low_watermark().unwrap();
                for s in [0usize, 2, 1, 3, 4] {
                    idx.dispatch(r, s);
                    black_box(idx.complete(black_box(r), s));
                }
                idx.start(next, 0);
                next += 1;
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    batch_encode_and_verify,
    index_lookup,
    append_sim,
    stage_completion
);
criterion_main!(benches);
