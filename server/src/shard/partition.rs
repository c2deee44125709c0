//! One stream partition on the shard that owns it: its log, the
//! idempotent-publish index, its consumer groups, and the log that keeps
//! durable groups' committed offsets.
//!
//! Layout under the data dir:
//!
//! ```text
//! streams/<stream>/<partition>/log/      the event log (engine segments)
//! streams/<stream>/<partition>/groups/   snapshots of durable group offsets
//! ```
//!
//! **Idempotent publish.** Every event carries `(source, id)`. For the
//! stream's dedup window the partition remembers which offset each key got;
//! an event whose key is already there is not appended again and its result
//! names the original offset. The key is a 64-bit hash, so a match is
//! confirmed against the stored event's `(source, id)` before the event is
//! called a duplicate (at 500,000 publishes a second and a 2-minute window,
//! 60 million keys, an unconfirmed match would drop a distinct event about
//! once a week); an event whose key merely collides is appended, untracked
//! by the window. A key is marked pending before its append is awaited, so
//! two concurrent publishes of the same event cannot both append it. On
//! open, the window is rebuilt by scanning the segments whose newest batch
//! is inside it.
//!
//! **Group offsets.** Durable groups' committed offsets are written as one
//! snapshot record of all of them, alone in one batch, to a small log of
//! its own, at most every commit interval (when an offset moved), with
//! `always` durability:
//!
//! ```text
//! +-----------+------------------------------------------------+
//! | count u32 | count x ( name_len u16 | name | offset u64 )   |
//! +-----------+------------------------------------------------+
//! ```
//!
//! (little-endian; names are 1 to `GROUP_NAME_BYTES_MAX` bytes of UTF-8).
//! A snapshot is one batch, so the batch's CRC makes it all or nothing: a
//! crash while one is written leaves a torn tail that recovery cuts, and
//! the previous snapshot is the last one again; a committed offset never
//! goes back. The log's `batch_bytes_max` and segment size are sized from
//! `groupsMax` ([`offsets_batch_bytes_max`]), and a partition admits no
//! group past `groupsMax` ([`Partition::admit_group`]), so the largest
//! snapshot (every group, every name at its longest) always fits. (A fixed
//! 32 KiB batch limit made every commit of a partition fail from about 300
//! long-named groups on, and a restart redelivered what had been acked.)
//! Load reads the newest segment whole, which holds the last batch whatever
//! its size. Only the last snapshot matters, so retention keeps two
//! segments' worth besides the active one (never deleted).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use hadron_engine::log::batch::{
    BATCH_BYTES_MAX, BATCH_HEADER_BYTES, BATCH_RECORDS_MAX, Batches, RECORD_PREFIX_BYTES,
};
use hadron_engine::log::{SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN};
use hadron_engine::notify::Notify;
use hadron_engine::storage::IO_ALIGN_BYTES;
use hadron_engine::storage::dma::DmaStorage;
use hadron_engine::{AppendError, Durability, Log, LogConfig, ReadError, Retention};
use hadron_wire::{ErrorCode, Limits};

use super::group::GroupPartition;

/// Largest group name stored in a snapshot.
pub const GROUP_NAME_BYTES_MAX: usize = 255;
/// Bytes of one group in a snapshot at the most: name length, name, offset.
const SNAPSHOT_ENTRY_BYTES_MAX: usize = 2 + GROUP_NAME_BYTES_MAX + 8;

/// The largest offsets-snapshot batch of a partition that holds at most
/// `groups_max` groups: header, record prefix, count, and every entry at
/// its longest.
pub const fn offsets_batch_bytes_max(groups_max: u32) -> usize {
    BATCH_HEADER_BYTES + RECORD_PREFIX_BYTES + 4 + groups_max as usize * SNAPSHOT_ENTRY_BYTES_MAX
}

/// Segment size of the group-offset log: the largest snapshot fits one.
const fn offsets_segment_bytes(groups_max: u32) -> u64 {
    let batch = offsets_batch_bytes_max(groups_max) as u64;
    let aligned = batch.div_ceil(IO_ALIGN_BYTES) * IO_ALIGN_BYTES;
    if aligned < SEGMENT_BYTES_MIN {
        SEGMENT_BYTES_MIN
    } else {
        aligned
    }
}

const _: () =
    assert!(offsets_batch_bytes_max(crate::config::server::GROUPS_MAX_MAX) <= BATCH_BYTES_MAX);
const _: () =
    assert!(offsets_segment_bytes(crate::config::server::GROUPS_MAX_MAX) <= SEGMENT_BYTES_MAX);

/// An error to send back: a wire code and a message that says what is wrong.
pub type Failure = (ErrorCode, String);

/// What a publish did, per event and overall.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// First newly appended offset (meaningless when all were duplicates).
    pub first_offset: u64,
    /// Last newly appended offset.
    pub last_offset: u64,
    /// Per event: its offset, and whether it was a duplicate.
    pub results: Vec<(u64, bool)>,
}

/// Hashes a key that is already a hash (`dedup_key`'s output), so hashing
/// it again would only cost time.
#[derive(Debug, Default)]
struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type KeyMap<V> = HashMap<u64, V, std::hash::BuildHasherDefault<KeyHasher>>;

/// Maps a key table is split into (a power of two).
const KEY_PARTS: usize = 256;

/// The window's key map, split `KEY_PARTS` ways by eight middle bits of the
/// key. hashbrown takes a bucket from a key's low bits and a tag from its
/// top seven, so within each part both still spread.
///
/// Why split: a map that outgrows its table moves every entry to a new one
/// at once, and the shard does nothing else meanwhile. One map per
/// partition stalled the shard 37 ms when it grew past 917,504 keys and
/// 70 ms past 1,835,008 (hashbrown, measured in a standalone program), and
/// it grows on its way to `dedupKeysMax`: at a fixed 120,000 events/s the
/// publish p99 was 9 to 40 ms with the window on and 6 ms with it off.
/// Split, each growth moves about 1/256 of the keys, and the parts reach
/// their limits at different times.
#[derive(Debug)]
struct KeyTable {
    parts: Box<[KeyMap<u64>]>,
}

impl KeyTable {
    fn new() -> KeyTable {
        KeyTable {
            parts: (0..KEY_PARTS).map(|_| KeyMap::default()).collect(),
        }
    }

    fn part(key: u64) -> usize {
        (key >> 32) as usize & (KEY_PARTS - 1)
    }

    fn entry(&mut self, key: u64) -> std::collections::hash_map::Entry<'_, u64, u64> {
        self.parts[Self::part(key)].entry(key)
    }

    fn get(&self, key: u64) -> Option<u64> {
        self.parts[Self::part(key)].get(&key).copied()
    }

    fn insert(&mut self, key: u64, value: u64) {
        self.parts[Self::part(key)].insert(key, value);
    }

    fn remove(&mut self, key: u64) {
        self.parts[Self::part(key)].remove(&key);
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.parts.iter().all(HashMap::is_empty)
    }

    #[cfg(test)]
    fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.parts
            .iter()
            .flat_map(|m| m.iter().map(|(&k, &v)| (k, v)))
    }
}

/// Slots a `Ring` chunk holds (32 KiB of keys).
const RING_CHUNK: usize = 4096;

/// The window's ring of keys by offset, in fixed chunks. A `VecDeque` that
/// outgrows its buffer copies it whole: 5 to 7 ms at 0.5 to 2 million keys
/// (measured in a standalone program). Chunks are added and dropped one at
/// a time, so nothing is copied.
#[derive(Debug, Default)]
struct Ring {
    chunks: VecDeque<Box<[u64]>>,
    /// Index of the front slot in the first chunk.
    head: usize,
    len: usize,
}

impl Ring {
    fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Grows to `len` slots, the new ones zero; never shrinks.
    fn grow_to(&mut self, len: usize) {
        if len <= self.len {
            return;
        }
        while self.head + len > self.chunks.len() * RING_CHUNK {
            self.chunks
                .push_back(vec![0u64; RING_CHUNK].into_boxed_slice());
        }
        self.len = len;
    }

    fn get(&self, at: usize) -> Option<u64> {
        if at >= self.len {
            return None;
        }
        let i = self.head + at;
        self.chunks.get(i / RING_CHUNK).map(|c| c[i % RING_CHUNK])
    }

