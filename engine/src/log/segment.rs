//! Segments: the in-memory state of one segment file and its index, and
//! their life on disk: created (or begun in a recycled file) by the flush
//! that first writes them, sealed when a batch does not fit, finalized once
//! durable.
//!
//! **Rolling.** When a batch does not fit in the active segment, the segment
//! is sealed and a new one begins at the next offset. The flush that finishes
//! a sealed segment truncates it to its data, writes its index whole, syncs
//! both, and only then creates the next segment's file: every segment but the
//! last on disk is complete.
//!
//! **Recycling.** Retention renames the file of a segment it retires to
//! `<base>.free` (up to
//! [`RECYCLED_SEGMENTS_MAX`](super::RECYCLED_SEGMENTS_MAX) per log) instead
//! of deleting it, and the next segment begins in such a file. Overwriting
//! blocks the file system already holds is much cheaper than filling
//! preallocated ones: no extent changes at each write, so the write is not
//! deferred to a kernel worker and the fdatasync flushes data only (on the
//! virtio disk measured for this, 4 files written 80 KiB + fdatasync at a
//! time did 1.45 x the bandwidth). A roll applies retention first (ages
//! measured to the newest batch), so a log at its limits reuses its oldest
//! segment's file. The old batches left
//! in a recycled file all hold offsets below the segment's base, so a scan
//! in recovery stops at the first of them as out of sequence, exactly as it
//! stops at zeros. A file some reader still holds is deleted, never reused.
//!
//! **Preallocation.** The active segment's file is allocated in steps of
//! `segment_preallocate_bytes` (at most `segment_bytes`), not whole: it is
//! created one step long, and a flush whose writes would end past the
//! allocation first extends it to the writes' end rounded up to whole
//! steps (never past `segment_bytes`). Cuts, recovery and repairs allocate
//! the same way from the data's end. A log that exists but holds little
//! (every replicated partition opens its logs at once, for Raft's first
//! entries) so costs a step of disk, not a segment: with 128 MiB segments,
//! 256 partitions x 2 logs took 64 GiB per node before any event. Writes
//! into the allocation stay writes into blocks the file system already
//! holds, so the reason for preallocating at all (no block allocation on
//! the write path) keeps for all but one flush per step, which adds one
//! `fallocate`. A recycled file keeps its length (all of it allocated) and
//! is extended only past it. After a crash the file may end anywhere at or
//! after the durable data (an extension not yet synced is lost like any
//! unsynced write); recovery reads the end of the file as it reads the
//! zeros of the allocation: a clean end (see `recovery`).

use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::BytesMut;

use super::append::FlushError;
use super::{Durability, Log, meta};
use crate::storage::{Storage, StorageFile, Writes, align_up};

pub(super) enum SegmentIndex<M> {
    /// The active segment's index, written page by page.
    Memory(Vec<u8>),
    /// A sealed segment's index file, mapped; `len` bytes of it are valid.
    Mapped { map: M, len: usize },
    /// A sealed segment with a single batch has nothing to index.
    Empty,
}

impl<M: std::ops::Deref<Target = [u8]>> SegmentIndex<M> {
    pub(super) fn bytes(&self) -> &[u8] {
        match self {
            SegmentIndex::Memory(v) => v,
            SegmentIndex::Mapped { map, len } => &map[..*len],
            SegmentIndex::Empty => &[],
        }
    }
}

pub(super) struct Segment<S: Storage> {
    pub(super) base: u64,
    pub(super) log_path: PathBuf,
    pub(super) idx_path: PathBuf,
    /// `None` until the flush that first writes the segment creates it.
    pub(super) file: Option<Rc<S::File>>,
    /// The active segment's index file.
    pub(super) idx_file: Option<Rc<S::File>>,
    /// Bytes of batches appended (the logical end).
    pub(super) end: u64,
    /// The offset after the last batch appended.
    pub(super) next_offset: u64,
    /// The batch version the segment holds (that of its first batch; the
    /// version written for an empty one). Appends go only to a segment of
    /// the version written: a version-1 active segment is rolled first.
    pub(super) version: u8,
    /// The Raft index its first batch has or will have (0 for a segment
    /// of version 1).
    pub(super) base_index: u64,
    /// The Raft index after its last batch (0 for a segment of version 1
    /// or one not scanned: only the active segment's is kept).
    pub(super) next_index: u64,
    /// The term of its last batch, where scanned (0 otherwise).
    pub(super) last_term: u64,
    /// Its Raft table, one slot per version-2 batch from `base_index` on
    /// (see `log/raft.rs`); `None` for a segment found at open until
    /// [`Log::load_raft_index`] scans it.
    pub(super) raft: Option<Vec<super::raft::Slot>>,
    pub(super) max_timestamp_ms: u64,
    pub(super) index: SegmentIndex<S::Map>,
    /// Position of the last batch indexed (0 for none).
    pub(super) last_indexed_position: u64,
    /// Bytes of the in-memory index already written to the index file.
    pub(super) index_written_bytes: usize,
    /// File position of `buf[0]`; a multiple of the page size.
    pub(super) buf_position: u64,
    /// The bytes `buf_position..end`, not all written yet.
    pub(super) buf: BytesMut,
    /// Bytes of the file written.
    pub(super) written_end: u64,
    /// Bytes of the file durable.
    pub(super) durable_end: u64,
    /// Bytes of the file allocated: its length since it was created,
    /// recovered or last extended (see "Preallocation" above).
    pub(super) allocated: u64,
    /// The offset after the batches below `durable_end`.
    pub(super) durable_next: u64,
    /// No more appends go here.
    pub(super) sealed: bool,
    /// Sealed, truncated, indexed and synced.
    pub(super) finalized: bool,
    /// How `file` was opened: a write-through file needs no fdatasync for
    /// what its writes made durable.
    pub(super) writes: Writes,
}

