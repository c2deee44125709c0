//! [`EngineLogStore`]: a [`LogStore`] over an engine segment log, the Raft
//! storage adapter of docs/replication.md section 4 (step 2 of section
//! 15). The engine log IS the Raft log: each entry is one record batch,
//! written once.
//!
//! - **Entries to batches** (section 4's table): an `EntryNormal` with data
//!   carries the whole batch the leader encoded (header with its term and
//!   index), written unchanged by [`Log::append_entry`], which checks it
//!   (valid, at the next index and offset, term not falling); an empty
//!   `EntryNormal` (a new leader's entry) becomes a control batch of kind
//!   `RaftEmpty` and an `EntryConfChangeV2` one of kind `ConfChange` holding
//!   the protobuf, both built from (term, index, next offset, record)
//!   alone, so every replica writes the same bytes. Reading turns them
//!   back into exactly the entry raft appended.
//! - **Reads from memory.** raft-rs reads its `Storage` synchronously, so
//!   the store keeps the entries from `cache_first` on in memory (all the
//!   log's entries at open, up to [`CACHE_ENTRIES_MAX`] and
//!   [`CACHE_BYTES_MAX`], and every entry
//!   appended since, until [`EngineLogStore::release_below`] drops those
//!   applied). `term` falls back to the log's in-memory table. An entry
//!   below the cache is `LogTemporarilyUnavailable` where raft can wait
//!   (a `SendAppend`: a follower far behind), else `Unavailable`; the
//!   former is read asynchronously (`fetch.rs`, below).
//! - **Durability.** Appends are readable at once; [`EngineLogStore::persist`]
//!   (the round's fdatasync of the driver's cycle) waits for the log's group
//!   commit to make every appended batch durable ([`Log::sync_index`], by
//!   Raft index since control batches take no offsets), then records a
//!   changed hard state or conf state in `log.meta`. The log must be
//!   written with durability `Always`.
//! - **A conflicting suffix** (a new leader's entries overlapping the log
//!   above the commit) is cut by [`Log::truncate_after`], which is
//!   asynchronous while `append` is not: the store cuts its cache at once
//!   (reads see the new entries) and stages the cut and the entries after
//!   it; `persist` makes the cut (durable), then writes them. A crash
//!   before that `persist` leaves the old suffix, as if the leader's
//!   message had been lost (none of the new entries was reported durable).
//!   The cut may reach back into sealed segments (the engine deletes the
//!   later ones and reopens the one cut as active).
//! - **Catch-up reads** (`fetch.rs`): raft's requests below the cache are
//!   recorded (bounded: [`fetch::FETCHES_MAX`], [`fetch::FETCHED_BYTES_MAX`]), read from
//!   the log by the owning loop, and served once from a side buffer.
//! - **Snapshots are descriptors** (section 8): [`raft::Storage::snapshot`]
//!   answers the point just before the first entry held (its index, the
//!   term `log.meta` recorded for it, the conf state) with `data` the
//!   8-byte little-endian next offset there (the log's start offset).
//!   Installing one stages a restart of the log after it, as a cut is
//!   staged: reads see an empty log after the point at once; `persist`
//!   restarts the engine log ([`Log::restart_at`], durable), then writes
//!   the entries staged after it. The follower then catches up from the
//!   leader's first entry by ordinary appends. A snapshot whose data is
//!   not exactly [`SNAPSHOT_DATA_BYTES`] fails the store, naming it.
//!
//! **What the owning loop (the shard) calls**, per group, in section 3's
//! turn:
//!
//! ```text
//!  group.turn() / on_persisted(n) / entries_fetched(ctx)   (Ready cycles)
//!  store.persist().await -> group.on_persisted(persist_number)
//!  fetches = group.store().take_fetches()       (after any of the above)
//!    if any: spawn { read_fetches(&store, fetches).await } -> contexts
//!    back in the loop, each: group.entries_fetched(context)
//!  after applying: store.release_below(group.applied() + 1)
//! ```
//!
//! A [`fetch::Fetch`] taken holds its slot until read or dropped; a failed read
//! is logged and dropped (raft asks again at the follower's next
//! heartbeat response). `release_below` must not pass `applied + 1`:
//! raft reads committed entries from there synchronously.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use bytes::Bytes;
use hadron_engine::AppendError;
use hadron_engine::log::batch::{self, BatchKind, BatchStamp};
use hadron_engine::log::meta::RaftMeta;
use hadron_engine::log::{Durability, Log, RaftBatch};
use hadron_engine::storage::Storage;
use raft::eraftpb::{ConfState, Entry, EntryType, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};

