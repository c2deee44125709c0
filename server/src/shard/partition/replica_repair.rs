//! Recovery of a replica whose log is damaged (docs/replication.md
//! section 10, a first form): the replica repairs the damaged range from
//! its peers instead of refusing to start, without ever helping to elect a
//! leader that lacks what it had acknowledged.
//!
//! ```text
//!  open: verify every batch (checksums)         damage at index D
//!        write raft.recovering = R (last index before the cut), durable
//!        commit in log.meta lowered to min(commit, D - 1)
//!        cut the log after D - 1 (across segments)
//!  run:  abstain while commit < R: no vote or pre-vote granted, no
//!        campaign; appends from the leader refill the log
//!        commit >= R: raft.recovering removed, a voter again
//! ```
//!
//! **Why it is safe.** Every entry this replica may have acknowledged lies
//! at or below R. While it abstains, a leader can only be elected by a
//! majority of the *other* voters; any entry committed with this replica's
//! help is also on a majority, so every such majority has a voter holding
//! it, and Raft's up-to-date check keeps a candidate without it from
//! winning. If too few of those voters are up, no leader is elected: the
//! group waits (safety over availability) rather than losing an
//! acknowledged event. The marker is written before the cut, so a crash in
//! the middle resumes abstaining at the next start.
//!
//! **Not covered yet**: damage in the active segment, which the engine's
//! own recovery handles first (past its durable watermark it is cut as a
//! torn tail; the replica then recovers up to its recorded commit only,
//! and entries it acknowledged past that commit are not protected; below
//! the watermark the log opens read-only and the start fails, naming the
//! damage); damage the engine's open finds itself in a sealed segment
//! (it verifies a sealed segment's tail, and all of it when its index
//! file is not usable, as after a crash that cut the index short): the
//! start fails, naming the segment and byte, as on a single node; damage
//! to a batch header that keeps the log's Raft index from
//! loading (likewise); damage to
//! `log.meta`; and damage on every replica of a batch (recovery needs one
//! good copy).

use std::path::{Path, PathBuf};

use bytes::BufMut;
use hadron_engine::Log;
use hadron_engine::log::{RaftReadError, ReadError};
use hadron_engine::storage::{IO_ALIGN_BYTES, Storage, StorageFile};

/// The marker file in the log's directory.
pub const RECOVERING_FILE: &str = "raft.recovering";
const MARKER_MAGIC: &[u8; 8] = b"HDRREC01";
/// Bytes of entries verified per read.
const VERIFY_READ_BYTES: u64 = 4 << 20;

fn marker_path<S: Storage>(log: &Log<S>) -> PathBuf {
    log.dir().join(RECOVERING_FILE)
}

/// The index recovery must reach, from the marker, if there is one.
async fn read_marker<S: Storage>(storage: &S, path: &Path) -> Result<Option<u64>, String> {
    let file = match storage.open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let bytes = file
        .read_at(0, 16)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() < 16 || &bytes[..8] != MARKER_MAGIC {
        return Err(format!(
            "{}: not a recovery marker (remove it only if this replica's log is whole)",
            path.display()
        ));
    }
    let mut r = [0u8; 8];
    r.copy_from_slice(&bytes[8..16]);
    Ok(Some(u64::from_le_bytes(r)))
}

/// Writes the marker durably: the file, then its directory entry.
async fn write_marker<S: Storage>(storage: &S, path: &Path, recover_to: u64) -> Result<(), String> {
    let io = |e: std::io::Error| format!("writing {}: {e}", path.display());
    let file = storage.create(path).await.map_err(io)?;
    let mut buf = file.alloc_buf(IO_ALIGN_BYTES as usize);
    let b = buf.as_mut();
    b.fill(0);
    let mut at = &mut b[..16];
    at.put_slice(MARKER_MAGIC);
    at.put_u64_le(recover_to);
    file.write_at(buf, 0).await.map_err(io)?;
    file.fdatasync().await.map_err(io)?;
    drop(file);
    if let Some(dir) = path.parent() {
        storage.sync_dir(dir).await.map_err(io)?;
    }
    Ok(())
}

