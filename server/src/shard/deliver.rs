//! The dispatch core shared by consumer groups (`group`) and pipeline stages
//! (`pipeline`): who may receive deliveries, and which deliveries are out
//! until when.
//!
//! - [`Members`]: the members attached, each with a `max_in_flight` and the
//!   number it holds, and a key saying what it consumes (nothing for a
//!   group's members, the stage for a pipeline's). [`Members::pick`] is
//!   round robin over the members with room whose key fits.
//! - [`Ledger`]: the members and the deliveries out, by delivery id, each
//!   with its member, its ack deadline and what it carries (a group's
//!   offset and attempt, a stage's root and stage). Deadlines are also kept
//!   in order ([`Timers`], keyed by (deadline, delivery id)), so expiry pops
//!   exactly the due ones, earliest first, instead of scanning every
//!   delivery, and the next deadline is exact: a dispatcher sleeps until
//!   then and no longer.
//!
//! Invariants, kept by every method of [`Ledger`]: a delivery is in the map
//! by id if and only if its (deadline, id) is in the timers; a member's
//! `in_flight` counts the deliveries it holds (a member detached takes its
//! deliveries out with it). Deadlines are monotonic times of the owner's
//! `Clock`; this module never reads the time itself.
//!
//! Settling a delivery costs a map lookup and two removals; issuing one a
//! map and a set insert (deadlines mostly grow, so the set grows at its
//! end). Nothing here allocates per delivery beyond the maps' own nodes.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

/// Identifies one subscription of one connection, wherever it lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MemberId {
    /// Shard of the member's connection.
    pub shard: u16,
    /// Connection id on that shard.
    pub conn: u64,
    /// Subscription id on that connection.
    pub subscription: u64,
}

/// A member: who, what it consumes, and how much it may hold.
#[derive(Debug, Clone, Copy)]
pub struct Member<K> {
    pub id: MemberId,
    /// What it consumes (a pipeline member's stage; `()` in a group).
    pub key: K,
    /// At least 1.
    pub max_in_flight: u32,
    /// Deliveries it holds.
    pub in_flight: u32,
}

impl<K> Member<K> {
    /// Whether it holds fewer deliveries than its `max_in_flight`.
    pub fn has_room(&self) -> bool {
        self.in_flight < self.max_in_flight
    }
}

/// The members of a group or a pipeline run, in the order they attached.
#[derive(Debug)]
pub struct Members<K> {
    list: Vec<Member<K>>,
    /// Where the next round-robin search starts.
    next: usize,
}

impl<K> Default for Members<K> {
    fn default() -> Self {
        Members {
            list: Vec::new(),
            next: 0,
        }
    }
}

impl<K> Members<K> {
    /// Adds a member consuming `key`, or updates the limit of one attached
    /// already (its key stays). A limit reads as at least 1.
    pub fn attach(&mut self, id: MemberId, key: K, max_in_flight: u32) {
        match self.list.iter_mut().find(|m| m.id == id) {
            Some(m) => m.max_in_flight = max_in_flight.max(1),
            None => self.list.push(Member {
                id,
                key,
                max_in_flight: max_in_flight.max(1),
                in_flight: 0,
            }),
        }
    }

    /// The index of the next member with room whose key `fits`, round
    /// robin: the search starts after the last member picked.
    #[cfg(test)]
    pub fn pick(&mut self, fits: impl Fn(&K) -> bool) -> Option<usize> {
        self.pick_member(|m| fits(&m.key))
    }

    /// [`pick`](Self::pick) by what `fits` says of the whole member (its
    /// id too: a group or a pipeline run skips members whose connection
    /// has no room).
    pub fn pick_member(&mut self, fits: impl Fn(&Member<K>) -> bool) -> Option<usize> {
        let n = self.list.len();
        for k in 0..n {
            let i = (self.next + k) % n;
            if self.list[i].has_room() && fits(&self.list[i]) {
                self.next = (i + 1) % n;
                return Some(i);
            }
        }
        None
    }