use super::store::{LogStore, StoreError};

mod fetch;

#[cfg(test)]
use fetch::FETCHES_MAX;
use fetch::Fetches;
pub use fetch::read_fetches;

/// Entries loaded into the cache at open, at most (the newest).
pub const CACHE_ENTRIES_MAX: u64 = 65_536;
/// Bytes of entries loaded into the cache at open, at most (the newest).
pub const CACHE_BYTES_MAX: usize = 64 << 20;
/// Bytes of entries read from the log at a time while loading the cache.
const LOAD_BYTES_MAX: u64 = 4 << 20;
/// A snapshot descriptor's `data`: the next event offset after its index,
/// little-endian.
pub const SNAPSHOT_DATA_BYTES: usize = 8;

/// A log restart staged by an installed snapshot (written at `persist`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Restart {
    index: u64,
    term: u64,
    next_offset: u64,
}

/// The next offset a snapshot descriptor's `data` holds; an error naming
/// what is wrong otherwise.
pub fn snapshot_next_offset(snapshot: &Snapshot) -> Result<u64, StoreError> {
    let (index, data) = (snapshot.get_metadata().index, &snapshot.data);
    let bytes: [u8; SNAPSHOT_DATA_BYTES] = data.as_ref().try_into().map_err(|_| {
        StoreError::Rejected(format!(
            "snapshot at index {index} carries {} bytes of data; a descriptor carries exactly {SNAPSHOT_DATA_BYTES} (its next offset)",
            data.len()
        ))
    })?;
    Ok(u64::from_le_bytes(bytes))
}

struct Inner<S: Storage> {
    log: Rc<Log<S>>,
    /// The log's entries from `cache_first` to its last index, and the
    /// bytes of their data.
    cache: VecDeque<Entry>,
    cache_first: u64,
    cache_bytes: usize,
    /// Hard state and conf state as recorded by the Ready cycle (live) and
    /// as `log.meta` holds them (durable).
    hs: HardState,
    conf: ConfState,
    recorded: RaftMeta,
    /// Why the store can no longer be used (an unsupported snapshot).
    failed: Option<StoreError>,
    /// A cut of the log after this index that `persist` makes (the
    /// engine's cut is asynchronous, `append` is not), and the entries to
    /// write after it then; reads see them already.
    pending_cut: Option<u64>,
    /// A restart of the log after an installed snapshot that `persist`
    /// makes; `staged` then holds the entries to write after it.
    pending_restart: Option<Restart>,
    staged: Vec<Entry>,
    /// Snapshots installed (their restarts made durable) since open.
    restarts: u64,
    /// Catch-up reads of entries below the cache (`fetch.rs`).
    fetches: Fetches,
}

impl<S: Storage> Inner<S> {
    /// The last index as reads see it (a pending cut and its entries
    /// included).
    fn last(&self) -> u64 {
        match (self.pending_restart, self.pending_cut) {
            (Some(r), _) => r.index + self.staged.len() as u64,
            (None, Some(cut)) => cut + self.staged.len() as u64,
            (None, None) => self.log.last_index(),
        }
    }

    /// The first index as reads see it (after a pending restart's point).
    pub(super) fn first(&self) -> u64 {
        match self.pending_restart {
            Some(r) => r.index + 1,
            None => self.log.first_index(),
        }
    }

    /// Entries go to `staged` (written at `persist`) rather than the log.
    fn staging(&self) -> bool {
        self.pending_cut.is_some() || self.pending_restart.is_some()
    }

    /// Keeps `e` in the cache (the cache holds `cache_first..=last`).
    fn cache_push(&mut self, e: &Entry) {
        if self.cache.is_empty() {
            self.cache_first = e.index;
        }
        self.cache_bytes += e.data.len();
        self.cache.push_back(e.clone());
    }

    /// Drops the oldest cached entry.
    fn cache_pop(&mut self) -> bool {
        match self.cache.pop_front() {
            Some(e) => {
                self.cache_bytes -= e.data.len();
                self.cache_first += 1;
                true
            }
            None => false,
        }
    }

    /// Keeps the first `keep` cached entries.
    fn cache_truncate(&mut self, keep: usize) {
        let dropped: usize = self.cache.iter().skip(keep).map(|e| e.data.len()).sum();
        self.cache_bytes -= dropped;
        self.cache.truncate(keep);
    }
}

