//! Cutting a Raft log's uncommitted suffix ([`Log::truncate_after`]): a
//! follower whose log holds entries a new leader overwrites (section 4,
//! "Appending and truncating").
//!
//! The cut is made durable before it returns, in the order recovery cuts a
//! torn tail: `log.meta`'s durable watermark is lowered to the cut first
//! (so that a shorter segment never looks like damage below it), then the
//! segment file is truncated there, zero-filled again by preallocation and
//! fdatasynced (so that no cut batch can pass for a valid one after a
//! crash, whatever is written after it). A crash before the file is cut
//! leaves the old suffix, as if the cut never happened: no entry written
//! after the cut was reported durable yet. The in-memory state (tail
//! buffer, index, Raft table, offsets, term) then drops the suffix.
//!
//! It holds the group commit's leadership while it runs, so no flush round
//! writes meanwhile.
//!
//! **A cut into a sealed segment** (a conflicting suffix spanning a roll)
//! first makes every batch durable (so that every sealed segment is
//! finalized), then, holding the leadership, goes from the newest state
//! to the cut one through states that recovery opens as a prefix of the
//! old log:
//!
//! ```text
//!  1 log.meta: active_base = the segment S holding the cut, watermark at
//!    the cut (a crash now: the later files are all there and whole, and
//!    the last one opens as the active segment, its watermark unknown)
//!  2 delete the later segments' files, newest first, syncing the
//!    directory after each (a crash leaves a prefix of whole segments; the
//!    last opens as the active one, as after a crash just after a roll)
//!  3 truncate S at the cut, then reopen it as the active segment exactly
//!    as open recovers one (scanned, zero-filled again, index rewritten,
//!    fdatasynced); a cut at S's first batch leaves it empty, at its base
//! ```
//!
//! A failure after step 1 poisons the log (its memory no longer matches
//! the disk): reopening it recovers one of those states.

use bytes::BytesMut;

use super::append::LeaderGuard;
use super::index::INDEX_ENTRY_BYTES;
use super::raft::{RaftAppendError, Slot};
use super::segment::SegmentIndex;
use super::{Log, index};
use crate::storage::{Storage, StorageFile, align_down};

/// Where a cut's first batch lies: (segment base, its slot).
enum Cut {
    Active(u64, Slot),
    Sealed(u64, Slot),
}

fn io(what: &str) -> impl FnOnce(std::io::Error) -> RaftAppendError + '_ {
    move |e| RaftAppendError::Io(format!("{what}: {e}"))
}

