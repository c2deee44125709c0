//! A group's round reads the log only as far as its members' connections
//! can take the deliveries: a member whose outbox is full costs offsets,
//! not event bytes, however many ack timeouts pass; nothing it could not
//! take is lost.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use futures::executor::LocalPool;
use hadron_engine::storage::sim::SimStorage;

use super::super::tests::{member, partition_with};
use super::super::{Deliveries, GroupPartition, Outgoing, Unlimited};
use super::TestRoom;
use super::*;
use crate::shard::clock::sim::SimClock;
use crate::shard::deliver::IdleWait;
use crate::shard::partition::Partition;

const ACK_TIMEOUT: Duration = Duration::from_secs(30);

fn group(clock: &SimClock) -> Rc<GroupPartition<SimClock>> {
    let index = Rc::new(Deliveries::default());
    GroupPartition::new("g", true, 0, ACK_TIMEOUT, index, clock.clone())
}

/// One round of `g` on `p` with `room`.
fn round_in(
    g: &GroupPartition<SimClock>,
    p: &Partition<SimStorage, SimClock>,
    next_id: &Cell<u64>,
    room: &dyn ConnRoom,
) -> Vec<Outgoing> {
    let mint = || {
        next_id.set(next_id.get() + 1);
        next_id.get()
    };
    LocalPool::new().run_until(g.round(p, &mint, room)).unwrap()
}

/// Event bytes read from the log for the deliveries of a round.
fn bytes(out: &[Outgoing]) -> usize {
    out.iter().map(|d| d.event.len()).sum()
}

/// (conn, offset, attempt) of each delivery.
fn to(out: &[Outgoing]) -> Vec<(u64, u64, u32)> {
    out.iter()
        .map(|d| (d.member.conn, d.offset, d.attempt))
        .collect()
}

/// A subscriber with a window of 1,000 whose connection stops reading:
/// the round that fills its outbox reads as far as the room (the last
/// delivery overshooting by one event), and across three ack timeouts
/// nothing more is read for it, while a group that ignores the room (the
/// behaviour before) reads its whole window again at every timeout. Once
/// the connection drained, every event goes out, the held-back ones as
/// redeliveries, and all of them can be acked.
#[test]
fn a_full_connection_gets_nothing_read_for_it_across_ack_timeouts() {
    const EVENTS: u64 = 40;
    let clock = SimClock::new(0);
    let p = partition_with(&clock, EVENTS, 4096);
    let event_bytes = LocalPool::new().run_until(p.event_at(0)).unwrap().len();
    let next_id = Cell::new(0);
    let (stuck, unchecked) = (group(&clock), group(&clock));
    stuck.attach(member(1), 1000);
    unchecked.attach(member(1), 1000);
    let room = TestRoom::default();
    room.set(1, 2 * event_bytes as u64 + 1);
    let first = round_in(&stuck, &p, &next_id, &room);
    assert_eq!(to(&first), [(1, 0, 1), (1, 1, 1), (1, 2, 1)]);
    assert_eq!(stuck.room_blocked(), [member(1)]);
    assert_eq!(
        stuck.idle_wait(),
        IdleWait {
            appends: false,
            until: Some(ACK_TIMEOUT)
        },
        "blocked: appends cannot be served, only the deadline matters"
    );
    let all = round_in(&unchecked, &p, &next_id, &Unlimited);
    assert_eq!(all.len() as u64, EVENTS);
    // The connection does not read: its outbox stays full.
    room.set(1, 0);
    let (mut read_stuck, mut read_unchecked) = (0, 0);
    for timeout in 1..=3 {
        clock.advance(ACK_TIMEOUT);
        let held = round_in(&stuck, &p, &next_id, &room);
        read_stuck += bytes(&held);
        let again = round_in(&unchecked, &p, &next_id, &Unlimited);
        assert_eq!(again.len() as u64, EVENTS, "timeout {timeout}");
        assert!(again.iter().all(|d| d.attempt == timeout + 1));
        read_unchecked += bytes(&again);
        assert_eq!(stuck.status(EVENTS).in_flight, 0);
        assert_eq!(stuck.committed(), 0);
    }
    assert_eq!(read_stuck, 0, "nothing read for a full connection");
    assert_eq!(read_unchecked, 3 * EVENTS as usize * event_bytes);
    assert_eq!(stuck.room_blocked(), [member(1)]);
    assert_eq!(
        stuck.idle_wait(),
        IdleWait {
            appends: false,
            until: None
        },
        "nothing out, no room: only a write of the connection (or a wake) can help"
    );
    // It drained.
    room.set(1, u64::MAX);
    let out = round_in(&stuck, &p, &next_id, &room);
    let mut expected = vec![(1, 0, 2), (1, 1, 2), (1, 2, 2)];
    expected.extend((3..EVENTS).map(|o| (1, o, 1)));
    assert_eq!(to(&out), expected, "every event, held-back ones again");
    assert!(stuck.room_blocked().is_empty());
    assert_eq!(stuck.status(EVENTS).redeliveries, 3);
    for d in &out {
        stuck.ack(d.delivery_id, (0, 1)).unwrap();
    }
    assert_eq!(stuck.committed(), EVENTS);
}

/// Deliveries a member's full connection cannot take go to a member whose
/// connection has room: the held-back ones after their ack timeout, new
/// events at once; the blocked member gets none.
#[test]
fn held_back_deliveries_go_to_a_member_whose_connection_has_room() {
    let clock = SimClock::new(0);
    let p = partition_with(&clock, 10, 100);
    let next_id = Cell::new(0);
    let g = group(&clock);
    g.attach(member(1), 10);
    g.attach(member(2), 10);
    let room = TestRoom::default();
    room.set(2, 0);
    let first = round_in(&g, &p, &next_id, &room);
    assert!(first.iter().all(|d| d.member.conn == 1), "{:?}", to(&first));
    assert_eq!(first.len(), 10);
    assert_eq!(g.room_blocked(), [member(2)]);
    // Now connection 1 stops reading and 2 drained.
    room.set(1, 0);
    room.set(2, u64::MAX);
    clock.advance(ACK_TIMEOUT);
    let moved = round_in(&g, &p, &next_id, &room);
    let expected: Vec<(u64, u64, u32)> = (0..10).map(|o| (2, o, 2)).collect();
    assert_eq!(to(&moved), expected);
    assert_eq!(g.room_blocked(), [member(1)]);
}

/// However large the windows and rooms, one round hands out at most
/// `ROUND_EVENT_BYTES_MAX` of events (overshooting by one event); the
/// rounds after it hand out the rest, in order, none twice.
#[test]
fn a_round_hands_out_at_most_round_event_bytes_max() {
    const EVENTS: u64 = 40;
    let clock = SimClock::new(0);
    let p = partition_with(&clock, EVENTS, 64 << 10);
    let next_id = Cell::new(0);
    let g = group(&clock);
    g.attach(member(1), 1000);
    let mut offsets = Vec::new();
    let mut rounds = 0;
    loop {
        let out = round_in(&g, &p, &next_id, &Unlimited);
        let Some(last) = out.last() else { break };
        let before_last = bytes(&out) - last.event.len();
        assert!(
            (before_last as u64) < ROUND_EVENT_BYTES_MAX,
            "round {rounds} went on after {before_last} bytes"
        );
        offsets.extend(out.iter().map(|d| d.offset));
        rounds += 1;
    }
    assert_eq!(offsets, (0..EVENTS).collect::<Vec<_>>());
    assert!(rounds >= 3, "{rounds} rounds for 2.5 MiB");
}