/// A [`LogStore`] over an engine log. Clones share it.
pub struct EngineLogStore<S: Storage>(Rc<RefCell<Inner<S>>>);

impl<S: Storage> Clone for EngineLogStore<S> {
    fn clone(&self) -> Self {
        EngineLogStore(self.0.clone())
    }
}

/// The raft entry a batch of the log is.
fn entry_of(b: &RaftBatch) -> Result<Entry, StoreError> {
    let mut e = Entry {
        term: b.term,
        index: b.index,
        ..Entry::default()
    };
    match b.kind {
        BatchKind::Events => e.data = b.bytes.clone(),
        BatchKind::RaftEmpty => {}
        BatchKind::ConfChange => {
            let parsed = batch::Batches::new(&b.bytes)
                .next()
                .and_then(|r| r.ok())
                .and_then(|r| r.records().next().map(|(_, rec)| b.bytes.slice_ref(rec)));
            let Some(record) = parsed else {
                return Err(StoreError::Rejected(format!(
                    "conf change batch at index {} holds no record",
                    b.index
                )));
            };
            e.set_entry_type(EntryType::EntryConfChangeV2);
            e.data = record;
        }
    }
    Ok(e)
}

/// The batch bytes an entry is written as, at the log's `next_offset`.
fn batch_of(e: &Entry, next_offset: u64) -> Result<Bytes, StoreError> {
    let control = |kind, record: &[u8]| {
        let stamp = BatchStamp {
            kind,
            base_offset: next_offset,
            first_timestamp_ms: 0,
            term: e.term,
            raft_index: e.index,
        };
        let mut out = Vec::new();
        batch::encode_into(&mut out, &stamp, &[record]);
        Bytes::from(out)
    };
    if !e.context.is_empty() {
        return Err(StoreError::Rejected(format!(
            "entry {} carries a context; Hadron never sets one",
            e.index
        )));
    }
    match e.get_entry_type() {
        EntryType::EntryNormal if e.data.is_empty() => Ok(control(BatchKind::RaftEmpty, b"")),
        EntryType::EntryNormal => {
            let header = batch::parse_header(&e.data)
                .map_err(|err| StoreError::Rejected(format!("entry {}: {err}", e.index)))?;
            if (header.raft_index, header.term) != (e.index, e.term) {
                return Err(StoreError::Rejected(format!(
                    "entry {} term {} holds a batch stamped index {} term {}",
                    e.index, e.term, header.raft_index, header.term
                )));
            }
            Ok(e.data.clone())
        }
        EntryType::EntryConfChangeV2 => Ok(control(BatchKind::ConfChange, &e.data)),
        EntryType::EntryConfChange => Err(StoreError::Rejected(format!(
            "entry {} is a version-1 conf change; Hadron proposes ConfChangeV2 only",
            e.index
        ))),
    }
}

fn io_error(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(format!("{what}: {e}"))
}

fn meta_of(hs: &HardState, cs: &ConfState) -> RaftMeta {
    RaftMeta {
        term: hs.term,
        vote: hs.vote,
        commit: hs.commit,
        voters: cs.voters.clone(),
        learners: cs.learners.clone(),
        voters_outgoing: cs.voters_outgoing.clone(),
        learners_next: cs.learners_next.clone(),
        auto_leave: cs.auto_leave,
        ..RaftMeta::default()
    }
}

impl<S: Storage> EngineLogStore<S> {
    /// The store of `log` (opened with durability `Always`): scans its
    /// segments for their Raft tables, reads hard and conf state from
    /// `log.meta`, and loads the newest entries into memory.
    pub async fn open(log: Rc<Log<S>>) -> Result<EngineLogStore<S>, StoreError> {
        Self::open_with_cache(log, CACHE_BYTES_MAX).await
    }

