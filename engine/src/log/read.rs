//! Reading: whole batches from an offset ([`Log::read`]) and the records in
//! them ([`Log::read_records`]), from a segment's file and, for the bytes
//! not yet written, its in-memory tail buffer.
//!
//! **Visibility.** Readers see only durable batches under `Always`, so an
//! offset a reader saw can never be reused after a crash. Under `Interval`
//! and `Never` they see every appended batch (the documented loss window).
//!
//! A batch is read whole whatever its size: when the read window ends inside
//! it, it is read again by its length, so a batch longer than the window is
//! never taken for a corrupt segment.

use std::io;

use bytes::{Bytes, BytesMut};

use super::batch::{self, BATCH_HEADER_BYTES, BatchError};
use super::{Durability, Log, ReadBatches, ReadError, ReadRecords, index};
use crate::storage::{IO_ALIGN_BYTES, Storage, StorageFile};

impl<S: Storage> Log<S> {
    /// Reads whole batches from `offset` on, about `bytes_max` of them (at
    /// least one batch when there is one). The first batch returned holds
    /// `offset` and may begin before it; for an offset in a range repair
    /// skipped, it is the first batch after that range.
    pub async fn read(&self, offset: u64, bytes_max: usize) -> Result<ReadBatches, ReadError> {
        let offset = self.past_repaired_gap(offset);
        let Some((base, position, readable_end)) = self.read_start(offset)? else {
            return Ok(ReadBatches {
                bytes: Bytes::new(),
                next_offset: offset,
            });
        };
        let window = bytes_max.max(IO_ALIGN_BYTES as usize) as u64
            + u64::from(self.config.index_interval_bytes);
        let (data, data_position, position) = self
            .find_batch(base, position, offset, readable_end, window)
            .await?;
        take_batches(&data, base, data_position, position, offset, bytes_max)
    }

    /// Where a read of `offset` begins: the segment's base, the position
    /// its index gives, and how far the segment may be read. `None` when
    /// `offset` is not visible yet.
    fn read_start(&self, offset: u64) -> Result<Option<(u64, u64, u64)>, ReadError> {
        let st = self.state.borrow();
        let visible = self.visible_next(&st);
        if offset < st.start_offset {
            return Err(ReadError::BeforeStart {
                offset,
                start: st.start_offset,
            });
        }
        if offset > st.next_offset {
            return Err(ReadError::BeyondEnd {
                offset,
                next: st.next_offset,
            });
        }
        if offset >= visible {
            return Ok(None);
        }
        let Some((&base, seg)) = st.segments.range(..=offset).next_back() else {
            return Err(ReadError::BeforeStart {
                offset,
                start: st.start_offset,
            });
        };
        let readable_end = match self.config.durability {
            Durability::Always => seg.durable_end,
            _ => seg.end,
        };
        let position = index::lookup(seg.index.bytes(), (offset - base) as u32);
        Ok(Some((base, position, readable_end)))
    }

    /// Skips, from `position` of segment `base`, the batches before the one
    /// that holds `offset`; returns the bytes read (from `data_position`)
    /// and where that batch begins, whole in them.
    ///
    /// A batch is read whole whatever its size: when the window ends inside
    /// it, it is read again by its length. Only a read that asked for all of
    /// a batch and still came back short means the data really ends there.
    async fn find_batch(
        &self,
        base: u64,
        mut position: u64,
        offset: u64,
        readable_end: u64,
        window: u64,
    ) -> Result<(Bytes, u64, u64), ReadError> {
        let mut data = Bytes::new();
        let mut data_position = position;
        let mut fresh = false;
        let mut asked = 0u64;
        loop {
            if position >= readable_end {
                return Err(corrupt(
                    base,
                    position,
                    BatchError::Incomplete {
                        need: BATCH_HEADER_BYTES,
                        have: 0,
                    },
                ));
            }
            let at = (position - data_position) as usize;
            let available = data.get(at..).unwrap_or(&[]);
            let need = match batch::parse_header(available) {
                Ok(h) if h.batch_bytes() <= available.len() => {
                    fresh = false;
                    if h.next_offset() > offset {
                        return Ok((data, data_position, position));
                    }
                    position += h.batch_bytes() as u64;
                    continue;
                }
                Ok(h) => h.batch_bytes() as u64,
                Err(BatchError::Incomplete { need, .. }) => need as u64,
                Err(reason) => return Err(corrupt(base, position, reason)),
            };
            if fresh && need <= asked {
                // Just asked for all of it from here and still short: the
                // data ends early.
                return Err(corrupt(
                    base,
                    position,
                    BatchError::Incomplete {
                        need: need as usize,
                        have: available.len(),
                    },
                ));
            }
            asked = need.max(window);
            data = self
                .read_segment(base, position, asked, readable_end)
                .await?;
            data_position = position;
            fresh = true;
        }
    }

