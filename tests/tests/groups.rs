//! Consumer groups with more than one member: events are shared between
//! members and settled once; a nack is redelivered after a backoff and
//! shows in status; a delivery nobody acks in time, or whose member
//! disconnects, goes to another member.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed subscription must fail the test at once"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use hadron::{Client, Delivery, NewEvent, StartPoint, SubscribeOptions, Subscription};
use hadron_tests::{
    Frame, RawConn, RawDelivery, Server, ServerOptions, create_stream, eventually, group_status,
    status, until_group_settled,
};
use tokio::sync::mpsc;

/// A server with two shards: members connect through the main port and
/// land on either shard, so deliveries, acks and nacks also cross shards.
fn two_shard_server(ack_timeout_ms: Option<u64>) -> Server {
    Server::start_with(ServerOptions {
        shards: 2,
        ack_timeout_ms,
        ..ServerOptions::default()
    })
}

/// What a client member saw: one entry per handler call.
#[derive(Debug, Clone)]
struct Seen {
    member: usize,
    partition: u32,
    offset: u64,
    attempt: u32,
    id: String,
    at: Instant,
}

/// Subscribes a client member of `group` that reports every delivery on
/// `tx` and acks it, except those `fail` says to nack.
async fn member(
    client: &Client,
    stream: &str,
    group: &str,
    index: usize,
    tx: mpsc::UnboundedSender<Seen>,
    fail: fn(&Delivery) -> bool,
) -> Subscription {
    member_with_room(client, stream, group, index, tx, fail, 8).await
}

/// [`member`] with room for `max_in_flight` unacknowledged deliveries.
async fn member_with_room(
    client: &Client,
    stream: &str,
    group: &str,
    index: usize,
    tx: mpsc::UnboundedSender<Seen>,
    fail: fn(&Delivery) -> bool,
    max_in_flight: u32,
) -> Subscription {
    client
        .subscribe(
            stream,
            group,
            SubscribeOptions {
                durable: false,
                start: StartPoint::Beginning,
                max_in_flight,
            },
            move |d: Delivery| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(Seen {
                        member: index,
                        partition: d.partition,
                        offset: d.offset,
                        attempt: d.attempt,
                        id: d.event.id.clone(),
                        at: Instant::now(),
                    });
                    if fail(&d) {
                        Err(format!("handler failed on {}", d.event.id))
                    } else {
                        Ok(())
                    }
                }
            },
        )
        .await
        .unwrap()
}

/// Receives from `rx` until `done` holds for everything received, for at
/// most `timeout`.
async fn collect_until(
    rx: &mut mpsc::UnboundedReceiver<Seen>,
    timeout: Duration,
    done: impl Fn(&[Seen]) -> bool,
) -> Vec<Seen> {
    let mut all = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while !done(&all) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(seen)) => all.push(seen),
            Ok(None) => panic!("the members stopped; got {all:?}"),
            Err(_) => panic!("timed out after {timeout:?}; got {all:?}"),
        }
    }
    all
}

/// Two members share a group: every event is delivered, each to one member
/// only, both members get some, and the group's committed offsets reach
/// the end of every partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_share_the_events_and_settle_each_once() {
    let server = two_shard_server(None);
    let (c1, c2) = (server.client(), server.client());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let m0 = member(&c1, "events", "workers", 0, tx.clone(), |_| false).await;
    let m1 = member(&c2, "events", "workers", 1, tx, |_| false).await;

    const EVENTS: usize = 40;
    let publisher = c1.publisher("shared").await.unwrap();
    let mut published = BTreeMap::new();
    for i in 0..EVENTS {
        let id = format!("job-{i}");
        let p = publisher
            .publish(NewEvent::new("job", id.clone().into_bytes()).with_id(&id))
            .await
            .unwrap();
        published.insert((p.partition, p.offset), id);
    }
    let seen = collect_until(&mut rx, Duration::from_secs(10), |all| all.len() >= EVENTS).await;
    // Anything more would be a second delivery. Once the group has
    // committed every partition to its end with nothing in flight, every
    // delivery the server made was reported (members report before they
    // ack), so what the channel holds then is all there will be.
    until_group_settled(&c1, "events", "workers", Duration::from_secs(10)).await;
    let mut seen = seen;
    while let Ok(more) = rx.try_recv() {
        seen.push(more);
    }
    let mut got = BTreeMap::new();
    let mut per_member = [0usize; 2];
    for s in &seen {
        assert_eq!(s.attempt, 1, "no redelivery expected: {s:?}");
        assert!(
            got.insert((s.partition, s.offset), s.id.clone()).is_none(),
            "{}/{} delivered twice",
            s.partition,
            s.offset
        );
        per_member[s.member] += 1;
    }
    assert_eq!(got, published, "every event delivered, once");
    assert!(
        per_member.iter().all(|&n| n > 0),
        "both members got events: {per_member:?}"
    );

    let next = hadron_tests::next_offsets(&status(&c1).await, "events");
    eventually(Duration::from_secs(5), "every event settled", || {
        let c1 = c1.clone();
        let next = next.clone();
        async move {
            let st = status(&c1).await;
            next.iter()
                .all(|(&p, &n)| {
                    group_status(&st, "events", p, "workers").is_some_and(|g| {
                        g["committed"] == n
                            && g["lag"] == 0
                            && g["in_flight"] == 0
                            && g["members"] == 2
                            && g["nacks"] == 0
                    })
                })
                .then_some(())
        }
    })
    .await;
    m0.stop().await.unwrap();
    m1.stop().await.unwrap();
}