    /// [`EngineLogStore::open`], loading at most `cache_bytes_max` bytes
    /// of entries' data into memory.
    pub async fn open_with_cache(
        log: Rc<Log<S>>,
        cache_bytes_max: usize,
    ) -> Result<EngineLogStore<S>, StoreError> {
        if log.config().durability != Durability::Always {
            return Err(StoreError::Unsupported(
                "a Raft log is written with durability Always",
            ));
        }
        log.load_raft_index()
            .await
            .map_err(|e| io_error("loading the Raft index", e))?;
        let recorded = log.raft_meta();
        let hs = HardState {
            term: recorded.term,
            vote: recorded.vote,
            commit: recorded.commit,
            ..HardState::default()
        };
        let conf = ConfState {
            voters: recorded.voters.clone(),
            learners: recorded.learners.clone(),
            voters_outgoing: recorded.voters_outgoing.clone(),
            learners_next: recorded.learners_next.clone(),
            auto_leave: recorded.auto_leave,
            ..ConfState::default()
        };
        let last = log.last_index();
        let cache_first = log
            .first_index()
            .max((last + 1).saturating_sub(CACHE_ENTRIES_MAX));
        let mut cache = VecDeque::new();
        let mut cache_first = cache_first;
        let mut cache_bytes = 0usize;
        let mut lo = cache_first;
        while lo <= last {
            let got = log
                .entries(lo, last + 1, LOAD_BYTES_MAX)
                .await
                .map_err(|e| io_error("loading Raft entries", e))?;
            for b in &got {
                let e = entry_of(b)?;
                cache_bytes += e.data.len();
                cache.push_back(e);
            }
            // Keep the newest within the byte limit (entries' data).
            while cache_bytes > cache_bytes_max {
                let Some(old) = cache.pop_front() else { break };
                cache_bytes -= old.data.len();
                cache_first += 1;
            }
            lo += got.len() as u64;
        }
        Ok(EngineLogStore(Rc::new(RefCell::new(Inner {
            log,
            cache,
            cache_first,
            cache_bytes,
            hs,
            conf,
            recorded,
            failed: None,
            pending_cut: None,
            pending_restart: None,
            staged: Vec::new(),
            restarts: 0,
            fetches: Fetches::default(),
        }))))
    }

    /// Makes everything recorded durable: every appended batch (the log's
    /// group commit), then a changed hard state or conf state (`log.meta`).
    /// The driver calls it where a round's fdatasync goes, then
    /// `on_persisted`.
    pub async fn persist(&self) -> Result<(), StoreError> {
        if let Err(e) = self.write_cut().await {
            self.0.borrow_mut().failed = Some(e.clone());
            return Err(e);
        }
        let (log, next, wanted) = {
            let inner = self.0.borrow();
            if let Some(e) = &inner.failed {
                return Err(e.clone());
            }
            let wanted = meta_of(&inner.hs, &inner.conf);
            (inner.log.clone(), inner.log.last_index() + 1, wanted)
        };
        log.sync_index(next).await.map_err(|e| match e {
            // Retryable: the entries stay staged in the log (see "Disk
            // full" in the engine's `log/append.rs`).
            AppendError::DiskFull { .. } => {
                StoreError::DiskFull(format!("syncing Raft entries: {e}"))
            }
            e => io_error("syncing Raft entries", e),
        })?;
        let same = {
            let r = &self.0.borrow().recorded;
            meta_of(
                &HardState {
                    term: r.term,
                    vote: r.vote,
                    commit: r.commit,
                    ..HardState::default()
                },
                &ConfState {
                    voters: r.voters.clone(),
                    learners: r.learners.clone(),
                    voters_outgoing: r.voters_outgoing.clone(),
                    learners_next: r.learners_next.clone(),
                    auto_leave: r.auto_leave,
                    ..ConfState::default()
                },
            ) == wanted
        };
        if !same {
            log.write_raft_state(&wanted)
                .await
                .map_err(|e| io_error("writing Raft state to log.meta", e))?;
            self.0.borrow_mut().recorded = log.raft_meta();
        } else {
            // The entries synced lie below log.meta's durable watermark
            // before they are acknowledged (with the hard state above, or
            // here), so that damage to them is told from a torn tail
            // (`replica_repair.rs`).
            log.checkpoint()
                .await
                .map_err(|e| io_error("recording the durable watermark in log.meta", e))?;
        }
        Ok(())
    }

