//! `Apply` and token changes on shard 0 (parse on a blocking thread, check
//! limits, persist) and installing a topology on every shard (which also
//! cuts off connections whose token no longer allows what they hold).

use super::*;

impl<S: Storage + Clone + 'static, R: Runtime> Shard<S, R> {
    /// Opens the partitions and pipeline runs of `topology` this shard
    /// owns, closes the runs it no longer has, and adopts it.
    pub(super) async fn install(self: &Rc<Self>, topology: Topology) -> Result<(), String> {
        self.install_streams(&topology).await?;
        // Before the runs: a run of a partition deleted here is not wanted.
        self.reap_offline(&topology);
        self.install_pipelines(&topology).await?;
        *self.topology.borrow_mut() = topology;
        self.say_targets();
        // A revoked or narrowed token's connections lose access now.
        self.auth.revalidate(&self.topology.borrow());
        Ok(())
    }

    /// Opens the partitions of `topology` this shard owns; gives those
    /// already open their stream's current settings.
    async fn install_streams(self: &Rc<Self>, topology: &Topology) -> Result<(), String> {
        let config = &self.settings.config;
        for spec in topology.streams.values() {
            let stream_settings = spec.settings(config);
            for partition in 0..spec.partitions {
                if self.owner(&spec.name, partition) != self.id {
                    continue;
                }
                let replication = match self.placement(spec, partition) {
                    Placed::Elsewhere => continue,
                    Placed::Alone => None,
                    Placed::Replicated(voters) => Some(voters),
                };
                let key = (spec.name.clone(), partition);
                if self.is_offline(&spec.name, partition) {
                    continue;
                }
                let open = self.partitions.borrow().get(&key).cloned();
                if let Some(p) = open {
                    // An applied change to the stream: at once (turning
                    // dedup on or off waits for a start; the apply says so).
                    p.set_dedup_limits(partition::DedupLimits {
                        window_ms: stream_settings.dedup_window_ms,
                        keys_max: stream_settings.dedup_keys_max,
                    });
                    if p.set_retention(stream_settings.retention) {
                        housekeeping::retain(&p).await;
                    }
                    continue;
                }
                let dedup = partition::DedupLimits {
                    window_ms: stream_settings.dedup_window_ms,
                    keys_max: stream_settings.dedup_keys_max,
                };
                let opened = Partition::open_as(
                    &self.storage,
                    self.runtime.clone(),
                    &config.data_dir,
                    &spec.name,
                    partition,
                    (
                        self.settings.log_config(stream_settings.retention),
                        // A replicated partition's window is rebuilt by
                        // each new leader (`Partition::replicate`).
                        partition::DedupLimits {
                            window_ms: if replication.is_some() {
                                0
                            } else {
                                dedup.window_ms
                            },
                            ..dedup
                        },
                        self.settings.limits(),
                        config.groups_max,
                    ),
                    // Placement knows: a replicated log whose log.meta
                    // records no configuration yet is one too.
                    replication.is_some(),
                )
                .await;
                let mut p = match opened {
                    Ok(p) => p,
                    // The only copy of a single node's log: the start is
                    // refused. A replica's group goes on without it.
                    Err(e) if replication.is_some() => {
                        self.take_offline(&spec.name, partition, e);
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                if let Some(voters) = replication {
                    let offsets = partition::replica_offsets::offsets_group(&spec.name);
                    let replicated = p.replicate(
                        self.replica_spec(&spec.name, partition, voters.clone())?,
                        Some(self.replica_spec(&offsets, partition, voters)?),
                        &self.storage,
                        dedup,
                    );
                    if let Err(e) = replicated.await {
                        let e = format!("stream {} partition {partition}: {e}", spec.name);
                        self.take_offline(&spec.name, partition, e);
                        continue;
                    }
                }
                let p = Rc::new(p);
                if p.replica.is_some() {
                    // A replica a move removed is reaped when its loop ends.
                    let (shard, key, driven) = (self.clone(), key.clone(), p.clone());
                    self.runtime.spawn(async move {
                        driven.drive_replication().await;
                        shard.reap_if_removed(key).await;
                    });
                    self.runtime.spawn(p.clone().drive_offsets());
                }
                self.partitions.borrow_mut().insert(key, p);
            }
        }
        Ok(())
    }

    /// Pipelines: keeps runs whose plan is unchanged, replaces the others
    /// (they rebuild from their outputs log), stops removed ones.
    async fn install_pipelines(self: &Rc<Self>, topology: &Topology) -> Result<(), String> {
        let config = &self.settings.config;
        let mut wanted = BTreeMap::new();
        for spec in topology.pipelines.values() {
            let plan = spec
                .plan(|s| topology.streams.contains_key(s))
                .map_err(|e| e.to_string())?;
            let Some(stream) = topology.streams.get(&plan.source_stream) else {
                continue;
            };
            for partition in 0..stream.partitions {
                if self.owner(&stream.name, partition) == self.id
                    && !self.is_offline(&stream.name, partition)
                    && !self.is_run_offline(&plan.name, partition)
                    && !matches!(self.placement(stream, partition), Placed::Elsewhere)
                {
                    wanted.insert((plan.name.clone(), partition), plan.clone());
                }
            }
        }
        let stale: Vec<(String, u32)> = self
            .runs
            .borrow()
            .iter()
            .filter(|(key, run)| wanted.get(*key) != Some(&run.plan))
            .map(|(key, _)| key.clone())
            .collect();
        // Stage handlers stay attached across an update: the new run gets
        // the old one's members whose stages still exist.
        let mut carried: HashMap<(String, u32), Vec<pipeline::CarriedMember>> = HashMap::new();
        for key in stale {
            let removed = self.runs.borrow_mut().remove(&key);
            if let Some(run) = removed {
                carried.insert(key.clone(), run.members());
                run.closed.set(true);
                run.wake.notify_all();
                if let Err(e) = run.sync().await {
                    tracing::warn!("closing pipeline {} partition {}: {e}", key.0, key.1);
                }
                // Its log is the replacing run's: the group stops first.
                run.close_replication().await;
            }
        }
        for ((name, partition), plan) in wanted {
            if self.runs.borrow().contains_key(&(name.clone(), partition)) {
                continue;
            }
            let source = self
                .partition(&plan.source_stream, partition)
                .map_err(|e| e.to_string())?;
            let placed = topology
                .streams
                .get(&plan.source_stream)
                .map(|stream| self.placement(stream, partition));
            let replication = match placed {
                Some(Placed::Replicated(voters)) if source.replica.is_some() => {
                    let stream = &topology.streams[&plan.source_stream];
                    let voters = self.run_voters(stream, partition, &source, voters);
                    Some(self.replica_spec(&pipeline::outputs_group(&name), partition, voters)?)
                }
                _ => None,
            };
            let replicated = replication.is_some();
            let opened = PipelineRun::open(
                &self.storage,
                &config.data_dir,
                plan,
                source,
                self.settings.log_config(Retention::default()),
                self.settings.limits(),
                replication,
            )
            .await;
            let run = match opened {
                Ok(run) => run,
                Err(e) if replicated => {
                    self.take_run_offline(&name, partition, e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let run = Rc::new(run);
            self.runtime.spawn(run.clone().drive_replication());
            for (member, stage, max_in_flight) in carried
                .remove(&(name.clone(), partition))
                .unwrap_or_default()
            {
                if let Some(s) = run.plan.stage_index(&stage) {
                    run.attach(member, s, max_in_flight);
                }
            }
            self.runs
                .borrow_mut()
                .insert((name, partition), run.clone());
            self.runtime
                .spawn(self.clone().dispatch_pipeline(Rc::downgrade(&run)));
        }
        Ok(())
    }

    /// Validates and applies resources (runs on shard 0).
    pub(super) async fn apply(self: &Rc<Self>, yaml: String, force: bool) -> Reply {
        if self.meta_group().is_some() {
            let placement = Vec::new();
            let command = meta::Command::Apply {
                yaml,
                force,
                placement,
            };
            return self.meta_change(command).await;
        }
        if self.applying.get() {
            return Reply::Failed(Error::ApplyInProgress);
        }
        self.applying.set(true);
        let reply = self.apply_inner(yaml, force).await;
        self.applying.set(false);
        reply
    }

    /// Creates or revokes a token (runs on shard 0, serialized with
    /// applies): the same checks, persistence and install as an apply.
    pub(super) async fn change_tokens(self: &Rc<Self>, change: TokenChange) -> Reply {
        if self.meta_group().is_some() {
            let command = match change {
                TokenChange::Create(spec) => meta::Command::TokenCreate(spec),
                TokenChange::Revoke(name, change) => meta::Command::TokenRevoke { name, change },
            };
            return self.meta_change(command).await;
        }
        if self.applying.get() {
            return Reply::Failed(Error::ApplyInProgress);
        }
        self.applying.set(true);
        let reply = match self.plan_tokens(change, false) {
            Ok((current, next, summary)) => self.commit(current, next, summary, false).await,
            Err(e) => Reply::Failed(e),
        };
        self.applying.set(false);
        reply
    }

    /// The topology a token change makes (current, next, summary).
    /// Creating a token that exists exactly as specified (its secret hash
    /// included) is a retry: answered unchanged. `replay`: the change was
    /// committed by the metadata group, so revoking a token that is
    /// gone is what an application interrupted before its index was
    /// recorded left: nothing to do.
    pub(super) fn plan_tokens(
        &self,
        change: TokenChange,
        replay: bool,
    ) -> Result<(Topology, Topology, Vec<String>), Error> {
        let current = self.topology.borrow().clone();
        let mut next = current.clone();
        let summary = match change {
            TokenChange::Create(spec) => {
                spec.validate()?;
                // The same name, scope and secret hash again: a retry of
                // this create (a client that lost the answer, or whose
                // meta leader lost the lead after proposing it), whatever
                // `replay` says; a new create draws a new secret.
                match next.tokens.get(&spec.name) {
                    Some(had) if *had == spec => {
                        return Ok((
                            current,
                            next,
                            vec![format!("token/{} unchanged", spec.name)],
                        ));
                    }
                    Some(_) => return Err(Error::TokenExists { token: spec.name }),
                    None => {}
                }
                let line = format!("token/{} created", spec.name);
                next.tokens.insert(spec.name.clone(), spec);
                line
            }
            TokenChange::Revoke(name, _) => {
                if next.tokens.remove(&name).is_none() {
                    if replay {
                        return Ok((current, next, vec![format!("token/{name} revoked")]));
                    }
                    return Err(Error::UnknownToken { token: name });
                }
                format!("token/{name} revoked")
            }
        };
        Ok((current, next, vec![summary]))
    }

    pub(super) async fn apply_inner(self: &Rc<Self>, yaml: String, force: bool) -> Reply {
        match self.plan_apply(yaml).await {
            Ok((current, next, summary)) => self.commit(current, next, summary, force).await,
            Err(e) => Reply::Failed(e),
        }
    }

    /// The topology an apply makes (current, next, summary), checked
    /// resource by resource; nothing changes yet.
    pub(super) async fn plan_apply(
        self: &Rc<Self>,
        yaml: String,
    ) -> Result<(Topology, Topology, Vec<String>), Error> {
        // The connection refused more than `applyBytesMax`, and the YAML
        // reader bounds nesting and refuses aliases, so parsing is cheap;
        // still, it runs off the shard's thread so that no document can
        // stall the shard's connections and partitions meanwhile.
        let resources = self
            .runtime
            .blocking(move || config::parse_documents(&yaml))
            .await?;
        let current = self.topology.borrow().clone();
        let mut next = current.clone();
        let mut summary = Vec::new();
        // Streams first, so a pipeline may name a stream of the same apply.
        let (streams, pipelines): (Vec<_>, Vec<_>) = resources
            .into_iter()
            .partition(|r| matches!(r, Resource::Stream(_)));
        for resource in streams.into_iter().chain(pipelines) {
            if let Resource::Stream(spec) = &resource {
                self.settings
                    .config
                    .check_stream_replicas(spec)
                    .map_err(Error::InvalidConfig)?;
            }
            summary.push(next.put(resource)?);
        }
        Ok((current, next, summary))
    }

    /// The checks of `commit`, changing nothing: the resource limits, and
    /// the stages `next` removes (unless forced).
    pub(super) async fn check_change(
        self: &Rc<Self>,
        current: &Topology,
        next: &Topology,
        force: bool,
    ) -> Result<(), Error> {
        self.settings
            .config
            .check_resource_counts(current.counts(), next.counts())?;
        self.check_stage_removals(current, next, force).await
    }

    /// Checks the limits and the stages `next` removes, persists it and
    /// installs it on every shard; `summary` is the answer's lines so far.
    pub(super) async fn commit(
        self: &Rc<Self>,
        current: Topology,
        next: Topology,
        mut summary: Vec<String>,
        force: bool,
    ) -> Reply {
        if let Err(failure) = self.check_change(&current, &next, force).await {
            return failure.into();
        }
        summary.extend(self.dedup_switches(&current, &next));
        if next == current {
            return Reply::Applied(summary);
        }
        if let Err(e) = self.resources.save(&next.resources()) {
            return Reply::Failed(Error::Storage(e));
        }
        let installs = (0..self.shards).map(|to| {
            self.call(
                to,
                Request::Install {
                    topology: next.clone(),
                },
            )
        });
        for reply in futures::future::join_all(installs).await {
            if let Reply::Failed(e) = reply {
                return Reply::Failed(e);
            }
        }
        Reply::Applied(summary)
    }

    /// Retention and dedup limits of existing streams change at once,
    /// except turning dedup on or off (see `Partition::set_dedup_limits`):
    /// a summary line for each stream where that waits for a start.
    fn dedup_switches(&self, current: &Topology, next: &Topology) -> Vec<String> {
        let config = &self.settings.config;
        let mut lines = Vec::new();
        for (name, spec) in &next.streams {
            let Some(old) = current.streams.get(name) else {
                continue;
            };
            let (was, now) = (
                old.settings(config).dedup_window_ms,
                spec.settings(config).dedup_window_ms,
            );
            if (was == 0) != (now == 0) {
                lines.push(format!(
                    "stream/{name}: dedupWindowMs {was} -> {now} turns deduplication {} at the next server start; its other settings apply now",
                    if now == 0 { "off" } else { "on" }
                ));
            }
        }
        lines
    }

    /// Removing a stage drops its pending work: refused unless forced.
    async fn check_stage_removals(
        self: &Rc<Self>,
        current: &Topology,
        next: &Topology,
        force: bool,
    ) -> Result<(), Error> {
        for (name, spec) in &next.pipelines {
            let Some(old) = current.pipelines.get(name) else {
                continue;
            };
            let removed: Vec<&str> = old
                .stages
                .iter()
                .map(|s| s.name.as_str())
                .filter(|n| !spec.stages.iter().any(|s| s.name == *n))
                .collect();
            if removed.is_empty() || force {
                continue;
            }
            let counts = (0..self.shards).map(|to| {
                self.call(
                    to,
                    Request::PipelineBusy {
                        pipeline: name.clone(),
                    },
                )
            });
            let busy: usize = futures::future::join_all(counts)
                .await
                .into_iter()
                .map(|r| if let Reply::Count(n) = r { n } else { 0 })
                .sum();
            if busy > 0 {
                return Err(Error::StageRemovalBusy {
                    pipeline: name.clone(),
                    removed: removed.into_iter().map(str::to_owned).collect(),
                    busy,
                });
            }
        }
        Ok(())
    }
}

/// Where a partition lives in the cluster, as this node sees it.
pub(super) enum Placed {
    /// On other nodes only.
    Elsewhere,
    /// Here, unreplicated (a single node, or `replicas: 1`).
    Alone,
    /// Here and on the other voters listed: the voters a fresh group
    /// starts with. Empty for a partition `hadron cluster move` placed
    /// (a replica added by a move learns its voters from the leader, and
    /// a replica that was there already has them in its log).
    Replicated(Vec<u64>),
}

impl<S: Storage + Clone + 'static, R: Runtime> Shard<S, R> {
    /// Where `stream`'s `partition` lives: where `hadron cluster move`
    /// put it, or the metadata leader placed it at its creation
    /// (`config::placement`), else the static placement
    /// (`ClusterConfig::placement`). A partition placed at creation
    /// starts its fresh groups with its voters, as a static one does.
    pub(super) fn placement(&self, stream: &StreamSpec, partition: u32) -> Placed {
        let config = &self.settings.config;
        let Some(cluster) = config.cluster.as_ref().filter(|c| c.nodes() > 1) else {
            return Placed::Alone;
        };
        let moved = self.settings.placements.get(&stream.name, partition);
        let nodes = self.placed_nodes(stream, partition);
        if !nodes.contains(&cluster.node_id) {
            // A replica moved away whose directory is still here (its node
            // stopped before its group removed it, or before the reap) is a
            // member by its own log: it opens, its group tells it it was
            // removed (or removes it), and it is reaped (`moves.rs`).
            let config = &self.settings.config;
            let left = partition::partition_dir(&config.data_dir, &stream.name, partition);
            if moved.is_some() && left.exists() {
                Placed::Replicated(Vec::new())
            } else {
                Placed::Elsewhere
            }
        } else if nodes.len() == 1 {
            Placed::Alone
        } else if moved.is_some() && !self.settings.placements.created(&stream.name, partition) {
            Placed::Replicated(Vec::new())
        } else {
            Placed::Replicated(nodes)
        }
    }

    /// The nodes `stream`'s `partition` is placed on: moved, or static.
    pub(super) fn placed_nodes(&self, stream: &StreamSpec, partition: u32) -> Vec<u64> {
        let config = &self.settings.config;
        if let Some(moved) = self.settings.placements.get(&stream.name, partition) {
            return moved;
        }
        match &config.cluster {
            Some(cluster) => {
                cluster.placement(&stream.name, partition, config.stream_replicas(stream))
            }
            None => vec![config.node_id()],
        }
    }

    /// How a replicated partition's group runs here.
    pub(super) fn replica_spec(
        &self,
        stream: &str,
        partition: u32,
        voters: Vec<u64>,
    ) -> Result<partition::replica::ReplicaSpec, String> {
        let config = &self.settings.config;
        let links = self.peer_links.borrow().clone().ok_or_else(|| {
            format!("stream {stream} partition {partition} is replicated, but this shard has no peer links")
        })?;
        let node_id = config.node_id();
        let shard = self.id;
        let leaders_config = config.clone();
        let leaders = self.settings.leaders.clone();
        let name: Rc<str> = Rc::from(stream);
        let reported = name.clone();
        Ok(partition::replica::ReplicaSpec {
            group: crate::replication::GroupSettings::new(
                node_id,
                crate::config::cluster::placement_hash(stream, partition),
            ),
            voters,
            net: crate::replication::GroupNet {
                links,
                stream: name,
                partition,
            },
            leader_at: Rc::new(move |id, term| super::leader_at(&leaders_config, id, term, shard)),
            on_leader: Rc::new(move |leader| leaders.set(&reported, partition, leader)),
        })
    }
}
