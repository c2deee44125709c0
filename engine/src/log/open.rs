//! Opening a log: finding its segment files, checking each sealed segment
//! and scanning the active one.
//!
//! **Recovery.** On open, sealed segments are checked (index validated, the
//! tail from the last index entry verified, exact end); the last segment is
//! scanned whole, its index rebuilt, and cut at the first short, zero,
//! CRC-failing or out-of-sequence batch (or the end of the file: the segment
//! is allocated in steps, see `segment`), then allocated again from that
//! point, zero-filled, so no stale batch can be resurrected by later
//! appends. That cut is
//! made only for a torn tail; damage (below the durable watermark in
//! `log.meta`, or followed by valid batches beyond one write round's reach)
//! leaves the log read-only until [`Log::repair`] (see `recovery`). Missing
//! segment files are found from `log.meta` (see `meta`).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::batch::{self, BATCH_HEADER_BYTES, BatchError, BatchHeader};
use super::index::{self, IndexEntry};
use super::segment::{Segment, SegmentIndex, segment_writes, write_index_pages};
use super::{
    CommitLatencies, CommitStats, Damage, FREE_SUFFIX, Log, LogConfig, OpenError,
    RECYCLED_SEGMENTS_MAX, Recovery, SCAN_CHUNK_BYTES, State, io_err, meta, recovery,
};
use crate::notify::Notify;
use crate::storage::{Storage, StorageFile, Writes, align_down};

/// What a scan of a segment found.
pub(super) struct Scan {
    /// Where the valid batches end.
    pub(super) end: u64,
    pub(super) next_offset: u64,
    pub(super) max_timestamp_ms: u64,
    /// The version of the first batch scanned, if any.
    pub(super) version: Option<u8>,
    /// The Raft index of the first and after the last version-2 batch
    /// scanned, if any.
    pub(super) first_index: Option<u64>,
    pub(super) next_index: Option<u64>,
    /// The term of the last version-2 batch scanned (0 for none).
    pub(super) last_term: u64,
    /// Why the scan stopped before the limit, if it did.
    pub(super) stopped: Option<BatchError>,
}

/// What recovery found: the active segment's tail, and damage where a
/// repair recorded a floor above the log's end and was stopped before it
/// began the segment that starts there.
fn recovery_report<S: Storage>(
    tail: recovery::Tail,
    meta_before: Option<&meta::LogMeta>,
    segments: &BTreeMap<u64, Segment<S>>,
    next_offset: u64,
) -> Recovery {
    let mut recovery = Recovery::default();
    match tail {
        recovery::Tail::Clean => {}
        recovery::Tail::Torn(cut) => recovery.cut = Some(cut),
        recovery::Tail::Damaged(damage) => recovery.damage = Some(damage),
    }
    if let Some(m) = meta_before
        && recovery.damage.is_none()
        && next_offset < m.next_floor
        && let Some(last) = segments.values().next_back()
    {
        // A repair recorded its floor and was stopped before it began
        // the segment that starts there.
        recovery.damage = Some(Damage {
            path: last.log_path.clone(),
            position: last.end,
            offset: next_offset,
            reason: format!(
                "offsets up to {} may have been given before (a repair was interrupted)",
                m.next_floor
            ),
        });
    }
    recovery
}

/// The Raft index the next batch takes: the one after the active segment's
/// last version-2 batch; for an active segment with none, the one after
/// the sealed segment before it (whose tail open scanned), or the one
/// `log.meta` recorded for the active segment's first batch (the sealed
/// segments deleted); else 1 (a new log, or one of version-1 batches only).
/// An active segment of version 2 with no batch yet is given that index as
/// its base.
fn next_raft_index<S: Storage>(
    segments: &mut BTreeMap<u64, Segment<S>>,
    meta: Option<&meta::LogMeta>,
) -> u64 {
    let before = segments
        .values()
        .rev()
        .nth(1)
        .map_or(0, |s: &Segment<S>| s.next_index);
    let Some(active) = segments.values_mut().next_back() else {
        return 1;
    };
    if active.next_index > 0 {
        return active.next_index;
    }
    let recorded = meta
        .filter(|m| m.active_base == Some(active.base))
        .map_or(0, |m| m.raft.active_base_index);
    let next = if before > 0 { before } else { recorded.max(1) };
    if active.version == batch::BATCH_VERSION {
        active.base_index = next;
    }
    next
}

