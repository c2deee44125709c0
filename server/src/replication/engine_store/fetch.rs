//! Asynchronous catch-up reads (docs/replication.md section 4): entries
//! below the store's in-memory cache, read from the engine log for a
//! follower far behind, without blocking raft-rs's synchronous `Storage`.
//!
//! ```text
//!  raft: entries(lo, hi, max, SendAppend{to}) below the cache
//!        -> Fetches::request: recorded (one per `lo`, FETCHES_MAX in all)
//!        <- LogTemporarilyUnavailable (raft sends nothing to `to` yet)
//!  loop: store.take_fetches() -> read_fetch(f).await: Log::entries(lo,
//!        hi, max) into the side buffer (FETCHED_BYTES_MAX) -> context
//!  loop: ReplicatedLog::entries_fetched(context): raft-rs
//!        on_entries_fetched -> entries(lo, ..) again, served from the side
//!        buffer (and dropped from it) -> the append leaves in the Ready
//! ```
//!
//! **Bounds.** A request is recorded once per first index `lo` (raft asks
//! again for the same follower at every heartbeat response while it
//! waits, always from its `next_idx`), and at most [`FETCHES_MAX`] are
//! recorded, being read or read and not yet served; when full, the oldest
//! run read is dropped for a new request, and a request finding every slot
//! waiting or being read is not recorded (raft asks again later). Runs
//! read are held within [`FETCHED_BYTES_MAX`] (the oldest dropped first; a
//! single run is at most raft's `max_size` plus one batch). A run is
//! served once and dropped. A [`Fetch`] taken frees its slot when read,
//! failed or dropped unread, and raft's next heartbeat response asks again.
//!
//! **Staleness.** Only entries below the cache are read, and the cache
//! always begins at or below a new leader's conflicting suffix, so a
//! cut never reaches what is being read; entries landing at or above the
//! cache's first index (a cut cleared it meanwhile) are dropped, as are
//! runs read at or above a cut's first index.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::{Rc, Weak};

use hadron_engine::log::RaftBatch;
use hadron_engine::storage::Storage;
use raft::GetEntriesContext;
use raft::eraftpb::Entry;

use super::{EngineLogStore, Inner, entry_of};

/// Catch-up reads recorded, being read, or read and not yet served, at
/// most: one per follower far behind (a group has at most 6 followers:
/// Hadron allows 7 replicas) and a little slack.
pub const FETCHES_MAX: usize = 8;
/// Bytes of entries read for catch-up and not yet served, at most (a run
/// beyond it is kept only alone: raft's `max_size` plus one batch).
pub const FETCHED_BYTES_MAX: usize = 16 << 20;

/// A catch-up read raft asked for: entries `low..high` within `max_size`
/// bytes (the first always), for raft's context. Taken from the store, it
/// holds its slot until read by [`EngineLogStore::read_fetch`] or dropped.
pub struct Fetch<S: Storage> {
    pub low: u64,
    pub high: u64,
    pub max_size: u64,
    context: Option<GetEntriesContext>,
    /// The store's state, to free the slot.
    owner: Weak<RefCell<Inner<S>>>,
}

impl<S: Storage> std::fmt::Debug for Fetch<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetch")
            .field("low", &self.low)
            .field("high", &self.high)
            .field("max_size", &self.max_size)
            .finish_non_exhaustive()
    }
}

impl<S: Storage> Drop for Fetch<S> {
    fn drop(&mut self) {
        if let Some(inner) = self.owner.upgrade() {
            inner.borrow_mut().fetches.done_reading(self.low);
        }
    }
}

/// A request recorded, not yet taken.
#[derive(Debug)]
struct Request {
    low: u64,
    high: u64,
    max_size: u64,
    context: GetEntriesContext,
}

/// The catch-up reads of one store.
#[derive(Debug, Default)]
pub(super) struct Fetches {
    /// Recorded, not yet taken by the owning loop.
    waiting: Vec<Request>,
    /// The first indexes being read.
    reading: Vec<u64>,
    /// Runs read, by first index, oldest first, and their bytes.
    read: VecDeque<(u64, Vec<Entry>)>,
    read_bytes: usize,
}

fn bytes_of(run: &[Entry]) -> usize {
    run.iter().map(|e| e.data.len()).sum()
}

impl Fetches {
    fn slots_used(&self) -> usize {
        self.waiting.len() + self.reading.len() + self.read.len()
    }

    /// Records raft's request for `low..high` (below the cache), unless one
    /// from `low` is already recorded or no slot is free.
    pub(super) fn request(
        &mut self,
        low: u64,
        high: u64,
        max_size: u64,
        context: GetEntriesContext,
    ) {
        let known = self.waiting.iter().any(|f| f.low == low)
            || self.reading.contains(&low)
            || self.read.iter().any(|(l, _)| *l == low);
        if known || low >= high {
            return;
        }
        if self.slots_used() >= FETCHES_MAX {
            // A run read but never asked for again (its follower moved on,
            // or leadership did) gives way.
            let Some((_, old)) = self.read.pop_front() else {
                return;
            };
            self.read_bytes -= bytes_of(&old);
        }
        self.waiting.push(Request {
            low,
            high,
            max_size,
            context,
        });
    }

