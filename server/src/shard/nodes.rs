//! `hadron cluster add-node` / `remove-node`: changing the nodes of a
//! running cluster (docs/replication.md section 9, step 7). Until a
//! metadata group holds membership, the client sends the change to every
//! node; each checks it and records it in its peer registry
//! (`config::registry`, persisted before it applies), which every shard
//! shares: a shard's links dial an added node at the first message to it
//! and accept its hellos; a removed node's links end and its hellos are
//! refused. An added node holds no partition until `hadron cluster move`
//! puts one there (static placement hashes over the founders only).

use super::*;
use crate::config::cluster::PeerSpec;
use crate::config::error::{ConfigError, Problem};
use crate::config::registry::Added;

/// The most partitions a refused removal names (then a count).
const NAMED_PARTITIONS_MAX: usize = 10;

impl<S: Storage + Clone + 'static, R: Runtime> Shard<S, R> {
    /// Checks, persists and applies a node change (runs on shard 0,
    /// serialized with applies and moves); answers what this node did.
    pub(super) async fn change_nodes(self: &Rc<Self>, change: NodeChange) -> Reply {
        if self.meta_group().is_some() {
            let command = match change {
                NodeChange::Add(peer) => meta::Command::NodeAdd(peer),
                NodeChange::Remove(id) => meta::Command::NodeRemove(id),
            };
            return self.meta_change(command).await;
        }
        if self.applying.get() {
            return Reply::Failed(Error::ApplyInProgress);
        }
        self.applying.set(true);
        let reply = self.change_nodes_now(change);
        self.applying.set(false);
        reply
    }

    /// Checks and applies a node change (the caller serializes it).
    pub(super) fn change_nodes_now(&self, change: NodeChange) -> Reply {
        let (path, result) = match change {
            NodeChange::Add(peer) => (format!("add-node {}", peer.id), self.add_node(peer)),
            NodeChange::Remove(id) => (format!("remove-node {id}"), self.remove_node(id)),
        };
        match result {
            Ok(line) => Reply::Applied(vec![line]),
            Err(e) => Reply::Failed(e.into_error(path)),
        }
    }

    /// Checks a node change without applying it (the metadata group's
    /// leader, before proposing it).
    pub(super) fn check_node_change(&self, change: &NodeChange) -> Result<(), Error> {
        match change {
            NodeChange::Add(peer) => self
                .check_node_add(peer)
                .map(|_| ())
                .map_err(|e| e.into_error(format!("add-node {}", peer.id))),
            NodeChange::Remove(id) => self
                .check_node_remove(*id)
                .map_err(|e| e.into_error(format!("remove-node {id}"))),
        }
    }

    fn add_node(&self, peer: PeerSpec) -> Result<String, NodeError> {
        self.check_node_add(&peer)?;
        let config = &self.settings.config;
        let cluster = clustered(config)?;
        let id = peer.id;
        let added = cluster
            .registry
            .add(&config.data_dir, &cluster.peers, peer)
            .map_err(|e| {
                if e.starts_with("writing") {
                    NodeError::Storage(e)
                } else {
                    NodeError::Invalid(e)
                }
            })?;
        let node = cluster.node_id;
        Ok(match added {
            Added::New => format!("node {node} added node {id}: links to it dial it"),
            Added::Known => format!("node {node} already has node {id}"),
        })
    }

    /// The checks of `add_node`, changing nothing.
    fn check_node_add(&self, peer: &PeerSpec) -> Result<Added, NodeError> {
        let config = &self.settings.config;
        let cluster = clustered(config)?;
        let invalid = NodeError::Invalid;
        if peer.id == 0 {
            return Err(invalid("node ids start at 1 (Raft reserves 0)".into()));
        }
        crate::config::cluster::check_address(&peer.address)
            .map_err(|e| invalid(format!("address: {e}")))?;
        let peer_address = peer.peer_address.clone().unwrap_or_default();
        crate::config::cluster::check_address(&peer_address)
            .map_err(|e| invalid(format!("peer address: {e}")))?;
        if cluster.secret.0.is_empty() && !crate::config::cluster::is_loopback(&peer_address) {
            return Err(invalid(format!(
                "node {} takes peer connections at {peer_address}, beyond loopback, and no cluster secret is set: set cluster.secretFile on every node first",
                peer.id
            )));
        }
        cluster.registry.check_add(peer).map_err(invalid)
    }

    fn remove_node(&self, id: u64) -> Result<String, NodeError> {
        self.check_node_remove(id)?;
        let config = &self.settings.config;
        let cluster = clustered(config)?;
        let node = cluster.node_id;
        if id == node {
            return Ok(format!(
                "node {node} is the node removed: no partition is placed on it; stop it once `hadron cluster status` shows it in no group (replicas moved off it are still being copied until then)"
            ));
        }
        let removed = cluster
            .registry
            .remove(&config.data_dir, &cluster.peers, id)
            .map_err(NodeError::Storage)?;
        Ok(if removed {
            format!(
                "node {node} removed node {id}: its links closed; stop node {id} once `hadron cluster status` shows it in no group"
            )
        } else {
            format!("node {node} had removed node {id} already")
        })
    }

    /// The checks of `remove_node`, changing nothing: no partition placed
    /// on the node.
    fn check_node_remove(&self, id: u64) -> Result<(), NodeError> {
        let cluster = clustered(&self.settings.config)?;
        // A node removed already is not an error (a resent removal must
        // succeed); one never in the cluster is a typo.
        let (_, removed) = cluster.registry.changes();
        if cluster.registry.get(id).is_none() && !removed.contains(&id) {
            let nodes: Vec<String> = cluster
                .registry
                .peers()
                .iter()
                .map(|p| p.id.to_string())
                .collect();
            return Err(NodeError::Invalid(format!(
                "there is no node {id} in the cluster (its nodes: {})",
                nodes.join(", ")
            )));
        }
        let placed = self.partitions_placed_on(id);
        if !placed.is_empty() {
            let mut named: Vec<String> =
                placed.iter().take(NAMED_PARTITIONS_MAX).cloned().collect();
            if placed.len() > NAMED_PARTITIONS_MAX {
                named.push(format!("and {} more", placed.len() - NAMED_PARTITIONS_MAX));
            }
            return Err(NodeError::Invalid(format!(
                "node {id} still holds partitions {}: move them off it first (hadron cluster rebalance --drain {id}, or hadron cluster move)",
                named.join(", ")
            )));
        }
        Ok(())
    }

    /// `stream/partition` of every partition whose placement (moved or
    /// static) names node `id`.
    fn partitions_placed_on(&self, id: u64) -> Vec<String> {
        let topology = self.topology.borrow();
        let mut placed = Vec::new();
        for (name, spec) in &topology.streams {
            for partition in 0..spec.partitions {
                if self.placed_nodes(spec, partition).contains(&id) {
                    placed.push(format!("{name}/{partition}"));
                }
            }
        }
        placed
    }
}

enum NodeError {
    Invalid(String),
    Storage(String),
}

impl NodeError {
    fn into_error(self, path: String) -> Error {
        match self {
            NodeError::Invalid(reason) => {
                Error::InvalidConfig(ConfigError::new(path, Problem::Invalid { reason }))
            }
            NodeError::Storage(e) => Error::Storage(e),
        }
    }
}

fn clustered(config: &ServerConfig) -> Result<&crate::config::cluster::ClusterConfig, NodeError> {
    config
        .cluster
        .as_ref()
        .filter(|c| c.nodes() > 1)
        .ok_or_else(|| {
            NodeError::Invalid("this server is not a node of a cluster of several nodes".into())
        })
}
