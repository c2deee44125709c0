//! Telling a torn tail from damage in the active segment, the metadata
//! writes that make it possible, and `repair`.
//!
//! Recovery scans the active segment to the first batch that is short,
//! zero, fails its checks or is out of sequence: the bad point. What lies
//! there is one of two things:
//!
//! - **A torn tail**: the end of the last write round, which a crash left
//!   partly written. Nothing in it was acknowledged as durable, and it is
//!   cut (the log then continues from the bad point), with a [`TailCut`] in
//!   the log's [`Recovery`] report for the owner to log when anything but
//!   zeros or an older life's batches was cut.
//! - **Damage**: bytes that were durable went bad (a flipped bit, a zeroed
//!   page, a truncated file). Later batches may have been acknowledged, so
//!   the log opens read-only: reads up to the bad point work, appends fail
//!   with [`AppendError::Damaged`](super::AppendError::Damaged), and nothing
//!   on disk is changed until [`Log::repair`] is run.
//!
//! The bad point is damage when
//! 1. it lies below the watermark `log.meta` records as durable for this
//!    segment (at open, at each roll and at [`Log::checkpoint`]): the
//!    segment is zeroed, corrupt or truncated there; or
//! 2. a valid batch with offsets in sequence lies at least `tear_bytes_max`
//!    bytes beyond it. Under `always` each round is written through
//!    (`O_DSYNC`) and the next round begins only after every write of this
//!    one returned, so a crash can tear only the last round, which starts at
//!    or before the bad point and spans at most the bytes that may wait
//!    unwritten (`pending_bytes_max`) plus the rewritten partial page and the
//!    zero padding. A batch beyond that was written by an earlier round, and
//!    is durable. Under `interval` and `never` unsynced writes of any extent
//!    may be torn (a crash may keep a later write and lose an earlier one),
//!    so only the watermark tells damage there.
//!
//! **The end of the file** is read like the zeros of the preallocated
//! space. The active segment is allocated in steps (see "Preallocation" in
//! `segment`), and an extension is made durable only by the write or
//! fdatasync after it, so a crash can leave the file ending anywhere at or
//! after its durable data, never before it (a write-through write or an
//! fdatasync makes the file's length durable with the data). A scan that
//! reaches the end of the file between batches has found the clean end; one
//! that reaches it inside a batch stops there as `Incomplete`, a bad point
//! like any other, judged by the two rules above: below the watermark the
//! file was cut short (damage); above it, a torn round (cut). Neither rule
//! needed the file to be longer than its data: rule 1 compares with the
//! watermark only, and rule 2 looks for evidence only inside the file, where
//! a shorter file simply holds less of it.
//!
//! Within `tear_bytes_max` of the data's end after a crash, damage cannot be
//! told from a torn round and is cut as one; the [`TailCut`] then names the
//! later offsets seen. A watermark is recorded at open and at a clean
//! shutdown, so after a clean shutdown all of the segment is covered.
//!
//! **Repair** (offline): copies the bytes from the bad point to the end of
//! the written data to `<base>.log.cut-<position>` beside the segment (never
//! deleted), records in `log.meta` a floor above every offset seen in them
//! (and above the watermark's), cuts the segment there and, when the floor
//! is above the segment's end, seals it and begins a new segment at the
//! floor (the range between is recorded as skipped). So no offset that may
//! have been acknowledged is ever given again.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::batch::{self, BATCH_HEADER_BYTES, RECORD_PREFIX_BYTES};
use super::meta::{self, LogMeta, REPAIR_GAPS_MAX};
use super::open::Scan;
use super::segment::write_index_pages;
use super::{Log, LogConfig, OpenError, SCAN_CHUNK_BYTES, io_err};
use crate::storage::{IO_ALIGN_BYTES, Storage, StorageFile, align_up};

