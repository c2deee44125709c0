//! A consumer group's state for one partition, on the partition's shard,
//! and the task that dispatches its deliveries.
//!
//! Members of a group share the partition's events like a work queue: each
//! event goes to one member with room (round robin), at most
//! `max_in_flight` unacknowledged per member and partition. The group keeps
//!
//! - `cursor`: the next offset never delivered;
//! - `ledger`: the members, and the deliveries made and not yet settled,
//!   each with its member, offset, attempt and ack deadline (the dispatch
//!   core of `deliver`, shared with pipeline stages;
//!   deadlines in order, so a round expires exactly the due ones), and
//!   `offsets`, the offsets of those deliveries;
//! - `retry`: nacked, timed out or orphaned by a disconnect, with the time
//!   they may go out again (exponential backoff after a nack).
//!
//! The committed offset, below which every event was acknowledged, is the
//! smallest of `cursor`, `offsets` and the keys of `retry`. Durable
//! groups persist it (see `partition`), so a restarted server resumes there:
//! delivery is at least once.
//!
//! **Finding a delivery.** Every outstanding delivery id of the shard is in
//! one [`Deliveries`] index, which names the group holding it; a group adds
//! an id when it hands the delivery out and removes it whenever the delivery
//! leaves the ledger (ack, nack, deadline, disconnect, the group dropped).
//! An Ack of n ids thus costs n map lookups, whatever the number of groups.
//! (Scanning every group per id stalled a shard 40 to 50 s for one Ack of a
//! million ids.)
//!
//! **Idle groups cost nothing.** The dispatcher sleeps until something it
//! could act on can happen ([`GroupPartition::idle_wait`]): a group with no
//! members waits for a member (or its removal) alone; one whose members are
//! all full waits for a settlement or the next ack deadline; only a group
//! with room listens for appends and retry times. (Waking every 50 ms, 5,000
//! member-less durable groups kept a shard at 80% CPU.)
//!
//! **Room.** A round reads the log for a member only as far as its
//! connection can take the deliveries now (`room`): what a member whose
//! outbox is full cannot take stays here as offsets, never as event bytes,
//! until its connection writes.
//!
//! **Time.** Deadlines and retry times are monotonic times of the group's
//! [`Clock`] (the partition's), never read from anywhere else, so that
//! `partition::sim_tests` drives ack timeouts by advancing a simulated
//! clock.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::{Rc, Weak};
use std::time::Duration;

use hadron_engine::notify::Notify;
use hadron_engine::storage::Storage;
use hadron_wire::ErrorCode;

use super::clock::{Clock, SystemClock};
use super::deliver::{IdleWait, Ledger, Member};
use super::error::{DeliveryKind, Error};
use super::partition::Partition;

pub use super::deliver::MemberId;
pub use room::ConnRoom;
#[cfg(test)]
pub use room::{TestRoom, Unlimited};

mod room;

pub(super) use room::Budgets;

/// First redelivery delay after a nack; doubles per attempt.
const NACK_BACKOFF_INITIAL_MS: u64 = 100;
/// Longest redelivery delay after a nack.
const NACK_BACKOFF_MAX_MS: u64 = 10_000;
/// Bytes read from the log per dispatch round.
const DISPATCH_READ_BYTES: u32 = 256 << 10;

/// What a group's delivery carries (in the ledger).
#[derive(Debug, Clone, Copy)]
struct InFlight {
    offset: u64,
    attempt: u32,
}

#[derive(Debug, Clone, Copy)]
struct Retry {
    /// Attempts made so far.
    attempts: u32,
    /// On the group's clock.
    not_before: Duration,
}

#[derive(Debug, Default)]
struct State {
    cursor: u64,
    /// Members and the deliveries they hold, by delivery id and deadline.
    ledger: Ledger<(), InFlight>,
    /// The offsets of the deliveries in `ledger`.
    offsets: BTreeSet<u64>,
    retry: BTreeMap<u64, Retry>,
    nacks: u64,
    /// Deliveries made again (after a nack, an ack timeout or a
    /// disconnect).
    redeliveries: u64,
    last_error: Option<String>,
    /// The members the last round left waiting for room on their
    /// connection (see `room`).
    room_blocked: Vec<MemberId>,
}

