//! The disk an idle replicated stream holds: every log's active segment is
//! allocated in steps of `segmentPreallocateBytes` (4 MiB by default), not
//! to the whole 128 MiB segment, so a replicated partition whose logs are
//! open (Raft's first entries written) holds about a step per log per node.
//! Measured as allocated blocks (`st_blocks`), not file lengths.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hadron_tests::cluster::{Cluster, ClusterOptions};
use hadron_tests::eventually;

const STREAM: &str = "orders";
const PARTITIONS: u32 = 4;
/// The default `segmentPreallocateBytes`.
const STEP_BYTES: u64 = 4 << 20;

/// Every `*.log` file under `dir`, with the bytes of disk it holds.
fn segment_files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            found.extend(segment_files(&path));
        } else if path.extension().is_some_and(|e| e == "log") {
            found.push((path, meta.blocks() * 512));
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_replicated_partition_holds_about_a_preallocation_step_per_log() {
    let mut cluster = Cluster::start(ClusterOptions {
        resources: format!(
            "apiVersion: hadron.rs/v1beta1\nkind: Stream\nmetadata: {{ name: {STREAM} }}\nspec: {{ partitions: {PARTITIONS}, replicas: 3 }}\n"
        ),
        ..ClusterOptions::default()
    });
    for partition in 0..PARTITIONS {
        cluster
            .await_leader_where(STREAM, partition, Duration::from_secs(30), |_| true)
            .await;
    }
    // Each node's partitions open their events and group-offsets logs.
    let streams: Vec<PathBuf> = cluster
        .ids()
        .into_iter()
        .map(|id| cluster.node(id).data_dir().join("streams").join(STREAM))
        .collect();
    let logs_per_node = 2 * PARTITIONS as usize;
    let what = format!("every node opening its {logs_per_node} partition logs");
    eventually(Duration::from_secs(30), &what, || async {
        let opened = streams
            .iter()
            .all(|dir| segment_files(dir).len() >= logs_per_node);
        opened.then_some(())
    })
    .await;
    for dir in &streams {
        let files = segment_files(dir);
        assert_eq!(files.len(), logs_per_node, "{files:?}");
        for (path, held) in &files {
            assert!(
                *held <= 2 * STEP_BYTES,
                "{} holds {held} bytes of disk, more than two {STEP_BYTES}-byte steps",
                path.display()
            );
        }
        let total: u64 = files.iter().map(|(_, held)| held).sum();
        assert!(total <= logs_per_node as u64 * 2 * STEP_BYTES, "{total}");
    }
    // The rest of each data dir (the metadata log) is allocated the same way.
    for id in cluster.ids() {
        for (path, held) in segment_files(&cluster.node(id).data_dir()) {
            assert!(held <= 2 * STEP_BYTES, "{} holds {held}", path.display());
        }
    }
}