/// A torn tail recovery cut from the active segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailCut {
    /// The segment file.
    pub path: PathBuf,
    /// Where the cut is: the log continues from this byte.
    pub position: u64,
    /// The offset the log continues from.
    pub offset: u64,
    /// Bytes of written data cut (to the end of the last nonzero data or
    /// valid batch after the cut).
    pub bytes: u64,
    /// The offset after the last valid batch found after the cut, if any:
    /// offsets up to it were written but never made durable.
    pub later_next_offset: Option<u64>,
    /// What was found at the cut.
    pub reason: String,
}

impl fmt::Display for TailCut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cut the torn tail of {} at byte {} ({}): {} bytes, offsets from {}",
            self.path.display(),
            self.position,
            self.reason,
            self.bytes,
            self.offset
        )?;
        match self.later_next_offset {
            Some(next) => write!(f, " to {}", next - 1),
            None => write!(f, " on"),
        }
    }
}

/// Damage found in the active segment: the log serves reads below
/// `offset` and refuses appends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The segment file.
    pub path: PathBuf,
    /// Byte position of the damage.
    pub position: u64,
    /// The first offset that cannot be read.
    pub offset: u64,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "segment {} is damaged at byte {}: {}; reads below offset {} work, \
             appends are refused until `hadron repair` is run with the server stopped",
            self.path.display(),
            self.position,
            self.reason,
            self.offset
        )
    }
}

/// What recovery found when the log was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// A torn tail cut from the active segment.
    pub cut: Option<TailCut>,
    /// Damage that keeps the log read-only.
    pub damage: Option<Damage>,
}

/// What [`Log::repair`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairReport {
    /// The damage repaired.
    pub damage: Damage,
    /// The file the cut bytes were kept in (none when there were none).
    pub cut_file: Option<PathBuf>,
    /// Bytes kept there.
    pub cut_bytes: u64,
    /// The offset the log continues from: above every offset seen in the cut
    /// bytes and every offset recorded durable.
    pub next_offset: u64,
}

impl fmt::Display for RepairReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cut {} at byte {}: ",
            self.damage.path.display(),
            self.damage.position
        )?;
        match &self.cut_file {
            Some(p) => write!(f, "{} bytes kept in {}", self.cut_bytes, p.display())?,
            None => write!(f, "no bytes after it")?,
        }
        write!(
            f,
            "; offsets {}..{} skipped, appends continue at {}",
            self.damage.offset, self.next_offset, self.next_offset
        )
    }
}

/// How the active segment's scan ended.
pub(super) enum Tail {
    /// At zeros or an older life's batch: nothing to report.
    Clean,
    Torn(TailCut),
    Damaged(Damage),
}

/// What the bytes after a bad point hold.
struct Survey {
    /// The first valid in-sequence batch at or beyond the evidence point.
    evidence: Option<u64>,
    /// The offset after the last valid in-sequence batch found.
    later_next: Option<u64>,
    /// End of the written data after the bad point: the last nonzero byte
    /// before the first zero page or older life's batch, or the end of the
    /// last in-sequence batch found, whichever is further.
    data_end: u64,
}

impl Survey {
    /// Nothing found yet after the bad point `b`.
    fn at_bad_point(b: u64) -> Survey {
        Survey {
            evidence: None,
            later_next: None,
            data_end: b,
        }
    }

    /// Moves `data_end` over the nonzero bytes of `chunk` (read at `pos`)
    /// from the bad point `b` up to `limit`, page by page; returns `false`
    /// at the first whole zero page (or a zero end of the file), where the
    /// written data has ended.
    fn extend_written(&mut self, chunk: &[u8], pos: u64, b: u64, limit: u64, size: u64) -> bool {
        let mut lo = pos.max(b);
        while lo < limit {
            let hi = (lo + IO_ALIGN_BYTES).min(limit);
            match chunk[(lo - pos) as usize..(hi - pos) as usize]
                .iter()
                .rposition(|&x| x != 0)
            {
                Some(i) => self.data_end = self.data_end.max(lo + i as u64 + 1),
                None if hi - lo == IO_ALIGN_BYTES || hi >= size => return false,
                None => {}
            }
            lo = hi;
        }
        true
    }
}