impl State {
    /// A delivery left the ledger (`held`, of `delivery_id`): its offset is
    /// no longer out, and the shard's index forgets it.
    fn forget<C: Clock>(&mut self, deliveries: &Deliveries<C>, delivery_id: u64, held: InFlight) {
        self.offsets.remove(&held.offset);
        deliveries.remove(delivery_id);
    }
}

/// The shard's outstanding group deliveries: delivery id -> the group that
/// holds it. Entries are weak, so the index never keeps a group alive.
#[derive(Debug)]
pub struct Deliveries<C: Clock = SystemClock> {
    by_id: RefCell<HashMap<u64, Weak<GroupPartition<C>>>>,
}

impl<C: Clock> Default for Deliveries<C> {
    fn default() -> Self {
        Deliveries {
            by_id: RefCell::new(HashMap::new()),
        }
    }
}

impl<C: Clock> Deliveries<C> {
    /// The group holding delivery `id`, if it is outstanding.
    pub fn group_of(&self, id: u64) -> Option<Rc<GroupPartition<C>>> {
        self.by_id.borrow().get(&id).and_then(Weak::upgrade)
    }

    /// Outstanding deliveries indexed.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_id.borrow().len()
    }

    fn insert(&self, id: u64, group: Weak<GroupPartition<C>>) {
        self.by_id.borrow_mut().insert(id, group);
    }

    fn remove(&self, id: u64) {
        self.by_id.borrow_mut().remove(&id);
    }
}

/// A delivery ready to be pushed to a member's connection.
#[derive(Debug)]
pub struct Outgoing {
    /// To whom.
    pub member: MemberId,
    /// Delivery id.
    pub delivery_id: u64,
    /// Offset of the event.
    pub offset: u64,
    /// 1 for the first delivery.
    pub attempt: u32,
    /// The event's bytes.
    pub event: Vec<u8>,
}

/// Status of a group on one partition.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GroupStatus {
    /// Group name.
    pub group: String,
    /// Whether offsets are persisted.
    pub durable: bool,
    /// Every offset below this was acknowledged.
    pub committed: u64,
    /// Events after the committed offset.
    pub lag: u64,
    /// Members attached.
    pub members: usize,
    /// Deliveries awaiting an ack.
    pub in_flight: usize,
    /// Nacks received.
    pub nacks: u64,
    /// Deliveries made again (after a nack, an ack timeout or a
    /// disconnect) since the server started.
    pub redeliveries: u64,
    /// The message of the last nack.
    pub last_error: Option<String>,
    /// Its offset in the last snapshot written (committed, when
    /// replicated): where the group resumes after a restart or failover.
    pub persisted: Option<u64>,
}

/// A group on one partition, on the partition's clock `C`.
#[derive(Debug)]
pub struct GroupPartition<C: Clock = SystemClock> {
    /// Group name.
    pub group: String,
    /// Whether its committed offset is persisted.
    pub durable: bool,
    state: RefCell<State>,
    /// Wakes the dispatcher.
    pub wake: Notify,
    /// Set when the group is removed; the dispatcher then ends.
    pub closed: Cell<bool>,
    ack_timeout: Duration,
    /// The shard's delivery index, which this group keeps up to date.
    deliveries: Rc<Deliveries<C>>,
    /// This group, for its entries in `deliveries`.
    me: Weak<GroupPartition<C>>,
    /// Where deadlines and retry times are read.
    clock: C,
}

impl<C: Clock> GroupPartition<C> {
    /// A group starting at `cursor`, whose deliveries are indexed in
    /// `deliveries`, timed by `clock`.
    pub fn new(
        group: &str,
        durable: bool,
        cursor: u64,
        ack_timeout: Duration,
        deliveries: Rc<Deliveries<C>>,
        clock: C,
    ) -> Rc<GroupPartition<C>> {
        Rc::new_cyclic(|me| GroupPartition {
            group: group.to_string(),
            durable,
            state: RefCell::new(State {
                cursor,
                ..State::default()
            }),
            wake: Notify::default(),
            closed: Cell::new(false),
            ack_timeout,
            deliveries,
            me: me.clone(),
            clock,
        })
    }

