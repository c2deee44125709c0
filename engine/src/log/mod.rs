//! The partition log: an append-only sequence of record batches, kept in
//! segment files named by their base offset, with group commit, recovery,
//! poisoning and retention.
//!
//! ```text
//!  <dir>/00000000000000000000.log   segment: batches back to back, preallocated
//!                                   in steps ahead of them
//!  <dir>/00000000000000000000.idx   its sparse index (see `index`)
//!  <dir>/00000000000000004711.log   next segment, base offset 4711
//!  <dir>/00000000000000004711.idx
//! ```
//!
//! An append encodes its batch into the active segment's tail buffer and
//! takes its offsets at once; flush rounds of group commit write and sync
//! what accumulated, one round writing at a time. Readers see durable
//! batches (under `Always`) or all appended ones. A segment that is full is
//! sealed, and finalized once durable; retention deletes whole sealed
//! segments and keeps a few of their files for new segments to begin in.
//! Opening a log checks what is on disk and tells a torn tail, which it
//! cuts, from damage, which leaves the log read-only until repaired. The
//! first failed write or fdatasync poisons the log; a full disk met while
//! allocating, before anything is written, does not (see `append`).
//!
//! Each part lives in a module whose header gives its design and the
//! reasons for it, measured where a choice was made for speed:
//!
//! - `append`: appends, group commit (flush rounds, write-through under
//!   `Always`, write-behind under the relaxed modes) and poisoning.
//! - `read`: reading batches and records, and what readers may see.
//! - `segment`: a segment's state, rolling, finalizing, file creation and
//!   recycling of retired files.
//! - `retention`: deleting sealed segments by age, size or
//!   [`Log::delete_before`].
//! - `open`: opening a log, checking its sealed segments and scanning the
//!   active one.
//! - `raft`: the Raft read side: batches by Raft index, with their terms.
//! - `raft_cut`: cutting a Raft log's uncommitted suffix.
//! - `recovery`: a torn tail versus damage, the watermarks in `log.meta`
//!   that tell them apart, and [`Log::repair`].
//! - `damage_cut`: a replicated log's open that cuts it before damage
//!   anywhere ([`Log::find_damage`], [`Log::open_cut`]), its peers holding
//!   what was cut.
//! - [`meta`], [`batch`], [`index`]: the on-disk formats of `log.meta`, a
//!   record batch and a segment's sparse index.

mod append;
pub mod batch;
mod damage_cut;
pub mod index;
mod latency;
pub mod meta;
mod open;
mod raft;
mod raft_cut;
mod read;
mod recovery;
mod restart;
mod retention;
mod segment;

pub use damage_cut::DamageFound;
pub use latency::{CommitLatencies, LATENCY_BUCKET_BOUNDS_US, LATENCY_BUCKETS, LatencyHistogram};
pub use raft::{RaftAppendError, RaftBatch, RaftReadError};
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

use bytes::Bytes;

use crate::notify::Notify;
use crate::storage::{IO_ALIGN_BYTES, Storage};
use batch::{BATCH_BYTES_MAX, BATCH_HEADER_BYTES, BATCH_RECORDS_MAX, BatchError};
use segment::Segment;

/// Smallest segment size accepted.
pub const SEGMENT_BYTES_MIN: u64 = 64 << 10;
/// Largest segment size accepted: index positions are `u32`.
pub const SEGMENT_BYTES_MAX: u64 = (u32::MAX as u64) & !(IO_ALIGN_BYTES - 1);
/// Retired segment files a log keeps to begin new segments in (see
/// "Recycling" in the header of `log/segment.rs`). Each costs a segment's disk space beyond
/// what retention keeps.
pub const RECYCLED_SEGMENTS_MAX: usize = 2;
/// The Raft term a log of a single node writes its batches at: a cluster
/// of one is a one-voter Raft log that never holds an election.
pub const SINGLE_NODE_TERM: u64 = 1;
/// Smallest preallocation step accepted: one page. Any page multiple
/// keeps the log correct (tests use small steps so that every workload
/// extends its files); the server's setting asks for more, since a log
/// written in small rounds would extend its file every few rounds.
pub const SEGMENT_PREALLOCATE_BYTES_MIN: u64 = IO_ALIGN_BYTES;
/// Largest preallocation step accepted (a step is never more than the
/// segment, whatever this allows).
pub const SEGMENT_PREALLOCATE_BYTES_MAX: u64 = SEGMENT_BYTES_MAX;
/// Preallocation step when the owner does not say: see "Preallocation"
/// in the header of `log/segment.rs` for what it costs and saves.
pub const SEGMENT_PREALLOCATE_BYTES_DEFAULT: u64 = 4 << 20;
/// Suffix of a retired segment file kept for reuse.
const FREE_SUFFIX: &str = ".free";
/// Bytes read at a time while scanning a segment in recovery.
const SCAN_CHUNK_BYTES: usize = 1 << 20;

