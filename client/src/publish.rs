//! Publishing: `Publisher` fills in missing event ids and sources, picks
//! partitions, groups a batch into one `Publish` frame per partition, and
//! retries retryable failures.
//!
//! Exactly-once: an event's id and source are fixed, and the event encoded,
//! once before the first attempt (`EncodedBatch`), and its partition is
//! chosen once, so every retry sends the same `(source, id)` in the same
//! bytes to the same partition and the server's idempotent publishing
//! stores it once (a retry of a stored event comes back with
//! `duplicate: true` and the original offset). That holds across a
//! cluster's leader changes too: a retry goes to the new leader
//! (`client/routing.rs`) with the same bytes. The only re-partitioning
//! happens after `UnknownPartition`/`UnknownStream`, when nothing was
//! written.

use std::sync::Arc;

use hadron_wire::{Encoder, ErrorCode, Message, PublishOk};

use crate::batch::{EncodedBatch, Placed};
use crate::client::routing::Retry;
use crate::client::unexpected;
use crate::conn::{Conn, Reply};
use crate::{Client, Error, NewEvent};

/// The stream `Client::publisher` publishes to.
pub const DEFAULT_STREAM: &str = "events";

/// Bytes of events per `Publish` frame at most; larger groups are split.
/// Leaves room under the frame limit for the frame's own fields.
const FRAME_OVERHEAD_BYTES: usize = 64 * 1024;
/// Per-event overhead inside a `Publish` frame (EventBytes table, offsets,
/// padding), generously.
const EVENT_OVERHEAD_BYTES: usize = 32;

/// Where one event was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The partition it went to.
    pub partition: u32,
    /// Its offset in the partition.
    pub offset: u64,
    /// The server already had an event with this `(source, id)`; `offset`
    /// is the original's.
    pub duplicate: bool,
}

/// Publishes events to one stream. Cheap to clone.
///
/// ```no_run
/// # async fn example(client: hadron::Client) -> Result<(), hadron::Error> {
/// let publisher = client.publisher("example-cloud-app").await?;
/// let event = hadron::NewEvent {
///     ty: "service.created".into(),
///     subject: Some("svc-42".into()),
///     data: br#"{"plan":"small"}"#.to_vec(),
///     ..Default::default()
/// };
/// let published = publisher.publish(event).await?;
/// assert!(!published.duplicate);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Publisher {
    client: Client,
    name: String,
    stream: String,
}

impl Client {
    /// A publisher named `name` for the stream `events`. The name is the
    /// default `source` of its events. Connects (so an unreachable server
    /// is reported here).
    pub async fn publisher(&self, name: &str) -> Result<Publisher, Error> {
        self.publisher_for(DEFAULT_STREAM, name).await
    }

    /// A publisher named `name` for `stream`.
    pub async fn publisher_for(&self, stream: &str, name: &str) -> Result<Publisher, Error> {
        self.main().await?;
        Ok(Publisher {
            client: self.clone(),
            name: name.to_owned(),
            stream: stream.to_owned(),
        })
    }
}

impl Publisher {
    /// The same publisher, publishing to `stream` instead.
    pub fn stream(mut self, stream: &str) -> Publisher {
        self.stream = stream.to_owned();
        self
    }

    /// The stream this publisher writes to.
    pub fn stream_name(&self) -> &str {
        &self.stream
    }

    /// The publisher's name (the default event source).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Publishes one event to the partition its key picks (the subject's
    /// hash, else the hash of source and id) and waits until it is durable.
    pub async fn publish(&self, event: NewEvent) -> Result<Published, Error> {
        let mut all = self.publish_batch(vec![event]).await?;
        all.pop()
            .ok_or_else(|| Error::Protocol("no result for a published event".into()))
    }

    /// Publishes one event to `partition`.
    pub async fn publish_to(&self, partition: u32, event: NewEvent) -> Result<Published, Error> {
        let batch = self.encode(core::slice::from_ref(&event));
        drop(event);
        let group = [Placed {
            partition,
            index: 0,
        }];
        let mut all = self.send_group(partition, &batch, &group).await?;
        all.pop()
            .ok_or_else(|| Error::Protocol("no result for a published event".into()))
    }