fn find_magic(bytes: &[u8]) -> Option<usize> {
    let magic = batch::BATCH_MAGIC.to_le_bytes();
    bytes.windows(4).position(|w| w == magic)
}

/// Bytes one write round can leave torn in a crash: under `always`, what
/// may wait unwritten, plus the partial page rewritten at its start and the
/// zero padding at its end; otherwise any extent.
pub(super) fn tear_bytes_max(config: &LogConfig) -> u64 {
    match config.durability {
        super::Durability::Always => align_up(config.pending_bytes_max as u64) + 2 * IO_ALIGN_BYTES,
        _ => u64::MAX,
    }
}

struct MetaGuard<'a, S: Storage>(&'a Log<S>);

impl<S: Storage> Drop for MetaGuard<'_, S> {
    fn drop(&mut self) {
        self.0.meta.borrow_mut().busy = false;
        self.0.meta_idle.notify_all();
    }
}

/// The open metadata file and what it holds.
#[derive(Default)]
pub(super) struct MetaState<F> {
    pub file: Option<Rc<F>>,
    pub current: LogMeta,
    pub busy: bool,
}

impl<S: Storage> Log<S> {
    /// What recovery found when the log was opened: a torn tail it cut, or
    /// damage that keeps the log read-only. The owner logs it.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// Records that its owner verified every batch of the log at open
    /// (`Log::find_damage`), so that a later check may skip reading it
    /// whole again.
    pub fn mark_verified(&self) {
        self.verified.set(true);
    }

    /// Whether [`Log::mark_verified`] was called since the open.
    pub fn verified(&self) -> bool {
        self.verified.get()
    }

    /// The damage that keeps the log read-only, if any.
    pub fn damage(&self) -> Option<&Damage> {
        self.recovery.damage.as_ref()
    }

    /// Records in `log.meta` how far the active segment is durable now, so
    /// that a later open tells damage below it from a torn tail. Meant for a
    /// clean shutdown (after [`Log::sync`]) and for a timer; a no-op on a
    /// damaged or poisoned log.
    pub async fn checkpoint(&self) -> io::Result<()> {
        if self.damage().is_some() || self.poisoned().is_some() {
            return Ok(());
        }
        let mark = {
            let st = self.state.borrow();
            st.segments
                .values()
                .next_back()
                .filter(|s| s.file.is_some())
                .map(|s| (s.base, s.durable_end, s.durable_next, s.base_index))
        };
        let Some((base, position, next, base_index)) = mark else {
            return Ok(());
        };
        {
            let m = self.meta.borrow();
            if m.current.active_base == Some(base)
                && m.current.durable_position >= position
                && m.current.durable_next >= next
            {
                return Ok(());
            }
        }
        self.update_meta(|m| {
            if m.active_base.is_none_or(|b| b <= base) {
                m.raft.active_base_index = base_index;
                m.active_base = Some(base);
                m.durable_position = position;
                m.durable_next = next;
            }
        })
        .await
    }

    /// The offset a read of `offset` starts from: itself, or, inside a range
    /// repair skipped (after a sealed segment's end, before the next one's
    /// base), the base of the segment after the range.
    pub(super) fn past_repaired_gap(&self, offset: u64) -> u64 {
        let st = self.state.borrow();
        match st.segments.range(..=offset).next_back() {
            Some((_, seg)) if seg.sealed && offset >= seg.next_offset => st
                .segments
                .range(offset + 1..)
                .next()
                .map_or(offset, |(&base, _)| base),
            _ => offset,
        }
    }