const _: () = assert!(SEGMENT_BYTES_MIN.is_multiple_of(IO_ALIGN_BYTES));
const _: () = assert!(SEGMENT_BYTES_MAX.is_multiple_of(IO_ALIGN_BYTES));
const _: () = assert!((IO_ALIGN_BYTES as usize).is_multiple_of(index::INDEX_ENTRY_BYTES));
const _: () = assert!(SEGMENT_PREALLOCATE_BYTES_MIN.is_multiple_of(IO_ALIGN_BYTES));
const _: () = assert!(SEGMENT_PREALLOCATE_BYTES_MAX.is_multiple_of(IO_ALIGN_BYTES));
const _: () = assert!(SEGMENT_PREALLOCATE_BYTES_MIN <= SEGMENT_PREALLOCATE_BYTES_DEFAULT);
const _: () = assert!(SEGMENT_PREALLOCATE_BYTES_DEFAULT <= SEGMENT_PREALLOCATE_BYTES_MAX);
const _: () = assert!(SEGMENT_PREALLOCATE_BYTES_DEFAULT.is_multiple_of(IO_ALIGN_BYTES));

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
    /// Size a segment is rolled at.
    pub segment_bytes: u64,
    /// The active segment's file is allocated in steps of this many bytes
    /// (at most `segment_bytes`), ahead of the data written (see
    /// "Preallocation" in the header of `log/segment.rs`).
    pub segment_preallocate_bytes: u64,
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
            segment_preallocate_bytes: SEGMENT_PREALLOCATE_BYTES_DEFAULT,
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
        if !(SEGMENT_PREALLOCATE_BYTES_MIN..=SEGMENT_PREALLOCATE_BYTES_MAX)
            .contains(&self.segment_preallocate_bytes)
            || !self
                .segment_preallocate_bytes
                .is_multiple_of(IO_ALIGN_BYTES)
        {
            return Err(format!(
                "segment_preallocate_bytes {} must be a multiple of {IO_ALIGN_BYTES} in \
                 {SEGMENT_PREALLOCATE_BYTES_MIN}..={SEGMENT_PREALLOCATE_BYTES_MAX}",
                self.segment_preallocate_bytes
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

    /// The length the active segment's file is allocated to while its data
    /// (or a write) ends at `end`: `end` rounded up to whole steps, at
    /// least one step, never past `segment_bytes` unless `end` itself is
    /// (a segment written under a larger `segment_bytes`).
    fn allocation_for(&self, end: u64) -> u64 {
        let step = self.segment_preallocate_bytes.min(self.segment_bytes);
        assert!(step > 0 && step.is_multiple_of(IO_ALIGN_BYTES));
        let stepped = end.div_ceil(step).max(1).saturating_mul(step);
        let allocation = stepped
            .min(self.segment_bytes)
            .max(crate::storage::align_up(end));
        assert!(allocation >= end && allocation.is_multiple_of(IO_ALIGN_BYTES));
        allocation
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
    /// The disk is full (ENOSPC) or the quota spent (EDQUOT): a flush round
    /// could not allocate space, wrote nothing and left what it was to
    /// write staged, without poisoning the log (see "Disk full" in the
    /// header of `log/append.rs`). Retryable: a later flush round (an
    /// append, a sync) allocates again and, once space was freed, writes
    /// and syncs what is staged. An append that got this error was
    /// staged unless `pending_bytes_max` refused it first, so it may
    /// still be written: its outcome is unknown, as after a timeout.
    DiskFull {
        /// The file the allocation was for.
        path: PathBuf,
        /// Bytes the allocation asked for.
        needed: u64,
        /// The error the file system gave.
        why: Rc<str>,
    },
    /// The operation needs another configuration (the reason says which).
    Unsupported(&'static str),
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
            AppendError::DiskFull { path, needed, why } => write!(
                f,
                "disk full: could not allocate {needed} bytes for {} ({why}); the log \
                 writes nothing until space is freed, then writes what it holds, so \
                 the append may still be written",
                path.display()
            ),
            AppendError::Unsupported(why) => write!(f, "not supported: {why}"),
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
    /// The Raft index the next batch takes (consecutive from 1, or from
    /// where the log's version-2 batches left off).
    next_index: u64,
    /// The term batches are written at: [`SINGLE_NODE_TERM`], or the last
    /// term in the log if higher.
    term: u64,
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
    /// The last flush round failed to allocate space (always an
    /// [`AppendError::DiskFull`]); cleared by the next round that gets
    /// past its allocations.
    disk_full: Option<AppendError>,
    last_sync: Instant,
    commits: CommitStats,
    latencies: CommitLatencies,
    /// Retired segment files ready for reuse (`<base>.free`).
    free: Vec<PathBuf>,
    /// Retired files being renamed into `free` right now.
    free_incoming: usize,
    /// Records below this offset are no longer wanted (see
    /// [`Log::delete_before`]).
    delete_below: u64,
    /// Retention keeps every segment holding a Raft index at or above
    /// this (see [`Log::retain_from_index`]); `None`: no such bound.
    retain_from_index: Option<u64>,
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
    /// `config.retention` until `set_retention` changes it.
    retention: Cell<Retention>,
    /// Every batch was verified since the open (`mark_verified`).
    verified: Cell<bool>,
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

impl<S: Storage> Log<S> {
    /// The directory the log lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configuration it was opened with (see [`Log::retention`]).
    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// Which segments retention deletes now.
    pub fn retention(&self) -> Retention {
        self.retention.get()
    }

    /// Changes which segments retention deletes, from the next retention
    /// pass or roll on (a stream's retention applied while it runs).
    pub fn set_retention(&self, retention: Retention) {
        self.retention.set(retention);
    }

    /// The Raft index the next batch takes (its batches carry consecutive
    /// indexes; a cluster of one writes them all at term
    /// [`SINGLE_NODE_TERM`]).
    pub fn next_index(&self) -> u64 {
        self.state.borrow().next_index
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

    /// The group commit's latency histograms since the log was opened.
    pub fn commit_latencies(&self) -> CommitLatencies {
        self.state.borrow().latencies
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

    /// The [`AppendError::DiskFull`] the last flush round ended with, while
    /// no later round got past its allocations.
    pub fn disk_full(&self) -> Option<AppendError> {
        self.state.borrow().disk_full.clone()
    }
}
