//! Retention: deleting whole sealed segments that the retention settings
//! ([`Retention`]) or [`Log::delete_before`] no longer keep, oldest first.
//!
//! The active segment is never deleted, nor a sealed one before it is
//! finalized. The log's new start is recorded in `log.meta` before any file
//! goes, so that a missing first segment is never taken for one retention
//! deleted (see `meta`). Up to [`RECYCLED_SEGMENTS_MAX`] retired files are
//! renamed to `<base>.free` for new segments to begin in (see `segment`,
//! "Recycling"); a file some reader still holds is deleted, never reused,
//! since the reader would otherwise read the new segment's bytes in place of
//! the old ones.

use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::segment::Segment;
use super::{FREE_SUFFIX, Log, RECYCLED_SEGMENTS_MAX, Retention, RetentionReport};
use crate::storage::Storage;

/// Whether every Raft entry of `seg` lies below `keep_from` (always, for
/// no bound or a segment of version 1; never, for one whose last index is
/// not known).
fn below_retained<S: Storage>(seg: &Segment<S>, keep_from: Option<u64>) -> bool {
    let Some(keep) = keep_from else {
        return true;
    };
    if seg.version != super::batch::BATCH_VERSION {
        return true;
    }
    match &seg.raft {
        Some(slots) => seg.base_index + slots.len() as u64 <= keep,
        None => seg.next_index > 0 && seg.next_index <= keep,
    }
}

impl<S: Storage> Log<S> {
    /// Deletes whole sealed segments, oldest first, that the retention
    /// settings no longer keep (the active segment is never deleted). Up to
    /// [`RECYCLED_SEGMENTS_MAX`] of their files are kept for new segments.
    pub async fn apply_retention(&self, now_ms: u64) -> io::Result<RetentionReport> {
        self.retire(now_ms).await
    }

    /// Declares the records below `offset` unwanted: every sealed segment
    /// that holds only such records is deleted now (its file recycled, as
    /// by retention), and later ones as they are sealed. The log's start
    /// moves to the first segment kept, so reads below it fail with
    /// [`ReadError::BeforeStart`](super::ReadError::BeforeStart). For logs
    /// that carry their own state forward (a checkpoint) rather than keep
    /// data for a time or size.
    /// The mark is not persisted: after a reopen the caller says it again.
    pub async fn delete_before(&self, offset: u64) -> io::Result<RetentionReport> {
        {
            let mut st = self.state.borrow_mut();
            st.delete_below = st.delete_below.max(offset);
        }
        self.retire(0).await
    }

    /// Bounds retention (and [`Log::delete_before`]) for a Raft log: a
    /// segment holding an entry at or above Raft index `index` is kept.
    /// Its group sets it to one past its commit, so that only committed
    /// entries are deleted: everything below a snapshot's point must be
    /// committed (docs/replication.md section 8). Not persisted.
    pub fn retain_from_index(&self, index: u64) {
        self.state.borrow_mut().retain_from_index = Some(index);
    }

