//! `hadron repair`: cuts damage out of the logs of a stopped server's data
//! directory (see `hadron_engine::log` recovery and `Log::repair`).
//!
//! A log whose active segment is damaged opens read-only in the server
//! (publishes answer `Damaged`). Repair, run with the server stopped (it
//! takes the data directory's `LOCK` as the server does), keeps the bytes
//! from the damage to the end of the written data in
//! `<segment>.log.cut-<position>` beside the segment, and makes the log
//! continue above every offset seen in them. Nothing is deleted.

use std::path::{Path, PathBuf};

use hadron_engine::log::SEGMENT_BYTES_MIN;
use hadron_engine::storage::dma::DmaStorage;
use hadron_engine::{Log, LogConfig};

/// Directories below the data directory searched for logs: streams/<s>/<p>/log
/// is the deepest the server writes.
const LOG_DIR_DEPTH_MAX: usize = 6;

/// Repairs every damaged log under `data_dir`; prints what it did.
pub fn run(data_dir: &Path) -> Result<(), String> {
    if !data_dir.is_dir() {
        return Err(format!("{} is not a directory", data_dir.display()));
    }
    let _lock = crate::serve::lock_data_dir(data_dir)?;
    let mut dirs = Vec::new();
    find_log_dirs(data_dir, 0, &mut dirs)?;
    dirs.sort();
    let root = data_dir.to_path_buf();
    let executor = glommio::LocalExecutorBuilder::default()
        .make()
        .map_err(|e| format!("cannot start an executor: {e}"))?;
    executor.run(async move {
        let storage = DmaStorage::new(&root)
            .await
            .map_err(|e| format!("cannot prepare {}: {e}", root.display()))?;
        // Recovery needs no sizes but these: the segment size only bounds
        // preallocation (the server extends it to its own at open), and the
        // pending bytes only stand in for the tear bound of logs from before
        // log.meta.
        let config = LogConfig {
            segment_bytes: SEGMENT_BYTES_MIN,
            batch_bytes_max: SEGMENT_BYTES_MIN as usize,
            ..LogConfig::default()
        };
        let (mut repaired, mut failed) = (0, 0);
        for dir in &dirs {
            match Log::repair(storage.clone(), dir, config).await {
                Ok(Some(report)) => {
                    repaired += 1;
                    println!("{}: {report}", dir.display());
                }
                Ok(None) => {}
                Err(e) => {
                    failed += 1;
                    eprintln!("{}: cannot repair: {e}", dir.display());
                }
            }
        }
        println!(
            "{} logs checked, {repaired} repaired, {failed} could not be",
            dirs.len()
        );
        if failed > 0 {
            return Err(format!("{failed} logs could not be repaired"));
        }
        Ok(())
    })
}

/// Collects the directories holding a log (a segment file or `log.meta`).
fn find_log_dirs(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let mut is_log = false;
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if is_dir && depth < LOG_DIR_DEPTH_MAX {
            find_log_dirs(&path, depth + 1, out)?;
        } else if name == hadron_engine::log::meta::META_FILE
            || name
                .strip_suffix(".log")
                .is_some_and(|stem| stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()))
        {
            is_log = true;
        }
    }
    if is_log {
        out.push(dir.to_path_buf());
    }
    Ok(())
}