    /// The clock its deadlines are read on.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// Every offset below this was acknowledged.
    pub fn committed(&self) -> u64 {
        let st = self.state.borrow();
        let mut committed = st.cursor;
        if let Some(&o) = st.offsets.first() {
            committed = committed.min(o);
        }
        if let Some((&o, _)) = st.retry.iter().next() {
            committed = committed.min(o);
        }
        committed
    }

    /// Forgets every delivery (members kept) and reads on from `cursor`:
    /// a replicated partition's leadership moved, and what the group had
    /// out is redelivered by whichever node leads (at least once).
    pub fn restart_at(&self, cursor: u64) {
        let mut st = self.state.borrow_mut();
        for (delivery_id, _) in st.ledger.drain_deliveries() {
            self.deliveries.remove(delivery_id);
        }
        st.offsets.clear();
        st.retry.clear();
        st.cursor = cursor;
        drop(st);
        self.wake.notify_all();
    }

    /// Adds a member (or updates its limit).
    pub fn attach(&self, id: MemberId, max_in_flight: u32) {
        self.state
            .borrow_mut()
            .ledger
            .members
            .attach(id, (), max_in_flight);
        self.wake.notify_all();
    }

    /// Removes every member of connection `conn` on `shard`; their
    /// unacknowledged deliveries go out again at once. Returns the delivery
    /// ids that were outstanding, and whether members remain.
    pub fn detach(&self, shard: u16, conn: u64) -> (Vec<u64>, bool) {
        self.detach_where(|m| m.shard == shard && m.conn == conn)
    }

    /// Removes one member (a subscription that could not attach on every
    /// partition); like [`detach`](Self::detach) otherwise.
    pub fn detach_member(&self, member: MemberId) -> (Vec<u64>, bool) {
        self.detach_where(|m| *m == member)
    }

    fn detach_where(&self, gone: impl Fn(&MemberId) -> bool) -> (Vec<u64>, bool) {
        let mut st = self.state.borrow_mut();
        let orphaned = st.ledger.detach_where(gone);
        let now = self.clock.now();
        let mut ids = Vec::with_capacity(orphaned.len());
        for (delivery_id, held) in orphaned {
            let f = held.what;
            st.forget(&self.deliveries, delivery_id, f);
            st.retry.insert(
                f.offset,
                Retry {
                    attempts: f.attempt,
                    not_before: now,
                },
            );
            ids.push(delivery_id);
        }
        let any = !st.ledger.members.is_empty();
        drop(st);
        self.wake.notify_all();
        (ids, any)
    }

    /// Settles a delivery as processed.
    pub fn ack(&self, delivery_id: u64, from: (u16, u64)) -> Result<(), Error> {
        let mut st = self.state.borrow_mut();
        Self::owned(&st, delivery_id, from)?;
        if let Some(held) = st.ledger.settle(delivery_id) {
            st.forget(&self.deliveries, delivery_id, held.what);
        }
        drop(st);
        self.wake.notify_all();
        Ok(())
    }

    /// Settles a delivery as failed: it goes out again after a backoff.
    pub fn nack(&self, delivery_id: u64, from: (u16, u64), message: &str) -> Result<(), Error> {
        let mut st = self.state.borrow_mut();
        let offset = Self::owned(&st, delivery_id, from)?;
        if let Some(held) = st.ledger.settle(delivery_id) {
            let f = held.what;
            st.forget(&self.deliveries, delivery_id, f);
            let backoff = NACK_BACKOFF_INITIAL_MS
                .saturating_mul(1 << f.attempt.saturating_sub(1).min(16))
                .min(NACK_BACKOFF_MAX_MS);
            st.retry.insert(
                offset,
                Retry {
                    attempts: f.attempt,
                    not_before: self.clock.now() + Duration::from_millis(backoff),
                },
            );
        }
        st.nacks += 1;
        st.last_error = Some(message.to_string());
        drop(st);
        self.wake.notify_all();
        Ok(())
    }

    fn owned(st: &State, delivery_id: u64, from: (u16, u64)) -> Result<u64, Error> {
        let unknown = || Error::NotOutstanding {
            delivery: delivery_id,
            kind: DeliveryKind::Group,
            on_this_connection: true,
        };
        match st.ledger.get(delivery_id) {
            Some(f) if (f.member.shard, f.member.conn) == from => Ok(f.what.offset),
            _ => Err(unknown()),
        }
    }