    /// [`apply_retention`](Log::apply_retention), and what
    /// [`delete_before`](Log::delete_before) asked for.
    pub(super) async fn retire(&self, now_ms: u64) -> io::Result<RetentionReport> {
        if self.recovery.damage.is_some() {
            // A damaged log changes nothing on disk until it is repaired.
            return Ok(RetentionReport::default());
        }
        let Retention {
            max_age_ms,
            max_bytes,
        } = self.retention.get();
        // (Raft index of the first batch kept, term of the one before it):
        // (0, 0) when not known.
        let mut raft_start = (0u64, 0u64);
        // (log path, index path, bytes, whether its file is reused)
        let victims: Vec<(PathBuf, PathBuf, u64, bool)> = {
            let mut guard = self.state.borrow_mut();
            let st = &mut *guard;
            let mut total: u64 = st.segments.values().map(|s| s.end).sum();
            let last = st.segments.keys().next_back().copied();
            let mut bases = Vec::new();
            for (&base, seg) in st.segments.iter() {
                if Some(base) == last || !seg.finalized {
                    break;
                }
                let too_big = max_bytes.is_some_and(|max| total > max);
                let too_old =
                    max_age_ms.is_some_and(|age| seg.max_timestamp_ms.saturating_add(age) < now_ms);
                let unwanted = seg.next_offset <= st.delete_below;
                if !(too_big || too_old || unwanted) || !below_retained(seg, st.retain_from_index) {
                    break;
                }
                total -= seg.end;
                bases.push(base);
            }
            let mut victims = Vec::with_capacity(bases.len());
            for base in bases {
                let Some(seg) = st.segments.remove(&base) else {
                    continue;
                };
                // The Raft point before the new start: the last deleted
                // batch's index and term (from its table; unknown for a
                // segment of version 1 or one whose table was never built).
                raft_start = match &seg.raft {
                    _ if seg.version != super::batch::BATCH_VERSION || seg.base_index == 0 => {
                        (0, 0)
                    }
                    Some(slots) => match slots.last() {
                        Some(last) => (seg.base_index + slots.len() as u64, last.term),
                        None => raft_start,
                    },
                    None if seg.next_index > 0 => (seg.next_index, seg.last_term),
                    None => (0, 0),
                };
                // A reader that still holds the file would read the new
                // segment's bytes in place of the old ones: delete it then.
                let unshared = seg.file.as_ref().is_none_or(|f| Rc::strong_count(f) == 1);
                let reuse = unshared && st.free.len() + st.free_incoming < RECYCLED_SEGMENTS_MAX;
                if reuse {
                    st.free_incoming += 1;
                }
                victims.push((seg.log_path, seg.idx_path, seg.end, reuse));
                // `seg` drops here, closing its file and unmapping its index.
            }
            if let Some((&first, kept)) = st.segments.iter().next() {
                st.start_offset = first;
                if kept.base_index > 0 && raft_start.0 != kept.base_index {
                    raft_start = (kept.base_index, 0);
                }
            }
            victims
        };
        let mut report = RetentionReport::default();
        let mut failed = None;
        if !victims.is_empty() {
            // The new start is durable before any file goes, so that a
            // missing first segment is never taken for one retention deleted;
            // with it the Raft point before it (the term of `first_index -
            // 1`, which raft asks for as a snapshot's term).
            let start = self.state.borrow().start_offset;
            let (start_index, start_term) = raft_start;
            let start_term = if start_term > super::meta::RAFT_TERM_MAX {
                0
            } else {
                start_term
            };
            if let Err(e) = self
                .update_meta(|m| {
                    m.start_offset = m.start_offset.max(start);
                    m.gaps.retain(|&(_, to)| to > start);
                    m.raft.start_index = start_index;
                    m.raft.start_term = start_term;
                })
                .await
            {
                failed = Some(e);
            }
        }
        for (log_path, idx_path, bytes, reuse) in victims {
            if failed.is_some() {
                if reuse {
                    self.state.borrow_mut().free_incoming -= 1;
                }
                continue;
            }
            let result = self.retire_files(&log_path, &idx_path, reuse).await;
            if reuse {
                self.state.borrow_mut().free_incoming -= 1;
            }
            match result {
                Ok(recycled) => {
                    report.segments += 1;
                    report.bytes += bytes;
                    if let Some(free) = recycled {
                        report.recycled += 1;
                        self.state.borrow_mut().free.push(free);
                    }
                }
                Err(e) => failed = Some(e),
            }
        }
        if report.segments > 0 {
            self.storage.sync_dir(&self.dir).await?;
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    /// Removes a retired segment's index, and its file or, when `reuse`,
    /// renames the file for reuse (falling back to removing it). Returns the
    /// reusable file's path.
    async fn retire_files(
        &self,
        log_path: &Path,
        idx_path: &Path,
        reuse: bool,
    ) -> io::Result<Option<PathBuf>> {
        match self.storage.remove(idx_path).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        if reuse {
            let free = log_path.with_extension(&FREE_SUFFIX[1..]);
            if self.storage.rename(log_path, &free).await.is_ok() {
                return Ok(Some(free));
            }
        }
        self.storage.remove(log_path).await?;
        Ok(None)
    }
}
