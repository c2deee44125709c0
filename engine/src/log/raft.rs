//! The Raft read side of a log (docs/replication.md section 4, step 2 of
//! section 15): each record batch of version 2 is one Raft entry, numbered
//! by its `raft_index`, so the log answers Raft's questions by index:
//! [`Log::first_index`], [`Log::last_index`], [`Log::term`] and
//! [`Log::entries`], the latter giving each batch's bytes unchanged with
//! its (term, index, kind).
//!
//! **The index.** Sparse index version 2 (term entries) is not built yet
//! (§15 step 1), so a segment's batches are found by a per-segment table in
//! memory, one [`Slot`] (position, length, term, kind: 24 bytes) per batch,
//! slot `i` holding index `base_index + i` (indexes are consecutive within
//! a log). A segment begun by this process fills its table as batches are
//! appended; a segment found at open has none until [`Log::load_raft_index`]
//! scans it (every segment, once, after open: a read of the whole log,
//! which the sparse index v2 will replace by reading term runs from the
//! mapped index). Until then the lookups see only the segments loaded.
//! Retention drops a segment's table with the segment.
//!
//! **Visibility.** Raft reads entries as soon as they are appended, before
//! they are durable (its own persisted index tells it what is on disk), so
//! these reads see every appended batch, under every durability mode.

use bytes::Bytes;

use super::batch::{self, BatchError, BatchKind};
use super::meta::{CONF_IDS_MAX, RAFT_TERM_MAX, RaftMeta};
use super::{AppendError, Durability, Log, ReadError, SCAN_CHUNK_BYTES};
use crate::storage::Storage;

/// One batch of a segment, as its Raft table records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Slot {
    /// Byte position of the batch in its segment.
    pub(super) position: u64,
    /// Its length, header included.
    pub(super) bytes: u32,
    /// Its kind.
    pub(super) kind: BatchKind,
    /// Its term.
    pub(super) term: u64,
}

/// One Raft entry read from the log: a batch, byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftBatch {
    /// Its Raft index.
    pub index: u64,
    /// Its term.
    pub term: u64,
    /// Events or a control entry.
    pub kind: BatchKind,
    /// The whole batch, header included.
    pub bytes: Bytes,
}

/// Why [`Log::entries`] could not answer.
#[derive(Debug)]
pub enum RaftReadError {
    /// `index` is below the first index the log holds (retention deleted
    /// it, or it lies before the Raft log).
    Compacted { index: u64, first: u64 },
    /// `index` is beyond the last index appended.
    Unavailable { index: u64, last: u64 },
    /// Reading the segment failed, or it does not hold what its table says.
    Read(ReadError),
}

impl std::fmt::Display for RaftReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RaftReadError::Compacted { index, first } => write!(
                f,
                "raft index {index} is below the log's first index {first}"
            ),
            RaftReadError::Unavailable { index, last } => write!(
                f,
                "raft index {index} is beyond the log's last index {last}"
            ),
            RaftReadError::Read(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for RaftReadError {}

impl From<ReadError> for RaftReadError {
    fn from(e: ReadError) -> Self {
        RaftReadError::Read(e)
    }
}

/// Why [`Log::append_entry`] refused a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RaftAppendError {
    /// The bytes are not one valid batch.
    Invalid(BatchError),
    /// A batch of version 1 (it carries no term or index).
    NotVersion2,
    /// Its index is not the log's next, or its term is below the log's.
    OutOfSequence {
        index: u64,
        term: u64,
        next_index: u64,
        log_term: u64,
    },
    /// Its base offset is not the log's next offset.
    WrongOffset { base_offset: u64, next_offset: u64 },
    /// The log refuses writes (size, poisoned, damaged).
    Append(AppendError),
    /// A cut this version does not make (the reason says which).
    Unsupported(&'static str),
    /// Storage failed while cutting.
    Io(String),
    /// A term above [`RAFT_TERM_MAX`], which `log.meta` cannot record.
    TermOverMax { term: u64 },
}

impl std::fmt::Display for RaftAppendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RaftAppendError::Invalid(e) => write!(f, "raft entry is not a valid batch: {e}"),
            RaftAppendError::NotVersion2 => {
                write!(f, "raft entry is a version-1 batch, without term or index")
            }
            RaftAppendError::OutOfSequence {
                index,
                term,
                next_index,
                log_term,
            } => write!(
                f,
                "raft entry at index {index} term {term} does not follow the log (next index {next_index}, term {log_term})"
            ),
            RaftAppendError::WrongOffset {
                base_offset,
                next_offset,
            } => write!(
                f,
                "raft entry has base offset {base_offset}, the log's next offset is {next_offset}"
            ),
            RaftAppendError::Append(e) => write!(f, "{e}"),
            RaftAppendError::Unsupported(why) => write!(f, "not supported: {why}"),
            RaftAppendError::Io(why) => write!(f, "raft log cut failed: {why}"),
            RaftAppendError::TermOverMax { term } => write!(
                f,
                "raft term {term} is over the largest log.meta records ({RAFT_TERM_MAX})"
            ),
        }
    }
}

