//! A pipeline run hands a stage delivery to a member only while the
//! member's connection has room: a stage handler whose outbox is full gets
//! nothing built for it, and so burns no attempt, however many ack
//! timeouts pass; what it could not take goes to another member of the
//! stage, or to it once it drained, and every execution completes once.

use std::cell::Cell;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures::executor::LocalPool;
use hadron_engine::LogConfig;
use hadron_engine::storage::sim::{SimFaults, SimStorage};
use hadron_wire::Limits;

use super::super::{PipelineRun, StageOutgoing};
use crate::config::{PipelineSpec, RetrySpec, StageSpec, StartPoint};
use crate::shard::clock::sim::SimClock;
use crate::shard::deliver::MemberId;
use crate::shard::group::TestRoom;
use crate::shard::group::tests::partition_with;
use crate::shard::partition::Partition;

type SimRun = PipelineRun<SimStorage, SimClock>;

const ACK_TIMEOUT_MS: u64 = 1_000;
/// The backoff after a failed attempt.
const RETRY_DELAY_MS: u64 = 1;
const MAX_ATTEMPTS: u32 = 3;
/// Trigger events in the source.
const ROOTS: u64 = 20;
/// Data bytes of each root event.
const ROOT_DATA_BYTES: usize = 4096;
const EPOCH_MS: u64 = 1_700_000_000_000;
/// The connection of stage `a`'s member that stops reading.
const STUCK: u64 = 1;
/// The connection of stage `b`'s member.
const B_CONN: u64 = 2;
/// Another member of stage `a`.
const OTHER: u64 = 3;

/// `out` was pushed to its members' connections: `room` fills.
fn pushed(room: &TestRoom, out: &[StageOutgoing]) {
    for d in out {
        room.spend(d.member.conn, bytes(std::slice::from_ref(d)) as u64);
    }
}

fn member(conn: u64) -> MemberId {
    MemberId {
        shard: 0,
        conn,
        subscription: 1,
    }
}

/// A source partition holding [`ROOTS`] trigger events.
fn source(clock: &SimClock) -> Rc<Partition<SimStorage, SimClock>> {
    Rc::new(partition_with(clock, ROOTS, ROOT_DATA_BYTES))
}

/// Pipeline `name` on `source`: `a`, then `b` with `a`'s output; every
/// execution may run at once.
fn open_run(
    pool: &mut LocalPool,
    storage: &SimStorage,
    source: &Rc<Partition<SimStorage, SimClock>>,
    name: &str,
) -> SimRun {
    let plan = PipelineSpec {
        name: name.into(),
        source_stream: "s".into(),
        triggers: Vec::new(),
        start_point: StartPoint::Beginning,
        max_parallel: ROOTS as u32,
        retry: Some(RetrySpec {
            initial_delay_ms: Some(RETRY_DELAY_MS),
            max_delay_ms: Some(RETRY_DELAY_MS),
            max_attempts: Some(MAX_ATTEMPTS),
        }),
        ack_timeout_ms: Some(ACK_TIMEOUT_MS),
        stages: vec![StageSpec::new("a", &[]), StageSpec::new("b", &["a"])],
    }
    .plan(|_| true)
    .unwrap();
    let run = PipelineRun::open(
        storage,
        Path::new("/pipeline-room"),
        plan,
        source.clone(),
        LogConfig::default(),
        Limits::DEFAULT,
        None,
    );
    pool.run_until(run).unwrap()
}

/// Rounds of `run` with `room` until one hands nothing out, each
/// pushing what it handed out (`room` fills).
fn rounds(
    pool: &mut LocalPool,
    run: &SimRun,
    ids: &Cell<u64>,
    room: &TestRoom,
) -> Vec<StageOutgoing> {
    let mint = || {
        ids.set(ids.get() + 1);
        ids.get()
    };
    let mut all = Vec::new();
    loop {
        let out = pool.run_until(run.round(&mint, room)).unwrap();
        if out.is_empty() {
            return all;
        }
        pushed(room, &out);
        all.extend(out);
    }
}

