//! The log on real files through glommio `DmaFile` (O_DIRECT, io_uring):
//! appends, reads (which need the poll-ring probe on virtio disks), rolling,
//! reopening and retention.

#![cfg(feature = "glommio")]
#![expect(
    clippy::expect_used,
    reason = "test helpers outside #[test] functions panic on failure by design"
)]

use std::path::Path;
use std::rc::Rc;

use futures::future::join_all;
use glommio::LocalExecutorBuilder;
use hadron_engine::log::RECYCLED_SEGMENTS_MAX;
use hadron_engine::log::batch::Batches;
use hadron_engine::storage::dma::DmaStorage;
use hadron_engine::{Durability, Log, LogConfig, Retention};

fn on_executor<F, Fut>(f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    LocalExecutorBuilder::default()
        .io_memory(2 << 20)
        .spawn(f)
        .expect("spawn executor")
        .join()
        .expect("executor panicked");
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 256 << 10,
        batch_bytes_max: 64 << 10,
        durability: Durability::Always,
        ..LogConfig::default()
    }
}

async fn read_all(log: &Log<DmaStorage>) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut offset = log.stats().start_offset;
    while offset < log.visible_offset() {
        let read = log.read(offset, 10_000).await.expect("read");
        for batch in Batches::new(&read.bytes) {
            for (o, r) in batch.expect("valid batch").records() {
                if o >= offset {
                    out.push((o, r.to_vec()));
                }
            }
        }
        offset = read.next_offset;
    }
    out
}

fn record(i: u64) -> Vec<u8> {
    format!("event-{i:06}-").repeat(40).into_bytes()
}

#[test]
fn appends_roll_reopen_and_read_back_on_real_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().to_path_buf();
    on_executor(move || async move {
        let dir = root.join("events").join("0");
        let storage = DmaStorage::new(&root).await.expect("probe");
        let log = Rc::new(
            Log::open(storage.clone(), &dir, config())
                .await
                .expect("open"),
        );
        // 64 concurrent appenders, 8 batches each.
        let tasks = (0..64u64).map(|t| {
            let log = log.clone();
            glommio::spawn_local(async move {
                let mut acked = Vec::new();
                for b in 0..8u64 {
                    let i = t * 100 + b;
                    let a = log.append(&[record(i)], i).await.expect("append");
                    acked.push((a.base_offset, record(i)));
                }
                acked
            })
        });
        let mut expected: Vec<(u64, Vec<u8>)> =
            join_all(tasks).await.into_iter().flatten().collect();
        expected.sort();
        assert_eq!(expected.len(), 512);
        assert!(log.stats().segments > 1, "rolled: {:?}", log.stats());
        assert_eq!(read_all(&log).await, expected);
        drop(log);

        let log = Log::open(storage.clone(), &dir, config())
            .await
            .expect("reopen");
        assert_eq!(read_all(&log).await, expected);
        let a = log
            .append(&[b"after reopen".to_vec()], 0)
            .await
            .expect("append");
        assert_eq!(a.base_offset, 512);
        let sealed: Vec<_> = std::fs::read_dir(&dir)
            .expect("list")
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
            .collect();
        assert_eq!(sealed.len(), log.stats().segments);
        drop(log);

        // Retention by bytes leaves the active segment and deletes the files.
        let retained = LogConfig {
            retention: Retention {
                max_bytes: Some(1),
                max_age_ms: None,
            },
            ..config()
        };
        let log = Log::open(storage.clone(), &dir, retained)
            .await
            .expect("reopen");
        let report = log.apply_retention(0).await.expect("retention");
        assert!(report.segments > 0);
        assert_eq!(log.stats().segments, 1);
        // Up to RECYCLED_SEGMENTS_MAX retired files are kept for reuse.
        let kept = report.segments.min(RECYCLED_SEGMENTS_MAX);
        assert_eq!(report.recycled, kept);
        let names = |ext: &str| {
            std::fs::read_dir(&dir)
                .expect("list")
                .filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == ext))
                .count()
        };
        assert_eq!((names("log"), names("idx"), names("free")), (1, 1, kept));
        let tail = read_all(&log).await;
        assert_eq!(tail.last().expect("tail"), &(512, b"after reopen".to_vec()));

        // The next segments begin in those files, over their old batches;
        // what reads back, before and after a reopen, is only the new ones.
        let mut expected = tail;
        let mut i = 513;
        while log.stats().commits.segments_recycled < 2 {
            assert!(i < 5_000, "no roll into a recycled file: {:?}", log.stats());
            let a = log.append(&[record(i)], i).await.expect("append");
            assert_eq!(a.base_offset, i);
            expected.push((i, record(i)));
            i += 1;
        }
        let start = log.stats().start_offset;
        expected.retain(|(o, _)| *o >= start);
        assert_eq!(read_all(&log).await, expected);
        drop(log);
        let log = Log::open(storage, &dir, retained).await.expect("reopen");
        assert_eq!(read_all(&log).await, expected);
    });
}

