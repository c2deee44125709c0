//! A publish batch encoded once. Every event's id and source are fixed (a
//! generated id when it has none, the publisher's name when it has no
//! source), its wire encoding is written back to back with the others into
//! one buffer, and the hash of its partition key is kept; grouping by
//! partition, splitting into frames and every retry then reuse those bytes.
//!
//! Cost: encoding N events allocates a constant number of times (the buffer
//! and the index, each sized up front, and one id buffer), not once or more
//! per event: the thread's `EventEncoder` is reused, a missing source is
//! encoded from the publisher's name without copying it into the event, and
//! generated ids are written into one reused buffer.
//!
//! Invariants:
//! - `event(i)` is the encoding of input event `i` with its filled-in id
//!   and source, and `placed` puts it in the partition its key picks for
//!   those values; nothing about an event changes after `encode`.
//! - `placed(n)` lists every index once, grouped by partition, each group
//!   in input order.

use core::ops::Range;

use crate::NewEvent;
use crate::event::{partition_of, with_event_encoder};

/// The length a generated id is assumed to have beyond the publisher's
/// name, for sizing the buffer: `-{16 hex}-{8 hex}-{up to 20 digits}`
/// (`Client::write_id`).
const GENERATED_ID_EXTRA_BYTES: usize = 48;

/// Events encoded for publishing; see the module header.
#[derive(Debug)]
pub(crate) struct EncodedBatch {
    /// The events' encodings, back to back, in input order.
    bytes: Vec<u8>,
    /// One per input event, in input order.
    events: Vec<Encoded>,
}

#[derive(Debug)]
struct Encoded {
    /// Where its encoding lies in `EncodedBatch::bytes`.
    range: Range<usize>,
    /// `NewEvent::key_hash` for its filled-in source and id.
    key_hash: u64,
}

/// An event of the batch and the partition it goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Placed {
    pub partition: u32,
    /// The event's index in the batch.
    pub index: usize,
}

impl EncodedBatch {
    /// Encodes `events`, sending those without a source with `source` and
    /// those without an id with one that `next_id` appends to the (empty)
    /// buffer it is given.
    pub(crate) fn encode(
        events: &[NewEvent],
        source: &str,
        mut next_id: impl FnMut(&mut String),
    ) -> EncodedBatch {
        let bytes_hint: usize = events
            .iter()
            .map(|e| {
                let id_len = match e.id.len() {
                    0 => source.len() + GENERATED_ID_EXTRA_BYTES,
                    n => n,
                };
                let source_len = match e.source.len() {
                    0 => source.len(),
                    n => n,
                };
                e.encoded_bytes_hint(id_len, source_len)
            })
            .sum();
        let mut bytes = Vec::with_capacity(bytes_hint);
        let mut encoded = Vec::with_capacity(events.len());
        let mut generated = String::new();
        with_event_encoder(|encoder| {
            for event in events {
                let id = if event.id.is_empty() {
                    generated.clear();
                    next_id(&mut generated);
                    assert!(!generated.is_empty(), "a generated id is empty");
                    generated.as_str()
                } else {
                    event.id.as_str()
                };
                let source = if event.source.is_empty() {
                    source
                } else {
                    event.source.as_str()
                };
                let start = bytes.len();
                let len = event.encode_as(encoder, id, source, &mut bytes);
                encoded.push(Encoded {
                    range: start..start + len,
                    key_hash: event.key_hash(source, id),
                });
            }
        });
        assert_eq!(encoded.len(), events.len());
        assert_eq!(encoded.last().map_or(0, |e| e.range.end), bytes.len());
        EncodedBatch {
            bytes,
            events: encoded,
        }
    }

    /// How many events the batch holds.
    pub(crate) fn len(&self) -> usize {
        self.events.len()
    }

    /// The encoding of event `index` (empty for an index out of range).
    pub(crate) fn event(&self, index: usize) -> &[u8] {
        self.events
            .get(index)
            .and_then(|e| self.bytes.get(e.range.clone()))
            .unwrap_or_default()
    }

