//! Stream requests from a connection: publish, fetch and metadata.

use super::*;
use crate::config::StreamSpec;
use crate::shard::error::LeaderAt;

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
        let streams: Vec<(String, Vec<Option<LeaderAt>>)> = topology
            .streams
            .iter()
            .filter(|(name, _)| wanted.is_empty() || wanted.contains(name.as_str()))
            .map(|(name, s)| {
                let leaders = (0..s.partitions)
                    .map(|p| partition_leader(shard, s, p))
                    .collect();
                (name.clone(), leaders)
            })
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
    let nodes = cluster_nodes(shard);
    Box::new(move |id, outbox: &Outbox| {
        let streams = streams
            .iter()
            .map(|(name, leaders)| hadron_wire::StreamInfo {
                name,
                partitions: (0u32..)
                    .zip(leaders)
                    .map(|(partition, leader)| hadron_wire::PartitionInfo {
                        partition,
                        shard: hadron_wire::shard_of(name, partition, shards),
                        leader: leader.as_ref().map(|l| hadron_wire::LeaderHint {
                            node_id: l.node_id,
                            address: &l.address,
                            shard_port: l.shard_port,
                            term: l.term,
                        }),
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
            nodes: nodes
                .iter()
                .map(|(node_id, address)| hadron_wire::NodeInfo {
                    node_id: *node_id,
                    address,
                })
                .collect(),
        });
        if let Err(e) = outbox.try_send(id, &answer) {
            let limit = Limit::MetadataAnswer {
                reason: e.to_string(),
            };
            outbox.fail(id, &limit.into());
        }
    })
}

// Every node of a cluster fits one `MetadataOk`.
const _: () = assert!(crate::config::cluster::CLUSTER_NODES_MAX <= hadron_wire::METADATA_NODES_MAX);

/// The cluster's nodes for `MetadataOk`, in id order, as the registry has
/// them now (founders, plus added, less removed): none on a server with no
/// cluster or a cluster of one, where a client keeps its one connection.
fn cluster_nodes(shard: &Shard) -> Vec<(u64, String)> {
    let Some(cluster) = shard.settings.config.cluster.as_ref() else {
        return Vec::new();
    };
    let peers = cluster.current_peers();
    if peers.len() <= 1 {
        return Vec::new();
    }
    peers
        .into_iter()
        .take(hadron_wire::METADATA_NODES_MAX)
        .map(|p| (p.id, p.address))
        .collect()
}

/// Where `stream`'s `partition` is led, as this node knows: a server with
/// no cluster leads every partition itself, in term 1 (docs/replication.md
/// section 12), named by its `listen` address (a client replaces an
/// unspecified IP with the host it dialled) and the owning shard's port; in
/// a cluster, a partition with one replica is led by its node, and a
/// replicated one by the leader its owning shard last saw (none during an
/// election, or when this node holds no replica).
fn partition_leader(shard: &Shard, stream: &StreamSpec, partition: u32) -> Option<LeaderAt> {
    let config = &shard.settings.config;
    let owner = hadron_wire::shard_of(&stream.name, partition, shard.shards);
    let Some(cluster) = config.cluster.as_ref().filter(|c| c.nodes() > 1) else {
        return Some(LeaderAt {
            node_id: config.node_id(),
            address: config.listen.to_string(),
            shard_port: shard_ports(shard)
                .get(usize::from(owner))
                .copied()
                .unwrap_or(0),
            term: 1,
        });
    };
    let replicas = config.stream_replicas(stream);
    let (node, term) = if replicas == 1 {
        (*cluster.placement(&stream.name, partition, 1).first()?, 1)
    } else {
        shard.settings.leaders.get(&stream.name, partition)?
    };
    crate::shard::leader_at(config, node, term, owner)
}
