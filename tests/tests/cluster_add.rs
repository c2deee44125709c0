//! Adding a node to a running cluster: 3 founders, a stream of 3
//! replicas, durable publishes throughout; a 4th node starts with
//! `cluster.founders`, `hadron cluster add-node` tells the founders, and
//! `hadron cluster move` puts the partition's replica of one founder on
//! it. Afterwards every node of the target reports the target voters,
//! every acknowledged event is readable from the leader once at its
//! offset, and the new node's replica holds the leader's high watermark.
//! Then `hadron cluster remove-node` of the node moved away from
//! succeeds, and of a node still placed is refused naming the partition.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed set-up step must fail the test at once"
)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hadron::{Client, NewEvent};
use hadron_tests::cluster::{Cluster, ClusterOptions};
use hadron_tests::{eventually, fetch_all, run_cli};

const STREAM: &str = "orders";
const WAIT: Duration = Duration::from_secs(60);
const CLI: Duration = Duration::from_secs(30);

/// Publishes events with fixed ids until stopped, retrying each until
/// acknowledged; id -> offset.
async fn publish_until(
    client: Client,
    stop: Arc<AtomicBool>,
    acked_count: Arc<AtomicU64>,
) -> BTreeMap<String, u64> {
    let mut acked = BTreeMap::new();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let id = format!("e{n}");
        let deadline = Instant::now() + WAIT;
        loop {
            let event = NewEvent {
                id: id.clone(),
                ty: "order.created".into(),
                data: id.as_bytes().to_vec(),
                ..NewEvent::default()
            };
            let result = match client.publisher_for(STREAM, "add-e2e").await {
                Ok(p) => p.publish_to(0, event).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(p) => {
                    acked.insert(id.clone(), p.offset);
                    acked_count.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "event {id} not acknowledged: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        n += 1;
    }
    acked
}

async fn await_more_acks(count: &AtomicU64, more: u64) {
    let target = count.load(Ordering::SeqCst) + more;
    eventually(WAIT, "more publishes acknowledged", || async {
        (count.load(Ordering::SeqCst) >= target).then_some(())
    })
    .await;
}

fn sorted(mut v: Vec<u64>) -> Vec<u64> {
    v.sort_unstable();
    v
}

fn voters_of(replica: &serde_json::Value) -> Option<Vec<u64>> {
    let v = replica["voters"].as_array()?;
    Some(sorted(
        v.iter().filter_map(serde_json::Value::as_u64).collect(),
    ))
}

fn urls(cluster: &Cluster, ids: &[u64]) -> String {
    let all: Vec<String> = ids.iter().map(|&id| cluster.client_addr(id)).collect();
    all.join(",")
}

/// Waits until every node of `target` reports the target voters and one
/// of them leads; returns the leader.
async fn await_moved(cluster: &mut Cluster, target: &[u64]) -> u64 {
    let want = sorted(target.to_vec());
    let deadline = Instant::now() + WAIT;
    loop {
        let mut seen = Vec::new();
        for &id in target {
            let r = cluster.replica_status(id, STREAM, 0).await;
            seen.push((id, r.as_ref().and_then(voters_of)));
        }
        if seen.iter().all(|(_, v)| v.as_ref() == Some(&want))
            && let Some(leader) = cluster.leader(STREAM, 0).await
            && target.contains(&leader)
        {
            return leader;
        }
        assert!(Instant::now() < deadline, "voters not {want:?}: {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every acknowledged event once, at its offset, from the leader; every
/// target replica at the leader's high watermark.
async fn check_log(cluster: &mut Cluster, target: &[u64], acked: &BTreeMap<String, u64>) {
    let leader = await_moved(cluster, target).await;
    let deadline = Instant::now() + WAIT;
    let hw = loop {
        let mut marks = Vec::new();
        for &id in target {
            let r = cluster.replica_status(id, STREAM, 0).await.unwrap();
            marks.push(r["high_watermark"].as_u64());
        }
        if marks.iter().all(|m| m.is_some() && *m == marks[0]) {
            break marks[0].unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "high watermarks differ: {marks:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let records = fetch_all(&cluster.client(leader), STREAM, 0).await;
    assert_eq!(
        records.len() as u64,
        hw,
        "the leader's log up to its high watermark"
    );
    let mut at: HashMap<String, u64> = HashMap::new();
    for (offset, e) in &records {
        assert_eq!(e.data, e.id.as_bytes());
        if let Some(first) = at.insert(e.id.clone(), *offset) {
            panic!("event {} stored twice: at {first} and {offset}", e.id);
        }
    }
    for (id, offset) in acked {
        assert_eq!(at.get(id), Some(offset), "acknowledged event {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_added_online_takes_a_moved_replica_and_the_node_moved_away_from_is_removed() {
    let mut cluster = Cluster::start(ClusterOptions {
        nodes: 3,
        resources: format!(
            "apiVersion: hadron.rs/v1beta1\nkind: Stream\nmetadata: {{ name: {STREAM} }}\nspec: {{ partitions: 1, replicas: 3 }}\n"
        ),
        ..ClusterOptions::default()
    });
    let leader = cluster.await_leader_where(STREAM, 0, WAIT, |_| true).await;
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let publisher = tokio::spawn(publish_until(
        cluster.client_of_all(),
        stop.clone(),
        count.clone(),
    ));
    await_more_acks(&count, 50).await;

    // Before add-node, the founders do not know node 4: a move onto it
    // is refused.
    let founders = [1, 2, 3];
    let new = cluster.add_node();
    assert_eq!(new, 4);
    let from = *founders.iter().find(|&&id| id != leader).unwrap();
    let target: Vec<u64> = founders
        .iter()
        .map(|&id| if id == from { new } else { id })
        .collect();
    let to: Vec<String> = target.iter().map(u64::to_string).collect();
    let all = urls(&cluster, &[1, 2, 3, 4]);
    let out = run_cli(
        &[
            "cluster",
            "move",
            STREAM,
            "0",
            "--to",
            &to.join(","),
            "--url",
            &urls(&cluster, &founders),
        ],
        CLI,
    );
    assert!(!out.status.success(), "{}", out.stdout);
    assert!(
        out.stdout.contains("node 4 is not a node of this cluster"),
        "{}",
        out.stdout
    );

    // add-node to the founders, twice (idempotent); another address for
    // the same id is refused.
    let peer = cluster.peer_addr(new);
    let address = cluster
        .client_addr(new)
        .trim_start_matches("http://")
        .to_owned();
    for _ in 0..2 {
        let out = run_cli(
            &[
                "cluster",
                "add-node",
                "--id",
                "4",
                "--address",
                &address,
                "--peer-address",
                &peer,
                "--url",
                &urls(&cluster, &founders),
            ],
            CLI,
        );
        assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    }
    let out = run_cli(
        &[
            "cluster",
            "add-node",
            "--id",
            "4",
            "--address",
            "127.0.0.1:1",
            "--peer-address",
            &peer,
            "--url",
            &urls(&cluster, &founders),
        ],
        CLI,
    );
    assert!(!out.status.success());
    assert!(
        out.stdout.contains("node 4 is already a node"),
        "{}",
        out.stdout
    );

    // Move one founder's replica onto node 4, under load.
    let out = run_cli(
        &[
            "cluster",
            "move",
            STREAM,
            "0",
            "--to",
            &to.join(","),
            "--url",
            &all,
        ],
        CLI,
    );
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    await_moved(&mut cluster, &target).await;
    await_more_acks(&count, 50).await;
    stop.store(true, Ordering::Relaxed);
    let acked = publisher.await.unwrap();
    check_log(&mut cluster, &target, &acked).await;

    // A node still placed is refused, naming the partition; the node
    // moved away from is removed everywhere.
    let kept = target[0];
    let out = run_cli(
        &["cluster", "remove-node", &kept.to_string(), "--url", &all],
        CLI,
    );
    assert!(!out.status.success());
    assert!(
        out.stdout
            .contains(&format!("node {kept} still holds partitions {STREAM}/0")),
        "{}",
        out.stdout
    );
    let out = run_cli(
        &["cluster", "remove-node", &from.to_string(), "--url", &all],
        CLI,
    );
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains(&format!("removed node {from}")),
        "{}",
        out.stdout
    );
    for id in &target {
        let text =
            std::fs::read_to_string(cluster.node(*id).data_dir().join("cluster.peers")).unwrap();
        assert!(
            text.contains(&format!("removed {from}")),
            "node {id}: {text}"
        );
    }
}
