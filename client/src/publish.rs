//! Publishing: `Publisher` fills in missing event ids and sources, picks
//! partitions, groups a batch into one `Publish` frame per partition, and
//! retries retryable failures.
//!
//! Exactly-once: an event's id and source are fixed before the first
//! attempt and its partition is chosen once, so every retry sends the same
//! `(source, id)` to the same partition and the server's idempotent
//! publishing stores it once (a retry of a stored event comes back with
//! `duplicate: true` and the original offset). The only re-partitioning
//! happens after `UnknownPartition`/`UnknownStream`, when nothing was
//! written.

use std::collections::BTreeMap;

use hadron_wire::{ErrorCode, Message, PublishOk};

use crate::client::unexpected;
use crate::conn::Reply;
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

/// One event ready to send: id and source filled in, encoded.
struct Prepared {
    index: usize,
    bytes: Vec<u8>,
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
        let event = self.fill(event);
        let prepared = vec![Prepared {
            index: 0,
            bytes: event.encode(),
        }];
        let mut all = self.send_group(partition, &prepared).await?;
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
        let events: Vec<NewEvent> = events.into_iter().map(|e| self.fill(e)).collect();
        let mut refreshed = false;
        loop {
            let partitions = self.client.partitions(&self.stream).await?;
            let mut groups: BTreeMap<u32, Vec<Prepared>> = BTreeMap::new();
            for (index, event) in events.iter().enumerate() {
                groups
                    .entry(event.partition_key(partitions))
                    .or_default()
                    .push(Prepared {
                        index,
                        bytes: event.encode(),
                    });
            }
            let sends = groups
                .iter()
                .map(|(partition, group)| self.send_group(*partition, group));
            let results = futures::future::join_all(sends).await;
            let mut out = vec![None; events.len()];
            let mut first_error = None;
            for ((_, group), result) in groups.iter().zip(results) {
                match result {
                    Ok(published) => {
                        for (prepared, p) in group.iter().zip(published) {
                            if let Some(slot) = out.get_mut(prepared.index) {
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

    /// Fills in a missing id and source.
    fn fill(&self, mut event: NewEvent) -> NewEvent {
        if event.source.is_empty() {
            event.source = self.name.clone();
        }
        if event.id.is_empty() {
            event.id = self.client.generate_id(&self.name);
        }
        event
    }

    /// Sends one partition's events, split into frames that fit, with
    /// retries.
    async fn send_group(
        &self,
        partition: u32,
        group: &[Prepared],
    ) -> Result<Vec<Published>, Error> {
        let budget = self
            .client
            .options()
            .limits()
            .frame_bytes_max
            .saturating_sub(FRAME_OVERHEAD_BYTES + self.stream.len())
            .max(1);
        let mut chunks: Vec<&[Prepared]> = Vec::new();
        let mut start = 0;
        let mut bytes = 0;
        for (i, p) in group.iter().enumerate() {
            let size = p.bytes.len() + EVENT_OVERHEAD_BYTES;
            if i > start && bytes + size > budget {
                chunks.push(&group[start..i]);
                start = i;
                bytes = 0;
            }
            bytes += size;
        }
        chunks.push(&group[start..]);
        let results =
            futures::future::join_all(chunks.iter().map(|c| self.send_with_retry(partition, c)))
                .await;
        let mut out = Vec::with_capacity(group.len());
        for result in results {
            out.extend(result?);
        }
        Ok(out)
    }

    async fn send_with_retry(
        &self,
        partition: u32,
        chunk: &[Prepared],
    ) -> Result<Vec<Published>, Error> {
        let options = self.client.options();
        let attempts_max = options.publish_attempts_max.max(1);
        let mut attempt = 1;
        loop {
            match self.send_once(partition, chunk).await {
                Ok(published) => return Ok(published),
                Err(e) if e.is_retryable() && attempt < attempts_max => {
                    let pause = options.backoff(attempt);
                    tracing::debug!(
                        publisher = %self.name, stream = %self.stream, partition, attempt,
                        error = %e, ?pause, "publish failed; retrying"
                    );
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn send_once(&self, partition: u32, chunk: &[Prepared]) -> Result<Vec<Published>, Error> {
        let conn = self.client.conn_for(&self.stream, partition).await?;
        let message = Message::Publish(hadron_wire::Publish {
            stream: &self.stream,
            partition,
            events: chunk.iter().map(|p| p.bytes.as_slice()).collect(),
        });
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