/// A nacked delivery comes back with attempt 2 after the backoff (100 ms
/// for a first nack), and the group's status counts the nack and shows its
/// message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nacked_event_is_redelivered_after_a_backoff_and_shows_in_status() {
    let server = two_shard_server(None);
    let client = server.client();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let m0 = member(&client, "events", "flaky", 0, tx.clone(), |d| {
        d.event.id == "poison" && d.attempt == 1
    })
    .await;
    let m1 = member(&server.client(), "events", "flaky", 1, tx, |d| {
        d.event.id == "poison" && d.attempt == 1
    })
    .await;

    let publisher = client.publisher("nack").await.unwrap();
    let mut ids = BTreeSet::new();
    let mut poison_at = None;
    for i in 0..6 {
        let id = if i == 3 {
            "poison".to_owned()
        } else {
            format!("ok-{i}")
        };
        let p = publisher
            .publish(NewEvent::new("t", b"x".to_vec()).with_id(&id))
            .await
            .unwrap();
        if id == "poison" {
            poison_at = Some((p.partition, p.offset));
        }
        ids.insert(id);
    }
    let (partition, offset) = poison_at.unwrap();
    let seen = collect_until(&mut rx, Duration::from_secs(10), |all| {
        all.iter().any(|s| s.id == "poison" && s.attempt == 2)
            && ids.iter().all(|id| all.iter().any(|s| &s.id == id))
    })
    .await;
    let poison: Vec<&Seen> = seen.iter().filter(|s| s.id == "poison").collect();
    assert_eq!(poison.len(), 2, "{poison:?}");
    assert_eq!((poison[0].attempt, poison[1].attempt), (1, 2));
    assert!(
        poison
            .iter()
            .all(|s| (s.partition, s.offset) == (partition, offset))
    );
    let gap = poison[1].at - poison[0].at;
    assert!(
        gap >= Duration::from_millis(90),
        "redelivered {gap:?} after the nack, before the 100 ms backoff"
    );
    for s in seen.iter().filter(|s| s.id != "poison") {
        assert_eq!(s.attempt, 1, "{s:?}");
    }

    let g = eventually(Duration::from_secs(5), "the nack in status", || {
        let client = client.clone();
        async move {
            let st = status(&client).await;
            group_status(&st, "events", partition, "flaky")
                .filter(|g| g["committed"].as_u64().is_some_and(|c| c > offset))
        }
    })
    .await;
    assert_eq!(g["nacks"], 1, "{g}");
    assert_eq!(g["last_error"], "handler failed on poison", "{g}");
    assert_eq!(g["in_flight"], 0, "{g}");
    m0.stop().await.unwrap();
    m1.stop().await.unwrap();
}

