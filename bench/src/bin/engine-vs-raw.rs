//! `engine-vs-raw`: the storage engine's durable append throughput against
//! what the disk itself can do, measured in one run on real files.
//!
//! (a) raw: one pinned glommio executor writes 256 KiB O_DIRECT blocks
//!     sequentially through io_uring, with an fdatasync after each;
//! (b) engine: 64 concurrent appenders on the same executor each append
//!     batches of 16 records of 1 KiB through the log's group commit with
//!     `always` durability (each append resolves after its fdatasync).
//!
//! The raw run is made before and after the engine run and averaged, so
//! drift on a shared machine shows up in both. The last line of output is
//! one JSON object; `ratio` is engine payload bytes/s over raw bytes/s.

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::Parser;
use glommio::io::{DmaFile, OpenOptions};
use glommio::{LocalExecutorBuilder, Placement};
use hadron_engine::storage::dma::DmaStorage;
use hadron_engine::{Durability, Log, LogConfig};
use hdrhistogram::Histogram;

#[derive(Parser, Debug, Clone)]
#[command(about = "Durable engine appends vs a raw O_DIRECT sequential writer")]
struct Args {
    /// Directory on the file system to measure (a temporary one by default).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Seconds for each run.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Raw writer block size.
    #[arg(long, default_value_t = 256 << 10)]
    raw_block_bytes: usize,
    /// Concurrent appenders.
    #[arg(long, default_value_t = 64)]
    appenders: usize,
    /// Records per batch.
    #[arg(long, default_value_t = 16)]
    records: usize,
    /// Bytes per record.
    #[arg(long, default_value_t = 1024)]
    record_bytes: usize,
    /// glommio io_memory for the executor, MiB.
    #[arg(long, default_value_t = 16)]
    io_memory_mib: usize,
    /// CPU to pin the executor to.
    #[arg(long, default_value_t = 0)]
    cpu: usize,
}

#[derive(Debug, Clone, Copy)]
struct RawResult {
    bytes_per_sec: f64,
    sync_p50_us: u64,
    sync_p99_us: u64,
}

async fn raw_run(dir: &std::path::Path, args: &Args) -> std::io::Result<RawResult> {
    let path = dir.join("raw-writer.bin");
    let file: DmaFile = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .dma_open(&path)
        .await?;
    let block = args.raw_block_bytes as u64;
    let deadline = Duration::from_secs(args.seconds);
    let prealloc = 4u64 << 30;
    file.pre_allocate(prealloc, false).await?;
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(std::io::Error::other)?;
    let start = Instant::now();
    let mut pos = 0u64;
    while start.elapsed() < deadline {
        let mut buf = file.alloc_dma_buffer(args.raw_block_bytes);
        buf.as_bytes_mut().fill((pos / block) as u8 | 1);
        file.write_at(buf, pos % prealloc).await?;
        let t = Instant::now();
        file.fdatasync().await?;
        hist.record(t.elapsed().as_micros() as u64)
            .map_err(std::io::Error::other)?;
        pos += block;
    }
    let secs = start.elapsed().as_secs_f64();
    file.close().await?;
    std::fs::remove_file(&path)?;
    Ok(RawResult {
        bytes_per_sec: pos as f64 / secs,
        sync_p50_us: hist.value_at_quantile(0.50),
        sync_p99_us: hist.value_at_quantile(0.99),
    })
}

#[derive(Debug)]
struct EngineResult {
    payload_bytes_per_sec: f64,
    batch_bytes_per_sec: f64,
    records_per_sec: f64,
    appends: u64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
}

