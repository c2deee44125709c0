//! `cluster:` in the server settings: this node's id and every node of the
//! cluster (docs/replication.md sections 2 and 12), and `replicas:` rules
//! for Streams that depend on it.
//!
//! ```yaml
//! cluster:
//!   nodeId: 1                       # this node; must be among `peers`
//!   peers:                          # every node, this one included
//!     - { id: 1, address: "10.0.0.1:7000" }
//!     - { id: 2, address: "10.0.0.2:7000" }
//!     - { id: 3, address: "10.0.0.3:7000" }
//! ```
//!
//! Ids are 1 and up (Raft reserves 0) and unique; addresses are the nodes'
//! client addresses, `host:port`, and distinct; at most
//! [`CLUSTER_NODES_MAX`] nodes. No `cluster:` section is a cluster of one:
//! today's server, node id [`NODE_ID_SINGLE`].
//!
//! **Replication is not built yet**: a server whose `cluster:` names more
//! than itself refuses to start ([`ClusterConfig::check_startable`]);
//! `hadron server --check-config` validates such a file all the same, so
//! cluster configs can be written and checked now.
//!
//! A Stream's `replicas:` defaults to 1 with fewer than 3 nodes and 3 from
//! 3 nodes; it is at most the node count and at most [`REPLICAS_MAX`], and
//! above 1 it needs `fsync: always` (a majority's fdatasync is what makes
//! a replicated publish durable; relaxed fsync under replication is not
//! offered, docs/replication.md section 13).

use serde::Deserialize;

use super::error::{ConfigError, Problem};

/// The most nodes a cluster lists: the metadata group has at most 5
/// voters and the others are learners, each a peer connection per shard
/// pair, so the registry and the connections stay small.
pub const CLUSTER_NODES_MAX: usize = 64;
/// The node id of a server with no `cluster:` section.
pub const NODE_ID_SINGLE: u64 = 1;
/// The most replicas of a partition: each is a write and an fdatasync on
/// another node for every batch; 5 survives two failures.
pub const REPLICAS_MAX: u32 = 5;
/// `replicas` when a Stream does not say, in a cluster of this many nodes
/// or more; below it, 1.
pub const REPLICAS_DEFAULT_FROM_NODES: usize = 3;
/// ... and the default itself there.
pub const REPLICAS_DEFAULT_CLUSTER: u32 = 3;
/// The longest peer address accepted (a DNS name is at most 253 bytes).
pub const PEER_ADDRESS_BYTES_MAX: usize = 260;

const _: () = assert!(REPLICAS_DEFAULT_CLUSTER <= REPLICAS_MAX);
const _: () = assert!(REPLICAS_DEFAULT_FROM_NODES >= REPLICAS_DEFAULT_CLUSTER as usize);

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerSpec {
    /// 1 and up, unique.
    pub id: u64,
    /// The node's client address, `host:port`.
    pub address: String,
}

/// `cluster:` as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's id; one of `peers`.
    pub node_id: u64,
    /// Every node, this one included.
    pub peers: Vec<PeerSpec>,
}