/// With a 500 ms ack timeout, a delivery the first member never acks goes
/// to the second member as attempt 2; a late ack of the expired delivery is
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacked_delivery_goes_to_another_member_after_the_ack_timeout() {
    let server = two_shard_server(Some(500));
    let client = server.client();
    create_stream(&client, "single", 1).await;

    // The raw member attaches first, so it gets the first delivery.
    let mut silent = RawConn::handshaken(server.port()).await;
    silent.subscribe("single", "timeouts", false, 1).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let helper = member(&client, "single", "timeouts", 1, tx, |_| false).await;

    let p = client
        .publisher("slow")
        .await
        .unwrap()
        .stream("single")
        .publish(NewEvent::new("t", b"x".to_vec()).with_id("stuck"))
        .await
        .unwrap();
    let first: RawDelivery = silent
        .next_delivery(Duration::from_secs(5))
        .await
        .expect("the silent member gets the first delivery");
    let first_at = Instant::now();
    assert_eq!(
        (first.partition, first.offset, first.attempt),
        (0, p.offset, 1)
    );
    assert_eq!(first.event.id, "stuck");

    let seen = collect_until(&mut rx, Duration::from_secs(5), |all| !all.is_empty()).await;
    let second = &seen[0];
    assert_eq!(
        (
            second.partition,
            second.offset,
            second.attempt,
            second.id.as_str()
        ),
        (0, p.offset, 2, "stuck"),
        "redelivered to the other member"
    );
    let waited = second.at - first_at;
    assert!(
        waited >= Duration::from_millis(450),
        "redelivered after {waited:?}, before the 500 ms ack timeout"
    );
    // The silent member gets nothing more, and its late ack is refused.
    let mut pushed = Vec::new();
    let reply = silent.ack(&[first.delivery_id], &mut pushed).await;
    assert!(
        matches!(
            reply,
            Frame::Error {
                code: hadron::ErrorCode::UnknownDelivery,
                ..
            }
        ),
        "a late ack of an expired delivery: {reply:?}"
    );
    assert!(pushed.is_empty(), "{pushed:?}");

    // Nothing more comes to either member: the helper's ack settled the
    // event, and no deadline of it fires later. The barrier is a later ack
    // timeout: with the helper gone (its stop sends the answers of the
    // handlers that ran), a marker goes to the silent member, which holds
    // it until the server takes it back at its deadline, later than every
    // deadline of the event. A round expires deadlines before it hands out
    // retries, in offset order, so a redelivery of the event would reach
    // the silent member before the marker's second attempt.
    helper.stop().await.unwrap();
    eventually(Duration::from_secs(5), "the helper left", || {
        let client = client.clone();
        async move {
            let st = status(&client).await;
            group_status(&st, "single", 0, "timeouts").filter(|g| g["members"] == 1)
        }
    })
    .await;
    let marker = client
        .publisher("slow")
        .await
        .unwrap()
        .stream("single")
        .publish(NewEvent::new("t", b"m".to_vec()).with_id("marker"))
        .await
        .unwrap();
    hadron_tests::expect_marker_held_past_its_deadline(
        &mut silent,
        marker.offset,
        "only the marker, held past its ack timeout, comes to the silent member",
    )
    .await;
    let g = group_status(&status(&client).await, "single", 0, "timeouts").unwrap();
    assert_eq!(
        g["committed"],
        p.offset + 1,
        "the event was acked once: {g}"
    );
    assert_eq!(g["in_flight"], 1, "only the marker is in flight: {g}");
    let more: Vec<Seen> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
    assert!(more.is_empty(), "acked once, delivered once more: {more:?}");
}

