//! Opening a replicated log whose data is damaged: find the first damaged
//! batch anywhere, then cut the log before it, durably, so that the log
//! opens writable and its owner refills the cut range from its peers
//! (docs/replication.md section 10). A single-node log never opens this
//! way: it has no peer to refill from, so there damage leaves the log
//! read-only (active segment) or refuses the open (sealed segment) until
//! `hadron repair`, as `open` and `recovery` describe.
//!
//! ```text
//!  find_damage  (reads only)  every segment scanned whole, index files
//!               ignored: checksums, offsets and Raft indexes in sequence
//!               (across segments too), each sealed segment ending where
//!               the next begins; the active segment's bad point is damage
//!               as `recovery` tells it (below the watermark, or valid
//!               batches beyond one write round), a torn tail is not
//!  open_cut     1 log.meta: active_base = the damaged segment D, its
//!                 watermark at the cut (bytes and offset)
//!               2 the segments after D removed, newest first, each file
//!                 then the directory synced
//!               3 D truncated at the cut and synced
//!               4 the ordinary open: D is the active segment, scanned,
//!                 zero-filled again past the cut, its index rewritten
//! ```
//!
//! **A crash at any step** leaves a log that opens as before or as cut:
//! after 1 the files are all there, so an ordinary open finds what it found
//! before (a sealed segment's damage, or the active one's past a watermark
//! that no longer names it) and this open finds the same damage and goes
//! on; after some of 2 a prefix of whole segments remains, the last opening
//! as the active one (as after a crash just after a roll), with D's damage
//! still there; after 3 D ends at the cut, at its recorded watermark, and
//! opens clean. Each step is durable before the next begins.
//!
//! The report ([`DamageFound`]) names the first damaged batch (segment
//! file, byte, offset, the Raft index due there) and the highest Raft term
//! the log holds anywhere: `log.meta`'s hard state, every batch that
//! verifies, and those past the damage too (the rest of the damaged
//! segment is searched for batches that verify; later segments are scanned
//! from their start). Its owner must record what it needs (a replica: that
//! term) durably before it cuts, since the cut forgets what lay past it.

use std::io;
use std::path::{Path, PathBuf};

use super::batch::{self, BATCH_HEADER_BYTES};
use super::meta::{self, LogMeta};
use super::open::Scan;
use super::recovery::Tail;
use super::{Log, LogConfig, OpenError, SCAN_CHUNK_BYTES, io_err};
use crate::storage::{Storage, StorageFile, Writes};

/// The first damaged batch of a log, and what the log held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamageFound {
    /// The segment file holding it.
    pub path: PathBuf,
    /// That segment's base offset.
    pub segment_base: u64,
    /// Whether that segment is sealed (not the last one).
    pub sealed: bool,
    /// Byte position of the damaged batch: the log is cut here.
    pub position: u64,
    /// The offset due there: the log continues from it.
    pub offset: u64,
    /// The Raft index due there (from the batches before it, else the
    /// log's first index `log.meta` records, else 1).
    pub raft_index: u64,
    /// The Raft index of the damaged segment's first batch (the one due
    /// there when it holds none before the damage).
    pub segment_first_index: u64,
    /// The highest term anywhere: `log.meta`'s hard state and every batch
    /// that verifies, past the damage included.
    pub term_max: u64,
    /// What is wrong.
    pub reason: String,
}

impl std::fmt::Display for DamageFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} is damaged at byte {} (offset {}, Raft index {}): {}",
            self.path.display(),
            self.position,
            self.offset,
            self.raft_index,
            self.reason
        )
    }
}