impl ClusterConfig {
    /// Every problem, with paths under `cluster`; empty when valid.
    pub fn errors(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let invalid =
            |path: String, reason: String| ConfigError::new(path, Problem::Invalid { reason });
        if self.node_id == 0 {
            errors.push(invalid(
                "cluster.nodeId".into(),
                "node ids start at 1 (Raft reserves 0)".into(),
            ));
        }
        if self.peers.is_empty() || self.peers.len() > CLUSTER_NODES_MAX {
            errors.push(ConfigError::new(
                "cluster.peers",
                Problem::OutOfRange {
                    value: self.peers.len() as u64,
                    min: 1,
                    max: CLUSTER_NODES_MAX as u64,
                },
            ));
        }
        for (i, peer) in self.peers.iter().enumerate() {
            if peer.id == 0 {
                errors.push(invalid(
                    format!("cluster.peers[{i}].id"),
                    "node ids start at 1 (Raft reserves 0)".into(),
                ));
            }
            if let Some(first) = self.peers[..i].iter().position(|p| p.id == peer.id) {
                errors.push(invalid(
                    format!("cluster.peers[{i}].id"),
                    format!("node id {} is also peers[{first}]'s", peer.id),
                ));
            }
            if let Err(reason) = check_address(&peer.address) {
                errors.push(invalid(format!("cluster.peers[{i}].address"), reason));
            } else if let Some(first) = self.peers[..i]
                .iter()
                .position(|p| p.address.eq_ignore_ascii_case(&peer.address))
            {
                errors.push(invalid(
                    format!("cluster.peers[{i}].address"),
                    format!("{:?} is also peers[{first}]'s address", peer.address),
                ));
            }
        }
        if self.node_id != 0 && !self.peers.iter().any(|p| p.id == self.node_id) {
            errors.push(invalid(
                "cluster.nodeId".into(),
                format!(
                    "node {} is not among cluster.peers; list every node, this one included",
                    self.node_id
                ),
            ));
        }
        errors
    }

    /// How many nodes the cluster has.
    pub fn nodes(&self) -> usize {
        self.peers.len()
    }

    /// Refuses a cluster of more than this node: replication is not built
    /// yet (docs/replication.md section 15, steps 4 and 5).
    pub fn check_startable(&self) -> Result<(), String> {
        if self.nodes() > 1 {
            return Err(format!(
                "cluster.peers lists {} nodes, but clusters are not built yet: this server runs as a single node only (remove `cluster:`, or list only this node); `hadron server --check-config` validates cluster configs",
                self.nodes()
            ));
        }
        Ok(())
    }
}

/// `host:port`: a non-empty host of at most [`PEER_ADDRESS_BYTES_MAX`]
/// bytes with no whitespace, and a port from 1 to 65535. IPv6 hosts are
/// bracketed (`[::1]:7000`).
fn check_address(address: &str) -> Result<(), String> {
    let how = "write it host:port, like 10.0.0.2:7000 or node2.example:7000";
    if address.len() > PEER_ADDRESS_BYTES_MAX {
        return Err(format!("longer than {PEER_ADDRESS_BYTES_MAX} bytes; {how}"));
    }
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(format!("{address:?} has no port; {how}"));
    };
    let host_ok = !host.chars().any(char::is_whitespace)
        && match host.strip_prefix('[') {
            Some(v6) => v6.strip_suffix(']').is_some_and(|v6| !v6.is_empty()),
            None => !host.is_empty() && !host.contains([':', '[', ']']),
        };
    if !host_ok {
        return Err(format!("{address:?} has no valid host; {how}"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("{address:?} has no valid port (1 to 65535); {how}")),
    }
}

/// `replicas` for a Stream that does not say, in a cluster of `nodes`.
pub fn replicas_default(nodes: usize) -> u32 {
    if nodes >= REPLICAS_DEFAULT_FROM_NODES {
        REPLICAS_DEFAULT_CLUSTER
    } else {
        1
    }
}

/// The problem with a Stream's `replicas: Some(replicas)` on a server
/// of `nodes` nodes and the given fsync policy, if any; path
/// `spec.replicas`.
pub fn replicas_error(replicas: u32, nodes: usize, fsync_always: bool) -> Option<ConfigError> {
    let max = u64::from(REPLICAS_MAX).min(nodes as u64);
    if replicas == 0 || u64::from(replicas) > max {
        let reason = format!(
            "{replicas} replicas: allowed 1 to {max} (at most {REPLICAS_MAX}, and at most the cluster's {nodes} node(s))"
        );
        return Some(ConfigError::new(
            "spec.replicas",
            Problem::Invalid { reason },
        ));
    }
    if replicas > 1 && !fsync_always {
        return Some(ConfigError::new(
            "spec.replicas",
            Problem::Invalid {
                reason: format!(
                    "{replicas} replicas need the server's `fsync: always` (a replicated publish is acknowledged once a majority has it on disk); set fsync: always or replicas: 1"
                ),
            },
        ));
    }
    None
}

#[cfg(test)]
mod tests;
