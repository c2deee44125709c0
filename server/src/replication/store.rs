//! The boundary between a [`ReplicatedLog`](super::ReplicatedLog) and the
//! log it replicates: [`LogStore`], raft-rs's read-only [`Storage`] plus
//! the few writes the Ready cycle makes, and [`MemLogStore`], an in-memory
//! implementation with the crash semantics of group commit.
//!
//! The engine's Raft adapter (docs/replication.md section 15, step 2)
//! will implement [`LogStore`] over a segment log; until then
//! [`MemLogStore`] stands in for it, in the simulation and in unit tests.
//!
//! **What a store promises** (section 4):
//! - an appended entry is readable at once (`entries`, `term`), before it
//!   is durable; durability is the caller's business (a round's fdatasync),
//!   reported to raft by the driver, never by the store;
//! - appending entries that overlap the log replaces its suffix from the
//!   first new index (a new leader's conflicting suffix); a cut at or below
//!   the commit index is a Raft safety bug and is refused;
//! - after a crash, exactly what the last completed sync covered is left:
//!   entries, hard state and conf state alike.
//!
//! [`MemLogStore`] keeps two images, `live` (what reads see) and `durable`
//! (what a crash leaves), as the simulated disk does for files:
//! [`MemLogStore::sync`] copies the first onto the second,
//! [`MemLogStore::crash`] the second onto the first.

use std::cell::RefCell;
use std::rc::Rc;

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

/// Why a store refused a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// Entries that would leave a gap after the log's last index.
    Gap { first_new: u64, last: u64 },
    /// A cut of entries at or below the commit index (a safety bug).
    CutCommitted { first_new: u64, commit: u64 },
    /// An append below the log's first index (behind its snapshot).
    BelowFirst { first_new: u64, first: u64 },
    /// An operation this store does not implement yet (the reason says
    /// which and why).
    Unsupported(&'static str),
    /// An entry the log refused (not a valid batch, out of sequence).
    Rejected(String),
    /// The log's storage failed.
    Io(String),
    /// The disk is full: nothing of the entries was written and the log
    /// stays writable; the caller retries the persist after a backoff
    /// (nothing is acknowledged meanwhile).
    DiskFull(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Gap { first_new, last } => write!(
                f,
                "raft entries from index {first_new} would leave a gap after the log's last index {last}"
            ),
            StoreError::CutCommitted { first_new, commit } => write!(
                f,
                "raft entries from index {first_new} would cut the committed prefix (commit {commit}): refusing"
            ),
            StoreError::BelowFirst { first_new, first } => write!(
                f,
                "raft entries from index {first_new} lie below the log's first index {first}"
            ),
            StoreError::Unsupported(why) => write!(f, "not supported: {why}"),
            StoreError::Rejected(why) => write!(f, "raft entry refused: {why}"),
            StoreError::Io(why) => write!(f, "raft log storage failed: {why}"),
            StoreError::DiskFull(why) => write!(f, "raft log storage is full: {why}"),
        }
    }
}

/// A Raft log as the Ready cycle writes it. `Storage` reads must answer
/// from memory (raft-rs panics on a read error while building a Ready).
pub trait LogStore: Storage {
    /// Appends a Ready's entries, replacing any suffix they overlap.
    fn append(&mut self, entries: &[Entry]) -> Result<(), StoreError>;
    /// Records the hard state (term, vote, commit) of a Ready.
    fn set_hard_state(&mut self, hs: &HardState);
    /// Records the conf state after a conf change was applied.
    fn set_conf_state(&mut self, cs: &ConfState);
    /// Replaces the log by a snapshot's descriptor: the log restarts after
    /// its index, and its conf state becomes the snapshot's.
    fn install_snapshot(&mut self, snapshot: &Snapshot);
    /// The hard state as last recorded (what a restart reads back).
    fn hard_state(&self) -> HardState;
    /// The offset the next data batch appended takes, when the store
    /// numbers events (an engine log); `None` otherwise, or while it
    /// cannot say (a cut not yet made). Batches are proposed only with one.
    fn next_offset(&self) -> Option<u64> {
        None
    }
}

/// One image of a [`MemLogStore`].
#[derive(Debug, Clone, Default)]
struct Image {
    /// The index and term of the entry just before `entries` (the
    /// snapshot's), and the conf state as of it.
    snap_index: u64,
    snap_term: u64,
    snap_conf: ConfState,
    /// Entries from `snap_index + 1` on.
    entries: Vec<Entry>,
    hs: HardState,
    conf: ConfState,
}

impl Image {
    fn last_index(&self) -> u64 {
        self.snap_index + self.entries.len() as u64
    }
}

#[derive(Debug, Default)]
struct Inner {
    live: Image,
    durable: Image,
    /// `live.entries[..synced]` are in `durable.entries` (same positions),
    /// unless `reset`.
    synced: usize,
    /// A snapshot replaced the live log since the last sync: the images'
    /// entries no longer line up, and the next sync copies the whole image.
    reset: bool,
}

