//! What the simulation's model reads of the offsets logs: the snapshot
//! record decoded again here (`offsets.rs`'s format), so that the checks
//! do not lean on the code under test.

use hadron_engine::log::batch::{BatchKind, Batches};

use super::{GROUP, SimPartition};

/// The values of `g` in every snapshot of the offsets log segment `bytes`
/// (until the first batch that does not parse: a torn or unwritten tail).
pub(super) fn snapshots_in(bytes: &[u8]) -> Vec<u64> {
    let mut out = Vec::new();
    for batch in Batches::new(bytes) {
        let Ok(batch) = batch else { break };
        if batch.header.kind != BatchKind::Events {
            continue;
        }
        out.extend(batch.records().filter_map(|(_, r)| offset_of(r, GROUP)));
    }
    out
}

/// The offset of `group` in a snapshot record (`offsets.rs`'s format,
/// decoded here again so that the model does not lean on the code under
/// test): count u32, then per group name_len u16, name, offset u64.
fn offset_of(record: &[u8], group: &str) -> Option<u64> {
    let mut at = 4usize;
    let count = u32::from_le_bytes(record.get(..4)?.try_into().ok()?);
    for _ in 0..count {
        let len = u16::from_le_bytes(record.get(at..at + 2)?.try_into().ok()?) as usize;
        let name = record.get(at + 2..at + 2 + len)?;
        let offset = u64::from_le_bytes(record.get(at + 2 + len..at + 10 + len)?.try_into().ok()?);
        if name == group.as_bytes() {
            return Some(offset);
        }
        at += 10 + len;
    }
    None
}

/// `g`'s offset in the last batch of `p`'s offsets log, read through the
/// log; `None` when the last batch is no snapshot or holds no `g`.
pub(super) async fn last_snapshot(p: &SimPartition) -> Option<u64> {
    let log = &p.offsets;
    let next = log.visible_offset();
    let mut at = log.stats().start_offset;
    let mut last = None;
    while at < next {
        let read = log.read(at, 1 << 20).await.ok()?;
        for batch in Batches::new(&read.bytes) {
            let batch = batch.ok()?;
            for (o, r) in batch.records() {
                if o == next - 1 {
                    last = (batch.header.kind == BatchKind::Events)
                        .then(|| offset_of(r, GROUP))
                        .flatten();
                }
            }
        }
        if read.next_offset <= at {
            break;
        }
        at = read.next_offset;
    }
    last
}