    /// The run read from `low`, if any, within `high` and `max_size`:
    /// served once, then dropped.
    pub(super) fn serve(
        &mut self,
        low: u64,
        high: u64,
        max_size: Option<u64>,
    ) -> Option<Vec<Entry>> {
        let at = self.read.iter().position(|(l, _)| *l == low)?;
        let (_, mut run) = self.read.remove(at)?;
        self.read_bytes -= bytes_of(&run);
        run.retain(|e| e.index < high);
        raft::util::limit_size(&mut run, max_size);
        Some(run)
    }

    /// Drops what was read from `first_new` on (a conflicting suffix was
    /// cut there).
    /// Drops the requests and runs read below `first` (a snapshot
    /// installed: the log begins after it). Reads under way are dropped
    /// when they land.
    pub(super) fn below(&mut self, first: u64) {
        self.waiting.retain(|r| r.low >= first);
        self.read.retain(|(low, _)| *low >= first);
        self.read_bytes = self.read.iter().map(|(_, run)| bytes_of(run)).sum();
    }

    pub(super) fn cut(&mut self, first_new: u64) {
        for (_, run) in &mut self.read {
            run.retain(|e| e.index < first_new);
        }
        self.read.retain(|(_, run)| !run.is_empty());
        self.read_bytes = self.read.iter().map(|(_, run)| bytes_of(run)).sum();
    }

    /// Keeps a run read from `low` (its slot was `reading`), the oldest
    /// runs giving way to stay within [`FETCHED_BYTES_MAX`].
    fn land(&mut self, low: u64, run: Vec<Entry>) {
        let bytes = bytes_of(&run);
        while self.read_bytes + bytes > FETCHED_BYTES_MAX {
            let Some((_, old)) = self.read.pop_front() else {
                break;
            };
            self.read_bytes -= bytes_of(&old);
        }
        self.read_bytes += bytes;
        self.read.push_back((low, run));
    }

    fn done_reading(&mut self, low: u64) {
        self.reading.retain(|&l| l != low);
    }
}

impl<S: Storage> EngineLogStore<S> {
    /// The catch-up reads raft asked for since the last call, for the
    /// owning loop to run ([`EngineLogStore::read_fetch`] each, then
    /// `ReplicatedLog::entries_fetched` with what it returns).
    pub fn take_fetches(&self) -> Vec<Fetch<S>> {
        let mut inner = self.0.borrow_mut();
        let taken = std::mem::take(&mut inner.fetches.waiting);
        inner.fetches.reading.extend(taken.iter().map(|f| f.low));
        taken
            .into_iter()
            .map(|r| Fetch {
                low: r.low,
                high: r.high,
                max_size: r.max_size,
                context: Some(r.context),
                owner: Rc::downgrade(&self.0),
            })
            .collect()
    }

    /// Reads `fetch`'s entries from the log into the side buffer; returns
    /// the context to hand to `ReplicatedLog::entries_fetched`. `None` when
    /// the read failed (logged) or nothing of it is still wanted: raft asks
    /// again at the follower's next heartbeat response.
    pub async fn read_fetch(&self, mut fetch: Fetch<S>) -> Option<GetEntriesContext> {
        let (low, high, max_size) = (fetch.low, fetch.high, fetch.max_size);
        let context = fetch.context.take()?;
        let log = self.log();
        let got = log.entries(low, high, max_size).await;
        let run: Result<Vec<Entry>, String> = match got {
            Ok(batches) => batches
                .iter()
                .map(|b: &RaftBatch| entry_of(b).map_err(|e| e.to_string()))
                .collect(),
            Err(e) => Err(e.to_string()),
        };
        // Its slot is free from here on (also if this future is dropped
        // while reading).
        drop(fetch);
        let run = match run {
            Ok(run) => run,
            Err(e) => {
                tracing::warn!(low, high, "catch-up read of raft entries failed: {e}");
                return None;
            }
        };
        let mut inner = self.0.borrow_mut();
        if low < inner.first() {
            // A snapshot installed meanwhile: the log begins after it.
            return None;
        }
        let cache_first = inner.cache_first;
        let run: Vec<Entry> = run
            .into_iter()
            .take_while(|e| e.index < cache_first)
            .collect();
        if run.first().is_none_or(|e| e.index != low) {
            return None;
        }
        inner.fetches.land(low, run);
        Some(context)
    }
}

/// Runs `fetches` (from [`EngineLogStore::take_fetches`]) one after the
/// other; returns the contexts of those read, in order, for
/// `ReplicatedLog::entries_fetched`. What a shard loop spawns.
pub async fn read_fetches<S: Storage>(
    store: &EngineLogStore<S>,
    fetches: Vec<Fetch<S>>,
) -> Vec<GetEntriesContext> {
    let mut done = Vec::with_capacity(fetches.len());
    for fetch in fetches {
        if let Some(context) = store.read_fetch(fetch).await {
            done.push(context);
        }
    }
    done
}
