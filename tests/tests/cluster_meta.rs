//! The metadata group (`cluster/meta`, docs/replication.md section 2):
//! admin changes go through Raft, in one order, on every node.
//!
//! - `hadron apply` sent to one follower's URL only creates the stream on
//!   all three nodes (the follower's `NotLeader` leads the client to the
//!   meta leader);
//! - a node down during a change has it once restarted (from the log);
//! - after the meta leader is SIGKILLed, an apply through the CLI with
//!   every URL succeeds on the new leader;
//! - `add-node` through one URL: the new node learns the resources from
//!   the log (it serves the stream's metadata) and becomes a voter of
//!   `cluster/meta`.

use std::time::Duration;

use hadron_tests::cluster::{Cluster, ClusterOptions};
use hadron_tests::{eventually, stream_yaml};

const WAIT: Duration = Duration::from_secs(30);
const CLI: Duration = Duration::from_secs(60);

fn urls(cluster: &Cluster, ids: &[u64]) -> String {
    let all: Vec<String> = ids.iter().map(|&id| cluster.client_addr(id)).collect();
    all.join(",")
}

/// `hadron apply -f FILE --url URLS` of `yaml`: its output.
fn apply_cli(cluster: &Cluster, yaml: &str, urls: &str) -> hadron_tests::CliOutput {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("a temporary directory: {e}"));
    let file = dir.path().join("resources.yaml");
    std::fs::write(&file, yaml).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    cluster.cli(
        &["apply", "-f", &file.display().to_string(), "--url", urls],
        CLI,
    )
}

/// Waits until node `id` has stream `name` with `partitions` partitions
/// (its status document).
async fn await_stream(cluster: &Cluster, id: u64, name: &str, partitions: u64) {
    eventually(WAIT, &format!("node {id} has stream {name}"), || async {
        let doc = cluster.status_doc(id).await?;
        let stream = doc["streams"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == name)?
            .clone();
        (stream["partition_count"].as_u64() == Some(partitions)).then_some(())
    })
    .await
}

async fn await_meta_leader(cluster: &Cluster) -> u64 {
    eventually(WAIT, "a metadata group leader", || cluster.meta_leader()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_sent_to_a_follower_reaches_every_node_and_a_node_down_gets_it_at_restart() {
    let mut cluster = Cluster::start(ClusterOptions::default());
    let leader = await_meta_leader(&cluster).await;
    let follower = cluster.ids().into_iter().find(|&id| id != leader).unwrap();

    let out = apply_cli(
        &cluster,
        &stream_yaml("orders", 2),
        &cluster.client_addr(follower),
    );
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("stream/orders created (2 partitions)"),
        "{}",
        out.stdout
    );
    for id in cluster.ids() {
        await_stream(&cluster, id, "orders", 2).await;
    }
    // Every node applied the same entries.
    let applied = eventually(WAIT, "every node at the leader's applied index", || async {
        let at_leader = cluster.meta_status(leader).await?["applied"].as_u64()?;
        for id in cluster.ids() {
            let meta = cluster.meta_status(id).await?;
            if meta["applied"].as_u64() != Some(at_leader) {
                return None;
            }
        }
        Some(at_leader)
    })
    .await;
    assert!(applied >= 2, "an empty entry and the apply: {applied}");
    // `hadron cluster status` lists the group like the others.
    let status = cluster.cluster_status_json();
    let meta = status["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["stream"] == "cluster/meta")
        .unwrap_or_else(|| panic!("no cluster/meta row: {status}"));
    assert_eq!(meta["leader"], leader);
    let rows = meta["replicas"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{meta}");
    assert!(rows.iter().all(|r| r["meta_applied"] == applied), "{meta}");

    // A node down misses a change; restarted, it applies it from the log.
    let down = cluster
        .ids()
        .into_iter()
        .find(|&id| id != leader && id != follower)
        .unwrap();
    cluster.node(down).stop();
    let up: Vec<u64> = cluster.ids().into_iter().filter(|&id| id != down).collect();
    let out = apply_cli(&cluster, &stream_yaml("invoices", 3), &urls(&cluster, &up));
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    for &id in &up {
        await_stream(&cluster, id, "invoices", 3).await;
    }
    cluster.node(down).restart();
    await_stream(&cluster, down, "invoices", 3).await;
    await_stream(&cluster, down, "orders", 2).await;
    // Restarted again, it does not apply them twice (its applied index
    // was recorded) and still has them.
    let before = cluster.meta_status(down).await.unwrap()["applied"]
        .as_u64()
        .unwrap();
    cluster.node(down).stop();
    cluster.node(down).restart();
    await_stream(&cluster, down, "invoices", 3).await;
    let log = cluster.node(down).log();
    let opened = log
        .lines()
        .rfind(|l| l.contains("metadata group open"))
        .unwrap_or_default();
    assert!(
        opened.contains(&format!("applied={before}")),
        "node {down} reopened at its recorded index {before}: {opened}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_after_the_meta_leader_is_killed_succeeds_on_the_new_leader() {
    let mut cluster = Cluster::start(ClusterOptions::default());
    let leader = await_meta_leader(&cluster).await;
    cluster.node(leader).kill_now();
    let all = urls(&cluster, &cluster.ids());
    let out = apply_cli(&cluster, &stream_yaml("orders", 1), &all);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("stream/orders created"),
        "{}",
        out.stdout
    );
    let alive: Vec<u64> = cluster
        .ids()
        .into_iter()
        .filter(|&id| id != leader)
        .collect();
    for &id in &alive {
        await_stream(&cluster, id, "orders", 1).await;
    }
    let new_leader = await_meta_leader(&cluster).await;
    assert_ne!(new_leader, leader);
    // A change refused by today's checks is refused by the new leader,
    // and nothing changes.
    let out = apply_cli(&cluster, &stream_yaml("orders", 0), &all);
    assert!(!out.status.success(), "{}", out.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_node_learns_the_resources_from_the_log_and_votes_in_the_meta_group() {
    let mut cluster = Cluster::start(ClusterOptions::default());
    await_meta_leader(&cluster).await;
    let out = apply_cli(&cluster, &stream_yaml("orders", 2), &cluster.client_addr(1));
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);

    let new = cluster.add_node();
    let address = cluster.node(new).addr();
    let peer = cluster.peer_addr(new);
    let out = cluster.cli(
        &[
            "cluster",
            "add-node",
            "--id",
            &new.to_string(),
            "--address",
            &address,
            "--peer-address",
            &peer,
            "--url",
            &cluster.client_addr(2),
        ],
        CLI,
    );
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains(&format!("added node {new}")),
        "{}",
        out.stdout
    );
    // From the log: the stream, which the new node's config does not
    // declare, is in its metadata.
    await_stream(&cluster, new, "orders", 2).await;
    let metadata = eventually(WAIT, "the new node's metadata of orders", || async {
        let m = cluster.client(new).metadata_for(&["orders"]).await.ok()?;
        m.stream("orders").cloned()
    })
    .await;
    assert_eq!(metadata.partition_count(), 2);
    // And it votes in the metadata group, as every node sees it.
    eventually(
        WAIT,
        "node 4 a voter of cluster/meta everywhere",
        || async {
            for id in cluster.ids() {
                let meta = cluster.meta_status(id).await?;
                let mut voters: Vec<u64> = meta["replication"]["voters"]
                    .as_array()?
                    .iter()
                    .filter_map(|v| v.as_u64())
                    .collect();
                voters.sort_unstable();
                if voters != [1, 2, 3, new] {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
}
