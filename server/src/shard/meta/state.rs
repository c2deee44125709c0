//! A node's whole metadata as the metadata group's `State` entry carries
//! it ([`MetaSnapshot`]): read from the shard's state, and applied by
//! REPLACING it, through today's code paths (install the topology, set
//! the placement overrides that differ, add and remove nodes). Applying
//! the same `State` twice changes nothing the second time.

use std::rc::Rc;

use super::command::Placements;
use super::{Command, MetaSnapshot};
use crate::config::{self, Resource};
use crate::shard::clock::Runtime;
use crate::shard::partition::replica::encode_batch;
use crate::shard::topology::Topology;
use crate::shard::{Error, NodeChange, Reply, Shard};
use hadron_engine::storage::Storage;

impl<S: Storage + Clone + 'static, R: Runtime> Shard<S, R> {
    /// This node's metadata now: its resources (as `resources.yaml`
    /// holds them), placement overrides and registry changes.
    pub(super) fn meta_snapshot(&self) -> Result<MetaSnapshot, Error> {
        let resources = self.topology.borrow().resources();
        let resources = config::to_yaml_documents(&resources)
            .map_err(|e| Error::Internal(format!("the resources as YAML: {e}")))?;
        let (added, removed) = self
            .settings
            .config
            .cluster
            .as_ref()
            .map(|c| c.registry.changes())
            .unwrap_or_default();
        Ok(MetaSnapshot {
            resources,
            placement: self.settings.placements.all(),
            added,
            removed,
            created: self.settings.placements.all_created(),
        })
    }

    /// Refuses a change after which this node's metadata (resources
    /// `next`, `placed` new replicated partitions) would, as one `State`
    /// entry, be over `entry_bytes_max`: the metadata log could no longer
    /// be compacted (its `State` entries would be refused), so it would
    /// grow with every change for good.
    pub(super) fn check_state_bytes(
        &self,
        next: &Topology,
        placed: &Placements,
        entry_bytes_max: usize,
    ) -> Result<(), Error> {
        let mut state = self.meta_snapshot()?;
        state.resources = config::to_yaml_documents(&next.resources())
            .map_err(|e| Error::Internal(format!("the resources as YAML: {e}")))?;
        state.placement.extend(placed.iter().cloned());
        state
            .created
            .extend(placed.iter().map(|(stream, p, _)| (stream.clone(), *p)));
        let bytes = encode_batch(&[&Command::State(state).encode()], 0).len();
        if bytes > entry_bytes_max {
            return Err(Error::MetadataTooLarge {
                bytes,
                max: entry_bytes_max,
            });
        }
        Ok(())
    }

    /// Replaces this node's metadata by `state` (forced, as every
    /// committed command is applied); the answer's lines.
    pub(super) async fn apply_state(self: &Rc<Self>, state: MetaSnapshot) -> Reply {
        let mut lines = Vec::new();
        // Resources: the topology the State holds, whole.
        let yaml = state.resources;
        let parsed = self
            .runtime
            .blocking(move || config::parse_documents(&yaml))
            .await;
        let resources = match parsed {
            Ok(r) => r,
            Err(e) => return Reply::Failed(e.into()),
        };
        let mut next = Topology::default();
        let (streams, rest): (Vec<_>, Vec<_>) = resources
            .into_iter()
            .partition(|r| matches!(r, Resource::Stream(_)));
        for resource in streams.into_iter().chain(rest) {
            if let Err(e) = next.put(resource) {
                return Reply::Failed(e);
            }
        }
        // Placements made at creation first: partitions the topology adds
        // open with their voters.
        let created: Vec<_> = state
            .placement
            .iter()
            .filter(|(stream, partition, voters)| {
                state.created.contains(&(stream.clone(), *partition))
                    && !(self.settings.placements.created(stream, *partition)
                        && self.settings.placements.get(stream, *partition).as_ref()
                            == Some(voters))
            })
            .cloned()
            .collect();
        if let Err(e) = self.record_placement(&created) {
            return Reply::Failed(e);
        }
        let current = self.topology.borrow().clone();
        match self.commit(current, next, Vec::new(), true).await {
            Reply::Applied(more) => lines.extend(more),
            other => return other,
        }
        // Placement: the overrides that differ, as moves.
        for (stream, partition, voters) in state.placement {
            if self.settings.placements.get(&stream, partition).as_ref() == Some(&voters)
                || state.created.contains(&(stream.clone(), partition))
            {
                continue;
            }
            match self.move_inner(stream, partition, voters).await {
                Reply::Applied(more) => lines.extend(more),
                other => return other,
            }
        }
        // Registry: the nodes added, then those removed.
        let node = self.settings.config.node_id();
        let known = |id: u64| {
            self.settings
                .config
                .cluster
                .as_ref()
                .and_then(|c| c.peer(id))
        };
        for peer in state.added {
            if known(peer.id).as_ref() == Some(&peer) {
                continue;
            }
            match self.change_nodes_now(NodeChange::Add(peer)) {
                Reply::Applied(more) => lines.extend(more),
                other => return other,
            }
        }
        for &id in &state.removed {
            if known(id).is_none() {
                continue;
            }
            match self.change_nodes_now(NodeChange::Remove(id)) {
                Reply::Applied(more) => lines.extend(more),
                other => return other,
            }
        }
        let removed_here = state.removed.contains(&node).then_some(node);
        self.say_meta_target(removed_here);
        Reply::Applied(lines)
    }
}
