//! The partition log: an append-only sequence of record batches, kept in
//! segment files named by their base offset, with group commit, recovery,
//! poisoning and retention.
//!
//! ```text
//!  <dir>/00000000000000000000.log   segment: batches back to back, preallocated
//!  <dir>/00000000000000000000.idx   its sparse index (see `index`)
//!  <dir>/00000000000000004711.log   next segment, base offset 4711
//!  <dir>/00000000000000004711.idx
//! ```
//!
//! **Recovery.** On open, sealed segments are checked (index validated, the
//! tail from the last index entry verified, exact end); the last segment is
//! scanned whole, its index rebuilt, and cut at the first short, zero,
//! CRC-failing or out-of-sequence batch, then zero-filled again past that
//! point so no stale batch can be resurrected by later appends. That cut is
//! made only for a torn tail; damage (below the durable watermark in
//! `log.meta`, or followed by valid batches beyond one write round's reach)
//! leaves the log read-only until [`Log::repair`] (see `recovery`). Missing
//! segment files are found from `log.meta` (see `meta`).
//!

mod append;
pub mod batch;
pub mod index;
pub mod meta;
mod read;
mod recovery;
mod retention;
mod segment;

pub use recovery::{Damage, Recovery, RepairReport, TailCut};

#[cfg(test)]
mod tests;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::notify::Notify;
use crate::storage::{IO_ALIGN_BYTES, Storage, StorageFile, Writes, align_down, align_up};
use batch::{BATCH_BYTES_MAX, BATCH_HEADER_BYTES, BATCH_RECORDS_MAX, BatchError, BatchHeader};
use index::IndexEntry;
use segment::{Segment, SegmentIndex, segment_writes, write_index_pages};

/// Smallest segment size accepted.
pub const SEGMENT_BYTES_MIN: u64 = 64 << 10;
/// Largest segment size accepted: index positions are `u32`.
pub const SEGMENT_BYTES_MAX: u64 = (u32::MAX as u64) & !(IO_ALIGN_BYTES - 1);
/// Retired segment files a log keeps to begin new segments in (see
/// "Recycling" in the header of `log/segment.rs`). Each costs a segment's disk space beyond
/// what retention keeps.
pub const RECYCLED_SEGMENTS_MAX: usize = 2;
/// Suffix of a retired segment file kept for reuse.
const FREE_SUFFIX: &str = ".free";
/// Bytes read at a time while scanning a segment in recovery.
const SCAN_CHUNK_BYTES: usize = 1 << 20;

const _: () = assert!(SEGMENT_BYTES_MIN.is_multiple_of(IO_ALIGN_BYTES));
const _: () = assert!(SEGMENT_BYTES_MAX.is_multiple_of(IO_ALIGN_BYTES));
const _: () = assert!((IO_ALIGN_BYTES as usize).is_multiple_of(index::INDEX_ENTRY_BYTES));

/// When an append counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Once durable (the default): its segment file is write-through
    /// (`O_DSYNC`), and the append resolves after the write that holds it
    /// returned. Nothing acknowledged is lost in a crash.
    Always,
    /// At once; a flush with fdatasync runs when a caller of
    /// [`Log::sync`] or [`Log::flush_if_due`] asks, at most this often.
    /// Data is written as under `Never`. A crash loses up to the interval's
    /// worth of acknowledged appends.
    Interval(Duration),
    /// At once; data is written once `write_bytes_max` bytes wait (by the
    /// append that finds them waiting and no write running, or, after
    /// [`Log::set_write_behind`], by the owner's [`Log::write_pending`]),
    /// when `pending_bytes_max` bytes wait (the appender then waits for the
    /// write), or on [`Log::sync`]; it is fdatasynced only when a segment is
    /// sealed or on `sync`. A crash may lose any acknowledged append not
    /// yet synced.
    Never,
}

/// Which sealed segments to delete.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Delete a sealed segment once its newest batch is older than this.
    pub max_age_ms: Option<u64>,
    /// Delete the oldest sealed segments while the log is larger than this.
    pub max_bytes: Option<u64>,
}

