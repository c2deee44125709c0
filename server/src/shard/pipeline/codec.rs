//! The outputs log's records, their encoding and decoding, and how a run of
//! records is split into batches of the log. Records, little-endian:
//!
//! ```text
//!  1 | root u64 | name_len u16 | stage name | output event   a stage output
//!  2 | source offset u64                                    the watermark
//!  3 | root u64 | name_len u16 | stage name | error text     an execution failed
//!  4 | root u64                                             a failed one is retried
//!  5 | state_at u64 | watermark u64 | completed u64         a checkpoint
//!    | stages u16 | { name_len u16 | name | completed u64 }
//!    | finished u32 | { root u64 } | pending u32 | { root u64 }
//!  6 | root u64 | name_len u16 | stage name | output event   a carried output
//!  7 | root u64 | name_len u16 | stage name | error text     a carried failure
//! ```

use hadron_engine::log::batch::{BATCH_HEADER_BYTES, BATCH_RECORDS_MAX, RECORD_PREFIX_BYTES};

pub(super) const KIND_OUTPUT: u8 = 1;
pub(super) const KIND_WATERMARK: u8 = 2;
pub(super) const KIND_FAILED: u8 = 3;
pub(super) const KIND_RETRIED: u8 = 4;
pub(super) const KIND_CHECKPOINT: u8 = 5;
pub(super) const KIND_CARRIED_OUTPUT: u8 = 6;
pub(super) const KIND_CARRIED_FAILED: u8 = 7;
/// Most finished (or pending) roots one checkpoint record lists: finished
/// ones lie between the watermark and the cursor; more than this, or a
/// record larger than a batch, postpones the checkpoint.
pub(super) const CHECKPOINT_ROOTS_MAX: usize = 64 << 10;

pub(super) fn encode_named(kind: u8, root: u64, name: &str, tail: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(11 + name.len() + tail.len());
    out.push(kind);
    out.extend_from_slice(&root.to_le_bytes());
    out.extend_from_slice(&(name.len() as u16).to_le_bytes());
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(tail);
    out
}

pub(super) fn encode_offset(kind: u8, value: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(9);
    out.push(kind);
    out.extend_from_slice(&value.to_le_bytes());
    out
}

/// A checkpoint: the state of the outputs log below `state_at`, less the
/// outputs and failures, which travel as carried records before it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Checkpoint {
    pub(super) state_at: u64,
    pub(super) watermark: u64,
    pub(super) completed: u64,
    /// Completed outputs per stage, by stage name.
    pub(super) stages: Vec<(String, u64)>,
    /// Roots at or after the watermark whose executions finished.
    pub(super) finished: Vec<u64>,
    /// Retried roots below the watermark that have not finished.
    pub(super) pending: Vec<u64>,
}

pub(super) fn encode_checkpoint(c: &Checkpoint) -> Vec<u8> {
    let names: usize = c.stages.iter().map(|(n, _)| 10 + n.len()).sum();
    let roots = c.finished.len() + c.pending.len();
    let mut out = Vec::with_capacity(35 + names + 8 * roots);
    out.push(KIND_CHECKPOINT);
    out.extend_from_slice(&c.state_at.to_le_bytes());
    out.extend_from_slice(&c.watermark.to_le_bytes());
    out.extend_from_slice(&c.completed.to_le_bytes());
    assert!(c.stages.len() <= usize::from(u16::MAX));
    out.extend_from_slice(&(c.stages.len() as u16).to_le_bytes());
    for (name, completed) in &c.stages {
        assert!(name.len() <= usize::from(u16::MAX));
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&completed.to_le_bytes());
    }
    for roots in [&c.finished, &c.pending] {
        assert!(roots.len() <= CHECKPOINT_ROOTS_MAX);
        out.extend_from_slice(&(roots.len() as u32).to_le_bytes());
        for root in roots {
            out.extend_from_slice(&root.to_le_bytes());
        }
    }
    out
}

/// Decodes a checkpoint's body (after the kind byte).
fn decode_checkpoint(body: &[u8]) -> Option<Checkpoint> {
    fn take<'a>(at: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, tail) = at.split_at_checked(n)?;
        *at = tail;
        Some(head)
    }
    fn u64_of(at: &mut &[u8]) -> Option<u64> {
        Some(u64::from_le_bytes(take(at, 8)?.try_into().ok()?))
    }
    let mut at = body;
    let state_at = u64_of(&mut at)?;
    let watermark = u64_of(&mut at)?;
    let completed = u64_of(&mut at)?;
    let count = u16::from_le_bytes(take(&mut at, 2)?.try_into().ok()?);
    let mut stages = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let len = u16::from_le_bytes(take(&mut at, 2)?.try_into().ok()?);
        let name = std::str::from_utf8(take(&mut at, usize::from(len))?).ok()?;
        stages.push((name.to_string(), u64_of(&mut at)?));
    }
    fn roots(at: &mut &[u8]) -> Option<Vec<u64>> {
        let count = u32::from_le_bytes(take(at, 4)?.try_into().ok()?) as usize;
        if count > CHECKPOINT_ROOTS_MAX || at.len() < count * 8 {
            return None;
        }
        (0..count).map(|_| u64_of(at)).collect()
    }
    let finished = roots(&mut at)?;
    let pending = roots(&mut at)?;
    if !at.is_empty() {
        return None;
    }
    Some(Checkpoint {
        state_at,
        watermark,
        completed,
        stages,
        finished,
        pending,
    })
}