impl<S: Storage> Log<S> {
    /// Opens (recovering) or creates the log in `dir`.
    pub async fn open(storage: S, dir: &Path, config: LogConfig) -> Result<Log<S>, OpenError> {
        config.validate().map_err(OpenError::Config)?;
        storage
            .create_dir_all(dir)
            .await
            .map_err(io_err("create directory", dir))?;
        let (bases, free) = Self::list_files(&storage, dir).await?;

        let meta_path = meta::meta_path(dir);
        let mut meta_before = meta::read(&storage, dir)
            .await
            .map_err(io_err("read metadata", &meta_path))?;
        // A restart after a snapshot that a crash interrupted: finish it
        // (see `restart`).
        let (bases, free) = match meta_before.as_mut().filter(|m| m.restarting) {
            Some(m) => (
                Self::finish_interrupted_restart(&storage, dir, &bases, &free, m).await?,
                Vec::new(),
            ),
            None => (bases, free),
        };
        if let Some(m) = &meta_before {
            Self::check_present(dir, &bases, m)?;
        }

        let (mut segments, tail) =
            Self::recover_segments(&storage, dir, &bases, &config, &meta_before).await?;
        let next_index = next_raft_index(&mut segments, meta_before.as_ref());
        // The term batches are written at: never below the last one in the
        // log, which a scan found (only a cluster writes a term above 1).
        let term = segments
            .values()
            .rev()
            .take(2)
            .map(|s| s.last_term)
            .chain([super::SINGLE_NODE_TERM])
            .chain(meta_before.as_ref().map(|m| m.raft.start_term))
            .max()
            .unwrap_or(super::SINGLE_NODE_TERM);
        let start_offset = bases.first().copied().unwrap_or(0);
        let next_offset = segments
            .values()
            .next_back()
            .map_or(0, |s: &Segment<S>| s.next_offset);
        let recovery = recovery_report(tail, meta_before.as_ref(), &segments, next_offset);
        let active = segments
            .values()
            .next_back()
            .filter(|s| s.file.is_some())
            .map(|s| (s.base, s.end, s.next_offset, s.base_index));
        let log = Log {
            storage,
            dir: dir.to_path_buf(),
            config,
            write_behind: Cell::new(false),
            retention: Cell::new(config.retention),
            verified: Cell::new(false),
            recovery,
            meta: RefCell::new(recovery::MetaState {
                file: None,
                current: meta_before.unwrap_or_default(),
                busy: false,
            }),
            meta_idle: Notify::default(),
            state: RefCell::new(State {
                segments,
                start_offset,
                next_offset,
                next_index,
                term,
                durable_next: next_offset,
                syncing_next: next_offset,
                pending_bytes: 0,
                flushing: false,
                poisoned: None,
                disk_full: None,
                last_sync: Instant::now(),
                commits: CommitStats::default(),
                latencies: CommitLatencies::default(),
                free,
                free_incoming: 0,
                delete_below: 0,
                retain_from_index: None,
            }),
            flushed: Notify::default(),
        };
        if log.recovery.damage.is_none() {
            // What recovery kept is durable now (it was synced): record it,
            // with the start and this life's tear bound.
            let tear = recovery::tear_bytes_max(&log.config);
            log.update_meta(|m| {
                m.start_offset = start_offset;
                m.gaps.retain(|&(_, to)| to > start_offset);
                m.tear_bytes_max = tear;
                m.raft.term = m.raft.term.max(super::SINGLE_NODE_TERM);
                if let Some((base, end, next, base_index)) = active {
                    m.raft.active_base_index = base_index;
                    m.active_base = Some(base);
                    m.durable_position = end;
                    m.durable_next = next;
                }
            })
            .await
            .map_err(io_err("write metadata", &meta_path))?;
        }
        Ok(log)
    }