    /// Publishes `events`, each to the partition its key picks, sending one
    /// `Publish` frame per partition (split further if a frame would exceed
    /// the frame limit), concurrently. Results are in the order of
    /// `events`. On error some groups may have been stored; publishing the
    /// same events again is safe (ids are kept, duplicates are detected).
    pub async fn publish_batch(&self, events: Vec<NewEvent>) -> Result<Vec<Published>, Error> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        // Everything a retry resends is fixed here; the events themselves
        // are no longer needed.
        let batch = self.encode(&events);
        drop(events);
        self.publish_encoded(&batch).await
    }

    /// Publishes `events` as [`Publisher::publish_batch`] does, borrowing
    /// them: a caller that sends many batches can keep one `Vec` of events
    /// and overwrite their fields in place, instead of allocating every
    /// event's strings and payload for each batch. An event without an id
    /// gets a new generated one on each call, as with `publish_batch`.
    pub async fn publish_slice(&self, events: &[NewEvent]) -> Result<Vec<Published>, Error> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let batch = self.encode(events);
        self.publish_encoded(&batch).await
    }

    /// Sends an encoded batch, one group per partition; see
    /// [`Publisher::publish_batch`].
    async fn publish_encoded(&self, batch: &EncodedBatch) -> Result<Vec<Published>, Error> {
        let mut refreshed = false;
        loop {
            let partitions = self.client.partitions(&self.stream).await?;
            let placed = batch.placed(partitions);
            let groups: Vec<&[Placed]> =
                placed.chunk_by(|a, b| a.partition == b.partition).collect();
            let sends = groups.iter().map(|group| {
                let partition = group.first().map_or(0, |p| p.partition);
                self.send_group(partition, batch, group)
            });
            let results = futures::future::join_all(sends).await;
            let mut out = vec![None; batch.len()];
            let mut first_error = None;
            for (group, result) in groups.iter().zip(results) {
                match result {
                    Ok(published) => {
                        for (placed, p) in group.iter().zip(published) {
                            if let Some(slot) = out.get_mut(placed.index) {
                                *slot = Some(p);
                            }
                        }
                    }
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            match first_error {
                None => {
                    return out
                        .into_iter()
                        .map(|p| p.ok_or_else(|| Error::Protocol("an event got no result".into())))
                        .collect();
                }
                // The partition count changed (or the stream was just
                // created): nothing was written for that group, so
                // re-partitioning once is safe.
                Some(Error::Server {
                    code: ErrorCode::UnknownPartition | ErrorCode::UnknownStream,
                    ..
                }) if !refreshed => {
                    refreshed = true;
                    self.client.forget_partitions();
                }
                Some(e) => return Err(e),
            }
        }
    }

    /// Encodes `events` with a missing id generated and a missing source
    /// taken to be the publisher's name (encoded as such, not copied into
    /// each event).
    fn encode(&self, events: &[NewEvent]) -> EncodedBatch {
        EncodedBatch::encode(events, &self.name, |id| {
            self.client.write_id(&self.name, id);
        })
    }

    /// Sends one partition's events, split into frames that fit, with
    /// retries.
    async fn send_group(
        &self,
        partition: u32,
        batch: &EncodedBatch,
        group: &[Placed],
    ) -> Result<Vec<Published>, Error> {
        let budget =
            event_bytes_budget(self.client.options().limits().frame_bytes_max, &self.stream);
        let chunks = split_frames(batch, group, budget);
        let results = futures::future::join_all(
            chunks
                .iter()
                .map(|c| self.send_with_retry(partition, batch, c)),
        )
        .await;
        let mut out = Vec::with_capacity(group.len());
        for result in results {
            out.extend(result?);
        }
        Ok(out)
    }

    /// Sends one frame's events with retries: retryable failures, and a
    /// partition's leader moving or dying, are retried with the same
    /// encoded events (see `Client::routed`).
    async fn send_with_retry(
        &self,
        partition: u32,
        batch: &EncodedBatch,
        chunk: &[Placed],
    ) -> Result<Vec<Published>, Error> {
        self.client
            .routed("publish", &self.stream, partition, Retry::Any, |conn| {
                self.send_on(conn, partition, batch, chunk)
            })
            .await
    }

    async fn send_on(
        &self,
        conn: Arc<Conn>,
        partition: u32,
        batch: &EncodedBatch,
        chunk: &[Placed],
    ) -> Result<Vec<Published>, Error> {
        let message = publish_message(&self.stream, partition, batch, chunk);
        let ok: PublishOk = match conn.request("publish", &message).await? {
            Reply::PublishOk(ok) => ok,
            other => return Err(unexpected("PublishOk", &other)),
        };
        if ok.partition != partition || ok.results.len() != chunk.len() {
            return Err(Error::Protocol(format!(
                "PublishOk for partition {} with {} results answers a publish of {} events to partition {partition}",
                ok.partition,
                ok.results.len(),
                chunk.len()
            )));
        }
        Ok(ok
            .results
            .iter()
            .map(|r| Published {
                partition,
                offset: r.offset,
                duplicate: r.duplicate,
            })
            .collect())
    }
}

/// Bytes of event encodings (plus `EVENT_OVERHEAD_BYTES` each) one
/// `Publish` frame to `stream` may carry under `frame_bytes_max`.
fn event_bytes_budget(frame_bytes_max: usize, stream: &str) -> usize {
    frame_bytes_max
        .saturating_sub(FRAME_OVERHEAD_BYTES + stream.len())
        .max(1)
}

/// Splits one partition's events into runs that each fit in a frame: their
/// encodings plus `EVENT_OVERHEAD_BYTES` each stay within `budget`, except
/// that an event too large on its own goes alone (and the encoder refuses
/// it if it exceeds the frame limit).
fn split_frames<'g>(batch: &EncodedBatch, group: &'g [Placed], budget: usize) -> Vec<&'g [Placed]> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, p) in group.iter().enumerate() {
        let size = batch.event(p.index).len() + EVENT_OVERHEAD_BYTES;
        if i > start && bytes + size > budget {
            chunks.push(&group[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    chunks.push(&group[start..]);
    chunks
}

/// The `Publish` message carrying `chunk`'s events to `partition`.
fn publish_message<'a>(
    stream: &'a str,
    partition: u32,
    batch: &'a EncodedBatch,
    chunk: &[Placed],
) -> Message<'a> {
    Message::Publish(hadron_wire::Publish {
        stream,
        partition,
        events: chunk.iter().map(|p| batch.event(p.index)).collect(),
    })
}

