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
//! The dedup window's data structures live in [`dedup`]; the snapshot of
//! durable groups' committed offsets, its codec, load and commit, in
//! [`offsets`].
//!
//! **Seams.** A partition is generic over its [`Storage`] and its
//! [`Clock`], and reads the time only through the clock (batch timestamps,
//! the dedup window's age), so that `sim_tests` runs it, crashes and all,
//! on the simulated storage and clock. The shard uses the defaults,
//! `DmaStorage` and `SystemClock`.

mod dedup;
#[cfg(test)]
mod group_replica_sim;
mod offsets;
pub mod replica;
pub mod replica_disk_full;
mod replica_metrics;
pub mod replica_move;
pub mod replica_offsets;
pub mod replica_repair;
#[cfg(test)]
mod replica_sim;
#[cfg(test)]
pub(crate) mod replica_sim_support;
#[cfg(test)]
mod sim_tests;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use hadron_engine::log::batch::{
    BATCH_HEADER_BYTES, BATCH_RECORDS_MAX, Batches, RECORD_PREFIX_BYTES,
};
use hadron_engine::notify::Notify;
use hadron_engine::storage::Storage;
use hadron_engine::storage::dma::DmaStorage;
use hadron_engine::{Log, LogConfig};
use hadron_wire::Limits;

use super::clock::{Clock, SystemClock};
use super::error::{Error, LogName};
use super::group::GroupPartition;

pub use dedup::DedupLimits;
use dedup::{Claim, Dedup, dedup_key};
pub use offsets::GROUP_NAME_BYTES_MAX;
use offsets::offsets_batch_bytes_max;
use replica::{Replica, ReplicaSpec};

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

/// What the appends of a publish did: each event's offset (0 for those not
/// appended), the first and last offsets appended, and the first failure.
#[derive(Debug)]
struct RecordedAppends {
    offsets: Vec<u64>,
    first_last: Option<(u64, u64)>,
    failure: Option<Error>,
}

/// A partition owned by this shard, on storage `S`, reading the time from
/// `C`.
pub struct Partition<S: Storage = DmaStorage, C: Clock = SystemClock> {
    /// Stream name.
    pub stream: String,
    /// Partition index.
    pub partition: u32,
    /// The event log (shared with its Raft store when replicated).
    pub log: Rc<Log<S>>,
    /// Its Raft group on this node, when the stream is replicated.
    pub replica: Option<Rc<Replica<S, C>>>,
    /// Signalled after every append completes.
    pub appended: Notify,
    /// Consumer groups reading this partition.
    pub groups: RefCell<BTreeMap<String, Rc<GroupPartition<C>>>>,
    dedup: RefCell<Dedup>,
    /// Changed by an apply (`set_dedup_limits`).
    dedup_limits: Cell<DedupLimits>,
    /// The dedup key function: `dedup_key`, or a weak one in tests that
    /// need collisions.
    key_of: fn(&str, &str) -> u64,
    limits: Limits,
    /// The durable groups' offsets log (shared with its Raft store when
    /// replicated).
    offsets: Rc<Log<S>>,
    /// The offsets log's Raft group on this node, when the stream is
    /// replicated (`replica_offsets.rs`).
    pub offsets_replica: Option<Rc<Replica<S, C>>>,
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
    /// Where every time the partition reads comes from.
    clock: C,
    /// Events this partition stored for publishes since it was opened, and
    /// their bytes (duplicates not counted), for the metrics.
    published: Cell<PublishedTotals>,
}

/// What a partition's publishes stored since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublishedTotals {
    /// Events appended.
    pub events: u64,
    /// Their bytes (the events as received, without batch framing).
    pub bytes: u64,
}