    /// Lists the bases of the segment files in `dir`, in order, and the
    /// retired files kept for reuse, removing those beyond
    /// [`RECYCLED_SEGMENTS_MAX`].
    async fn list_files(storage: &S, dir: &Path) -> Result<(Vec<u64>, Vec<PathBuf>), OpenError> {
        let names = storage
            .list(dir)
            .await
            .map_err(io_err("list directory", dir))?;
        let bases = segment_bases_of(&names);
        let mut free: Vec<PathBuf> = names
            .iter()
            .filter(|n| {
                n.strip_suffix(FREE_SUFFIX).is_some_and(|stem| {
                    stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit())
                })
            })
            .map(|n| dir.join(n))
            .collect();
        free.sort_unstable();
        if free.len() > RECYCLED_SEGMENTS_MAX {
            for path in free.drain(RECYCLED_SEGMENTS_MAX..) {
                storage
                    .remove(&path)
                    .await
                    .map_err(io_err("remove recycled segment", &path))?;
            }
            storage
                .sync_dir(dir)
                .await
                .map_err(io_err("sync directory", dir))?;
        }
        Ok((bases, free))
    }

    /// Recovers every segment in `bases`: each but the last as sealed, the
    /// last as the active one, whose tail it reports. An empty log gets an
    /// active segment at offset 0.
    async fn recover_segments(
        storage: &S,
        dir: &Path,
        bases: &[u64],
        config: &LogConfig,
        meta_before: &Option<meta::LogMeta>,
    ) -> Result<(BTreeMap<u64, Segment<S>>, recovery::Tail), OpenError> {
        let mut segments = BTreeMap::new();
        let mut tail = recovery::Tail::Clean;
        for (i, &base) in bases.iter().enumerate() {
            let segment = match bases.get(i + 1) {
                Some(&next_base) => {
                    Self::recover_sealed(storage, dir, base, next_base, config, meta_before).await?
                }
                None => {
                    let (segment, found) =
                        Self::recover_active(storage, dir, base, config, meta_before).await?;
                    tail = found;
                    segment
                }
            };
            segments.insert(base, segment);
        }
        if segments.is_empty() {
            segments.insert(0, Segment::new(dir, 0));
        }
        Ok((segments, tail))
    }

    /// Checks that the segment files `log.meta` says exist are there.
    fn check_present(dir: &Path, bases: &[u64], m: &meta::LogMeta) -> Result<(), OpenError> {
        let missing = |base: u64, reason: String| OpenError::Missing {
            path: dir.join(format!("{base:020}.log")),
            reason,
        };
        match (bases.first(), bases.last(), m.active_base) {
            (None, _, Some(active)) => Err(missing(
                active,
                format!(
                    "{} records segments from offset {} to the one beginning at {active}, \
                     and no segment file is there",
                    meta::META_FILE,
                    m.start_offset
                ),
            )),
            (Some(&first), _, _) if first > m.start_offset => Err(missing(
                m.start_offset,
                format!(
                    "the log starts at offset {} ({}), but its first segment file begins at {first}",
                    m.start_offset,
                    meta::META_FILE
                ),
            )),
            (_, Some(&last), Some(active)) if last < active => Err(missing(
                active,
                format!(
                    "{} records a segment beginning at offset {active}; the last file begins at {last}",
                    meta::META_FILE
                ),
            )),
            _ => Ok(()),
        }
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "recovery's scan threads the index under construction through"
    )]
    /// Scans batches of `file` from `position` (expected to hold offset
    /// `offset`) up to `limit`, verifying each, adding index entries.
    pub(super) async fn scan(
        file: &S::File,
        mut position: u64,
        mut offset: u64,
        limit: u64,
        base: u64,
        index: &mut Vec<u8>,
        last_indexed: &mut u64,
        index_interval: u32,
    ) -> io::Result<Scan> {
        let mut seen = Scan {
            end: position,
            next_offset: offset,
            max_timestamp_ms: 0,
            version: None,
            first_index: None,
            next_index: None,
            last_term: 0,
            stopped: None,
        };
        let mut chunk = Bytes::new();
        let mut chunk_position = position;
        loop {
            seen.end = position;
            seen.next_offset = offset;
            if position >= limit {
                return Ok(seen);
            }
            let at = (position - chunk_position) as usize;
            let available = &chunk[at.min(chunk.len())..];
            let need = match batch::parse_header(available) {
                Ok(h) => h.batch_bytes(),
                Err(BatchError::Incomplete { need, .. }) => need,
                Err(_) => 0,
            };
            if need > available.len() {
                let want = SCAN_CHUNK_BYTES.max(need);
                let len = (limit - position).min(want as u64) as usize;
                let read = file.read_at(position, len).await?;
                chunk = read;
                chunk_position = position;
                if chunk.len() < need.min(len) || need as u64 > limit - position {
                    // The batch claims to run past the end of the data.
                    let have = chunk.len();
                    seen.stopped = Some(BatchError::Incomplete { need, have });
                    return Ok(seen);
                }
                continue;
            }
            let header = match batch::verify(available) {
                Ok(h) if h.base_offset != offset => {
                    seen.stopped = Some(BatchError::BadMagic(h.base_offset as u32));
                    return Ok(seen);
                }
                Ok(h) => h,
                Err(e) => {
                    seen.stopped = Some(e);
                    return Ok(seen);
                }
            };
            // Version 2 batches follow each other with consecutive Raft
            // indexes and terms that never fall; nothing of version 1
            // follows one.
            let in_sequence = match (header.version, seen.next_index) {
                (batch::BATCH_VERSION_V1, next) => next.is_none(),
                (_, Some(next)) => header.raft_index == next && header.term >= seen.last_term,
                (_, None) => true,
            };
            if !in_sequence {
                seen.stopped = Some(BatchError::OutOfSequence {
                    raft_index: header.raft_index,
                    term: header.term,
                });
                return Ok(seen);
            }
            if header.version == batch::BATCH_VERSION {
                seen.first_index.get_or_insert(header.raft_index);
                seen.next_index = Some(header.raft_index + 1);
                seen.last_term = header.term;
            }
            seen.version.get_or_insert(header.version);
            // Index entries' offsets strictly increase: a batch sharing
            // its offset with the last entry's (after control batches) is
            // not indexed; the scan from that entry reaches it.
            let relative_offset = (offset - base) as u32;
            let due = position - *last_indexed >= u64::from(index_interval)
                && index::last(index).is_none_or(|e| e.relative_offset < relative_offset);
            if position > 0 && due {
                index::push(
                    index,
                    IndexEntry {
                        relative_offset,
                        position: position as u32,
                    },
                );
                *last_indexed = position;
            }
            seen.max_timestamp_ms = seen.max_timestamp_ms.max(header.first_timestamp_ms);
            position += header.batch_bytes() as u64;
            offset = header.next_offset();
        }
    }

    /// Reads and verifies the batch at `position`.
    pub(super) async fn batch_at(
        file: &S::File,
        position: u64,
    ) -> io::Result<Result<BatchHeader, BatchError>> {
        let head = file.read_at(position, BATCH_HEADER_BYTES).await?;
        let header = match batch::parse_header(&head) {
            Ok(h) => h,
            Err(e) => return Ok(Err(e)),
        };
        let whole = file.read_at(position, header.batch_bytes()).await?;
        Ok(batch::verify(&whole))
    }

    /// Opens segment `base`'s file and reads its size.
    async fn open_segment(
        storage: &S,
        dir: &Path,
        base: u64,
        writes: Writes,
    ) -> Result<(Segment<S>, S::File, u64), OpenError> {
        let mut seg = Segment::<S>::new(dir, base);
        seg.writes = writes;
        let file = storage
            .open_with(&seg.log_path, writes)
            .await
            .map_err(io_err("open segment", &seg.log_path))?;
        let size = file
            .size()
            .await
            .map_err(io_err("size segment", &seg.log_path))?;
        Ok((seg, file, size))
    }

    async fn recover_sealed(
        storage: &S,
        dir: &Path,
        base: u64,
        next_base: u64,
        config: &LogConfig,
        meta: &Option<meta::LogMeta>,
    ) -> Result<Segment<S>, OpenError> {
        // Where the segment must end: at the next one's base, or where a
        // repair skipped from to it.
        let ends_right = |next: u64| {
            next == next_base || meta.as_ref().is_some_and(|m| m.skips(next, next_base))
        };
        // Sealed: never written again.
        let (mut seg, file, size) =
            Self::open_segment(storage, dir, base, Writes::Buffered).await?;
        let corrupt = |position: u64, reason: String| OpenError::Corrupt {
            path: seg.log_path.clone(),
            position,
            reason,
        };
        if let Some((index, scan)) =
            Self::mapped_index(storage, &seg, &file, size, &ends_right).await?
        {
            seg.index = index;
            return Ok(Self::sealed_segment(seg, file, size, scan));
        }
        // No usable index: scan the whole segment and write the index again.
        let mut rebuilt = Vec::new();
        let mut last_indexed = 0;
        let scan = Self::scan(
            &file,
            0,
            base,
            size,
            base,
            &mut rebuilt,
            &mut last_indexed,
            config.index_interval_bytes,
        )
        .await
        .map_err(io_err("read segment", &seg.log_path))?;
        if let Some(reason) = scan.stopped {
            return Err(corrupt(scan.end, reason.to_string()));
        }
        if scan.next_offset < next_base && !ends_right(scan.next_offset) {
            // Whole up to its last byte, and the next file begins later.
            return Err(OpenError::Missing {
                path: dir.join(format!("{:020}.log", scan.next_offset)),
                reason: format!(
                    "{} ends at offset {} and the next segment file begins at {next_base}",
                    seg.log_path.display(),
                    scan.next_offset
                ),
            });
        }
        if !ends_right(scan.next_offset) {
            return Err(corrupt(
                scan.end,
                format!(
                    "ends at offset {} but the next segment starts at {next_base}",
                    scan.next_offset
                ),
            ));
        }
        seg.index = Self::rewrite_index(storage, dir, &seg.idx_path, &rebuilt).await?;
        Ok(Self::sealed_segment(seg, file, size, scan))
    }

    /// The sealed segment's index file, mapped, when it can be trusted:
    /// its last valid entry points at the right batch and the batches from
    /// there end exactly at the end of the file, at an offset `ends_right`
    /// accepts. Returns the index and the scan of those last batches.
    async fn mapped_index(
        storage: &S,
        seg: &Segment<S>,
        file: &S::File,
        size: u64,
        ends_right: &impl Fn(u64) -> bool,
    ) -> Result<Option<(SegmentIndex<S::Map>, Scan)>, OpenError> {
        let interval = u32::MAX; // index entries of a sealed segment come from its file
        let map = match storage.map_readonly(&seg.idx_path).await {
            Ok(map) => map,
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err("map index", &seg.idx_path)(e)),
        };
        let Some(map) = map else {
            return Ok(None);
        };
        let valid = index::valid_prefix(&map, size) * index::INDEX_ENTRY_BYTES;
        let Some(last) = index::last(&map[..valid]) else {
            return Ok(None);
        };
        let offset = seg.base + u64::from(last.relative_offset);
        let header = Self::batch_at(file, u64::from(last.position))
            .await
            .map_err(io_err("read segment", &seg.log_path))?;
        if !header.is_ok_and(|h| h.base_offset == offset) {
            return Ok(None);
        }
        let mut no_index = Vec::new();
        let mut last_indexed = u64::from(last.position);
        let scan = Self::scan(
            file,
            u64::from(last.position),
            offset,
            size,
            seg.base,
            &mut no_index,
            &mut last_indexed,
            interval,
        )
        .await
        .map_err(io_err("read segment", &seg.log_path))?;
        if scan.stopped.is_none() && ends_right(scan.next_offset) {
            Ok(Some((SegmentIndex::Mapped { map, len: valid }, scan)))
        } else {
            Ok(None)
        }
    }

    /// Writes a sealed segment's rebuilt index file whole, syncs it and
    /// its directory, and maps it.
    async fn rewrite_index(
        storage: &S,
        dir: &Path,
        idx_path: &Path,
        rebuilt: &[u8],
    ) -> Result<SegmentIndex<S::Map>, OpenError> {
        let idx = storage
            .create(idx_path)
            .await
            .map_err(io_err("create index", idx_path))?;
        write_index_pages(&idx, rebuilt, 0)
            .await
            .map_err(io_err("write index", idx_path))?;
        idx.truncate(rebuilt.len() as u64)
            .await
            .map_err(io_err("truncate index", idx_path))?;
        idx.fdatasync()
            .await
            .map_err(io_err("sync index", idx_path))?;
        storage
            .sync_dir(dir)
            .await
            .map_err(io_err("sync directory", dir))?;
        match storage.map_readonly(idx_path).await {
            Ok(Some(map)) => Ok(SegmentIndex::Mapped {
                len: rebuilt.len(),
                map,
            }),
            Ok(None) => Ok(SegmentIndex::Empty),
            Err(e) => Err(io_err("map index", idx_path)(e)),
        }
    }

    fn sealed_segment(mut seg: Segment<S>, file: S::File, size: u64, scan: Scan) -> Segment<S> {
        seg.file = Some(Rc::new(file));
        seg.end = size;
        seg.next_offset = scan.next_offset;
        seg.next_index = scan.next_index.unwrap_or(0);
        seg.last_term = scan.last_term;
        seg.max_timestamp_ms = scan.max_timestamp_ms;
        // All of a sealed segment is read from its file.
        seg.buf_position = size;
        seg.written_end = size;
        seg.durable_end = size;
        seg.allocated = size;
        seg.durable_next = scan.next_offset;
        seg.sealed = true;
        seg.finalized = true;
        seg
    }

    pub(super) async fn recover_active(
        storage: &S,
        dir: &Path,
        base: u64,
        config: &LogConfig,
        meta: &Option<meta::LogMeta>,
    ) -> Result<(Segment<S>, recovery::Tail), OpenError> {
        let (mut seg, file, size) =
            Self::open_segment(storage, dir, base, segment_writes(config.durability)).await?;
        // Scan the whole segment and index it afresh. Its index file is not
        // trusted: the active segment's index pages are written without an
        // fdatasync, so a torn page can hold entries that still increase but
        // point between batches, and only the last one could be checked
        // cheaply. Reading one segment per log at open is the price.
        let (position, offset) = (0, base);
        let mut idx = Vec::new();
        let mut last_indexed = position;
        let scan = Self::scan(
            &file,
            position,
            offset,
            size,
            base,
            &mut idx,
            &mut last_indexed,
            config.index_interval_bytes,
        )
        .await
        .map_err(io_err("read segment", &seg.log_path))?;

        let found = Self::classify_tail(
            &file,
            &seg.log_path,
            base,
            size,
            &scan,
            meta.as_ref(),
            config,
        )
        .await
        .map_err(io_err("read segment", &seg.log_path))?;
        let end = scan.end;
        let idx_file = if matches!(found, recovery::Tail::Damaged(_)) {
            // Read-only until repaired: nothing on disk changes.
            None
        } else {
            Some(Self::cut_tail(storage, dir, &seg, &file, end, &idx, config).await?)
        };

        let buf_position = align_down(end);
        let tail = file
            .read_at(buf_position, (end - buf_position) as usize)
            .await
            .map_err(io_err("read segment", &seg.log_path))?;
        assert_eq!(tail.len() as u64, end - buf_position);
        seg.buf = BytesMut::from(&tail[..]);
        seg.buf_position = buf_position;
        seg.index_written_bytes = align_down(idx.len() as u64) as usize;
        seg.index = SegmentIndex::Memory(idx);
        seg.last_indexed_position = last_indexed;
        seg.file = Some(Rc::new(file));
        seg.allocated = idx_file
            .as_ref()
            .map_or(size, |_| config.allocation_for(end));
        seg.idx_file = idx_file;
        seg.end = end;
        seg.next_offset = scan.next_offset;
        seg.version = scan.version.unwrap_or(batch::BATCH_VERSION);
        seg.base_index = scan.first_index.unwrap_or(0);
        seg.next_index = scan.next_index.unwrap_or(0);
        seg.last_term = scan.last_term;
        seg.max_timestamp_ms = scan.max_timestamp_ms;
        seg.written_end = end;
        seg.durable_end = end;
        seg.durable_next = scan.next_offset;
        Ok((seg, found))
    }

    /// Cuts the active segment's garbage at `end` and allocates it again
    /// from there, zero-filled, so that nothing after the end can ever pass
    /// for a batch; then writes its index `idx` afresh. Returns the index
    /// file.
    async fn cut_tail(
        storage: &S,
        dir: &Path,
        seg: &Segment<S>,
        file: &S::File,
        end: u64,
        idx: &[u8],
        config: &LogConfig,
    ) -> Result<Rc<S::File>, OpenError> {
        let cut = io_err("truncate segment", &seg.log_path);
        file.truncate(end).await.map_err(cut)?;
        file.preallocate(config.allocation_for(end))
            .await
            .map_err(io_err("preallocate segment", &seg.log_path))?;
        file.fdatasync()
            .await
            .map_err(io_err("sync segment", &seg.log_path))?;
        let idx_file = storage
            .create(&seg.idx_path)
            .await
            .map_err(io_err("create index", &seg.idx_path))?;
        write_index_pages(&idx_file, idx, 0)
            .await
            .map_err(io_err("write index", &seg.idx_path))?;
        idx_file
            .fdatasync()
            .await
            .map_err(io_err("sync index", &seg.idx_path))?;
        storage
            .sync_dir(dir)
            .await
            .map_err(io_err("sync directory", dir))?;
        Ok(Rc::new(idx_file))
    }
}

/// The bases of the segment files among `names` (`<20 digits>.log`), in
/// order.
pub(super) fn segment_bases_of(names: &[String]) -> Vec<u64> {
    let mut bases: Vec<u64> = names
        .iter()
        .filter_map(|n| n.strip_suffix(".log"))
        .filter(|stem| stem.len() == 20)
        .filter_map(|stem| stem.parse().ok())
        .collect();
    bases.sort_unstable();
    bases
}
