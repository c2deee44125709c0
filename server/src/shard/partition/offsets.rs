//! The committed offsets of a partition's durable consumer groups: the
//! snapshot record's codec, its log, load on open, commit, and the
//! `groupsMax` admission that keeps every snapshot inside one batch.
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

use std::collections::{BTreeMap, HashMap};

use hadron_engine::log::batch::{
    BATCH_BYTES_MAX, BATCH_HEADER_BYTES, BatchKind, Batches, RECORD_PREFIX_BYTES,
};
use hadron_engine::log::{SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN};
use hadron_engine::storage::{IO_ALIGN_BYTES, Storage};
use hadron_engine::{Durability, LogConfig, Retention};

use super::Partition;
use crate::shard::clock::Clock;
use crate::shard::error::{Error, Limit};

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

/// The config of the group-offset log of a partition that holds at most
/// `groups_max` groups: every snapshot durable at once, and two segments'
/// worth kept besides the active one.
pub(super) fn log_config(groups_max: u32) -> LogConfig {
    let offsets_batch_bytes_max = offsets_batch_bytes_max(groups_max);
    let offsets_segment_bytes = offsets_segment_bytes(groups_max);
    LogConfig {
        segment_bytes: offsets_segment_bytes,
        segment_preallocate_bytes: hadron_engine::log::SEGMENT_PREALLOCATE_BYTES_DEFAULT,
        durability: Durability::Always,
        retention: Retention {
            max_age_ms: None,
            max_bytes: Some(2 * offsets_segment_bytes),
        },
        batch_bytes_max: offsets_batch_bytes_max,
        pending_bytes_max: offsets_batch_bytes_max.max(64 << 10),
        write_bytes_max: 64 << 10,
        index_interval_bytes: 4096,
    }
}

impl<S: Storage, C: Clock> Partition<S, C> {
    /// Loads the last offsets snapshot: the last batch of the offsets log,
    /// read with the newest segment's size as the window so that the whole
    /// batch comes back whatever its size.
    pub(super) async fn load_offsets(&self) -> Result<(), String> {
        let next = self.offsets.visible_offset();
        // None written, or none here since the log restarted past them (a
        // follower that installed a snapshot descriptor: its log starts at
        // the leader's first offset, and the entries after it are still
        // coming): nothing to load, as for a new group.
        if next <= self.offsets.stats().start_offset {
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
            // Raft's own entries (a replicated partition's) are no snapshots.
            if batch.header.kind != BatchKind::Events {
                continue;
            }
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

    /// `group`'s offset in the last snapshot written (or loaded).
    pub fn persisted_offset(&self, group: &str) -> Option<u64> {
        self.last_snapshot.borrow().get(group).copied()
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
    pub fn admit_group(&self, name: &str, groups_max: u32) -> Result<(), Error> {
        if self.stored_offsets.borrow().contains_key(name) {
            return Ok(());
        }
        let count = self.groups_count();
        if count >= groups_max as usize {
            return Err(Limit::Groups {
                stream: self.stream.clone(),
                partition: self.partition,
                group: name.to_owned(),
                held: count,
                max: groups_max,
            }
            .into());
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
        // A replicated partition's groups commit where it leads.
        if self.offsets_replica.is_some() && self.check_serving().is_err() {
            return Ok(());
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
        let result = if self.offsets_replica.is_some() {
            self.propose_offsets(record).await
        } else {
            self.offsets
                .append(&[record], self.clock.now_ms())
                .await
                .map(|_| true)
                .map_err(|e| e.to_string())
        };
        self.committing.set(false);
        self.committed.notify_all();
        if !result.map_err(|e| format!("committing group offsets: {e}"))? {
            // Not proposed or not committed: the next interval tries again.
            return Ok(());
        }
        *self.last_snapshot.borrow_mut() = snapshot;
        let _ = self.offsets.apply_retention(self.clock.now_ms()).await;
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
    use std::path::{Path, PathBuf};
    use std::rc::Rc;

    use hadron_engine::storage::dma::DmaStorage;
    use hadron_wire::{ErrorCode, Limits};

    use super::super::{DedupLimits, partition_dir};
    use super::*;
    use crate::shard::group::{Deliveries, GroupPartition};

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
            crate::shard::clock::SystemClock,
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
        let deliveries = Rc::new(Deliveries::default());
        let mut groups = p.groups.borrow_mut();
        for (i, name) in names.iter().enumerate() {
            let g = GroupPartition::new(
                name,
                true,
                offset(i),
                std::time::Duration::from_secs(1),
                deliveries.clone(),
                crate::shard::clock::SystemClock,
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
                let e = p.admit_group("one-more", groups_max).unwrap_err();
                assert_eq!(e.code(), ErrorCode::LimitExceeded);
                let message = e.to_string();
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
                let e = p.admit_group("d", 3).unwrap_err();
                assert_eq!(e.code(), ErrorCode::LimitExceeded);
                let message = e.to_string();
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
}