impl<S: Storage> Log<S> {
    /// Takes the group commit's leadership, waiting for a round under way:
    /// no round writes until the guard drops. Refused on a poisoned log.
    /// What a cut or a restart holds while it rewrites the log's files.
    pub(super) async fn hold_group_commit(&self) -> Result<LeaderGuard<'_, S>, RaftAppendError> {
        loop {
            let generation = self.flushed.generation();
            {
                let mut st = self.state.borrow_mut();
                if let Some(why) = &st.poisoned {
                    return Err(RaftAppendError::Io(format!("log poisoned: {why}")));
                }
                if !st.flushing {
                    st.flushing = true;
                    return Ok(LeaderGuard(self));
                }
            }
            self.flushed.changed_since(generation).await;
        }
    }

    /// Removes every batch after Raft index `index`, durably (see the module
    /// header). A no-op when `index` is the last index or beyond. The
    /// caller appends nothing while it runs (a Raft log has one writer, its
    /// store); [`Log::append`]s wait for it as for a flush round.
    pub async fn truncate_after(&self, index: u64) -> Result<(), RaftAppendError> {
        if index >= self.last_index() {
            return Ok(());
        }
        if self.config.durability != super::Durability::Always {
            // Under the relaxed modes an fdatasync of a round may still be
            // under way when the leadership is taken, and would mark
            // durable what the cut removed.
            return Err(RaftAppendError::Unsupported(
                "a cut needs durability Always",
            ));
        }
        if index + 1 < self.first_index() {
            return Err(RaftAppendError::Unsupported(
                "a cut below the log's first index",
            ));
        }
        let sealed = match self.cut_point(index)? {
            Cut::Active(..) => false,
            Cut::Sealed(..) => true,
        };
        if sealed {
            // Every sealed segment finalized first: only whole segments
            // are deleted or reopened.
            self.sync_index(self.next_index())
                .await
                .map_err(RaftAppendError::Append)?;
        }
        let _guard = self.hold_group_commit().await?;
        let (base, cut) = match self.cut_point(index)? {
            Cut::Active(base, cut) => (base, cut),
            Cut::Sealed(base, cut) => {
                let result = self.cut_sealed(index, base, cut).await;
                if let Err(e) = &result {
                    let mut st = self.state.borrow_mut();
                    if st.poisoned.is_none() {
                        st.poisoned =
                            Some(format!("a cut into a sealed segment failed: {e}").into());
                    }
                }
                return result;
            }
        };
        let next_offset = self.offset_at_cut(base, cut).await?;
        let term = self.term_at_cut(index);
        let (file, written_end, buf_position) = {
            let st = self.state.borrow();
            let seg = &st.segments[&base];
            (seg.file.clone(), seg.written_end, seg.buf_position)
        };
        let at = cut.position;
        let mut head = None;
        if at < written_end {
            let file = file.ok_or(RaftAppendError::Io("segment has no file".into()))?;
            // The watermark first, then the file.
            self.update_meta(|m| {
                if m.active_base == Some(base) && m.durable_position > at {
                    m.durable_position = at;
                    m.durable_next = m.durable_next.min(next_offset);
                }
            })
            .await
            .map_err(io("lowering log.meta's watermark"))?;
            if align_down(at) < buf_position {
                let page = align_down(at);
                let bytes = file
                    .read_at(page, (at - page) as usize)
                    .await
                    .map_err(io("reading the cut page"))?;
                head = Some((page, BytesMut::from(&bytes[..])));
            }
            file.truncate(at)
                .await
                .map_err(io("truncating the segment"))?;
            let allocated = self.config.allocation_for(at);
            file.preallocate(allocated)
                .await
                .map_err(io("preallocating the segment"))?;
            if let Some(seg) = self.state.borrow_mut().segments.get_mut(&base) {
                seg.allocated = allocated;
            }
            file.fdatasync().await.map_err(io("syncing the segment"))?;
        }
        self.drop_suffix(base, index, at, next_offset, term, head);
        Ok(())
    }

    /// The segment and slot of the first batch cut (index `index + 1`).
    fn cut_point(&self, index: u64) -> Result<Cut, RaftAppendError> {
        let st = self.state.borrow();
        let Some(&active) = st.segments.keys().next_back() else {
            return Err(RaftAppendError::Unsupported("a log without segments"));
        };
        let found = st.segments.values().rev().find_map(|seg| {
            let slots = seg.raft.as_ref().filter(|_| seg.base_index > 0)?;
            let i = (index + 1).checked_sub(seg.base_index)?;
            slots
                .get(usize::try_from(i).ok()?)
                .map(|slot| (seg.base, *slot))
        });
        match found {
            Some((base, slot)) if base == active => Ok(Cut::Active(base, slot)),
            Some((base, slot)) => Ok(Cut::Sealed(base, slot)),
            None => Err(RaftAppendError::Unsupported(
                "a cut into a segment whose Raft table is not loaded",
            )),
        }
    }

    /// The term the log writes at after a cut after `index`: that of the
    /// batch at `index`, or the single node's for a cut of every batch.
    fn term_at_cut(&self, index: u64) -> u64 {
        self.term(index).unwrap_or(super::SINGLE_NODE_TERM)
    }

    /// The next offset after a cut: the base offset of the first batch cut,
    /// at `cut` in segment `base`.
    async fn offset_at_cut(&self, base: u64, cut: Slot) -> Result<u64, RaftAppendError> {
        let end = cut.position + u64::from(cut.bytes);
        let data = self
            .read_segment(base, cut.position, u64::from(cut.bytes), end)
            .await
            .map_err(|e| RaftAppendError::Io(format!("reading the first batch cut: {e}")))?;
        Ok(super::batch::parse_header(&data)
            .map_err(RaftAppendError::Invalid)?
            .base_offset)
    }

    /// A cut whose first batch lies in the sealed segment `base` (see the
    /// module header). Every batch is durable and the caller holds the
    /// group commit's leadership.
    async fn cut_sealed(&self, index: u64, base: u64, cut: Slot) -> Result<(), RaftAppendError> {
        let next_offset = self.offset_at_cut(base, cut).await?;
        let term = self.term_at_cut(index);
        let (base_index, later) = {
            let st = self.state.borrow();
            if let Some(seg) = st.segments.values().rev().skip(1).find(|s| !s.finalized) {
                return Err(RaftAppendError::Io(format!(
                    "sealed segment {} is not finalized after a sync",
                    seg.log_path.display()
                )));
            }
            let later: Vec<(std::path::PathBuf, std::path::PathBuf)> = st
                .segments
                .range(base + 1..)
                .rev()
                .map(|(_, s)| (s.log_path.clone(), s.idx_path.clone()))
                .collect();
            (st.segments[&base].base_index, later)
        };
        let at = cut.position;
        // 1: the segment holding the cut becomes the active one in log.meta.
        self.update_meta(|m| {
            m.active_base = Some(base);
            m.raft.active_base_index = base_index;
            m.durable_position = at;
            m.durable_next = next_offset;
        })
        .await
        .map_err(io("recording the cut in log.meta"))?;
        // From here on readers and retention no longer see the segments
        // cut: the later ones go, and `base` comes back reopened.
        let (file, slots) = {
            let mut st = self.state.borrow_mut();
            let gone = st.segments.split_off(&(base + 1));
            let unwritten: u64 = gone.values().map(|s| s.end - s.written_end).sum();
            st.pending_bytes = st.pending_bytes.saturating_sub(unwritten as usize);
            let Some(seg) = st.segments.remove(&base) else {
                return Err(RaftAppendError::Io("the segment cut is gone".into()));
            };
            let mut slots = seg.raft.unwrap_or_default();
            slots.truncate((index + 1 - base_index) as usize);
            (seg.file, slots)
            // `seg` (its mapped index) and `gone` drop here.
        };
        // 2: the later segments' files, newest first, each durably.
        for (log_path, idx_path) in later {
            for path in [&idx_path, &log_path] {
                match self.storage.remove(path).await {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(RaftAppendError::Io(format!(
                            "removing {}: {e}",
                            path.display()
                        )));
                    }
                    _ => {}
                }
            }
            self.storage
                .sync_dir(&self.dir)
                .await
                .map_err(io("syncing the log's directory"))?;
        }
        // 3: the segment cut, reopened as the active one.
        let file = file.ok_or(RaftAppendError::Io("segment has no file".into()))?;
        file.truncate(at)
            .await
            .map_err(io("truncating the segment"))?;
        drop(file);
        let meta = Some(self.meta.borrow().current.clone());
        let (mut seg, tail) =
            Self::recover_active(&self.storage, &self.dir, base, &self.config, &meta)
                .await
                .map_err(|e| RaftAppendError::Io(format!("reopening the segment cut: {e}")))?;
        if !matches!(tail, super::recovery::Tail::Clean)
            || (seg.end, seg.next_offset) != (at, next_offset)
        {
            return Err(RaftAppendError::Io(format!(
                "the segment cut at byte {at} (offset {next_offset}) reopened ending at byte {} (offset {})",
                seg.end, seg.next_offset
            )));
        }
        seg.base_index = base_index;
        seg.next_index = index + 1;
        seg.last_term = term;
        seg.raft = Some(slots);
        let mut st = self.state.borrow_mut();
        st.segments.insert(base, seg);
        st.next_offset = next_offset;
        st.next_index = index + 1;
        st.term = term;
        st.durable_next = next_offset;
        st.syncing_next = next_offset;
        Ok(())
    }

    /// Drops the batches from byte `at` of the active segment `base` on from
    /// the in-memory state. `head`: the cut page's bytes before `at`, when
    /// the tail buffer no longer holds them.
    fn drop_suffix(
        &self,
        base: u64,
        index: u64,
        at: u64,
        next_offset: u64,
        term: u64,
        head: Option<(u64, BytesMut)>,
    ) {
        let mut guard = self.state.borrow_mut();
        let st = &mut *guard;
        let Some(seg) = st.segments.get_mut(&base) else {
            return;
        };
        let unwritten_cut = seg.end.saturating_sub(seg.written_end.max(at));
        st.pending_bytes -= unwritten_cut as usize;
        match head {
            Some((page, bytes)) => {
                seg.buf = bytes;
                seg.buf_position = page;
            }
            None => seg.buf.truncate((at - seg.buf_position) as usize),
        }
        seg.end = at;
        seg.written_end = seg.written_end.min(at);
        seg.durable_end = seg.durable_end.min(at);
        seg.next_offset = next_offset;
        seg.durable_next = seg.durable_next.min(next_offset);
        seg.next_index = index + 1;
        seg.last_term = term;
        if let Some(slots) = &mut seg.raft {
            slots.truncate((index + 1 - seg.base_index) as usize);
        }
        if let SegmentIndex::Memory(idx) = &mut seg.index {
            while index::last(idx).is_some_and(|e| u64::from(e.position) >= at) {
                idx.truncate(idx.len() - INDEX_ENTRY_BYTES);
            }
            seg.last_indexed_position = index::last(idx).map_or(0, |e| u64::from(e.position));
            seg.index_written_bytes = seg
                .index_written_bytes
                .min(align_down(idx.len() as u64) as usize);
        }
        st.next_offset = next_offset;
        st.next_index = index + 1;
        st.term = term;
        st.durable_next = st.durable_next.min(next_offset);
        st.syncing_next = st.syncing_next.min(next_offset);
    }
}