    /// Sets slot `at`, which must be below `len()`.
    fn set(&mut self, at: usize, key: u64) {
        assert!(at < self.len, "ring slot {at} of {}", self.len);
        let i = self.head + at;
        if let Some(chunk) = self.chunks.get_mut(i / RING_CHUNK) {
            chunk[i % RING_CHUNK] = key;
        }
    }

    fn pop_front(&mut self) -> Option<u64> {
        let key = self.get(0)?;
        self.len -= 1;
        self.head += 1;
        if self.head == RING_CHUNK || self.len == 0 {
            // Past the first chunk, or empty: drop what lies before the
            // head (an empty ring keeps no chunk).
            let drop_chunks = if self.len == 0 { self.chunks.len() } else { 1 };
            self.chunks.drain(..drop_chunks);
            self.head = 0;
        }
        Some(key)
    }
}

/// The idempotent-publish window of one partition, compact: about 27 bytes
/// per event in the window (a map entry of key and offset, and the key again
/// in a ring indexed by offset), plus 16 bytes per appended batch.
///
/// One map holds both stored keys (key -> offset) and keys claimed by a
/// publish whose append is under way (key -> `PENDING`), so that a publish
/// costs one map operation per event to claim and one to record.
///
/// Offsets in a partition are dense, so the ring holds the key of every
/// offset from `ring_base` on; expiry walks the ring from the front, batch
/// by batch, removing each key whose map entry still points at that offset
/// (a later event with the same key keeps its own entry).
///
/// Appends may complete out of order: a gap between recorded batches is an
/// append still under way (its ring slots wait, zeroed). Expiry never
/// passes such a gap, so those keys are recorded when it completes, even
/// when the batches around it are due to leave.
#[derive(Debug)]
struct Dedup {
    /// key -> offset, or `PENDING`.
    keys: KeyTable,
    /// Key of each offset from `ring_base` on (0 where unknown: an event
    /// not tracked, or an append still under way).
    ring: Ring,
    /// The first offset in the window: every offset below it has expired.
    ring_base: u64,
    /// (first offset, events, time) of each batch appended since
    /// `ring_base`, sorted by offset.
    batches: VecDeque<(u64, u64, u64)>,
}

/// The map value of a claimed key (no offset reaches it).
const PENDING: u64 = u64::MAX;

/// What `Dedup::claim_all` found for one event of a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    /// Fresh: claimed for this publish, to append.
    Fresh,
    /// Already stored at this offset.
    Stored(u64),
    /// The same key as event `j` of this publish.
    SameAs(usize),
}

impl Dedup {
    /// An empty window whose next batch starts at `offset`.
    fn starting_at(offset: u64) -> Dedup {
        Dedup {
            keys: KeyTable::new(),
            ring: Ring::default(),
            ring_base: offset,
            batches: VecDeque::new(),
        }
    }

    /// The stored offset of `key`, if it is in the window.
    #[cfg(test)]
    fn stored(&self, key: u64) -> Option<u64> {
        self.keys.get(key).filter(|&o| o != PENDING)
    }

    #[cfg(test)]
    fn is_pending(&self, key: u64) -> bool {
        self.keys.get(key) == Some(PENDING)
    }

    /// Claims every key of a publish not already stored, in one pass. When a
    /// key is pending for another publish, takes back this call's claims
    /// and returns `false` (wait for that append, then try again).
    fn claim_all(&mut self, keys: &[u64], out: &mut Vec<Claim>) -> bool {
        use std::collections::hash_map::Entry;
        out.clear();
        for (i, &key) in keys.iter().enumerate() {
            let claim = match self.keys.entry(key) {
                Entry::Vacant(v) => {
                    v.insert(PENDING);
                    Claim::Fresh
                }
                Entry::Occupied(o) if *o.get() != PENDING => Claim::Stored(*o.get()),
                // Pending: claimed earlier in this publish, or by another.
                Entry::Occupied(_) => {
                    match (0..i).find(|&j| keys[j] == key && out[j] == Claim::Fresh) {
                        Some(j) => Claim::SameAs(j),
                        None => {
                            for (j, c) in out.iter().enumerate() {
                                if *c == Claim::Fresh {
                                    self.unclaim(keys[j]);
                                }
                            }
                            out.clear();
                            return false;
                        }
                    }
                }
            };
            out.push(claim);
        }
        true
    }

    #[cfg(test)]
    fn claim(&mut self, key: u64) {
        self.keys.entry(key).or_insert(PENDING);
    }

    /// Takes back a claim (the append failed).
    fn unclaim(&mut self, key: u64) {
        if self.keys.get(key) == Some(PENDING) {
            self.keys.remove(key);
        }
    }

    /// Forgets the batches appended before `before_ms`, and then the
    /// oldest ones while the window spans more than `keys_max` offsets,
    /// stopping at an append still under way.
    fn expire(&mut self, before_ms: u64, keys_max: u64) {
        use std::collections::hash_map::Entry;
        while let Some(&(first, count, at)) = self.batches.front() {
            if at >= before_ms && self.len() <= keys_max {
                break;
            }
            if first > self.ring_base {
                break;
            }
            self.batches.pop_front();
            while self.ring_base < first + count {
                let key = self.ring.pop_front().unwrap_or(0);
                if let Entry::Occupied(e) = self.keys.entry(key)
                    && *e.get() == self.ring_base
                {
                    e.remove();
                }
                self.ring_base += 1;
            }
        }
    }

    /// Keys in the window (offsets it spans, claims not counted).
    fn len(&self) -> u64 {
        self.ring.len() as u64
    }

    /// When the oldest batch still in the window was appended.
    fn oldest_ms(&self) -> Option<u64> {
        self.batches.front().map(|&(_, _, at)| at)
    }

    /// Records that `key` is stored at `offset`, replacing its claim. The
    /// batch it is in is recorded after its events, by `insert_batch`.
    fn insert_done(&mut self, key: u64, offset: u64) {
        if offset < self.ring_base {
            // Already out of the window (cannot happen while expiry stops
            // at appends under way; kept so the map never holds a key the
            // ring does not).
            self.unclaim(key);
            return;
        }
        let at = (offset - self.ring_base) as usize;
        self.ring.grow_to(at + 1);
        self.ring.set(at, key);
        self.keys.insert(key, offset);
    }

    /// Records a batch of `count` events from `first`, appended at `at_ms`
    /// (once its events are in, tracked or not).
    fn insert_batch(&mut self, first: u64, count: u64, at_ms: u64) {
        // The part below the window's start, if any, has expired.
        let skip = self.ring_base.saturating_sub(first);
        let (first, count) = (first + skip, count.saturating_sub(skip));
        if count == 0 {
            return;
        }
        self.ring.grow_to((first + count - self.ring_base) as usize);
        // The batch is nearly always the newest; otherwise find its place
        // in the list (sorted by offset) by bisection. A scan here cost
        // every new batch a walk over all the batches in the window.
        if self.batches.back().is_none_or(|&(o, _, _)| o < first) {
            self.batches.push_back((first, count, at_ms));
        } else if let Err(i) = self.batches.binary_search_by_key(&first, |&(o, _, _)| o) {
            self.batches.insert(i, (first, count, at_ms));
        }
    }
}

/// How much a partition's dedup window remembers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupLimits {
    /// How long a key stays in the window; 0 turns deduplication off.
    pub window_ms: u64,
    /// The most keys the window holds; past it, the oldest batches leave
    /// first, however recent.
    pub keys_max: u64,
}

