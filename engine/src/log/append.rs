//! Appending: an append takes its offsets at once, and group commit makes
//! batches durable in flush rounds, one writing at a time.
//!
//! **Writing.** An append encodes its batch straight into the active
//! segment's in-memory tail buffer and takes offsets at once. The buffer holds
//! the bytes from the last partial 4 KiB page on: O_DIRECT writes whole pages,
//! so the partial page is rewritten, with what followed it, by the next flush.
//!
//! **Group commit.** At most one flush round writes at a time. Appends that
//! arrive while it runs accumulate in the buffer; when its writes end, one of
//! their callers becomes the next leader and writes all of them at once. The
//! round's fdatasync is issued after the leader's turn is handed over, so the
//! next round's writes overlap it (two stages, write and sync, as in a
//! pipeline). An fdatasync makes durable what was written when it was issued,
//! so it marks durable the offsets its round wrote and no more; fdatasyncs
//! may overlap, and durability only moves forward. With
//! [`Durability::Always`] an append resolves only after its batch is durable.
//!
//! Under `Always` the segment files are opened write-through
//! ([`Writes::Through`], `O_DSYNC`): a round's write returns once the kernel
//! has made it durable (the data, and any metadata needed to read it back),
//! so the round needs no separate fdatasync. That is one request instead of
//! two and no wait between them: the fdatasync was issued only on the
//! executor's next pass after the write completed, behind whatever requests
//! that pass processed (147 us median, 189 us mean, measured with io_uring
//! tracepoints at 512 x 1 KiB events in flight; `bench/trace-rounds.sh 4
//! interval` shows the same wait before the next write).
//! The next round's write starts when this one's returns, so rounds no
//! longer overlap a write with an fdatasync; measured on the virtio disk,
//! durable publish throughput still rose 1.17x and server CPU per event
//! fell to 0.75x (6 alternating runs of fresh servers each way; the seed
//! pipeline 1.13x). Under `Interval` and `Never` files are buffered and
//! synced by fdatasync as above. No background task is needed,
//! and a leader whose future is dropped hands leadership on. A sealed
//! segment is synced and finalized within its round, so a later segment is
//! never durable before an earlier one is complete.
//!
//! **Poisoning.** The first failed write or fdatasync poisons the log: every
//! later append fails with [`AppendError::Poisoned`] until the log is opened
//! again. An fdatasync is never retried, since after a failure the kernel may
//! have dropped the dirty pages it could not write.
//!
//! **Disk full.** An allocation that fails with ENOSPC or EDQUOT (the
//! active segment's preallocation step, creating a new segment's files)
//! does not poison: it comes before any byte of the segment's round is
//! written, so no page is in an unknown state, and it changes nothing the
//! log tracks. The round ends there with [`AppendError::DiskFull`] (what
//! it finished before, such as sealing an earlier segment, stays done),
//! its batches stay staged with their offsets, and the next round (a later
//! append, a sync) allocates again and, once space was freed, writes and
//! syncs them as usual. Appenders that led or awaited the failed round get
//! the error, so nobody spins on a full disk; what can stay staged
//! meanwhile is bounded by `pending_bytes_max`, past which appends get the
//! same error instead of being queued. Any other allocation error, and
//! every write, fdatasync or `log.meta` failure, still poisons.

use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use super::batch::{self, BATCH_RECORDS_MAX, BatchKind, BatchStamp};
use super::index::{self, IndexEntry};
use super::segment::{Segment, SegmentIndex};
use super::{AppendError, Appended, Durability, Log, elapsed_us};
use crate::storage::{Storage, StorageFile, Writes, align_down, align_up};

/// Why a flush round ended early.
pub(super) enum FlushError {
    /// A write, an fdatasync or anything after data went out failed: the
    /// log is poisoned with this reason.
    Poison(String),
    /// An allocation found the disk full before the segment's round wrote
    /// anything: an [`AppendError::DiskFull`], and the log stays writable.
    DiskFull(AppendError),
}

impl From<String> for FlushError {
    fn from(why: String) -> Self {
        FlushError::Poison(why)
    }
}

impl FlushError {
    /// The error of an allocation (`what` of `path`, asking for `needed`
    /// bytes): [`FlushError::DiskFull`] for ENOSPC and EDQUOT, whose
    /// failed allocation wrote nothing; a poison for anything else.
    pub(super) fn from_allocation(what: &str, path: &Path, needed: u64, e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
                FlushError::DiskFull(AppendError::DiskFull {
                    path: path.to_path_buf(),
                    needed,
                    why: format!("{what} {} failed: {e}", path.display()).into(),
                })
            }
            _ => FlushError::Poison(format!("{what} {} failed: {e}", path.display())),
        }
    }
}

