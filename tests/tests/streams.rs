//! Publishing and reading back through the client: dense offsets per
//! partition, group delivery of exactly what was published, idempotent
//! publishing by `(source, id)`, and the same results through the main port
//! (forwarded between shards) and through shard ports.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hadron::{ClientOptions, Delivery, NewEvent, StartPoint, SubscribeOptions};
use hadron_tests::{
    Frame, RawConn, Server, ServerOptions, event_bytes, eventually, fetch_all, group_status,
    next_offsets, record_group, status, stream_partitions, until_group_settled,
};
use hadron_wire::Message;

/// Events published with distinct ids and subjects are stored at dense
/// offsets from 0 in every partition, and a group starting at the beginning
/// receives each of them once, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_events_come_back_once_each_through_a_group() {
    let server = Server::start();
    let client = server.client();
    let publisher = client.publisher("e2e-app").await.unwrap();

    const EVENTS: usize = 24;
    let mut sent = BTreeMap::new(); // (partition, offset) -> event
    let mut by_partition: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for i in 0..EVENTS {
        let event = NewEvent {
            id: format!("evt-{i}"),
            ty: format!("order.created.v{}", i % 3),
            subject: Some(format!("order-{i}")),
            data: vec![i as u8, 0xff, 0x00, b'x'], // not UTF-8 on purpose
            ..NewEvent::default()
        };
        let published = publisher.publish(event.clone()).await.unwrap();
        assert!(!published.duplicate);
        by_partition
            .entry(published.partition)
            .or_default()
            .push(published.offset);
        assert!(
            sent.insert((published.partition, published.offset), event)
                .is_none(),
            "two events at {}/{}",
            published.partition,
            published.offset
        );
    }
    assert!(
        by_partition.len() > 1,
        "24 subjects all hashed to one partition: {by_partition:?}"
    );
    for (partition, offsets) in &by_partition {
        let dense: Vec<u64> = (0..offsets.len() as u64).collect();
        assert_eq!(
            offsets, &dense,
            "partition {partition}: offsets in publish order"
        );
    }
    let next = next_offsets(&status(&client).await, "events");
    for partition in 0..4 {
        let count = by_partition.get(&partition).map_or(0, Vec::len) as u64;
        assert_eq!(
            next[&partition], count,
            "next_offset of partition {partition}"
        );
    }

    // Fetch reads back exactly what was sent.
    for partition in 0..4u32 {
        let records = fetch_all(&client, "events", partition).await;
        for (offset, event) in records {
            let want = &sent[&(partition, offset)];
            assert_eq!(event.id, want.id);
            assert_eq!(
                event.source, "e2e-app",
                "the publisher's name is the source"
            );
            assert_eq!(event.ty, want.ty);
            assert_eq!(event.subject, want.subject);
            assert_eq!(event.data, want.data);
        }
    }

    // A group starting at the beginning gets every event exactly once.
    let received: Arc<Mutex<Vec<Delivery>>> = Arc::default();
    let sink = received.clone();
    let subscription = client
        .subscribe(
            "events",
            "readers",
            SubscribeOptions {
                durable: false,
                start: StartPoint::Beginning,
                max_in_flight: 8,
            },
            move |d: Delivery| {
                let sink = sink.clone();
                async move {
                    sink.lock().unwrap().push(d);
                    Ok::<(), String>(())
                }
            },
        )
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "every event delivered", || {
        let n = received.lock().unwrap().len();
        async move { (n >= EVENTS).then_some(()) }
    })
    .await;
    // Nothing more arrives: once the group has committed every partition
    // to its end with nothing in flight, every delivery the server made was
    // recorded (the handler records before it acks) and none can follow.
    until_group_settled(&client, "events", "readers", Duration::from_secs(10)).await;
    subscription.stop().await.unwrap();
    let received = received.lock().unwrap().clone();
    assert_eq!(received.len(), EVENTS, "each event once");
    let mut seen = BTreeSet::new();
    for d in &received {
        assert!(
            seen.insert((d.partition, d.offset)),
            "{}/{} delivered twice",
            d.partition,
            d.offset
        );
        assert_eq!(d.stream, "events");
        assert_eq!(d.attempt, 1);
        let want = &sent[&(d.partition, d.offset)];
        assert_eq!(d.event.id, want.id);
        assert_eq!(d.event.ty, want.ty);
        assert_eq!(d.event.subject, want.subject);
        assert_eq!(d.event.data, want.data);
    }
    assert_eq!(seen.len(), sent.len());
}