/// How a log is laid out and written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogConfig {
    /// Size a segment is preallocated to and rolled at.
    pub segment_bytes: u64,
    /// An index entry is added every this many bytes of batches.
    pub index_interval_bytes: u32,
    /// When appends are acknowledged.
    pub durability: Durability,
    /// Which segments [`Log::apply_retention`] deletes.
    pub retention: Retention,
    /// Largest single write submitted to storage.
    pub write_bytes_max: usize,
    /// Appended but unwritten bytes above which appenders wait for a flush.
    pub pending_bytes_max: usize,
    /// Largest batch accepted, header included.
    pub batch_bytes_max: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 128 << 20,
            index_interval_bytes: 4096,
            durability: Durability::Always,
            retention: Retention::default(),
            write_bytes_max: 1 << 20,
            pending_bytes_max: 16 << 20,
            batch_bytes_max: 4 << 20,
        }
    }
}

impl LogConfig {
    /// Checks the relationships between the settings.
    pub fn validate(&self) -> Result<(), String> {
        if self.segment_bytes < SEGMENT_BYTES_MIN
            || self.segment_bytes > SEGMENT_BYTES_MAX
            || !self.segment_bytes.is_multiple_of(IO_ALIGN_BYTES)
        {
            return Err(format!(
                "segment_bytes {} must be a multiple of {IO_ALIGN_BYTES} in {SEGMENT_BYTES_MIN}..={SEGMENT_BYTES_MAX}",
                self.segment_bytes
            ));
        }
        if self.index_interval_bytes == 0 {
            return Err("index_interval_bytes must be positive".into());
        }
        if self.write_bytes_max == 0
            || !(self.write_bytes_max as u64).is_multiple_of(IO_ALIGN_BYTES)
        {
            return Err(format!(
                "write_bytes_max {} must be a positive multiple of {IO_ALIGN_BYTES}",
                self.write_bytes_max
            ));
        }
        if self.batch_bytes_max <= BATCH_HEADER_BYTES
            || self.batch_bytes_max > BATCH_BYTES_MAX
            || self.batch_bytes_max as u64 > self.segment_bytes
        {
            return Err(format!(
                "batch_bytes_max {} must be above {BATCH_HEADER_BYTES} and at most {BATCH_BYTES_MAX} and segment_bytes",
                self.batch_bytes_max
            ));
        }
        if self.pending_bytes_max < self.batch_bytes_max {
            return Err(format!(
                "pending_bytes_max {} must be at least batch_bytes_max {}",
                self.pending_bytes_max, self.batch_bytes_max
            ));
        }
        Ok(())
    }
}

/// The offsets an append was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Offset of the first record.
    pub base_offset: u64,
    /// Offset of the last record.
    pub last_offset: u64,
}

/// Why a log could not be opened.
#[derive(Debug)]
#[non_exhaustive]
pub enum OpenError {
    /// The configuration is inconsistent.
    Config(String),
    /// A storage operation failed.
    Io {
        /// What was being done.
        op: &'static str,
        /// On which file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A sealed segment does not hold what it must. The data is left as it is
    /// for an operator to inspect; Hadron never truncates a sealed segment.
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte position of the problem.
        position: u64,
        /// What is wrong.
        reason: String,
    },
    /// A segment file the log needs is not there (see [`meta`]): the log
    /// would otherwise begin later, end earlier or skip offsets silently.
    Missing {
        /// The file that is missing.
        path: PathBuf,
        /// Which offsets it held and how that is known.
        reason: String,
    },
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Config(msg) => write!(f, "invalid log configuration: {msg}"),
            OpenError::Io { op, path, source } => {
                write!(f, "could not {op} {}: {source}", path.display())
            }
            OpenError::Corrupt {
                path,
                position,
                reason,
            } => write!(
                f,
                "sealed segment {} is corrupt at byte {position}: {reason}; \
                 restore it from a replica or backup, or move it and every later segment aside",
                path.display()
            ),
            OpenError::Missing { path, reason } => write!(
                f,
                "segment {} is missing: {reason}; restore it from a backup",
                path.display()
            ),
        }
    }
}

impl std::error::Error for OpenError {}