impl<S: Storage> Segment<S> {
    pub(super) fn new(dir: &Path, base: u64) -> Self {
        Segment {
            base,
            log_path: dir.join(format!("{base:020}.log")),
            idx_path: dir.join(format!("{base:020}.idx")),
            file: None,
            idx_file: None,
            end: 0,
            next_offset: base,
            version: super::batch::BATCH_VERSION,
            base_index: 0,
            next_index: 0,
            last_term: 0,
            raft: None,
            max_timestamp_ms: 0,
            index: SegmentIndex::Memory(Vec::new()),
            last_indexed_position: 0,
            index_written_bytes: 0,
            buf_position: 0,
            buf: BytesMut::new(),
            written_end: 0,
            durable_end: 0,
            allocated: 0,
            durable_next: base,
            sealed: false,
            finalized: false,
            writes: Writes::Buffered,
        }
    }
}

/// How a log under `durability` opens the segment files it writes.
pub(super) fn segment_writes(durability: Durability) -> Writes {
    match durability {
        Durability::Always => Writes::Through,
        Durability::Interval(_) | Durability::Never => Writes::Buffered,
    }
}

impl<S: Storage> Log<S> {
    pub(super) fn segment_path(&self, base: u64) -> PathBuf {
        self.dir.join(format!("{base:020}.log"))
    }

    /// Creates segment `base`'s files (or begins it in a recycled one),
    /// allocated one step, durably. A full disk met creating or allocating
    /// them is [`FlushError::DiskFull`]: no data was written, and a later
    /// round creates them again (a file left at the path is truncated).
    pub(super) async fn create_segment_files(&self, base: u64) -> Result<(), FlushError> {
        let log_path = self.segment_path(base);
        let idx_path = self.dir.join(format!("{base:020}.idx"));
        let first_step = self.config.allocation_for(0);
        let fail = |what: &str, path: &Path, e: io::Error| {
            FlushError::from_allocation(what, path, first_step, e)
        };
        // Retention runs now, so that the new segment can begin in the file
        // of one it retires. Ages count to the newest batch appended (the
        // caller's clock, a little behind its now). Retention failures are
        // not the writer's: the periodic retention reports them.
        let retention = self.retention.get();
        let unwanted = self.state.borrow().delete_below > 0;
        if retention.max_bytes.is_some() || retention.max_age_ms.is_some() || unwanted {
            let newest = {
                let st = self.state.borrow();
                st.segments.values().map(|s| s.max_timestamp_ms).max()
            };
            let _ = self.retire(newest.unwrap_or(0)).await;
        }
        let free = self.state.borrow_mut().free.pop();
        let recycled = match free {
            Some(free) => match self.storage.rename(&free, &log_path).await {
                Ok(()) => self.size_recycled(&log_path).await.ok(),
                Err(_) => {
                    // Still there under its own name: keep it for later.
                    self.state.borrow_mut().free.push(free);
                    None
                }
            },
            None => None,
        };
        let (file, allocated) = match recycled {
            Some(recycled) => {
                self.state.borrow_mut().commits.segments_recycled += 1;
                recycled
            }
            None => {
                // Whatever a failed reuse left at `log_path` is truncated.
                let file = self
                    .storage
                    .create_with(&log_path, self.segment_writes())
                    .await
                    .map_err(|e| fail("create", &log_path, e))?;
                let allocated = first_step;
                file.preallocate(allocated)
                    .await
                    .map_err(|e| fail("preallocate", &log_path, e))?;
                (file, allocated)
            }
        };
        let idx = self
            .storage
            .create(&idx_path)
            .await
            .map_err(|e| fail("create", &idx_path, e))?;
        // Past the allocations, any failure poisons.
        let fail = |what: &str, path: &Path, e: io::Error| {
            FlushError::Poison(format!("{what} {} failed: {e}", path.display()))
        };
        self.storage
            .sync_dir(&self.dir)
            .await
            .map_err(|e| fail("sync of directory", &self.dir, e))?;
        if let Some(seg) = self.state.borrow_mut().segments.get_mut(&base) {
            seg.file = Some(Rc::new(file));
            seg.idx_file = Some(Rc::new(idx));
            seg.writes = self.segment_writes();
            seg.allocated = allocated;
        }
        // Now that the file exists durably, a later open must find it.
        let base_index = self
            .state
            .borrow()
            .segments
            .get(&base)
            .map_or(0, |s| s.base_index);
        self.update_meta(|m| {
            m.raft.active_base_index = base_index;
            m.active_base = Some(base);
            m.durable_position = 0;
            m.durable_next = base;
        })
        .await
        .map_err(|e| fail("write of", &meta::meta_path(&self.dir), e))?;
        Ok(())
    }