#[test]
fn a_torn_tail_on_a_real_file_is_cut_at_the_last_whole_batch() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().to_path_buf();
    on_executor(move || async move {
        let dir = root.join("p");
        let storage = DmaStorage::new(&root).await.expect("probe");
        let log = Log::open(storage.clone(), &dir, config())
            .await
            .expect("open");
        for i in 0..10 {
            log.append(&[record(i)], i).await.expect("append");
        }
        drop(log);
        // Tear the last batch: overwrite its last 100 bytes with garbage.
        let seg = dir.join(format!("{:020}.log", 0));
        let mut bytes = std::fs::read(&seg).expect("read segment");
        let end = Batches::new(&bytes)
            .map_while(|b| b.ok())
            .map(|b| b.bytes.len())
            .sum::<usize>();
        bytes[end - 100..end].fill(0xEE);
        std::fs::write(&seg, &bytes).expect("write segment");
        let log = Log::open(storage, &dir, config()).await.expect("reopen");
        let back = read_all(&log).await;
        assert_eq!(back.len(), 9);
        assert_eq!(back[8], (8, record(8)));
        assert_eq!(
            log.append(&[b"x".to_vec()], 0)
                .await
                .expect("append")
                .base_offset,
            9
        );
    });
}

#[test]
fn the_probe_file_is_non_empty_and_reads_work_after_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().to_path_buf();
    on_executor(move || async move {
        DmaStorage::new(&root).await.expect("probe");
        let probe = root.join(hadron_engine::storage::dma::PROBE_FILE_NAME);
        assert_eq!(
            std::fs::metadata(Path::new(&probe)).expect("probe").len(),
            4096
        );
    });
}

/// The `open(2)` flags of every descriptor this process holds on `path`,
/// from `/proc/self/fdinfo`.
fn open_flags_of(path: &Path) -> Vec<u32> {
    let mut flags = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd")
        .expect("list fds")
        .flatten()
    {
        if std::fs::read_link(entry.path()).ok().as_deref() != Some(path) {
            continue;
        }
        let info = std::fs::read_to_string(Path::new("/proc/self/fdinfo").join(entry.file_name()))
            .expect("fdinfo");
        let octal = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .expect("a flags line")
            .trim();
        flags.push(u32::from_str_radix(octal, 8).expect("octal flags"));
    }
    flags
}

#[test]
fn an_always_log_writes_its_segment_through_and_a_relaxed_one_does_not() {
    const O_DSYNC: u32 = libc::O_DSYNC as u32;
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().to_path_buf();
    on_executor(move || async move {
        let storage = DmaStorage::new(&root).await.expect("probe");
        for (name, durability, through) in [
            ("always", Durability::Always, true),
            ("never", Durability::Never, false),
        ] {
            let dir = root.join(name);
            let segment = dir.join(format!("{:020}.log", 0));
            let index = dir.join(format!("{:020}.idx", 0));
            let mut expected = Vec::new();
            // Created, then reopened (the active segment is recovered).
            for offset in 0..2u64 {
                let log = Log::open(
                    storage.clone(),
                    &dir,
                    LogConfig {
                        durability,
                        ..config()
                    },
                )
                .await
                .expect("open");
                log.append(&[record(offset)], offset).await.expect("append");
                log.sync().await.expect("sync");
                expected.push((offset, record(offset)));
                let flags = open_flags_of(&segment);
                assert_eq!(flags.len(), 1, "{name}: one descriptor on the segment");
                assert_eq!(
                    flags[0] & O_DSYNC != 0,
                    through,
                    "{name}, open {offset}: flags {:o}",
                    flags[0]
                );
                // The index beside it is a hint, written without syncing.
                assert!(open_flags_of(&index).iter().all(|f| f & O_DSYNC == 0));
                assert_eq!(read_all(&log).await, expected, "{name}");
            }
        }
    });
}

