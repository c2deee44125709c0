//! Consumer groups on a replicated stream, across real processes: 3 nodes
//! on loopback, a durable group subscribed through one client that knows
//! every node (it registers on each; the partition's leader delivers).
//! Events are published while the leader is SIGKILLed and restarted:
//! every event is delivered to the group (at least once). Then, with every
//! event acknowledged and the offsets snapshot on every replica, the
//! leader is killed once more and the group subscribed again: the new
//! leader resumes after the acknowledged events (the committed offsets
//! were replicated), delivering only what was published since.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed set-up step must fail the test at once"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hadron::{Client, Delivery, NewEvent, SubscribeOptions};
use hadron_tests::cluster::{Cluster, ClusterOptions};

const STREAM: &str = "orders";
const GROUP: &str = "billing";

fn resources() -> String {
    format!(
        "apiVersion: hadron.rs/v1beta1\nkind: Stream\nmetadata: {{ name: {STREAM} }}\nspec: {{ partitions: 1, replicas: 3 }}\n"
    )
}

/// Offsets delivered to the group, and how many deliveries in all.
#[derive(Debug, Default)]
struct Received {
    offsets: BTreeSet<u64>,
    deliveries: usize,
    recorded: Arc<tokio::sync::Notify>,
}

async fn subscribe(client: &Client, received: &Arc<Mutex<Received>>) -> hadron::Subscription {
    let received = received.clone();
    let options = SubscribeOptions {
        durable: true,
        ..SubscribeOptions::default()
    };
    client
        .subscribe(STREAM, GROUP, options, move |d: Delivery| {
            let received = received.clone();
            async move {
                let mut r = received.lock().unwrap();
                r.offsets.insert(d.offset);
                r.deliveries += 1;
                r.recorded.notify_waiters();
                Ok::<(), std::io::Error>(())
            }
        })
        .await
        .unwrap()
}

/// Publishes `count` events (ids `o-{from}`..); returns their offsets.
async fn publish(client: &Client, from: usize, count: usize) -> Vec<u64> {
    let publisher = client.publisher_for(STREAM, "shop").await.unwrap();
    let mut offsets = Vec::new();
    for i in from..from + count {
        let mut event = NewEvent::new("order.created", format!("o-{i}").into_bytes());
        event.id = format!("o-{i}");
        offsets.push(publisher.publish(event).await.unwrap().offset);
    }
    offsets
}

/// Waits until the group received every offset of `want`.
async fn await_received(received: &Arc<Mutex<Received>>, want: &BTreeSet<u64>) {
    let recorded = received.lock().unwrap().recorded.clone();
    let wait = async {
        loop {
            let next = recorded.notified();
            if received.lock().unwrap().offsets.is_superset(want) {
                return;
            }
            next.await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .unwrap_or_else(|_| {
            let got = received.lock().unwrap().offsets.clone();
            panic!("the group did not receive {want:?}; it has {got:?}")
        });
}

async fn await_leader(cluster: &mut Cluster, not: Option<u64>) -> u64 {
    cluster
        .await_leader_where(STREAM, 0, Duration::from_secs(20), |id| Some(id) != not)
        .await
}

/// Waits until the partition's leader (whichever node leads it now:
/// leadership may move back to the preferred replica meanwhile) has
/// persisted `committed` for the group and every node's offsets group
/// applied the same index as the leader's (so every log holds that
/// snapshot). Returns that leader.
async fn await_offsets_replicated(cluster: &Cluster, committed: u64) -> u64 {
    let partition = |doc: serde_json::Value| {
        doc["streams"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == STREAM)
            .map(|s| s["partitions"][0].clone())
    };
    // What each node last said (its partition's status), for the failure.
    let mut seen = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        seen.clear();
        for id in cluster.ids() {
            if let Some(p) = cluster.status_doc(id).await.and_then(partition) {
                seen.insert(id, p);
            }
        }
        let leader = seen
            .iter()
            .find(|(id, p)| p["replication"]["leader"].as_u64() == Some(**id))
            .map(|(id, _)| *id);
        let at_leader = leader.and_then(|id| seen.get(&id));
        let persisted = at_leader
            .and_then(|p| p["groups"].as_array().cloned())
            .and_then(|g| g.into_iter().find(|g| g["group"] == GROUP))
            .and_then(|g| g["persisted"].as_u64());
        let applied = at_leader.and_then(|p| p["offsets_replication"]["applied"].as_u64());
        let everywhere = cluster.ids().iter().all(|id| {
            seen.get(id)
                .is_some_and(|p| p["offsets_replication"]["applied"].as_u64() == applied)
        });
        if let Some(leader) = leader
            && persisted == Some(committed)
            && applied.is_some()
            && everywhere
        {
            return leader;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the group's persisted offset {committed} was not applied on every node in 30 s; \
             leader {leader:?}, each node's partition status: {seen:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_group_on_a_replicated_stream_resumes_on_the_next_leader() {
    let mut cluster = Cluster::start(ClusterOptions {
        resources: resources(),
        ..ClusterOptions::default()
    });
    let client = cluster.client_of_all();
    let received = Arc::new(Mutex::new(Received::default()));
    let subscription = subscribe(&client, &received).await;
    let mut published = BTreeSet::new();
    for round in 0..2 {
        published.extend(publish(&client, round * 20, 20).await);
        let leader = await_leader(&mut cluster, None).await;
        cluster.node(leader).kill_now();
        await_leader(&mut cluster, Some(leader)).await;
        published.extend(publish(&client, round * 20 + 1000, 10).await);
        await_received(&received, &published).await;
        cluster.node(leader).restart();
    }
    assert_eq!(published.len(), 60);
    let end = published.last().copied().unwrap() + 1;

    // Everything acknowledged: the committed offset reaches every replica.
    let leader = await_offsets_replicated(&cluster, end).await;
    subscription.stop().await.unwrap();
    cluster.node(leader).kill_now();
    await_leader(&mut cluster, Some(leader)).await;

    let again = Arc::new(Mutex::new(Received::default()));
    let _subscription = subscribe(&client, &again).await;
    let fresh: BTreeSet<u64> = publish(&client, 5000, 5).await.into_iter().collect();
    await_received(&again, &fresh).await;
    let got = again.lock().unwrap().offsets.clone();
    assert_eq!(
        got, fresh,
        "the group resumed before its committed offset {end} on the new leader"
    );
    eprintln!(
        "{} events, {} deliveries before the last failover",
        published.len(),
        received.lock().unwrap().deliveries
    );
}
