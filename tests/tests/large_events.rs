//! Events of any publishable size, and batches larger than a read window,
//! reach every reader whole: Fetch with any `max_bytes`, consumer groups,
//! pipeline stages and the duplicate check. (A batch longer than the read
//! window used to be taken for a corrupt segment, stopping every group and
//! the pipeline scanner of its partition at that offset for good.)

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hadron::{NewEvent, StageInput, SubscribeOptions};
use hadron_tests::{Server, eventually};

/// What a reader got, by offset: (id, data).
type Seen = BTreeMap<u64, (String, Vec<u8>)>;

/// The largest event data published here: the batch limit is 4 MiB, and an
/// event's encoding adds its attributes to the data.
const LARGEST_DATA_BYTES: usize = (4 << 20) - 1024;

fn event(id: &str, ty: &str, len: usize) -> NewEvent {
    NewEvent {
        id: id.into(),
        ty: ty.into(),
        // One subject: one partition, in publish order.
        subject: Some("big-one".into()),
        data: (0..len).map(|i| (i * 7 + id.len()) as u8).collect(),
        ..NewEvent::default()
    }
}

/// What is published, all to one partition: small events around one of 60 KB, one of
/// 300 KiB, one of the largest size, and one batch of 64 x 5 KiB.
fn events() -> Vec<Vec<NewEvent>> {
    vec![
        vec![event("small-0", "big.test", 100)],
        vec![event("e60k", "big.test", 60_000)],
        vec![event("e300k", "big.test", 300 << 10)],
        (0..64)
            .map(|i| event(&format!("batch-{i}"), "big.test", 5 << 10))
            .collect(),
        vec![event("largest", "big.test", LARGEST_DATA_BYTES)],
        vec![event("small-1", "big.test", 100)],
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_events_and_batches_reach_every_reader_whole() {
    let server = Server::start();
    let client = server.client();
    client
        .apply(
            "apiVersion: hadron.rs/v1beta1
kind: Pipeline
metadata: { name: big }
spec:
  sourceStream: events
  triggers: [big.test]
  startPoint: { location: beginning }
  maxParallel: 8
  stages:
    - name: inspect
",
        )
        .await
        .unwrap();
    let publisher = client.publisher("large").await.unwrap();
    let mut sent: BTreeMap<u64, NewEvent> = BTreeMap::new();
    let mut partitions = std::collections::BTreeSet::new();
    for batch in events() {
        let published = publisher.publish_batch(batch.clone()).await.unwrap();
        for (p, e) in published.iter().zip(batch) {
            partitions.insert(p.partition);
            assert!(!p.duplicate);
            sent.insert(p.offset, e);
        }
    }
    assert_eq!(partitions.len(), 1, "one subject, one partition");
    let partition = *partitions.first().unwrap();
    let total = sent.len();
    let ids: Vec<&str> = sent.values().map(|e| e.id.as_str()).collect();
    assert_eq!(sent.len(), 69, "{ids:?}");

    // Fetch from every offset with max_bytes 1 (one event, whole) and with
    // a window smaller than most of them.
    for max_bytes in [1u32, 8 << 10] {
        for (offset, e) in &sent {
            let page = client
                .fetch("events", partition, *offset, max_bytes)
                .await
                .unwrap();
            let (o, got) = &page.records[0];
            assert_eq!((*o, &got.id, &got.data), (*offset, &e.id, &e.data));
            assert!(page.next_offset > *offset);
        }
    }

    // A group reads all of them, byte for byte.
    let received: Arc<Mutex<Seen>> = Default::default();
    let sink = received.clone();
    let _subscription = client
        .subscribe(
            "events",
            "large-readers",
            SubscribeOptions::default(),
            move |d: hadron::Delivery| {
                let sink = sink.clone();
                async move {
                    if d.partition == partition {
                        sink.lock()
                            .unwrap()
                            .insert(d.offset, (d.event.id, d.event.data));
                    }
                    Ok::<(), String>(())
                }
            },
        )
        .await
        .unwrap();
    eventually(
        Duration::from_secs(60),
        "the group reads every event",
        || {
            let got = received.lock().unwrap().len();
            async move { (got == total).then_some(()) }
        },
    )
    .await;
    for (offset, (id, data)) in received.lock().unwrap().iter() {
        let e = &sent[offset];
        assert_eq!((id, data), (&e.id, &e.data), "offset {offset}");
    }

    // The pipeline scanner passes them all and its stage gets each root.
    let roots: Arc<Mutex<BTreeMap<u64, (String, usize)>>> = Default::default();
    let sink = roots.clone();
    let _stage = client
        .pipeline("big", "inspect", move |input: StageInput| {
            let sink = sink.clone();
            async move {
                if input.partition == partition {
                    sink.lock()
                        .unwrap()
                        .insert(input.offset, (input.root.id.clone(), input.root.data.len()));
                }
                Ok::<NewEvent, String>(NewEvent {
                    ty: "big.inspected".into(),
                    ..NewEvent::default()
                })
            }
        })
        .await
        .unwrap();
    eventually(Duration::from_secs(60), "the stage sees every root", || {
        let got = roots.lock().unwrap().len();
        async move { (got == total).then_some(()) }
    })
    .await;
    for (offset, (id, len)) in roots.lock().unwrap().iter() {
        assert_eq!((id, *len), (&sent[offset].id, sent[offset].data.len()));
    }

    // Publishing the largest event again is recognised as its duplicate
    // (the check reads the stored event back, whole).
    let (&largest_offset, largest) = sent.iter().find(|(_, e)| e.id == "largest").unwrap();
    let again = publisher
        .publish_to(partition, largest.clone())
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.offset, largest_offset);

    // One byte past the batch limit is refused, naming the limit, and
    // nothing is stored.
    let err = publisher
        .publish_to(partition, event("too-large", "big.test", 4 << 20))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("batch_bytes_max"), "{err}");
    let end = client
        .fetch("events", partition, largest_offset + 1, 1 << 20)
        .await
        .unwrap();
    assert_eq!(end.records.len(), 1, "only small-1 after the largest");
}