    /// Writes `log.meta` changed by `change`, one write at a time.
    pub(super) async fn update_meta(&self, change: impl FnOnce(&mut LogMeta)) -> io::Result<()> {
        loop {
            let generation = self.meta_idle.generation();
            if !self.meta.borrow().busy {
                break;
            }
            self.meta_idle.changed_since(generation).await;
        }
        let (file, next) = {
            let mut m = self.meta.borrow_mut();
            m.busy = true;
            let mut next = m.current.clone();
            next.seq += 1;
            change(&mut next);
            (m.file.clone(), next)
        };
        let _guard = MetaGuard(self);
        let file = meta::write(&self.storage, &self.dir, file, &next).await?;
        let mut m = self.meta.borrow_mut();
        m.file = Some(file);
        m.current = next;
        Ok(())
    }

    /// Decides what the end of the active segment's scan is (see the module
    /// header). `meta` is the log's metadata, when it has any.
    pub(super) async fn classify_tail(
        file: &S::File,
        path: &Path,
        base: u64,
        size: u64,
        scan: &Scan,
        meta: Option<&LogMeta>,
        config: &LogConfig,
    ) -> io::Result<Tail> {
        let (b, n) = (scan.end, scan.next_offset);
        let what = scan
            .stopped
            .map_or_else(|| "end of file".to_string(), |e| e.to_string());
        let damage = |reason: String| {
            Tail::Damaged(Damage {
                path: path.to_path_buf(),
                position: b,
                offset: n,
                reason,
            })
        };
        if let Some(m) = meta.filter(|m| m.active_base == Some(base))
            && (b < m.durable_position || n < m.durable_next)
        {
            return Ok(damage(format!(
                "{what}, but bytes up to {} (offsets below {}) were recorded durable",
                m.durable_position, m.durable_next
            )));
        }
        let tear = meta.map_or_else(|| tear_bytes_max(config), |m| m.tear_bytes_max);
        let evidence_from = b.checked_add(tear).filter(|&e| e < size);
        let survey = Self::survey(file, size, b, n, evidence_from, false).await?;
        if let Some(p) = survey.evidence {
            return Ok(damage(format!(
                "{what}, yet a valid batch at byte {p} follows with offsets in sequence, \
                 beyond the {tear} bytes one write round could leave torn"
            )));
        }
        if survey.data_end <= b && survey.later_next.is_none() {
            return Ok(Tail::Clean);
        }
        Ok(Tail::Torn(TailCut {
            path: path.to_path_buf(),
            position: b,
            offset: n,
            bytes: survey.data_end - b,
            later_next_offset: survey.later_next,
            reason: what,
        }))
    }

