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
//! Each node takes peer connections on `peerAddress` (default: the client
//! address's port + [`PEER_PORT_OFFSET`]), shard `i` on that port + `i`;
//! every node of a cluster runs the same number of shards, so a
//! partition's replicas are on the same shard id everywhere. A partition's
//! replicas are placed by [`ClusterConfig::placement`] (static: the same
//! answer on every node from the same founders: the nodes the cluster was
//! first started with, recorded in `cluster.members`; a node joining a
//! running cluster says them in `founders:`, and nodes added later, see
//! `config::registry`, move nothing).
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
    /// Where the node's shards take peer connections: shard `i` on this
    /// port + `i`. Default: the client address's host, port + 100.
    #[serde(default)]
    pub peer_address: Option<String>,
}

impl PeerSpec {
    /// The peer address of the node's shard 0 (`peerAddress`, else the
    /// client address at port + [`PEER_PORT_OFFSET`]).
    pub fn peer_address(&self) -> Result<String, String> {
        if let Some(a) = &self.peer_address {
            return Ok(a.clone());
        }
        let (host, port) = self
            .address
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
            .ok_or_else(|| format!("{:?} is not host:port", self.address))?;
        let peer = port.checked_add(PEER_PORT_OFFSET).ok_or_else(|| {
            format!(
                "{:?}: its port + {PEER_PORT_OFFSET} (the default peer port) is over 65535; set peerAddress",
                self.address
            )
        })?;
        Ok(format!("{host}:{peer}"))
    }
}

/// The default peer port is the client port plus this.
pub const PEER_PORT_OFFSET: u16 = 100;

/// `cluster:` as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's id; one of `peers`.
    pub node_id: u64,
    /// Every node, this one included.
    pub peers: Vec<PeerSpec>,
    /// A file holding the secret every node shares (its bytes, trailing
    /// whitespace cut), read at start; [`CLUSTER_SECRET_ENV`] instead.
    #[serde(default)]
    pub secret_file: Option<std::path::PathBuf>,
    /// With `tls:`, the PEM CA that signed the nodes' certificates, which
    /// a node checks its peers against (default: `tls.clientCa`).
    #[serde(default)]
    pub peer_ca: Option<std::path::PathBuf>,
    /// The nodes the cluster was started with, whose ids static
    /// placement hashes over (nodes added later do not move partitions).
    /// A node joining a running cluster says them (its `peers` list every
    /// node, itself included); otherwise every peer is a founder. Set from
    /// `<data dir>/cluster.members` at start.
    #[serde(default)]
    pub founders: Option<Vec<u64>>,
    /// The secret, once read (never from YAML).
    #[serde(skip)]
    pub secret: ClusterSecret,
    /// The nodes now (`peers` with what `cluster add-node` and
    /// `remove-node` changed), loaded at start; shared by the shards.
    #[serde(skip)]
    pub registry: super::registry::Registry,
}

/// The environment variable that holds the cluster secret when
/// `cluster.secretFile` is not given.
pub const CLUSTER_SECRET_ENV: &str = "HADRON_CLUSTER_SECRET";
/// The shortest secret accepted, in bytes.
pub const CLUSTER_SECRET_BYTES_MIN: usize = 16;
/// The longest secret file read.
pub const CLUSTER_SECRET_BYTES_MAX: usize = 4096;