    /// Whether any member has room.
    #[cfg(test)]
    pub fn has_room(&self) -> bool {
        self.list.iter().any(Member::has_room)
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Member<K>> {
        self.list.iter()
    }

    /// One delivery fewer held by `id` (if still attached).
    fn release(&mut self, id: MemberId) {
        if let Some(m) = self.list.iter_mut().find(|m| m.id == id) {
            m.in_flight = m.in_flight.saturating_sub(1);
        }
    }
}

/// Things due at monotonic times, kept in (time, thing) order.
#[derive(Debug)]
pub struct Timers<T> {
    by_time: BTreeSet<(Duration, T)>,
}

impl<T> Default for Timers<T> {
    fn default() -> Self {
        Timers {
            by_time: BTreeSet::new(),
        }
    }
}

impl<T: Ord + Copy> Timers<T> {
    /// `thing` falls due at `at`.
    pub fn push(&mut self, at: Duration, thing: T) {
        self.by_time.insert((at, thing));
    }

    /// The earliest thing due by `now`, taken out.
    pub fn pop_due(&mut self, now: Duration) -> Option<(Duration, T)> {
        let &(at, _) = self.by_time.first()?;
        if at > now {
            return None;
        }
        self.by_time.pop_first()
    }

    /// When the earliest thing falls due.
    pub fn next(&self) -> Option<Duration> {
        self.by_time.first().map(|&(at, _)| at)
    }

    fn remove(&mut self, at: Duration, thing: T) -> bool {
        self.by_time.remove(&(at, thing))
    }

    /// Keeps only the things `keep` says to.
    pub fn retain(&mut self, keep: impl Fn(&T) -> bool) {
        self.by_time.retain(|(_, t)| keep(t));
    }
}

/// A delivery out: to whom, due by when, carrying what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held<T> {
    pub member: MemberId,
    /// Ack deadline, a monotonic time of the owner's clock.
    pub deadline: Duration,
    pub what: T,
}

/// Members, and the deliveries they hold, by id and by deadline.
#[derive(Debug)]
pub struct Ledger<K, T> {
    pub members: Members<K>,
    by_id: HashMap<u64, Held<T>>,
    deadlines: Timers<u64>,
}

impl<K, T> Default for Ledger<K, T> {
    fn default() -> Self {
        Ledger {
            members: Members::default(),
            by_id: HashMap::new(),
            deadlines: Timers::default(),
        }
    }
}

impl<K, T> Ledger<K, T> {
    /// Hands delivery `id`, carrying `what`, to the member at `member` (an
    /// index from [`Members::pick`]), due by `deadline`. Returns the
    /// member.
    pub fn issue(&mut self, member: usize, id: u64, deadline: Duration, what: T) -> MemberId {
        let m = &mut self.members.list[member];
        m.in_flight += 1;
        let member = m.id;
        let held = Held {
            member,
            deadline,
            what,
        };
        let replaced = self.by_id.insert(id, held);
        assert!(replaced.is_none(), "delivery id {id} issued twice");
        self.deadlines.push(deadline, id);
        member
    }

    /// Delivery `id`, if it is out.
    pub fn get(&self, id: u64) -> Option<&Held<T>> {
        self.by_id.get(&id)
    }

    /// Takes delivery `id` back (acked, nacked or failed): its member has
    /// room for one more.
    pub fn settle(&mut self, id: u64) -> Option<Held<T>> {
        let held = self.by_id.remove(&id)?;
        let timed = self.deadlines.remove(held.deadline, id);
        debug_assert!(timed, "delivery {id} out without its deadline");
        self.members.release(held.member);
        Some(held)
    }

    /// Takes back the delivery with the earliest deadline, if that
    /// deadline passed by `now` (at or before): call until `None` to
    /// expire every due one, in deadline order.
    pub fn pop_due(&mut self, now: Duration) -> Option<(u64, Held<T>)> {
        loop {
            let (_, id) = self.deadlines.pop_due(now)?;
            let Some(held) = self.by_id.remove(&id) else {
                debug_assert!(false, "a deadline of delivery {id}, which is not out");
                continue;
            };
            self.members.release(held.member);
            return Some((id, held));
        }
    }

    /// The earliest ack deadline of the deliveries out.
    pub fn next_deadline(&self) -> Option<Duration> {
        self.deadlines.next()
    }