impl std::error::Error for RaftAppendError {}

impl<S: Storage> Log<S> {
    /// Appends a batch given whole (a Raft entry as the leader encoded it:
    /// its header carries its term and index), unchanged, after checking
    /// it: valid, version 2, at the log's next index and offset, at a term
    /// not below the log's, within `batch_bytes_max`. Readable at once;
    /// durable once [`Log::durable_next_index`] passes it (see
    /// [`Log::sync_index`]). Returns its index. Never awaits: the
    /// `pending_bytes_max` backpressure of [`Log::append`] is left to the
    /// caller (Raft's `max_uncommitted_size`, section 3).
    pub fn append_entry(&self, bytes: &[u8]) -> Result<u64, RaftAppendError> {
        let header = batch::verify(bytes).map_err(RaftAppendError::Invalid)?;
        if header.version != batch::BATCH_VERSION {
            return Err(RaftAppendError::NotVersion2);
        }
        if header.batch_bytes() != bytes.len() {
            return Err(RaftAppendError::Invalid(BatchError::BadCounts));
        }
        if header.term > RAFT_TERM_MAX {
            return Err(RaftAppendError::TermOverMax { term: header.term });
        }
        if bytes.len() > self.config.batch_bytes_max {
            return Err(RaftAppendError::Append(AppendError::TooLarge {
                bytes: bytes.len(),
                max: self.config.batch_bytes_max,
            }));
        }
        if let Some(damage) = &self.recovery.damage {
            let why = damage.to_string().into();
            return Err(RaftAppendError::Append(AppendError::Damaged(why)));
        }
        {
            let mut st = self.state.borrow_mut();
            if let Some(why) = &st.poisoned {
                return Err(RaftAppendError::Append(AppendError::Poisoned(why.clone())));
            }
            if header.raft_index != st.next_index || header.term < st.term {
                return Err(RaftAppendError::OutOfSequence {
                    index: header.raft_index,
                    term: header.term,
                    next_index: st.next_index,
                    log_term: st.term,
                });
            }
            if header.base_offset != st.next_offset {
                return Err(RaftAppendError::WrongOffset {
                    base_offset: header.base_offset,
                    next_offset: st.next_offset,
                });
            }
            st.term = header.term;
        }
        self.enqueue_batch(
            bytes.len(),
            header.offsets_taken(),
            header.first_timestamp_ms,
            header.kind,
            |buf, stamp| {
                debug_assert_eq!(
                    (stamp.raft_index, stamp.term, stamp.base_offset),
                    (header.raft_index, header.term, header.base_offset)
                );
                buf.extend_from_slice(bytes);
            },
        );
        Ok(header.raft_index)
    }