/// An fdatasync a flush round still has to issue for the active segment,
/// and what it makes durable.
struct PendingSync<S: Storage> {
    file: Rc<S::File>,
    path: PathBuf,
    base: u64,
    /// Segment bytes it covers.
    end: u64,
    /// Offsets below this become durable.
    next_offset: u64,
    /// The file is write-through: its writes, already returned, made
    /// durable what this covers, and no fdatasync is issued.
    written_through: bool,
}

/// A write buffer of a segment file.
type FileBuf<S> = <<S as Storage>::File as StorageFile>::Buf;

/// What a flush round writes of one segment, snapshotted from its state so
/// that appends can go on while the writes run.
struct FlushWork<S: Storage> {
    file: Rc<S::File>,
    idx_file: Option<Rc<S::File>>,
    /// Whole pages of data and the file positions they go to.
    writes: Vec<(FileBuf<S>, u64)>,
    /// The segment's end the writes reach.
    end: u64,
    /// The offset after the batches they hold.
    next_offset: u64,
    sealed: bool,
    /// Whole new index pages: the buffer, its position, and the index bytes
    /// written once it is.
    idx_pages: Option<(FileBuf<S>, u64, usize)>,
    written_through: bool,
}

/// If a round's fdatasync future is dropped before it returns, what it was
/// to cover is no longer covered: appends waiting on it lead a new round.
struct SyncGuard<'a, S: Storage>(&'a Log<S>);

impl<S: Storage> Drop for SyncGuard<'_, S> {
    fn drop(&mut self) {
        {
            let mut st = self.0.state.borrow_mut();
            st.syncing_next = st.durable_next;
        }
        self.0.flushed.notify_all();
    }
}

/// Resets leadership if a leader's flush future is dropped midway.
pub(super) struct LeaderGuard<'a, S: Storage>(pub(super) &'a Log<S>);

impl<S: Storage> Drop for LeaderGuard<'_, S> {
    fn drop(&mut self) {
        self.0.state.borrow_mut().flushing = false;
        self.0.flushed.notify_all();
    }
}

impl<S: Storage> Log<S> {
    /// Appends `records` as one batch stamped `timestamp_ms`, and resolves,
    /// under [`Durability::Always`], once the batch is durable.
    pub async fn append<R: AsRef<[u8]>>(
        &self,
        records: &[R],
        timestamp_ms: u64,
    ) -> Result<Appended, AppendError> {
        if records.is_empty() {
            return Err(AppendError::Empty);
        }
        if records.len() > BATCH_RECORDS_MAX as usize {
            return Err(AppendError::TooManyRecords {
                count: records.len(),
            });
        }
        let len = batch::encoded_len(records);
        if len > self.config.batch_bytes_max {
            return Err(AppendError::TooLarge {
                bytes: len,
                max: self.config.batch_bytes_max,
            });
        }
        if let Some(damage) = &self.recovery.damage {
            return Err(AppendError::Damaged(damage.to_string().into()));
        }
        // Backpressure: wait while too much is waiting to be written; on a
        // full disk, refuse rather than queue past the bound.
        let mut tried = false;
        loop {
            {
                let st = self.state.borrow();
                if let Some(why) = &st.poisoned {
                    return Err(AppendError::Poisoned(why.clone()));
                }
                if st.pending_bytes + len <= self.config.pending_bytes_max {
                    break;
                }
                if let (true, Some(full)) = (tried, &st.disk_full) {
                    return Err(full.clone());
                }
            }
            self.flush_round(false).await;
            tried = true;
        }
        let appended = self.enqueue(records, len, timestamp_ms);
        match self.config.durability {
            Durability::Always => {
                let wait_start = Instant::now();
                self.wait_durable(appended.last_offset + 1).await?;
                let mut st = self.state.borrow_mut();
                let waited_us = elapsed_us(wait_start);
                st.commits.durable_waits += 1;
                st.commits.durable_wait_us += waited_us;
                st.latencies.durable_wait.record(waited_us);
            }
            // Acknowledged without waiting for a write another append
            // runs (every append once waited for it), and, with write
            // behind, without running one: the owner does, off this path.
            Durability::Interval(_) | Durability::Never => {
                if !self.write_behind.get() && self.write_due() {
                    self.flush_round(false).await;
                }
            }
        }
        Ok(appended)
    }