    /// How segment files are opened for writing: write-through under
    /// [`Durability::Always`] (see "Group commit" in `append`), buffered
    /// otherwise.
    fn segment_writes(&self) -> Writes {
        segment_writes(self.config.durability)
    }

    /// Opens a retired file just renamed to `log_path` and sizes it for a
    /// segment: cut to `segment_bytes` if longer, allocated to at least one
    /// step, and otherwise kept as long as it is (all of it is allocated
    /// already). Its old contents stay: recovery tells them apart by their
    /// offsets (see the module header). The caller's `sync_dir` makes the
    /// rename durable before anything is written. Returns the file and its
    /// allocated length.
    async fn size_recycled(&self, log_path: &Path) -> io::Result<(S::File, u64)> {
        let file = self
            .storage
            .open_with(log_path, self.segment_writes())
            .await?;
        let mut size = file.size().await?;
        if size > self.config.segment_bytes {
            file.truncate(self.config.segment_bytes).await?;
            size = self.config.segment_bytes;
        }
        let allocated = size.max(self.config.allocation_for(0));
        if allocated > size {
            file.preallocate(allocated).await?;
        }
        Ok((file, allocated))
    }

    /// Extends the allocation of segment `base`'s file so that a write can
    /// end at `write_end` (see "Preallocation" in the module header). Only
    /// the flush round's leader writes, so no other extension runs at once.
    pub(super) async fn allocate_for_write(
        &self,
        base: u64,
        file: &S::File,
        write_end: u64,
    ) -> Result<(), FlushError> {
        let allocated = match self.state.borrow().segments.get(&base) {
            Some(seg) => seg.allocated,
            None => return Ok(()),
        };
        if write_end <= allocated {
            return Ok(());
        }
        let target = self.config.allocation_for(write_end);
        file.preallocate(target).await.map_err(|e| {
            let what = format!("preallocate to {target} bytes of");
            FlushError::from_allocation(&what, &self.segment_path(base), target - allocated, e)
        })?;
        if let Some(seg) = self.state.borrow_mut().segments.get_mut(&base) {
            seg.allocated = seg.allocated.max(target);
        }
        Ok(())
    }

    /// Truncates a fully durable sealed segment to its data, writes its index
    /// whole and syncs both; then maps the index.
    pub(super) async fn finalize_segment(&self, base: u64) -> Result<(), String> {
        let (file, idx_file, end, idx, idx_path) = {
            let st = self.state.borrow();
            let Some(seg) = st.segments.get(&base) else {
                return Ok(());
            };
            let (Some(file), Some(idx_file)) = (seg.file.clone(), seg.idx_file.clone()) else {
                return Err(format!(
                    "sealed segment {} has no files",
                    seg.log_path.display()
                ));
            };
            let idx = seg.index.bytes().to_vec();
            (file, idx_file, seg.end, idx, seg.idx_path.clone())
        };
        let path = self.segment_path(base);
        file.truncate(end)
            .await
            .map_err(|e| format!("truncate of {} failed: {e}", path.display()))?;
        file.fdatasync()
            .await
            .map_err(|e| format!("fdatasync of {} failed: {e}", path.display()))?;
        write_index_pages(&*idx_file, &idx, 0)
            .await
            .map_err(|e| format!("write of {} failed: {e}", idx_path.display()))?;
        idx_file
            .truncate(idx.len() as u64)
            .await
            .map_err(|e| format!("truncate of {} failed: {e}", idx_path.display()))?;
        idx_file
            .fdatasync()
            .await
            .map_err(|e| format!("fdatasync of {} failed: {e}", idx_path.display()))?;
        let index = match self.storage.map_readonly(&idx_path).await {
            Ok(Some(map)) => SegmentIndex::Mapped {
                len: idx.len(),
                map,
            },
            Ok(None) => SegmentIndex::Empty,
            Err(e) => return Err(format!("map of {} failed: {e}", idx_path.display())),
        };
        if let Some(seg) = self.state.borrow_mut().segments.get_mut(&base) {
            seg.index = index;
            seg.idx_file = None;
            seg.buf = BytesMut::new();
            // All of a sealed segment is read from its file from now on.
            seg.buf_position = end;
            seg.finalized = true;
        }
        Ok(())
    }
}

/// Writes raw index bytes from byte `from` on (a page boundary), padding the
/// last page with zeros.
pub(super) async fn write_index_pages<F: StorageFile>(
    file: &F,
    idx: &[u8],
    from: usize,
) -> io::Result<()> {
    if idx.len() <= from {
        return Ok(());
    }
    let padded = align_up((idx.len() - from) as u64) as usize;
    let mut buf = file.alloc_buf(padded);
    let dst = buf.as_mut();
    dst[..idx.len() - from].copy_from_slice(&idx[from..]);
    dst[idx.len() - from..].fill(0);
    file.write_at(buf, from as u64).await
}
