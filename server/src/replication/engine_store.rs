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
//!   (a `SendAppend`), else `Unavailable`: asynchronous catch-up reads
//!   (`on_entries_fetched`) are not built yet.
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
//!   The engine cuts only inside the active segment so far.
//! - **Not built yet**: installing a snapshot (resetting the log to begin
//!   after it, section 8) leaves the store failed, and `persist` reports
//!   it. The term of the index just before the first one held is known
//!   only for an empty log's start (0).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use bytes::Bytes;
use hadron_engine::log::batch::{self, BatchKind, BatchStamp};
use hadron_engine::log::meta::RaftMeta;
use hadron_engine::log::{Durability, Log, RaftBatch};
use hadron_engine::storage::Storage;
use raft::eraftpb::{ConfState, Entry, EntryType, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};

use super::store::{LogStore, StoreError};

/// Entries loaded into the cache at open, at most (the newest).
pub const CACHE_ENTRIES_MAX: u64 = 65_536;
/// Bytes of entries loaded into the cache at open, at most (the newest).
pub const CACHE_BYTES_MAX: usize = 64 << 20;
/// Bytes of entries read from the log at a time while loading the cache.
const LOAD_BYTES_MAX: u64 = 4 << 20;

struct Inner<S: Storage> {
    log: Rc<Log<S>>,
    /// The log's entries from `cache_first` to its last index.
    cache: VecDeque<Entry>,
    cache_first: u64,
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
    staged: Vec<Entry>,
}

impl<S: Storage> Inner<S> {
    /// The last index as reads see it (a pending cut and its entries
    /// included).
    fn last(&self) -> u64 {
        match self.pending_cut {
            Some(cut) => cut + self.staged.len() as u64,
            None => self.log.last_index(),
        }
    }