/// Every shard of a server prepares its storage on the same data dir at
/// the same moment. The probe file must never be seen short by one of them
/// (its executor would then pick the poll ring and fail every read with
/// EOPNOTSUPP), so each of several executors, started together on a fresh
/// dir again and again, must read back what it wrote.
#[test]
fn concurrent_probes_on_a_fresh_dir_never_break_reads() {
    const EXECUTORS: usize = 4;
    const ROUNDS: usize = 40;
    let tmp = tempfile::tempdir().expect("tempdir");
    for round in 0..ROUNDS {
        let root = tmp.path().join(format!("round-{round}"));
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(EXECUTORS));
        let handles: Vec<_> = (0..EXECUTORS)
            .map(|shard| {
                let root = root.clone();
                let barrier = barrier.clone();
                LocalExecutorBuilder::default()
                    .io_memory(1 << 20)
                    .spawn(move || async move {
                        barrier.wait();
                        let storage = DmaStorage::new(&root).await.expect("probe");
                        let dir = root.join(format!("shard-{shard}"));
                        let log = Log::open(storage, &dir, config()).await.expect("open");
                        log.append(&[record(shard as u64)], 0)
                            .await
                            .expect("append");
                        assert_eq!(
                            read_all(&log).await,
                            vec![(0, record(shard as u64))],
                            "round {round}, shard {shard}"
                        );
                    })
                    .expect("spawn executor")
            })
            .collect();
        for handle in handles {
            handle.join().expect("an executor failed");
        }
        let probe = root.join(hadron_engine::storage::dma::PROBE_FILE_NAME);
        assert_eq!(std::fs::metadata(&probe).expect("probe").len(), 4096);
        let leftovers: Vec<_> = std::fs::read_dir(&root)
            .expect("list")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".dma-probe.tmp"))
            .collect();
        assert!(
            leftovers.is_empty(),
            "temporary probe files left: {leftovers:?}"
        );
    }
}

/// Disk the active segment's file holds (allocated blocks, not its length).
fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).expect("stat segment").blocks() * 512
}

#[test]
fn an_idle_log_holds_one_preallocation_step_of_disk_and_grows_by_steps() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().to_path_buf();
    on_executor(move || async move {
        let dir = root.join("events").join("0");
        let storage = DmaStorage::new(&root).await.expect("probe");
        // The server's sizes: 128 MiB segments allocated 4 MiB at a time.
        let config = LogConfig::default();
        let step = config.segment_preallocate_bytes;
        assert_eq!((config.segment_bytes, step), (128 << 20, 4 << 20));
        let segment = dir.join(format!("{:020}.log", 0));
        let log = Log::open(storage.clone(), &dir, config)
            .await
            .expect("open");
        log.append(&[record(0)], 0).await.expect("append");
        let len = std::fs::metadata(&segment).expect("stat").len();
        assert_eq!(len, step, "created one step long");
        let held = allocated_bytes(&segment);
        assert!(held <= step, "an idle log holds {held} bytes of disk");
        // 6 MiB more: extended to two steps, not to the segment.
        let big = vec![7u8; 1 << 20];
        for i in 1..=6u64 {
            log.append(std::slice::from_ref(&big), i)
                .await
                .expect("append");
        }
        let len = std::fs::metadata(&segment).expect("stat").len();
        assert_eq!(len, 2 * step);
        assert!(allocated_bytes(&segment) <= 2 * step);
        drop(log);
        // Reopened: allocated from the data's end, the data all there.
        let log = Log::open(storage.clone(), &dir, config)
            .await
            .expect("reopen");
        assert_eq!(log.recovery(), &hadron_engine::log::Recovery::default());
        assert_eq!(log.visible_offset(), 7);
        assert_eq!(std::fs::metadata(&segment).expect("stat").len(), 2 * step);
        assert!(allocated_bytes(&segment) <= 2 * step);
    });
}