/// The dedup key of an event: a 64-bit hash of its source and id.
///
/// The key is also the window map's hash (see `KeyHasher`), so every output
/// bit must depend on every input byte. The hash is built from folded
/// multiplies (the 128-bit product of two words, its halves xored), the
/// construction wyhash popularised: 16 input bytes cost one multiply, where
/// SipHash-1-3 spent about 3% of a shard's time on 100-byte publishes.
/// Both lengths go into the last step, so `("ab", "c")` and `("a", "bc")`
/// differ, and so do strings that differ only by trailing NULs.
///
/// It is not keyed: a publisher could craft colliding ids, as it could
/// with the fixed-key SipHash before. A collision costs a confirming read
/// (see the module header), never a lost event. Keys live only in memory
/// and are recomputed from the log on open, so the function may change
/// between versions.
fn dedup_key(source: &str, id: &str) -> u64 {
    let h = absorb(KEY_SEED, source.as_bytes());
    let h = absorb(h, id.as_bytes());
    let lengths = ((source.len() as u64) << 32) ^ id.len() as u64;
    let h = fold(h ^ KEY_MIX[2], lengths ^ KEY_MIX[3]);
    fold(h ^ KEY_MIX[0], KEY_MIX[1])
}

/// Odd constants with about half their bits set, for `dedup_key`.
const KEY_SEED: u64 = 0x243f_6a88_85a3_08d3;
const KEY_MIX: [u64; 4] = [
    0x9e37_79b9_7f4a_7c15,
    0xc2b2_ae3d_27d4_eb4f,
    0x1656_67b1_9e37_79f9,
    0xd6e8_feb8_6659_fd93,
];

/// The 128-bit product of `a` and `b`, its halves xored.
fn fold(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    (product as u64) ^ ((product >> 64) as u64)
}

/// Mixes `bytes` into `h`, 16 at a time. The last, short block is read
/// as wyhash reads one, with fixed-size loads that may overlap: given its
/// length (which the caller mixes in) every byte is read at least once.
fn absorb(mut h: u64, bytes: &[u8]) -> u64 {
    let mut blocks = bytes.chunks_exact(16);
    for block in &mut blocks {
        let (a, b) = block.split_at(8);
        h = fold(le64(a) ^ KEY_MIX[0], le64(b) ^ h);
    }
    let rest = blocks.remainder();
    let n = rest.len();
    let (a, b) = match n {
        0 => return h,
        8.. => (le64(&rest[..8]), le64(&rest[n - 8..])),
        4.. => (le32(&rest[..4]), le32(&rest[n - 4..])),
        _ => (
            u64::from(rest[0]) << 16 | u64::from(rest[n / 2]) << 8 | u64::from(rest[n - 1]),
            0,
        ),
    };
    fold(a ^ KEY_MIX[1], b ^ h ^ KEY_MIX[2])
}

/// The first 8 bytes of `b` (which has at least 8), little-endian.
fn le64(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[..8]);
    u64::from_le_bytes(w)
}

/// The first 4 bytes of `b` (which has at least 4), little-endian.
fn le32(b: &[u8]) -> u64 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[..4]);
    u64::from(u32::from_le_bytes(w))
}

/// A partition owned by this shard.
pub struct Partition {
    /// Stream name.
    pub stream: String,
    /// Partition index.
    pub partition: u32,
    /// The event log.
    pub log: Log<DmaStorage>,
    /// Signalled after every append completes.
    pub appended: Notify,
    /// Consumer groups reading this partition.
    pub groups: RefCell<BTreeMap<String, Rc<GroupPartition>>>,
    dedup: RefCell<Dedup>,
    /// Changed by an apply (`set_dedup_limits`).
    dedup_limits: Cell<DedupLimits>,
    /// The dedup key function: `dedup_key`, or a weak one in tests that
    /// need collisions.
    key_of: fn(&str, &str) -> u64,
    limits: Limits,
    offsets: Log<DmaStorage>,
    /// Committed offsets of durable groups found on open, for groups that
    /// have not re-attached yet.
    pub stored_offsets: RefCell<HashMap<String, u64>>,
    /// The offsets of the last snapshot written (or loaded).
    last_snapshot: RefCell<BTreeMap<String, u64>>,
    /// The largest snapshot the offsets log takes.
    offsets_batch_bytes_max: usize,
    committing: Cell<bool>,
    /// Signalled when a commit ends.
    committed: Notify,
}

impl std::fmt::Debug for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partition")
            .field("stream", &self.stream)
            .field("partition", &self.partition)
            .finish()
    }
}

/// Where a partition lives under the data dir.
pub fn partition_dir(data_dir: &Path, stream: &str, partition: u32) -> PathBuf {
    data_dir
        .join("streams")
        .join(stream)
        .join(format!("{partition:05}"))
}

