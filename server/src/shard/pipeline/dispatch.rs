//! Dispatch: executions started from the source (retried ones first, then
//! triggering events from the cursor on), ready stages handed to stage
//! members with room (round robin among the stage's members, in the
//! run's `Ledger`, `shard::deliver`), ack deadlines expired
//! (popped in deadline order, never scanned), and stage members attached
//! and detached.
//!
//! **Room.** A ready stage goes to a member only while that member's
//! connection can take the delivery now (`group::room`'s [`Budgets`],
//! spent by the root event's and the inputs' bytes): a stage handler
//! that stops reading its socket gets no delivery built for it, and so
//! burns no attempt at its ack timeouts; what it cannot take stays ready
//! in the execution index and goes to another member of the stage with
//! room, or to it once its connection wrote
//! ([`PipelineRun::room_blocked`] says whose connection to wait for).

use std::rc::Rc;
use std::time::Duration;

use crate::shard::clock::Clock;
use hadron_engine::storage::Storage;

use super::{CarriedMember, Issued, PipelineRun, RunState, StageOutgoing};
use crate::shard::deliver::{Held, IdleWait, Member, MemberId};
use crate::shard::error::Error;
use crate::shard::group::{Budgets, ConnRoom};

/// Bytes of the source read per trigger scan.
const SCAN_BYTES: u32 = 256 << 10;

