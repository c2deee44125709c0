//! Adding a node to a running cluster: 3 founders, a stream of 3
//! replicas, durable publishes throughout; a 4th node starts with
//! `cluster.founders`, `hadron cluster add-node` tells the founders, and
//! `hadron cluster move` puts the partition's replica of one founder on
//! it. Afterwards every node of the target reports the target voters,
//! every acknowledged event is readable from the leader once at its
//! offset, and the new node's replica holds the leader's high watermark.
//! Then `hadron cluster remove-node` of the node moved away from
//! succeeds, and of a node still placed is refused naming the partition.
//! Last, each node of the target is SIGKILLed and restarted in turn: the
//! added node is known from `cluster.peers` (the founders' configs do not
//! list it), and the group goes on and takes a publish.
//!
//! The same with `tls:` on every node: the added node's peer links are
//! TLS, and a removed node restarted with its old config has its hellos
//! refused.

use std::time::Duration;

use hadron_tests::cluster::{Cluster, ClusterOptions};
use hadron_tests::moves::{
    Load, WAIT, await_more_acks, await_moved, check_log, move_cli, one_partition_stream,
};
use hadron_tests::run_cli;

const STREAM: &str = "orders";
const CLI: Duration = Duration::from_secs(30);

fn urls(cluster: &Cluster, ids: &[u64]) -> String {
    let all: Vec<String> = ids.iter().map(|&id| cluster.client_addr(id)).collect();
    all.join(",")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_added_online_takes_a_moved_replica_and_the_node_moved_away_from_is_removed() {
    let mut cluster = Cluster::start(ClusterOptions {
        nodes: 3,
        resources: one_partition_stream(STREAM),
        ..ClusterOptions::default()
    });
    let leader = cluster.await_leader_where(STREAM, 0, WAIT, |_| true).await;
    let load = Load::start(cluster.client_of_all(), STREAM);
    await_more_acks(&load.count, 50).await;

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
    let out = move_cli(STREAM, &to.join(","), &urls(&cluster, &founders));
    assert!(!out.status.success(), "{}", out.stdout);
    assert!(
        out.stderr.contains("node 4 is not a node of this cluster"),
        "{}",
        out.stderr
    );

    // add-node through the founders (the metadata group's leader takes
    // it), twice (idempotent); another address for the same id is refused.
    for _ in 0..2 {
        let out = cluster.add_node_cli(new, None, &urls(&cluster, &founders));
        assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    }
    let out = cluster.add_node_cli(new, Some("127.0.0.1:1"), &urls(&cluster, &founders));
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("node 4 is already a node"),
        "{}",
        out.stderr
    );

    // Move one founder's replica onto node 4, under load.
    let out = move_cli(STREAM, &to.join(","), &all);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    await_moved(&cluster, STREAM, &target).await;
    await_more_acks(&load.count, 50).await;
    let acked = load.stop().await;
    check_log(&cluster, STREAM, &target, &acked).await;

    // A node still placed is refused, naming the partition; the node
    // moved away from is removed everywhere.
    let kept = target[0];
    let out = run_cli(
        &["cluster", "remove-node", &kept.to_string(), "--url", &all],
        CLI,
    );
    assert!(!out.status.success());
    assert!(
        out.stderr
            .contains(&format!("node {kept} still holds partitions {STREAM}/0")),
        "{}",
        out.stderr
    );
    // A node that was never in the cluster (a typo) is refused by name.
    let out = run_cli(&["cluster", "remove-node", "99", "--url", &all], CLI);
    assert!(!out.status.success(), "{}", out.stdout);
    assert!(
        out.stderr
            .contains("there is no node 99 in the cluster (its nodes: 1, 2, 3, 4)"),
        "{}",
        out.stderr
    );
    let out = run_cli(
        &["cluster", "remove-node", &from.to_string(), "--url", &all],
        CLI,
    );
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("once `hadron cluster status` shows it in no group"),
        "{}",
        out.stdout
    );
    // Sent again (as the client resends a change whose answer was lost),
    // the removal succeeds: it was done.
    let out = run_cli(
        &["cluster", "remove-node", &from.to_string(), "--url", &all],
        CLI,
    );
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    // The leader answered once it applied the removal; every node of the
    // target applies it from the metadata log.
    for id in target.clone() {
        let path = cluster.node(id).data_dir().join("cluster.peers");
        let removed = format!("removed {from}");
        hadron_tests::eventually(WAIT, "the removal recorded", || {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let done = text.contains(&removed);
            async move { done.then_some(()) }
        })
        .await;
    }

    // The registry holds across restarts: the founders' configs do not
    // list node 4, their `cluster.peers` does. Each node of the target is
    // SIGKILLed and restarted in turn, and the group goes on with node 4.
    for &id in &target {
        cluster.node(id).kill_now();
        cluster.node(id).restart();
        await_moved(&cluster, STREAM, &target).await;
    }
    let client = cluster.client(4);
    let publisher = client
        .publisher_for(STREAM, "after-restarts")
        .await
        .unwrap();
    let mut event = hadron::NewEvent::new("order.created", b"late".to_vec());
    event.id = "late".into();
    let late = publisher.publish_to(0, event).await.unwrap();
    assert!(late.offset >= acked.len() as u64, "{late:?}");
}