/// The first Raft index of `log` whose batch fails its checks, if any.
async fn first_damaged<S: Storage>(log: &Log<S>) -> Result<Option<u64>, String> {
    let last = log.last_index();
    let mut lo = log.first_index();
    while lo <= last {
        match log.entries(lo, last + 1, VERIFY_READ_BYTES).await {
            Ok(got) if !got.is_empty() => lo += got.len() as u64,
            Ok(_) => return Err(format!("no batch at Raft index {lo} of {last}")),
            Err(_) => {
                // Somewhere in this read: find the batch, one at a time.
                loop {
                    match log.entries(lo, lo + 1, 0).await {
                        Ok(_) => lo += 1,
                        Err(RaftReadError::Read(ReadError::Corrupt { .. })) => {
                            return Ok(Some(lo));
                        }
                        Err(e) => return Err(format!("verifying Raft index {lo}: {e}")),
                    }
                }
            }
        }
    }
    Ok(None)
}

/// Verifies a replicated log at open and repairs damage as the module
/// header says. Returns the index the replica must reach before it votes
/// again, when it must abstain (damage found now, or a marker left by an
/// earlier start).
pub async fn repair_at_open<S: Storage>(storage: &S, log: &Log<S>) -> Result<Option<u64>, String> {
    let path = marker_path(log);
    let pending = read_marker(storage, &path).await?;
    log.load_raft_index()
        .await
        .map_err(|e| format!("loading the Raft index: {e}"))?;
    let Some(damaged) = first_damaged(log).await? else {
        let commit = log.raft_meta().commit;
        if commit <= log.last_index() {
            return Ok(pending);
        }
        // Committed entries missing without damage in what is left: the
        // engine's recovery cut a tail it could not tell from a torn write
        // (a damaged batch past its durable watermark), or an earlier
        // start cut the log and ended before lowering the commit. Raft
        // refuses a commit past the log: recover up to it.
        let recover_to = pending.unwrap_or(0).max(commit);
        tracing::error!(
            log = %log.dir().display(),
            "the log ends at Raft index {} below its recorded commit {commit}: refilling it from the leader; this replica abstains from elections until its commit reaches {recover_to}",
            log.last_index()
        );
        write_marker(storage, &path, recover_to).await?;
        clamp_commit(log).await?;
        return Ok(Some(recover_to));
    };
    let recover_to = pending.unwrap_or(0).max(log.last_index());
    tracing::error!(
        log = %log.dir().display(),
        "Raft index {damaged} is damaged: cutting the log after {} and refilling it from the leader; this replica abstains from elections until its commit reaches {recover_to}",
        damaged - 1
    );
    write_marker(storage, &path, recover_to).await?;
    let mut meta = log.raft_meta();
    if meta.commit >= damaged {
        meta.commit = damaged - 1;
        log.write_raft_state(&meta)
            .await
            .map_err(|e| format!("lowering the recorded commit: {e}"))?;
    }
    log.truncate_after(damaged - 1)
        .await
        .map_err(|e| format!("cutting the damaged log after {}: {e}", damaged - 1))?;
    clamp_commit(log).await?;
    Ok(Some(recover_to))
}

/// Lowers the commit recorded in `log.meta` to the log's last index.
async fn clamp_commit<S: Storage>(log: &Log<S>) -> Result<(), String> {
    let mut meta = log.raft_meta();
    if meta.commit > log.last_index() {
        meta.commit = log.last_index();
        log.write_raft_state(&meta)
            .await
            .map_err(|e| format!("lowering the recorded commit: {e}"))?;
    }
    Ok(())
}

/// Ends a recovery: the marker goes (durably).
pub async fn recovered<S: Storage>(storage: &S, log: &Log<S>) -> Result<(), String> {
    let path = marker_path(log);
    storage
        .remove(&path)
        .await
        .map_err(|e| format!("removing {}: {e}", path.display()))?;
    if let Some(dir) = path.parent() {
        storage
            .sync_dir(dir)
            .await
            .map_err(|e| format!("syncing {}: {e}", dir.display()))?;
    }
    Ok(())
}