impl<S: Storage + Clone + 'static, C: Clock> PipelineRun<S, C> {
    fn done_mask(st: &RunState, root: u64) -> u64 {
        st.outputs
            .get(&root)
            .map_or(0, |m| m.keys().fold(0u64, |acc, &s| acc | 1 << s))
    }

    /// Starts executions while there is room: retried failed ones first,
    /// then triggering events from the cursor on.
    async fn fill(&self) -> Result<(), Error> {
        loop {
            let retry = {
                let mut st = self.state.borrow_mut();
                if !self.index.borrow().has_room() {
                    return Ok(());
                }
                st.retry_queue.pop()
            };
            let Some(root) = retry else { break };
            let epoch = self.epoch.get();
            let event = self.source.event_at(root).await?;
            self.check_epoch(epoch)?;
            let mut st = self.state.borrow_mut();
            let done = Self::done_mask(&st, root);
            if self.index.borrow_mut().start(root, done).is_some() {
                st.roots.insert(root, Rc::new(event));
            }
        }
        loop {
            let cursor = self.state.borrow().cursor;
            if !self.index.borrow().has_room() || cursor >= self.source.readable_end() {
                return Ok(());
            }
            let epoch = self.epoch.get();
            let (_, records) = self.source.read_committed(cursor, SCAN_BYTES).await?;
            self.check_epoch(epoch)?;
            if records.is_empty() {
                return Ok(());
            }
            let mut st = self.state.borrow_mut();
            let mut index = self.index.borrow_mut();
            for (offset, event) in records {
                if offset < st.cursor {
                    continue;
                }
                if !index.has_room() {
                    break;
                }
                st.cursor = offset + 1;
                if st.finished.remove(&offset) {
                    continue;
                }
                let Ok(decoded) = hadron_wire::verify_event(&event, &self.limits) else {
                    continue;
                };
                if !self.plan.triggers.matches(decoded.type_()) || st.failed.contains_key(&offset) {
                    continue;
                }
                let done = Self::done_mask(&st, offset);
                if index.start(offset, done) == Some(0) && done == index.dag().all() {
                    // Finished before a restart: nothing to run.
                    st.outputs.remove(&offset);
                    continue;
                }
                st.roots.insert(offset, Rc::new(event));
            }
        }
    }

    /// One dispatch round: expire ack deadlines, release due retries, start
    /// executions, and hand ready stages to members with room, in their
    /// window and on their connection (`room`, see the module header).
    pub async fn round(
        &self,
        new_delivery_id: &dyn Fn() -> u64,
        room: &dyn ConnRoom,
    ) -> Result<Vec<StageOutgoing>, Error> {
        if !self.ready_to_dispatch().await? {
            self.state.borrow_mut().room_blocked.clear();
            return Ok(Vec::new());
        }
        let now = self.source.clock().now();
        self.expire_acks(now).await?;
        self.release_retries(now);
        self.fill().await?;
        let mut budgets = Budgets::new(room);
        let out = self.issue_ready(now, new_delivery_id, &mut budgets);
        let mut st = self.state.borrow_mut();
        st.room_blocked = budgets.blocked(&st.ledger.members);
        Ok(out)
    }

    /// The stage members the last round left waiting for room on their
    /// connection: the dispatcher waits for those connections to write.
    pub fn room_blocked(&self) -> Vec<MemberId> {
        self.state.borrow().room_blocked.clone()
    }

    /// Counts a failed attempt for every delivery whose ack deadline passed
    /// by `now`, earliest deadline first. Each is taken out only when its
    /// turn comes, so one not reached yet can still be acked meanwhile.
    async fn expire_acks(&self, now: Duration) -> Result<(), Error> {
        loop {
            let due = self.state.borrow_mut().ledger.pop_due(now);
            let Some((_, Held { what: f, .. })) = due else {
                return Ok(());
            };
            let timeout = self
                .plan
                .stages
                .get(f.stage as usize)
                .map_or(0, |s| s.ack_timeout_ms);
            self.fail_issued(f, &format!("no ack within the ack timeout of {timeout} ms"))
                .await?;
        }
    }

    /// Releases the held stages whose backoff ended by `now`.
    fn release_retries(&self, now: Duration) {
        let mut st = self.state.borrow_mut();
        let mut index = self.index.borrow_mut();
        while let Some((_, (root, stage))) = st.retry_at.pop_due(now) {
            index.release(root, stage as usize);
        }
    }

    /// Hands every ready stage of the live executions to a member of its
    /// stage with room in its window and on its connection (`budgets`),
    /// and returns the deliveries to push. A stage no member can take
    /// stays ready.
    fn issue_ready(
        &self,
        now: Duration,
        new_delivery_id: &dyn Fn() -> u64,
        budgets: &mut Budgets<'_>,
    ) -> Vec<StageOutgoing> {
        let mut out = Vec::new();
        let mut st = self.state.borrow_mut();
        let mut index = self.index.borrow_mut();
        let ready: Vec<(u64, u64)> = {
            let dag = index.dag();
            index
                .executions()
                .map(|e| (e.root, dag.ready(e.done, e.done | e.in_flight | e.held)))
                .filter(|&(_, r)| r != 0)
                .collect()
        };
        for (root, mut stages) in ready {
            while stages != 0 {
                let s = stages.trailing_zeros() as u8;
                stages &= stages - 1;
                let fits = |m: &Member<u8>| m.key == s && budgets.can_take(m);
                let Some(m) = st.ledger.members.pick_member(fits) else {
                    continue;
                };
                if !index.dispatch(root, s as usize) {
                    continue;
                }
                let Some(root_event) = st.roots.get(&root).cloned() else {
                    continue;
                };
                let delivery_id = new_delivery_id();
                let (member, attempt, inputs) = self.issue(&mut st, m, root, s, delivery_id, now);
                let bytes = inputs.iter().map(|(_, e)| e.len()).sum::<usize>();
                budgets.spend(member, root_event.len() + bytes);
                out.push(StageOutgoing {
                    member,
                    delivery_id,
                    stage: s,
                    root,
                    attempt,
                    root_event,
                    inputs,
                });
            }
        }
        out
    }

    /// Records delivery `delivery_id` of stage `s` of `root` to member
    /// `m`, due by its ack deadline; returns the member, the attempt and
    /// the outputs of the stage's dependencies.
    #[expect(clippy::type_complexity, reason = "a private three-part answer")]
    fn issue(
        &self,
        st: &mut RunState,
        m: usize,
        root: u64,
        s: u8,
        delivery_id: u64,
        now: Duration,
    ) -> (MemberId, u32, Vec<(u8, Rc<Vec<u8>>)>) {
        let planned = &self.plan.stages[s as usize];
        let inputs = match st.outputs.get(&root) {
            Some(outputs) => planned
                .dependencies
                .iter()
                .filter_map(|&d| Some((d, outputs.get(&d)?.clone())))
                .collect(),
            None => Vec::new(),
        };
        let attempt = st.attempts.get(&(root, s)).copied().unwrap_or(0) + 1;
        let deadline = now + Duration::from_millis(planned.ack_timeout_ms.max(1));
        let member = st
            .ledger
            .issue(m, delivery_id, deadline, Issued { root, stage: s });
        st.issued.insert(delivery_id, (root, s));
        let stages = self.plan.stages.len();
        st.issued_by_root
            .entry(root)
            .or_insert_with(|| Vec::with_capacity(stages))
            .push(delivery_id);
        (member, attempt, inputs)
    }

    /// The earliest time something is due: an ack deadline or the end of
    /// a backoff (exact: settled deliveries took their deadlines along).
    pub fn next_due(&self) -> Option<Duration> {
        let st = self.state.borrow();
        let a = st.ledger.next_deadline();
        let b = st.retry_at.next();
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// What the dispatcher waits for after a round that handed nothing
    /// out, besides `wake`: appends to the source (they may trigger
    /// executions) and the next due time.
    pub fn idle_wait(&self) -> IdleWait {
        if !self.active.get() {
            // A follower's run: woken when it begins to lead.
            return IdleWait {
                appends: false,
                until: None,
            };
        }
        IdleWait {
            appends: true,
            until: self.next_due(),
        }
    }

    /// Whether this run issued `delivery_id`.
    pub fn owns(&self, delivery_id: u64) -> bool {
        self.state.borrow().issued.contains_key(&delivery_id)
    }

    /// Adds a stage member.
    pub fn attach(&self, id: MemberId, stage: u8, max_in_flight: u32) {
        self.state
            .borrow_mut()
            .ledger
            .members
            .attach(id, stage, max_in_flight);
        self.wake.notify_all();
    }

    /// The stage members, by stage name, to carry over to a run that
    /// replaces this one.
    pub fn members(&self) -> Vec<CarriedMember> {
        self.state
            .borrow()
            .ledger
            .members
            .iter()
            .map(|m| {
                (
                    m.id,
                    self.plan.stages[m.key as usize].name.clone(),
                    m.max_in_flight,
                )
            })
            .collect()
    }

    /// Removes a connection's members; their deliveries go out again at once.
    pub fn detach(&self, shard: u16, conn: u64) {
        let orphaned = self
            .state
            .borrow_mut()
            .ledger
            .detach_where(|m| m.shard == shard && m.conn == conn);
        let mut index = self.index.borrow_mut();
        for (_, Held { what: f, .. }) in orphaned {
            index.release(f.root, f.stage as usize);
        }
        drop(index);
        self.wake.notify_all();
    }

    /// The message of a stage delivery.
    pub fn delivery_message<'a>(&'a self, d: &'a StageOutgoing) -> hadron_wire::Message<'a> {
        let inputs = d
            .inputs
            .iter()
            .map(|(stage, event)| hadron_wire::StageInput {
                stage: &self.plan.stages[*stage as usize].name,
                event: event.as_slice(),
            })
            .collect();
        hadron_wire::Message::StageDelivery(hadron_wire::StageDelivery {
            delivery_id: d.delivery_id,
            pipeline: &self.plan.name,
            stage: &self.plan.stages[d.stage as usize].name,
            partition: self.source.partition,
            offset: d.root,
            attempt: d.attempt,
            root: d.root_event.as_slice(),
            inputs,
        })
    }
}

#[cfg(test)]
mod tests;
