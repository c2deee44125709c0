//! How far a group's dispatch round reads the log for its members: only as
//! far as their connections can take the deliveries now.
//!
//! A delivery pushed to a connection whose outbox is above
//! `outboxBytesMax` is dropped (`Shard::congestion_checked`) and stays in
//! flight with its member until its ack timeout. A round that reads events
//! for such a member reads them for nothing, and holds all of them at once
//! until they are pushed: every ack timeout, a subscriber that did not read
//! had its whole in-flight window read again (a window of 1,000 x 60 KiB
//! events: 60 MB read and held per round; the server's peak RSS grew 3 to
//! 28 MiB with the machine's load).
//!
//! So a round asks the [`ConnRoom`] how many bytes each member's
//! connection can take now, hands a member deliveries only while some are
//! left (the last one may overshoot by one event, as the outbox's own check
//! lets the last frame do), and spends each event's bytes from it
//! ([`Budgets`]). What a member cannot take is never read: it stays in the
//! group's state as offsets (new events at the cursor, timed out or
//! nacked ones in `retry`) and goes out, to this member or another, in a
//! round after there is room. The members a round left waiting for room
//! are [`GroupPartition::room_blocked`](super::GroupPartition::room_blocked);
//! the dispatcher sleeps until one of their connections writes (or
//! anything else it waits for happens), not on a timer.
//!
//! A round also hands out at most [`ROUND_EVENT_BYTES_MAX`] of events,
//! whatever the room: a member on another shard has a room unknown here
//! (its pushes are checked when they arrive there), and a round's
//! deliveries are held together until they are pushed. The dispatcher runs
//! the next round at once after one that handed something out.
//!
//! A pipeline run's round hands out stage deliveries by the same
//! [`Budgets`] (`pipeline::dispatch`): a stage delivery's bytes are its
//! root event's and its inputs', and a ready stage its member's connection
//! cannot take stays ready in the run's execution index.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::shard::deliver::{Member, MemberId, Members};

/// Event bytes one round hands out at most (it may overshoot by one
/// event): what a dispatcher holds at once before pushing, whatever the
/// members' windows. Four fetches of `DISPATCH_READ_BYTES`.
pub const ROUND_EVENT_BYTES_MAX: u64 = 4 * super::DISPATCH_READ_BYTES as u64;

/// What members' connections can take now.
pub trait ConnRoom {
    /// Bytes of deliveries the connection of `member` can take now: 0 when
    /// its outbox is full, `u64::MAX` when it is not known here (a
    /// connection on another shard).
    fn free_bytes(&self, member: MemberId) -> u64;
}

/// Every connection can take everything (simulations without
/// connections).
#[cfg(test)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Unlimited;

#[cfg(test)]
impl ConnRoom for Unlimited {
    fn free_bytes(&self, _: MemberId) -> u64 {
        u64::MAX
    }
}

/// The room a test gives each member's connection, by connection
/// (unlimited when not set).
#[cfg(test)]
#[derive(Debug, Default)]
pub struct TestRoom {
    free: RefCell<HashMap<u64, u64>>,
}

#[cfg(test)]
impl TestRoom {
    /// Connection `conn` can take `bytes`.
    pub fn set(&self, conn: u64, bytes: u64) {
        self.free.borrow_mut().insert(conn, bytes);
    }

    /// `bytes` were pushed to connection `conn` (its outbox fills).
    pub fn spend(&self, conn: u64, bytes: u64) {
        if let Some(free) = self.free.borrow_mut().get_mut(&conn) {
            *free = free.saturating_sub(bytes);
        }
    }
}

#[cfg(test)]
impl ConnRoom for TestRoom {
    fn free_bytes(&self, member: MemberId) -> u64 {
        let free = self.free.borrow();
        free.get(&member.conn).copied().unwrap_or(u64::MAX)
    }
}

/// One round's room: each member's connection's, asked once per round
/// (when the member is first considered), and the round's own
/// [`ROUND_EVENT_BYTES_MAX`]; spent as events are handed out.
pub(in crate::shard) struct Budgets<'a> {
    room: &'a dyn ConnRoom,
    by_member: RefCell<HashMap<MemberId, u64>>,
    round_left: u64,
}

impl<'a> Budgets<'a> {
    pub(in crate::shard) fn new(room: &'a dyn ConnRoom) -> Self {
        Budgets {
            room,
            by_member: RefCell::new(HashMap::new()),
            round_left: ROUND_EVENT_BYTES_MAX,
        }
    }

    /// What the connection of `id` can still take this round.
    fn free(&self, id: MemberId) -> u64 {
        *self
            .by_member
            .borrow_mut()
            .entry(id)
            .or_insert_with(|| self.room.free_bytes(id))
    }

    /// Whether `m` may get one more delivery this round: it has room in
    /// its window, its connection has room, and the round has.
    pub(in crate::shard) fn can_take<K>(&self, m: &Member<K>) -> bool {
        self.round_left > 0 && m.has_room() && self.free(m.id) > 0
    }

    /// Whether any of `members` may get one more delivery this round.
    pub(in crate::shard) fn any_can_take<K>(&self, members: &Members<K>) -> bool {
        members.iter().any(|m| self.can_take(m))
    }

    /// `bytes` of an event were handed to `id`.
    pub(in crate::shard) fn spend(&mut self, id: MemberId, bytes: usize) {
        let bytes = bytes as u64;
        let left = self.free(id).saturating_sub(bytes);
        self.by_member.borrow_mut().insert(id, left);
        self.round_left = self.round_left.saturating_sub(bytes);
    }

    /// How many bytes of new events to read for `members` (at most
    /// `read_max`): no more than they and the round can take, at least 1
    /// (a read returns one event whatever its size).
    pub(super) fn read_bytes(&self, members: &Members<()>, read_max: u32) -> u32 {
        let room: u64 = members
            .iter()
            .filter(|m| self.can_take(m))
            .map(|m| self.free(m.id))
            .fold(0, u64::saturating_add);
        let bytes = room.min(self.round_left).min(u64::from(read_max));
        u32::try_from(bytes).unwrap_or(read_max).max(1)
    }

    /// The members with room in their window whose connection has none:
    /// deliveries wait for those connections to write.
    pub(in crate::shard) fn blocked<K>(&self, members: &Members<K>) -> Vec<MemberId> {
        members
            .iter()
            .filter(|m| m.has_room() && self.free(m.id) == 0)
            .map(|m| m.id)
            .collect()
    }
}

#[cfg(test)]
mod tests;