    /// Under [`Durability::Interval`] or [`Durability::Never`], has the
    /// owner run the writes: an append then never waits for the disk (but
    /// at `pending_bytes_max`), and the owner runs [`Log::write_pending`] in
    /// a task of its own whenever [`Log::write_due`] says so. Without it,
    /// the append that finds a write due runs it and waits for it.
    pub fn set_write_behind(&self, on: bool) {
        self.write_behind.set(on);
    }

    /// Under [`Durability::Interval`] or [`Durability::Never`], whether at
    /// least `write_bytes_max` bytes wait to be written and no flush runs.
    /// Always `false` under [`Durability::Always`], whose appends write and
    /// sync themselves.
    pub fn write_due(&self) -> bool {
        if self.config.durability == Durability::Always {
            return false;
        }
        let st = self.state.borrow();
        st.poisoned.is_none() && !st.flushing && st.pending_bytes >= self.config.write_bytes_max
    }

    /// Writes what waits to be written, in flush rounds (fdatasynced only
    /// where a sealed segment needs it or an interval is due), for as long
    /// as [`Log::write_due`] says a write is due: returns at once when none
    /// is (another flush runs, or too little waits), and writes again what
    /// came in during its own round. A failure poisons the log, as any
    /// failed write does, and later appends report it.
    pub async fn write_pending(&self) {
        while self.write_due() {
            self.flush_round(false).await;
            if self.state.borrow().disk_full.is_some() {
                // Tried once; the next append or sync tries again.
                return;
            }
        }
    }

    /// Puts the batch into the active segment's buffer, rolling first if it
    /// does not fit. Never awaits.
    fn enqueue<R: AsRef<[u8]>>(&self, records: &[R], len: usize, timestamp_ms: u64) -> Appended {
        let count = records.len() as u64;
        let base_offset =
            self.enqueue_batch(len, count, timestamp_ms, BatchKind::Events, |buf, stamp| {
                batch::encode_into(buf, stamp, records)
            });
        Appended {
            base_offset,
            last_offset: base_offset + count - 1,
        }
    }

    /// Puts a batch of `len` bytes taking `offsets` offsets into the active
    /// segment's buffer, rolling first if it does not fit; `write` appends
    /// its bytes, stamped as given. Returns its base offset. Never awaits.
    pub(super) fn enqueue_batch(
        &self,
        len: usize,
        offsets: u64,
        timestamp_ms: u64,
        kind: BatchKind,
        write: impl FnOnce(&mut bytes::BytesMut, &BatchStamp),
    ) -> u64 {
        let mut guard = self.state.borrow_mut();
        let st = &mut *guard;
        let base_offset = st.next_offset;
        let needs_roll = {
            let active = st.segments.values().next_back();
            // A version-1 segment (left by an older server) takes no
            // version-2 batches: each segment holds one version.
            active.is_some_and(|s| {
                s.end > 0
                    && (s.end + len as u64 > self.config.segment_bytes
                        || s.version != batch::BATCH_VERSION)
            })
        };
        if needs_roll {
            if let Some(active) = st.segments.values_mut().next_back() {
                active.sealed = true;
            }
            let mut segment = Segment::new(&self.dir, base_offset);
            segment.base_index = st.next_index;
            segment.raft = Some(Vec::new());
            st.segments.insert(base_offset, segment);
        }
        let Some(seg) = st.segments.values_mut().next_back() else {
            unreachable!("a log always has an active segment");
        };
        assert!(!seg.sealed && seg.next_offset == base_offset);
        assert!(seg.end + len as u64 <= self.config.segment_bytes);
        // Entries' offsets strictly increase, and a control batch shares its
        // offset with the next batch: an entry goes only where the offset
        // passed the last entry's (the rule open's scan follows, which may
        // have indexed a control batch at the offset this batch begins at).
        let relative_offset = (base_offset - seg.base) as u32;
        if seg.end > 0
            && seg.end - seg.last_indexed_position >= u64::from(self.config.index_interval_bytes)
            && let SegmentIndex::Memory(idx) = &mut seg.index
            && index::last(idx).is_none_or(|e| e.relative_offset < relative_offset)
        {
            {
                index::push(
                    idx,
                    IndexEntry {
                        relative_offset,
                        position: seg.end as u32,
                    },
                );
                seg.last_indexed_position = seg.end;
            }
        }
        let before = seg.buf.len();
        let stamp = BatchStamp {
            kind,
            base_offset,
            first_timestamp_ms: timestamp_ms,
            term: st.term,
            raft_index: st.next_index,
        };
        write(&mut seg.buf, &stamp);
        assert_eq!(seg.buf.len() - before, len);
        if seg.raft.is_none() && seg.end == 0 {
            // An empty segment found at open: its table begins here.
            seg.raft = Some(Vec::new());
        }
        if let Some(slots) = &mut seg.raft {
            slots.push(super::raft::Slot {
                position: seg.end,
                bytes: len as u32,
                kind,
                term: st.term,
            });
        }
        seg.end += len as u64;
        assert_eq!(seg.buf_position + seg.buf.len() as u64, seg.end);
        seg.next_offset += offsets;
        seg.max_timestamp_ms = seg.max_timestamp_ms.max(timestamp_ms);
        st.next_offset += offsets;
        st.next_index += 1;
        seg.next_index = st.next_index;
        st.pending_bytes += len;
        base_offset
    }

