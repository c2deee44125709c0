//! A replica whose disk is full keeps its Raft group running: the persist
//! of a round that found the disk full (ENOSPC or EDQUOT, the engine's
//! `AppendError::DiskFull`) is retried with backoff instead of stopping the
//! group for good.
//!
//! This is safe because the engine wrote nothing of the round (the failed
//! allocation came first) and kept its entries staged, and because raft-rs
//! takes persistence whenever it arrives: `on_persisted` is called only
//! once a persist returned `Ok`, so nothing is acknowledged (no vote, no
//! append response, no commit counted from this node) before it is
//! durable. The round stays due; each turn after the backoff tries the
//! persist again, and once space is freed the group goes on where it was.
//!
//! The backoff doubles from [`DISK_FULL_RETRY_MIN`] to
//! [`DISK_FULL_RETRY_MAX`]; a warning is logged when the disk is first
//! found full and then at most once per [`DISK_FULL_WARN_EVERY`] per log,
//! not at every retry; status shows the log as disk full meanwhile.

use std::time::Duration;

use hadron_engine::storage::Storage;

use super::replica::Replica;
use crate::replication::StoreError;
use crate::shard::clock::Clock;

/// First wait before a persist that found the disk full is tried again.
pub const DISK_FULL_RETRY_MIN: Duration = Duration::from_millis(10);
/// Longest wait between two tries: how late a replica notices freed space.
pub const DISK_FULL_RETRY_MAX: Duration = Duration::from_secs(1);
/// A log's disk-full warning is logged at most this often.
pub const DISK_FULL_WARN_EVERY: Duration = Duration::from_secs(30);

const _: () = assert!(DISK_FULL_RETRY_MIN.as_nanos() <= DISK_FULL_RETRY_MAX.as_nanos());

/// Where a replica stands with a full disk.
#[derive(Debug, Clone, Default)]
pub struct DiskFull {
    /// Why the last persist failed; `None` while persists succeed.
    pub(super) why: Option<String>,
    /// When the next persist may be tried.
    retry_at: Duration,
    /// The wait after the next failure.
    backoff: Duration,
    /// When the warning was last logged.
    warned_at: Option<Duration>,
}

impl DiskFull {
    /// How long until a persist may be tried again; `None` when the disk
    /// is not known full.
    pub(super) fn wait(&self, now: Duration) -> Option<Duration> {
        self.why.as_ref().map(|_| self.retry_at.saturating_sub(now))
    }
}

impl<S: Storage, C: Clock> Replica<S, C> {
    /// Persists the round due, unless the disk was found full and its
    /// backoff has not passed. `Ok(true)`: durable, report it; `Ok(false)`:
    /// not now (the round stays due, retried after the backoff); `Err`: a
    /// failure that stops the group.
    pub(super) async fn persist_unless_full(&self, clock: &C) -> Result<bool, String> {
        let now = clock.now();
        if self
            .disk_full
            .borrow()
            .wait(now)
            .is_some_and(|w| !w.is_zero())
        {
            return Ok(false);
        }
        match self.store.persist().await {
            Ok(()) => {
                let was = self.disk_full.borrow_mut().why.take();
                if was.is_some() {
                    let log = self.store.log();
                    tracing::info!(log = %log.dir().display(), "disk has room again: persisting");
                    *self.disk_full.borrow_mut() = DiskFull::default();
                }
                Ok(true)
            }
            Err(StoreError::DiskFull(why)) => {
                let now = clock.now();
                let mut full = self.disk_full.borrow_mut();
                full.backoff = if full.why.is_none() {
                    DISK_FULL_RETRY_MIN
                } else {
                    (full.backoff * 2).clamp(DISK_FULL_RETRY_MIN, DISK_FULL_RETRY_MAX)
                };
                full.retry_at = now + full.backoff;
                if full
                    .warned_at
                    .is_none_or(|at| now.saturating_sub(at) >= DISK_FULL_WARN_EVERY)
                {
                    full.warned_at = Some(now);
                    let log = self.store.log();
                    tracing::warn!(
                        log = %log.dir().display(),
                        "disk full: Raft entries wait to be written, retrying until space is freed: {why}"
                    );
                }
                full.why = Some(why);
                Ok(false)
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Why the replica's log is disk full, while it is.
    pub fn disk_full(&self) -> Option<String> {
        self.disk_full.borrow().why.clone()
    }
}