/// The same `(source, id)` published twice is stored once: the second
/// publish reports `duplicate` and the first offset, and the partition's
/// next offset moves once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_the_same_source_and_id_twice_stores_it_once() {
    let mut server = Server::start();
    let client = server.client();
    let publisher = client.publisher("dedup-app").await.unwrap();

    let event = |data: &str| NewEvent {
        id: "order-7".into(),
        source: "shop".into(),
        ty: "order.created".into(),
        data: data.as_bytes().to_vec(),
        ..NewEvent::default()
    };
    // Something before it, so the duplicate's offset is not trivially 0.
    let before = publisher
        .publish_to(2, NewEvent::new("filler", b"0".to_vec()))
        .await
        .unwrap();
    assert_eq!((before.partition, before.offset), (2, 0));
    let first = publisher.publish_to(2, event("first")).await.unwrap();
    assert_eq!(
        (first.partition, first.offset, first.duplicate),
        (2, 1, false)
    );
    let second = publisher.publish_to(2, event("second")).await.unwrap();
    assert_eq!(
        (second.partition, second.offset, second.duplicate),
        (2, 1, true),
        "the retry reports the original offset"
    );
    // A different source with the same id is a different event.
    let other = publisher
        .publish_to(
            2,
            NewEvent {
                source: "another-shop".into(),
                ..event("third")
            },
        )
        .await
        .unwrap();
    assert_eq!((other.offset, other.duplicate), (2, false));
    // In one Publish frame: the duplicate keeps its offset, the new event
    // gets the next one.
    let mut raw = RawConn::handshaken(server.port()).await;
    let dup_bytes = event_bytes("order-7", "shop", "order.created", b"again");
    let new_bytes = event_bytes("order-8", "shop", "order.created", b"new");
    let mut pushed = Vec::new();
    let reply = raw
        .request(
            &Message::Publish(hadron_wire::Publish {
                stream: "events",
                partition: 2,
                events: vec![&dup_bytes, &new_bytes, &dup_bytes],
            }),
            &mut pushed,
        )
        .await;
    let Frame::PublishOk { offsets, .. } = reply else {
        panic!("expected PublishOk, got {reply:?}");
    };
    assert_eq!(offsets, vec![(1, true), (3, false), (1, true)]);

    let next = next_offsets(&status(&client).await, "events");
    assert_eq!(next[&2], 4, "partition 2 advanced once per new event");
    let records = fetch_all(&client, "events", 2).await;
    let stored: Vec<(u64, &str, &str, &[u8])> = records
        .iter()
        .map(|(o, e)| (*o, e.source.as_str(), e.id.as_str(), e.data.as_slice()))
        .collect();
    assert_eq!(
        stored[1..],
        [
            (1, "shop", "order-7", &b"first"[..]),
            (2, "another-shop", "order-7", &b"third"[..]),
            (3, "shop", "order-8", &b"new"[..]),
        ],
        "one copy of shop/order-7, with the first publish's bytes"
    );

    // The server remembers across a restart.
    raw.close().await;
    drop((publisher, client));
    let exit = server.stop();
    assert!(exit.success(), "{exit:?}");
    server.restart();
    let client = server.client();
    let publisher = client.publisher("dedup-app").await.unwrap();
    let after = publisher
        .publish_to(2, event("after restart"))
        .await
        .unwrap();
    assert_eq!(
        (after.partition, after.offset, after.duplicate),
        (2, 1, true)
    );
    let next = next_offsets(&status(&client).await, "events");
    assert_eq!(next[&2], 4);
}

