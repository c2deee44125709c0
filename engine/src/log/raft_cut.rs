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
//! writes meanwhile. Only a cut inside the active segment is built; a cut
//! reaching into a sealed segment is refused (the next piece: delete the
//! later segments, reopen the sealed one as active).

use bytes::BytesMut;

use super::append::LeaderGuard;
use super::index::INDEX_ENTRY_BYTES;
use super::raft::RaftAppendError;
use super::segment::SegmentIndex;
use super::{Log, index};
use crate::storage::{Storage, StorageFile, align_down, align_up};

fn io(what: &str) -> impl FnOnce(std::io::Error) -> RaftAppendError + '_ {
    move |e| RaftAppendError::Io(format!("{what}: {e}"))
}

impl<S: Storage> Log<S> {
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
        // Hold the group commit's leadership: no round writes meanwhile.
        loop {
            let generation = self.flushed.generation();
            {
                let mut st = self.state.borrow_mut();
                if let Some(why) = &st.poisoned {
                    return Err(RaftAppendError::Io(format!("log poisoned: {why}")));
                }
                if !st.flushing {
                    st.flushing = true;
                    break;
                }
            }
            self.flushed.changed_since(generation).await;
        }
        let _guard = LeaderGuard(self);
        let (base, cut) = self.cut_point(index)?;
        let data = self
            .read_segment(
                base,
                cut.position,
                u64::from(cut.bytes),
                cut.position + u64::from(cut.bytes),
            )
            .await
            .map_err(|e| RaftAppendError::Io(format!("reading the first batch cut: {e}")))?;
        let next_offset = super::batch::parse_header(&data)
            .map_err(RaftAppendError::Invalid)?
            .base_offset;
        let term = self.term(index).unwrap_or(self.state.borrow().term);
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
            file.preallocate(self.config.segment_bytes.max(align_up(at)))
                .await
                .map_err(io("preallocating the segment"))?;
            file.fdatasync().await.map_err(io("syncing the segment"))?;
        }
        self.drop_suffix(base, index, at, next_offset, term, head);
        Ok(())
    }

    /// The segment and slot of the first batch cut, which must lie in the
    /// active segment.
    fn cut_point(&self, index: u64) -> Result<(u64, super::raft::Slot), RaftAppendError> {
        let st = self.state.borrow();
        let Some(seg) = st.segments.values().next_back() else {
            return Err(RaftAppendError::Unsupported("a log without segments"));
        };
        let slot = seg.raft.as_ref().and_then(|slots| {
            let i = (index + 1).checked_sub(seg.base_index)?;
            slots.get(usize::try_from(i).ok()?).copied()
        });
        match slot {
            Some(slot) if seg.base_index > 0 => Ok((seg.base, slot)),
            _ => Err(RaftAppendError::Unsupported(
                "a cut reaching into a sealed segment (or one not loaded)",
            )),
        }
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
