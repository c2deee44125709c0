//! Restarting a Raft log after a snapshot ([`Log::restart_at`]): a follower
//! whose next entries were deleted by the leader's retention installs the
//! leader's snapshot descriptor (docs/replication.md section 8): it
//! discards its whole log and continues with an empty one whose next batch
//! is the snapshot's index + 1, at the snapshot's next offset, then catches
//! up by ordinary appends.
//!
//! Durable when it returns, through states that recovery opens:
//!
//! ```text
//!  1 log.meta: restarting (flags bit 1), start_offset = the next offset,
//!    start_index = index + 1, start_term = the snapshot's term,
//!    active_base_index = index + 1, the hard state's commit raised to
//!    index (and its term to the snapshot's), no active_base (a crash from here on:
//!    open finishes the restart itself, see below)
//!  2 delete every segment file, its index and the recycled files, then
//!    sync the directory
//!  3 create the empty segment at the next offset (durably), reopen it as
//!    recovery opens an active segment
//!  4 log.meta: not restarting, active_base = that segment
//! ```
//!
//! Open, finding the restarting flag, deletes every segment file (those
//! step 2 had not reached, and the one step 3 may have begun), creates
//! the empty segment and writes step 4 itself. A crash before step 1 is
//! durable leaves the old log whole, as if the snapshot had not arrived
//! (its index was not reported applied). A failure after step 1 poisons
//! the log: reopening it finishes the restart.
//!
//! It holds the group commit's leadership while it runs, so no flush round
//! writes meanwhile; the caller appends nothing until it returns.

use std::path::{Path, PathBuf};

use super::meta::{self, LogMeta, RAFT_TERM_MAX};
use super::raft::RaftAppendError;
use super::segment::Segment;
use super::{Durability, Log, OpenError, recovery};
use crate::storage::Storage;

fn io(what: &str) -> impl FnOnce(std::io::Error) -> RaftAppendError + '_ {
    move |e| RaftAppendError::Io(format!("{what}: {e}"))
}