/// An in-memory [`LogStore`] with a durable prefix and an unsynced tail.
/// Clones share the log (the driver holds one, the test another).
#[derive(Debug, Clone, Default)]
pub struct MemLogStore(Rc<RefCell<Inner>>);

impl MemLogStore {
    /// The log of an initial member: a snapshot at (index 1, term 1) that
    /// holds the voters, durable (section 1, finding 5: a replica added
    /// later is then seeded by a snapshot).
    pub fn new_member(voters: &[u64]) -> MemLogStore {
        let mut image = Image {
            snap_index: 1,
            snap_term: 1,
            ..Image::default()
        };
        image.snap_conf.voters = voters.to_vec();
        image.conf = image.snap_conf.clone();
        image.hs.term = 1;
        image.hs.commit = 1;
        MemLogStore(Rc::new(RefCell::new(Inner {
            live: image.clone(),
            durable: image,
            synced: 0,
            reset: false,
        })))
    }

    /// The log of a replica added later: empty, no voters, no term.
    pub fn new_empty() -> MemLogStore {
        MemLogStore::default()
    }

    /// The fdatasync of a round completed: everything recorded so far is
    /// durable.
    pub fn sync(&self) {
        let mut inner = self.0.borrow_mut();
        let inner = &mut *inner;
        if inner.reset {
            inner.durable = inner.live.clone();
        } else {
            let new = &inner.live.entries[inner.synced..];
            inner.durable.entries.extend_from_slice(new);
            inner.durable.hs = inner.live.hs.clone();
            inner.durable.conf = inner.live.conf.clone();
        }
        inner.synced = inner.live.entries.len();
        inner.reset = false;
    }

    /// A crash: what was not synced is lost.
    pub fn crash(&self) {
        let mut inner = self.0.borrow_mut();
        inner.live = inner.durable.clone();
        inner.synced = inner.live.entries.len();
        inner.reset = false;
    }

    /// The live entries in `[lo, hi)` that the log holds.
    pub fn live_entries(&self, lo: u64, hi: u64) -> Vec<Entry> {
        let inner = self.0.borrow();
        image_range(&inner.live, lo, hi).to_vec()
    }

    /// The durable entry at `index`, if the durable image holds it.
    pub fn durable_entry(&self, index: u64) -> Option<Entry> {
        let inner = self.0.borrow();
        image_range(&inner.durable, index, index + 1)
            .first()
            .cloned()
    }

    /// The live log's first index (after its snapshot) and last index.
    pub fn live_bounds(&self) -> (u64, u64) {
        let inner = self.0.borrow();
        (inner.live.snap_index + 1, inner.live.last_index())
    }
}

/// The entries of `image` within `[lo, hi)`.
fn image_range(image: &Image, lo: u64, hi: u64) -> &[Entry] {
    let first = image.snap_index + 1;
    let lo = lo.max(first);
    let hi = hi.min(image.last_index() + 1);
    if lo >= hi {
        return &[];
    }
    &image.entries[(lo - first) as usize..(hi - first) as usize]
}

impl LogStore for MemLogStore {
    fn append(&mut self, entries: &[Entry]) -> Result<(), StoreError> {
        let Some(first_new) = entries.first().map(|e| e.index) else {
            return Ok(());
        };
        let mut inner = self.0.borrow_mut();
        let inner = &mut *inner;
        let first = inner.live.snap_index + 1;
        let last = inner.live.last_index();
        if first_new < first {
            return Err(StoreError::BelowFirst { first_new, first });
        }
        if first_new > last + 1 {
            return Err(StoreError::Gap { first_new, last });
        }
        if first_new <= inner.live.hs.commit {
            return Err(StoreError::CutCommitted {
                first_new,
                commit: inner.live.hs.commit,
            });
        }
        let keep = (first_new - first) as usize;
        if keep < inner.live.entries.len() {
            // The cut is durable at once, as the engine's truncation is:
            // only never-committed entries are cut (checked above).
            inner.live.entries.truncate(keep);
            if !inner.reset {
                inner
                    .durable
                    .entries
                    .truncate(keep.min(inner.durable.entries.len()));
                inner.synced = inner.synced.min(keep);
            }
        }
        inner.live.entries.extend_from_slice(entries);
        debug_assert!(
            inner
                .live
                .entries
                .iter()
                .zip(first..)
                .all(|(e, i)| e.index == i),
            "the log's indexes are consecutive"
        );
        Ok(())
    }

    fn set_hard_state(&mut self, hs: &HardState) {
        self.0.borrow_mut().live.hs = hs.clone();
    }

    fn set_conf_state(&mut self, cs: &ConfState) {
        self.0.borrow_mut().live.conf = cs.clone();
    }

    fn install_snapshot(&mut self, snapshot: &Snapshot) {
        let mut inner = self.0.borrow_mut();
        let meta = snapshot.get_metadata();
        let live = &mut inner.live;
        live.entries.clear();
        live.snap_index = meta.index;
        live.snap_term = meta.term;
        live.snap_conf = meta.get_conf_state().clone();
        live.conf = live.snap_conf.clone();
        live.hs.commit = live.hs.commit.max(meta.index);
        live.hs.term = live.hs.term.max(meta.term);
        inner.synced = 0;
        inner.reset = true;
    }

