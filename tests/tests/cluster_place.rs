//! Placement by the metadata group's leader (docs/replication.md section
//! 2, "Placement"): 3 founders, a 4th node added online with `hadron
//! cluster add-node`, then `hadron apply` of a stream of 4 partitions and
//! 3 replicas. The leader places them over the 4 nodes, fewest partitions
//! first: every node records the same placement (`cluster.placement`),
//! the nodes hosting each partition report the same voters, which are
//! that placement; the added node, holding nothing before, holds a
//! replica of every new partition (the founders hold the harness's
//! `events` stream); and a publish to every partition is acknowledged.
//! The stream then grows by 2 partitions: only those are placed, the same
//! on every node, on the nodes holding fewest, and take publishes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hadron_tests::cluster::{Cluster, ClusterOptions};
use hadron_tests::eventually;
use hadron_tests::moves::voters_of;

const STREAM: &str = "placed";
const PARTITIONS: u32 = 4;
const WAIT: Duration = Duration::from_secs(30);
const CLI: Duration = Duration::from_secs(60);

fn urls(cluster: &Cluster, ids: &[u64]) -> String {
    let all: Vec<String> = ids.iter().map(|&id| cluster.client_addr(id)).collect();
    all.join(",")
}

/// The placement overrides for `STREAM` in the data dir `dir`: partition
/// -> voters (in preference order), from the lines marked `created`.
fn placed_on(dir: &Path) -> Vec<(u32, Vec<u64>)> {
    let path = dir.join("cluster.placement");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            match f[..] {
                [s, p, v, "created"] if s == STREAM => Some((
                    p.parse().ok()?,
                    v.split(',')
                        .map(|x| x.parse().ok())
                        .collect::<Option<_>>()?,
                )),
                _ => None,
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_applied_after_a_node_was_added_is_placed_on_it_too_the_same_on_every_node() {
    let mut cluster = Cluster::start(ClusterOptions::default());
    let founders = [1, 2, 3];
    let new = cluster.add_node();
    assert_eq!(new, 4);
    let out = cluster.add_node_cli(new, None, &urls(&cluster, &founders));
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);

    apply_partitions(&cluster, PARTITIONS);

    // Every node, the added one included, records the same placement.
    let dirs: Vec<PathBuf> = (1..=4)
        .map(|id| cluster.node(id).data_dir().to_path_buf())
        .collect();
    let placement = await_placement(&dirs, PARTITIONS).await;
    // Fewest partitions first: the founders hold the 4 partitions of 3
    // replicas of the harness's `events` stream (4 each), node 4 none, so
    // node 4 is in every new partition and leads at least one; the other
    // 8 replicas spread over the founders, 2 or 3 each.
    let held = |id: u64| placement.iter().filter(|(_, v)| v.contains(&id)).count();
    assert_eq!(held(new), PARTITIONS as usize, "{placement:?}");
    assert!(placement.iter().any(|(_, v)| v[0] == new), "{placement:?}");
    for id in founders {
        assert!((2..=3).contains(&held(id)), "node {id} in {placement:?}");
    }
    assert_eq!(founders.iter().map(|&id| held(id)).sum::<usize>(), 8);

    // The nodes hosting each partition report its voters: the placement.
    for (partition, voters) in &placement {
        let want: BTreeSet<u64> = voters.iter().copied().collect();
        let what = format!("{STREAM}/{partition} reporting the voters {voters:?}");
        eventually(WAIT, &what, || {
            let want = want.clone();
            let cluster = &cluster;
            async move {
                for id in 1..=4 {
                    let reported = cluster
                        .replica_status(id, STREAM, *partition)
                        .await
                        .as_ref()
                        .and_then(voters_of)
                        .map(|v| v.into_iter().collect::<BTreeSet<u64>>());
                    let hosts = want.contains(&id);
                    if hosts && reported.as_ref() != Some(&want) {
                        return None;
                    }
                    if !hosts && reported.is_some() {
                        return None;
                    }
                }
                Some(())
            }
        })
        .await;
    }

    // A publish to every partition is acknowledged (on a majority),
    // through a node hosting it (a node holding no replica of a partition
    // does not know its leader).
    for (partition, voters) in &placement {
        publish_first(&cluster, voters[0], *partition, "e").await;
    }

    // The stream grows by 2 partitions: only they are placed, on the
    // nodes holding the fewest (node 4, with 4 replicas against the
    // founders' 6 or 7, is in both); the first 4 keep their voters.
    apply_partitions(&cluster, PARTITIONS + 2);
    let grown = await_placement(&dirs, PARTITIONS + 2).await;
    assert_eq!(grown[..PARTITIONS as usize], placement[..], "{grown:?}");
    for (partition, voters) in &grown[PARTITIONS as usize..] {
        assert!(voters.contains(&new), "{partition}: {voters:?}");
        publish_first(&cluster, voters[0], *partition, "grown").await;
    }
}

/// Publishes the first event of `STREAM`'s `partition` through node
/// `via` (which hosts it): acknowledged at offset 0.
async fn publish_first(cluster: &Cluster, via: u64, partition: u32, tag: &str) {
    let publisher = cluster
        .client(via)
        .publisher_for(STREAM, "placed-publisher")
        .await
        .unwrap_or_else(|e| panic!("a publisher at node {via}: {e}"));
    let mut event = hadron::NewEvent::new("order.created", b"e".to_vec());
    event.id = format!("{tag}-{partition}");
    let ack = publisher
        .publish_to(partition, event)
        .await
        .unwrap_or_else(|e| panic!("{STREAM}/{partition}: {e}"));
    assert_eq!(ack.offset, 0, "{STREAM}/{partition}: {ack:?}");
}

/// `hadron apply` of `STREAM` with `partitions` partitions of 3 replicas,
/// through every node's URL.
fn apply_partitions(cluster: &Cluster, partitions: u32) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("a temp dir: {e}"));
    let file = dir.path().join("resources.yaml");
    let yaml = format!(
        "apiVersion: hadron.rs/v1beta1\nkind: Stream\nmetadata: {{ name: {STREAM} }}\nspec: {{ partitions: {partitions}, replicas: 3 }}\n"
    );
    std::fs::write(&file, yaml).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let all = urls(cluster, &[1, 2, 3, 4]);
    let out = cluster.cli(
        &["apply", "-f", &file.display().to_string(), "--url", &all],
        CLI,
    );
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
}