/// Bytes a delivery carries: its root event and its inputs.
fn bytes(out: &[StageOutgoing]) -> usize {
    out.iter()
        .map(|d| d.root_event.len() + d.inputs.iter().map(|(_, e)| e.len()).sum::<usize>())
        .sum()
}

/// (conn, stage, root, attempt) of each delivery.
fn to(out: &[StageOutgoing]) -> Vec<(u64, u8, u64, u32)> {
    out.iter()
        .map(|d| (d.member.conn, d.stage, d.root, d.attempt))
        .collect()
}

/// Stage `a`'s output for `root`.
fn output_a(root: u64) -> Vec<u8> {
    hadron_wire::encode_event(&hadron_wire::EventRef {
        id: &format!("a-{root}"),
        source: "handler",
        ty: "a.done",
        data: root.to_string().as_bytes(),
        ..hadron_wire::EventRef::default()
    })
}

/// Acks each of `out` on its member's connection, with stage `a`'s output
/// for its root: every ack taken.
fn ack_all(pool: &mut LocalPool, run: &SimRun, out: &[StageOutgoing]) {
    for d in out {
        let acks = [(d.delivery_id, Bytes::from(output_a(d.root)))];
        let refused = pool.run_until(run.ack_many(&acks, (0, d.member.conn)));
        assert!(
            refused.is_empty(),
            "{:?}: {refused:?}",
            to(std::slice::from_ref(d))
        );
    }
}

/// A stage handler with a window of 100 whose connection stops reading:
/// the round that fills its outbox builds deliveries as far as the room
/// (the last one overshooting by one root event), and across three ack
/// timeouts nothing more is built for it and no execution fails, while a
/// run that ignores the room (the behaviour before) builds every ready
/// stage again at every timeout and fails every execution once its
/// attempts ran out. Once the connection drained, every stage goes out,
/// each execution completes once, and `b` gets `a`'s output of its root.
#[test]
fn a_stage_member_whose_connection_is_full_gets_nothing_built_across_ack_timeouts() {
    let mut pool = LocalPool::new();
    let clock = SimClock::new(EPOCH_MS);
    let storage = SimStorage::new(1, SimFaults::default());
    let p = source(&clock);
    let root_bytes = pool.run_until(p.event_at(0)).unwrap().len();
    let (stuck, unchecked) = (
        open_run(&mut pool, &storage, &p, "stuck"),
        open_run(&mut pool, &storage, &p, "unchecked"),
    );
    for run in [&stuck, &unchecked] {
        run.attach(member(STUCK), 0, 100);
        run.attach(member(B_CONN), 1, 100);
    }
    let ids = Cell::new(0);
    // The room of a run that ignores it (the behaviour before).
    let unlimited = TestRoom::default();
    let room = TestRoom::default();
    room.set(STUCK, 2 * root_bytes as u64 + 1);
    let first = rounds(&mut pool, &stuck, &ids, &room);
    assert_eq!(
        to(&first),
        [(STUCK, 0, 0, 1), (STUCK, 0, 1, 1), (STUCK, 0, 2, 1)]
    );
    assert_eq!(stuck.room_blocked(), [member(STUCK)]);
    let all = rounds(&mut pool, &unchecked, &ids, &unlimited);
    assert_eq!(all.len() as u64, ROOTS);
    // The connection does not read: its outbox stays full.
    room.set(STUCK, 0);
    let (mut built_stuck, mut built_unchecked) = (0, 0);
    for timeout in 1..=MAX_ATTEMPTS {
        clock.advance(Duration::from_millis(ACK_TIMEOUT_MS));
        built_stuck += bytes(&rounds(&mut pool, &stuck, &ids, &room));
        built_unchecked += bytes(&rounds(&mut pool, &unchecked, &ids, &unlimited));
        // The backoff ends: the held stages are ready again.
        clock.advance(Duration::from_millis(RETRY_DELAY_MS));
        built_stuck += bytes(&rounds(&mut pool, &stuck, &ids, &room));
        let again = rounds(&mut pool, &unchecked, &ids, &unlimited);
        if timeout < MAX_ATTEMPTS {
            assert_eq!(again.len() as u64, ROOTS, "timeout {timeout}");
            assert!(again.iter().all(|d| d.attempt == timeout + 1));
        }
        built_unchecked += bytes(&again);
        assert_eq!(stuck.status().stages[0].in_flight, 0, "timeout {timeout}");
    }
    assert_eq!(built_stuck, 0, "nothing built for a full connection");
    assert_eq!(
        built_unchecked,
        (MAX_ATTEMPTS as usize - 1) * ROOTS as usize * root_bytes
    );
    assert_eq!(
        unchecked.status().failed,
        ROOTS as usize,
        "attempts ran out"
    );
    let held = stuck.status();
    assert_eq!(held.failed, 0);
    assert_eq!(held.stages[0].errors, 3, "only the three built timed out");
    assert_eq!(held.stages[0].waiting, ROOTS);
    assert_eq!(stuck.room_blocked(), [member(STUCK)]);
    // It drained.
    room.set(STUCK, u64::MAX);
    let out = rounds(&mut pool, &stuck, &ids, &room);
    let mut expected = vec![(STUCK, 0, 0, 2), (STUCK, 0, 1, 2), (STUCK, 0, 2, 2)];
    expected.extend((3..ROOTS).map(|root| (STUCK, 0, root, 1)));
    assert_eq!(to(&out), expected, "every stage, the held-back ones again");
    assert!(stuck.room_blocked().is_empty());
    ack_all(&mut pool, &stuck, &out);
    let b = rounds(&mut pool, &stuck, &ids, &room);
    let expected: Vec<_> = (0..ROOTS).map(|root| (B_CONN, 1, root, 1)).collect();
    assert_eq!(to(&b), expected);
    for d in &b {
        let inputs: Vec<(u8, &[u8])> = d.inputs.iter().map(|(s, e)| (*s, e.as_slice())).collect();
        assert_eq!(
            inputs,
            [(0, output_a(d.root).as_slice())],
            "root {}",
            d.root
        );
    }
    ack_all(&mut pool, &stuck, &b);
    let done = stuck.status();
    assert_eq!((done.completed, done.failed, done.active), (ROOTS, 0, 0));
    assert_eq!(
        (done.stages[0].completed, done.stages[1].completed),
        (ROOTS, ROOTS)
    );
    assert!(
        rounds(&mut pool, &stuck, &ids, &room).is_empty(),
        "nothing runs again"
    );
}