/// Why an append failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AppendError {
    /// No records.
    Empty,
    /// More records than [`BATCH_RECORDS_MAX`].
    TooManyRecords {
        /// Records given.
        count: usize,
    },
    /// The batch would exceed `batch_bytes_max`.
    TooLarge {
        /// Encoded size of the batch.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// A write or fdatasync failed earlier; the log refuses writes until it is
    /// opened again. The append may or may not be durable.
    Poisoned(Rc<str>),
    /// Recovery found damage in the active segment (see [`Damage`]): the log
    /// serves reads up to it and refuses writes until it is repaired.
    Damaged(Rc<str>),
}

impl fmt::Display for AppendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppendError::Empty => write!(f, "a batch needs at least one record"),
            AppendError::TooManyRecords { count } => {
                write!(
                    f,
                    "{count} records in one batch; at most {BATCH_RECORDS_MAX}"
                )
            }
            AppendError::TooLarge { bytes, max } => {
                write!(f, "batch of {bytes} bytes exceeds batch_bytes_max {max}")
            }
            AppendError::Poisoned(why) => write!(
                f,
                "log refuses writes: {why}; restart to recover what is durable"
            ),
            AppendError::Damaged(why) => write!(f, "log is read-only: {why}"),
        }
    }
}

impl std::error::Error for AppendError {}

/// Why a read failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ReadError {
    /// The offset was deleted by retention (or never existed): start at
    /// `start` instead.
    BeforeStart {
        /// The offset asked for.
        offset: u64,
        /// The first offset the log holds.
        start: u64,
    },
    /// The offset is beyond the next offset to be written.
    BeyondEnd {
        /// The offset asked for.
        offset: u64,
        /// The next offset the log will give.
        next: u64,
    },
    /// Reading the segment failed.
    Io(io::Error),
    /// The segment does not hold a valid batch where its index says one is.
    Corrupt {
        /// The segment's base offset.
        segment: u64,
        /// Byte position of the problem.
        position: u64,
        /// What is wrong.
        reason: BatchError,
    },
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::BeforeStart { offset, start } => {
                write!(f, "offset {offset} is before the log's start {start}")
            }
            ReadError::BeyondEnd { offset, next } => {
                write!(
                    f,
                    "offset {offset} is beyond the log's end (next offset {next})"
                )
            }
            ReadError::Io(e) => write!(f, "read failed: {e}"),
            ReadError::Corrupt {
                segment,
                position,
                reason,
            } => write!(f, "segment {segment} corrupt at byte {position}: {reason}"),
        }
    }
}

impl std::error::Error for ReadError {}

/// Whole batches read from a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadBatches {
    /// Whole batches back to back; iterate them with [`batch::Batches`]. The
    /// first holds the offset asked for (and may begin before it). Empty when
    /// there is nothing new.
    pub bytes: Bytes,
    /// The offset to read next.
    pub next_offset: u64,
}

/// Records read from a log by [`Log::read_records`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRecords {
    /// `(offset, record)` in offset order from the offset asked for; each
    /// record is a slice of the bytes read (no copy). Empty when there is
    /// nothing new.
    pub records: Vec<(u64, Bytes)>,
    /// The offset to read next.
    pub next_offset: u64,
}

/// What retention deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Segments deleted.
    pub segments: usize,
    /// Bytes of batches deleted.
    pub bytes: u64,
    /// How many of the deleted segments' files were kept for reuse.
    pub recycled: usize,
}

/// One segment, as [`Log::segments`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Offset of its first record.
    pub base_offset: u64,
    /// The offset after its last record.
    pub next_offset: u64,
    /// Bytes of batches in it.
    pub bytes: u64,
    /// The largest batch timestamp in it (of the batches appended since the
    /// log was opened, or found scanning its tail in recovery).
    pub max_timestamp_ms: u64,
}

/// A summary of the log's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogStats {
    /// First offset held.
    pub start_offset: u64,
    /// Next offset to be given.
    pub next_offset: u64,
    /// Offsets below this are durable.
    pub durable_offset: u64,
    /// Segments, the active one included.
    pub segments: usize,
    /// Bytes of batches held.
    pub bytes: u64,
    /// What the group commit has done since the log was opened.
    pub commits: CommitStats,
}

