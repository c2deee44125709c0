//! `hadron cluster move`: moving a replicated partition's replicas
//! between nodes (docs/replication.md section 9, step 7). Until a metadata
//! group holds placement, the client sends the move to every node; each
//! node checks it, persists it (`config::placement`, before anything
//! changes) and installs its topology again on the owning shard, where
//! placement now consults the override:
//!
//! - a node hosting the partition tells its events, offsets and pipeline
//!   outputs groups the target (`Replica::set_target_voters`); their
//!   leader reconciles toward it;
//! - a node in the target that does not host it opens the partition and
//!   its runs with no voters, on fresh logs: they learn their voters from
//!   the leader (`Placed::Replicated` of an empty list);
//! - a node in neither only records it.
//!
//! Targets are held in memory by the groups, so every install (a start
//! included) says them again. A replica the group removed stops; its
//! partition and runs here are closed and their directories deleted
//! (`reap_removed`).

use super::*;
use crate::config::error::{ConfigError, Problem};

impl<S: Storage + Clone + 'static, R: Runtime> Shard<S, R> {
    /// Checks, persists and applies a move (runs on shard 0, serialized
    /// with applies); answers what this node did.
    pub(super) async fn move_partition(
        self: &Rc<Self>,
        stream: String,
        partition: u32,
        voters: Vec<u64>,
    ) -> Reply {
        if self.meta_group().is_some() {
            let command = meta::Command::Move {
                stream,
                partition,
                voters,
            };
            return self.meta_change(command).await;
        }
        if self.applying.get() {
            return Reply::Failed(Error::ApplyInProgress);
        }
        self.applying.set(true);
        let reply = self.move_inner(stream, partition, voters).await;
        self.applying.set(false);
        reply
    }

    /// Checks, persists and applies a move (the caller serializes it).
    pub(super) async fn move_inner(
        self: &Rc<Self>,
        stream: String,
        partition: u32,
        voters: Vec<u64>,
    ) -> Reply {
        let topology = self.topology.borrow().clone();
        let spec = match self.check_move(&topology, &stream, partition, &voters) {
            Ok(spec) => spec,
            Err(reason) => return Reply::Failed(Self::move_refused(&stream, partition, reason)),
        };
        let node = self.settings.config.node_id();
        let was = self.placed_nodes(&spec, partition);
        let config = &self.settings.config;
        if let Err(e) =
            self.settings
                .placements
                .set(&config.data_dir, &stream, partition, voters.clone())
        {
            return Reply::Failed(Error::Storage(e));
        }
        let owner = self.owner(&stream, partition);
        // Boxed: `call` may serve it here, through `handle`, which led here.
        let install = Box::pin(self.call(owner, Request::Install { topology }));
        if let Reply::Failed(e) = install.await {
            return Reply::Failed(e);
        }
        let did = match (was.contains(&node), voters.contains(&node)) {
            (true, true) => "hosts it: its groups move toward the target",
            (true, false) => "hosts it until its groups remove this replica",
            (false, true) => "opened an empty replica: it joins from the leader",
            (false, false) => "holds no replica: placement recorded",
        };
        Reply::Applied(vec![format!(
            "{stream}/{partition} -> {voters:?}: node {node} {did}"
        )])
    }

    /// The error of a move refused for `reason`.
    pub(super) fn move_refused(stream: &str, partition: u32, reason: String) -> Error {
        Error::InvalidConfig(ConfigError::new(
            format!("move of {stream}/{partition}"),
            Problem::Invalid { reason },
        ))
    }

    /// The stream of a valid move: a replicated stream of this cluster,
    /// a partition of it, and `replicas` distinct node ids of the cluster.
    pub(super) fn check_move(
        &self,
        topology: &Topology,
        stream: &str,
        partition: u32,
        voters: &[u64],
    ) -> Result<StreamSpec, String> {
        let config = &self.settings.config;
        let cluster = config
            .cluster
            .as_ref()
            .filter(|c| c.nodes() > 1)
            .ok_or("this server is not a node of a cluster of several nodes")?;
        let spec = topology
            .streams
            .get(stream)
            .ok_or_else(|| format!("no stream {stream:?}"))?;
        let replicas = config.stream_replicas(spec);
        if replicas < 2 {
            return Err(format!(
                "stream {stream} has {replicas} replica: only a replicated stream moves"
            ));
        }
        if partition >= spec.partitions {
            return Err(format!(
                "stream {stream} has {} partitions; no partition {partition}",
                spec.partitions
            ));
        }
        crate::config::placement::check_voters(voters)?;
        if voters.len() != replicas as usize {
            return Err(format!(
                "{} voters for stream {stream} of {replicas} replicas: name {replicas}",
                voters.len()
            ));
        }
        if let Some(unknown) = voters.iter().find(|&&id| cluster.peer(id).is_none()) {
            return Err(format!("node {unknown} is not a node of this cluster"));
        }
        Ok(spec.clone())
    }

    /// Tells every group of a moved partition here its target (after each
    /// install: the groups hold it in memory only).
    pub(super) fn say_targets(&self) {
        let placements = &self.settings.placements;
        let say = |replica: Option<Rc<partition::replica::Replica<S, R>>>, target: &[u64]| {
            if let Some(r) = replica
                && let Err(e) = r.set_target_voters(target.to_vec())
            {
                tracing::warn!("placement override {target:?}: {e}");
            }
        };
        for ((stream, partition), p) in self.partitions.borrow().iter() {
            if let Some(target) = placements.get(stream, *partition) {
                say(p.replica.clone(), &target);
                say(p.offsets_replica.clone(), &target);
            }
        }
        for ((_, partition), run) in self.runs.borrow().iter() {
            if let Some(target) = placements.get(&run.plan.source_stream, *partition) {
                say(run.replica(), &target);
            }
        }
    }

    /// After a partition's events group loop ended: when the group removed
    /// this replica and placement no longer names this node, closes the
    /// partition and its pipeline runs here and deletes their directories;
    /// requests for it then answer `NotLeader`, as for a partition placed
    /// elsewhere.
    pub(super) async fn reap_if_removed(self: Rc<Self>, key: (String, u32)) {
        let (stream, partition) = (&key.0, key.1);
        let Some(p) = self.partitions.borrow().get(&key).cloned() else {
            return;
        };
        let spec = self.topology.borrow().streams.get(stream).cloned();
        let node = self.settings.config.node_id();
        let removed = p.replica.as_ref().is_some_and(|r| r.removed());
        if !removed || spec.is_none_or(|s| self.placed_nodes(&s, partition).contains(&node)) {
            return;
        }
        let data_dir = &self.settings.config.data_dir;
        let runs: Vec<(String, u32)> = self
            .runs
            .borrow()
            .iter()
            .filter(|((_, at), run)| *at == partition && run.plan.source_stream == *stream)
            .map(|(k, _)| k.clone())
            .collect();
        let mut dirs = Vec::new();
        for run_key in runs {
            let removed = self.runs.borrow_mut().remove(&run_key);
            if let Some(run) = removed {
                run.closed.set(true);
                run.wake.notify_all();
                run.close_replication().await;
                dirs.push(
                    data_dir
                        .join("pipelines")
                        .join(&run_key.0)
                        .join(format!("{partition:05}")),
                );
            }
        }
        if let Some(offsets) = &p.offsets_replica {
            offsets.close().await;
        }
        self.partitions.borrow_mut().remove(&key);
        dirs.push(partition::partition_dir(data_dir, stream, partition));
        for dir in dirs {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => tracing::info!("moved away: deleted {}", dir.display()),
                Err(e) => tracing::warn!("moved away: deleting {}: {e}", dir.display()),
            }
        }
    }

    /// The voters a new pipeline run's outputs group starts with, for a
    /// source placed `voters` (see `Placed::Replicated`): a moved
    /// partition whose events group here already counts this node a voter
    /// starts its new runs' groups with the placement (every voter does
    /// the same); one still joining starts them empty, joining too.
    pub(super) fn run_voters(
        &self,
        stream: &StreamSpec,
        partition: u32,
        source: &Partition<S, R>,
        voters: Vec<u64>,
    ) -> Vec<u64> {
        let node = self.settings.config.node_id();
        let member = source
            .replica
            .as_ref()
            .is_some_and(|r| r.conf_state().voters.contains(&node));
        if voters.is_empty() && member {
            self.placed_nodes(stream, partition)
        } else {
            voters
        }
    }
}