    /// Waits until every offset below `next` is durable; fails with
    /// [`AppendError::DiskFull`] when a round it led or awaited found the
    /// disk full (what it waited for stays staged).
    async fn wait_durable(&self, next: u64) -> Result<(), AppendError> {
        let mut tried = false;
        loop {
            let generation = self.flushed.generation();
            let covered = {
                let st = self.state.borrow();
                if st.durable_next >= next {
                    return Ok(());
                }
                if let Some(why) = &st.poisoned {
                    return Err(AppendError::Poisoned(why.clone()));
                }
                if let (true, Some(full)) = (tried, &st.disk_full) {
                    return Err(full.clone());
                }
                st.syncing_next >= next
            };
            if covered {
                // An fdatasync already issued covers it: wait for it.
                self.flushed.changed_since(generation).await;
            } else {
                self.flush_round(true).await;
                tried = true;
            }
        }
    }

    /// Makes everything appended so far durable: writes it, and, unless the
    /// segment is write-through, fdatasyncs it.
    pub async fn sync(&self) -> Result<(), AppendError> {
        let next = self.state.borrow().next_offset;
        self.wait_durable(next).await
    }

    /// Under [`Durability::Interval`], syncs when the interval has passed
    /// since the last sync and something is waiting; a no-op otherwise. Meant
    /// to be called from a timer.
    pub async fn flush_if_due(&self) -> Result<(), AppendError> {
        let due = {
            let st = self.state.borrow();
            match self.config.durability {
                Durability::Interval(every) => {
                    st.durable_next < st.next_offset && st.last_sync.elapsed() >= every
                }
                _ => false,
            }
        };
        if due { self.sync().await } else { Ok(()) }
    }

    /// One round of group commit: lead a flush if none runs, else wait for
    /// the running one to end.
    pub(super) async fn flush_round(&self, want_sync: bool) {
        let generation = self.flushed.generation();
        let lead = {
            let mut st = self.state.borrow_mut();
            if st.poisoned.is_some() {
                return;
            }
            if st.flushing {
                false
            } else {
                st.flushing = true;
                true
            }
        };
        if !lead {
            self.flushed.changed_since(generation).await;
            return;
        }
        let guard = LeaderGuard(self);
        let result = match self.flush_all(want_sync).await {
            Ok(Some(sync)) => {
                // Let the next round write while this fdatasync runs.
                drop(guard);
                self.finish_sync(sync).await.map_err(FlushError::Poison)
            }
            Ok(None) => {
                drop(guard);
                Ok(())
            }
            Err(why) => Err(why),
        };
        {
            let mut st = self.state.borrow_mut();
            match result {
                Ok(()) => st.disk_full = None,
                Err(FlushError::DiskFull(full)) => st.disk_full = Some(full),
                Err(FlushError::Poison(why)) => {
                    if st.poisoned.is_none() {
                        st.poisoned = Some(why.into());
                    }
                }
            }
        }
        self.flushed.notify_all();
    }