/// Logs what recovery found when `log` (named `what`) was opened: a torn
/// tail it cut (a warning), or damage that keeps it read-only (an error).
pub fn report_recovery(what: &str, log: &Log<DmaStorage>) {
    let recovery = log.recovery();
    if let Some(cut) = &recovery.cut {
        tracing::warn!("{what}: {cut}");
    }
    if let Some(damage) = &recovery.damage {
        tracing::error!("{what}: {damage}");
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn read_failure(e: ReadError) -> Failure {
    match e {
        ReadError::BeforeStart { .. } | ReadError::BeyondEnd { .. } => {
            (ErrorCode::OffsetOutOfRange, e.to_string())
        }
        _ => (ErrorCode::StorageError, e.to_string()),
    }
}

impl Partition {
    /// Opens (recovering) the partition's logs and rebuilds its dedup
    /// window; its offsets log takes snapshots of up to `groups_max` groups.
    #[expect(clippy::too_many_arguments, reason = "each is a separate setting")]
    pub async fn open(
        storage: &DmaStorage,
        data_dir: &Path,
        stream: &str,
        partition: u32,
        log_config: LogConfig,
        dedup_limits: DedupLimits,
        limits: Limits,
        groups_max: u32,
    ) -> Result<Partition, String> {
        let dir = partition_dir(data_dir, stream, partition);
        let log = Log::open(storage.clone(), &dir.join("log"), log_config)
            .await
            .map_err(|e| format!("stream {stream} partition {partition}: {e}"))?;
        report_recovery(&format!("stream {stream} partition {partition}"), &log);
        // Under `fsync: never` or an interval, a publish is acknowledged
        // without waiting for any write: the shard starts each write in a
        // task of its own when one is due (see `Shard::handle`).
        log.set_write_behind(true);
        let offsets_batch_bytes_max = offsets_batch_bytes_max(groups_max);
        let offsets_segment_bytes = offsets_segment_bytes(groups_max);
        let offsets_config = LogConfig {
            segment_bytes: offsets_segment_bytes,
            durability: Durability::Always,
            retention: Retention {
                max_age_ms: None,
                max_bytes: Some(2 * offsets_segment_bytes),
            },
            batch_bytes_max: offsets_batch_bytes_max,
            pending_bytes_max: offsets_batch_bytes_max.max(64 << 10),
            write_bytes_max: 64 << 10,
            index_interval_bytes: 4096,
        };
        let offsets = Log::open(storage.clone(), &dir.join("groups"), offsets_config)
            .await
            .map_err(|e| format!("stream {stream} partition {partition} group offsets: {e}"))?;
        report_recovery(
            &format!("stream {stream} partition {partition} group offsets"),
            &offsets,
        );
        let p = Partition {
            stream: stream.to_string(),
            partition,
            log,
            appended: Notify::default(),
            groups: RefCell::new(BTreeMap::new()),
            dedup: RefCell::new(Dedup::starting_at(0)),
            dedup_limits: Cell::new(dedup_limits),
            key_of: dedup_key,
            limits,
            offsets,
            stored_offsets: RefCell::new(HashMap::new()),
            last_snapshot: RefCell::new(BTreeMap::new()),
            offsets_batch_bytes_max,
            committing: Cell::new(false),
            committed: Notify::default(),
        };
        p.load_offsets().await?;
        p.rebuild_dedup().await?;
        Ok(p)
    }

    /// Adopts an applied stream's dedup limits at once, unless they turn
    /// deduplication on or off (`dedupWindowMs` from or to 0): that needs
    /// the window rebuilt from the log, which happens at the next start.
    /// Returns whether the limits were adopted.
    pub fn set_dedup_limits(&self, limits: DedupLimits) -> bool {
        let old = self.dedup_limits.get();
        if (old.window_ms == 0) != (limits.window_ms == 0) {
            return false;
        }
        self.dedup_limits.set(limits);
        true
    }

    async fn rebuild_dedup(&self) -> Result<(), String> {
        if self.dedup_limits.get().window_ms == 0 {
            return Ok(());
        }
        let since = now_ms().saturating_sub(self.dedup_limits.get().window_ms);
        let end = self.log.visible_offset();
        let Some(first) = self
            .log
            .segments()
            .iter()
            .find(|s| s.max_timestamp_ms >= since)
            .map(|s| s.base_offset)
        else {
            *self.dedup.borrow_mut() = Dedup::starting_at(end);
            return Ok(());
        };
        let mut offset = first.max(self.log.stats().start_offset);
        let mut dedup = Dedup::starting_at(offset);
        while offset < end {
            let read = self
                .log
                .read(offset, 1 << 20)
                .await
                .map_err(|e| format!("rebuilding dedup window: {e}"))?;
            for batch in Batches::new(&read.bytes) {
                let batch = batch.map_err(|e| format!("rebuilding dedup window: {e}"))?;
                let at = batch.header.first_timestamp_ms;
                for (o, record) in batch.records() {
                    if o < offset || at < since {
                        continue;
                    }
                    if let Ok(event) = hadron_wire::decode_event(record, &self.limits) {
                        dedup.insert_done((self.key_of)(event.source, event.id), o);
                    }
                }
                // Every batch, old ones too, so that expiry walks them in
                // order (the old ones leave at once).
                dedup.insert_batch(
                    batch.header.base_offset,
                    u64::from(batch.header.record_count),
                    at,
                );
            }
            offset = read.next_offset;
            // Hold the cap while rebuilding, not only once done.
            dedup.expire(since, self.dedup_limits.get().keys_max);
        }
        *self.dedup.borrow_mut() = dedup;
        Ok(())
    }

    /// Appends the events not already present, each verified first; nothing
    /// is written when any event is invalid.
    pub async fn publish<E: AsRef<[u8]>>(&self, events: &[E]) -> Result<Published, Failure> {
        if events.is_empty() {
            return Err((ErrorCode::InvalidRequest, "publish with no events".into()));
        }
        let mut keys = Vec::with_capacity(events.len());
        for (i, bytes) in events.iter().enumerate() {
            // Verifies the whole event; only the key's fields are read.
            let event = hadron_wire::verify_event(bytes.as_ref(), &self.limits).map_err(|e| {
                (
                    ErrorCode::InvalidEvent,
                    format!("event {i} of the publish is invalid: {e}"),
                )
            })?;
            keys.push((self.key_of)(event.source(), event.id()));
        }
        let now = now_ms();
        // Claim the keys, waiting out concurrent publishes of the same ones.
        let (mut fresh, mut earlier) = loop {
            let generation = self.appended.generation();
            if let Some(claimed) = self.claim(&keys, now) {
                break claimed;
            }
            self.appended.changed_since(generation).await;
        };
        // A key is a 64-bit hash: confirm every match against the (source,
        // id) it stands for before calling an event a duplicate. An event
        // whose key merely collides is appended, untracked by the window
        // (its key stands for the other event). Only a hit reads (source,
        // id) again, from the events verified above.
        let names = |i: usize| {
            hadron_wire::verify_event(events[i].as_ref(), &self.limits)
                .map(|e| (e.source(), e.id()))
                .unwrap_or_default()
        };
        let mut untracked = Vec::new();
        for (i, claim) in earlier.iter_mut().enumerate() {
            let same = match *claim {
                None => continue,
                Some(Err(j)) => names(j) == names(i),
                Some(Ok(offset)) => match self.names_at(offset).await {
                    Ok(stored) => (stored.0.as_str(), stored.1.as_str()) == names(i),
                    // Gone to retention, or unreadable: trust the key, as
                    // the window did before it could confirm.
                    Err((_, why)) => {
                        tracing::warn!(stream = %self.stream, partition = self.partition, offset, "cannot confirm a duplicate: {why}");
                        true
                    }
                },
            };
            if !same {
                // The same event twice in this publish, both colliding, is
                // still stored once.
                *claim = match untracked.iter().find(|&&j| names(j) == names(i)) {
                    Some(&j) => Some(Err(j)),
                    None => {
                        untracked.push(i);
                        None
                    }
                };
            }
        }
        if !untracked.is_empty() {
            fresh.extend(&untracked);
            fresh.sort_unstable();
        }
        // One batch per chunk that fits the log's batch limits; the chunks
        // are enqueued back to back and share the group commit.
        let batch_max = self.log.config().batch_bytes_max;
        let mut chunks: Vec<Vec<usize>> = Vec::new();
        let mut bytes = BATCH_HEADER_BYTES;
        for &i in &fresh {
            let len = RECORD_PREFIX_BYTES + events[i].as_ref().len();
            let full = chunks
                .last()
                .is_none_or(|c| bytes + len > batch_max || c.len() >= BATCH_RECORDS_MAX as usize);
            if full {
                chunks.push(Vec::new());
                bytes = BATCH_HEADER_BYTES;
            }
            bytes += len;
            if let Some(c) = chunks.last_mut() {
                c.push(i);
            }
        }
        let appends = chunks.iter().map(|chunk| {
            let records: Vec<&[u8]> = chunk.iter().map(|&i| events[i].as_ref()).collect();
            async move { self.log.append(&records, now).await }
        });
        let outcomes = futures::future::join_all(appends).await;
        let mut offsets = vec![0u64; events.len()];
        let mut first_last: Option<(u64, u64)> = None;
        let mut failure = None;
        {
            let mut dedup = self.dedup.borrow_mut();
            for (chunk, outcome) in chunks.iter().zip(outcomes) {
                match outcome {
                    Ok(a) => {
                        let tracking = self.dedup_limits.get().window_ms > 0;
                        for (n, &i) in chunk.iter().enumerate() {
                            let offset = a.base_offset + n as u64;
                            offsets[i] = offset;
                            if tracking && !untracked.contains(&i) {
                                dedup.insert_done(keys[i], offset);
                            }
                        }
                        if tracking {
                            dedup.insert_batch(a.base_offset, chunk.len() as u64, now);
                        }
                        let (lo, hi) = first_last.unwrap_or((a.base_offset, a.last_offset));
                        first_last = Some((lo.min(a.base_offset), hi.max(a.last_offset)));
                    }
                    Err(e) => {
                        for &i in chunk {
                            if !untracked.contains(&i) {
                                dedup.unclaim(keys[i]);
                            }
                        }
                        failure.get_or_insert(e);
                    }
                }
            }
            if self.dedup_limits.get().window_ms > 0 {
                // Back within the cap now that this publish's keys are in
                // (the claim made no room ahead, so that a retry of the
                // oldest keys was still recognised).
                dedup.expire(
                    now.saturating_sub(self.dedup_limits.get().window_ms),
                    self.dedup_limits.get().keys_max,
                );
            }
        }
        self.appended.notify_all();
        if let Some(e) = failure {
            let code = match e {
                AppendError::Poisoned(_) => ErrorCode::ReadOnly,
                AppendError::Damaged(_) => ErrorCode::Damaged,
                AppendError::TooLarge { .. }
                | AppendError::TooManyRecords { .. }
                | AppendError::Empty => ErrorCode::InvalidRequest,
                _ => ErrorCode::StorageError,
            };
            return Err((code, format!("{}/{}: {e}", self.stream, self.partition)));
        }
        let mut results = Vec::with_capacity(events.len());
        for (i, e) in earlier.iter().enumerate() {
            results.push(match e {
                None => (offsets[i], false),
                Some(Ok(o)) => (*o, true),
                Some(Err(j)) => (offsets[*j], true),
            });
        }
        let (first_offset, last_offset) = first_last.unwrap_or((0, 0));
        Ok(Published {
            first_offset,
            last_offset,
            results,
        })
    }

    /// Events from `offset` on, about `max_bytes` of them (at least one when
    /// there is one, whatever its size), and the offset to read next.
    pub async fn fetch(
        &self,
        offset: u64,
        max_bytes: u32,
    ) -> Result<(u64, Vec<(u64, Vec<u8>)>), Failure> {
        let read = self
            .log
            .read_records(offset, max_bytes as usize)
            .await
            .map_err(read_failure)?;
        let records = read
            .records
            .into_iter()
            .map(|(o, record)| (o, record.to_vec()))
            .collect();
        Ok((read.next_offset, records))
    }

    /// Marks the keys of a publish as pending, unless one of them is pending
    /// for another publish (then `None`: wait and retry). Returns the events
    /// to append and, per event, `None` to append it, `Some(Ok(offset))` for
    /// a duplicate of a stored event, `Some(Err(j))` for a duplicate of event
    /// `j` of the same publish.
    #[expect(clippy::type_complexity, reason = "a private two-part answer")]
    fn claim(
        &self,
        keys: &[u64],
        now: u64,
    ) -> Option<(Vec<usize>, Vec<Option<Result<u64, usize>>>)> {
        if self.dedup_limits.get().window_ms == 0 {
            return Some(((0..keys.len()).collect(), vec![None; keys.len()]));
        }
        let mut dedup = self.dedup.borrow_mut();
        dedup.expire(
            now.saturating_sub(self.dedup_limits.get().window_ms),
            self.dedup_limits.get().keys_max,
        );
        let mut claims = Vec::with_capacity(keys.len());
        if !dedup.claim_all(keys, &mut claims) {
            return None;
        }
        let mut fresh = Vec::with_capacity(keys.len());
        let earlier = claims
            .iter()
            .enumerate()
            .map(|(i, c)| match *c {
                Claim::Fresh => {
                    fresh.push(i);
                    None
                }
                Claim::Stored(o) => Some(Ok(o)),
                Claim::SameAs(j) => Some(Err(j)),
            })
            .collect();
        Some((fresh, earlier))
    }

    /// The (source, id) of the event at `offset`.
    async fn names_at(&self, offset: u64) -> Result<(String, String), Failure> {
        let bytes = self.event_at(offset).await?;
        let event = hadron_wire::verify_event(&bytes, &self.limits).map_err(|e| {
            (
                ErrorCode::StorageError,
                format!(
                    "{}/{}: the stored event at offset {offset} does not verify: {e}",
                    self.stream, self.partition
                ),
            )
        })?;
        Ok((event.source().to_owned(), event.id().to_owned()))
    }

    /// The keys in the dedup window, and how long ago its oldest batch was
    /// appended (`None` when empty).
    pub fn dedup_window(&self, now_ms: u64) -> (u64, Option<u64>) {
        let dedup = self.dedup.borrow();
        (
            dedup.len(),
            dedup.oldest_ms().map(|at| now_ms.saturating_sub(at)),
        )
    }

    /// The event at `offset`.
    pub async fn event_at(&self, offset: u64) -> Result<Vec<u8>, Failure> {
        let (_, records) = self.fetch(offset, 1).await?;
        match records.into_iter().next() {
            Some((o, bytes)) if o == offset => Ok(bytes),
            _ => Err((
                ErrorCode::OffsetOutOfRange,
                format!("no event at offset {offset}"),
            )),
        }
    }

    /// Loads the last offsets snapshot: the last batch of the offsets log,
    /// read with the newest segment's size as the window so that the whole
    /// batch comes back whatever its size.
    async fn load_offsets(&self) -> Result<(), String> {
        let next = self.offsets.visible_offset();
        if next == 0 {
            return Ok(());
        }
        let window = self
            .offsets
            .segments()
            .iter()
            .rev()
            .find(|s| s.base_offset < next)
            .map_or(0, |s| s.bytes);
        let window = usize::try_from(window)
            .map_err(|_| format!("group offsets segment of {window} bytes"))?;
        let read = self
            .offsets
            .read(next - 1, window)
            .await
            .map_err(|e| format!("reading group offsets: {e}"))?;
        let mut last = None;
        for batch in Batches::new(&read.bytes) {
            let batch = batch.map_err(|e| format!("reading group offsets: {e}"))?;
            for (o, record) in batch.records() {
                if o == next - 1 {
                    last = Some(record.to_vec());
                }
            }
        }
        let Some(record) = last else {
            return Err(format!(
                "reading group offsets: the snapshot at offset {} was not read back",
                next - 1
            ));
        };
        let map = decode_snapshot(&record).ok_or_else(|| {
            format!(
                "group offsets snapshot at offset {} is malformed ({} bytes)",
                next - 1,
                record.len()
            )
        })?;
        let batch_bytes = BATCH_HEADER_BYTES + RECORD_PREFIX_BYTES + record.len();
        if batch_bytes > self.offsets_batch_bytes_max {
            // Written under a larger `groupsMax`: the next commit would be
            // refused, and every offset after it lost.
            return Err(format!(
                "the group offsets snapshot holds {} groups ({batch_bytes} bytes), more than groupsMax allows ({} bytes); raise groupsMax to at least {}",
                map.len(),
                self.offsets_batch_bytes_max,
                map.len()
            ));
        }
        *self.last_snapshot.borrow_mut() = map.iter().map(|(k, v)| (k.clone(), *v)).collect();
        *self.stored_offsets.borrow_mut() = map;
        Ok(())
    }

    /// Groups this partition counts against `groupsMax`: those attached and
    /// the durable ones known from disk that have not re-attached.
    pub fn groups_count(&self) -> usize {
        let live = self.groups.borrow();
        let stored = self.stored_offsets.borrow();
        live.len() + stored.keys().filter(|k| !live.contains_key(*k)).count()
    }

    /// Whether a group named `name` that is not attached here may be
    /// created: a durable group known from disk always may (it is counted
    /// already); another only while fewer than `groups_max` are counted.
    pub fn admit_group(&self, name: &str, groups_max: u32) -> Result<(), Failure> {
        if self.stored_offsets.borrow().contains_key(name) {
            return Ok(());
        }
        let count = self.groups_count();
        if count >= groups_max as usize {
            return Err((
                ErrorCode::LimitExceeded,
                format!(
                    "partition {} of stream {:?} holds {count} consumer groups, the most groupsMax ({groups_max}) allows; group {name:?} was not created",
                    self.partition, self.stream
                ),
            ));
        }
        Ok(())
    }

    /// Writes a snapshot of the durable groups' committed offsets if any
    /// changed since the last one.
    pub async fn commit_offsets(&self) -> Result<(), String> {
        // One commit at a time; a caller that finds one running waits for it
        // and then commits what changed since (the shutdown commit must not
        // be skipped because a periodic one was under way).
        while self.committing.get() {
            let generation = self.committed.generation();
            if !self.committing.get() {
                break;
            }
            self.committed.changed_since(generation).await;
        }
        // Most rounds nothing moved: find that out without copying names.
        let changed = {
            let last = self.last_snapshot.borrow();
            self.groups
                .borrow()
                .iter()
                .filter(|(_, g)| g.durable)
                .any(|(name, g)| last.get(name) != Some(&g.committed()))
        };
        if !changed {
            return Ok(());
        }
        let mut snapshot: BTreeMap<String, u64> = self
            .stored_offsets
            .borrow()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        for (name, group) in self.groups.borrow().iter() {
            if group.durable {
                snapshot.insert(name.clone(), group.committed());
            }
        }
        self.committing.set(true);
        let record = encode_snapshot(snapshot.iter().map(|(k, v)| (k.as_str(), *v)));
        let result = self.offsets.append(&[record], now_ms()).await;
        self.committing.set(false);
        self.committed.notify_all();
        result.map_err(|e| format!("committing group offsets: {e}"))?;
        *self.last_snapshot.borrow_mut() = snapshot;
        let _ = self.offsets.apply_retention(now_ms()).await;
        Ok(())
    }
}

/// The snapshot record of `groups` (names already checked to be 1 to
/// `GROUP_NAME_BYTES_MAX` bytes by Subscribe).
fn encode_snapshot<'a>(groups: impl ExactSizeIterator<Item = (&'a str, u64)>) -> Vec<u8> {
    let count = groups.len();
    let mut out = Vec::with_capacity(4 + count * SNAPSHOT_ENTRY_BYTES_MAX);
    out.extend_from_slice(&(count as u32).to_le_bytes());
    for (name, offset) in groups {
        assert!(
            name.len() <= GROUP_NAME_BYTES_MAX,
            "group name of {} bytes",
            name.len()
        );
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
    }
    out
}

