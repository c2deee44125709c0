//! Dispatch: executions started from the source (retried ones first, then
//! triggering events from the cursor on), ready stages handed to stage
//! members with room, ack deadlines expired, and stage members attached
//! and detached.

use std::rc::Rc;
use std::time::Duration;

use crate::shard::clock::Clock;
use hadron_engine::storage::Storage;

use super::{CarriedMember, Issued, PipelineRun, RunState, StageMember, StageOutgoing};
use crate::shard::error::Error;
use crate::shard::group::MemberId;

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
            let event = self.source.event_at(root).await?;
            let mut st = self.state.borrow_mut();
            let done = Self::done_mask(&st, root);
            if self.index.borrow_mut().start(root, done).is_some() {
                st.roots.insert(root, Rc::new(event));
            }
        }
        loop {
            let cursor = self.state.borrow().cursor;
            if !self.index.borrow().has_room() || cursor >= self.source.log.visible_offset() {
                return Ok(());
            }
            let (_, records) = self.source.fetch(cursor, SCAN_BYTES).await?;
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
    /// executions, and hand ready stages to members with room.
    pub async fn round(
        &self,
        new_delivery_id: &dyn Fn() -> u64,
    ) -> Result<Vec<StageOutgoing>, Error> {
        let now = self.source.clock().now();
        self.expire_acks(now).await?;
        self.release_retries(now);
        self.fill().await?;
        Ok(self.issue_ready(now, new_delivery_id))
    }

    /// Counts a failed attempt for every delivery whose ack deadline passed
    /// by `now`.
    async fn expire_acks(&self, now: Duration) -> Result<(), Error> {
        let expired = self.expired(now);
        for id in expired {
            let timeout = self
                .plan
                .stages
                .get(
                    self.state
                        .borrow()
                        .in_flight
                        .get(&id)
                        .map_or(0, |f| f.stage as usize),
                )
                .map_or(0, |s| s.ack_timeout_ms);
            self.fail_attempt(
                id,
                &format!("no ack within the ack timeout of {timeout} ms"),
            )
            .await?;
        }
        Ok(())
    }

    /// Releases the held stages whose backoff ended by `now`.
    fn release_retries(&self, now: Duration) {
        let mut st = self.state.borrow_mut();
        let mut index = self.index.borrow_mut();
        st.retry_at.retain(|&(at, root, stage)| {
            if at <= now {
                index.release(root, stage as usize);
                false
            } else {
                true
            }
        });
    }

    /// Hands every ready stage of the live executions to a member of its
    /// stage with room, and returns the deliveries to push.
    fn issue_ready(&self, now: Duration, new_delivery_id: &dyn Fn() -> u64) -> Vec<StageOutgoing> {
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
                let Some(m) = Self::pick(&mut st, s) else {
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
        let member = st.members[m].id;
        st.members[m].in_flight += 1;
        let deadline = now + Duration::from_millis(planned.ack_timeout_ms.max(1));
        st.in_flight.insert(
            delivery_id,
            Issued {
                root,
                stage: s,
                member,
                deadline,
            },
        );
        st.deadline_min = Some(st.deadline_min.map_or(deadline, |d| d.min(deadline)));
        st.issued.insert(delivery_id, (root, s));
        let stages = self.plan.stages.len();
        st.issued_by_root
            .entry(root)
            .or_insert_with(|| Vec::with_capacity(stages))
            .push(delivery_id);
        (member, attempt, inputs)
    }

    fn pick(st: &mut RunState, stage: u8) -> Option<usize> {
        let n = st.members.len();
        for k in 0..n {
            let i = (st.next_member + k) % n;
            let m = &st.members[i];
            if m.stage == stage && m.in_flight < m.max_in_flight {
                st.next_member = (i + 1) % n;
                return Some(i);
            }
        }
        None
    }

    pub(super) fn release_member(st: &mut RunState, member: MemberId) {
        if let Some(m) = st.members.iter_mut().find(|m| m.id == member) {
            m.in_flight = m.in_flight.saturating_sub(1);
        }
    }

    /// The in-flight deliveries whose ack deadline passed by `now`. Scans
    /// them only when the earliest deadline may have passed, and then
    /// makes `deadline_min` exact again.
    fn expired(&self, now: Duration) -> Vec<u64> {
        let mut st = self.state.borrow_mut();
        if st.deadline_min.is_none_or(|d| d > now) {
            return Vec::new();
        }
        let mut expired = Vec::new();
        let mut min: Option<Duration> = None;
        for (&id, f) in &st.in_flight {
            if f.deadline <= now {
                expired.push(id);
            } else {
                min = Some(min.map_or(f.deadline, |m| m.min(f.deadline)));
            }
        }
        st.deadline_min = min;
        expired
    }

    /// The earliest time something is due (possibly a little early: an
    /// ack deadline of a delivery settled since).
    pub fn next_due(&self) -> Option<Duration> {
        let st = self.state.borrow();
        let a = st.deadline_min;
        let b = st.retry_at.iter().map(|r| r.0).min();
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether this run issued `delivery_id`.
    pub fn owns(&self, delivery_id: u64) -> bool {
        self.state.borrow().issued.contains_key(&delivery_id)
    }

    /// Adds a stage member.
    pub fn attach(&self, id: MemberId, stage: u8, max_in_flight: u32) {
        let mut st = self.state.borrow_mut();
        match st.members.iter_mut().find(|m| m.id == id) {
            Some(m) => m.max_in_flight = max_in_flight.max(1),
            None => st.members.push(StageMember {
                id,
                stage,
                max_in_flight: max_in_flight.max(1),
                in_flight: 0,
            }),
        }
        drop(st);
        self.wake.notify_all();
    }

    /// The stage members, by stage name, to carry over to a run that
    /// replaces this one.
    pub fn members(&self) -> Vec<CarriedMember> {
        self.state
            .borrow()
            .members
            .iter()
            .map(|m| {
                (
                    m.id,
                    self.plan.stages[m.stage as usize].name.clone(),
                    m.max_in_flight,
                )
            })
            .collect()
    }

    /// Removes a connection's members; their deliveries go out again at once.
    pub fn detach(&self, shard: u16, conn: u64) {
        let mut st = self.state.borrow_mut();
        st.members
            .retain(|m| !(m.id.shard == shard && m.id.conn == conn));
        let orphaned: Vec<u64> = st
            .in_flight
            .iter()
            .filter(|(_, f)| f.member.shard == shard && f.member.conn == conn)
            .map(|(&id, _)| id)
            .collect();
        let mut index = self.index.borrow_mut();
        for id in orphaned {
            if let Some(f) = st.in_flight.remove(&id) {
                index.release(f.root, f.stage as usize);
            }
        }
        drop(index);
        drop(st);
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