/// Stages a member's full connection cannot take go to another member of
/// the stage whose connection has room: new ones at once, the held-back
/// ones after their ack timeout; the blocked member gets none.
#[test]
fn held_back_stages_go_to_a_member_of_the_stage_whose_connection_has_room() {
    let mut pool = LocalPool::new();
    let clock = SimClock::new(EPOCH_MS);
    let storage = SimStorage::new(1, SimFaults::default());
    let p = source(&clock);
    let run = open_run(&mut pool, &storage, &p, "moved");
    run.attach(member(STUCK), 0, 100);
    run.attach(member(OTHER), 0, 100);
    let ids = Cell::new(0);
    let room = TestRoom::default();
    room.set(OTHER, 0);
    let first = rounds(&mut pool, &run, &ids, &room);
    assert_eq!(first.len() as u64, ROOTS);
    assert!(
        first.iter().all(|d| d.member.conn == STUCK),
        "{:?}",
        to(&first)
    );
    assert_eq!(run.room_blocked(), [member(OTHER)]);
    // Now the first stops reading and the other drained.
    room.set(STUCK, 0);
    room.set(OTHER, u64::MAX);
    clock.advance(Duration::from_millis(ACK_TIMEOUT_MS + RETRY_DELAY_MS));
    let mut moved = rounds(&mut pool, &run, &ids, &room);
    clock.advance(Duration::from_millis(RETRY_DELAY_MS));
    moved.extend(rounds(&mut pool, &run, &ids, &room));
    let expected: Vec<_> = (0..ROOTS).map(|root| (OTHER, 0, root, 2)).collect();
    assert_eq!(to(&moved), expected);
    assert_eq!(run.room_blocked(), [member(STUCK)]);
}