    /// Removes the members `gone` says, and returns the deliveries they
    /// held, in deadline order (the same order on every run).
    pub fn detach_where(&mut self, gone: impl Fn(&MemberId) -> bool) -> Vec<(u64, Held<T>)> {
        self.members.list.retain(|m| !gone(&m.id));
        if self.members.next >= self.members.list.len() {
            self.members.next = 0;
        }
        let ids: Vec<(Duration, u64)> = self
            .deadlines
            .by_time
            .iter()
            .filter(|(_, id)| self.by_id.get(id).is_some_and(|h| gone(&h.member)))
            .copied()
            .collect();
        let mut held = Vec::with_capacity(ids.len());
        for (deadline, id) in ids {
            self.deadlines.remove(deadline, id);
            if let Some(h) = self.by_id.remove(&id) {
                held.push((id, h));
            }
        }
        held
    }

    /// Takes back every delivery out (members kept, their room freed).
    pub fn drain_deliveries(&mut self) -> Vec<(u64, Held<T>)> {
        let ids: Vec<u64> = self.by_id.keys().copied().collect();
        ids.into_iter()
            .filter_map(|id| Some((id, self.settle(id)?)))
            .collect()
    }

    /// Deliveries out.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// The ids of the deliveries out, in no particular order.
    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.by_id.keys().copied()
    }
}