/// A decoded outputs-log record.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum OutputRecord<'a> {
    Output {
        root: u64,
        stage: &'a str,
        event: &'a [u8],
    },
    Watermark(u64),
    Failed {
        root: u64,
        stage: &'a str,
        error: &'a str,
    },
    Retried(u64),
    Checkpoint(Checkpoint),
    CarriedOutput {
        root: u64,
        stage: &'a str,
        event: &'a [u8],
    },
    CarriedFailed {
        root: u64,
        stage: &'a str,
        error: &'a str,
    },
}

pub(super) fn decode_record(bytes: &[u8]) -> Option<OutputRecord<'_>> {
    let (&kind, rest) = bytes.split_first()?;
    if kind == KIND_CHECKPOINT {
        return decode_checkpoint(rest).map(OutputRecord::Checkpoint);
    }
    let value = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
    fn named(rest: &[u8]) -> Option<(&str, usize)> {
        let len = u16::from_le_bytes(rest.get(8..10)?.try_into().ok()?) as usize;
        let name = std::str::from_utf8(rest.get(10..10 + len)?).ok()?;
        Some((name, 10 + len))
    }
    match kind {
        KIND_OUTPUT | KIND_CARRIED_OUTPUT => {
            let (stage, at) = named(rest)?;
            let (root, event) = (value, &rest[at..]);
            Some(if kind == KIND_OUTPUT {
                OutputRecord::Output { root, stage, event }
            } else {
                OutputRecord::CarriedOutput { root, stage, event }
            })
        }
        KIND_WATERMARK if rest.len() == 8 => Some(OutputRecord::Watermark(value)),
        KIND_FAILED | KIND_CARRIED_FAILED => {
            let (stage, at) = named(rest)?;
            let (root, error) = (value, std::str::from_utf8(&rest[at..]).ok()?);
            Some(if kind == KIND_FAILED {
                OutputRecord::Failed { root, stage, error }
            } else {
                OutputRecord::CarriedFailed { root, stage, error }
            })
        }
        KIND_RETRIED if rest.len() == 8 => Some(OutputRecord::Retried(value)),
        _ => None,
    }
}

/// Splits records into runs that each fit one batch of the log.
pub(super) fn batch_ranges(
    records: &[Vec<u8>],
    batch_bytes_max: usize,
) -> Vec<std::ops::Range<usize>> {
    let mut chunks: Vec<std::ops::Range<usize>> = Vec::new();
    let mut bytes = BATCH_HEADER_BYTES;
    for (i, record) in records.iter().enumerate() {
        let len = RECORD_PREFIX_BYTES + record.len();
        match chunks.last_mut() {
            Some(c) if bytes + len <= batch_bytes_max && c.len() < BATCH_RECORDS_MAX as usize => {
                c.end = i + 1;
                bytes += len;
            }
            _ => {
                chunks.push(i..i + 1);
                bytes = BATCH_HEADER_BYTES + len;
            }
        }
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_records_round_trip_and_garbage_is_refused() {
        let out = encode_named(KIND_OUTPUT, 7, "deploy-service", b"event");
        assert_eq!(
            decode_record(&out),
            Some(OutputRecord::Output {
                root: 7,
                stage: "deploy-service",
                event: b"event"
            })
        );
        let failed = encode_named(KIND_FAILED, 9, "sync", b"boom");
        assert_eq!(
            decode_record(&failed),
            Some(OutputRecord::Failed {
                root: 9,
                stage: "sync",
                error: "boom"
            })
        );
        assert_eq!(
            decode_record(&encode_offset(KIND_WATERMARK, 3)),
            Some(OutputRecord::Watermark(3))
        );
        assert_eq!(
            decode_record(&encode_offset(KIND_RETRIED, 4)),
            Some(OutputRecord::Retried(4))
        );
        assert_eq!(decode_record(&[]), None);
        assert_eq!(decode_record(&[9, 0, 0, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(decode_record(&out[..12]), None, "name cut short");
    }

    #[test]
    fn checkpoint_records_round_trip_and_garbage_is_refused() {
        let c = Checkpoint {
            state_at: 40,
            watermark: 7,
            completed: 12,
            stages: vec![("fetch".into(), 12), ("deploy".into(), 11)],
            finished: vec![8, 10],
            pending: vec![2],
        };
        let bytes = encode_checkpoint(&c);
        assert_eq!(decode_record(&bytes), Some(OutputRecord::Checkpoint(c)));
        for cut in 1..bytes.len() {
            assert_eq!(decode_record(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(decode_record(&long), None, "trailing byte");
        assert_eq!(
            decode_record(&encode_named(KIND_CARRIED_OUTPUT, 3, "fetch", b"e")),
            Some(OutputRecord::CarriedOutput {
                root: 3,
                stage: "fetch",
                event: b"e"
            })
        );
        assert_eq!(
            decode_record(&encode_named(KIND_CARRIED_FAILED, 3, "fetch", b"x")),
            Some(OutputRecord::CarriedFailed {
                root: 3,
                stage: "fetch",
                error: "x"
            })
        );
    }
}