    /// Makes a pending restart or cut (durable when it returns) and
    /// writes the entries staged after it.
    async fn write_cut(&self) -> Result<(), StoreError> {
        let (log, restart, cut) = {
            let inner = self.0.borrow();
            if inner.failed.is_some() {
                return Ok(()); // `persist` reports it
            }
            (inner.log.clone(), inner.pending_restart, inner.pending_cut)
        };
        if let Some(r) = restart {
            log.restart_at(r.index, r.term, r.next_offset)
                .await
                .map_err(|e| io_error("restarting the log after a snapshot", e))?;
            // The restart raised the recorded commit (and term) to its point.
            self.0.borrow_mut().recorded = log.raft_meta();
        } else if let Some(cut) = cut {
            log.truncate_after(cut)
                .await
                .map_err(|e| io_error("cutting the log's uncommitted suffix", e))?;
        } else {
            return Ok(());
        }
        let staged = {
            let mut inner = self.0.borrow_mut();
            inner.restarts += u64::from(inner.pending_restart.is_some());
            inner.pending_cut = None;
            inner.pending_restart = None;
            std::mem::take(&mut inner.staged)
        };
        for e in &staged {
            let bytes = batch_of(e, log.stats().next_offset)?;
            log.append_entry(&bytes)
                .map_err(|err| StoreError::Rejected(format!("entry {}: {err}", e.index)))?;
        }
        Ok(())
    }

    /// Drops the cached entries below `index` (applied ones raft will not
    /// read again but to send them to a follower far behind).
    pub fn release_below(&self, index: u64) {
        let mut inner = self.0.borrow_mut();
        while inner.cache_first < index && inner.cache_pop() {}
    }

    /// Drops applied entries (those up to `applied`) from the cache,
    /// keeping the newest `lag_entries` of them for followers a little
    /// behind, and fewer when the cache holds over `bytes_max` bytes:
    /// followers further back are served by catch-up reads.
    pub fn release_applied(&self, applied: u64, lag_entries: u64, bytes_max: usize) {
        let mut inner = self.0.borrow_mut();
        while inner.cache_first <= applied
            && (inner.cache_first + lag_entries <= applied || inner.cache_bytes > bytes_max)
            && inner.cache_pop()
        {}
    }

    /// Snapshots installed since open whose restart of the log is durable.
    pub fn snapshots_installed(&self) -> u64 {
        self.0.borrow().restarts
    }

    /// Bytes of entry data in the cache.
    pub fn cache_bytes(&self) -> usize {
        self.0.borrow().cache_bytes
    }

    /// The log under the store.
    pub fn log(&self) -> Rc<Log<S>> {
        self.0.borrow().log.clone()
    }
}

impl<S: Storage> LogStore for EngineLogStore<S> {
    fn append(&mut self, entries: &[Entry]) -> Result<(), StoreError> {
        let Some(first_new) = entries.first().map(|e| e.index) else {
            return Ok(());
        };
        let mut inner = self.0.borrow_mut();
        if let Some(e) = &inner.failed {
            return Err(e.clone());
        }
        let first = inner.first();
        let last = inner.last();
        if first_new < first {
            return Err(StoreError::BelowFirst { first_new, first });
        }
        if first_new > last + 1 {
            return Err(StoreError::Gap { first_new, last });
        }
        if first_new <= inner.hs.commit {
            return Err(StoreError::CutCommitted {
                first_new,
                commit: inner.hs.commit,
            });
        }
        if first_new <= last && inner.pending_restart.is_some() {
            // Over entries staged after a restart: they are replaced.
            let keep = (first_new - first) as usize;
            inner.staged.truncate(keep);
            let keep = (first_new - inner.cache_first) as usize;
            inner.cache_truncate(keep);
        } else if first_new <= last {
            // A new leader's conflicting suffix: cut it (at `persist`).
            let cut = first_new - 1;
            inner.pending_cut = Some(inner.pending_cut.map_or(cut, |c| c.min(cut)));
            let keep_staged = inner.pending_cut.map_or(0, |c| (cut - c) as usize);
            inner.staged.truncate(keep_staged);
            inner.fetches.cut(first_new);
            if first_new <= inner.cache_first {
                inner.cache_truncate(0);
            } else {
                let keep = (first_new - inner.cache_first) as usize;
                inner.cache_truncate(keep);
            }
        }
        for e in entries {
            if inner.staging() {
                // Checked now (its stamp), written at `persist`.
                batch_of(e, 0)?;
                inner.staged.push(e.clone());
            } else {
                let bytes = batch_of(e, inner.log.stats().next_offset)?;
                inner
                    .log
                    .append_entry(&bytes)
                    .map_err(|err| StoreError::Rejected(format!("entry {}: {err}", e.index)))?;
            }
            inner.cache_push(e);
        }
        Ok(())
    }

    fn set_hard_state(&mut self, hs: &HardState) {
        self.0.borrow_mut().hs = hs.clone();
    }

    fn set_conf_state(&mut self, cs: &ConfState) {
        self.0.borrow_mut().conf = cs.clone();
    }

