//! Stream requests from a connection: publish, fetch and metadata.

use super::*;

/// Appends a batch to its partition (on its owner) and answers `PublishOk`.
pub(super) async fn publish(
    shard: &Rc<Shard>,
    stream: String,
    partition: u32,
    events: Vec<Bytes>,
) -> Result<Encode, Error> {
    shard.check_partition(&stream, partition)?;
    let owner = shard.owner(&stream, partition);
    match shard
        .call(
            owner,
            Request::Publish {
                stream,
                partition,
                events,
            },
        )
        .await
    {
        Reply::Published(p) => Ok(Box::new(move |id, outbox: &Outbox| {
            let results = p
                .results
                .iter()
                .map(|&(offset, duplicate)| hadron_wire::PublishResult { offset, duplicate })
                .collect();
            outbox.send(
                id,
                &Message::PublishOk(hadron_wire::PublishOk {
                    partition,
                    first_offset: p.first_offset,
                    last_offset: p.last_offset,
                    results,
                }),
            )
        })),
        other => Err(unexpected(other)),
    }
}

/// Reads records from `offset` (on the partition's owner), at most `max_bytes` clamped to `fetch_bytes_max`.
pub(super) async fn fetch(
    shard: &Rc<Shard>,
    stream: String,
    partition: u32,
    offset: u64,
    max_bytes: u32,
) -> Result<Encode, Error> {
    shard.check_partition(&stream, partition)?;
    let owner = shard.owner(&stream, partition);
    let req = Request::Fetch {
        stream,
        partition,
        offset,
        max_bytes: max_bytes.min(fetch_bytes_max(&shard.settings.config)),
    };
    match shard.call(owner, req).await {
        Reply::Fetched(next_offset, records) => Ok(Box::new(move |id, outbox: &Outbox| {
            let records = records
                .iter()
                .map(|(offset, event)| hadron_wire::Record {
                    offset: *offset,
                    event,
                })
                .collect();
            outbox.send(
                id,
                &Message::FetchOk(hadron_wire::FetchOk {
                    partition,
                    next_offset,
                    records,
                }),
            )
        })),
        other => Err(unexpected(other)),
    }
}

/// The answer to `Metadata` for the streams `names` (all when empty) and
/// the pipelines reading from them, from this shard's copy of the
/// topology; owners by `shard_of`, as requests are routed. An answer too
/// large for one frame is refused with `LimitExceeded`.
pub(super) fn metadata(shard: &Shard, names: &[String]) -> Encode {
    let wanted: std::collections::BTreeSet<&str> = names.iter().map(String::as_str).collect();
    let (streams, pipelines) = {
        let topology = shard.topology.borrow();
        let streams: Vec<(String, u32)> = topology
            .streams
            .iter()
            .filter(|(name, _)| wanted.is_empty() || wanted.contains(name.as_str()))
            .map(|(name, s)| (name.clone(), s.partitions))
            .collect();
        let pipelines: Vec<(String, String, Vec<String>)> = topology
            .pipelines
            .iter()
            .filter(|(_, p)| wanted.is_empty() || wanted.contains(p.source_stream.as_str()))
            .map(|(name, p)| {
                let stages = p.stages.iter().map(|s| s.name.clone()).collect();
                (name.clone(), p.source_stream.clone(), stages)
            })
            .collect();
        (streams, pipelines)
    };
    let (shards, shard_ports) = (shard.shards, shard_ports(shard));
    // A server with no cluster leads every partition itself, in term 1
    // (docs/replication.md section 12): it names itself, by its `listen`
    // address (a client replaces an unspecified IP with the host it
    // dialled).
    let node_id = shard.settings.config.node_id();
    let address = shard.settings.config.listen.to_string();
    Box::new(move |id, outbox: &Outbox| {
        let streams = streams
            .iter()
            .map(|(name, partitions)| hadron_wire::StreamInfo {
                name,
                partitions: (0..*partitions)
                    .map(|partition| {
                        let shard = hadron_wire::shard_of(name, partition, shards);
                        hadron_wire::PartitionInfo {
                            partition,
                            shard,
                            leader: Some(hadron_wire::LeaderHint {
                                node_id,
                                address: &address,
                                shard_port: shard_ports
                                    .get(usize::from(shard))
                                    .copied()
                                    .unwrap_or(0),
                                term: 1,
                            }),
                        }
                    })
                    .collect(),
            })
            .collect();
        let pipelines = pipelines
            .iter()
            .map(|(name, source_stream, stages)| hadron_wire::PipelineInfo {
                name,
                source_stream,
                stages: stages.iter().map(String::as_str).collect(),
            })
            .collect();
        let answer = Message::MetadataOk(hadron_wire::MetadataOk {
            shards,
            shard_ports,
            placement: PLACEMENT_NAME,
            streams,
            pipelines,
        });
        if let Err(e) = outbox.try_send(id, &answer) {
            let limit = Limit::MetadataAnswer {
                reason: e.to_string(),
            };
            outbox.fail(id, &limit.into());
        }
    })
}