    /// Awaits a round's fdatasync issued outside the leader's turn, then
    /// marks what it covers durable.
    async fn finish_sync(&self, sync: PendingSync<S>) -> Result<(), String> {
        if !sync.written_through {
            let sync_start = Instant::now();
            let guard = SyncGuard(self);
            let synced = sync.file.fdatasync().await;
            std::mem::forget(guard);
            synced.map_err(|e| format!("fdatasync of {} failed: {e}", sync.path.display()))?;
            let mut st = self.state.borrow_mut();
            st.commits.syncs += 1;
            st.commits.sync_us += elapsed_us(sync_start);
        }
        let mut guard = self.state.borrow_mut();
        let st = &mut *guard;
        if st.poisoned.is_some() {
            // An earlier round failed: nothing more becomes durable.
            return Ok(());
        }
        if let Some(seg) = st.segments.get_mut(&sync.base) {
            seg.durable_end = seg.durable_end.max(sync.end);
            seg.durable_next = seg.durable_next.max(sync.next_offset);
        }
        st.durable_next = st.durable_next.max(sync.next_offset);
        st.last_sync = Instant::now();
        Ok(())
    }

    /// Flushes every segment that has work, oldest first. A sealed segment
    /// is flushed until it is finalized before any later one is touched, so
    /// that a segment file exists on disk only once all before it are
    /// complete.
    ///
    /// Returns the fdatasync the last segment still needs when it is the
    /// active one: the caller issues it after handing over the leader's
    /// turn, so that the next round's writes overlap it.
    async fn flush_all(&self, want_sync: bool) -> Result<Option<PendingSync<S>>, FlushError> {
        loop {
            let (base, is_last) = {
                let st = self.state.borrow();
                let last = st.segments.keys().next_back().copied();
                match st.segments.iter().find(|(_, s)| !s.finalized) {
                    Some((&b, _)) => (b, Some(b) == last),
                    None => return Ok(None),
                }
            };
            let pending = self.flush_segment(base, want_sync).await?;
            if pending.is_some() {
                return Ok(pending);
            }
            let sealed_and_unfinished = self
                .state
                .borrow()
                .segments
                .get(&base)
                .is_some_and(|s| s.sealed && !s.finalized);
            if is_last && !sealed_and_unfinished {
                return Ok(None);
            }
        }
    }

    /// Writes a segment's new data and index pages. A sealed segment is
    /// synced and finalized here; the active one's fdatasync, when due, is
    /// returned for the caller to issue once its turn as leader is over.
    async fn flush_segment(
        &self,
        base: u64,
        want_sync: bool,
    ) -> Result<Option<PendingSync<S>>, FlushError> {
        // Create the file on first use, durably, before any data goes in.
        let needs_file = self
            .state
            .borrow()
            .segments
            .get(&base)
            .is_some_and(|s| s.file.is_none());
        if needs_file {
            self.create_segment_files(base).await?;
        }
        let sync_due = match self.config.durability {
            Durability::Always => true,
            Durability::Interval(every) => self.state.borrow().last_sync.elapsed() >= every,
            Durability::Never => false,
        };

        let Some(work) = self.flush_work(base)? else {
            return Ok(None);
        };
        let FlushWork {
            file,
            idx_file,
            writes,
            end,
            next_offset,
            sealed,
            idx_pages,
            written_through,
        } = work;
        let wrote = !writes.is_empty();
        let path = self.segment_path(base);
        let write_end = writes
            .iter()
            .map(|(buf, position)| position + buf.as_ref().len() as u64)
            .max();
        if let Some(write_end) = write_end {
            self.allocate_for_write(base, &file, write_end).await?;
        }
        self.write_pages(&file, writes, &path).await?;
        if let (Some((buf, position, full)), Some(idx_file)) = (idx_pages, idx_file.as_ref()) {
            // The index is a hint that recovery checks, so it is written but
            // not synced here; a failure to write it still poisons the log,
            // since it means the disk is failing.
            idx_file
                .write_at(buf, position)
                .await
                .map_err(|e| format!("index write for {} failed: {e}", path.display()))?;
            if let Some(seg) = self.state.borrow_mut().segments.get_mut(&base) {
                seg.index_written_bytes = seg.index_written_bytes.max(full);
            }
        }
        let synced = sealed
            || ((want_sync || sync_due)
                && (wrote || next_offset > self.state.borrow().syncing_next));
        if !self.commit_written(base, end, next_offset, synced) {
            return Ok(None);
        }
        let sync = synced.then(|| PendingSync {
            file,
            path,
            base,
            end,
            next_offset,
            written_through,
        });
        if !sealed {
            // The active segment's fdatasync is left to the caller (see
            // `flush_round`).
            return Ok(sync);
        }
        // A sealed one is synced and finalized here.
        if let Some(sync) = sync {
            self.finish_sync(sync).await?;
        }
        let finalize = self
            .state
            .borrow()
            .segments
            .get(&base)
            .is_some_and(|seg| seg.durable_end == seg.end);
        if finalize {
            self.finalize_segment(base).await?;
        }
        Ok(None)
    }