/// What a dispatcher waits for after a round that handed nothing out,
/// besides its owner's `wake` (attach, detach, settlements, removal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdleWait {
    /// Whether an append to the source partition could give it work.
    pub appends: bool,
    /// When a deadline or retry falls due, if any can matter (a monotonic
    /// time of the owner's clock).
    pub until: Option<Duration>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(conn: u64) -> MemberId {
        MemberId {
            shard: 0,
            conn,
            subscription: conn,
        }
    }

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    /// Deliveries issued with deadlines out of order come out of
    /// `pop_due` earliest first, exactly those due by `now` (a deadline
    /// equal to `now` is due), ties by delivery id; the next deadline is
    /// always the earliest still out.
    #[test]
    fn expiry_pops_exactly_the_due_deliveries_in_deadline_order() {
        let mut l: Ledger<(), u64> = Ledger::default();
        l.members.attach(member(1), (), 100);
        for (id, deadline) in [(5, 30), (1, 10), (9, 20), (3, 20), (7, 40)] {
            l.issue(0, id, ms(deadline), id * 100);
        }
        assert_eq!(l.next_deadline(), Some(ms(10)));
        assert_eq!(l.pop_due(ms(9)), None, "nothing due before 10 ms");
        let mut popped = Vec::new();
        while let Some((id, h)) = l.pop_due(ms(20)) {
            assert_eq!(h.what, id * 100);
            popped.push((id, h.deadline.as_millis()));
        }
        assert_eq!(popped, [(1, 10), (3, 20), (9, 20)]);
        assert_eq!(l.next_deadline(), Some(ms(30)));
        assert_eq!(l.len(), 2);
        assert_eq!(l.members.iter().next().map(|m| m.in_flight), Some(2));
        // A settled delivery's deadline leaves with it: the next deadline
        // is exact, not a lower bound.
        assert_eq!(l.settle(5).map(|h| h.deadline), Some(ms(30)));
        assert_eq!(l.next_deadline(), Some(ms(40)));
        assert_eq!(l.pop_due(ms(39)), None);
        assert_eq!(l.pop_due(ms(1000)).map(|(id, _)| id), Some(7));
        assert_eq!(l.next_deadline(), None);
        assert_eq!(l.len(), 0);
        assert_eq!(l.members.iter().next().map(|m| m.in_flight), Some(0));
    }

    /// Round robin goes around the members with room whose key fits,
    /// skipping full ones and those of another key, and starts after the
    /// last one picked.
    #[test]
    fn round_robin_picks_members_with_room_in_turn() {
        let mut l: Ledger<u8, ()> = Ledger::default();
        l.members.attach(member(1), 0, 1);
        l.members.attach(member(2), 0, 2);
        l.members.attach(member(3), 1, 5);
        l.members.attach(member(4), 0, 0);
        assert_eq!(
            l.members
                .iter()
                .map(|m| m.max_in_flight)
                .collect::<Vec<_>>(),
            [1, 2, 5, 1],
            "a limit of 0 reads as 1"
        );
        let mut to = Vec::new();
        let mut id = 0;
        while let Some(i) = l.members.pick(|&stage| stage == 0) {
            id += 1;
            to.push(l.issue(i, id, ms(id), ()).conn);
        }
        assert_eq!(to, [1, 2, 4, 2], "each in turn until all are full");
        assert!(l.members.has_room(), "member 3 (another stage) has room");
        assert_eq!(l.members.pick(|&stage| stage == 1), Some(2));
        // Settling frees exactly the member that held it.
        l.settle(2);
        assert_eq!(l.members.pick(|&stage| stage == 0), Some(1));
        // Attaching again changes the limit, not the key or the count.
        l.members.attach(member(3), 0, 7);
        let m3 = l.members.iter().find(|m| m.id == member(3)).copied();
        assert_eq!(m3.map(|m| (m.key, m.max_in_flight)), Some((1, 7)));
    }

    /// Detaching takes the members out with exactly the deliveries they
    /// held, in deadline order, and nobody else's; a member picked after
    /// that is one that remains.
    #[test]
    fn detach_returns_exactly_what_the_members_held() {
        let mut l: Ledger<(), u64> = Ledger::default();
        for conn in 1..=3 {
            l.members.attach(member(conn), (), 10);
        }
        // Connection 2 gets deliveries 2, 5, 8 (deadlines 80, 50, 20).
        for id in 1..=9u64 {
            let i = ((id - 1) % 3) as usize;
            assert_eq!(l.members.pick(|_| true), Some(i));
            l.issue(i, id, ms(100 - id * 10), id);
        }
        let held = l.detach_where(|m| m.conn == 2);
        let ids: Vec<u64> = held.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, [8, 5, 2]);
        assert!(held.iter().all(|(_, h)| h.member == member(2)));
        assert_eq!(l.len(), 6);
        assert_eq!(l.members.len(), 2);
        assert!(l.get(5).is_none() && l.settle(5).is_none());
        for _ in 0..4 {
            let i = l.members.pick(|_| true);
            assert!(i.is_some_and(|i| i < 2), "a member that remains");
        }
        // Their deadlines left too: expiry sees only the others'.
        let mut due = Vec::new();
        while let Some((id, _)) = l.pop_due(ms(1000)) {
            due.push(id);
        }
        assert_eq!(due, [9, 7, 6, 4, 3, 1]);
        let held = l.detach_where(|_| true);
        assert!(held.is_empty() && l.members.is_empty());
        assert_eq!(l.members.pick(|_| true), None);
    }

    /// After a delivery is settled its member has room again, and the same
    /// thing can be issued again under a new id with a new deadline; the
    /// old id is no longer out.
    #[test]
    fn a_settled_delivery_can_be_issued_again() {
        let mut l: Ledger<(), (u64, u32)> = Ledger::default();
        l.members.attach(member(1), (), 1);
        let i = l.members.pick(|_| true).unwrap();
        l.issue(i, 1, ms(10), (42, 1));
        assert_eq!(l.members.pick(|_| true), None, "full");
        let (_, h) = l.pop_due(ms(10)).unwrap();
        assert_eq!(h.what, (42, 1));
        let i = l.members.pick(|_| true).unwrap();
        l.issue(i, 2, ms(40), (42, 2));
        assert!(l.get(1).is_none());
        assert_eq!(
            l.get(2).map(|h| (h.what, h.deadline)),
            Some(((42, 2), ms(40)))
        );
        assert_eq!(l.settle(2).map(|h| h.what), Some((42, 2)));
        assert!(l.settle(2).is_none(), "settled once");
        assert_eq!(l.members.iter().next().map(|m| m.in_flight), Some(0));
    }

    /// Timers come out in time order, only when due, and can be thinned.
    #[test]
    fn timers_pop_in_time_order_and_only_when_due() {
        let mut t: Timers<(u64, u8)> = Timers::default();
        t.push(ms(30), (1, 0));
        t.push(ms(10), (2, 1));
        t.push(ms(10), (1, 2));
        t.push(ms(20), (3, 0));
        assert_eq!(t.next(), Some(ms(10)));
        t.retain(|&(root, _)| root != 3);
        assert_eq!(t.by_time.len(), 3);
        assert_eq!(t.pop_due(ms(5)), None);
        assert_eq!(t.pop_due(ms(25)), Some((ms(10), (1, 2))));
        assert_eq!(t.pop_due(ms(25)), Some((ms(10), (2, 1))));
        assert_eq!(t.pop_due(ms(25)), None);
        assert_eq!(t.next(), Some(ms(30)));
        assert_eq!(t.by_time.len(), 1);
    }
}