    /// Status for `status`.
    pub fn status(&self, visible: u64) -> GroupStatus {
        let committed = self.committed();
        let st = self.state.borrow();
        GroupStatus {
            group: self.group.clone(),
            durable: self.durable,
            committed,
            lag: visible.saturating_sub(committed),
            members: st.ledger.members.len(),
            in_flight: st.ledger.len(),
            nacks: st.nacks,
            redeliveries: st.redeliveries,
            last_error: st.last_error.clone(),
            persisted: None,
        }
    }

    /// One dispatch round: expire deadlines, then hand out due retries and
    /// new events to members with room, in their window and on their
    /// connection (`room`, see the `room` module). `new_delivery_id` mints
    /// ids.
    pub(super) async fn round<S: Storage>(
        &self,
        partition: &Partition<S, C>,
        new_delivery_id: &dyn Fn() -> u64,
        room: &dyn ConnRoom,
    ) -> Result<Vec<Outgoing>, Error> {
        if partition.check_serving().is_err() {
            // A replicated partition delivers where it leads only.
            self.state.borrow_mut().room_blocked.clear();
            return Ok(Vec::new());
        }
        let now = self.clock.now();
        let mut out = Vec::new();
        let mut budgets = Budgets::new(room);
        self.expire_deadlines(now);
        self.launch_due_retries(partition, now, new_delivery_id, &mut budgets, &mut out)
            .await?;
        self.launch_new_events(partition, new_delivery_id, &mut budgets, &mut out)
            .await?;
        let mut st = self.state.borrow_mut();
        st.room_blocked = budgets.blocked(&st.ledger.members);
        Ok(out)
    }

    /// The members the last round left waiting for room on their
    /// connection: the dispatcher waits for those connections to write.
    pub(super) fn room_blocked(&self) -> Vec<MemberId> {
        self.state.borrow().room_blocked.clone()
    }

    /// Deliveries past their ack deadline (at or before `now`) leave their
    /// member and are retried at once. Pops only the due ones.
    fn expire_deadlines(&self, now: Duration) {
        let mut st = self.state.borrow_mut();
        while let Some((delivery_id, held)) = st.ledger.pop_due(now) {
            let f = held.what;
            st.forget(&self.deliveries, delivery_id, f);
            st.retry.insert(
                f.offset,
                Retry {
                    attempts: f.attempt,
                    not_before: now,
                },
            );
        }
    }