    /// Keeps `e` in the cache (the cache holds `cache_first..=last`).
    fn cache_push(&mut self, e: &Entry) {
        if self.cache.is_empty() {
            self.cache_first = e.index;
        }
        self.cache.push_back(e.clone());
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
            hs,
            conf,
            recorded,
            failed: None,
            pending_cut: None,
            staged: Vec::new(),
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
        log.sync_index(next)
            .await
            .map_err(|e| io_error("syncing Raft entries", e))?;
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
        }
        Ok(())
    }

    /// Makes a pending cut (durable when it returns) and writes the
    /// entries staged after it.
    async fn write_cut(&self) -> Result<(), StoreError> {
        let (log, cut) = {
            let inner = self.0.borrow();
            match inner.pending_cut {
                Some(cut) => (inner.log.clone(), cut),
                None => return Ok(()),
            }
        };
        log.truncate_after(cut)
            .await
            .map_err(|e| io_error("cutting the log's uncommitted suffix", e))?;
        let staged = {
            let mut inner = self.0.borrow_mut();
            inner.pending_cut = None;
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
        while inner.cache_first < index && !inner.cache.is_empty() {
            inner.cache.pop_front();
            inner.cache_first += 1;
        }
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
        let first = inner.log.first_index();
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
        if first_new <= last {
            // A new leader's conflicting suffix: cut it (at `persist`).
            let cut = first_new - 1;
            inner.pending_cut = Some(inner.pending_cut.map_or(cut, |c| c.min(cut)));
            let keep_staged = inner.pending_cut.map_or(0, |c| (cut - c) as usize);
            inner.staged.truncate(keep_staged);
            if first_new <= inner.cache_first {
                inner.cache.clear();
            } else {
                let keep = (first_new - inner.cache_first) as usize;
                inner.cache.truncate(keep);
            }
        }
        for e in entries {
            if inner.pending_cut.is_some() {
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
        let index = snapshot.get_metadata().index;
        self.0.borrow_mut().failed = Some(StoreError::Unsupported(
            "installing a snapshot needs the engine to reset the log after it (not built yet)",
        ));
        tracing::error!(index, "snapshot install is not built for engine logs yet");
    }

    fn hard_state(&self) -> HardState {
        self.0.borrow().hs.clone()
    }

    fn next_offset(&self) -> Option<u64> {
        let inner = self.0.borrow();
        match inner.pending_cut {
            Some(_) => None,
            None => Some(inner.log.stats().next_offset),
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
        let inner = self.0.borrow();
        if low < inner.log.first_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > inner.last() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        if low < inner.cache_first {
            return Err(raft::Error::Store(if context.can_async() {
                StorageError::LogTemporarilyUnavailable
            } else {
                StorageError::Unavailable
            }));
        }
        let from = (low - inner.cache_first) as usize;
        let to = (high - inner.cache_first) as usize;
        let mut out: Vec<Entry> = inner.cache.range(from..to).cloned().collect();
        raft::util::limit_size(&mut out, max_size.into());
        Ok(out)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        let inner = self.0.borrow();
        let first = inner.log.first_index();
        if index == 0 || (index + 1 == first && first == 1) {
            return Ok(0);
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
        if inner.pending_cut.is_some_and(|cut| index > cut) {
            // Cut: only the cache holds what follows.
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        inner
            .log
            .term(index)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.0.borrow().log.first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.0.borrow().last())
    }

    /// A descriptor (section 8): the point before the first entry held and
    /// the conf state; no data.
    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let first = self.first_index()?;
        let term = self.term(first - 1).unwrap_or(0);
        let inner = self.0.borrow();
        let mut snapshot = Snapshot::default();
        let meta = snapshot.mut_metadata();
        meta.index = first - 1;
        meta.term = term;
        meta.set_conf_state(inner.conf.clone());
        Ok(snapshot)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use futures::executor::block_on;
    use hadron_engine::log::LogConfig;
    use hadron_engine::storage::sim::{CrashMode, SimFaults, SimRng, SimStorage};
    use raft::Storage as _;

    use super::*;
    use crate::replication::MemLogStore;

    fn config() -> LogConfig {
        LogConfig {
            segment_bytes: 64 << 10,
            index_interval_bytes: 512,
            write_bytes_max: 8 << 10,
            pending_bytes_max: 128 << 10,
            batch_bytes_max: 16 << 10,
            ..LogConfig::default()
        }
    }

    fn open(sim: &SimStorage) -> EngineLogStore<SimStorage> {
        let log = block_on(Log::open(sim.clone(), Path::new("/data/raft/0"), config())).unwrap();
        block_on(EngineLogStore::open(Rc::new(log))).unwrap()
    }

    /// An entry of `kind` (0 events, 1 empty, 2 conf change) at `index`,
    /// `term`, for a log whose next offset is `next_offset`.
    fn entry(kind: u64, index: u64, term: u64, next_offset: u64, size: usize) -> Entry {
        let mut e = Entry {
            index,
            term,
            ..Entry::default()
        };
        match kind {
            0 => {
                let stamp = BatchStamp {
                    kind: BatchKind::Events,
                    base_offset: next_offset,
                    first_timestamp_ms: 1_000 + index,
                    term,
                    raft_index: index,
                };
                let records: Vec<Vec<u8>> = (0..1 + index % 3)
                    .map(|r| vec![(index + r) as u8; size])
                    .collect();
                let mut out = Vec::new();
                batch::encode_into(&mut out, &stamp, &records);
                e.data = Bytes::from(out);
            }
            1 => {}
            _ => {
                e.set_entry_type(EntryType::EntryConfChangeV2);
                e.data = Bytes::from(vec![index as u8; 12]);
            }
        }
        e
    }

    fn next_offset(store: &EngineLogStore<SimStorage>) -> u64 {
        store.log().stats().next_offset
    }

    fn all(store: &impl raft::Storage) -> Vec<Entry> {
        let (first, last) = (store.first_index().unwrap(), store.last_index().unwrap());
        store
            .entries(first, last + 1, None, GetEntriesContext::empty(false))
            .unwrap()
    }

    /// Entries of every kind come back as raft appended them, from memory
    /// and after a reopen, with the hard and conf state persisted; a crash
    /// keeps what `persist` covered and nothing else.
    #[test]
    fn engine_store_reads_back_entries_and_state_across_reopen_and_crash() {
        let sim = SimStorage::new(7, SimFaults::default());
        let mut store = open(&sim);
        assert_eq!(
            (store.first_index().unwrap(), store.last_index().unwrap()),
            (1, 0)
        );
        assert_eq!(store.term(0).unwrap(), 0);
        let mut appended = Vec::new();
        for (i, kind) in [1, 0, 2, 0, 0].into_iter().enumerate() {
            let e = entry(kind, i as u64 + 1, 2, next_offset(&store), 100);
            store.append(std::slice::from_ref(&e)).unwrap();
            appended.push(e);
        }
        assert_eq!(all(&store), appended, "readable at once");
        let hs = HardState {
            term: 2,
            vote: 3,
            commit: 3,
            ..HardState::default()
        };
        store.set_hard_state(&hs);
        let cs = ConfState {
            voters: vec![1, 2, 3],
            learners: vec![4],
            ..ConfState::default()
        };
        store.set_conf_state(&cs);
        block_on(store.persist()).unwrap();
        // Not persisted: one more entry and a later commit.
        let extra = entry(0, 6, 2, next_offset(&store), 50);
        store.append(std::slice::from_ref(&extra)).unwrap();
        store.set_hard_state(&HardState {
            commit: 5,
            ..hs.clone()
        });
        assert_eq!(store.last_index().unwrap(), 6);
        drop(store);
        sim.crash(CrashMode::DropUnsynced);
        let store = open(&sim);
        assert_eq!(all(&store), appended, "the persisted entries, no more");
        let state = store.initial_state().unwrap();
        assert_eq!(state.hard_state, hs);
        assert_eq!(state.conf_state, cs);
        assert_eq!(store.term(5).unwrap(), 2);
        assert!(matches!(
            store.term(6),
            Err(raft::Error::Store(StorageError::Unavailable))
        ));
        // Released entries are read from the log asynchronously (not built):
        // raft is told to wait where it can, and terms still come from the
        // log's table.
        store.release_below(4);
        let got = store.entries(4, 6, None, GetEntriesContext::empty(false));
        assert_eq!(got.unwrap(), appended[3..]);
        assert!(matches!(
            store.entries(2, 6, None, GetEntriesContext::empty(true)),
            Err(raft::Error::Store(StorageError::LogTemporarilyUnavailable))
        ));
        assert!(matches!(
            store.entries(2, 6, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Unavailable))
        ));
        assert_eq!(store.term(2).unwrap(), 2);
    }

    /// At open, only the newest entries within the byte limit are loaded
    /// into memory; older ones are told to wait (asynchronous reads), and
    /// their terms still come from the log.
    #[test]
    fn engine_store_loads_the_newest_entries_within_its_byte_limit() {
        let sim = SimStorage::new(10, SimFaults::default());
        let mut store = open(&sim);
        let mut appended = Vec::new();
        for i in 1..=10 {
            let e = entry(0, i, 1, next_offset(&store), 1_000);
            store.append(std::slice::from_ref(&e)).unwrap();
            appended.push(e);
        }
        block_on(store.persist()).unwrap();
        let log = store.log();
        drop(store);
        let limit = appended[7..].iter().map(|e| e.data.len()).sum::<usize>();
        let store = block_on(EngineLogStore::open_with_cache(log, limit)).unwrap();
        let got = store.entries(8, 11, None, GetEntriesContext::empty(false));
        assert_eq!(got.unwrap(), appended[7..]);
        assert!(matches!(
            store.entries(7, 11, None, GetEntriesContext::empty(true)),
            Err(raft::Error::Store(StorageError::LogTemporarilyUnavailable))
        ));
        assert_eq!(store.term(1).unwrap(), 1);
        assert_eq!(store.first_index().unwrap(), 1);
    }

    /// What the store refuses: a gap, a cut into the committed prefix, a
    /// batch stamped with another index.
    #[test]
    fn engine_store_refuses_gaps_cuts_and_mismatched_batches() {
        let sim = SimStorage::new(8, SimFaults::default());
        let mut store = open(&sim);
        for i in 1..=3 {
            let e = entry(0, i, 1, next_offset(&store), 10);
            store.append(&[e]).unwrap();
        }
        store.set_hard_state(&HardState {
            term: 1,
            commit: 2,
            ..HardState::default()
        });
        let at = next_offset(&store);
        assert_eq!(
            store.append(&[entry(0, 5, 1, at, 10)]),
            Err(StoreError::Gap {
                first_new: 5,
                last: 3
            })
        );
        assert_eq!(
            store.append(&[entry(1, 2, 2, at, 0)]),
            Err(StoreError::CutCommitted {
                first_new: 2,
                commit: 2
            })
        );
        let mut wrong = entry(0, 4, 1, at, 10);
        wrong.index = 4;
        wrong.term = 2;
        assert!(matches!(
            store.append(&[wrong]),
            Err(StoreError::Rejected(why)) if why.contains("stamped index 4 term 1")
        ));
        assert_eq!(store.last_index().unwrap(), 3, "nothing written");
    }

    /// A new leader's conflicting suffix replaces the uncommitted entries:
    /// readable at once, made durable by `persist` (a crash before it
    /// brings the old suffix back), and the log's offsets stay dense.
    #[test]
    fn engine_store_replaces_a_conflicting_suffix_at_persist() {
        for crash_first in [true, false] {
            let sim = SimStorage::new(9, SimFaults::default());
            let mut store = open(&sim);
            let mut old = Vec::new();
            for i in 1..=6 {
                let e = entry(i % 2, i, 1, next_offset(&store), 300);
                store.append(std::slice::from_ref(&e)).unwrap();
                old.push(e);
            }
            let hs = HardState {
                term: 2,
                commit: 3,
                ..HardState::default()
            };
            store.set_hard_state(&hs);
            block_on(store.persist()).unwrap();
            // The leader's offsets follow its own log: entry 4 begins where
            // the kept prefix ends.
            let kept_next = {
                let log = store.log();
                let b = block_on(log.entries(4, 5, u64::MAX)).unwrap();
                batch::parse_header(&b[0].bytes).unwrap().base_offset
            };
            let new4 = entry(0, 4, 2, kept_next, 100);
            let events = batch::parse_header(&new4.data).unwrap().offsets_taken();
            let new5 = entry(1, 5, 2, kept_next + events, 0);
            store.append(&[new4.clone(), new5.clone()]).unwrap();
            let mut want = old[..3].to_vec();
            want.extend([new4, new5]);
            assert_eq!(all(&store), want, "readable at once");
            assert!(matches!(
                store.term(6),
                Err(raft::Error::Store(StorageError::Unavailable))
            ));
            if crash_first {
                drop(store);
                sim.crash(CrashMode::DropUnsynced);
                let store = open(&sim);
                assert_eq!(all(&store), old, "not persisted: the old suffix");
                continue;
            }
            block_on(store.persist()).unwrap();
            assert_eq!(store.log().stats().next_offset, kept_next + events);
            drop(store);
            sim.crash(CrashMode::DropUnsynced);
            let store = open(&sim);
            assert_eq!(all(&store), want);
            assert_eq!(store.initial_state().unwrap().hard_state, hs);
        }
    }

    /// `count` random entries (every kind) from index `first` at `term`,
    /// their batches from offset `offset` on.
    fn random_entries(
        rng: &mut SimRng,
        first: u64,
        count: u64,
        term: u64,
        offset: u64,
    ) -> Vec<Entry> {
        let mut offset = offset;
        (first..first + count)
            .map(|next| {
                let e = entry(rng.below(3), next, term, offset, rng.below(900) as usize);
                if e.get_entry_type() == EntryType::EntryNormal && !e.data.is_empty() {
                    offset += batch::parse_header(&e.data).unwrap().offsets_taken();
                }
                e
            })
            .collect()
    }

    /// The engine store answers as the model does: bounds, entries (all,
    /// and a random range under a random limit), terms, hard state.
    fn assert_same(
        store: &EngineLogStore<SimStorage>,
        mem: &MemLogStore,
        rng: &mut SimRng,
        ctx: &str,
    ) {
        let last = store.last_index().unwrap();
        assert_eq!(last, mem.last_index().unwrap(), "{ctx}");
        assert_eq!(
            store.first_index().unwrap(),
            mem.first_index().unwrap(),
            "{ctx}"
        );
        assert!(all(store) == all(mem), "{ctx}: entries differ");
        let (s, m) = (store.initial_state().unwrap(), mem.initial_state().unwrap());
        assert_eq!(s.hard_state, m.hard_state, "{ctx}");
        for i in 0..=last {
            assert_eq!(
                store.term(i).unwrap(),
                mem.term(i).unwrap(),
                "{ctx} term {i}"
            );
        }
        let lo = 1 + rng.below(last + 1);
        let hi = lo + rng.below(last + 2 - lo);
        let max = rng.below(3_000);
        let ctx_e = || GetEntriesContext::empty(false);
        assert!(
            store.entries(lo, hi, max, ctx_e()).unwrap()
                == mem.entries(lo, hi, max, ctx_e()).unwrap(),
            "{ctx}: entries({lo}, {hi}, {max}) differ"
        );
    }

    /// Over random appends (every entry kind at rising terms), conflicting
    /// suffixes, hard-state changes, persists, crashes and reopens, the
    /// engine store answers as `MemLogStore` does.
    #[test]
    fn engine_store_matches_mem_log_store_over_random_sequences() {
        for seed in 0..40u64 {
            let mut rng = SimRng::new(seed);
            let sim = SimStorage::new(seed, SimFaults::default());
            let mut store = open(&sim);
            let mut mem = MemLogStore::new_empty();
            // A new engine log records term 1 in log.meta (a cluster of
            // one's term); the model starts there too.
            assert_eq!(store.hard_state().term, 1);
            mem.set_hard_state(&store.hard_state());
            mem.sync();
            let mut term = 1;
            for step in 0..60 {
                let (commit, last) = (mem.hard_state().commit, store.last_index().unwrap());
                match rng.below(12) {
                    10.. if commit < last => {
                        // A new leader's conflicting suffix, then persisted
                        // (`MemLogStore` cuts durably at once, the engine
                        // store at `persist`); its offsets follow the kept
                        // prefix.
                        term += 1;
                        let first = commit + 1 + rng.below(last - commit);
                        let log = store.log();
                        let b = block_on(log.entries(first, first + 1, u64::MAX)).unwrap();
                        let offset = batch::parse_header(&b[0].bytes).unwrap().base_offset;
                        let count = 1 + rng.below(3);
                        let batch = random_entries(&mut rng, first, count, term, offset);
                        store.append(&batch).unwrap();
                        mem.append(&batch).unwrap();
                        block_on(store.persist()).unwrap();
                        mem.sync();
                    }
                    0..=4 | 10.. => {
                        term += u64::from(rng.below(4) == 0);
                        let count = 1 + rng.below(4);
                        let batch =
                            random_entries(&mut rng, last + 1, count, term, next_offset(&store));
                        store.append(&batch).unwrap();
                        mem.append(&batch).unwrap();
                    }
                    5 | 6 => {
                        let hs = HardState {
                            term,
                            vote: rng.below(4),
                            commit: last.min(commit + rng.below(5)),
                            ..HardState::default()
                        };
                        store.set_hard_state(&hs);
                        mem.set_hard_state(&hs);
                    }
                    7 | 8 => {
                        block_on(store.persist()).unwrap();
                        mem.sync();
                    }
                    9 => {
                        drop(store);
                        sim.crash(CrashMode::DropUnsynced);
                        store = open(&sim);
                        mem.crash();
                    }
                }
                assert_same(&store, &mem, &mut rng, &format!("seed {seed} step {step}"));
            }
        }
    }
}