    /// Every event with the partition its key picks among `partitions`,
    /// ordered by partition and then by index: each partition's events form
    /// one run, in input order.
    pub(crate) fn placed(&self, partitions: u32) -> Vec<Placed> {
        let mut placed: Vec<Placed> = self
            .events
            .iter()
            .enumerate()
            .map(|(index, e)| Placed {
                partition: partition_of(e.key_hash, partitions),
                index,
            })
            .collect();
        // Indexes are unique, so the unstable sort (which does not
        // allocate) gives the same order as a stable one.
        placed.sort_unstable();
        placed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Event;

    fn mixed_events() -> Vec<NewEvent> {
        vec![
            NewEvent::new("t.a", b"one".to_vec()),
            NewEvent::new("t.b", Vec::new())
                .with_id("given-1")
                .with_subject("svc-1"),
            NewEvent {
                source: "elsewhere".into(),
                specversion: "1.1".into(),
                time_ms: Some(-1),
                datacontenttype: Some("text/plain".into()),
                ..NewEvent::new("t.c", vec![0; 300])
            }
            .with_attribute("tenant", "acme")
            .with_attribute("region", ""),
            NewEvent::new("t.d", b"four".to_vec()).with_attribute("k", "v"),
            NewEvent {
                source: "elsewhere".into(),
                ..NewEvent::new("t.e", Vec::new()).with_id("given-2")
            },
        ]
    }

    fn numbered_ids() -> impl FnMut(&mut String) {
        let mut n = 0;
        move |out: &mut String| {
            n += 1;
            out.push_str(&format!("gen-{n}"));
        }
    }

    #[test]
    fn events_encode_with_their_filled_in_id_and_source() {
        let events = mixed_events();
        let batch = EncodedBatch::encode(&events, "app", numbered_ids());
        assert_eq!(batch.len(), events.len());
        let ids = ["gen-1", "given-1", "gen-2", "gen-3", "given-2"];
        let sources = ["app", "app", "elsewhere", "app", "elsewhere"];
        for (i, event) in events.iter().enumerate() {
            let expected = NewEvent {
                id: ids[i].into(),
                source: sources[i].into(),
                ..event.clone()
            };
            assert_eq!(batch.event(i), expected.encode(), "event {i}");
            let decoded = Event::decode(batch.event(i)).unwrap();
            assert_eq!(
                (decoded.id.as_str(), decoded.source.as_str()),
                (ids[i], sources[i])
            );
        }
        assert!(batch.event(events.len()).is_empty());
    }

    #[test]
    fn the_buffer_is_sized_once() {
        let mut events = mixed_events();
        events.push(NewEvent::new("", Vec::new()).with_id("1"));
        events.push(NewEvent {
            subject: Some(String::new()),
            datacontenttype: Some(String::new()),
            time_ms: Some(0),
            ..NewEvent::new("t", vec![1])
        });
        let batch = EncodedBatch::encode(&events, "a", numbered_ids());
        let reserved = batch.bytes.capacity();
        let used = batch.bytes.len();
        assert!(used <= reserved, "the hint was short: {used} > {reserved}");
        // And not wildly long: a fixed overhead per event.
        assert!(
            reserved - used < 256 * events.len(),
            "{reserved} for {used}"
        );
    }

    #[test]
    fn placed_groups_by_partition_in_input_order() {
        let events: Vec<NewEvent> = (0..40)
            .map(|i| NewEvent::new("t", Vec::new()).with_id(format!("e-{i}")))
            .collect();
        let batch = EncodedBatch::encode(&events, "app", numbered_ids());
        let placed = batch.placed(3);
        let mut indexes: Vec<usize> = placed.iter().map(|p| p.index).collect();
        indexes.sort_unstable();
        assert_eq!(indexes, (0..40).collect::<Vec<_>>(), "each event once");
        for p in &placed {
            let e = &events[p.index];
            assert_eq!(
                p.partition,
                partition_of(e.key_hash("app", &e.id), 3),
                "event {}",
                p.index
            );
        }
        for pair in placed.windows(2) {
            assert!(pair[0] < pair[1], "{pair:?}");
        }
        let used: std::collections::BTreeSet<u32> = placed.iter().map(|p| p.partition).collect();
        assert_eq!(used.len(), 3, "40 keys spread over all partitions");
        // The same subject means the same partition.
        let same: Vec<NewEvent> = (0..5)
            .map(|_| NewEvent::new("t", Vec::new()).with_subject("svc"))
            .collect();
        let placed = EncodedBatch::encode(&same, "app", numbered_ids()).placed(7);
        assert!(placed.iter().all(|p| p.partition == placed[0].partition));
    }
}