    /// Retries that are due go out first, while members have room.
    async fn launch_due_retries<S: Storage>(
        &self,
        partition: &Partition<S, C>,
        now: Duration,
        new_delivery_id: &dyn Fn() -> u64,
        budgets: &mut Budgets<'_>,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), Error> {
        loop {
            let due = {
                let st = self.state.borrow();
                st.retry
                    .iter()
                    .find(|(_, r)| r.not_before <= now)
                    .map(|(&o, &r)| (o, r))
            };
            let Some((offset, retry)) = due else { break };
            if !budgets.any_can_take(&self.state.borrow().ledger.members) {
                break;
            }
            let event = match partition.event_at(offset).await {
                Ok(e) => e,
                Err(e) if e.code() == ErrorCode::OffsetOutOfRange => {
                    // Deleted by retention meanwhile: nothing to redeliver.
                    self.state.borrow_mut().retry.remove(&offset);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut st = self.state.borrow_mut();
            // Another round may have launched it while the read waited.
            if !st.retry.contains_key(&offset) {
                continue;
            }
            let Some(i) = st.ledger.members.pick_member(|m| budgets.can_take(m)) else {
                break;
            };
            st.retry.remove(&offset);
            let d = self.launch(
                &mut st,
                i,
                offset,
                retry.attempts + 1,
                event,
                new_delivery_id,
            );
            budgets.spend(d.member, d.event.len());
            out.push(d);
        }
        Ok(())
    }

    /// New events from the cursor on, while members have room.
    async fn launch_new_events<S: Storage>(
        &self,
        partition: &Partition<S, C>,
        new_delivery_id: &dyn Fn() -> u64,
        budgets: &mut Budgets<'_>,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), Error> {
        loop {
            let (cursor, read_bytes) = {
                let st = self.state.borrow();
                if !budgets.any_can_take(&st.ledger.members) {
                    break;
                }
                let members = &st.ledger.members;
                (st.cursor, budgets.read_bytes(members, DISPATCH_READ_BYTES))
            };
            let start = partition.log.stats().start_offset;
            let cursor = if cursor < start {
                self.state.borrow_mut().cursor = start;
                start
            } else {
                cursor
            };
            if cursor >= partition.readable_end() {
                break;
            }
            let (_, records) = partition.fetch(cursor, read_bytes).await?;
            if records.is_empty() {
                break;
            }
            let mut st = self.state.borrow_mut();
            let mut launched = false;
            for (offset, event) in records {
                if offset < st.cursor {
                    continue;
                }
                let Some(i) = st.ledger.members.pick_member(|m| budgets.can_take(m)) else {
                    break;
                };
                st.cursor = offset + 1;
                let d = self.launch(&mut st, i, offset, 1, event, new_delivery_id);
                budgets.spend(d.member, d.event.len());
                out.push(d);
                launched = true;
            }
            if !launched {
                break;
            }
        }
        Ok(())
    }

    fn launch(
        &self,
        st: &mut State,
        member: usize,
        offset: u64,
        attempt: u32,
        event: Vec<u8>,
        new_delivery_id: &dyn Fn() -> u64,
    ) -> Outgoing {
        let delivery_id = new_delivery_id();
        let deadline = self.clock.now() + self.ack_timeout;
        let id = st
            .ledger
            .issue(member, delivery_id, deadline, InFlight { offset, attempt });
        let fresh = st.offsets.insert(offset);
        debug_assert!(fresh, "offset {offset} out twice");
        if attempt > 1 {
            st.redeliveries += 1;
        }
        self.deliveries.insert(delivery_id, self.me.clone());
        Outgoing {
            member: id,
            delivery_id,
            offset,
            attempt,
            event,
        }
    }

    /// What the dispatcher, after a round that handed nothing out, waits
    /// for besides `wake` (which attach, detach, ack, nack and removal
    /// signal). With no member, nothing else: an idle group costs no CPU.
    /// With every member full, only the next ack deadline (a retry cannot go
    /// out before a member has room, and a settlement signals `wake`); a
    /// member whose connection had no room in the last round counts as
    /// full (the dispatcher also waits for its connection to write). With
    /// room, appends and the next deadline or retry.
    pub(super) fn idle_wait(&self) -> IdleWait {
        let st = self.state.borrow();
        if st.ledger.members.is_empty() {
            return IdleWait {
                appends: false,
                until: None,
            };
        }
        let deadline = st.ledger.next_deadline();
        let blocked = &st.room_blocked;
        let can_take = |m: &Member<()>| m.has_room() && !blocked.contains(&m.id);
        if !st.ledger.members.iter().any(can_take) {
            return IdleWait {
                appends: false,
                until: deadline,
            };
        }
        let retry = st.retry.values().map(|r| r.not_before).min();
        let until = match (deadline, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        IdleWait {
            appends: true,
            until,
        }
    }
}

impl<C: Clock> Drop for GroupPartition<C> {
    /// Takes the group's outstanding deliveries out of the shard's index.
    fn drop(&mut self) {
        for id in self.state.get_mut().ledger.ids() {
            self.deliveries.remove(id);
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::path::Path;
    use std::time::Instant;

    use futures::executor::LocalPool;
    use hadron_engine::LogConfig;
    use hadron_engine::storage::sim::{SimFaults, SimStorage};
    use hadron_wire::Limits;

    use super::*;
    use crate::shard::clock::sim::SimClock;
    use crate::shard::partition::DedupLimits;

    pub(super) fn member(conn: u64) -> MemberId {
        MemberId {
            shard: 0,
            conn,
            subscription: conn,
        }
    }

    /// Hands out `n` deliveries of `g` to its member `at` (an index into
    /// its members) from offset `first`, with ids from `next_id`, as a
    /// dispatch round does with new events.
    fn launch_n<C: Clock>(
        g: &GroupPartition<C>,
        at: usize,
        first: u64,
        n: u64,
        next_id: &Cell<u64>,
    ) -> Vec<u64> {
        let mint = || {
            next_id.set(next_id.get() + 1);
            next_id.get()
        };
        let mut st = g.state.borrow_mut();
        st.cursor = st.cursor.max(first + n);
        (first..first + n)
            .map(|o| g.launch(&mut st, at, o, 1, Vec::new(), &mint).delivery_id)
            .collect()
    }

    /// An Ack of `ackIdsMax` ids spread over many groups: each id is found
    /// in its group through the shard's index (one lookup, however many
    /// groups), settled once, and leaves the index; ids from another
    /// connection, unknown or already settled ids are refused and change
    /// nothing.
    #[test]
    fn acks_find_their_group_through_the_delivery_index() {
        const GROUPS: u64 = 256;
        let ids_max = u64::from(crate::config::server::ACK_IDS_MAX_DEFAULT);
        let per_group = ids_max / GROUPS;
        let index = Rc::new(Deliveries::default());
        let next_id = Cell::new(0);
        let groups: Vec<Rc<GroupPartition<SimClock>>> = (0..GROUPS)
            .map(|i| {
                let g = GroupPartition::new(
                    &format!("g{i}"),
                    true,
                    0,
                    Duration::from_secs(60),
                    index.clone(),
                    SimClock::new(0),
                );
                g.attach(member(1), u32::MAX);
                g
            })
            .collect();
        let mut ids = Vec::new();
        for (i, g) in groups.iter().enumerate() {
            for id in launch_n(g, 0, 0, per_group, &next_id) {
                ids.push((i, id));
            }
        }
        assert_eq!(ids.len() as u64, ids_max);
        assert_eq!(index.len() as u64, ids_max);
        // From another connection: refused, still outstanding.
        let (i, id) = ids[7];
        let found = index.group_of(id).unwrap();
        assert_eq!(found.group, groups[i].group);
        let refused = found.ack(id, (0, 2)).unwrap_err();
        assert_eq!(refused.code(), ErrorCode::UnknownDelivery);
        assert_eq!(index.len() as u64, ids_max);
        // The whole Ack, as the shard settles it.
        let started = Instant::now();
        for &(i, id) in &ids {
            let g = index.group_of(id).unwrap();
            assert!(Rc::ptr_eq(&g, &groups[i]));
            g.ack(id, (0, 1)).unwrap();
        }
        eprintln!(
            "settled {} ids over {GROUPS} groups in {:?}",
            ids.len(),
            started.elapsed()
        );
        assert_eq!(index.len(), 0);
        for g in &groups {
            assert_eq!(g.committed(), per_group, "{}", g.group);
        }
        // Settled, or never made: not found.
        assert!(index.group_of(ids[0].1).is_none());
        assert!(index.group_of(u64::MAX).is_none());
    }

    /// Deliveries leave the index whichever way they stop being
    /// outstanding: a nack, a disconnect, a removed member, a dropped group.
    #[test]
    fn deliveries_leave_the_index_however_they_end() {
        let index = Rc::new(Deliveries::default());
        let next_id = Cell::new(0);
        let g = GroupPartition::new(
            "g",
            true,
            0,
            Duration::from_secs(60),
            index.clone(),
            SimClock::new(0),
        );
        g.attach(member(1), 100);
        g.attach(member(2), 100);
        let first = launch_n(&g, 0, 0, 3, &next_id);
        let second = launch_n(&g, 1, 3, 2, &next_id);
        assert_eq!(index.len(), 5);
        g.nack(first[0], (0, 1), "failed").unwrap();
        assert!(index.group_of(first[0]).is_none());
        let (orphaned, left) = g.detach(0, 2);
        assert_eq!((orphaned.len(), left), (2, true));
        assert!(second.iter().all(|&id| index.group_of(id).is_none()));
        assert_eq!(index.len(), 2);
        assert_eq!(g.committed(), 0, "nacked and orphaned go out again");
        let (orphaned, left) = g.detach_member(member(1));
        assert_eq!((orphaned.len(), left), (2, false));
        assert_eq!(index.len(), 0);
        g.attach(member(3), 100);
        launch_n(&g, 0, 5, 4, &next_id);
        assert_eq!(index.len(), 4);
        drop(g);
        assert_eq!(index.len(), 0, "a dropped group takes its deliveries out");
    }

    /// A group without members waits for nothing but its wake (no timer,
    /// no appends); with every member full, for the next ack deadline
    /// only, even when a retry is due; with room, for appends and the
    /// earliest deadline or retry.
    #[test]
    fn an_idle_group_waits_only_for_what_it_could_act_on() {
        let index = Rc::new(Deliveries::default());
        let next_id = Cell::new(0);
        let clock = SimClock::new(0);
        let g = GroupPartition::new("g", true, 0, Duration::from_secs(30), index, clock.clone());
        let nothing = IdleWait {
            appends: false,
            until: None,
        };
        assert_eq!(g.idle_wait(), nothing);
        g.attach(member(1), 2);
        assert_eq!(
            g.idle_wait(),
            IdleWait {
                appends: true,
                until: None
            }
        );
        let ids = launch_n(&g, 0, 0, 2, &next_id);
        let deadline = g.state.borrow().ledger.next_deadline().unwrap();
        assert_eq!(
            g.idle_wait(),
            IdleWait {
                appends: false,
                until: Some(deadline)
            },
            "full: appends cannot be served"
        );
        // A retry due now, with no room: still only the deadline.
        g.state.borrow_mut().retry.insert(
            9,
            Retry {
                attempts: 1,
                not_before: clock.now(),
            },
        );
        assert_eq!(g.idle_wait().until, Some(deadline));
        g.ack(ids[0], (0, 1)).unwrap();
        let with_room = g.idle_wait();
        assert!(with_room.appends);
        assert!(
            with_room.until.is_some_and(|t| t < deadline),
            "the retry is due first"
        );
        g.detach(0, 1);
        assert_eq!(g.idle_wait(), nothing, "no members: no timer at all");
    }

    /// A partition on simulated storage and `clock` holding `n` events.
    fn partition_of(clock: &SimClock, n: u64) -> Partition<SimStorage, SimClock> {
        partition_with(clock, n, 0)
    }

    /// A partition on simulated storage and `clock` holding `n` events of
    /// `data_bytes` of data each.
    pub(in crate::shard) fn partition_with(
        clock: &SimClock,
        n: u64,
        data_bytes: usize,
    ) -> Partition<SimStorage, SimClock> {
        let data = vec![7u8; data_bytes];
        let mut pool = LocalPool::new();
        let storage = SimStorage::new(1, SimFaults::default());
        let p = pool
            .run_until(Partition::open(
                &storage,
                clock.clone(),
                Path::new("/group-tests"),
                "s",
                0,
                LogConfig::default(),
                DedupLimits {
                    window_ms: 0,
                    keys_max: 1,
                },
                Limits::DEFAULT,
                16,
            ))
            .unwrap();
        let events: Vec<Vec<u8>> = (0..n)
            .map(|i| {
                hadron_wire::encode_event(&hadron_wire::EventRef {
                    id: &i.to_string(),
                    source: "t",
                    ty: "t",
                    data: &data,
                    ..hadron_wire::EventRef::default()
                })
            })
            .collect();
        for batch in events.chunks(8) {
            pool.run_until(p.publish(batch)).unwrap();
        }
        assert_eq!(p.log.visible_offset(), n);
        p
    }

    /// Runs one dispatch round of `g` on `p`: (member conn, offset,
    /// attempt, delivery id) of each delivery.
    fn round_of(
        g: &GroupPartition<SimClock>,
        p: &Partition<SimStorage, SimClock>,
        next_id: &Cell<u64>,
    ) -> Vec<(u64, u64, u32, u64)> {
        let mint = || {
            next_id.set(next_id.get() + 1);
            next_id.get()
        };
        let out = LocalPool::new()
            .run_until(g.round(p, &mint, &Unlimited))
            .unwrap();
        out.iter()
            .map(|d| (d.member.conn, d.offset, d.attempt, d.delivery_id))
            .collect()
    }

    /// Events go to the members with room in turn; deliveries past their
    /// ack deadline (exactly those: one issued later is still out) go out
    /// again in the next round with the next attempt and a new id, the old
    /// id refused; the committed offset stays below the unacked ones.
    #[test]
    fn ack_timeouts_redeliver_exactly_the_expired_deliveries() {
        let clock = SimClock::new(0);
        let p = partition_of(&clock, 5);
        let next_id = Cell::new(0);
        let timeout = Duration::from_secs(30);
        let index = Rc::new(Deliveries::default());
        let g = GroupPartition::new("g", true, 0, timeout, index.clone(), clock.clone());
        g.attach(member(1), 1);
        g.attach(member(2), 2);
        let first = round_of(&g, &p, &next_id);
        let to: Vec<(u64, u64, u32)> = first.iter().map(|d| (d.0, d.1, d.2)).collect();
        assert_eq!(
            to,
            [(1, 0, 1), (2, 1, 1), (2, 2, 1)],
            "round robin with room"
        );
        assert!(
            round_of(&g, &p, &next_id).is_empty(),
            "every member is full"
        );
        // Offset 1 is acked at 10 s; offset 3 then goes out, due at 40 s.
        clock.advance(Duration::from_secs(10));
        g.ack(first[1].3, (0, 2)).unwrap();
        let later = round_of(&g, &p, &next_id);
        assert_eq!(
            later.iter().map(|d| (d.0, d.1)).collect::<Vec<_>>(),
            [(2, 3)]
        );
        assert_eq!(
            g.idle_wait().until,
            Some(timeout),
            "the earliest deadline, exactly"
        );
        clock.advance(Duration::from_secs(20));
        let again = round_of(&g, &p, &next_id);
        let to: Vec<(u64, u64, u32)> = again.iter().map(|d| (d.0, d.1, d.2)).collect();
        assert_eq!(
            to,
            [(1, 0, 2), (2, 2, 2)],
            "offsets 0 and 2 expired; offset 3 (due at 40 s) is still out"
        );
        assert!(again[0].3 > later[0].3, "a new delivery id");
        let code = g.ack(first[0].3, (0, 1)).unwrap_err().code();
        assert_eq!(
            code,
            ErrorCode::UnknownDelivery,
            "the expired id is settled"
        );
        assert_eq!(g.committed(), 0);
        g.ack(again[0].3, (0, 1)).unwrap();
        assert_eq!(g.committed(), 2);
        let rest = round_of(&g, &p, &next_id);
        let to: Vec<(u64, u64, u32)> = rest.iter().map(|d| (d.0, d.1, d.2)).collect();
        assert_eq!(to, [(1, 4, 1)]);
        assert_eq!(g.idle_wait().until, Some(Duration::from_secs(40)));
        assert_eq!(g.status(5).in_flight, 3);
        assert_eq!(g.status(5).redeliveries, 2, "offsets 0 and 2, once each");
        assert_eq!(index.len(), 3);
    }

    /// A nacked delivery waits its backoff (100 ms after the first
    /// attempt), then goes out again with the next attempt; the idle wait
    /// names exactly when; a disconnect sends a member's deliveries to
    /// another member at once.
    #[test]
    fn nacks_back_off_and_disconnects_redeliver_at_once() {
        let clock = SimClock::new(0);
        let p = partition_of(&clock, 2);
        let next_id = Cell::new(0);
        let index = Rc::new(Deliveries::default());
        let g = GroupPartition::new("g", false, 0, Duration::from_secs(30), index, clock.clone());
        g.attach(member(1), 10);
        let first = round_of(&g, &p, &next_id);
        assert_eq!(first.len(), 2);
        g.nack(first[0].3, (0, 1), "boom").unwrap();
        assert_eq!(g.status(2).last_error.as_deref(), Some("boom"));
        assert!(
            round_of(&g, &p, &next_id).is_empty(),
            "not before its backoff"
        );
        assert_eq!(g.idle_wait().until, Some(Duration::from_millis(100)));
        clock.advance(Duration::from_millis(100));
        let again = round_of(&g, &p, &next_id);
        assert_eq!(
            again.iter().map(|d| (d.1, d.2)).collect::<Vec<_>>(),
            [(0, 2)]
        );
        g.attach(member(2), 10);
        let (orphaned, left) = g.detach(0, 1);
        assert!(left, "member 2 remains");
        let mut ids = orphaned;
        ids.sort_unstable();
        assert_eq!(ids, [first[1].3, again[0].3]);
        let moved = round_of(&g, &p, &next_id);
        let to: Vec<(u64, u64, u32)> = moved.iter().map(|d| (d.0, d.1, d.2)).collect();
        assert_eq!(to, [(2, 0, 3), (2, 1, 2)], "in offset order, next attempts");
        let status = g.status(2);
        assert_eq!(
            (status.nacks, status.redeliveries),
            (1, 3),
            "one nack; offset 0 went out again twice, offset 1 once"
        );
    }
}