/// The secret peers prove they know (HMAC of a challenge, see
/// `replication/peer_frame.rs`); empty when none is set. Never printed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ClusterSecret(pub Vec<u8>);

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            f.write_str("ClusterSecret(none)")
        } else {
            f.write_str("ClusterSecret(..)")
        }
    }
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
            if let Some(a) = &peer.peer_address
                && let Err(reason) = check_address(a)
            {
                errors.push(invalid(format!("cluster.peers[{i}].peerAddress"), reason));
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
        if let Some(founders) = &self.founders {
            errors.extend(self.founders_errors(founders));
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

    /// `founders`: some, distinct, each among `peers`.
    fn founders_errors(&self, founders: &[u64]) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let invalid =
            |path: String, reason: String| ConfigError::new(path, Problem::Invalid { reason });
        if founders.is_empty() {
            errors.push(invalid(
                "cluster.founders".into(),
                "empty: list the ids of the nodes the cluster was started with".into(),
            ));
        }
        for (i, id) in founders.iter().enumerate() {
            if founders[..i].contains(id) {
                errors.push(invalid(
                    format!("cluster.founders[{i}]"),
                    format!("node {id} is listed twice"),
                ));
            } else if self.peers.iter().all(|p| p.id != *id) {
                errors.push(invalid(
                    format!("cluster.founders[{i}]"),
                    format!("node {id} is not among cluster.peers; list every node"),
                ));
            }
        }
        errors
    }

    /// How many nodes the cluster has.
    pub fn nodes(&self) -> usize {
        self.peers.len()
    }

    /// Reads the secret: `secretFile`, else [`CLUSTER_SECRET_ENV`]. Then
    /// refuses a cluster whose peer addresses go beyond loopback with no
    /// secret, or a secret shorter than [`CLUSTER_SECRET_BYTES_MIN`].
    pub fn load_secret(&mut self) -> Result<(), String> {
        let secret = match &self.secret_file {
            Some(path) => {
                let meta = std::fs::metadata(path)
                    .map_err(|e| format!("cluster.secretFile {}: {e}", path.display()))?;
                if meta.len() > CLUSTER_SECRET_BYTES_MAX as u64 {
                    return Err(format!(
                        "cluster.secretFile {}: {} bytes (at most {CLUSTER_SECRET_BYTES_MAX})",
                        path.display(),
                        meta.len()
                    ));
                }
                let bytes = std::fs::read(path)
                    .map_err(|e| format!("cluster.secretFile {}: {e}", path.display()))?;
                let end = bytes
                    .iter()
                    .rposition(|b| !b.is_ascii_whitespace())
                    .map_or(0, |i| i + 1);
                bytes[..end].to_vec()
            }
            None => std::env::var(CLUSTER_SECRET_ENV)
                .map(String::into_bytes)
                .unwrap_or_default(),
        };
        if !secret.is_empty() && secret.len() < CLUSTER_SECRET_BYTES_MIN {
            return Err(format!(
                "cluster secret: {} bytes, at least {CLUSTER_SECRET_BYTES_MIN} (say `openssl rand -hex 32`)",
                secret.len()
            ));
        }
        if secret.is_empty() && self.nodes() > 1 {
            for peer in &self.peers {
                let address = peer.peer_address()?;
                if !is_loopback(&address) {
                    return Err(format!(
                        "cluster.peers: node {} takes peer connections at {address}, beyond loopback, and no cluster secret is set: any host reaching it could speak Raft to it; set cluster.secretFile (or {CLUSTER_SECRET_ENV}) on every node",
                        peer.id
                    ));
                }
            }
        }
        self.secret = ClusterSecret(secret);
        Ok(())
    }

    /// The node `id`, if it is one of the cluster now (the registry once
    /// loaded, else `peers`).
    pub fn peer(&self, id: u64) -> Option<PeerSpec> {
        if self.registry.loaded() {
            return self.registry.get(id);
        }
        self.peers.iter().find(|p| p.id == id).cloned()
    }

    /// Every node now, in id order.
    pub fn current_peers(&self) -> Vec<PeerSpec> {
        if self.registry.loaded() {
            return self.registry.peers();
        }
        let mut peers = self.peers.clone();
        peers.sort_unstable_by_key(|p| p.id);
        peers
    }

    /// The founders' ids, sorted (every peer when not said).
    pub fn founder_ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = match &self.founders {
            Some(f) => f.clone(),
            None => self.peers.iter().map(|p| p.id).collect(),
        };
        ids.sort_unstable();
        ids
    }

    /// The nodes holding `stream`'s `partition` when it has `replicas`
    /// replicas, the preferred leader first: `replicas` consecutive nodes
    /// in id order, starting at a node chosen by the partition's hash, so
    /// that partitions and their preferred leaders spread over the nodes.
    /// Every node computes the same answer from the same founders
    /// (static placement, over the founders only: adding a node moves
    /// nothing; `hadron cluster move` does).
    pub fn placement(&self, stream: &str, partition: u32, replicas: u32) -> Vec<u64> {
        let ids = self.founder_ids();
        if ids.is_empty() {
            return ids;
        }
        let start = placement_hash(stream, partition) as usize % ids.len();
        let take = (replicas as usize).clamp(1, ids.len());
        (0..take).map(|i| ids[(start + i) % ids.len()]).collect()
    }
}

/// The file in a data dir that records the cluster it belongs to.
pub const MEMBERS_FILE: &str = "cluster.members";