/// With `tls:` on every node, a node added online links over TLS too (the
/// peer ports take TLS only, and the nodes check each other's
/// certificates): a partition moved onto it replicates, its replica
/// reaching the leader's high watermark with every acknowledged event at
/// its offset. Then the node moved away from is removed, and restarted on
/// a fresh data dir with its old config (a founder placing the stream on
/// nodes 1 to 3): its hellos are refused by the others, whose group goes
/// on with the target voters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_an_added_node_replicates_over_tls_and_a_removed_node_is_refused() {
    let pki = tempfile::tempdir().unwrap();
    hadron_tests::pki::cluster_pki(pki.path());
    let mut cluster = Cluster::start(ClusterOptions {
        nodes: 3,
        resources: one_partition_stream(STREAM),
        tls: Some(pki.path().to_path_buf()),
        ..ClusterOptions::default()
    });
    let leader = cluster.await_leader_where(STREAM, 0, WAIT, |_| true).await;
    let load = Load::start(cluster.client_of_all(), STREAM);
    await_more_acks(&load.count, 20).await;

    let founders = [1, 2, 3];
    let new = cluster.add_node();
    let from = *founders.iter().find(|&&id| id != leader).unwrap();
    let target: Vec<u64> = founders
        .iter()
        .map(|&id| if id == from { new } else { id })
        .collect();
    let to: Vec<String> = target.iter().map(u64::to_string).collect();
    let all = urls(&cluster, &[1, 2, 3, 4]);
    let out = cluster.add_node_cli(new, None, &urls(&cluster, &founders));
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    let out = cluster.cli(
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
    await_moved(&cluster, STREAM, &target).await;
    await_more_acks(&load.count, 20).await;
    let acked = load.stop().await;
    check_log(&cluster, STREAM, &target, &acked).await;
    for id in cluster.ids() {
        let log = cluster.node(id).log();
        assert!(log.contains("(TLS)"), "node {id} serves TLS: {log}");
        // Only node 4's hellos before add-node were refused.
        let before_add = format!("peer connection refused: node {new} is not another node");
        for line in log
            .lines()
            .filter(|l| l.contains("peer connection refused"))
        {
            assert!(line.contains(&before_add), "node {id}: {line}");
        }
    }

    let out = cluster.cli(
        &["cluster", "remove-node", &from.to_string(), "--url", &all],
        CLI,
    );
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    cluster.node(from).stop();
    let data = cluster.node(from).data_dir();
    std::fs::remove_dir_all(&data).unwrap();
    std::fs::create_dir(&data).unwrap();
    cluster.node(from).restart();
    let refused = format!("peer connection refused: node {from} is not another node");
    let kept: Vec<u64> = target.iter().copied().filter(|&id| id != new).collect();
    let logs = hadron_tests::eventually(WAIT, "the removed node's hellos refused", || {
        let logs: Vec<String> = kept.iter().map(|&id| cluster.node(id).log()).collect();
        let done = logs.iter().all(|l| l.contains(&refused));
        async move { done.then_some(logs) }
    })
    .await;
    assert_eq!(logs.len(), 2);
    await_moved(&cluster, STREAM, &target).await;
    let publisher = cluster
        .client(new)
        .publisher_for(STREAM, "after-removal")
        .await
        .unwrap();
    let mut event = hadron::NewEvent::new("order.created", b"late".to_vec());
    event.id = "late".into();
    let late = publisher.publish_to(0, event).await.unwrap();
    assert!(late.offset >= acked.len() as u64, "{late:?}");
}