/// A member that disconnects while holding a delivery: the event goes to
/// the other member at once (well before the 30 s ack timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_of_a_disconnected_member_goes_to_another_member() {
    let server = two_shard_server(None);
    let client = server.client();
    create_stream(&client, "single", 1).await;

    let mut leaving = RawConn::handshaken(server.port()).await;
    leaving.subscribe("single", "handover", true, 1).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    // Room for one delivery at a time: see the barrier below.
    let stayer = member_with_room(&client, "single", "handover", 1, tx, |_| false, 1).await;

    let p = client
        .publisher("handover")
        .await
        .unwrap()
        .stream("single")
        .publish(NewEvent::new("t", b"x".to_vec()).with_id("orphan"))
        .await
        .unwrap();
    let held = leaving
        .next_delivery(Duration::from_secs(5))
        .await
        .expect("the first member gets the delivery");
    assert_eq!((held.offset, held.attempt), (p.offset, 1));
    // Not redelivered while held. The barrier is two markers, each
    // published once the stayer (room for one) reported the one before: a
    // round hands out due retries before new events, so had the server
    // taken the held event back (when the stayer joined, or while handing
    // out the first marker) it would have gone to the stayer before the
    // second marker.
    let markers = client.publisher("handover").await.unwrap().stream("single");
    for (n, id) in ["marker-1", "marker-2"].into_iter().enumerate() {
        let marker = markers
            .publish(NewEvent::new("t", b"m".to_vec()).with_id(id))
            .await
            .unwrap();
        let seen = collect_until(&mut rx, Duration::from_secs(5), |all| !all.is_empty()).await;
        assert_eq!(
            (seen[0].offset, seen[0].attempt, seen[0].id.as_str()),
            (p.offset + 1 + n as u64, 1, id),
            "not redelivered while held: {seen:?}"
        );
        assert_eq!(marker.offset, p.offset + 1 + n as u64);
    }
    let closed_at = Instant::now();
    leaving.close().await;

    let seen = collect_until(&mut rx, Duration::from_secs(5), |all| !all.is_empty()).await;
    assert_eq!(
        (seen[0].offset, seen[0].attempt, seen[0].id.as_str()),
        (p.offset, 2, "orphan")
    );
    assert!(seen[0].at - closed_at < Duration::from_secs(5));
    let g = eventually(Duration::from_secs(5), "the handover settled", || {
        let client = client.clone();
        async move {
            let st = status(&client).await;
            group_status(&st, "single", 0, "handover").filter(|g| g["committed"] == p.offset + 3)
        }
    })
    .await;
    assert_eq!(g["members"], 1, "{g}");
    assert_eq!(g["in_flight"], 0, "{g}");
    stayer.stop().await.unwrap();
}

/// An `Ack` of several deliveries settles each on its own: unknown ids
/// (one naming no shard, one stale) are named in the `UnknownDelivery`
/// answer, and the known ones are acked all the same, so they are not
/// redelivered after the ack timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_with_unknown_ids_still_acks_the_others() {
    let server = two_shard_server(Some(500));
    let client = server.client();
    create_stream(&client, "single", 1).await;
    let mut raw = RawConn::handshaken(server.port()).await;
    raw.subscribe("single", "batch-ack", false, 2).await;
    let publisher = client.publisher("acks").await.unwrap().stream("single");
    for id in ["a", "b"] {
        publisher
            .publish(NewEvent::new("t", b"x".to_vec()).with_id(id))
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(
            raw.next_delivery(Duration::from_secs(5))
                .await
                .expect("both events are delivered"),
        );
    }
    let ids: Vec<&str> = got.iter().map(|d| d.event.id.as_str()).collect();
    assert_eq!(ids, ["a", "b"]);
    let no_shard = u64::MAX;
    let stale = got[0].delivery_id + 1_000;
    let mut pushed = Vec::new();
    let reply = raw
        .ack(
            &[no_shard, got[0].delivery_id, stale, got[1].delivery_id],
            &mut pushed,
        )
        .await;
    match &reply {
        Frame::Error { code, message, .. } => {
            assert_eq!(*code, hadron::ErrorCode::UnknownDelivery);
            assert!(
                message.contains(&no_shard.to_string()) && message.contains(&stale.to_string()),
                "{message}"
            );
            assert!(
                !message.contains(&got[0].delivery_id.to_string()),
                "{message}"
            );
        }
        other => panic!("expected UnknownDelivery, got {other:?}"),
    }
    assert!(pushed.is_empty(), "{pushed:?}");
    // Past the 500 ms ack timeout nothing comes back: both were acked. The
    // barrier is a later ack timeout: a marker handed out after them, held
    // until the server takes it back at its deadline. A round expires
    // deadlines before it hands out retries, in offset order, and the
    // member had room, so a redelivery of `a` or `b` would arrive before
    // the marker's second attempt.
    let marker = publisher
        .publish(NewEvent::new("t", b"m".to_vec()).with_id("marker"))
        .await
        .unwrap();
    hadron_tests::expect_marker_held_past_its_deadline(
        &mut raw,
        marker.offset,
        "an acked delivery was redelivered",
    )
    .await;
    // And acking them again is refused: they are settled.
    let again = raw.ack(&[got[1].delivery_id], &mut pushed).await;
    assert!(
        matches!(
            again,
            Frame::Error {
                code: hadron::ErrorCode::UnknownDelivery,
                ..
            }
        ),
        "{again:?}"
    );
}
