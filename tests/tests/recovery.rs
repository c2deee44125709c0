//! Restarts: a durable group resumes after what it acknowledged before a
//! clean stop, every event acknowledged to a publisher survives a SIGKILL
//! at its offset, with dense offsets, and data and group offsets survive a
//! change of the shard count.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed request must fail the test at once"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hadron::{ClientOptions, NewEvent, SubscribeOptions};
use hadron_tests::{
    Frame, RawConn, Server, eventually, fetch_all, group_status, record_group, status,
    until_group_settled,
};

/// A durable group acknowledges part of the stream, the server stops with
/// SIGTERM and restarts on the same data; the group resumes right after
/// what it acknowledged: nothing acknowledged comes again, nothing else is
/// skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_group_resumes_after_its_acknowledged_offset_across_a_restart() {
    let mut server = Server::start();
    let client = server.client();
    let publisher = client.publisher("resume").await.unwrap();
    const EVENTS: usize = 20;
    let mut all = BTreeSet::new();
    for i in 0..EVENTS {
        let p = publisher
            .publish(NewEvent::new("t", vec![i as u8]).with_id(format!("r-{i}")))
            .await
            .unwrap();
        all.insert((p.partition, p.offset));
    }

    // A raw member acks the first ACKED deliveries and waits for each
    // AckOk, so exactly those are known to be acknowledged. One in flight
    // per partition keeps each partition's acks a prefix.
    const ACKED: usize = 9;
    let mut member = RawConn::handshaken(server.port()).await;
    member.subscribe("events", "durable-g", true, 1).await;
    let mut acked = BTreeSet::new();
    let mut pushed = Vec::new();
    while acked.len() < ACKED {
        let d = match pushed.pop() {
            Some(d) => d,
            None => member
                .next_delivery(Duration::from_secs(10))
                .await
                .expect("a delivery"),
        };
        let reply = member.ack(&[d.delivery_id], &mut pushed).await;
        assert!(matches!(reply, Frame::AckOk { .. }), "{reply:?}");
        assert!(
            acked.insert((d.partition, d.offset)),
            "delivered twice: {d:?}"
        );
    }
    let mut per_partition: BTreeMap<u32, u64> = BTreeMap::new();
    for (p, o) in &acked {
        let n = per_partition.entry(*p).or_default();
        assert_eq!(*o, *n, "acks of partition {p} form a prefix");
        *n += 1;
    }
    // Every AckOk came back, so the group's committed offsets are exactly
    // the acknowledged prefixes: wait until status shows them (they are
    // persisted every 200 ms, and by the SIGTERM below in any case). A
    // committed offset beyond a prefix never matches and fails the wait.
    let want: BTreeMap<u32, u64> = (0..4u32)
        .map(|p| (p, per_partition.get(&p).copied().unwrap_or(0)))
        .collect();
    let what = format!("the acked prefixes {want:?} committed");
    eventually(Duration::from_secs(10), &what, || {
        let client = client.clone();
        let want = want.clone();
        async move {
            let st = status(&client).await;
            want.iter()
                .all(|(&p, &o)| {
                    group_status(&st, "events", p, "durable-g")
                        .is_some_and(|g| g["committed"].as_u64() == Some(o))
                })
                .then_some(())
        }
    })
    .await;
    member.close().await;
    drop(client);

    let exit = server.stop();
    assert!(exit.success(), "SIGTERM exit: {exit:?}\n{}", server.log());
    server.restart();

    let client = server.client();
    let (subscription, received) =
        record_group(&client, "events", "durable-g", SubscribeOptions::default()).await;
    let rest = EVENTS - ACKED;
    eventually(Duration::from_secs(10), "the rest delivered", || {
        let n = received.lock().unwrap().len();
        async move { (n >= rest).then_some(()) }
    })
    .await;
    // Nothing more arrives: with every partition committed to its end and
    // nothing in flight, every delivery since the restart was recorded.
    until_group_settled(&client, "events", "durable-g", Duration::from_secs(10)).await;
    subscription.stop().await.unwrap();
    let got = received.lock().unwrap().clone();
    let got_keys: BTreeSet<(u32, u64)> = got.iter().map(|(p, o, _)| (*p, *o)).collect();
    assert_eq!(
        got_keys.len(),
        got.len(),
        "delivered twice after restart: {got:?}"
    );
    let redelivered: Vec<_> = got_keys.intersection(&acked).collect();
    assert!(
        redelivered.is_empty(),
        "acknowledged before the stop, delivered again: {redelivered:?}"
    );
    let want: BTreeSet<(u32, u64)> = all.difference(&acked).copied().collect();
    assert_eq!(got_keys, want, "exactly the unacknowledged events");
}