    /// The index after the last durable batch (batches below it are on
    /// disk); [`Log::first_index`] when none of the loaded ones is known
    /// durable.
    pub fn durable_next_index(&self) -> u64 {
        let st = self.state.borrow();
        for seg in st.segments.values().rev() {
            let Some(slots) = &seg.raft else { continue };
            let n = slots.partition_point(|s| s.position + u64::from(s.bytes) <= seg.durable_end);
            if n > 0 {
                return seg.base_index + n as u64;
            }
        }
        drop(st);
        self.first_index()
    }

    /// Waits until every batch below index `next` is durable, leading
    /// flush rounds as [`Log::sync`] does. Only under
    /// [`Durability::Always`], where a written batch is durable: control
    /// batches take no offsets, so the offset-based syncs of the relaxed
    /// modes would not see one at the tail.
    pub async fn sync_index(&self, next: u64) -> Result<(), AppendError> {
        if self.config.durability != Durability::Always {
            return Err(AppendError::Unsupported(
                "Raft index syncs need durability Always (control batches take no offsets)",
            ));
        }
        // Nothing beyond the last batch can become durable.
        let next = next.min(self.next_index());
        let mut tried = false;
        loop {
            if self.durable_next_index() >= next {
                return Ok(());
            }
            if let Some(why) = self.poisoned() {
                return Err(AppendError::Poisoned(why));
            }
            // A round found the disk full: the batches stay staged, and the
            // caller retries (see "Disk full" in `log/append.rs`).
            if let (true, Some(full)) = (tried, self.disk_full()) {
                return Err(full);
            }
            self.flush_round(true).await;
            tried = true;
        }
    }

    /// Raft's state as `log.meta` last recorded it (all zero for a log that
    /// never recorded any).
    pub fn raft_meta(&self) -> RaftMeta {
        self.meta.borrow().current.raft.clone()
    }