    fn hard_state(&self) -> HardState {
        self.0.borrow().live.hs.clone()
    }
}

impl Storage for MemLogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let inner = self.0.borrow();
        Ok(RaftState::new(
            inner.live.hs.clone(),
            inner.live.conf.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let inner = self.0.borrow();
        let live = &inner.live;
        if low <= live.snap_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > live.last_index() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let mut out = image_range(live, low, high).to_vec();
        raft::util::limit_size(&mut out, max_size.into());
        Ok(out)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        let inner = self.0.borrow();
        let live = &inner.live;
        if index == live.snap_index {
            return Ok(live.snap_term);
        }
        if index < live.snap_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        match image_range(live, index, index + 1).first() {
            Some(e) => Ok(e.term),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.0.borrow().live.snap_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.0.borrow().live.last_index())
    }

    /// A descriptor (section 8): the snapshot point and its conf state,
    /// no data. A replica added later catches up through appends.
    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let inner = self.0.borrow();
        let mut snapshot = Snapshot::default();
        let meta = snapshot.mut_metadata();
        meta.index = inner.live.snap_index;
        meta.term = inner.live.snap_term;
        meta.set_conf_state(inner.live.snap_conf.clone());
        Ok(snapshot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, data: &'static [u8]) -> Entry {
        Entry {
            index,
            term,
            data: bytes::Bytes::from_static(data),
            ..Entry::default()
        }
    }

    fn terms(store: &MemLogStore) -> Vec<u64> {
        let (first, last) = store.live_bounds();
        store
            .live_entries(first, last + 1)
            .iter()
            .map(|e| e.term)
            .collect()
    }

    /// Appends are readable at once; a crash keeps exactly what the last
    /// sync covered, hard state included.
    #[test]
    fn a_crash_loses_the_unsynced_tail_and_hard_state() {
        let mut store = MemLogStore::new_member(&[1, 2, 3]);
        store
            .append(&[entry(2, 1, b"a"), entry(3, 1, b"b")])
            .unwrap();
        let mut hs = store.hard_state();
        hs.term = 2;
        hs.vote = 3;
        store.set_hard_state(&hs);
        store.sync();
        store.append(&[entry(4, 2, b"c")]).unwrap();
        hs.commit = 3;
        hs.term = 3;
        store.set_hard_state(&hs);
        assert_eq!(store.term(4).unwrap(), 2, "readable before it is durable");
        store.crash();
        assert_eq!(store.live_bounds(), (2, 3));
        let state = store.initial_state().unwrap();
        assert_eq!((state.hard_state.term, state.hard_state.vote), (2, 3));
        assert_eq!(state.hard_state.commit, 1);
        assert_eq!(state.conf_state.voters, [1, 2, 3]);
        assert!(matches!(
            store.term(4),
            Err(raft::Error::Store(StorageError::Unavailable))
        ));
    }

    /// A conflicting suffix is replaced, and the cut survives a crash; a
    /// cut into the committed prefix is refused.
    #[test]
    fn an_overlapping_append_replaces_the_suffix_but_never_the_committed() {
        let mut store = MemLogStore::new_member(&[1, 2, 3]);
        store
            .append(&[entry(2, 1, b"a"), entry(3, 1, b"b"), entry(4, 1, b"c")])
            .unwrap();
        store.sync();
        store.append(&[entry(3, 2, b"x")]).unwrap();
        assert_eq!(terms(&store), [1, 2]);
        store.crash();
        assert_eq!(terms(&store), [1], "the cut is durable, its new entry not");
        let mut hs = store.hard_state();
        hs.commit = 2;
        store.set_hard_state(&hs);
        assert_eq!(
            store.append(&[entry(2, 3, b"y")]),
            Err(StoreError::CutCommitted {
                first_new: 2,
                commit: 2
            })
        );
        assert_eq!(
            store.append(&[entry(5, 3, b"y")]),
            Err(StoreError::Gap {
                first_new: 5,
                last: 2
            })
        );
    }

    /// An installed snapshot restarts the log after its index, and is lost
    /// by a crash before the sync.
    #[test]
    fn a_snapshot_replaces_the_log_once_synced() {
        let mut store = MemLogStore::new_empty();
        let mut snapshot = Snapshot::default();
        snapshot.mut_metadata().index = 7;
        snapshot.mut_metadata().term = 2;
        snapshot.mut_metadata().mut_conf_state().voters = vec![1, 2];
        store.install_snapshot(&snapshot);
        assert_eq!(store.live_bounds(), (8, 7));
        assert_eq!(store.term(7).unwrap(), 2);
        store.crash();
        assert_eq!(store.live_bounds(), (1, 0), "not synced: gone");
        store.install_snapshot(&snapshot);
        store.sync();
        store.append(&[entry(8, 2, b"a")]).unwrap();
        store.crash();
        assert_eq!(store.live_bounds(), (8, 7));
        assert_eq!(store.snapshot(0, 0).unwrap().get_metadata().index, 7);
        assert_eq!(store.initial_state().unwrap().conf_state.voters, [1, 2]);
    }
}
