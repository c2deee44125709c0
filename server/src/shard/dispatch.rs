//! The dispatcher loops: one per consumer group and partition, one per
//! pipeline run, and the push of deliveries to members' connections (on
//! this shard or over the mesh).

use super::*;

impl<S: Storage + Clone + 'static, R: Runtime> Shard<S, R> {
    /// A group's dispatcher: hands out deliveries until the group closes.
    pub(super) async fn dispatch(
        self: Rc<Self>,
        group: Weak<GroupPartition<R>>,
        partition: Weak<Partition<S, R>>,
    ) {
        loop {
            let (Some(g), Some(p)) = (group.upgrade(), partition.upgrade()) else {
                return;
            };
            if g.closed.get() || self.stopping.get() {
                return;
            }
            let wake_gen = g.wake.generation();
            let data_gen = p.appended.generation();
            let this = self.clone();
            // After a failure, wait a tick before trying again.
            let mut wait_min = Duration::from_millis(1);
            match g.round(&p, &move || this.unique_id()).await {
                Ok(out) if !out.is_empty() => {
                    self.send_deliveries(&p, out).await;
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(group = %g.group, stream = %p.stream, partition = p.partition, "dispatch failed: {e}");
                    wait_min = group::TICK;
                }
            }
            // Sleep until something this group could act on happens (see
            // `GroupPartition::idle_wait`): no timer and no append wakes a
            // group without members.
            let idle = g.idle_wait();
            let appended = async {
                if idle.appends {
                    p.appended.changed_since(data_gen).await;
                } else {
                    futures::future::pending::<()>().await;
                }
            };
            let due = async {
                match idle.until {
                    Some(t) => {
                        let wait = t.saturating_sub(g.clock().now());
                        g.clock().sleep(wait.max(wait_min)).await;
                    }
                    None if wait_min > Duration::from_millis(1) => {
                        g.clock().sleep(wait_min).await;
                    }
                    None => futures::future::pending::<()>().await,
                }
            };
            let woken = select(Box::pin(g.wake.changed_since(wake_gen)), Box::pin(appended));
            match select(Box::pin(woken), Box::pin(due)).await {
                Either::Left(_) | Either::Right(_) => {}
            }
        }
    }

    /// A pipeline run's dispatcher: hands out stage deliveries until the
    /// run closes.
    pub(super) async fn dispatch_pipeline(self: Rc<Self>, run: Weak<PipelineRun<S, R>>) {
        loop {
            let Some(run) = run.upgrade() else { return };
            if run.closed.get() || self.stopping.get() {
                return;
            }
            if run.claim_checkpoint() {
                let run = run.clone();
                self.runtime.spawn(async move {
                    if let Err(e) = run.checkpoint().await {
                        tracing::warn!(pipeline = %run.plan.name, partition = run.source.partition, "checkpoint failed: {e}");
                    }
                });
            }
            let wake_gen = run.wake.generation();
            let data_gen = run.source.appended.generation();
            let this = self.clone();
            match run.round(&move || this.unique_id()).await {
                Ok(out) if !out.is_empty() => {
                    for d in out {
                        self.push(d.member, &run.delivery_message(&d)).await;
                    }
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(pipeline = %run.plan.name, partition = run.source.partition, "dispatch failed: {e}");
                }
            }
            let wait = run.next_due().map_or(group::TICK, |t| {
                t.saturating_sub(run.source.clock().now()).min(group::TICK)
            });
            let woken = select(
                Box::pin(run.wake.changed_since(wake_gen)),
                Box::pin(run.source.appended.changed_since(data_gen)),
            );
            let timer = self.runtime.sleep(wait.max(Duration::from_millis(1)));
            match select(Box::pin(woken), Box::pin(timer)).await {
                Either::Left(_) | Either::Right(_) => {}
            }
        }
    }

    /// Sends a push to a member's connection, on whichever shard it is: a
    /// local connection gets it encoded straight into its outbox.
    pub(super) async fn push(&self, member: MemberId, message: &hadron_wire::Message<'_>) {
        if member.shard == self.id {
            if let Some(outbox) = self.congestion_checked(member.conn)
                && let Err(e) = outbox.try_send(0, message)
            {
                tracing::error!("cannot encode a {}: {e}", message.name());
            }
            return;
        }
        let frame = match outbox::encode(0, message) {
            Ok(frame) => frame,
            Err(e) => {
                tracing::error!("cannot encode a {}: {e}", message.name());
                return;
            }
        };
        let msg = MeshMsg::Push {
            conn: member.conn,
            frame,
        };
        let _ = self.mesh.send_to(member.shard, msg).await;
    }

    /// The outbox of connection `conn` of this shard, unless its answers
    /// and deliveries not yet written are above `outboxBytesMax`: a
    /// connection that does not read receives no more deliveries until it
    /// drains. A delivery pushed to a full outbox is dropped; it stays in
    /// flight with its member and goes out again after its ack timeout
    /// (counted as a redelivery), so a slow reader costs only its own
    /// budget, never the server's memory.
    pub(super) fn congestion_checked(&self, conn: u64) -> Option<Rc<Outbox>> {
        let outbox = self.conns.borrow().get(&conn).cloned()?;
        if outbox.pending_bytes() > self.settings.config.outbox_bytes_max as u64 {
            let dropped = self.dropped_deliveries.get() + 1;
            self.dropped_deliveries.set(dropped);
            if dropped.is_power_of_two() {
                tracing::warn!(
                    shard = self.id,
                    "{dropped} deliveries held back so far: a connection does not read and its outbox is above outboxBytesMax; they go out again after their ack timeout"
                );
            }
            return None;
        }
        Some(outbox)
    }

    pub(super) async fn send_deliveries(&self, p: &Partition<S, R>, out: Vec<Outgoing>) {
        for d in out {
            let message = hadron_wire::Message::Delivery(hadron_wire::Delivery {
                subscription_id: d.member.subscription,
                delivery_id: d.delivery_id,
                stream: &p.stream,
                partition: p.partition,
                offset: d.offset,
                attempt: d.attempt,
                event: &d.event,
            });
            self.push(d.member, &message).await;
        }
    }
}