/// `publish_slice` borrows the events: one `Vec` reused with its ids
/// overwritten in place publishes new events each time, the same slice
/// again is all duplicates at the first offsets, and an event without an id
/// gets a fresh generated id on every call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_slice_publishes_borrowed_events_reused_in_place() {
    let server = Server::start();
    let client = server.client();
    let publisher = client.publisher("slice-app").await.unwrap();
    let mut events: Vec<NewEvent> = (0..3)
        .map(|i| NewEvent {
            id: format!("a-{i}"),
            subject: Some("one-partition".into()),
            ..NewEvent::new("slice.test", vec![b'a'; 8])
        })
        .collect();
    let first = publisher.publish_slice(&events).await.unwrap();
    let offsets = |published: &[hadron::Published]| -> Vec<(u64, bool)> {
        published.iter().map(|p| (p.offset, p.duplicate)).collect()
    };
    assert_eq!(offsets(&first), [(0, false), (1, false), (2, false)]);
    let partition = first[0].partition;
    assert!(first.iter().all(|p| p.partition == partition));

    let again = publisher.publish_slice(&events).await.unwrap();
    assert_eq!(offsets(&again), [(0, true), (1, true), (2, true)]);

    for (i, e) in events.iter_mut().enumerate() {
        e.id.clear();
        e.id.push_str(&format!("b-{i}"));
        e.data.fill(b'b');
    }
    events[2].id.clear(); // generated, anew on each call
    let second = publisher.publish_slice(&events).await.unwrap();
    assert_eq!(offsets(&second), [(3, false), (4, false), (5, false)]);
    let third = publisher.publish_slice(&events).await.unwrap();
    assert_eq!(offsets(&third), [(3, true), (4, true), (6, false)]);

    let records = fetch_all(&client, "events", partition).await;
    let stored: Vec<(u64, String, u8)> = records
        .iter()
        .map(|(o, e)| (*o, e.id.clone(), e.data[0]))
        .collect();
    assert_eq!(stored.len(), 7);
    assert_eq!(
        stored[..5],
        [
            (0, "a-0".to_owned(), b'a'),
            (1, "a-1".to_owned(), b'a'),
            (2, "a-2".to_owned(), b'a'),
            (3, "b-0".to_owned(), b'b'),
            (4, "b-1".to_owned(), b'b'),
        ]
    );
    assert_ne!(stored[5].1, stored[6].1, "a new id on each call");
    assert!(stored[5].1.starts_with("slice-app") && stored[6].1.starts_with("slice-app"));
}

/// Publishes `ids` (source `cap`) to partition 1 in one frame and returns
/// each event's (offset, duplicate).
async fn publish_ids(raw: &mut RawConn, ids: &[String]) -> Vec<(u64, bool)> {
    let bytes: Vec<Vec<u8>> = ids
        .iter()
        .map(|id| event_bytes(id, "cap", "t", id.as_bytes()))
        .collect();
    let reply = raw
        .request(
            &Message::Publish(hadron_wire::Publish {
                stream: "events",
                partition: 1,
                events: bytes.iter().map(Vec::as_slice).collect(),
            }),
            &mut Vec::new(),
        )
        .await;
    let Frame::PublishOk { offsets, .. } = reply else {
        panic!("expected PublishOk, got {reply:?}");
    };
    offsets
}

/// Partition 1's dedup window as status shows it: (keys, oldest age).
async fn dedup_window(client: &hadron::Client) -> (u64, Option<u64>) {
    let doc = status(client).await;
    let p = stream_partitions(&doc, "events")
        .iter()
        .find(|p| p["partition"] == 1)
        .unwrap_or_else(|| panic!("no partition 1 in {doc}"));
    (
        p["dedup_keys"]
            .as_u64()
            .unwrap_or_else(|| panic!("no dedup_keys in {p}")),
        p["dedup_oldest_ms"].as_u64(),
    )
}

