//! Serving a [`Request`] on the shard that owns its partition: streams
//! (publish, fetch), consumer groups, pipelines, and the shard-wide
//! requests (apply, status).

use super::*;
use crate::retry_lines::RetryLine;
use error::DeliveryKind;

impl<S: Storage + Clone + 'static, R: Runtime> Shard<S, R> {
    /// Serves `req`, one request family per method below.
    pub(super) async fn handle(self: Rc<Self>, req: Request) -> Reply {
        match req {
            Request::Publish {
                stream,
                partition,
                events,
            } => self.publish(&stream, partition, &events).await,
            Request::Fetch {
                stream,
                partition,
                offset,
                max_bytes,
            } => match self.partition(&stream, partition) {
                Ok(p) => match p.fetch(offset, max_bytes).await {
                    Ok((next, records)) => Reply::Fetched(next, records),
                    Err(f) => f.into(),
                },
                Err(f) => f.into(),
            },
            Request::Attach {
                stream,
                partition,
                group,
                durable,
                start,
                max_in_flight,
                member,
            } => self
                .attach(
                    &stream,
                    partition,
                    &group,
                    durable,
                    start,
                    max_in_flight,
                    member,
                )
                .into(),
            Request::Detach { shard, conn } => {
                self.detach(shard, conn);
                Reply::Done
            }
            Request::DetachMember { member } => {
                self.detach_groups(|g| g.detach_member(member).1);
                Reply::Done
            }
            Request::Ack { ids, shard, conn } => self.ack(ids, shard, conn),
            Request::Nack {
                id,
                message,
                shard,
                conn,
            } => self
                .settle(id, |g| g.nack(id, (shard, conn), &message))
                .into(),
            Request::StageAttach {
                pipeline,
                partition,
                stage,
                max_in_flight,
                member,
            } => self
                .stage_attach(&pipeline, partition, &stage, max_in_flight, member)
                .into(),
            Request::StageAcks { acks, shard, conn } => self.stage_acks(acks, shard, conn).await,
            Request::StageNack {
                id,
                message,
                shard,
                conn,
            } => match self.run_of(id) {
                Ok(run) => run.nack(id, (shard, conn), &message).await.into(),
                Err(f) => f.into(),
            },
            Request::PipelineRetry {
                pipeline,
                execution,
            } => self.pipeline_retry(&pipeline, execution).await,
            Request::PipelineBusy { pipeline } => Reply::Count(self.pipeline_busy(&pipeline)),
            Request::Status => Reply::Status(self.status(), self.run_status()),
            Request::MetaStatus => Reply::Meta(self.meta_status()),
            Request::Apply { yaml, force } => self.apply(yaml, force).await,
            Request::Tokens(change) => self.change_tokens(change).await,
            Request::Nodes(change) => self.change_nodes(change).await,
            Request::Move {
                stream,
                partition,
                voters,
            } => self.move_partition(stream, partition, voters).await,
            Request::Rebalance(asked) => self.rebalance(asked).await,
            Request::Install { topology } => match self.install(topology).await {
                Ok(()) => Reply::Done,
                Err(e) => Reply::Failed(Error::Storage(e)),
            },
        }
    }

    /// Pipelines: executions of `pipeline` still needing work here.
    fn pipeline_busy(&self, pipeline: &str) -> usize {
        self.runs
            .borrow()
            .iter()
            .filter(|((name, _), _)| name == pipeline)
            .map(|(_, r)| r.busy())
            .sum()
    }

    /// Streams: appends `events` to the partition.
    async fn publish(&self, stream: &str, partition: u32, events: &[bytes::Bytes]) -> Reply {
        if self.stopping.get() {
            return Reply::Failed(Error::ShuttingDown);
        }
        let p = match self.partition(stream, partition) {
            Ok(p) => p,
            Err(f) => return f.into(),
        };
        let reply = match p.publish(events).await {
            Ok(published) => Reply::Published(published),
            Err(f) => f.into(),
        };
        // Under relaxed durability the partition's log writes behind the
        // acks (see `Partition::open`): start the write this publish made
        // due, in a task of its own.
        if p.log.write_due() {
            let p = p.clone();
            self.runtime
                .spawn(async move { p.log.write_pending().await });
        }
        reply
    }

    /// Groups: acks each id on its own, so one stale id does not leave the
    /// others to be redelivered.
    fn ack(&self, ids: Vec<u64>, shard: u16, conn: u64) -> Reply {
        let mut refused = Vec::new();
        for id in ids {
            if self.settle(id, |g| g.ack(id, (shard, conn))).is_err() {
                refused.push(id);
            }
        }
        if refused.is_empty() {
            Reply::Done
        } else {
            Reply::Refused(refused)
        }
    }

    /// Pipelines: a stage member joins the run of `pipeline` on `partition`.
    fn stage_attach(
        &self,
        pipeline: &str,
        partition: u32,
        stage: &str,
        max_in_flight: u32,
        member: MemberId,
    ) -> Result<(), Error> {
        let run = self
            .runs
            .borrow()
            .get(&(pipeline.to_owned(), partition))
            .cloned();
        let Some(run) = run else {
            // A partition of a cluster placed on other nodes: its runs
            // are theirs, and nothing is attached here.
            if self.placed_elsewhere(pipeline, partition) {
                return Ok(());
            }
            return Err(Error::PipelineNotHere {
                pipeline: pipeline.to_owned(),
                partition,
            });
        };
        let s = run
            .plan
            .stage_index(stage)
            .ok_or_else(|| Error::UnknownStage {
                pipeline: pipeline.to_owned(),
                stage: stage.to_owned(),
            })?;
        run.attach(member, s, max_in_flight);
        Ok(())
    }

    /// Whether `pipeline`'s source `partition` has no replica on this node.
    fn placed_elsewhere(&self, pipeline: &str, partition: u32) -> bool {
        let topology = self.topology.borrow();
        let source = topology
            .pipelines
            .get(pipeline)
            .and_then(|p| topology.streams.get(&p.source_stream));
        source.is_some_and(|stream| {
            matches!(
                self.placement(stream, partition),
                super::apply::Placed::Elsewhere
            )
        })
    }

    /// Pipelines: settles stage acks; the acks of one run are made durable
    /// together, in one append.
    async fn stage_acks(&self, acks: Vec<StageAckOf>, shard: u16, conn: u64) -> Reply {
        type AcksOfRun<S, R> = (Rc<PipelineRun<S, R>>, Vec<StageAckOf>);
        let mut by_run: Vec<AcksOfRun<S, R>> = Vec::new();
        let mut unsettled = Vec::new();
        for (id, output) in acks {
            // The runs already found first: a burst of acks usually comes
            // from few runs.
            if let Some((_, acks)) = by_run.iter_mut().find(|(r, _)| r.owns(id)) {
                acks.push((id, output));
                continue;
            }
            match self.run_of(id) {
                Ok(run) => by_run.push((run, vec![(id, output)])),
                Err(f) => unsettled.push((id, f)),
            }
        }
        let settles = by_run
            .iter()
            .map(|(run, acks)| run.ack_many(acks, (shard, conn)));
        for failures in futures::future::join_all(settles).await {
            unsettled.extend(failures);
        }
        Reply::Unsettled(unsettled)
    }

    /// Pipelines: runs failed executions of `pipeline` here again. One
    /// (`execution`): refused as its run refuses (`NotLeader` naming the
    /// leader on a follower). All: each run retries on its own, and one
    /// this node does not lead, or whose retry fails, only answers a line
    /// saying so (`retry_lines`): it never stops the others.
    async fn pipeline_retry(&self, pipeline: &str, execution: Option<(u32, u64)>) -> Reply {
        let runs: Vec<Rc<PipelineRun<S, R>>> = self
            .runs
            .borrow()
            .iter()
            .filter(|((name, p), _)| name == pipeline && execution.is_none_or(|(ep, _)| ep == *p))
            .map(|(_, r)| r.clone())
            .collect();
        if let (Some((partition, _)), true) = (execution, runs.is_empty())
            && self.placed_elsewhere(pipeline, partition)
        {
            // No replica here: the refusal names a node that has one.
            return self.retry_not_here(pipeline, partition).into();
        }
        // A node of a cluster answers for every partition, so that whoever
        // asked every node knows which leaders answered.
        let clustered = self.settings.config.cluster_nodes() > 1;
        let mut lines = Vec::new();
        if clustered && execution.is_none() {
            lines.extend(self.retry_partitions_not_here(pipeline));
        }
        for run in runs {
            let partition = run.source.partition;
            let line =
                match run.retry(execution.map(|(_, o)| o)).await {
                    Err(f) if execution.is_some() => return f.into(),
                    Ok(roots) => {
                        lines.extend(roots.iter().map(|&offset| {
                            RetryLine::Retried { partition, offset }.to_line(pipeline)
                        }));
                        if !roots.is_empty() || !clustered {
                            continue;
                        }
                        RetryLine::NoneFailed { partition }
                    }
                    Err(Error::NotLeader { leader, .. } | Error::ReplicaOffline { leader, .. }) => {
                        RetryLine::LedElsewhere {
                            partition,
                            leader: leader.map(|l| l.node_id),
                        }
                    }
                    Err(e) => RetryLine::Failed {
                        partition,
                        error: e.to_string(),
                    },
                };
            lines.push(line.to_line(pipeline));
        }
        Reply::Applied(lines)
    }

    /// The `NotLeader` a retry of one execution of `pipeline`'s
    /// `partition` gets from a node with no replica of it.
    fn retry_not_here(&self, pipeline: &str, partition: u32) -> Error {
        let source = self
            .topology
            .borrow()
            .pipelines
            .get(pipeline)
            .map(|p| p.source_stream.clone());
        match source {
            Some(source) => self.not_here(&source, partition),
            None => Error::UnknownPipeline {
                pipeline: pipeline.to_owned(),
            },
        }
    }

    /// A line for each partition of `pipeline`'s source that this shard
    /// owns and that has no replica on this node.
    fn retry_partitions_not_here(&self, pipeline: &str) -> Vec<String> {
        let partitions = {
            let topology = self.topology.borrow();
            let Some(source) = topology.pipelines.get(pipeline).map(|p| &p.source_stream) else {
                return Vec::new();
            };
            let count = topology.streams.get(source).map_or(0, |s| s.partitions);
            (0..count)
                .filter(|&p| self.owner(source, p) == self.id)
                .collect::<Vec<u32>>()
        };
        partitions
            .into_iter()
            .filter(|&p| self.placed_elsewhere(pipeline, p))
            .map(|partition| RetryLine::NotHere { partition }.to_line(pipeline))
            .collect()
    }

    #[expect(clippy::too_many_arguments, reason = "mirrors the Attach request")]
    pub(super) fn attach(
        self: &Rc<Self>,
        stream: &str,
        partition: u32,
        group: &str,
        durable: bool,
        start: StartPoint,
        max_in_flight: u32,
        member: MemberId,
    ) -> Result<(), Error> {
        let p = match self.partition(stream, partition) {
            Ok(p) => p,
            // A partition of a cluster placed on other nodes: its groups
            // are theirs, and nothing is attached here.
            Err(e @ Error::NotLeader { .. }) => {
                let elsewhere = self
                    .topology
                    .borrow()
                    .streams
                    .get(stream)
                    .is_some_and(|spec| {
                        matches!(
                            self.placement(spec, partition),
                            super::apply::Placed::Elsewhere
                        )
                    });
                return if elsewhere { Ok(()) } else { Err(e) };
            }
            Err(e) => return Err(e),
        };
        let existing = p.groups.borrow().get(group).cloned();
        let g = match existing {
            Some(g) => g,
            None => {
                p.admit_group(group, self.settings.config.groups_max)?;
                let stored = if durable {
                    p.stored_offsets.borrow().get(group).copied()
                } else {
                    None
                };
                let stats = p.log.stats();
                let cursor = stored.unwrap_or(match start {
                    StartPoint::Beginning => stats.start_offset,
                    StartPoint::Latest => p.readable_end(),
                    StartPoint::Offset(o) => o.clamp(stats.start_offset, stats.next_offset),
                });
                let g = GroupPartition::new(
                    group,
                    durable,
                    cursor,
                    self.settings.ack_timeout,
                    self.deliveries.clone(),
                    p.clock().clone(),
                );
                p.groups.borrow_mut().insert(group.to_string(), g.clone());
                self.runtime
                    .spawn(self.clone().dispatch(Rc::downgrade(&g), Rc::downgrade(&p)));
                g
            }
        };
        g.attach(member, max_in_flight);
        Ok(())
    }

    pub(super) fn run_of(&self, delivery_id: u64) -> Result<Rc<PipelineRun<S, R>>, Error> {
        self.runs
            .borrow()
            .values()
            .find(|r| r.owns(delivery_id))
            .cloned()
            .ok_or(Error::NotOutstanding {
                delivery: delivery_id,
                kind: DeliveryKind::Stage,
                on_this_connection: false,
            })
    }

    pub(super) fn detach(&self, shard: u16, conn: u64) {
        for run in self.runs.borrow().values() {
            run.detach(shard, conn);
        }
        self.detach_groups(|g| g.detach(shard, conn).1);
    }

    /// Detaches members from every group with `detach` (which says whether
    /// members remain), and removes the non-durable groups left empty.
    pub(super) fn detach_groups(&self, detach: impl Fn(&GroupPartition<R>) -> bool) {
        for p in self.partitions.borrow().values() {
            let mut gone = Vec::new();
            for (name, g) in p.groups.borrow().iter() {
                let any_left = detach(g);
                if !any_left && !g.durable {
                    gone.push(name.clone());
                }
            }
            let mut groups = p.groups.borrow_mut();
            for name in gone {
                if let Some(g) = groups.remove(&name) {
                    g.closed.set(true);
                    g.wake.notify_all();
                }
            }
        }
    }

    /// Settles a delivery id in the group holding it (one index lookup).
    pub(super) fn settle(
        &self,
        id: u64,
        f: impl Fn(&GroupPartition<R>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        match self.deliveries.group_of(id) {
            Some(g) => f(&g),
            None => Err(Error::NotOutstanding {
                delivery: id,
                kind: DeliveryKind::Group,
                on_this_connection: false,
            }),
        }
    }
}
