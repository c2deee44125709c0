//! Handlers and subscriptions of a client given ONE node's URL reach every
//! node of a 3-node cluster (the walkthrough's `Client::new` with one
//! Service name): the client learns the nodes from Metadata and registers
//! on each, so the partitions led by the nodes it was not given deliver
//! too.
//!
//! - a pipeline on a 4-partition stream whose partitions are led by at
//!   least two nodes: every execution on every partition completes, its
//!   second stage receiving the first stage's output;
//! - a consumer group on the same kind of stream: every partition's
//!   events are delivered.
//!
//! Before the client followed the cluster's nodes, its one runner was
//! registered on one node only, and the executions and events of the
//! partitions the others led were never delivered.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed set-up step must fail the test at once"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hadron::{Delivery, NewEvent, StageInput, SubscribeOptions};
use hadron_tests::cluster::{Cluster, ClusterOptions};
use hadron_tests::eventually;

const PARTITIONS: u32 = 4;
/// What a stage received, per execution (partition, offset), each run.
type Reported = Arc<Mutex<BTreeMap<(u32, u64), Vec<String>>>>;

/// Events published to each partition.
const PER_PARTITION: usize = 3;

fn resources() -> String {
    format!(
        r#"apiVersion: hadron.rs/v1beta1
kind: Stream
metadata: {{ name: jobs }}
spec: {{ partitions: {PARTITIONS}, replicas: 3 }}
---
apiVersion: hadron.rs/v1beta1
kind: Pipeline
metadata: {{ name: twostep }}
spec:
  sourceStream: jobs
  triggers: [job]
  stages:
    - name: work
    - name: report
      dependencies: [work]
"#
    )
}

/// Per partition, its leader, once every partition of `jobs` is led by
/// its preferred replica and the leaders are at least two nodes.
async fn spread_leaders(cluster: &Cluster) -> BTreeMap<u32, u64> {
    eventually(
        Duration::from_secs(60),
        "every partition led by its preferred replica, over 2 nodes or more",
        || async move {
            let mut leaders = BTreeMap::new();
            for id in cluster.ids() {
                for p in 0..PARTITIONS {
                    let status = cluster.replica_status(id, "jobs", p).await?;
                    if status["is_leader"] == true && status["preferred"].as_u64() == Some(id) {
                        leaders.insert(p, id);
                    }
                }
            }
            let nodes: BTreeSet<u64> = leaders.values().copied().collect();
            (leaders.len() == PARTITIONS as usize && nodes.len() >= 2).then_some(leaders)
        },
    )
    .await
}

/// Publishes `PER_PARTITION` jobs to every partition through `client`;
/// returns the data of each, by (partition, offset).
async fn publish_everywhere(client: &hadron::Client) -> BTreeMap<(u32, u64), String> {
    let publisher = client.publisher_for("jobs", "discover-test").await.unwrap();
    let mut published = BTreeMap::new();
    for partition in 0..PARTITIONS {
        for i in 0..PER_PARTITION {
            let data = format!("job-{partition}-{i}");
            let event = NewEvent::new("job", data.clone().into_bytes());
            let at = publisher.publish_to(partition, event).await.unwrap();
            published.insert((partition, at.offset), data);
        }
    }
    published
}

/// The node given to the client: one that does not lead every partition
/// (with leaders on two nodes or more, any node).
fn one_node(leaders: &BTreeMap<u32, u64>) -> u64 {
    let first = leaders[&0];
    assert!(
        leaders.values().any(|&id| id != first),
        "leaders spread: {leaders:?}"
    );
    first
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_handlers_given_one_url_complete_executions_on_every_leader() {
    let cluster = Cluster::start(ClusterOptions {
        resources: resources(),
        ..ClusterOptions::default()
    });
    let leaders = spread_leaders(&cluster).await;
    let node = one_node(&leaders);
    let client = cluster.client(node);

    // Metadata names every node, whichever node answers.
    let metadata = client.metadata().await.unwrap();
    let nodes: Vec<(u64, String)> = metadata
        .nodes
        .iter()
        .map(|n| (n.node_id, n.address.clone()))
        .collect();
    let want: Vec<(u64, String)> = cluster
        .ids()
        .into_iter()
        .map(|id| (id, cluster.client_addr(id)))
        .collect();
    assert_eq!(nodes, want);

    // What `report` received from `work`, per execution, each run.
    let reported: Reported = Arc::default();
    let work = |input: StageInput| async move {
        let data = String::from_utf8_lossy(&input.root.data).into_owned();
        Ok::<NewEvent, std::io::Error>(NewEvent::new(
            "job.worked",
            format!("worked:{data}").into_bytes(),
        ))
    };
    client.pipeline("twostep", "work", work).await.unwrap();
    let r = reported.clone();
    let report = move |input: StageInput| {
        let reported = r.clone();
        async move {
            let got = input
                .input("work")
                .map(|e| String::from_utf8_lossy(&e.data).into_owned())
                .unwrap_or_default();
            reported
                .lock()
                .unwrap()
                .entry((input.partition, input.offset))
                .or_default()
                .push(got);
            Ok::<NewEvent, std::io::Error>(NewEvent::new("job.reported", b"ok".to_vec()))
        }
    };
    client.pipeline("twostep", "report", report).await.unwrap();

    let published = publish_everywhere(&client).await;
    let executions: BTreeSet<(u32, u64)> = published.keys().copied().collect();
    let (reported, executions) = (&reported, &executions);
    eventually(
        Duration::from_secs(60),
        "every execution's report stage ran",
        || async move {
            let got: BTreeSet<(u32, u64)> = reported.lock().unwrap().keys().copied().collect();
            (got == *executions).then_some(())
        },
    )
    .await;
    for (execution, runs) in reported.lock().unwrap().iter() {
        let data = &published[execution];
        assert!(
            runs.iter().all(|got| *got == format!("worked:{data}")),
            "{execution:?} (led by node {}): {runs:?}",
            leaders[&execution.0]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_subscription_given_one_url_receives_every_partition() {
    let cluster = Cluster::start(ClusterOptions {
        resources: resources(),
        ..ClusterOptions::default()
    });
    let leaders = spread_leaders(&cluster).await;
    let client = cluster.client(one_node(&leaders));
    let received: Arc<Mutex<BTreeMap<(u32, u64), String>>> = Arc::default();
    let r = received.clone();
    let subscription = client
        .subscribe(
            "jobs",
            "billing",
            SubscribeOptions::default(),
            move |d: Delivery| {
                let received = r.clone();
                async move {
                    let data = String::from_utf8_lossy(&d.event.data).into_owned();
                    received
                        .lock()
                        .unwrap()
                        .insert((d.partition, d.offset), data);
                    Ok::<(), std::io::Error>(())
                }
            },
        )
        .await
        .unwrap();
    let published = publish_everywhere(&client).await;
    let received = &received;
    let want = &published;
    eventually(
        Duration::from_secs(60),
        "every partition's events delivered to the group",
        || async move { (*received.lock().unwrap() == *want).then_some(()) },
    )
    .await;
    subscription.stop().await.unwrap();
}
