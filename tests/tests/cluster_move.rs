//! `hadron cluster move` across real processes: 4 nodes, a stream of 3
//! replicas on 3 of them, durable publishes throughout; the partition's
//! replicas move to the 4th node. Afterwards every node reports the target
//! voters, every acknowledged event is readable from the leader once at
//! its offset, the new replica holds the leader's high watermark, and the
//! node moved away from answers `NotLeader` and deleted its replica. A
//! second move takes the leader's replica away, back to the emptied node;
//! then the node moved onto and the node moved away from are SIGKILLed
//! and restarted: the moved placement holds across restarts.

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
use hadron_tests::{Frame, RawConn, eventually, fetch_all, run_cli};
use hadron_wire::Message;

const STREAM: &str = "orders";
const WAIT: Duration = Duration::from_secs(60);

fn options() -> ClusterOptions {
    ClusterOptions {
        nodes: 4,
        resources: format!(
            "apiVersion: hadron.rs/v1beta1\nkind: Stream\nmetadata: {{ name: {STREAM} }}\nspec: {{ partitions: 1, replicas: 3 }}\n"
        ),
        ..ClusterOptions::default()
    }
}

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
            let result = match client.publisher_for(STREAM, "move-e2e").await {
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

fn urls(cluster: &Cluster) -> String {
    let all: Vec<String> = cluster
        .ids()
        .into_iter()
        .map(|id| cluster.client_addr(id))
        .collect();
    all.join(",")
}

/// `hadron cluster move` to `target`, sent to every node.
fn move_to(cluster: &Cluster, target: &[u64]) -> String {
    let to: Vec<String> = target.iter().map(u64::to_string).collect();
    let out = run_cli(
        &[
            "cluster",
            "move",
            STREAM,
            "0",
            "--to",
            &to.join(","),
            "--url",
            &urls(cluster),
        ],
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    out.stdout
}

/// Waits until every node of `target` reports the target voters, and
/// returns the leader (which leads with them).
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

/// A fetch at node `id` answers `NotLeader`.
async fn answers_not_leader(cluster: &mut Cluster, id: u64) {
    let port = cluster.node(id).port();
    eventually(
        WAIT,
        "the node moved away from answers NotLeader",
        || async {
            let mut raw = RawConn::handshaken(port).await;
            let reply = raw
                .request(
                    &Message::Fetch(hadron_wire::Fetch {
                        stream: STREAM,
                        partition: 0,
                        offset: 0,
                        max_bytes: 1 << 20,
                    }),
                    &mut Vec::new(),
                )
                .await;
            matches!(reply, Frame::NotLeader { .. }).then_some(())
        },
    )
    .await;
}

/// Node `id`'s directory of the partition is deleted (the replica a move
/// removed is reaped).
async fn await_deleted(cluster: &mut Cluster, id: u64) {
    let dir = cluster
        .node(id)
        .data_dir()
        .join("streams")
        .join(STREAM)
        .join("00000");
    eventually(WAIT, "the removed replica's directory deleted", || async {
        (!dir.exists()).then_some(())
    })
    .await;
}

/// Every acknowledged event once, at its offset, from the leader; the
/// other target replicas at the leader's high watermark.
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
async fn a_partition_moves_to_a_new_node_under_durable_load_without_loss() {
    let mut cluster = Cluster::start(options());
    let leader = cluster.await_leader_where(STREAM, 0, WAIT, |_| true).await;
    let placed = voters_of(&cluster.replica_status(leader, STREAM, 0).await.unwrap()).unwrap();
    assert_eq!(placed.len(), 3);
    let new = cluster
        .ids()
        .into_iter()
        .find(|id| !placed.contains(id))
        .unwrap();
    let from = *placed.iter().find(|&&id| id != leader).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let publisher = tokio::spawn(publish_until(
        cluster.client_of_all(),
        stop.clone(),
        count.clone(),
    ));
    await_more_acks(&count, 50).await;

    // A move naming too few voters, or an unknown node, is refused.
    let out = run_cli(
        &[
            "cluster",
            "move",
            STREAM,
            "0",
            "--to",
            &format!("{leader},{new}"),
            "--url",
            &urls(&cluster),
        ],
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    assert!(
        out.stdout
            .contains("2 voters for stream orders of 3 replicas"),
        "{}",
        out.stdout
    );
    let out = run_cli(
        &[
            "cluster",
            "move",
            STREAM,
            "0",
            "--to",
            "1,2,9",
            "--url",
            &urls(&cluster),
        ],
        Duration::from_secs(30),
    );
    assert!(
        out.stdout.contains("node 9 is not a node of this cluster"),
        "{}",
        out.stdout
    );

    // Move a follower's replica to the new node.
    let target: Vec<u64> = placed
        .iter()
        .map(|&id| if id == from { new } else { id })
        .collect();
    let said = move_to(&cluster, &target);
    assert!(
        said.contains(&format!("node {new} opened an empty replica")),
        "{said}"
    );
    assert!(
        said.contains(&format!("node {from} hosts it until")),
        "{said}"
    );
    await_moved(&mut cluster, &target).await;
    await_more_acks(&count, 50).await;
    answers_not_leader(&mut cluster, from).await;
    await_deleted(&mut cluster, from).await;

    // Then the leader's replica, back to the node just emptied.
    let leader = cluster.leader(STREAM, 0).await.unwrap();
    let second: Vec<u64> = target
        .iter()
        .map(|&id| if id == leader { from } else { id })
        .collect();
    let said = move_to(&cluster, &second);
    assert!(
        said.contains(&format!("node {from} opened an empty replica")),
        "{said}"
    );
    let now = await_moved(&mut cluster, &second).await;
    assert_ne!(now, leader);
    await_more_acks(&count, 50).await;
    answers_not_leader(&mut cluster, leader).await;
    await_deleted(&mut cluster, leader).await;

    // Restarts keep the moved placement (`cluster.placement`): the node
    // moved onto reopens its replica and the group goes on; the node moved
    // away from opens none and still answers NotLeader.
    for id in [new, leader] {
        cluster.node(id).kill_now();
        cluster.node(id).restart();
    }
    await_moved(&mut cluster, &second).await;
    await_more_acks(&count, 30).await;
    answers_not_leader(&mut cluster, leader).await;
    await_deleted(&mut cluster, leader).await;

    stop.store(true, Ordering::Relaxed);
    let acked = publisher.await.unwrap();
    check_log(&mut cluster, &second, &acked).await;
    // The cluster status prints each replica's voters.
    let text = run_cli(
        &["cluster", "status", "--url", &urls(&cluster)],
        Duration::from_secs(30),
    );
    assert!(text.stdout.contains("voters "), "{}", text.stdout);
}