    /// Snapshots what segment `base` has to write: its unwritten tail, in
    /// buffers of at most `write_bytes_max`, and the whole new pages of its
    /// index. `None` when the segment is gone.
    fn flush_work(&self, base: u64) -> Result<Option<FlushWork<S>>, String> {
        let st = self.state.borrow();
        let Some(seg) = st.segments.get(&base) else {
            return Ok(None);
        };
        let Some(file) = seg.file.clone() else {
            return Err(format!("segment {} has no file", seg.log_path.display()));
        };
        let mut writes = Vec::new();
        if seg.end > seg.written_end {
            let mut at = 0usize;
            let padded = align_up(seg.buf.len() as u64) as usize;
            while at < padded {
                let len = (padded - at).min(self.config.write_bytes_max);
                let mut buf = file.alloc_buf(len);
                let dst = buf.as_mut();
                let data_end = (at + len).min(seg.buf.len());
                let data = &seg.buf[at..data_end];
                dst[..data.len()].copy_from_slice(data);
                dst[data.len()..].fill(0);
                writes.push((buf, seg.buf_position + at as u64));
                at += len;
            }
        }
        // Whole new pages of the active segment's index.
        let mut idx_pages = None;
        if let (SegmentIndex::Memory(idx), Some(idx_file)) = (&seg.index, &seg.idx_file) {
            let full = align_down(idx.len() as u64) as usize;
            if full > seg.index_written_bytes {
                let mut buf = idx_file.alloc_buf(full - seg.index_written_bytes);
                buf.as_mut()
                    .copy_from_slice(&idx[seg.index_written_bytes..full]);
                idx_pages = Some((buf, seg.index_written_bytes as u64, full));
            }
        }
        Ok(Some(FlushWork {
            file,
            idx_file: seg.idx_file.clone(),
            writes,
            end: seg.end,
            next_offset: seg.next_offset,
            sealed: seg.sealed,
            idx_pages,
            written_through: seg.writes == Writes::Through,
        }))
    }

    /// Submits a round's data writes together and counts them in the
    /// commit stats.
    async fn write_pages(
        &self,
        file: &S::File,
        writes: Vec<(FileBuf<S>, u64)>,
        path: &Path,
    ) -> Result<(), String> {
        let wrote = !writes.is_empty();
        let write_bytes: usize = writes.iter().map(|(buf, _)| buf.as_ref().len()).sum();
        let write_start = Instant::now();
        let results = futures::future::join_all(
            writes
                .into_iter()
                .map(|(buf, position)| file.write_at(buf, position)),
        )
        .await;
        for r in results {
            r.map_err(|e| format!("write to {} failed: {e}", path.display()))?;
        }
        if wrote {
            let mut st = self.state.borrow_mut();
            st.commits.writes += 1;
            st.commits.written_bytes += write_bytes as u64;
            let wrote_us = elapsed_us(write_start);
            st.commits.write_us += wrote_us;
            st.latencies.write.record(wrote_us);
        }
        Ok(())
    }

    /// Commits what a round's snapshot covered once its writes returned:
    /// the segment's bytes up to `end` are written (the tail buffer keeps
    /// only the last partial page), and, when `synced`, an fdatasync covers
    /// the offsets below `next_offset`. `false` when the segment is gone.
    fn commit_written(&self, base: u64, end: u64, next_offset: u64, synced: bool) -> bool {
        let mut guard = self.state.borrow_mut();
        let st = &mut *guard;
        let Some(seg) = st.segments.get_mut(&base) else {
            return false;
        };
        if end > seg.written_end {
            st.pending_bytes -= (end - seg.written_end) as usize;
            seg.written_end = end;
            let keep_from = align_down(end);
            let drop_bytes = (keep_from - seg.buf_position) as usize;
            let _ = seg.buf.split_to(drop_bytes);
            seg.buf_position = keep_from;
        }
        if synced {
            st.syncing_next = st.syncing_next.max(next_offset);
        }
        true
    }
}