/// Group-commit counters since the log was opened: how much each flush
/// carried and where its time went (wall-clock time awaiting the writes
/// and the fdatasync, which on a shared core includes waiting to be run).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CommitStats {
    /// Flush rounds that wrote data.
    pub writes: u64,
    /// Data bytes those rounds wrote (whole pages, a rewritten tail page
    /// counted again).
    pub written_bytes: u64,
    /// fdatasync calls.
    pub syncs: u64,
    /// Microseconds awaiting writes.
    pub write_us: u64,
    /// Microseconds awaiting fdatasync.
    pub sync_us: u64,
    /// Segments begun in a recycled file rather than a new one.
    pub segments_recycled: u64,
    /// Appends that waited to be durable (`always`), and the microseconds
    /// they waited in all: queueing behind the round under way, and their
    /// own round's write-through write.
    pub durable_waits: u64,
    pub durable_wait_us: u64,
}

struct State<S: Storage> {
    segments: BTreeMap<u64, Segment<S>>,
    start_offset: u64,
    next_offset: u64,
    /// Offsets below this are durable.
    durable_next: u64,
    /// Offsets below this are covered by an fdatasync that has been issued
    /// (durable once it returns); at least `durable_next`.
    syncing_next: u64,
    /// Bytes appended but not yet written.
    pending_bytes: usize,
    /// Whether a flush is running.
    flushing: bool,
    poisoned: Option<Rc<str>>,
    last_sync: Instant,
    commits: CommitStats,
    /// Retired segment files ready for reuse (`<base>.free`).
    free: Vec<PathBuf>,
    /// Retired files being renamed into `free` right now.
    free_incoming: usize,
    /// Records below this offset are no longer wanted (see
    /// [`Log::delete_before`]).
    delete_below: u64,
}

/// A partition log. Hold it in an `Rc` and call it from any task of its core.
pub struct Log<S: Storage> {
    storage: S,
    dir: PathBuf,
    config: LogConfig,
    state: RefCell<State<S>>,
    /// Signalled whenever a flush ends.
    flushed: Notify,
    /// The owner runs the writes of relaxed appends (`set_write_behind`).
    write_behind: Cell<bool>,
    /// What recovery found at open; with damage, the log is read-only.
    recovery: Recovery,
    /// `log.meta`, and whether a write of it is under way.
    meta: RefCell<recovery::MetaState<S::File>>,
    /// Signalled when a write of `log.meta` ends.
    meta_idle: Notify,
}

impl<S: Storage> fmt::Debug for Log<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Log")
            .field("dir", &self.dir)
            .field("stats", &self.stats())
            .finish()
    }
}

fn elapsed_us(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX)
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> OpenError + 'a {
    move |source| OpenError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// What a scan of a segment found.
struct Scan {
    /// Where the valid batches end.
    end: u64,
    next_offset: u64,
    max_timestamp_ms: u64,
    /// Why the scan stopped before the limit, if it did.
    stopped: Option<BatchError>,
}