impl<S: Storage, C: Clock> std::fmt::Debug for Partition<S, C> {
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
pub fn report_recovery<S: Storage>(what: &str, log: &Log<S>) {
    let recovery = log.recovery();
    if let Some(cut) = &recovery.cut {
        tracing::warn!("{what}: {cut}");
    }
    if let Some(damage) = &recovery.damage {
        tracing::error!("{what}: {damage}");
    }
}

impl<S: Storage + Clone, C: Clock> Partition<S, C> {
    /// Opens (recovering) the partition's logs and rebuilds its dedup
    /// window; its offsets log takes snapshots of up to `groups_max` groups.
    #[cfg(test)]
    #[expect(clippy::too_many_arguments, reason = "each is a separate setting")]
    pub async fn open(
        storage: &S,
        clock: C,
        data_dir: &Path,
        stream: &str,
        partition: u32,
        log_config: LogConfig,
        dedup_limits: DedupLimits,
        limits: Limits,
        groups_max: u32,
    ) -> Result<Partition<S, C>, String> {
        Self::open_as(
            storage,
            clock,
            data_dir,
            stream,
            partition,
            (log_config, dedup_limits, limits, groups_max),
            false,
        )
        .await
    }

    /// [`Partition::open`] of a partition its caller knows is replicated
    /// (`replicated`) or not: a replicated one's logs open as
    /// `replica_repair::open_log_as` says, even before they record a
    /// configuration.
    pub async fn open_as(
        storage: &S,
        clock: C,
        data_dir: &Path,
        stream: &str,
        partition: u32,
        (log_config, dedup_limits, limits, groups_max): (LogConfig, DedupLimits, Limits, u32),
        replicated: bool,
    ) -> Result<Partition<S, C>, String> {
        let dir = partition_dir(data_dir, stream, partition);
        // A replicated log damaged anywhere is cut and refilled from the
        // leader (`replica_repair.rs`); a single node's opens as before.
        let log = replica_repair::open_log_as(storage, &dir.join("log"), log_config, replicated)
            .await
            .map_err(|e| format!("stream {stream} partition {partition}: {e}"))?;
        report_recovery(&format!("stream {stream} partition {partition}"), &log);
        // Under `fsync: never` or an interval, a publish is acknowledged
        // without waiting for any write: the shard starts each write in a
        // task of its own when one is due (see `Shard::handle`).
        log.set_write_behind(true);
        let offsets_batch_bytes_max = offsets_batch_bytes_max(groups_max);
        let offsets_config = LogConfig {
            segment_preallocate_bytes: log_config.segment_preallocate_bytes,
            ..offsets::log_config(groups_max)
        };
        let offsets =
            replica_repair::open_log_as(storage, &dir.join("groups"), offsets_config, replicated)
                .await
                .map_err(|e| format!("stream {stream} partition {partition} group offsets: {e}"))?;
        report_recovery(
            &format!("stream {stream} partition {partition} group offsets"),
            &offsets,
        );
        let p = Partition {
            stream: stream.to_string(),
            partition,
            log: Rc::new(log),
            replica: None,
            appended: Notify::default(),
            groups: RefCell::new(BTreeMap::new()),
            dedup: RefCell::new(Dedup::starting_at(0)),
            dedup_limits: Cell::new(dedup_limits),
            key_of: dedup_key,
            limits,
            offsets: Rc::new(offsets),
            offsets_replica: None,
            stored_offsets: RefCell::new(HashMap::new()),
            last_snapshot: RefCell::new(BTreeMap::new()),
            offsets_batch_bytes_max,
            committing: Cell::new(false),
            committed: Notify::default(),
            clock,
            published: Cell::default(),
        };
        p.load_offsets().await?;
        p.rebuild_dedup().await?;
        Ok(p)
    }
}

impl<S: Storage, C: Clock> Partition<S, C> {
    /// Makes the partition a replica of its Raft group (before it serves
    /// anything): its log becomes the group's log.
    ///
    /// Open such a partition with a dedup window of 0 and pass the stream's
    /// limits here: the window is rebuilt by each new leader (from a log
    /// verified, and repaired when damaged, first), not at open.
    /// `offsets_spec` makes the durable groups' offsets log a Raft group
    /// too (`replica_offsets.rs`); without it they stay on this node.
    pub async fn replicate(
        &mut self,
        spec: ReplicaSpec,
        offsets_spec: Option<ReplicaSpec>,
        storage: &S,
        dedup: DedupLimits,
    ) -> Result<(), String>
    where
        S: Clone,
    {
        self.dedup_limits.set(dedup);
        // Retention applies as on a single node: a follower behind the
        // leader's deleted segments installs a snapshot descriptor and
        // restarts its log after it (docs/replication.md section 8).
        let named = |e: String| {
            format!(
                "stream {} partition {} replication: {e}",
                self.stream, self.partition
            )
        };
        // A damaged log is cut and refilled from the leader, the replica
        // abstaining from elections meanwhile (`replica_repair.rs`).
        let recovery = replica_repair::repair_at_open(storage, &self.log)
            .await
            .map_err(named)?
            .map(|target| (storage.clone(), target));
        let replica = Replica::open(self.log.clone(), spec, self.clock.clone(), recovery)
            .await
            .map_err(|e| {
                format!(
                    "stream {} partition {} replication: {e}",
                    self.stream, self.partition
                )
            })?;
        self.replica = Some(Rc::new(replica));
        // The simulations of the partition and its pipelines run no
        // consumer groups, and no offsets group.
        let Some(offsets_spec) = offsets_spec else {
            return Ok(());
        };
        let recovery = replica_repair::repair_at_open(storage, &self.offsets)
            .await
            .map_err(named)?
            .map(|target| (storage.clone(), target));
        let offsets = Replica::open(
            self.offsets.clone(),
            offsets_spec,
            self.clock.clone(),
            recovery,
        )
        .await
        .map_err(|e| {
            format!(
                "stream {} partition {} group offsets replication: {e}",
                self.stream, self.partition
            )
        })?;
        self.offsets_replica = Some(Rc::new(offsets));
        Ok(())
    }