    /// Reads the segment from the bad point `b` (where offset `n` was due)
    /// on, looking for valid batches in sequence and for the end of the
    /// written data. Unless `full`, stops at the first such batch at or
    /// beyond `evidence_from`, or once the written data has ended and (with
    /// an evidence point) an all-zero chunk or an older life's batch lies
    /// beyond that point.
    async fn survey(
        file: &S::File,
        size: u64,
        b: u64,
        n: u64,
        evidence_from: Option<u64>,
        full: bool,
    ) -> io::Result<Survey> {
        let mut s = Survey::at_bad_point(b);
        let mut region_open = true;
        let mut next_candidate = b;
        let mut pos = b;
        while pos < size {
            let len = (size - pos).min(SCAN_CHUNK_BYTES as u64) as usize;
            let chunk = file.read_at(pos, len).await?;
            if chunk.is_empty() {
                break;
            }
            let chunk_end = pos + chunk.len() as u64;
            // The first batch of an older life found while the written
            // region is open, and whether one lies beyond the evidence point.
            let mut stale_at = None;
            let mut stale_beyond = false;
            let mut at = next_candidate.max(pos);
            while at + 4 <= chunk_end {
                let Some(k) = find_magic(&chunk[(at - pos) as usize..]) else {
                    break;
                };
                let p = at + k as u64;
                at = p + 1;
                let head = match chunk.get((p - pos) as usize..) {
                    Some(h) if h.len() >= BATCH_HEADER_BYTES => batch::parse_header(h),
                    _ => batch::parse_header(&file.read_at(p, BATCH_HEADER_BYTES).await?),
                };
                let Ok(h) = head else {
                    continue;
                };
                let in_sequence = h.base_offset >= n
                    && h.base_offset <= n + (p - b) / RECORD_PREFIX_BYTES as u64 + 1;
                let beyond = evidence_from.is_some_and(|e| p >= e);
                if !(in_sequence || region_open || beyond) {
                    continue;
                }
                if Self::batch_at(file, p).await?.ok() != Some(h) {
                    continue;
                }
                if in_sequence {
                    let end = p + h.batch_bytes() as u64;
                    s.later_next = Some(s.later_next.unwrap_or(0).max(h.next_offset()));
                    s.data_end = s.data_end.max(end);
                    if beyond {
                        s.evidence.get_or_insert(p);
                        if !full {
                            return Ok(s);
                        }
                    }
                    at = end;
                } else {
                    // A batch an older life left in a recycled file: the
                    // written data ended before it.
                    if region_open && stale_at.is_none() {
                        stale_at = Some(p);
                    }
                    if beyond {
                        stale_beyond = true;
                        if !full {
                            break;
                        }
                    }
                }
            }
            if region_open {
                // Nonzero bytes up to the first whole zero page (or the
                // older life's batch) are written data.
                let limit = stale_at.unwrap_or(chunk_end).min(chunk_end);
                region_open = s.extend_written(&chunk, pos, b, limit, size) && stale_at.is_none();
            }
            if !full && !region_open {
                let Some(e) = evidence_from else {
                    break;
                };
                if stale_beyond || (pos >= e && chunk.iter().all(|&x| x == 0)) {
                    break;
                }
            }
            if chunk_end >= size && at <= chunk_end {
                break;
            }
            next_candidate = next_candidate.max(at);
            // Overlap by three bytes, so that a magic across the boundary
            // is found.
            pos = if at > chunk_end {
                at
            } else {
                chunk_end.saturating_sub(3).max(pos + 1)
            };
        }
        Ok(s)
    }
}

impl<S: Storage + Clone> Log<S> {
    /// Repairs damage in the active segment of the log in `dir` (see the
    /// module header), with the log closed (the server stopped). Returns
    /// `None` when the log opens without damage. Errors of the sealed
    /// segments (corrupt, missing) are returned as they are: repair does not
    /// cut sealed segments.
    pub async fn repair(
        storage: S,
        dir: &Path,
        config: LogConfig,
    ) -> Result<Option<RepairReport>, OpenError> {
        let log = Log::open(storage.clone(), dir, config).await?;
        let Some(damage) = log.damage().cloned() else {
            return Ok(None);
        };
        let base = log
            .segments()
            .last()
            .map(|s| s.base_offset)
            .ok_or_else(|| OpenError::Config("a damaged log has no segment".into()))?;
        let meta = log.meta.borrow().current.clone();
        drop(log);
        let path = damage.path.clone();
        let file = storage
            .open(&path)
            .await
            .map_err(io_err("open segment", &path))?;
        let size = file.size().await.map_err(io_err("size segment", &path))?;
        let (b, n) = (damage.position, damage.offset);
        let survey = Self::survey(&file, size, b, n, None, true)
            .await
            .map_err(io_err("read segment", &path))?;
        let floor = repair_floor(&meta, base, n, &survey);

        // Keep the cut bytes first, durably, under a name not yet taken.
        let cut_bytes = survey.data_end.saturating_sub(b);
        let cut_file = if cut_bytes > 0 {
            Some(Self::keep_cut(&storage, dir, &path, &file, b, cut_bytes).await?)
        } else {
            None
        };

        // Then the floor (and the range skipped), before anything is cut.
        let mut meta = meta;
        let mut meta_file = None;
        record_floor(&mut meta, n, floor, dir)?;
        Self::write_meta(&storage, dir, &mut meta_file, &mut meta).await?;

        // Cut the segment at the damage.
        file.truncate(b)
            .await
            .map_err(io_err("truncate segment", &path))?;
        if floor > n {
            // Sealed as it is now; the next segment begins at the floor.
            file.fdatasync()
                .await
                .map_err(io_err("sync segment", &path))?;
            let next_index = Self::index_sealed(
                &storage,
                &file,
                &path,
                base,
                b,
                n,
                config.index_interval_bytes,
            )
            .await?;
            Self::create_empty_segment(&storage, dir, floor).await?;
            meta.raft.active_base_index = next_index;
            meta.active_base = Some(floor);
            meta.durable_position = 0;
            meta.durable_next = floor;
        } else {
            file.preallocate(config.allocation_for(b))
                .await
                .map_err(io_err("preallocate segment", &path))?;
            file.fdatasync()
                .await
                .map_err(io_err("sync segment", &path))?;
            meta.durable_position = b;
            meta.durable_next = n;
        }
        Self::write_meta(&storage, dir, &mut meta_file, &mut meta).await?;
        drop(file);

        // What was repaired must now open cleanly.
        let log = Log::open(storage, dir, config).await?;
        if let Some(left) = log.damage() {
            return Err(OpenError::Corrupt {
                path: left.path.clone(),
                position: left.position,
                reason: format!("still damaged after repair: {}", left.reason),
            });
        }
        Ok(Some(RepairReport {
            damage,
            cut_file,
            cut_bytes,
            next_offset: log.stats().next_offset,
        }))
    }
}