/// Removes `path`; one already gone is fine.
async fn remove_if_there<S: Storage>(storage: &S, path: &Path) -> std::io::Result<()> {
    match storage.remove(path).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

impl<S: Storage> Log<S> {
    /// Discards every batch and continues with an empty log whose next
    /// batch is Raft index `index + 1` at event offset `next_offset`,
    /// `term` being the term of `index` (a snapshot's point); durable when
    /// it returns (see the module header). Readers of older offsets then
    /// get [`ReadError::BeforeStart`](super::ReadError::BeforeStart). Made
    /// whether the log is behind the point or holds batches past it.
    pub async fn restart_at(
        &self,
        index: u64,
        term: u64,
        next_offset: u64,
    ) -> Result<(), RaftAppendError> {
        if self.config.durability != Durability::Always {
            return Err(RaftAppendError::Unsupported(
                "a restart needs durability Always",
            ));
        }
        if term > RAFT_TERM_MAX {
            return Err(RaftAppendError::TermOverMax { term });
        }
        if index == 0 || term == 0 || index == u64::MAX {
            return Err(RaftAppendError::Unsupported(
                "a restart at index 0, term 0 or the last index",
            ));
        }
        if let Some(damage) = &self.recovery.damage {
            let why = damage.to_string().into();
            return Err(RaftAppendError::Append(super::AppendError::Damaged(why)));
        }
        let _guard = self.hold_group_commit().await?;
        let result = self.restart_steps(index, term, next_offset).await;
        if let Err(e) = &result {
            let mut st = self.state.borrow_mut();
            if st.poisoned.is_none() {
                st.poisoned = Some(format!("a restart after a snapshot failed: {e}").into());
            }
        }
        result
    }

    async fn restart_steps(
        &self,
        index: u64,
        term: u64,
        next_offset: u64,
    ) -> Result<(), RaftAppendError> {
        // 1: the restart is recorded before anything goes.
        self.update_meta(|m| mark_restart(m, index, term, next_offset))
            .await
            .map_err(io("recording the restart in log.meta"))?;
        // From here on readers see an empty log at `next_offset`.
        let (gone, free) = {
            let mut st = self.state.borrow_mut();
            let mut placeholder = Segment::new(&self.dir, next_offset);
            placeholder.base_index = index + 1;
            placeholder.raft = Some(Vec::new());
            let old = std::mem::take(&mut st.segments);
            st.segments.insert(next_offset, placeholder);
            st.start_offset = next_offset;
            st.next_offset = next_offset;
            st.next_index = index + 1;
            st.term = term;
            st.durable_next = next_offset;
            st.syncing_next = next_offset;
            st.pending_bytes = 0;
            let gone: Vec<(PathBuf, PathBuf)> = old
                .into_values()
                .map(|s| (s.idx_path, s.log_path))
                .collect();
            (gone, std::mem::take(&mut st.free))
            // The old segments drop here (files closed, indexes unmapped).
        };
        // 2: every file of the old log.
        for (idx_path, log_path) in &gone {
            for path in [idx_path, log_path] {
                remove_if_there(&self.storage, path).await.map_err(|e| {
                    RaftAppendError::Io(format!("removing {}: {e}", path.display()))
                })?;
            }
        }
        for path in &free {
            remove_if_there(&self.storage, path)
                .await
                .map_err(|e| RaftAppendError::Io(format!("removing {}: {e}", path.display())))?;
        }
        self.storage
            .sync_dir(&self.dir)
            .await
            .map_err(io("syncing the log's directory"))?;
        // 3: the empty segment, opened as recovery opens one.
        let reopen = |e: OpenError| RaftAppendError::Io(format!("creating the new segment: {e}"));
        Self::create_empty_segment(&self.storage, &self.dir, next_offset)
            .await
            .map_err(reopen)?;
        let meta = Some(self.meta.borrow().current.clone());
        let (mut seg, tail) =
            Self::recover_active(&self.storage, &self.dir, next_offset, &self.config, &meta)
                .await
                .map_err(reopen)?;
        if !matches!(tail, recovery::Tail::Clean) || seg.end != 0 {
            return Err(RaftAppendError::Io(format!(
                "the new segment at offset {next_offset} reopened ending at byte {}",
                seg.end
            )));
        }
        seg.base_index = index + 1;
        seg.next_index = index + 1;
        seg.last_term = term;
        seg.raft = Some(Vec::new());
        // 4: the restart is done.
        self.update_meta(|m| finish_restart(m, next_offset))
            .await
            .map_err(io("recording the new segment in log.meta"))?;
        let mut st = self.state.borrow_mut();
        if st.next_index != index + 1 || st.next_offset != next_offset {
            return Err(RaftAppendError::Io(
                "batches were appended while the log restarted".into(),
            ));
        }
        st.segments.insert(next_offset, seg);
        Ok(())
    }

    /// Finishes a restart a crash interrupted (`m` has the restarting
    /// flag): deletes every segment file in `bases` and the recycled files
    /// `free`, creates the empty segment at the log's start and records it.
    /// Returns the segment bases the log now has.
    pub(super) async fn finish_interrupted_restart(
        storage: &S,
        dir: &Path,
        bases: &[u64],
        free: &[PathBuf],
        m: &mut LogMeta,
    ) -> Result<Vec<u64>, OpenError> {
        use super::io_err as fail;
        for &base in bases {
            for ext in ["idx", "log"] {
                let path = dir.join(format!("{base:020}.{ext}"));
                remove_if_there(storage, &path)
                    .await
                    .map_err(fail("remove segment of a restarted log", &path))?;
            }
        }
        for path in free {
            remove_if_there(storage, path)
                .await
                .map_err(fail("remove recycled segment", path))?;
        }
        storage
            .sync_dir(dir)
            .await
            .map_err(fail("sync directory", dir))?;
        let start = m.start_offset;
        Self::create_empty_segment(storage, dir, start).await?;
        m.seq += 1;
        finish_restart(m, start);
        meta::write(storage, dir, None, m)
            .await
            .map_err(fail("write metadata", &meta::meta_path(dir)))?;
        Ok(vec![start])
    }
}

/// Step 1's `log.meta`: the log restarts empty at `next_offset`.
fn mark_restart(m: &mut LogMeta, index: u64, term: u64, next_offset: u64) {
    m.restarting = true;
    m.start_offset = next_offset;
    m.active_base = None;
    m.durable_position = 0;
    m.durable_next = next_offset;
    m.gaps.retain(|&(_, to)| to > next_offset);
    m.raft.start_index = index + 1;
    m.raft.start_term = term;
    m.raft.active_base_index = index + 1;
    // A snapshot's point is committed; the hard state must not name a
    // commit below the log's first index, nor a term below the point's
    // (raft refuses to start from either).
    m.raft.commit = m.raft.commit.max(index);
    m.raft.term = m.raft.term.max(term);
}

/// Step 4's `log.meta`: the empty segment at `start` exists.
fn finish_restart(m: &mut LogMeta, start: u64) {
    m.restarting = false;
    m.active_base = Some(start);
    m.durable_position = 0;
    m.durable_next = start;
}
