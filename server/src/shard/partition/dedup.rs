//! The idempotent-publish window of one partition (what it promises is in
//! the partition's module header): the key hash, the split key map, the
//! chunked ring of keys by offset, and the window that claims, records and
//! expires keys.

use std::collections::{HashMap, VecDeque};

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
pub(super) struct Dedup {
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
pub(super) enum Claim {
    /// Fresh: claimed for this publish, to append.
    Fresh,
    /// Already stored at this offset.
    Stored(u64),
    /// The same key as event `j` of this publish.
    SameAs(usize),
}

impl Dedup {
    /// An empty window whose next batch starts at `offset`.
    pub(super) fn starting_at(offset: u64) -> Dedup {
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
    pub(super) fn claim_all(&mut self, keys: &[u64], out: &mut Vec<Claim>) -> bool {
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
    pub(super) fn unclaim(&mut self, key: u64) {
        if self.keys.get(key) == Some(PENDING) {
            self.keys.remove(key);
        }
    }

    /// Forgets the batches appended before `before_ms`, and then the
    /// oldest ones while the window spans more than `keys_max` offsets,
    /// stopping at an append still under way.
    pub(super) fn expire(&mut self, before_ms: u64, keys_max: u64) {
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
    pub(super) fn len(&self) -> u64 {
        self.ring.len() as u64
    }

    /// When the oldest batch still in the window was appended.
    pub(super) fn oldest_ms(&self) -> Option<u64> {
        self.batches.front().map(|&(_, _, at)| at)
    }

    /// Records that `key` is stored at `offset`, replacing its claim. The
    /// batch it is in is recorded after its events, by `insert_batch`.
    pub(super) fn insert_done(&mut self, key: u64, offset: u64) {
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
    pub(super) fn insert_batch(&mut self, first: u64, count: u64, at_ms: u64) {
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
pub(super) fn dedup_key(source: &str, id: &str) -> u64 {
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

#[cfg(test)]
mod tests {
    use super::*;

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

    /// The window's invariants after a step (`at` names it): the map and
    /// the ring agree, the batches are sorted and inside the window, and
    /// every key of the model is found exactly while its newest offset is
    /// in the window.
    fn assert_window_matches(d: &Dedup, newest: &HashMap<u64, u64>, at: &str) {
        // The map and the ring agree.
        for (k, o) in d.keys.iter() {
            assert!(o >= d.ring_base, "{at}: key {k} below the window");
            assert_eq!(d.ring.get((o - d.ring_base) as usize), Some(k), "{at}");
        }
        // Batches are sorted, apart, and inside the window.
        let mut end = d.ring_base;
        for &(first, count, _) in &d.batches {
            assert!(first >= end && count > 0, "{at}: {:?}", d.batches);
            end = first + count;
        }
        // Every key is found at its newest offset while that offset
        // is in the window, and not at all once it left.
        for (&k, &o) in newest {
            let want = (o >= d.ring_base).then_some(o);
            assert_eq!(d.stored(k), want, "{at}: key {k}");
        }
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
                assert_window_matches(&d, &newest, &format!("seed {seed} step {step}"));
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