/// `dedupKeysMax` bounds a partition's dedup window: past it the oldest
/// batches leave first, however recent, so a retry of one of them is stored
/// again while the newest are still recognised; status shows the keys held;
/// and the bound holds when the window is rebuilt on restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dedup_window_holds_at_most_dedup_keys_max_keys() {
    let mut server = Server::start_with(ServerOptions {
        config: Some("dedupKeysMax: 100\n".into()),
        ..ServerOptions::default()
    });
    let client = server.client();
    let ids = |range: std::ops::Range<u32>| range.map(|i| format!("k{i}")).collect::<Vec<_>>();
    let mut raw = RawConn::handshaken(server.port()).await;
    // Six publishes of 50: offsets 0..300, each batch fresh.
    for b in 0..6 {
        let got = publish_ids(&mut raw, &ids(b * 50..b * 50 + 50)).await;
        let want: Vec<(u64, bool)> = (u64::from(b) * 50..u64::from(b) * 50 + 50)
            .map(|o| (o, false))
            .collect();
        assert_eq!(got, want, "publish {b}");
    }
    let (keys, oldest) = dedup_window(&client).await;
    assert_eq!(keys, 100, "the last two batches, k200..k299");
    assert!(oldest.is_some());
    // The oldest and the newest in the window are still duplicates, even
    // with the window full.
    assert_eq!(publish_ids(&mut raw, &ids(200..201)).await, [(200, true)]);
    assert_eq!(publish_ids(&mut raw, &ids(299..300)).await, [(299, true)]);
    assert_eq!(dedup_window(&client).await.0, 100);
    // k0 left the window, so it is stored again, and its batch pushes
    // k200..k249 out.
    assert_eq!(publish_ids(&mut raw, &ids(0..1)).await, [(300, false)]);
    assert_eq!(dedup_window(&client).await.0, 51, "k250..k299 and k0");
    assert_eq!(publish_ids(&mut raw, &ids(250..251)).await, [(250, true)]);
    assert_eq!(publish_ids(&mut raw, &ids(249..250)).await, [(301, false)]);
    assert_eq!(dedup_window(&client).await.0, 52);

    raw.close().await;
    drop(client);
    let exit = server.stop();
    assert!(exit.success(), "{exit:?}");
    server.restart();
    let client = server.client();
    let mut raw = RawConn::handshaken(server.port()).await;
    // Rebuilt from the log under the same bound, in whole batches: the
    // same 52 offsets (k250..k299, k0, k249).
    assert_eq!(dedup_window(&client).await.0, 52);
    assert_eq!(publish_ids(&mut raw, &ids(260..261)).await, [(260, true)]);
    assert_eq!(publish_ids(&mut raw, &ids(0..1)).await, [(300, true)]);
    assert_eq!(publish_ids(&mut raw, &ids(249..250)).await, [(301, true)]);
    assert_eq!(publish_ids(&mut raw, &ids(200..201)).await, [(302, false)]);
    let next = next_offsets(&status(&client).await, "events");
    assert_eq!(next[&1], 303);
}

