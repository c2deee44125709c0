//! `hadron cluster rebalance` across real processes: 3 founders hold a
//! stream of 4 partitions of 3 replicas (4 replicas each); a 4th node is
//! added online and holds none. A dry run prints the moves and changes
//! nothing; the rebalance then moves 3 replicas onto the new node, under
//! durable publishes to partition 0, and spreads the preferred leaders:
//! every node ends holding 3 replicas and leading 1 partition, each
//! partition's nodes report the planned voters, and every event
//! acknowledged before or during the moves is read back once at its
//! offset (from the new node too, once it leads). A second rebalance has
//! nothing to move. Then `--drain 1` moves every replica off node 1, whose
//! partition directories are deleted, and `remove-node 1` is accepted;
//! nothing acknowledged is lost.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use hadron::NewEvent;
use hadron_tests::cluster::{Cluster, ClusterOptions};
use hadron_tests::moves::{
    Load, WAIT, await_more_acks, await_partition_moved, check_log, rebalance_moves,
};
use hadron_tests::{eventually, fetch_all};

const STREAM: &str = "orders";
const PARTITIONS: u32 = 4;
/// Events published to each partition before the rebalance.
const BEFORE: usize = 40;
const CLI: Duration = Duration::from_secs(90);

fn urls(cluster: &Cluster, ids: &[u64]) -> String {
    let all: Vec<String> = ids.iter().map(|&id| cluster.client_addr(id)).collect();
    all.join(",")
}

/// The moves of `STREAM` a rebalance printed: partition -> voters (the
/// preferred leader first).
fn moves_of(stdout: &str) -> BTreeMap<u32, Vec<u64>> {
    rebalance_moves(stdout)
        .into_iter()
        .filter(|(stream, _, _)| stream == STREAM)
        .map(|(_, partition, voters)| (partition, voters))
        .collect()
}

/// Publishes `BEFORE` events to every partition; id -> (partition,
/// offset).
async fn publish_each(cluster: &Cluster, tag: &str) -> HashMap<String, (u32, u64)> {
    let client = cluster.client_of_all();
    let mut acked = HashMap::new();
    for partition in 0..PARTITIONS {
        let publisher = client
            .publisher_for(STREAM, "rebalance")
            .await
            .unwrap_or_else(|e| panic!("a publisher of {STREAM}: {e}"));
        for i in 0..BEFORE {
            let id = format!("{tag}-{partition}-{i}");
            let event = NewEvent {
                id: id.clone(),
                ty: "order.created".into(),
                data: id.as_bytes().to_vec(),
                ..NewEvent::default()
            };
            let ok = publisher
                .publish_to(partition, event)
                .await
                .unwrap_or_else(|e| panic!("publish {id}: {e}"));
            acked.insert(id, (partition, ok.offset));
        }
    }
    acked
}

/// Every event of `acked` read back once, at its offset, from the
/// partition's leader.
async fn check_each(cluster: &Cluster, acked: &HashMap<String, (u32, u64)>) {
    for partition in 0..PARTITIONS {
        let leader = cluster
            .await_leader_where(STREAM, partition, WAIT, |_| true)
            .await;
        let records = fetch_all(&cluster.client(leader), STREAM, partition).await;
        let mut at: HashMap<&str, u64> = HashMap::new();
        for (offset, e) in &records {
            assert_eq!(e.data, e.id.as_bytes());
            if let Some(first) = at.insert(e.id.as_str(), *offset) {
                panic!("event {} stored twice: at {first} and {offset}", e.id);
            }
        }
        for (id, &(p, offset)) in acked.iter().filter(|(_, (p, _))| *p == partition) {
            assert_eq!(at.get(id.as_str()), Some(&offset), "event {id} of {p}");
        }
    }
}

/// Each partition's voters as its leader reports them (preference order
/// is not reported: sorted).
async fn voters_now(cluster: &Cluster) -> BTreeMap<u32, BTreeSet<u64>> {
    let mut all = BTreeMap::new();
    for partition in 0..PARTITIONS {
        let leader = cluster
            .await_leader_where(STREAM, partition, WAIT, |_| true)
            .await;
        let status = cluster
            .replica_status(leader, STREAM, partition)
            .await
            .unwrap_or_default();
        let voters = status["voters"]
            .as_array()
            .map(|v| v.iter().filter_map(serde_json::Value::as_u64).collect())
            .unwrap_or_default();
        all.insert(partition, voters);
    }
    all
}