/// The frames `Publisher::publish_batch` would send for `events` to a
/// stream with `partitions` partitions, without a server: the same
/// encoding, grouping, splitting and frame encoding (request id 1). A
/// missing source becomes `source`, a missing id one that `next_id`
/// appends to the empty buffer it is given. For benchmarks and tests; not
/// part of the supported API.
#[doc(hidden)]
pub fn encode_publish_frames(
    encoder: &mut Encoder,
    stream: &str,
    source: &str,
    partitions: u32,
    frame_bytes_max: usize,
    events: Vec<NewEvent>,
    next_id: impl FnMut(&mut String),
) -> Result<Vec<Vec<u8>>, Error> {
    let batch = EncodedBatch::encode(&events, source, next_id);
    drop(events);
    let budget = event_bytes_budget(frame_bytes_max, stream);
    let placed = batch.placed(partitions);
    let mut frames = Vec::new();
    for group in placed.chunk_by(|a, b| a.partition == b.partition) {
        for chunk in split_frames(&batch, group, budget) {
            let partition = group.first().map_or(0, |p| p.partition);
            let message = publish_message(stream, partition, &batch, chunk);
            frames.push(encoder.encode(1, &message)?);
        }
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::partition_of;
    use hadron_wire::{EventRef, LENGTH_PREFIX_BYTES, Limits, decode, decode_event};

    /// Events with and without source, id, subject and attributes.
    fn mixed_events() -> Vec<NewEvent> {
        (0..24)
            .map(|i| {
                let mut e = NewEvent::new(format!("t.{i}"), vec![i as u8; 40 * (i % 4)]);
                if i % 2 == 0 {
                    e.id = format!("given-{i}");
                }
                if i % 3 == 0 {
                    e.source = format!("src-{i}");
                }
                if i % 4 == 1 {
                    e.subject = Some(format!("svc-{}", i % 3));
                }
                if i % 5 == 2 {
                    e = e
                        .with_attribute("tenant", format!("t{i}"))
                        .with_attribute("x", "");
                }
                if i == 7 {
                    e.specversion = "1.1".into();
                    e.time_ms = Some(1_700_000_000_000);
                    e.datacontenttype = Some("application/json".into());
                }
                e
            })
            .collect()
    }

    /// `event` as it should arrive: id and source filled in.
    fn filled(event: &NewEvent, generated: &mut impl Iterator<Item = String>) -> NewEvent {
        let mut e = event.clone();
        if e.id.is_empty() {
            e.id = generated.next().unwrap();
        }
        if e.source.is_empty() {
            e.source = "app".into();
        }
        if e.specversion.is_empty() {
            e.specversion = "1.0".into();
        }
        e
    }

    fn as_new_event(e: &EventRef<'_>) -> NewEvent {
        NewEvent {
            id: e.id.into(),
            source: e.source.into(),
            specversion: e.specversion.into(),
            ty: e.ty.into(),
            subject: e.subject.map(Into::into),
            time_ms: e.time_ms,
            datacontenttype: e.datacontenttype.map(Into::into),
            attributes: e
                .attributes
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            data: e.data.to_vec(),
        }
    }

    #[test]
    fn batch_frames_carry_exactly_the_filled_in_events() {
        let events = mixed_events();
        let mut generated = (0..).map(|n| format!("gen-{n}"));
        let expected: Vec<NewEvent> = events.iter().map(|e| filled(e, &mut generated)).collect();
        let partitions = 3;
        // Small frames, so that some partitions need several.
        let frame_bytes_max = FRAME_OVERHEAD_BYTES + 600;
        let mut n = 0;
        let frames = encode_publish_frames(
            &mut Encoder::default(),
            "events",
            "app",
            partitions,
            frame_bytes_max,
            events,
            |id| {
                id.push_str(&format!("gen-{n}"));
                n += 1;
            },
        )
        .unwrap();

        let mut received: Vec<(u32, NewEvent)> = Vec::new();
        for frame in &frames {
            let decoded = decode(&frame[LENGTH_PREFIX_BYTES..], &Limits::DEFAULT).unwrap();
            let Message::Publish(publish) = decoded.message else {
                panic!("not a Publish: {}", decoded.message.name());
            };
            assert_eq!(publish.stream, "events");
            assert!(!publish.events.is_empty());
            for bytes in publish.events {
                let event = decode_event(bytes, &Limits::DEFAULT).unwrap();
                received.push((publish.partition, as_new_event(&event)));
            }
        }
        assert!(
            frames.len() > partitions as usize,
            "{} frames",
            frames.len()
        );
        assert_eq!(received.len(), expected.len());
        // Every event exactly once, in its key's partition; within a
        // partition in input order.
        let mut last_in_partition = [None; 3];
        for (partition, event) in &received {
            let index = expected.iter().position(|e| e == event).unwrap();
            let want = partition_of(event.key_hash(&event.source, &event.id), partitions);
            assert_eq!(*partition, want, "event {index}");
            let last = &mut last_in_partition[*partition as usize];
            assert!(*last < Some(index), "event {index} after {last:?}");
            *last = Some(index);
        }
        for (index, e) in expected.iter().enumerate() {
            let count = received.iter().filter(|(_, r)| r == e).count();
            assert_eq!(count, 1, "event {index}: {e:?}");
        }
    }

    #[test]
    fn split_frames_respects_the_budget() {
        let events: Vec<NewEvent> = (0..10)
            .map(|i| NewEvent::new("t", vec![0; 100]).with_id(format!("{i}")))
            .collect();
        let batch = EncodedBatch::encode(&events, "app", |_| unreachable!("ids are given"));
        let group: Vec<Placed> = (0..10)
            .map(|index| Placed {
                partition: 0,
                index,
            })
            .collect();
        let size = batch.event(0).len() + EVENT_OVERHEAD_BYTES;
        let chunks = split_frames(&batch, &group, 3 * size);
        assert_eq!(
            chunks.iter().map(|c| c.len()).collect::<Vec<_>>(),
            [3, 3, 3, 1]
        );
        // An event larger than the budget goes alone.
        let chunks = split_frames(&batch, &group[..2], 1);
        assert_eq!(chunks.iter().map(|c| c.len()).collect::<Vec<_>>(), [1, 1]);
    }
}