/// Waits until every data dir of `dirs` records the same placement of
/// `partitions` partitions of `STREAM`; that placement.
async fn await_placement(dirs: &[PathBuf], partitions: u32) -> Vec<(u32, Vec<u64>)> {
    eventually(WAIT, "the placement on every node", || {
        let got: Vec<_> = dirs.iter().map(|d| placed_on(d)).collect();
        let same = got.iter().all(|p| *p == got[0]) && got[0].len() == partitions as usize;
        async move { same.then(|| got[0].clone()) }
    })
    .await
}

/// A client whose only bootstrap node holds no replica of a partition
/// still publishes to it: that node's `NotLeader` names one of the
/// partition's replicas (another at each refusal), which knows the leader;
/// with that replica's node killed, the next refusal names another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_a_node_holding_no_replica_publishes_through_its_hints() {
    let mut cluster = Cluster::start(ClusterOptions {
        nodes: 4,
        resources: hadron_tests::moves::one_partition_stream("lone"),
        ..ClusterOptions::default()
    });
    let leader = cluster.await_leader_where("lone", 0, WAIT, |_| true).await;
    let voters = voters_of(&cluster.replica_status(leader, "lone", 0).await.unwrap()).unwrap();
    let outsider = cluster
        .ids()
        .into_iter()
        .find(|id| !voters.contains(id))
        .unwrap();
    let publisher = cluster
        .client(outsider)
        .publisher_for("lone", "outsider")
        .await
        .unwrap();
    let mut first = hadron::NewEvent::new("t", b"first".to_vec());
    first.id = "first".into();
    assert_eq!(publisher.publish_to(0, first).await.unwrap().offset, 0);

    cluster.node(leader).kill_now();
    let mut second = hadron::NewEvent::new("t", b"second".to_vec());
    second.id = "second".into();
    assert_eq!(publisher.publish_to(0, second).await.unwrap().offset, 1);
}