    /// Adopts an applied stream's retention. Returns whether it changed.
    pub fn set_retention(&self, retention: hadron_engine::Retention) -> bool {
        if self.log.retention() == retention {
            return false;
        }
        self.log.set_retention(retention);
        true
    }

    /// The end of what readers may read: the high watermark when
    /// replicated, else what the log shows.
    pub fn readable_end(&self) -> u64 {
        match &self.replica {
            Some(r) => r.high_watermark().min(self.log.visible_offset()),
            None => self.log.visible_offset(),
        }
    }

    /// Refuses a request this node cannot serve for a replicated
    /// partition (not its leader, or replication stopped).
    pub fn check_serving(&self) -> Result<(), Error> {
        match self
            .replica
            .as_ref()
            .and_then(|r| r.refusal(&self.stream, self.partition))
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Appends one batch of `records`: to the log, or through Raft when
    /// replicated (answered at commit). Returns its first and last offsets.
    async fn append_batch(&self, records: &[&[u8]], now: u64) -> Result<(u64, u64), Error> {
        let Some(replica) = &self.replica else {
            return match self.log.append(records, now).await {
                Ok(a) => Ok((a.base_offset, a.last_offset)),
                Err(e) => Err(Error::append(
                    LogName::Partition {
                        stream: self.stream.clone(),
                        partition: self.partition,
                    },
                    e,
                )),
            };
        };
        let proposal = replica.propose_batch(replica::encode_batch(records, now));
        let answer = proposal.await.unwrap_or_else(|_| {
            Err(crate::replication::ProposeError::Stopped(
                "the group dropped the proposal".into(),
            ))
        });
        match answer {
            Ok(c) => Ok((c.base_offset, c.base_offset + records.len() as u64 - 1)),
            Err(e) => Err(replica.proposal_error(&self.stream, self.partition, e)),
        }
    }

    /// Waits until `offset` is committed (below the high watermark), for a
    /// retry that found its events already in a new leader's log.
    async fn wait_committed(&self, offset: u64) -> Result<(), Error> {
        let Some(replica) = &self.replica else {
            return Ok(());
        };
        loop {
            let generation = self.appended.generation();
            if replica.high_watermark() > offset {
                return Ok(());
            }
            self.check_serving()?;
            self.appended.changed_since(generation).await;
        }
    }

    /// The clock the partition reads the time from (its groups share it).
    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// What publishes stored here since the partition was opened.
    pub fn published(&self) -> PublishedTotals {
        self.published.get()
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
        let since = self
            .clock
            .now_ms()
            .saturating_sub(self.dedup_limits.get().window_ms);
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
            let read = match self.log.read(offset, 1 << 20).await {
                Ok(read) => read,
                // Retention (or a restart after a snapshot) moved the
                // log's start meanwhile: what it deleted left the window.
                Err(hadron_engine::log::ReadError::BeforeStart { start, .. }) if start > offset => {
                    offset = start;
                    continue;
                }
                Err(e) => return Err(format!("rebuilding dedup window: {e}")),
            };
            for batch in Batches::new(&read.bytes) {
                let batch = batch.map_err(|e| format!("rebuilding dedup window: {e}"))?;
                if batch.header.kind.is_control() {
                    continue;
                }
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
    pub async fn publish<E: AsRef<[u8]>>(&self, events: &[E]) -> Result<Published, Error> {
        if events.is_empty() {
            return Err(Error::EmptyPublish);
        }
        self.check_serving()?;
        let keys = self.keys_of(events)?;
        let now = self.clock.now_ms();
        // Claim the keys, waiting out concurrent publishes of the same ones.
        let (mut fresh, mut earlier) = loop {
            let generation = self.appended.generation();
            if let Some(claimed) = self.claim(&keys, now) {
                break claimed;
            }
            self.appended.changed_since(generation).await;
        };
        let untracked = self.confirm_duplicates(events, &mut earlier).await;
        if !untracked.is_empty() {
            fresh.extend(&untracked);
            fresh.sort_unstable();
        }
        let chunks = self.batch_chunks(events, &fresh);
        let appends = chunks.iter().map(|chunk| {
            let records: Vec<&[u8]> = chunk.iter().map(|&i| events[i].as_ref()).collect();
            async move {
                let appended = self.append_batch(&records, now).await;
                if appended.is_ok() {
                    self.count_published(&records);
                }
                appended
            }
        });
        let outcomes = futures::future::join_all(appends).await;
        let recorded = self.record_appends(&chunks, outcomes, &keys, &untracked, events.len(), now);
        self.appended.notify_all();
        if let Some(e) = recorded.failure {
            return Err(e);
        }
        let offsets = recorded.offsets;
        let mut results = Vec::with_capacity(events.len());
        for (i, e) in earlier.iter().enumerate() {
            results.push(match e {
                None => (offsets[i], false),
                Some(Ok(o)) => (*o, true),
                Some(Err(j)) => (offsets[*j], true),
            });
        }
        let (first_offset, last_offset) = recorded.first_last.unwrap_or((0, 0));
        // Duplicates found in a new leader's log may not be committed yet.
        if let Some(&(highest, _)) = results.iter().filter(|r| r.1).max() {
            self.wait_committed(highest).await?;
        }
        Ok(Published {
            first_offset,
            last_offset,
            results,
        })
    }

    /// Counts the events of one stored batch in `published`.
    fn count_published(&self, records: &[&[u8]]) {
        let mut totals = self.published.get();
        totals.events += records.len() as u64;
        totals.bytes += records.iter().map(|r| r.len() as u64).sum::<u64>();
        self.published.set(totals);
    }

    /// The dedup key of each event of a publish.
    fn keys_of<E: AsRef<[u8]>>(&self, events: &[E]) -> Result<Vec<u64>, Error> {
        let mut keys = Vec::with_capacity(events.len());
        for (i, bytes) in events.iter().enumerate() {
            // Verifies the whole event; only the key's fields are read.
            let event = hadron_wire::verify_event(bytes.as_ref(), &self.limits)
                .map_err(|reason| Error::InvalidEvent { index: i, reason })?;
            keys.push((self.key_of)(event.source(), event.id()));
        }
        Ok(keys)
    }

    /// Confirms each duplicate `claim` found against the (source, id) it
    /// stands for, turning the ones whose key merely collides back into
    /// events to append. Returns those events, which the window does not
    /// track.
    async fn confirm_duplicates<E: AsRef<[u8]>>(
        &self,
        events: &[E],
        earlier: &mut [Option<Result<u64, usize>>],
    ) -> Vec<usize> {
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
                    Err(why) => {
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
        untracked
    }

    /// The events to append (`fresh`, indices into `events`) in chunks of
    /// one batch each that fit the log's batch limits; the chunks are
    /// enqueued back to back and share the group commit.
    fn batch_chunks<E: AsRef<[u8]>>(&self, events: &[E], fresh: &[usize]) -> Vec<Vec<usize>> {
        let batch_max = self.log.config().batch_bytes_max;
        let mut chunks: Vec<Vec<usize>> = Vec::new();
        let mut bytes = BATCH_HEADER_BYTES;
        for &i in fresh {
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
        chunks
    }

    /// Records in the dedup window what each chunk's append did: the keys
    /// of a stored chunk at their offsets, the claims of a failed one taken
    /// back; then expires the window back within its cap.
    fn record_appends(
        &self,
        chunks: &[Vec<usize>],
        outcomes: Vec<Result<(u64, u64), Error>>,
        keys: &[u64],
        untracked: &[usize],
        events: usize,
        now: u64,
    ) -> RecordedAppends {
        let mut offsets = vec![0u64; events];
        let mut first_last: Option<(u64, u64)> = None;
        let mut failure = None;
        let mut dedup = self.dedup.borrow_mut();
        for (chunk, outcome) in chunks.iter().zip(outcomes) {
            match outcome {
                Ok((base_offset, last_offset)) => {
                    let tracking = self.dedup_limits.get().window_ms > 0;
                    for (n, &i) in chunk.iter().enumerate() {
                        let offset = base_offset + n as u64;
                        offsets[i] = offset;
                        if tracking && !untracked.contains(&i) {
                            dedup.insert_done(keys[i], offset);
                        }
                    }
                    if tracking {
                        dedup.insert_batch(base_offset, chunk.len() as u64, now);
                    }
                    let (lo, hi) = first_last.unwrap_or((base_offset, last_offset));
                    first_last = Some((lo.min(base_offset), hi.max(last_offset)));
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
        RecordedAppends {
            offsets,
            first_last,
            failure,
        }
    }

    /// Events from `offset` on, about `max_bytes` of them (at least one when
    /// there is one, whatever its size), and the offset to read next.
    pub async fn fetch(
        &self,
        offset: u64,
        max_bytes: u32,
    ) -> Result<(u64, Vec<(u64, Vec<u8>)>), Error> {
        self.check_serving()?;
        self.read_committed(offset, max_bytes).await
    }

    /// [`Partition::fetch`] on any replica: what this node's log holds
    /// below the high watermark it knows (a pipeline run led here reads
    /// its source so, wherever the partition's leader is).
    pub async fn read_committed(
        &self,
        offset: u64,
        max_bytes: u32,
    ) -> Result<(u64, Vec<(u64, Vec<u8>)>), Error> {
        let end = self.readable_end();
        if self.replica.is_some() && offset >= end {
            // Not committed yet (or beyond the end): nothing to read, as
            // at the end of an unreplicated log.
            return Ok((offset, Vec::new()));
        }
        let read = self.log.read_records(offset, max_bytes as usize).await?;
        let records: Vec<(u64, Vec<u8>)> = read
            .records
            .into_iter()
            .filter(|(o, _)| *o < end)
            .map(|(o, record)| (o, record.to_vec()))
            .collect();
        Ok((read.next_offset.min(end), records))
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
    async fn names_at(&self, offset: u64) -> Result<(String, String), Error> {
        let bytes = self.event_at(offset).await?;
        let event = hadron_wire::verify_event(&bytes, &self.limits).map_err(|reason| {
            Error::StoredEventInvalid {
                stream: self.stream.clone(),
                partition: self.partition,
                offset,
                reason,
            }
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
    pub async fn event_at(&self, offset: u64) -> Result<Vec<u8>, Error> {
        let (_, records) = self.read_committed(offset, 1).await?;
        match records.into_iter().next() {
            Some((o, bytes)) if o == offset => Ok(bytes),
            _ => Err(Error::NoEventAt { offset }),
        }
    }
}

#[cfg(test)]
mod tests {
    use hadron_engine::Durability;

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
                    SystemClock,
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
}