impl<S: Storage> Log<S> {
    /// Copies the `len` bytes cut at `b` from the segment at `path` to a
    /// new file beside it, `<segment>.cut-<b>` (with a number added if that
    /// is taken), durably; returns its path.
    async fn keep_cut(
        storage: &S,
        dir: &Path,
        path: &Path,
        file: &S::File,
        b: u64,
        len: u64,
    ) -> Result<PathBuf, OpenError> {
        let names = storage
            .list(dir)
            .await
            .map_err(io_err("list directory", dir))?;
        let stem = format!(
            "{}.cut-{b}",
            path.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("segment")
        );
        let mut name = stem.clone();
        let mut k = 1;
        while names.contains(&name) {
            k += 1;
            name = format!("{stem}.{k}");
        }
        let cut_path = dir.join(name);
        Self::copy_out(storage, file, b, len, &cut_path).await?;
        storage
            .sync_dir(dir)
            .await
            .map_err(io_err("sync directory", dir))?;
        Ok(cut_path)
    }

    /// Writes the whole index of the segment at `path`, just cut to `end`
    /// bytes holding offsets `base..next`, for it to stay sealed. Returns
    /// the Raft index after its last batch (0 when it holds none of
    /// version 2).
    async fn index_sealed(
        storage: &S,
        file: &S::File,
        path: &Path,
        base: u64,
        end: u64,
        next: u64,
        index_interval_bytes: u32,
    ) -> Result<u64, OpenError> {
        let mut idx = Vec::new();
        let mut last_indexed = 0;
        let scan = Self::scan(
            file,
            0,
            base,
            end,
            base,
            &mut idx,
            &mut last_indexed,
            index_interval_bytes,
        )
        .await
        .map_err(io_err("read segment", path))?;
        assert!(scan.stopped.is_none() && scan.next_offset == next);
        let idx_path = path.with_extension("idx");
        let idx_file = storage
            .create(&idx_path)
            .await
            .map_err(io_err("create index", &idx_path))?;
        write_index_pages(&idx_file, &idx, 0)
            .await
            .map_err(io_err("write index", &idx_path))?;
        idx_file
            .truncate(idx.len() as u64)
            .await
            .map_err(io_err("truncate index", &idx_path))?;
        idx_file
            .fdatasync()
            .await
            .map_err(io_err("sync index", &idx_path))?;
        Ok(scan.next_index.unwrap_or(0))
    }