/// Publishers run in several tasks; the server is SIGKILLed mid-run and
/// restarted. Every publish that was acknowledged is at its offset with its
/// id, and every partition holds dense offsets from 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_sigkill() {
    let mut server = Server::start();
    let options = ClientOptions {
        publish_attempts_max: 1,
        request_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
        ..ClientOptions::default()
    };
    let client = server.client_with(options);
    let acked: Arc<Mutex<Vec<(u32, u64, String)>>> = Arc::default();
    const TASKS: usize = 4;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let publisher = client.publisher(&format!("writer-{t}")).await.unwrap();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..100_000u64 {
                let id = format!("w{t}-{i}");
                let event = NewEvent::new("load", id.clone().into_bytes()).with_id(&id);
                match publisher.publish(event).await {
                    Ok(p) => {
                        assert!(!p.duplicate, "{id} is new");
                        acked.lock().unwrap().push((p.partition, p.offset, id));
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    // Let them write for a while, then kill the server mid-run.
    eventually(
        Duration::from_secs(20),
        "some acknowledged publishes",
        || {
            let n = acked.lock().unwrap().len();
            async move { (n >= 200).then_some(()) }
        },
    )
    .await;
    server.kill_now();
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(15), task)
            .await
            .expect("a publisher task did not stop after the kill")
            .unwrap();
    }
    let acked = acked.lock().unwrap().clone();

    server.restart();
    let client = server.client();
    let mut stored: BTreeMap<(u32, u64), String> = BTreeMap::new();
    let mut ids = BTreeSet::new();
    for partition in 0..4u32 {
        let records = fetch_all(&client, "events", partition).await;
        for (i, (offset, event)) in records.iter().enumerate() {
            assert_eq!(
                *offset, i as u64,
                "partition {partition}: offsets dense and in order"
            );
            assert_eq!(event.data, event.id.as_bytes(), "event bytes intact");
            assert!(ids.insert(event.id.clone()), "{} stored twice", event.id);
            stored.insert((partition, *offset), event.id.clone());
        }
    }
    for (partition, offset, id) in &acked {
        assert_eq!(
            stored.get(&(*partition, *offset)),
            Some(id),
            "acknowledged {id} at {partition}/{offset} is missing after the kill"
        );
    }
    assert!(stored.len() >= acked.len());
    // Publishing an acknowledged event again (what a retrying publisher
    // does) finds it: the dedup index survived the kill too. The last
    // acknowledged events of each writer are the ones nearest the kill.
    for t in 0..TASKS {
        let publisher = client.publisher(&format!("writer-{t}")).await.unwrap();
        let prefix = format!("w{t}-");
        let last = acked
            .iter()
            .rev()
            .filter(|(_, _, id)| id.starts_with(&prefix));
        for (partition, offset, id) in last.take(3) {
            let again = publisher
                .publish_to(
                    *partition,
                    NewEvent::new("load", b"retry".to_vec()).with_id(id),
                )
                .await
                .unwrap();
            assert_eq!(
                (again.partition, again.offset, again.duplicate),
                (*partition, *offset, true),
                "republishing {id}"
            );
        }
    }
    // The log takes new writes after recovery.
    let p = client
        .publisher("after")
        .await
        .unwrap()
        .publish_to(0, NewEvent::new("t", b"x".to_vec()))
        .await
        .unwrap();
    let in_0 = stored.keys().filter(|(p, _)| *p == 0).count() as u64;
    assert_eq!(p.offset, in_0, "the next offset follows the recovered log");
}

/// Placement maps partitions onto whatever shards exist: events written
/// with one shard are all readable, at the same offsets, after a restart
/// with two shards (and back to one), and a durable group's offsets move
/// with their partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_and_group_offsets_survive_a_change_of_the_shard_count() {
    let mut server = Server::start();
    let client = server.client();
    let publisher = client.publisher("reshard").await.unwrap();
    let mut written = BTreeMap::new();
    for i in 0..12u32 {
        let id = format!("s-{i}");
        let p = publisher
            .publish_to(
                i % 4,
                NewEvent::new("t", id.clone().into_bytes()).with_id(&id),
            )
            .await
            .unwrap();
        written.insert((p.partition, p.offset), id);
    }
    let consumed = consume_all(&client, written.len()).await;
    assert_eq!(consumed, written.values().cloned().collect::<BTreeSet<_>>());
    drop((publisher, client));

    for shards in [2, 1] {
        let exit = server.stop();
        assert!(exit.success(), "{exit:?}\n{}", server.log());
        server.restart_with_shards(shards);
        let client = server.client();
        assert_eq!(client.server_info().await.unwrap().shards, shards);
        let mut read = BTreeMap::new();
        for partition in 0..4u32 {
            for (offset, event) in fetch_all(&client, "events", partition).await {
                read.insert((partition, offset), event.id);
            }
        }
        assert_eq!(read, written, "after a restart with {shards} shards");
        // Writes go on at the next offset of each partition.
        let id = format!("more-{shards}");
        let p = client
            .publisher("reshard")
            .await
            .unwrap()
            .publish_to(3, NewEvent::new("t", b"more".to_vec()).with_id(&id))
            .await
            .unwrap();
        let in_3 = written.keys().filter(|(p, _)| *p == 3).count() as u64;
        assert_eq!((p.offset, p.duplicate), (in_3, false));
        written.insert((3, p.offset), id.clone());
        // The group resumes where it was: only the new event.
        let consumed = consume_all(&client, 1).await;
        assert_eq!(consumed, BTreeSet::from([id]), "with {shards} shards");
    }
}

/// Runs durable group `g` until `count` events arrived and every partition's
/// offset is committed to its end, then stops it; returns the ids received
/// (more than `count` arriving fails).
async fn consume_all(client: &hadron::Client, count: usize) -> BTreeSet<String> {
    let (subscription, received) =
        record_group(client, "events", "g", SubscribeOptions::default()).await;
    eventually(Duration::from_secs(10), "the events delivered", || {
        let n = received.lock().unwrap().len();
        async move { (n >= count).then_some(()) }
    })
    .await;
    let ends = hadron_tests::next_offsets(&status(client).await, "events");
    eventually(Duration::from_secs(5), "the group committed", || {
        let (client, ends) = (client.clone(), ends.clone());
        async move {
            let st = status(&client).await;
            ends.iter()
                .all(|(&p, &end)| {
                    group_status(&st, "events", p, "g").is_some_and(|g| g["committed"] == end)
                })
                .then_some(())
        }
    })
    .await;
    subscription.stop().await.unwrap();
    let ids: Vec<String> = received
        .lock()
        .unwrap()
        .iter()
        .map(|(_, _, id)| id.clone())
        .collect();
    assert_eq!(ids.len(), count, "delivered: {ids:?}");
    ids.into_iter().collect()
}