    /// Records Raft's hard state and conf state in `log.meta`, durably
    /// (its two-slot write), keeping the log's own fields of the area
    /// (`start_index`, `start_term`, `active_base_index`). The conf state's
    /// lists hold at most [`CONF_IDS_MAX`] ids in all.
    pub async fn write_raft_state(&self, state: &RaftMeta) -> std::io::Result<()> {
        let lists = [
            &state.voters,
            &state.learners,
            &state.voters_outgoing,
            &state.learners_next,
        ];
        let total: usize = lists.iter().map(|l| l.len()).sum();
        if total > CONF_IDS_MAX {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("a conf state of {total} ids; log.meta holds at most {CONF_IDS_MAX}"),
            ));
        }
        self.update_meta(|m| {
            let keep = (
                m.raft.start_index,
                m.raft.start_term,
                m.raft.active_base_index,
            );
            m.raft = state.clone();
            (
                m.raft.start_index,
                m.raft.start_term,
                m.raft.active_base_index,
            ) = keep;
            self.raise_watermark(m);
        })
        .await
    }

    /// Moves `m`'s durable watermark up to what the active segment holds
    /// durable now, as [`Log::checkpoint`] does: a Raft log records it with
    /// each hard state, so that whatever a replica acknowledged lies below
    /// it, and damage there is told from a torn tail (`recovery`). Never on
    /// a damaged or poisoned log; never lowers it (a cut lowers it first).
    fn raise_watermark(&self, m: &mut super::meta::LogMeta) {
        if self.damage().is_some() {
            return;
        }
        let st = self.state.borrow();
        if st.poisoned.is_some() {
            return;
        }
        let Some(seg) = st
            .segments
            .values()
            .next_back()
            .filter(|s| s.file.is_some())
        else {
            return;
        };
        if m.active_base == Some(seg.base)
            && seg.durable_end >= m.durable_position
            && seg.durable_next >= m.durable_next
        {
            m.durable_position = seg.durable_end;
            m.durable_next = seg.durable_next;
        }
    }

    /// The Raft index of the first batch held: the first loaded segment's
    /// first version-2 batch, or [`Log::next_index`] when none is held.
    pub fn first_index(&self) -> u64 {
        let st = self.state.borrow();
        st.segments
            .values()
            .find_map(|s| match &s.raft {
                Some(slots) if !slots.is_empty() => Some(s.base_index),
                _ => None,
            })
            .unwrap_or(st.next_index)
    }

    /// The Raft index of the last batch appended (`first_index() - 1`
    /// when the log holds none).
    pub fn last_index(&self) -> u64 {
        self.state.borrow().next_index - 1
    }

    /// The term of the batch at `index`, if a loaded segment holds it;
    /// for the index just before the first batch held, the term
    /// `log.meta` recorded for it (retention and [`Log::restart_at`] keep
    /// it), if known.
    pub fn term(&self, index: u64) -> Option<u64> {
        if let Some((_, slot)) = self.slot(index) {
            return Some(slot.term);
        }
        let m = self.meta.borrow();
        let r = &m.current.raft;
        (r.start_term > 0 && index + 1 == r.start_index && index + 1 == self.first_index())
            .then_some(r.start_term)
    }

    /// The segment (base offset) and slot of the batch at `index`.
    fn slot(&self, index: u64) -> Option<(u64, Slot)> {
        let st = self.state.borrow();
        st.segments.values().rev().find_map(|s| {
            let slots = s.raft.as_ref()?;
            let i = index.checked_sub(s.base_index)?;
            if s.base_index == 0 {
                return None;
            }
            slots
                .get(usize::try_from(i).ok()?)
                .map(|slot| (s.base, *slot))
        })
    }

    /// The batches at indexes `lo..hi`, each whole with its term, index and
    /// kind: the first always (when `lo < hi`), then more while their bytes
    /// together stay within `bytes_max` (raft-rs's `limit_size`).
    pub async fn entries(
        &self,
        lo: u64,
        hi: u64,
        bytes_max: u64,
    ) -> Result<Vec<RaftBatch>, RaftReadError> {
        let (first, last) = (self.first_index(), self.last_index());
        if lo < first {
            return Err(RaftReadError::Compacted { index: lo, first });
        }
        if hi > last + 1 {
            return Err(RaftReadError::Unavailable {
                index: hi - 1,
                last,
            });
        }
        let mut out: Vec<RaftBatch> = Vec::new();
        let mut total = 0u64;
        let mut index = lo;
        while index < hi {
            // The batches from `index` on in its segment that fit: read
            // with one read.
            let Some((base, run)) = self.run(index, hi, bytes_max, total, out.is_empty()) else {
                return Err(RaftReadError::Compacted { index, first });
            };
            let Some((start, last)) = run.first().zip(run.last()) else {
                break; // the next batch does not fit
            };
            let end = last.position + u64::from(last.bytes);
            let data = self
                .read_segment(base, start.position, end - start.position, end)
                .await?;
            for slot in &run {
                let at = (slot.position - start.position) as usize;
                let bytes = data.slice(at..(at + slot.bytes as usize).min(data.len()));
                let header = batch::verify(&bytes).map_err(|reason| ReadError::Corrupt {
                    segment: base,
                    position: slot.position,
                    reason,
                })?;
                if header.raft_index != index || header.term != slot.term {
                    let (raft_index, term) = (header.raft_index, header.term);
                    return Err(RaftReadError::Read(corrupt(
                        base,
                        slot.position,
                        BatchError::OutOfSequence { raft_index, term },
                    )));
                }
                total += u64::from(slot.bytes);
                out.push(RaftBatch {
                    index,
                    term: slot.term,
                    kind: header.kind,
                    bytes,
                });
                index += 1;
            }
            if index < hi && total >= bytes_max {
                break;
            }
        }
        Ok(out)
    }

    /// The slots of the segment holding `index`, from it on, below `hi`, that
    /// fit within `bytes_max` after `total` bytes (the first always when
    /// `first`). `None` when no loaded segment holds `index`.
    fn run(
        &self,
        index: u64,
        hi: u64,
        bytes_max: u64,
        mut total: u64,
        mut first: bool,
    ) -> Option<(u64, Vec<Slot>)> {
        let st = self.state.borrow();
        let seg = st.segments.values().rev().find(|s| {
            s.base_index > 0
                && s.raft
                    .as_ref()
                    .is_some_and(|t| (s.base_index..s.base_index + t.len() as u64).contains(&index))
        })?;
        let slots = seg.raft.as_ref()?;
        let from = (index - seg.base_index) as usize;
        let to = slots.len().min((hi - seg.base_index) as usize);
        let mut run = Vec::new();
        for slot in &slots[from..to] {
            total += u64::from(slot.bytes);
            if !first && total > bytes_max {
                break;
            }
            first = false;
            run.push(*slot);
        }
        Some((seg.base, run))
    }

    /// Builds the Raft table of every segment that has none (those found at
    /// open) by scanning its batches. Appends may run meanwhile: a segment's
    /// table is installed only once the scan reached its current end.
    pub async fn load_raft_index(&self) -> Result<(), ReadError> {
        let bases: Vec<u64> = {
            let st = self.state.borrow();
            st.segments
                .values()
                .filter(|s| s.raft.is_none())
                .map(|s| s.base)
                .collect()
        };
        for base in bases {
            self.load_segment_raft(base).await?;
        }
        Ok(())
    }

    async fn load_segment_raft(&self, base: u64) -> Result<(), ReadError> {
        let mut slots: Vec<Slot> = Vec::new();
        let mut first_index = None;
        let mut position = 0u64;
        loop {
            let end = {
                let mut st = self.state.borrow_mut();
                let Some(seg) = st.segments.get_mut(&base) else {
                    return Ok(()); // retention deleted it meanwhile
                };
                if position >= seg.end {
                    if let Some(first) = first_index {
                        seg.base_index = first;
                    }
                    seg.raft = Some(slots);
                    return Ok(());
                }
                seg.end
            };
            let want = (end - position).min(SCAN_CHUNK_BYTES as u64);
            let mut data = self.read_segment(base, position, want, end).await?;
            let mut at = 0usize;
            while at < data.len() {
                let header = match batch::parse_header(&data[at..]) {
                    Ok(h) if h.batch_bytes() <= data.len() - at => h,
                    Ok(_) | Err(BatchError::Incomplete { .. }) if at > 0 => break,
                    Ok(h) if (h.batch_bytes() as u64) <= end - position => {
                        // A batch longer than the chunk: read it whole.
                        data = self
                            .read_segment(base, position, h.batch_bytes() as u64, end)
                            .await?;
                        continue;
                    }
                    Ok(h) => {
                        let need = h.batch_bytes();
                        let have = data.len();
                        return Err(corrupt(
                            base,
                            position,
                            BatchError::Incomplete { need, have },
                        ));
                    }
                    Err(reason) => return Err(corrupt(base, position, reason)),
                };
                if header.version == batch::BATCH_VERSION {
                    let expected =
                        first_index.map_or(header.raft_index, |f| f + slots.len() as u64);
                    if header.raft_index != expected {
                        let (raft_index, term) = (header.raft_index, header.term);
                        return Err(corrupt(
                            base,
                            position,
                            BatchError::OutOfSequence { raft_index, term },
                        ));
                    }
                    first_index.get_or_insert(header.raft_index);
                    slots.push(Slot {
                        position,
                        bytes: header.batch_bytes() as u32,
                        kind: header.kind,
                        term: header.term,
                    });
                }
                at += header.batch_bytes();
                position += header.batch_bytes() as u64;
            }
        }
    }
}

fn corrupt(segment: u64, position: u64, reason: BatchError) -> ReadError {
    ReadError::Corrupt {
        segment,
        position,
        reason,
    }
}