    /// Creates the empty files of a segment beginning at `base`, durably.
    pub(super) async fn create_empty_segment(
        storage: &S,
        dir: &Path,
        base: u64,
    ) -> Result<(), OpenError> {
        let next = dir.join(format!("{base:020}.log"));
        storage
            .create(&next)
            .await
            .map_err(io_err("create segment", &next))?;
        let next_idx = dir.join(format!("{base:020}.idx"));
        storage
            .create(&next_idx)
            .await
            .map_err(io_err("create index", &next_idx))?;
        storage
            .sync_dir(dir)
            .await
            .map_err(io_err("sync directory", dir))?;
        Ok(())
    }

    /// Writes the next version of `meta` (bumping its sequence number).
    async fn write_meta(
        storage: &S,
        dir: &Path,
        file: &mut Option<Rc<S::File>>,
        meta: &mut LogMeta,
    ) -> Result<(), OpenError> {
        meta.seq += 1;
        let written = meta::write(storage, dir, file.take(), meta)
            .await
            .map_err(io_err("write metadata", &meta::meta_path(dir)))?;
        *file = Some(written);
        Ok(())
    }

    /// Copies `len` bytes of `file` from `from` into a new file at `to`,
    /// durably.
    async fn copy_out(
        storage: &S,
        file: &S::File,
        from: u64,
        len: u64,
        to: &Path,
    ) -> Result<(), OpenError> {
        let out = storage.create(to).await.map_err(io_err("create", to))?;
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(SCAN_CHUNK_BYTES as u64);
            let bytes = file
                .read_at(from + done, n as usize)
                .await
                .map_err(io_err("read", to))?;
            if (bytes.len() as u64) < n {
                return Err(OpenError::Io {
                    op: "read cut bytes for",
                    path: to.to_path_buf(),
                    source: io::Error::new(io::ErrorKind::UnexpectedEof, "segment ended early"),
                });
            }
            let mut buf = out.alloc_buf(align_up(n) as usize);
            buf.as_mut()[..bytes.len()].copy_from_slice(&bytes);
            buf.as_mut()[bytes.len()..].fill(0);
            out.write_at(buf, done).await.map_err(io_err("write", to))?;
            done += n;
        }
        out.truncate(len).await.map_err(io_err("truncate", to))?;
        out.fdatasync().await.map_err(io_err("sync", to))?;
        Ok(())
    }
}

/// The offset appends continue from after repairing damage at offset `n`
/// of the segment `base`: above every offset seen after the damage, the
/// watermark recorded durable for this segment, and any earlier floor.
fn repair_floor(meta: &LogMeta, base: u64, n: u64, survey: &Survey) -> u64 {
    let watermark = if meta.active_base == Some(base) {
        meta.durable_next
    } else {
        0
    };
    n.max(survey.later_next.unwrap_or(0))
        .max(watermark)
        .max(meta.next_floor)
}

/// Raises `meta`'s floor to `floor` and, when repair skips offsets
/// `n..floor`, records that range (up to [`REPAIR_GAPS_MAX`] of them).
fn record_floor(meta: &mut LogMeta, n: u64, floor: u64, dir: &Path) -> Result<(), OpenError> {
    meta.next_floor = meta.next_floor.max(floor);
    if floor > n && !meta.skips(n, floor) {
        meta.gaps.retain(|&(_, to)| to > meta.start_offset);
        if meta.gaps.len() >= REPAIR_GAPS_MAX {
            return Err(OpenError::Config(format!(
                "{} holds {REPAIR_GAPS_MAX} repaired ranges already; no more repairs",
                meta::meta_path(dir).display()
            )));
        }
        meta.gaps.push((n, floor));
    }
    Ok(())
}