/// With two shards, every partition can be written and read through the
/// main port (requests for the other shard's partitions are forwarded),
/// through a shard-aware client (straight to the owner's port) and through
/// each shard's own port, and all of them read back the same events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shards_serve_every_partition_on_every_path() {
    let server = Server::start_with(ServerOptions {
        shards: 2,
        ..ServerOptions::default()
    });
    let main_only = server.client_with(ClientOptions {
        shard_aware: false,
        ..ClientOptions::default()
    });
    let aware = server.client();

    let info = aware.server_info().await.unwrap();
    assert_eq!(info.shards, 2);
    assert_eq!(
        info.shard_ports,
        vec![server.shard_port(0), server.shard_port(1)]
    );
    let owners: BTreeSet<u16> = (0..4)
        .map(|p| hadron_wire::shard_of("events", p, 2))
        .collect();
    assert_eq!(owners.len(), 2, "the 4 partitions span both shards");
    let st = status(&aware).await;
    assert_eq!(st["shards"], 2);
    for p in hadron_tests::stream_partitions(&st, "events") {
        let partition = p["partition"].as_u64().unwrap() as u32;
        assert_eq!(
            p["shard"].as_u64().unwrap(),
            u64::from(hadron_wire::shard_of("events", partition, 2)),
            "status places partition {partition} by shard_of"
        );
    }

    let p_main = main_only.publisher("via-main").await.unwrap();
    let p_aware = aware.publisher("via-shard").await.unwrap();
    let mut expected: BTreeMap<u32, Vec<(u64, String)>> = BTreeMap::new();
    for round in 0..3 {
        for partition in 0..4u32 {
            for (publisher, tag) in [(&p_main, "main"), (&p_aware, "aware")] {
                let id = format!("{tag}-{partition}-{round}");
                let published = publisher
                    .publish_to(
                        partition,
                        NewEvent::new("t", id.clone().into_bytes()).with_id(&id),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("publish {id}: {e}"));
                assert_eq!(published.partition, partition);
                assert!(!published.duplicate);
                expected
                    .entry(partition)
                    .or_default()
                    .push((published.offset, id));
            }
        }
    }
    // Raw connections to each shard's own port publish to both shards'
    // partitions (the foreign ones are forwarded).
    for shard in 0..2 {
        let mut raw = RawConn::handshaken(server.shard_port(shard)).await;
        for partition in 0..4u32 {
            let id = format!("raw-{shard}-{partition}");
            let bytes = event_bytes(&id, "raw", "t", id.as_bytes());
            let mut pushed = Vec::new();
            let reply = raw
                .request(
                    &Message::Publish(hadron_wire::Publish {
                        stream: "events",
                        partition,
                        events: vec![&bytes],
                    }),
                    &mut pushed,
                )
                .await;
            let Frame::PublishOk { offsets, .. } = reply else {
                panic!("publish through shard port {shard} to partition {partition}: {reply:?}");
            };
            assert_eq!(offsets.len(), 1);
            assert!(!offsets[0].1);
            expected
                .entry(partition)
                .or_default()
                .push((offsets[0].0, id));
        }
    }
    for (partition, list) in &expected {
        let offsets: Vec<u64> = list.iter().map(|(o, _)| *o).collect();
        let dense: Vec<u64> = (0..list.len() as u64).collect();
        assert_eq!(offsets, dense, "partition {partition}: dense offsets");
    }

    // Both clients read back the same, and it is what was published.
    for partition in 0..4u32 {
        let a = fetch_all(&main_only, "events", partition).await;
        let b = fetch_all(&aware, "events", partition).await;
        assert_eq!(a, b, "partition {partition} reads the same on both paths");
        let got: Vec<(u64, String)> = a.iter().map(|(o, e)| (*o, e.id.clone())).collect();
        assert_eq!(&got, &expected[&partition]);
        for (_, e) in &a {
            assert_eq!(e.data, e.id.as_bytes());
        }
    }

    // A group member on one shard's connection receives the events of the
    // partitions both shards own.
    let total: usize = expected.values().map(Vec::len).sum();
    let (subscription, received) =
        record_group(&aware, "events", "cross-shard", SubscribeOptions::default()).await;
    eventually(Duration::from_secs(10), "every event delivered", || {
        let n = received.lock().unwrap().len();
        async move { (n >= total).then_some(()) }
    })
    .await;
    // Acks from the member's connection reach the owning shards: every
    // partition's group offset reaches its end.
    let ends: BTreeMap<u32, u64> = expected
        .iter()
        .map(|(p, list)| (*p, list.len() as u64))
        .collect();
    let client = aware.clone();
    eventually(
        Duration::from_secs(5),
        "the group settled everywhere",
        || {
            let (client, ends) = (client.clone(), ends.clone());
            async move {
                let st = status(&client).await;
                ends.iter()
                    .all(|(&p, &end)| {
                        group_status(&st, "events", p, "cross-shard").is_some_and(|g| {
                            g["committed"] == end && g["in_flight"] == 0 && g["lag"] == 0
                        })
                    })
                    .then_some(())
            }
        },
    )
    .await;
    subscription.stop().await.unwrap();
    let mut got = received.lock().unwrap().clone();
    got.sort();
    let mut want: Vec<(u32, u64, String)> = expected
        .iter()
        .flat_map(|(p, list)| list.iter().map(move |(o, id)| (*p, *o, id.clone())))
        .collect();
    want.sort();
    assert_eq!(got, want, "each event delivered once, from both shards");
}