/// Waits until every partition of `plan` has moved to its voters and is
/// led by its preferred leader (the first).
async fn await_plan(cluster: &Cluster, plan: &BTreeMap<u32, Vec<u64>>) {
    for (&partition, voters) in plan {
        await_partition_moved(cluster, STREAM, partition, voters).await;
        let preferred = voters[0];
        cluster
            .await_leader_where(STREAM, partition, WAIT, |l| l == preferred)
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_added_takes_its_share_by_rebalance_and_a_drained_node_can_be_removed() {
    let mut cluster = Cluster::start(ClusterOptions {
        resources: format!(
            "apiVersion: hadron.rs/v1beta1\nkind: Stream\nmetadata: {{ name: {STREAM} }}\nspec: {{ partitions: {PARTITIONS}, replicas: 3 }}\n"
        ),
        ..ClusterOptions::default()
    });
    let mut acked = publish_each(&cluster, "before").await;
    let new = cluster.add_node();
    let out = cluster.add_node_cli(new, None, &urls(&cluster, &[1, 2, 3]));
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    let all = urls(&cluster, &[1, 2, 3, 4]);
    let rebalance = |extra: &[&str]| {
        let mut args = vec!["cluster", "rebalance", "--url", &all];
        args.extend_from_slice(extra);
        cluster.cli(&args, CLI)
    };

    // A dry run plans: node 4 takes 3 replicas; nothing moves.
    let before = voters_now(&cluster).await;
    let out = rebalance(&["--dry-run"]);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    let planned = moves_of(&out.stdout);
    assert!(
        out.stdout.contains(&format!(
            "dry run: {} moves planned, none made",
            planned.len()
        )),
        "{}",
        out.stdout
    );
    let mut after = before.clone();
    for (p, v) in &planned {
        after.insert(*p, v.iter().copied().collect());
    }
    let held = |placed: &BTreeMap<u32, BTreeSet<u64>>, id: u64| {
        placed.values().filter(|v| v.contains(&id)).count()
    };
    assert_eq!(
        (1..=4).map(|id| held(&after, id)).collect::<Vec<_>>(),
        vec![3, 3, 3, 3],
        "{}",
        out.stdout
    );
    let leads: BTreeSet<u64> = (0..PARTITIONS)
        .map(|p| planned.get(&p).map_or_else(|| 0, |v| v[0]))
        .collect();
    assert!(
        leads.contains(&new),
        "node 4 is to lead one: {}",
        out.stdout
    );
    assert_eq!(
        voters_now(&cluster).await,
        before,
        "a dry run moves nothing"
    );

    // Refusals name what is wrong and change nothing.
    let out = rebalance(&["--drain", "9"]);
    assert!(!out.status.success());
    assert!(
        out.stderr
            .contains("node 9 to drain is not a node of this cluster"),
        "{}",
        out.stderr
    );
    let out = rebalance(&["--drain", "1,2"]);
    assert!(
        out.stderr
            .contains("stream orders has 3 replicas but 2 nodes would be left to hold them"),
        "{}",
        out.stderr
    );

    // The rebalance, under durable publishes to partition 0.
    let load = Load::start(cluster.client_of_all(), STREAM);
    await_more_acks(&load.count, 20).await;
    let out = rebalance(&[]);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    assert_eq!(moves_of(&out.stdout), planned, "{}", out.stdout);
    await_plan(&cluster, &planned).await;
    await_more_acks(&load.count, 20).await;
    let out = rebalance(&[]);
    assert!(
        out.stdout.contains("balanced: nothing to move"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    // The new node leads a partition now: reading it reads node 4's copy.
    check_each(&cluster, &acked).await;

    // Drain node 1, first one partition by a request sent twice with the
    // same change id, as the client resends one whose answer was lost:
    // the second is answered with what the first did and moves nothing
    // more, so a dry run still plans node 1's other two.
    let drain_one = hadron_wire::Message::Rebalance(hadron_wire::Rebalance {
        drain: vec![1],
        moves_max: 1,
        dry_run: false,
        change_id: 0x5eed,
    });
    for attempt in 0..2 {
        let reply = cluster.meta_request(&drain_one).await;
        assert!(
            matches!(
                reply,
                hadron_tests::Frame::Other {
                    name: "ApplyOk",
                    ..
                }
            ),
            "attempt {attempt}: {reply:?}"
        );
    }
    let out = rebalance(&["--drain", "1", "--dry-run"]);
    assert_eq!(moves_of(&out.stdout).len(), 2, "{}", out.stdout);
    eventually(WAIT, "one partition moved off node 1", || async {
        (held(&voters_now(&cluster).await, 1) == 2).then_some(())
    })
    .await;
    // Then the rest: every replica goes elsewhere; then it can be removed.
    let out = rebalance(&["--drain", "1"]);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    let drained = moves_of(&out.stdout);
    assert_eq!(drained.len(), 2, "node 1 held 2 more: {}", out.stdout);
    assert!(drained.values().all(|v| !v.contains(&1)), "{}", out.stdout);
    await_plan(&cluster, &drained).await;
    let now = voters_now(&cluster).await;
    assert_eq!(held(&now, 1), 0, "{now:?}");
    assert_eq!([2, 3, 4].map(|id| held(&now, id)), [4, 4, 4], "{now:?}");
    let dir = cluster.node(1).data_dir().join("streams").join(STREAM);
    eventually(WAIT, "node 1's partition directories deleted", || async {
        let left = std::fs::read_dir(&dir).map_or(0, |d| d.count());
        (left == 0).then_some(())
    })
    .await;
    let out = cluster.cli(&["cluster", "remove-node", "1", "--url", &all], CLI);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);

    let during = load.stop().await;
    let target: Vec<u64> = now[&0].iter().copied().collect();
    check_log(&cluster, STREAM, &target, &during).await;
    acked.extend(publish_each(&cluster, "after").await);
    check_each(&cluster, &acked).await;
}
