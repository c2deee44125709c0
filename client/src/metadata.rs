//! What `Client::metadata` returns: the server's streams, each partition
//! with the shard that owns it, and its pipelines, copied out of a
//! `MetadataOk` frame (docs/protocol.md, "Metadata / MetadataOk").
//!
//! Invariants (checked by `hadron_wire::decode` before the copy): `shards`
//! is at least 1, `shard_ports` is empty or has one port per shard, each
//! stream lists its partitions 0, 1, 2, ... in order, and every owner is
//! below `shards`. So a stream's partition count is the length of its
//! list, and `shard_ports[shard]` is the owner's port whenever the server
//! offers shard ports.
//!
//! The structs are `#[non_exhaustive]`: later protocol versions add fields
//! (a partition's leader node, say) without breaking callers.

/// The answer to [`Client::metadata`](crate::Client::metadata).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// Number of shards (at least 1).
    pub shards: u16,
    /// Each shard's own port, indexed by shard id; empty when the server
    /// offers none.
    pub shard_ports: Vec<u16>,
    /// Name of the placement function (`"fnv1a64-v1"`).
    pub placement: String,
    /// Streams in name order.
    pub streams: Vec<StreamInfo>,
    /// Pipelines in name order.
    pub pipelines: Vec<PipelineInfo>,
    /// Every node of the cluster, in id order (at most 64); empty from a
    /// server with no cluster, a cluster of one, or a server older than
    /// node lists. Subscriptions and stage handlers register on each.
    pub nodes: Vec<NodeInfo>,
}

/// One node of a cluster.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node's `cluster.nodeId`.
    pub node_id: u64,
    /// Its client address, `host:port`.
    pub address: String,
}

/// One stream and where its partitions live.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    /// The stream's name.
    pub name: String,
    /// Every partition, in order: `partitions[i].partition == i`.
    pub partitions: Vec<PartitionInfo>,
}

/// One partition, the shard that owns it, and its leader.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    /// The partition's index.
    pub partition: u32,
    /// The owning shard: requests for the partition are served fastest on
    /// `Metadata::shard_ports[shard]`.
    pub shard: u16,
    /// The partition's leader as the answering node knew it (a server
    /// with no cluster names itself); `None` during an election or from
    /// a server older than leaders in Metadata.
    pub leader: Option<crate::LeaderAddr>,
}

/// One pipeline.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineInfo {
    /// The pipeline's name.
    pub name: String,
    /// The stream whose events start its executions.
    pub source_stream: String,
    /// Its stages, in the order declared.
    pub stages: Vec<String>,
}

impl Metadata {
    /// The stream named `name`, if the server has it.
    pub fn stream(&self, name: &str) -> Option<&StreamInfo> {
        self.streams.iter().find(|s| s.name == name)
    }

    /// The pipeline named `name`, if the server has it.
    pub fn pipeline(&self, name: &str) -> Option<&PipelineInfo> {
        self.pipelines.iter().find(|p| p.name == name)
    }

    pub(crate) fn from_wire(m: &hadron_wire::MetadataOk<'_>) -> Metadata {
        Metadata {
            shards: m.shards,
            shard_ports: m.shard_ports.clone(),
            placement: m.placement.to_owned(),
            streams: m
                .streams
                .iter()
                .map(|s| StreamInfo {
                    name: s.name.to_owned(),
                    partitions: s
                        .partitions
                        .iter()
                        .map(|p| PartitionInfo {
                            partition: p.partition,
                            shard: p.shard,
                            leader: p.leader.map(|l| crate::LeaderAddr {
                                node_id: l.node_id,
                                address: l.address.to_owned(),
                                shard_port: l.shard_port,
                            }),
                        })
                        .collect(),
                })
                .collect(),
            pipelines: m
                .pipelines
                .iter()
                .map(|p| PipelineInfo {
                    name: p.name.to_owned(),
                    source_stream: p.source_stream.to_owned(),
                    stages: p.stages.iter().map(|s| (*s).to_owned()).collect(),
                })
                .collect(),
            nodes: m
                .nodes
                .iter()
                .map(|n| NodeInfo {
                    node_id: n.node_id,
                    address: n.address.to_owned(),
                })
                .collect(),
        }
    }
}

impl StreamInfo {
    /// The number of partitions.
    pub fn partition_count(&self) -> u32 {
        // `decode` checked that partition i is at index i, so the length
        // fits a u32.
        u32::try_from(self.partitions.len()).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_every_field_of_metadata_ok() {
        let wire = hadron_wire::MetadataOk {
            shards: 2,
            shard_ports: vec![7001, 7002],
            placement: hadron_wire::PLACEMENT_NAME,
            streams: vec![hadron_wire::StreamInfo {
                name: "orders",
                partitions: vec![
                    hadron_wire::PartitionInfo {
                        partition: 0,
                        shard: 1,
                        leader: Some(hadron_wire::LeaderHint {
                            node_id: 2,
                            address: "10.0.0.2:7000",
                            shard_port: 7002,
                            term: 4,
                        }),
                    },
                    hadron_wire::PartitionInfo {
                        partition: 1,
                        shard: 0,
                        leader: None,
                    },
                ],
            }],
            pipelines: vec![hadron_wire::PipelineInfo {
                name: "p",
                source_stream: "orders",
                stages: vec!["a", "b"],
            }],
            nodes: vec![hadron_wire::NodeInfo {
                node_id: 2,
                address: "10.0.0.2:7000",
            }],
        };
        let m = Metadata::from_wire(&wire);
        assert_eq!(m.shards, 2);
        assert_eq!(m.shard_ports, vec![7001, 7002]);
        assert_eq!(m.placement, "fnv1a64-v1");
        let orders = m.stream("orders").unwrap();
        assert_eq!(orders.partition_count(), 2);
        assert_eq!(
            orders.partitions,
            vec![
                PartitionInfo {
                    partition: 0,
                    shard: 1,
                    leader: Some(crate::LeaderAddr {
                        node_id: 2,
                        address: "10.0.0.2:7000".into(),
                        shard_port: 7002,
                    }),
                },
                PartitionInfo {
                    partition: 1,
                    shard: 0,
                    leader: None,
                }
            ]
        );
        assert!(m.stream("events").is_none());
        let p = m.pipeline("p").unwrap();
        assert_eq!(p.source_stream, "orders");
        assert_eq!(p.stages, vec!["a".to_owned(), "b".to_owned()]);
        assert_eq!(
            m.nodes,
            vec![NodeInfo {
                node_id: 2,
                address: "10.0.0.2:7000".into(),
            }]
        );
    }
}