impl<S: Storage> Log<S> {
    /// Finds the first damaged batch of the log in `dir`, reading only (see
    /// the module header). `None` when the log is whole up to its end or to
    /// a torn tail (which [`Log::open`] cuts), or when it has no segment.
    /// An interrupted restart (a snapshot's) is left to [`Log::open`].
    pub async fn find_damage(
        storage: &S,
        dir: &Path,
        config: &LogConfig,
    ) -> Result<Option<DamageFound>, OpenError> {
        config.validate().map_err(OpenError::Config)?;
        let meta_path = meta::meta_path(dir);
        let m = match storage.list(dir).await {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("list directory", dir)(e)),
            Ok(_) => meta::read(storage, dir)
                .await
                .map_err(io_err("read metadata", &meta_path))?,
        };
        if m.as_ref().is_some_and(|m| m.restarting) {
            return Ok(None);
        }
        let bases = Self::segment_bases(storage, dir).await?;
        // The Raft index due next after the segments scanned (0: none
        // known), and before any: the log's first, as recorded.
        let mut prev_next = 0;
        let recorded_start = m.as_ref().map_or(0, |m| m.raft.start_index).max(1);
        let mut term_max = m.as_ref().map_or(0, |m| m.raft.term);
        for (i, &base) in bases.iter().enumerate() {
            let next_base = bases.get(i + 1).copied();
            let path = dir.join(format!("{base:020}.log"));
            let (file, size) = Self::open_for_survey(storage, &path).await?;
            let scan = Self::scan_whole(&file, &path, base, size).await?;
            term_max = term_max.max(scan.last_term);
            let before = if prev_next > 0 {
                prev_next
            } else {
                recorded_start
            };
            let due = scan.next_index.unwrap_or(before);
            let first_index = scan.first_index.unwrap_or(before);
            let damage = |position: u64, offset: u64, reason: String| DamageFound {
                path: path.clone(),
                segment_base: base,
                sealed: next_base.is_some(),
                position,
                offset,
                raft_index: due,
                segment_first_index: first_index,
                term_max: 0,
                reason,
            };
            let found = if let Some(first) = scan.first_index
                && prev_next > 0
                && first != prev_next
            {
                Some(DamageFound {
                    raft_index: prev_next,
                    segment_first_index: prev_next,
                    ..damage(
                        0,
                        base,
                        format!("its first batch has Raft index {first} where {prev_next} was due"),
                    )
                })
            } else if let Some(next_base) = next_base {
                let ends_right = scan.next_offset == next_base
                    || m.as_ref()
                        .is_some_and(|m| m.skips(scan.next_offset, next_base));
                match scan.stopped {
                    Some(why) => Some(damage(scan.end, scan.next_offset, why.to_string())),
                    None if !ends_right => Some(damage(
                        scan.end,
                        scan.next_offset,
                        format!(
                            "ends at offset {} but the next segment starts at {next_base}",
                            scan.next_offset
                        ),
                    )),
                    None => None,
                }
            } else {
                let tail = Self::classify_tail(&file, &path, base, size, &scan, m.as_ref(), config)
                    .await
                    .map_err(io_err("read segment", &path))?;
                match tail {
                    Tail::Damaged(d) => Some(damage(d.position, d.offset, d.reason)),
                    Tail::Clean | Tail::Torn(_) => None,
                }
            };
            if let Some(mut found) = found {
                found.term_max = term_max
                    .max(Self::term_max_after(&file, &path, found.position, size).await?)
                    .max(Self::term_max_of(storage, dir, &bases[i + 1..]).await?);
                return Ok(Some(found));
            }
            if let Some(next) = scan.next_index {
                prev_next = next;
            }
        }
        Ok(None)
    }

    /// Opens the log in `dir` after cutting it before the damage `found`
    /// (from [`Log::find_damage`]), durably (see the module header). The
    /// caller has recorded whatever it must keep of what lay past it.
    pub async fn open_cut(
        storage: S,
        dir: &Path,
        config: LogConfig,
        found: &DamageFound,
    ) -> Result<Log<S>, OpenError> {
        let meta_path = meta::meta_path(dir);
        let mut m = meta::read(&storage, dir)
            .await
            .map_err(io_err("read metadata", &meta_path))?
            .unwrap_or_else(|| LogMeta {
                tear_bytes_max: super::recovery::tear_bytes_max(&config),
                ..LogMeta::default()
            });
        // 1: the damaged segment is the active one, its watermark at the cut.
        m.seq += 1;
        m.active_base = Some(found.segment_base);
        m.raft.active_base_index = found.segment_first_index;
        m.durable_position = found.position;
        m.durable_next = found.offset;
        meta::write(&storage, dir, None, &m)
            .await
            .map_err(io_err("write metadata", &meta_path))?;
        // 2: the later segments, newest first, each durably.
        let bases = Self::segment_bases(&storage, dir).await?;
        for &base in bases.iter().rev().take_while(|&&b| b > found.segment_base) {
            for ext in ["idx", "log"] {
                let path = dir.join(format!("{base:020}.{ext}"));
                match storage.remove(&path).await {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        return Err(io_err("remove segment", &path)(e));
                    }
                    _ => {}
                }
            }
            storage
                .sync_dir(dir)
                .await
                .map_err(io_err("sync directory", dir))?;
        }
        // 3: the damaged segment ends at the cut.
        let file = storage
            .open_with(&found.path, Writes::Buffered)
            .await
            .map_err(io_err("open segment", &found.path))?;
        file.truncate(found.position)
            .await
            .map_err(io_err("truncate segment", &found.path))?;
        file.fdatasync()
            .await
            .map_err(io_err("sync segment", &found.path))?;
        drop(file);
        // 4: the ordinary open.
        Self::open(storage, dir, config).await
    }

    /// The bases of the segment files in `dir`, in order.
    async fn segment_bases(storage: &S, dir: &Path) -> Result<Vec<u64>, OpenError> {
        let names = storage
            .list(dir)
            .await
            .map_err(io_err("list directory", dir))?;
        Ok(super::open::segment_bases_of(&names))
    }

    async fn open_for_survey(storage: &S, path: &Path) -> Result<(S::File, u64), OpenError> {
        let file = storage
            .open_with(path, Writes::Buffered)
            .await
            .map_err(io_err("open segment", path))?;
        let size = file.size().await.map_err(io_err("size segment", path))?;
        Ok((file, size))
    }

    /// Scans all of a segment, verifying every batch, indexing nothing.
    async fn scan_whole(
        file: &S::File,
        path: &Path,
        base: u64,
        size: u64,
    ) -> Result<Scan, OpenError> {
        let mut no_index = Vec::new();
        let mut last_indexed = 0;
        Self::scan(
            file,
            0,
            base,
            size,
            base,
            &mut no_index,
            &mut last_indexed,
            u32::MAX,
        )
        .await
        .map_err(io_err("read segment", path))
    }

    /// The highest term of the Raft batches that verify in the segments
    /// `bases` (each scanned from its start, and searched past its bad
    /// point).
    async fn term_max_of(storage: &S, dir: &Path, bases: &[u64]) -> Result<u64, OpenError> {
        let mut term = 0;
        for &base in bases {
            let path = dir.join(format!("{base:020}.log"));
            let (file, size) = Self::open_for_survey(storage, &path).await?;
            let scan = Self::scan_whole(&file, &path, base, size).await?;
            term = term
                .max(scan.last_term)
                .max(Self::term_max_after(&file, &path, scan.end, size).await?);
        }
        Ok(term)
    }

    /// The highest term of the Raft batches that verify in `file` after
    /// byte `from`, found by their magic number.
    async fn term_max_after(
        file: &S::File,
        path: &Path,
        from: u64,
        size: u64,
    ) -> Result<u64, OpenError> {
        let magic = batch::BATCH_MAGIC.to_le_bytes();
        let mut term = 0;
        let mut pos = from + 1;
        while pos + BATCH_HEADER_BYTES as u64 <= size {
            let len = (size - pos).min(SCAN_CHUNK_BYTES as u64) as usize;
            let chunk = file
                .read_at(pos, len)
                .await
                .map_err(io_err("read segment", path))?;
            let Some(i) = chunk.windows(4).position(|w| w == magic) else {
                // The magic may straddle the chunk's end.
                pos += chunk.len().saturating_sub(3).max(1) as u64;
                continue;
            };
            let at = pos + i as u64;
            let head = file
                .read_at(at, BATCH_HEADER_BYTES)
                .await
                .map_err(io_err("read segment", path))?;
            let whole = match batch::parse_header(&head) {
                Ok(h) if h.batch_bytes() as u64 <= size - at => file
                    .read_at(at, h.batch_bytes())
                    .await
                    .map_err(io_err("read segment", path))?,
                _ => {
                    pos = at + 1;
                    continue;
                }
            };
            match batch::verify(&whole) {
                Ok(h) => {
                    if h.version == batch::BATCH_VERSION {
                        term = term.max(h.term);
                    }
                    pos = at + h.batch_bytes() as u64;
                }
                Err(_) => pos = at + 1,
            }
        }
        Ok(term)
    }
}