    fn install_snapshot(&mut self, snapshot: &Snapshot) {
        let meta = snapshot.get_metadata();
        let (index, term) = (meta.index, meta.term);
        let mut inner = self.0.borrow_mut();
        let next_offset = match snapshot_next_offset(snapshot) {
            Ok(next) => next,
            Err(e) => {
                tracing::error!(index, "refusing a snapshot: {e}");
                inner.failed = Some(e);
                return;
            }
        };
        // The log restarts after the point (at `persist`); reads see an
        // empty log there now.
        inner.pending_restart = Some(Restart {
            index,
            term,
            next_offset,
        });
        inner.pending_cut = None;
        inner.staged.clear();
        inner.cache_truncate(0);
        inner.cache_first = index + 1;
        inner.fetches.below(index + 1);
        inner.conf = meta.get_conf_state().clone();
        inner.hs.commit = inner.hs.commit.max(index);
        inner.hs.term = inner.hs.term.max(term);
    }

    fn hard_state(&self) -> HardState {
        self.0.borrow().hs.clone()
    }

    fn next_offset(&self) -> Option<u64> {
        let inner = self.0.borrow();
        match inner.staging() {
            true => None,
            false => Some(inner.log.stats().next_offset),
        }
    }
}

impl<S: Storage> raft::Storage for EngineLogStore<S> {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let inner = self.0.borrow();
        Ok(RaftState::new(inner.hs.clone(), inner.conf.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max_size = max_size.into();
        let mut inner = self.0.borrow_mut();
        if low < inner.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > inner.last() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        if low < inner.cache_first {
            // Below the cache: what a catch-up read brought, else one is
            // asked for where raft can wait (`fetch.rs`).
            if let Some(run) = inner.fetches.serve(low, high, max_size) {
                return Ok(run);
            }
            if !context.can_async() {
                return Err(raft::Error::Store(StorageError::Unavailable));
            }
            let to = high.min(inner.cache_first);
            inner
                .fetches
                .request(low, to, max_size.unwrap_or(u64::MAX), context);
            return Err(raft::Error::Store(StorageError::LogTemporarilyUnavailable));
        }
        let from = (low - inner.cache_first) as usize;
        let to = (high - inner.cache_first) as usize;
        let mut out: Vec<Entry> = inner.cache.range(from..to).cloned().collect();
        raft::util::limit_size(&mut out, max_size);
        Ok(out)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        let inner = self.0.borrow();
        let first = inner.first();
        if index == 0 || (index + 1 == first && first == 1) {
            return Ok(0);
        }
        if let Some(r) = inner.pending_restart
            && index == r.index
        {
            return Ok(r.term);
        }
        if index + 1 == first
            && let Some(term) = inner.log.term(index)
        {
            // The point before the first entry: `log.meta` knows its term.
            return Ok(term);
        }
        if index < first {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if let Some(e) = index
            .checked_sub(inner.cache_first)
            .and_then(|i| inner.cache.get(usize::try_from(i).ok()?))
        {
            return Ok(e.term);
        }
        if inner.pending_restart.is_some() || inner.pending_cut.is_some_and(|cut| index > cut) {
            // Cut or restarted: only the cache holds what follows.
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        inner
            .log
            .term(index)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.0.borrow().first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.0.borrow().last())
    }

    /// A descriptor (section 8): the point before the first entry held,
    /// its term, the conf state, and as `data` the next offset there (the
    /// log's start). Temporarily unavailable while that point's term is not
    /// known or lies above the commit (everything below the first entry
    /// must be committed: a follower installing it counts it so).
    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let first = self.first_index()?;
        let unavailable = || raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable);
        let term = self.term(first - 1).map_err(|_| unavailable())?;
        let inner = self.0.borrow();
        if term == 0 || first - 1 > inner.hs.commit {
            return Err(unavailable());
        }
        let next_offset = match inner.pending_restart {
            Some(r) => r.next_offset,
            None => inner.log.stats().start_offset,
        };
        let mut snapshot = Snapshot {
            data: next_offset.to_le_bytes().to_vec().into(),
            ..Snapshot::default()
        };
        let meta = snapshot.mut_metadata();
        meta.index = first - 1;
        meta.term = term;
        meta.set_conf_state(inner.conf.clone());
        Ok(snapshot)
    }
}

#[cfg(test)]
mod catch_up_tests;
#[cfg(test)]
mod snapshot_tests;
#[cfg(test)]
mod tests;