    /// Reads records from `offset` on: at least one when the log holds one
    /// there, then more while their bytes stay within `bytes_max`. Every
    /// reader above the engine (fetch, consumer groups, pipelines, the
    /// duplicate check) reads through this, so the batch format stays
    /// inside the engine and a record of any size comes back whole.
    pub async fn read_records(
        &self,
        offset: u64,
        bytes_max: usize,
    ) -> Result<ReadRecords, ReadError> {
        let read = self.read(offset, bytes_max).await?;
        let mut records = Vec::new();
        let mut bytes = 0usize;
        let mut position = 0u64;
        'batches: for batch in batch::Batches::new(&read.bytes) {
            let batch = batch.map_err(|reason| ReadError::Corrupt {
                segment: offset,
                position,
                reason,
            })?;
            position += batch.header.batch_bytes() as u64;
            if batch.header.kind.is_control() {
                // A Raft entry that is not events: it takes no offsets.
                continue;
            }
            for (o, record) in batch.records() {
                if o < offset {
                    continue;
                }
                if !records.is_empty() && bytes + record.len() > bytes_max {
                    break 'batches;
                }
                bytes += record.len();
                records.push((o, read.bytes.slice_ref(record)));
            }
        }
        let next_offset = match records.last() {
            Some(&(last, _)) => last + 1,
            None => read.next_offset.max(offset),
        };
        Ok(ReadRecords {
            records,
            next_offset,
        })
    }

    /// Reads `len` bytes at `position` of segment `base` (fewer where
    /// `readable_end` cuts them), from the tail buffer or the file.
    pub(super) async fn read_segment(
        &self,
        base: u64,
        position: u64,
        len: u64,
        readable_end: u64,
    ) -> Result<Bytes, ReadError> {
        let end = readable_end.min(position + len);
        let (file, buffer_position, from_buffer) = {
            let st = self.state.borrow();
            let Some(seg) = st.segments.get(&base) else {
                let start = st.start_offset;
                return Err(ReadError::BeforeStart {
                    offset: base,
                    start,
                });
            };
            let from_buffer = if end > seg.buf_position {
                let lo = position.max(seg.buf_position);
                let a = (lo - seg.buf_position) as usize;
                let b = (end - seg.buf_position) as usize;
                Some(Bytes::copy_from_slice(&seg.buf[a..b]))
            } else {
                None
            };
            (seg.file.clone(), seg.buf_position, from_buffer)
        };
        self.read_range(file.as_deref(), position, end, buffer_position, from_buffer)
            .await
    }

    /// Assembles bytes `position..end` from the file (below
    /// `buffer_position`) and the buffer copy (from it on).
    async fn read_range(
        &self,
        file: Option<&S::File>,
        position: u64,
        end: u64,
        buffer_position: u64,
        from_buffer: Option<Bytes>,
    ) -> Result<Bytes, ReadError> {
        let file_end = end.min(buffer_position);
        let from_file = if position < file_end {
            let Some(file) = file else {
                return Err(ReadError::Io(io::Error::other("segment has no file yet")));
            };
            let got = file
                .read_at(position, (file_end - position) as usize)
                .await
                .map_err(ReadError::Io)?;
            if (got.len() as u64) < file_end - position {
                return Err(ReadError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "short read at {position}: {} of {} bytes",
                        got.len(),
                        file_end - position
                    ),
                )));
            }
            Some(got)
        } else {
            None
        };
        Ok(match (from_file, from_buffer) {
            (Some(f), None) => f,
            (None, Some(b)) => b,
            (None, None) => Bytes::new(),
            (Some(f), Some(b)) => {
                let mut joined = BytesMut::with_capacity(f.len() + b.len());
                joined.extend_from_slice(&f);
                joined.extend_from_slice(&b);
                joined.freeze()
            }
        })
    }
}

/// A batch of segment `segment` at byte `position` is not valid.
fn corrupt(segment: u64, position: u64, reason: BatchError) -> ReadError {
    ReadError::Corrupt {
        segment,
        position,
        reason,
    }
}

/// Takes whole batches of `data` (read from `data_position` of segment
/// `base`) from `position` on, about `bytes_max` of them: at least the
/// first, which holds `offset`.
fn take_batches(
    data: &Bytes,
    base: u64,
    data_position: u64,
    position: u64,
    offset: u64,
    bytes_max: usize,
) -> Result<ReadBatches, ReadError> {
    let first = (position - data_position) as usize;
    let mut at = first;
    let mut next_offset = offset;
    while at < data.len() {
        match batch::verify(&data[at..]) {
            Ok(h) => {
                if at > first && at + h.batch_bytes() - first > bytes_max {
                    break;
                }
                at += h.batch_bytes();
                next_offset = h.next_offset();
                if at - first >= bytes_max {
                    break;
                }
            }
            Err(BatchError::Incomplete { .. }) if at > first => break,
            Err(reason) => return Err(corrupt(base, data_position + at as u64, reason)),
        }
    }
    assert!(at > first && next_offset > offset);
    Ok(ReadBatches {
        bytes: data.slice(first..at),
        next_offset,
    })
}
