//! `hadron cluster move` across real processes: 4 nodes, a stream of 3
//! replicas on 3 of them, durable publishes throughout; the partition's
//! replicas move to the 4th node. Afterwards every node reports the target
//! voters, every acknowledged event is readable from the leader once at
//! its offset, the new replica holds the leader's high watermark, and the
//! node moved away from answers `NotLeader` and deleted its replica. A
//! second move takes the leader's replica away, back to the emptied node;
//! then the node moved onto and the node moved away from are SIGKILLed
//! and restarted: the moved placement holds across restarts. A replica
//! moved away from a node that stopped before its group removed it is
//! opened at the node's restart, removed and deleted (it was left behind).

use std::time::Duration;

use hadron_tests::cluster::{Cluster, ClusterOptions};
use hadron_tests::moves::{
    Load, WAIT, await_more_acks, await_moved, check_log, move_cli, one_partition_stream, voters_of,
};
use hadron_tests::{Frame, RawConn, eventually, run_cli};
use hadron_wire::Message;

const STREAM: &str = "orders";

fn options() -> ClusterOptions {
    ClusterOptions {
        nodes: 4,
        resources: one_partition_stream(STREAM),
        ..ClusterOptions::default()
    }
}

fn urls(cluster: &Cluster) -> String {
    let all: Vec<String> = cluster
        .ids()
        .into_iter()
        .map(|id| cluster.client_addr(id))
        .collect();
    all.join(",")
}

/// `hadron cluster move` to `target`, sent through every node's URL
/// (the client follows the metadata group's leader).
fn move_to(cluster: &Cluster, target: &[u64]) -> String {
    let to: Vec<String> = target.iter().map(u64::to_string).collect();
    let out = move_cli(STREAM, &to.join(","), &urls(cluster));
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    out.stdout
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

    let load = Load::start(cluster.client_of_all(), STREAM);
    await_more_acks(&load.count, 50).await;

    // A move naming too few voters, or an unknown node, is refused.
    let out = move_cli(STREAM, &format!("{leader},{new}"), &urls(&cluster));
    assert!(!out.status.success());
    assert!(
        out.stderr
            .contains("2 voters for stream orders of 3 replicas"),
        "{}",
        out.stderr
    );
    let out = move_cli(STREAM, "1,2,9", &urls(&cluster));
    assert!(
        out.stderr.contains("node 9 is not a node of this cluster"),
        "{}",
        out.stderr
    );

    // Move a follower's replica to the new node.
    let target: Vec<u64> = placed
        .iter()
        .map(|&id| if id == from { new } else { id })
        .collect();
    // The metadata group's leader answers what it did.
    let said = move_to(&cluster, &target);
    assert!(
        said.contains(&format!("{STREAM}/0 -> {target:?}: node ")),
        "{said}"
    );
    await_moved(&cluster, STREAM, &target).await;
    await_more_acks(&load.count, 50).await;
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
        said.contains(&format!("{STREAM}/0 -> {second:?}: node ")),
        "{said}"
    );
    let now = await_moved(&cluster, STREAM, &second).await;
    assert_ne!(now, leader);
    await_more_acks(&load.count, 50).await;
    answers_not_leader(&mut cluster, leader).await;
    await_deleted(&mut cluster, leader).await;

    // Restarts keep the moved placement (`cluster.placement`): the node
    // moved onto reopens its replica and the group goes on; the node moved
    // away from opens none and still answers NotLeader.
    for id in [new, leader] {
        cluster.node(id).kill_now();
        cluster.node(id).restart();
    }
    await_moved(&cluster, STREAM, &second).await;
    await_more_acks(&load.count, 30).await;
    answers_not_leader(&mut cluster, leader).await;
    await_deleted(&mut cluster, leader).await;

    let acked = load.stop().await;
    check_log(&cluster, STREAM, &second, &acked).await;
    // The cluster status prints each replica's voters.
    let text = run_cli(
        &["cluster", "status", "--url", &urls(&cluster)],
        Duration::from_secs(30),
    );
    assert!(text.stdout.contains("voters "), "{}", text.stdout);
}

/// Node `id`'s metadata group applied index.
async fn meta_applied(cluster: &Cluster, id: u64) -> Option<u64> {
    cluster.meta_status(id).await?["applied"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_moved_away_whose_node_stopped_before_its_removal_is_deleted_at_restart() {
    let mut cluster = Cluster::start(options());
    let leader = cluster.await_leader_where(STREAM, 0, WAIT, |_| true).await;
    let placed = voters_of(&cluster.replica_status(leader, STREAM, 0).await.unwrap()).unwrap();
    let new = cluster
        .ids()
        .into_iter()
        .find(|id| !placed.contains(id))
        .unwrap();
    let from = *placed.iter().find(|&&id| id != leader).unwrap();
    let load = Load::start(cluster.client_of_all(), STREAM);
    await_more_acks(&load.count, 30).await;

    // The node moved onto is down, so the group cannot remove `from` yet;
    // `from` records the move (its placement no longer names it) and stops
    // while still a member.
    cluster.node(new).kill_now();
    let target: Vec<u64> = placed
        .iter()
        .map(|&id| if id == from { new } else { id })
        .collect();
    move_to(&cluster, &target);
    eventually(
        WAIT,
        "the node moved away from applied the move",
        || async {
            let meta_leader = cluster.meta_leader().await?;
            let theirs = meta_applied(&cluster, meta_leader).await?;
            (meta_applied(&cluster, from).await? >= theirs).then_some(())
        },
    )
    .await;
    let voters = voters_of(&cluster.replica_status(from, STREAM, 0).await.unwrap()).unwrap();
    assert!(voters.contains(&from), "still a voter: {voters:?}");
    cluster.node(from).kill_now();

    // The move completes without it; restarted, it opens its leftover
    // replica, learns it was removed, and deletes it.
    cluster.node(new).restart();
    await_moved(&cluster, STREAM, &target).await;
    cluster.node(from).restart();
    await_deleted(&mut cluster, from).await;
    answers_not_leader(&mut cluster, from).await;
    await_more_acks(&load.count, 30).await;
    let acked = load.stop().await;
    check_log(&cluster, STREAM, &target, &acked).await;
}