/// What [`MEMBERS_FILE`] holds: `node N` and `peers A,B,C` lines.
fn members_text(node_id: u64, peers: &[u64]) -> String {
    let ids: Vec<String> = peers.iter().map(u64::to_string).collect();
    format!("node {node_id}\npeers {}\n", ids.join(","))
}

/// Reads [`MEMBERS_FILE`]'s (node id, sorted peer ids).
fn parse_members(text: &str) -> Option<(u64, Vec<u64>)> {
    let mut node = None;
    let mut peers = None;
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("node", n)) => node = n.trim().parse().ok(),
            Some(("peers", list)) => {
                peers = list
                    .split(',')
                    .map(|id| id.trim().parse::<u64>().ok())
                    .collect::<Option<Vec<u64>>>();
            }
            _ => return None,
        }
    }
    Some((node?, peers?))
}

/// Holds a data dir to the cluster it was created in: its node id and
/// the cluster's founders (`peers A,B,C`), whose ids static placement
/// hashes over. A node restarted with another node id, or told other
/// founders, would place partitions differently and could form a second
/// majority of a group (two leaders in one term), so such a start is
/// refused, naming both. The configured peers may differ from the
/// founders: nodes added since (`hadron cluster add-node`). A fresh data
/// dir records the config's founders (a cluster of one records nothing);
/// a data dir that a single node already used does not join a cluster
/// (its logs have no Raft voters). Then sets `cluster.founders` to the
/// recorded ones and loads the peer registry (`config::registry`).
pub fn check_members(
    data_dir: &std::path::Path,
    cluster: Option<&mut ClusterConfig>,
) -> Result<(), String> {
    let path = data_dir.join(MEMBERS_FILE);
    let recorded = match std::fs::read_to_string(&path) {
        Ok(text) => Some(parse_members(&text).ok_or_else(|| {
            format!("{}: not `node N` and `peers A,B,...` lines", path.display())
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let Some(cluster) = cluster.filter(|c| c.nodes() > 1) else {
        return match recorded {
            None => Ok(()),
            Some((node, peers)) => Err(format!(
                "{} says this data dir is node {node} of the cluster of nodes {peers:?}; start it with that cluster: (a data dir does not leave its cluster)",
                path.display()
            )),
        };
    };
    let (want_node, want_founders) = (cluster.node_id, cluster.founder_ids());
    match recorded {
        Some((node, founders)) if node != want_node => {
            return Err(format!(
                "{} says this data dir is node {node} of the cluster of nodes {founders:?}, but the configuration makes it node {want_node}: start it with its recorded node id",
                path.display()
            ));
        }
        Some((node, founders)) if cluster.founders.is_some() && founders != want_founders => {
            return Err(format!(
                "{} says this data dir is node {node} of the cluster founded by nodes {founders:?}, but cluster.founders says {want_founders:?}: drop cluster.founders or say the recorded ones",
                path.display()
            ));
        }
        Some((_, founders)) => cluster.founders = Some(founders),
        None => {
            if data_dir.join("resources.yaml").exists() {
                return Err(format!(
                    "{} holds data a single server wrote; a used data dir cannot join a cluster yet (its partitions have no Raft voters): start the cluster node on a fresh data dir",
                    data_dir.display()
                ));
            }
            write_members(&path, &members_text(want_node, &want_founders))?;
            cluster.founders = Some(want_founders);
        }
    }
    cluster.registry = super::registry::Registry::load(data_dir, &cluster.peers)?;
    Ok(())
}

/// Writes [`MEMBERS_FILE`] durably (a temporary file, fsync, rename, fsync
/// of the directory).
pub(crate) fn write_members(path: &std::path::Path, text: &str) -> Result<(), String> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let io = |e: std::io::Error| format!("writing {}: {e}", path.display());
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
    }
    Ok(())
}

/// FNV-1a of the stream name and partition: stable across builds and
/// machines, as placement must be (also a Raft group's id in logs).
pub fn placement_hash(stream: &str, partition: u32) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in stream.bytes().chain(partition.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Whether `host:port` names this machine's loopback (an IP in
/// 127.0.0.0/8 or ::1, or `localhost`).
pub(crate) fn is_loopback(address: &str) -> bool {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `host:port`: a non-empty host of at most [`PEER_ADDRESS_BYTES_MAX`]
/// bytes with no whitespace, and a port from 1 to 65535. IPv6 hosts are
/// bracketed (`[::1]:7000`).
pub(crate) fn check_address(address: &str) -> Result<(), String> {
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