impl<S: Storage> Log<S> {
    /// Opens (recovering) or creates the log in `dir`.
    pub async fn open(storage: S, dir: &Path, config: LogConfig) -> Result<Log<S>, OpenError> {
        config.validate().map_err(OpenError::Config)?;
        storage
            .create_dir_all(dir)
            .await
            .map_err(io_err("create directory", dir))?;
        let names = storage
            .list(dir)
            .await
            .map_err(io_err("list directory", dir))?;
        let mut bases: Vec<u64> = names
            .iter()
            .filter_map(|n| n.strip_suffix(".log"))
            .filter(|stem| stem.len() == 20)
            .filter_map(|stem| stem.parse().ok())
            .collect();
        bases.sort_unstable();
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

        let meta_path = meta::meta_path(dir);
        let meta_before = meta::read(&storage, dir)
            .await
            .map_err(io_err("read metadata", &meta_path))?;
        if let Some(m) = &meta_before {
            Self::check_present(dir, &bases, m)?;
        }

        let mut segments = BTreeMap::new();
        let mut tail = recovery::Tail::Clean;
        for (i, &base) in bases.iter().enumerate() {
            let segment = match bases.get(i + 1) {
                Some(&next_base) => {
                    Self::recover_sealed(&storage, dir, base, next_base, &config, &meta_before)
                        .await?
                }
                None => {
                    let (segment, found) =
                        Self::recover_active(&storage, dir, base, &config, &meta_before).await?;
                    tail = found;
                    segment
                }
            };
            segments.insert(base, segment);
        }
        if segments.is_empty() {
            segments.insert(0, Segment::new(dir, 0));
        }
        let start_offset = bases.first().copied().unwrap_or(0);
        let next_offset = segments
            .values()
            .next_back()
            .map_or(0, |s: &Segment<S>| s.next_offset);
        let mut recovery = Recovery::default();
        match tail {
            recovery::Tail::Clean => {}
            recovery::Tail::Torn(cut) => recovery.cut = Some(cut),
            recovery::Tail::Damaged(damage) => recovery.damage = Some(damage),
        }
        if let Some(m) = &meta_before
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
        let active = segments
            .values()
            .next_back()
            .filter(|s| s.file.is_some())
            .map(|s| (s.base, s.end, s.next_offset));
        let log = Log {
            storage,
            dir: dir.to_path_buf(),
            config,
            write_behind: Cell::new(false),
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
                durable_next: next_offset,
                syncing_next: next_offset,
                pending_bytes: 0,
                flushing: false,
                poisoned: None,
                last_sync: Instant::now(),
                commits: CommitStats::default(),
                free,
                free_incoming: 0,
                delete_below: 0,
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
                if let Some((base, end, next)) = active {
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
    async fn scan(
        file: &S::File,
        mut position: u64,
        mut offset: u64,
        limit: u64,
        base: u64,
        index: &mut Vec<u8>,
        last_indexed: &mut u64,
        index_interval: u32,
    ) -> io::Result<Scan> {
        let mut max_timestamp_ms = 0;
        let mut chunk = Bytes::new();
        let mut chunk_position = position;
        loop {
            if position >= limit {
                return Ok(Scan {
                    end: position,
                    next_offset: offset,
                    max_timestamp_ms,
                    stopped: None,
                });
            }
            let at = (position - chunk_position) as usize;
            let available = &chunk[at.min(chunk.len())..];
            let need = match batch::parse_header(available) {
                Ok(h) => h.batch_bytes(),
                Err(BatchError::Incomplete { .. }) => BATCH_HEADER_BYTES,
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
                    return Ok(Scan {
                        end: position,
                        next_offset: offset,
                        max_timestamp_ms,
                        stopped: Some(BatchError::Incomplete { need, have }),
                    });
                }
                continue;
            }
            let header = match batch::verify(available) {
                Ok(h) if h.base_offset == offset => h,
                Ok(h) => {
                    return Ok(Scan {
                        end: position,
                        next_offset: offset,
                        max_timestamp_ms,
                        stopped: Some(BatchError::BadMagic(h.base_offset as u32)),
                    });
                }
                Err(e) => {
                    return Ok(Scan {
                        end: position,
                        next_offset: offset,
                        max_timestamp_ms,
                        stopped: Some(e),
                    });
                }
            };
            if position > 0 && position - *last_indexed >= u64::from(index_interval) {
                index::push(
                    index,
                    IndexEntry {
                        relative_offset: (offset - base) as u32,
                        position: position as u32,
                    },
                );
                *last_indexed = position;
            }
            max_timestamp_ms = max_timestamp_ms.max(header.first_timestamp_ms);
            position += header.batch_bytes() as u64;
            offset = header.next_offset();
        }
    }

    /// Reads and verifies the batch at `position`.
    async fn batch_at(
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
        let interval = u32::MAX; // index entries of a sealed segment come from its file
        // Trust the mapped index when its last entry points at the right batch
        // and the batches from there end exactly at the end of the file.
        let map = match storage.map_readonly(&seg.idx_path).await {
            Ok(map) => map,
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err("map index", &seg.idx_path)(e)),
        };
        if let Some(map) = map {
            let valid = index::valid_prefix(&map, size) * index::INDEX_ENTRY_BYTES;
            if let Some(last) = index::last(&map[..valid]) {
                let offset = base + u64::from(last.relative_offset);
                let header = Self::batch_at(&file, u64::from(last.position))
                    .await
                    .map_err(io_err("read segment", &seg.log_path))?;
                if header.is_ok_and(|h| h.base_offset == offset) {
                    let mut no_index = Vec::new();
                    let mut last_indexed = u64::from(last.position);
                    let scan = Self::scan(
                        &file,
                        u64::from(last.position),
                        offset,
                        size,
                        base,
                        &mut no_index,
                        &mut last_indexed,
                        interval,
                    )
                    .await
                    .map_err(io_err("read segment", &seg.log_path))?;
                    if scan.stopped.is_none() && ends_right(scan.next_offset) {
                        seg.index = SegmentIndex::Mapped { map, len: valid };
                        return Ok(Self::sealed_segment(seg, file, size, scan));
                    }
                }
            }
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
        let idx = storage
            .create(&seg.idx_path)
            .await
            .map_err(io_err("create index", &seg.idx_path))?;
        write_index_pages(&idx, &rebuilt, 0)
            .await
            .map_err(io_err("write index", &seg.idx_path))?;
        idx.truncate(rebuilt.len() as u64)
            .await
            .map_err(io_err("truncate index", &seg.idx_path))?;
        idx.fdatasync()
            .await
            .map_err(io_err("sync index", &seg.idx_path))?;
        storage
            .sync_dir(dir)
            .await
            .map_err(io_err("sync directory", dir))?;
        seg.index = match storage.map_readonly(&seg.idx_path).await {
            Ok(Some(map)) => SegmentIndex::Mapped {
                len: rebuilt.len(),
                map,
            },
            Ok(None) => SegmentIndex::Empty,
            Err(e) => return Err(io_err("map index", &seg.idx_path)(e)),
        };
        Ok(Self::sealed_segment(seg, file, size, scan))
    }

    fn sealed_segment(mut seg: Segment<S>, file: S::File, size: u64, scan: Scan) -> Segment<S> {
        seg.file = Some(Rc::new(file));
        seg.end = size;
        seg.next_offset = scan.next_offset;
        seg.max_timestamp_ms = scan.max_timestamp_ms;
        // All of a sealed segment is read from its file.
        seg.buf_position = size;
        seg.written_end = size;
        seg.durable_end = size;
        seg.durable_next = scan.next_offset;
        seg.sealed = true;
        seg.finalized = true;
        seg
    }

    async fn recover_active(
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
            // Cut the garbage and zero-fill again, so that nothing after the
            // end can ever pass for a batch; then rewrite the index to match.
            let cut = io_err("truncate segment", &seg.log_path);
            file.truncate(end).await.map_err(cut)?;
            file.preallocate(config.segment_bytes.max(align_up(end)))
                .await
                .map_err(io_err("preallocate segment", &seg.log_path))?;
            file.fdatasync()
                .await
                .map_err(io_err("sync segment", &seg.log_path))?;
            let idx_file = storage
                .create(&seg.idx_path)
                .await
                .map_err(io_err("create index", &seg.idx_path))?;
            write_index_pages(&idx_file, &idx, 0)
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
            Some(Rc::new(idx_file))
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
        seg.idx_file = idx_file;
        seg.end = end;
        seg.next_offset = scan.next_offset;
        seg.max_timestamp_ms = scan.max_timestamp_ms;
        seg.written_end = end;
        seg.durable_end = end;
        seg.durable_next = scan.next_offset;
        Ok((seg, found))
    }

    /// The directory the log lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// A summary of its state.
    pub fn stats(&self) -> LogStats {
        let st = self.state.borrow();
        LogStats {
            start_offset: st.start_offset,
            next_offset: st.next_offset,
            durable_offset: st.durable_next,
            segments: st.segments.len(),
            bytes: st.segments.values().map(|s| s.end).sum(),
            commits: st.commits,
        }
    }

    /// Its segments, oldest first.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        self.state
            .borrow()
            .segments
            .values()
            .map(|s| SegmentInfo {
                base_offset: s.base,
                next_offset: s.next_offset,
                bytes: s.end,
                max_timestamp_ms: s.max_timestamp_ms,
            })
            .collect()
    }

    /// The next offset readers can see: the durable end under
    /// [`Durability::Always`], the appended end otherwise.
    pub fn visible_offset(&self) -> u64 {
        let st = self.state.borrow();
        self.visible_next(&st)
    }

    fn visible_next(&self, st: &State<S>) -> u64 {
        match self.config.durability {
            Durability::Always => st.durable_next,
            _ => st.next_offset,
        }
    }

    /// Why the log refuses writes, if it does.
    pub fn poisoned(&self) -> Option<Rc<str>> {
        self.state.borrow().poisoned.clone()
    }
}