async fn engine_run(dir: &std::path::Path, args: &Args) -> Result<EngineResult, String> {
    let storage = DmaStorage::new(dir).await.map_err(|e| e.to_string())?;
    let log_dir = dir.join("engine-log");
    let config = LogConfig {
        durability: Durability::Always,
        ..LogConfig::default()
    };
    let log = Rc::new(
        Log::open(storage, &log_dir, config)
            .await
            .map_err(|e| e.to_string())?,
    );
    let hist = Rc::new(RefCell::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?,
    ));
    let deadline = Duration::from_secs(args.seconds);
    let start = Instant::now();
    let tasks: Vec<_> = (0..args.appenders)
        .map(|t| {
            let log = log.clone();
            let hist = hist.clone();
            let records: Vec<Vec<u8>> = (0..args.records)
                .map(|r| vec![(t * 31 + r) as u8; args.record_bytes])
                .collect();
            glommio::spawn_local(async move {
                let mut appends = 0u64;
                while start.elapsed() < deadline {
                    let t0 = Instant::now();
                    log.append(&records, 0).await.map_err(|e| e.to_string())?;
                    let _ = hist.borrow_mut().record(t0.elapsed().as_micros() as u64);
                    appends += 1;
                }
                Ok::<u64, String>(appends)
            })
        })
        .collect();
    let mut appends = 0;
    for t in tasks {
        appends += t.await?;
    }
    let secs = start.elapsed().as_secs_f64();
    let bytes = log.stats().bytes;
    drop(log);
    let _ = std::fs::remove_dir_all(&log_dir);
    let records = appends * args.records as u64;
    let hist = hist.borrow();
    Ok(EngineResult {
        payload_bytes_per_sec: (records * args.record_bytes as u64) as f64 / secs,
        batch_bytes_per_sec: bytes as f64 / secs,
        records_per_sec: records as f64 / secs,
        appends,
        p50_us: hist.value_at_quantile(0.50),
        p99_us: hist.value_at_quantile(0.99),
        p999_us: hist.value_at_quantile(0.999),
        max_us: hist.max(),
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let tmp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            tempfile::tempdir_in(d)?.keep()
        }
        None => {
            tmp = tempfile::tempdir_in(std::env::current_dir()?)?;
            tmp.path().to_path_buf()
        }
    };
    let run_args = args.clone();
    let run_dir = dir.clone();
    let outcome = LocalExecutorBuilder::new(Placement::Fixed(args.cpu))
        .name("engine-vs-raw")
        .io_memory(args.io_memory_mib << 20)
        .spawn(move || async move {
            // The probe must come before any other DmaFile on this device.
            DmaStorage::new(&run_dir).await.map_err(|e| e.to_string())?;
            let raw1 = raw_run(&run_dir, &run_args)
                .await
                .map_err(|e| e.to_string())?;
            eprintln!(
                "raw (before): {:.1} MiB/s, fdatasync p99 {} us",
                raw1.bytes_per_sec / 1048576.0,
                raw1.sync_p99_us
            );
            let engine = engine_run(&run_dir, &run_args).await?;
            eprintln!(
                "engine: {:.1} MiB/s payload, {:.0} records/s, append p50 {} us p99 {} us",
                engine.payload_bytes_per_sec / 1048576.0,
                engine.records_per_sec,
                engine.p50_us,
                engine.p99_us
            );
            let raw2 = raw_run(&run_dir, &run_args)
                .await
                .map_err(|e| e.to_string())?;
            eprintln!(
                "raw (after): {:.1} MiB/s, fdatasync p99 {} us",
                raw2.bytes_per_sec / 1048576.0,
                raw2.sync_p99_us
            );
            Ok::<_, String>((raw1, engine, raw2))
        })?
        .join()?;
    let (raw1, engine, raw2) = outcome?;
    if args.dir.is_some() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let raw = (raw1.bytes_per_sec + raw2.bytes_per_sec) / 2.0;
    let report = serde_json::json!({
        "dir": dir.display().to_string(),
        "seconds_per_run": args.seconds,
        "raw_block_bytes": args.raw_block_bytes,
        "appenders": args.appenders,
        "records_per_batch": args.records,
        "record_bytes": args.record_bytes,
        "raw_bytes_per_sec": raw.round(),
        "raw_bytes_per_sec_runs": [raw1.bytes_per_sec.round(), raw2.bytes_per_sec.round()],
        "raw_fdatasync_p99_us": raw1.sync_p99_us.max(raw2.sync_p99_us),
        "raw_fdatasync_p50_us": raw1.sync_p50_us.max(raw2.sync_p50_us),
        "engine_bytes_per_sec": engine.payload_bytes_per_sec.round(),
        "engine_batch_bytes_per_sec": engine.batch_bytes_per_sec.round(),
        "engine_records_per_sec": engine.records_per_sec.round(),
        "engine_appends": engine.appends,
        "ratio": ((engine.payload_bytes_per_sec / raw) * 1000.0).round() / 1000.0,
        "p50_us": engine.p50_us,
        "p99_us": engine.p99_us,
        "p999_us": engine.p999_us,
        "max_us": engine.max_us,
    });
    println!("{report}");
    Ok(())
}