fn decode_snapshot(bytes: &[u8]) -> Option<HashMap<String, u64>> {
    let mut at = 0usize;
    let take = |at: &mut usize, n: usize| -> Option<&[u8]> {
        let s = bytes.get(*at..*at + n)?;
        *at += n;
        Some(s)
    };
    let count = u32::from_le_bytes(take(&mut at, 4)?.try_into().ok()?);
    let mut map = HashMap::new();
    for _ in 0..count {
        let len = u16::from_le_bytes(take(&mut at, 2)?.try_into().ok()?) as usize;
        let name = std::str::from_utf8(take(&mut at, len)?).ok()?.to_string();
        let offset = u64::from_le_bytes(take(&mut at, 8)?.try_into().ok()?);
        map.insert(name, offset);
    }
    (at == bytes.len()).then_some(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key collides: a match must be confirmed against the stored
    /// event's (source, id), so only real duplicates are reported as such.
    #[test]
    fn a_key_collision_is_not_taken_for_a_duplicate() {
        let dir = std::env::temp_dir().join(format!("hadron-collide-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let root = dir.clone();
        let ids = glommio::LocalExecutorBuilder::default()
            .io_memory(2 << 20)
            .spawn(move || async move {
                let storage = DmaStorage::new(&root).await.unwrap();
                let config = LogConfig {
                    durability: Durability::Always,
                    ..LogConfig::default()
                };
                let mut p = Partition::open(
                    &storage,
                    &root,
                    "s",
                    0,
                    config,
                    DedupLimits {
                        window_ms: 60_000,
                        keys_max: 1 << 20,
                    },
                    Limits::DEFAULT,
                    crate::config::server::GROUPS_MAX_DEFAULT,
                )
                .await
                .unwrap();
                p.key_of = |_, _| 42;
                let ev = |id: &str| {
                    hadron_wire::encode_event(&hadron_wire::EventRef {
                        id,
                        source: "app",
                        ty: "t",
                        ..hadron_wire::EventRef::default()
                    })
                };
                let results = |published: Published| published.results;
                assert_eq!(results(p.publish(&[ev("a")]).await.unwrap()), [(0, false)]);
                // Same key as a, another event: stored.
                assert_eq!(results(p.publish(&[ev("b")]).await.unwrap()), [(1, false)]);
                // a again: a real duplicate.
                assert_eq!(results(p.publish(&[ev("a")]).await.unwrap()), [(0, true)]);
                // Within one publish: c and d collide with a and with each
                // other; the second c is a duplicate of the first.
                assert_eq!(
                    results(p.publish(&[ev("c"), ev("d"), ev("c")]).await.unwrap()),
                    [(2, false), (3, false), (2, true)]
                );
                let (_, records) = p.fetch(0, 1 << 20).await.unwrap();
                records
                    .iter()
                    .map(|(o, bytes)| {
                        let e = hadron_wire::decode_event(bytes, &Limits::DEFAULT).unwrap();
                        (*o, e.id.to_owned())
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap()
            .join()
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let ids: Vec<(u64, &str)> = ids.iter().map(|(o, id)| (*o, id.as_str())).collect();
        assert_eq!(ids, [(0, "a"), (1, "b"), (2, "c"), (3, "d")]);
    }

    #[test]
    fn snapshots_round_trip_and_reject_garbage() {
        let groups = [("a", 5), ("billing", u64::MAX)];
        let bytes = encode_snapshot(groups.into_iter());
        let back = decode_snapshot(&bytes).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back["billing"], u64::MAX);
        assert!(decode_snapshot(&bytes[..bytes.len() - 1]).is_none());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_snapshot(&longer).is_none());
    }

    /// `groups` names of `GROUP_NAME_BYTES_MAX` bytes, distinct.
    fn longest_names(groups: u32) -> Vec<String> {
        (0..groups)
            .map(|i| {
                let name = format!("{i:05}-{}", "g".repeat(GROUP_NAME_BYTES_MAX));
                name[..GROUP_NAME_BYTES_MAX].to_string()
            })
            .collect()
    }

    /// Runs `body` on a fresh partition directory in a glommio executor.
    fn with_partition_dir<T: Send + 'static>(
        name: &str,
        body: impl FnOnce(PathBuf) -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>>
        + Send
        + 'static,
    ) -> T {
        let dir = std::env::temp_dir().join(format!("hadron-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let root = dir.clone();
        let out = glommio::LocalExecutorBuilder::default()
            .io_memory(8 << 20)
            .spawn(move || body(root))
            .unwrap()
            .join()
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        out
    }

    async fn open_partition(root: &Path, groups_max: u32) -> Result<Partition, String> {
        let storage = DmaStorage::new(root).await.unwrap();
        Partition::open(
            &storage,
            root,
            "s",
            0,
            LogConfig {
                segment_bytes: 1 << 20,
                batch_bytes_max: 1 << 20,
                ..LogConfig::default()
            },
            DedupLimits {
                window_ms: 0,
                keys_max: 1,
            },
            Limits::DEFAULT,
            groups_max,
        )
        .await
    }

    /// Installs a durable group per name whose committed offset is
    /// `offset(i)`, replacing any group of that name.
    fn set_groups(p: &Partition, names: &[String], offset: impl Fn(usize) -> u64) {
        let deliveries = Rc::new(super::super::group::Deliveries::default());
        let mut groups = p.groups.borrow_mut();
        for (i, name) in names.iter().enumerate() {
            let g = GroupPartition::new(
                name,
                true,
                offset(i),
                std::time::Duration::from_secs(1),
                deliveries.clone(),
            );
            groups.insert(name.clone(), g);
        }
    }

    /// The largest snapshot: `groupsMax` (the default) groups, each name
    /// at its longest, far past the 32 KiB batch the offsets log once took.
    /// Commits succeed, and after a reopen every group has exactly the
    /// offset of the last commit; the partition is then full.
    #[test]
    fn offsets_snapshot_of_groups_max_longest_names_survives_reopen() {
        let groups_max = crate::config::server::GROUPS_MAX_DEFAULT;
        let names = longest_names(groups_max);
        let expected: HashMap<String, u64> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), 1_000 + i as u64 * 7))
            .collect();
        let loaded = with_partition_dir("snapshot-max", move |root| {
            Box::pin(async move {
                let p = open_partition(&root, groups_max).await.unwrap();
                // Several commits, so that snapshots roll over segments and
                // retention runs; the last one counts.
                for round in 0..4u64 {
                    set_groups(&p, &names, |i| round * 100 + i as u64 * 7);
                    p.commit_offsets().await.unwrap();
                }
                set_groups(&p, &names, |i| 1_000 + i as u64 * 7);
                p.commit_offsets().await.unwrap();
                assert!(
                    encode_snapshot(
                        p.last_snapshot
                            .borrow()
                            .iter()
                            .map(|(k, v)| (k.as_str(), *v))
                    )
                    .len()
                        > 256 << 10
                );
                drop(p);
                let p = open_partition(&root, groups_max).await.unwrap();
                assert_eq!(p.groups_count(), groups_max as usize);
                // Full: a new group is refused naming the setting, a known
                // durable group re-attaches.
                let (code, message) = p.admit_group("one-more", groups_max).unwrap_err();
                assert_eq!(code, ErrorCode::LimitExceeded);
                assert!(message.contains("groupsMax (1024)"), "{message}");
                let known = p.stored_offsets.borrow().keys().next().cloned().unwrap();
                assert_eq!(p.admit_group(&known, groups_max), Ok(()));
                p.stored_offsets.borrow().clone()
            })
        });
        assert_eq!(loaded.len(), expected.len());
        assert!(loaded == expected, "offsets differ after reopen");
    }

    /// A snapshot torn by a crash (its batch half zeroed on disk) is cut by
    /// recovery, and the one before it is loaded: no committed offset goes
    /// back further than the last complete snapshot.
    #[test]
    fn a_torn_offsets_snapshot_leaves_the_previous_one() {
        let groups_max = 600;
        let names = longest_names(groups_max);
        let (before, after) = with_partition_dir("snapshot-torn", move |root| {
            Box::pin(async move {
                let p = open_partition(&root, groups_max).await.unwrap();
                set_groups(&p, &names, |i| 10 + i as u64);
                p.commit_offsets().await.unwrap();
                let first: HashMap<String, u64> = p
                    .last_snapshot
                    .borrow()
                    .iter()
                    .map(|(k, v)| (k.clone(), *v))
                    .collect();
                set_groups(&p, &names, |i| 40 + i as u64);
                p.commit_offsets().await.unwrap();
                let last = p.offsets.segments().last().unwrap().base_offset;
                drop(p);
                // Zero the middle of the last snapshot's batch.
                let path = partition_dir(&root, "s", 0)
                    .join("groups")
                    .join(format!("{last:020}.log"));
                let mut bytes = std::fs::read(&path).unwrap();
                bytes[4096..8192].fill(0);
                std::fs::write(&path, &bytes).unwrap();
                let p = open_partition(&root, groups_max).await.unwrap();
                (first, p.stored_offsets.borrow().clone())
            })
        });
        assert_eq!(before.len(), 600);
        assert!(
            after == before,
            "the torn snapshot did not leave the previous one"
        );
    }

    #[test]
    fn groups_max_admits_up_to_the_limit_and_counts_stored_groups() {
        with_partition_dir("admit", |root| {
            Box::pin(async move {
                let p = open_partition(&root, 3).await.unwrap();
                let names = longest_names(3);
                set_groups(&p, &names[..2], |i| i as u64);
                assert_eq!(p.admit_group(&names[2], 3), Ok(()));
                set_groups(&p, &names[2..], |_| 0);
                let (code, message) = p.admit_group("d", 3).unwrap_err();
                assert_eq!(code, ErrorCode::LimitExceeded);
                assert!(message.contains("groupsMax (3)"), "{message}");
                p.commit_offsets().await.unwrap();
                drop(p);
                // After a reopen the durable groups count though none has
                // re-attached; each of them may, a new one may not.
                let p = open_partition(&root, 3).await.unwrap();
                assert_eq!(p.groups_count(), 3);
                assert_eq!(p.admit_group(&names[1], 3), Ok(()));
                assert!(p.admit_group("d", 3).is_err());
                // A snapshot written under a larger groupsMax, which the
                // offsets log would no longer take, is refused at open with
                // what to do, not loaded and then never committed again.
                drop(p);
                let err = open_partition(&root, 2).await.unwrap_err();
                assert!(err.contains("raise groupsMax to at least 3"), "{err}");
            })
        });
    }

    /// Records a done batch: its keys at offsets from `first`, then the
    /// batch itself.
    fn done(d: &mut Dedup, first: u64, keys: &[u64], at: u64) {
        for (i, &k) in keys.iter().enumerate() {
            d.insert_done(k, first + i as u64);
        }
        d.insert_batch(first, keys.len() as u64, at);
    }

    #[test]
    fn dedup_expires_whole_batches_and_keeps_refreshed_keys() {
        let mut d = Dedup::starting_at(10);
        // Batch at offset 10 (time 100): keys 1, 2; batch at 12 (time 200):
        // key 3; batch at 13 (time 300): key 1 again (after an expiry, a key
        // may be stored anew).
        done(&mut d, 10, &[1, 2], 100);
        done(&mut d, 12, &[3], 200);
        done(&mut d, 13, &[1], 300);
        assert_eq!(d.stored(1), Some(13));
        d.expire(150, u64::MAX);
        assert_eq!(d.stored(1), Some(13), "the newer entry survives");
        assert_eq!(d.stored(2), None);
        assert_eq!(d.stored(3), Some(12));
        assert_eq!(d.ring_base, 12);
        d.expire(250, u64::MAX);
        assert_eq!(d.stored(3), None);
        assert_eq!(d.ring_base, 13);
        d.expire(1000, u64::MAX);
        assert_eq!(d.stored(1), None);
        assert!(d.ring.is_empty() && d.keys.is_empty() && d.batches.is_empty());
        // Appends that complete out of order still land at their offsets.
        done(&mut d, 15, &[9], 1100);
        done(&mut d, 14, &[8], 1100);
        assert_eq!((d.stored(8), d.stored(9)), (Some(14), Some(15)));
        d.expire(1200, u64::MAX);
        assert!(d.keys.is_empty());
        // Claims are separate from stored keys.
        d.claim(5);
        assert!(d.is_pending(5) && d.stored(5).is_none());
        done(&mut d, 16, &[5], 2000);
        assert!(!d.is_pending(5));
        d.claim(6);
        d.unclaim(6);
        assert!(!d.is_pending(6));
        // One pass claims a publish: stored keys, repeats within it, and a
        // key pending for another publish (which takes back every claim).
        done(&mut d, 17, &[40], 3000);
        let mut out = Vec::new();
        assert!(d.claim_all(&[41, 40, 41, 42], &mut out));
        assert_eq!(
            out,
            [
                Claim::Fresh,
                Claim::Stored(17),
                Claim::SameAs(0),
                Claim::Fresh
            ]
        );
        assert!(d.is_pending(41) && d.is_pending(42));
        assert!(!d.claim_all(&[43, 42], &mut out));
        assert!(out.is_empty() && !d.is_pending(43), "43's claim taken back");
        assert!(d.is_pending(42), "the other publish keeps its claim");
        done(&mut d, 18, &[41], 3000);
        d.unclaim(42);
        assert!(d.claim_all(&[43, 42, 41], &mut out));
        assert_eq!(out, [Claim::Fresh, Claim::Fresh, Claim::Stored(18)]);
    }

    #[test]
    fn dedup_count_cap_expires_oldest_batches_but_never_an_append_under_way() {
        // A count cap expires whole batches, oldest first, however recent,
        // and leaves a key refreshed by a later batch in place.
        let mut c = Dedup::starting_at(0);
        done(&mut c, 0, &[1, 2], 10);
        done(&mut c, 2, &[3, 4], 10);
        done(&mut c, 4, &[1], 10);
        assert_eq!(c.len(), 5);
        c.expire(0, 4);
        assert_eq!(
            (c.len(), c.oldest_ms()),
            (3, Some(10)),
            "the first batch left"
        );
        assert_eq!(
            (c.stored(1), c.stored(2), c.stored(3)),
            (Some(4), None, Some(2))
        );
        c.expire(0, 2);
        assert_eq!(
            (c.len(), c.stored(3), c.stored(4), c.stored(1)),
            (1, None, None, Some(4))
        );
        c.expire(0, 0);
        assert!(c.keys.is_empty() && c.ring.is_empty() && c.oldest_ms().is_none());
        assert_eq!(c.ring_base, 5);

        // Z (10..12) done, A (12..17) still appending, B (17..18) done: the
        // cap and the clock may take Z, but not pass A, nor B behind it.
        let mut d = Dedup::starting_at(10);
        done(&mut d, 10, &[100, 101], 1);
        d.claim(200);
        done(&mut d, 17, &[300], 1);
        d.expire(u64::MAX, 0);
        assert_eq!((d.ring_base, d.stored(300)), (12, Some(17)), "stopped at A");
        // A completes: its keys land and count, and then all may go.
        done(&mut d, 12, &[200, 201, 202, 203, 204], 1);
        assert_eq!(
            (d.stored(200), d.stored(204), d.len()),
            (Some(12), Some(16), 6)
        );
        d.expire(0, 1);
        assert_eq!((d.stored(200), d.stored(300), d.len()), (None, Some(17), 1));

        // A batch recorded before the window's start keeps only its part
        // inside it (rebuilding from a log whose start is mid-batch).
        let mut r = Dedup::starting_at(20);
        r.insert_done(7, 21);
        r.insert_batch(18, 4, 5);
        assert_eq!((r.len(), r.batches.front().copied()), (2, Some((20, 2, 5))));
        r.expire(6, u64::MAX);
        assert!(r.keys.is_empty() && r.ring.is_empty());
        assert_eq!(r.ring_base, 22);
    }

    /// Random appends completing out of order, with expiry by time and by a
    /// small cap, checked against a model after every step: every key whose
    /// newest completed store is still in the window is found there, no
    /// other key is, the map and ring agree, and expiry stops only where it
    /// must (a cap or a clock it could not meet is blocked by an append
    /// under way).
    #[test]
    fn dedup_window_matches_a_model_under_out_of_order_appends_and_expiry() {
        for seed in 1..=40u64 {
            let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let mut next = move |n: u64| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng % n
            };
            let mut d = Dedup::starting_at(0);
            let mut next_offset = 0u64;
            let mut now = 0u64;
            // Appends under way: (first offset, keys).
            let mut in_flight: Vec<(u64, Vec<u64>)> = Vec::new();
            // Newest completed offset of each key.
            let mut newest: HashMap<u64, u64> = HashMap::new();
            let mut next_key = 1u64;
            for step in 0..400 {
                match next(3) {
                    0 if in_flight.len() < 4 => {
                        let n = 1 + next(4);
                        let busy: Vec<u64> =
                            in_flight.iter().flat_map(|(_, k)| k.clone()).collect();
                        let keys: Vec<u64> = (0..n)
                            .map(|_| {
                                // Now and then a key stored before (not one
                                // under way: claims keep those apart).
                                let old = 1 + next(next_key);
                                // Keys spread over the key table's parts
                                // (an odd multiplier is a bijection).
                                let spread = |k: u64| k.wrapping_mul(0x9e37_79b9_7f4a_7c15);
                                if next(4) == 0 && old < next_key && !busy.contains(&spread(old)) {
                                    spread(old)
                                } else {
                                    next_key += 1;
                                    spread(next_key - 1)
                                }
                            })
                            .collect();
                        let mut unique = keys.clone();
                        unique.sort_unstable();
                        unique.dedup();
                        if unique.len() != keys.len() {
                            continue;
                        }
                        in_flight.push((next_offset, keys));
                        next_offset += n;
                    }
                    1 if !in_flight.is_empty() => {
                        let (first, keys) = in_flight.remove(next(in_flight.len() as u64) as usize);
                        assert!(
                            first >= d.ring_base,
                            "seed {seed} step {step}: expiry passed an append under way"
                        );
                        now += next(3);
                        for (i, &k) in keys.iter().enumerate() {
                            d.insert_done(k, first + i as u64);
                            newest.insert(k, first + i as u64);
                        }
                        d.insert_batch(first, keys.len() as u64, now);
                    }
                    _ => {
                        now += next(3);
                        let before = now.saturating_sub(next(12));
                        let cap = next(12);
                        d.expire(before, cap);
                        if let Some(&(first, _, at)) = d.batches.front()
                            && (at < before || d.len() > cap)
                        {
                            assert!(
                                first > d.ring_base,
                                "seed {seed} step {step}: expiry stopped without a gap"
                            );
                        }
                    }
                }
                // The map and the ring agree.
                for (k, o) in d.keys.iter() {
                    assert!(
                        o >= d.ring_base,
                        "seed {seed} step {step}: key {k} below the window"
                    );
                    assert_eq!(
                        d.ring.get((o - d.ring_base) as usize),
                        Some(k),
                        "seed {seed} step {step}"
                    );
                }
                // Batches are sorted, apart, and inside the window.
                let mut end = d.ring_base;
                for &(first, count, _) in &d.batches {
                    assert!(
                        first >= end && count > 0,
                        "seed {seed} step {step}: {:?}",
                        d.batches
                    );
                    end = first + count;
                }
                // Every key is found at its newest offset while that offset
                // is in the window, and not at all once it left.
                for (&k, &o) in &newest {
                    let want = (o >= d.ring_base).then_some(o);
                    assert_eq!(d.stored(k), want, "seed {seed} step {step}: key {k}");
                }
            }
        }
    }

    /// The chunked ring against a `VecDeque`, across chunk boundaries,
    /// emptied and refilled.
    #[test]
    fn ring_matches_a_vecdeque() {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut ring = Ring::default();
        let mut model: VecDeque<u64> = VecDeque::new();
        for step in 0..20_000u64 {
            match next(10) {
                0..=3 => {
                    let len = model.len() + next(3 * RING_CHUNK as u64 / 2) as usize;
                    ring.grow_to(len);
                    model.resize(len.max(model.len()), 0);
                }
                4..=6 if !model.is_empty() => {
                    let at = next(model.len() as u64) as usize;
                    ring.set(at, step + 1);
                    model[at] = step + 1;
                }
                _ => {
                    for _ in 0..next(2 * RING_CHUNK as u64) {
                        assert_eq!(ring.pop_front(), model.pop_front(), "step {step}");
                    }
                }
            }
            assert_eq!(ring.len(), model.len(), "step {step}");
            assert_eq!(ring.is_empty(), model.is_empty());
            let chunks_max = (ring.head + ring.len).div_ceil(RING_CHUNK);
            assert!(
                ring.chunks.len() <= chunks_max.max(1),
                "step {step}: idle chunks kept"
            );
            for at in [
                0,
                model.len() / 2,
                model.len().saturating_sub(1),
                model.len(),
            ] {
                assert_eq!(ring.get(at), model.get(at).copied(), "step {step} at {at}");
            }
        }
        while ring.pop_front().is_some() {}
        assert!(ring.chunks.is_empty(), "an empty ring keeps no chunk");
    }

    /// The split key table behaves as one map for keys in every part.
    #[test]
    fn key_table_matches_one_map() {
        let mut table = KeyTable::new();
        let mut model: HashMap<u64, u64> = HashMap::new();
        let key = |i: u64| i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for i in 0..10_000u64 {
            table.insert(key(i), i);
            model.insert(key(i), i);
        }
        let used = table.parts.iter().filter(|m| !m.is_empty()).count();
        assert_eq!(used, KEY_PARTS, "keys spread over every part");
        for i in (0..10_000u64).step_by(3) {
            table.remove(key(i));
            model.remove(&key(i));
        }
        if let std::collections::hash_map::Entry::Occupied(e) = table.entry(key(1)) {
            e.remove();
        }
        model.remove(&key(1));
        for i in 0..10_001u64 {
            assert_eq!(table.get(key(i)), model.get(&key(i)).copied(), "key {i}");
        }
        let mut all: Vec<(u64, u64)> = table.iter().collect();
        all.sort_unstable();
        let mut want: Vec<(u64, u64)> = model.into_iter().collect();
        want.sort_unstable();
        assert_eq!(all, want);
        assert!(!table.is_empty());
    }

    #[test]
    fn dedup_keys_are_stable_and_distinct() {
        assert_eq!(dedup_key("s", "a"), dedup_key("s", "a"));
        assert_ne!(dedup_key("s", "a"), dedup_key("sa", ""));
        assert_ne!(dedup_key("", "ab"), dedup_key("", "ab\0"));
        assert_ne!(dedup_key("", ""), dedup_key("", "\0"));
        // Every byte of a long id counts, in every block position.
        let long = "x".repeat(40);
        for i in 0..long.len() {
            let mut other = long.clone().into_bytes();
            other[i] = b'y';
            let other = String::from_utf8(other).unwrap_or_default();
            assert_ne!(dedup_key("s", &long), dedup_key("s", &other), "byte {i}");
        }
    }

    /// The window map uses the key as its hash: hashbrown picks the bucket
    /// from the low bits and the tag from the top 7, so both must spread
    /// evenly for the ids a publisher generates (a prefix and a counter).
    #[test]
    fn dedup_keys_spread_over_low_and_top_bits() {
        const KEYS: u64 = 1 << 18;
        let mut seen = std::collections::HashSet::new();
        let mut low = vec![0u32; 1024];
        let mut top = vec![0u32; 128];
        for i in 0..KEYS {
            let key = dedup_key("loadgen-3", &format!("lg18a-7-{i}"));
            assert!(seen.insert(key), "collision at {i}");
            low[(key & 1023) as usize] += 1;
            top[(key >> 57) as usize] += 1;
        }
        for (name, counts) in [("low 10 bits", &low), ("top 7 bits", &top)] {
            let mean = KEYS as f64 / counts.len() as f64;
            // Chi-square over the buckets: about counts.len() for a uniform
            // spread; a skewed hash lands far above.
            let chi: f64 = counts
                .iter()
                .map(|&c| (f64::from(c) - mean).powi(2) / mean)
                .sum();
            let buckets = counts.len() as f64;
            assert!(
                chi < buckets * 1.3,
                "{name}: chi-square {chi} over {buckets} buckets"
            );
        }
    }
}
