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
//!   `cluster/meta`;
//! - the node leading the metadata group, drained and removed: the others
//!   (which stop talking to it once they apply the removal) elect one of
//!   themselves, which removes it from the group's voters, and go on as a
//!   group of three;
//! - a follower whose metadata log was damaged while it was down cuts it
//!   before the damage at start, abstains until refilled from its peers,
//!   applies nothing twice, and takes changes again;
//! - with `metaVoters: 3`, a 4th node added learns the metadata log as a
//!   learner of `cluster/meta` (takes changes sent to it, has them
//!   applied) without voting; once a voter is drained and removed, it is
//!   promoted: the group is three voters again;
//! - with `metaCompactEveryEntries: 3`, the metadata log is compacted
//!   (its first index passes 1) while a node is down for 10 applies; the
//!   node, restarted behind the leader's first index, catches up by a
//!   snapshot descriptor and the `State` entry, and ends with every
//!   stream.

use std::time::Duration;

use hadron_tests::cluster::{Cluster, ClusterOptions};
use hadron_tests::moves::{
    await_moved, await_partition_moved, move_cli, one_partition_stream, rebalance_moves,
};
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
    // Its leader is one of the nodes (not necessarily the one seen above:
    // the lead may have moved since).
    let named = meta["leader"].as_u64();
    assert!(
        named.is_some_and(|id| cluster.ids().contains(&id)),
        "{meta}"
    );
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
    let out = cluster.add_node_cli(new, None, &cluster.client_addr(2));
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

/// Flips every bit of byte `at` of `path`; returns the byte it held.
fn flip(path: &std::path::Path, at: usize) -> u8 {
    let mut bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let was = bytes[at];
    bytes[at] ^= 0xff;
    std::fs::write(path, &bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    was
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_metadata_log_is_damaged_cuts_it_and_refills_it_from_its_peers() {
    let mut cluster = Cluster::start(ClusterOptions::default());
    let leader = await_meta_leader(&cluster).await;
    let all = urls(&cluster, &cluster.ids());
    for name in ["a", "b", "c"] {
        let out = apply_cli(&cluster, &stream_yaml(name, 1), &all);
        assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    }
    let follower = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
    let applied = eventually(
        WAIT,
        "the follower at the leader's applied index",
        || async {
            let at_leader = cluster.meta_status(leader).await?["applied"].as_u64()?;
            let mine = cluster.meta_status(follower).await?["applied"].as_u64()?;
            (mine == at_leader).then_some(mine)
        },
    )
    .await;

    // A byte in the middle of the follower's metadata log (the entries of
    // the applies: below its durable watermark) flipped while it is down.
    cluster.node(follower).kill_now();
    let dir = cluster
        .node(follower)
        .data_dir()
        .join("cluster")
        .join("meta");
    let mut logs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    let segment = logs
        .first()
        .unwrap_or_else(|| panic!("no segment in {}", dir.display()));
    let bytes = std::fs::read(segment).unwrap();
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let at = end / 2;
    let byte = flip(segment, at);
    cluster.node(follower).restart();

    // It starts, cuts before the damage, abstains until refilled, and
    // applies nothing twice (its applied index went on from where it was).
    eventually(WAIT, "the follower's metadata log repaired", || async {
        let meta = cluster.meta_status(follower).await?;
        let whole = std::fs::read(segment).ok()?.get(at) == Some(&byte);
        let done = meta["replication"]["recovering"] == false;
        (done && whole && meta["applied"].as_u64()? >= applied).then_some(())
    })
    .await;
    let said = cluster.node(follower).log();
    assert!(
        said.contains("cutting the log there and refilling it from the leader"),
        "{said}"
    );
    assert!(!said.contains("not applied"), "{said}");

    // A change through it reaches every node, itself included.
    let out = apply_cli(
        &cluster,
        &stream_yaml("d", 2),
        &cluster.client_addr(follower),
    );
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    for id in cluster.ids() {
        for (name, partitions) in [("a", 1), ("b", 1), ("c", 1), ("d", 2)] {
            await_stream(&cluster, id, name, partitions).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_down_past_the_metadata_logs_compaction_catches_up_from_its_state_entry() {
    // Small segments and big applies (a comment pads each), so that the
    // log rolls segments and compaction deletes the first ones.
    let mut cluster = Cluster::start(ClusterOptions {
        settings: "segmentBytes: 65536\nmetaCompactEveryEntries: 3\n".into(),
        ..ClusterOptions::default()
    });
    let leader = await_meta_leader(&cluster).await;
    let down = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
    let out = apply_cli(
        &cluster,
        &stream_yaml("first", 1),
        &urls(&cluster, &cluster.ids()),
    );
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    await_stream(&cluster, down, "first", 1).await;
    cluster.node(down).stop();
    let up: Vec<u64> = cluster.ids().into_iter().filter(|&id| id != down).collect();
    let pad = format!("# {}\n", "x".repeat(12 << 10));
    for i in 0..10 {
        let yaml = format!("{pad}{}", stream_yaml(&format!("s{i}"), 1));
        let out = apply_cli(&cluster, &yaml, &urls(&cluster, &up));
        assert!(
            out.status.success(),
            "apply {i}: {}\n{}",
            out.stdout,
            out.stderr
        );
    }
    for &id in &up {
        let first = eventually(
            WAIT,
            &format!("node {id}'s metadata log compacted"),
            || async {
                let first = cluster.meta_status(id).await?["first_index"].as_u64()?;
                (first > 1).then_some(first)
            },
        )
        .await;
        assert!(
            first > 3,
            "node {id}'s log starts at {first}, past the node down's"
        );
    }
    cluster.node(down).restart();
    for i in 0..10 {
        await_stream(&cluster, down, &format!("s{i}"), 1).await;
    }
    await_stream(&cluster, down, "first", 1).await;
    // It caught up past the others' first index: its own log restarted
    // there (a snapshot descriptor), and it applied the State entry.
    let meta = cluster.meta_status(down).await.unwrap();
    assert!(meta["first_index"].as_u64().unwrap() > 1, "{meta}");
    let log = cluster.node(down).log();
    assert!(
        log.contains("skipping to its first State"),
        "node {down} skipped to a State entry:\n{log}"
    );
    // And it takes changes again.
    let out = apply_cli(
        &cluster,
        &stream_yaml("after", 2),
        &urls(&cluster, &cluster.ids()),
    );
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    await_stream(&cluster, down, "after", 2).await;
}

/// A pipeline on `wide` of 64 stages with names of 63 bytes: several
/// KiB of the metadata each.
fn wide_pipeline(name: &str) -> String {
    let mut yaml = format!(
        "apiVersion: hadron.rs/v1beta1\nkind: Pipeline\nmetadata:\n  name: {name}\nspec:\n  \
         sourceStream: wide\n  triggers:\n    - {name}.created\n  stages:\n"
    );
    for stage in 0..64 {
        yaml.push_str(&format!("    - name: s{stage:02}-{}\n", "x".repeat(59)));
    }
    yaml
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_would_make_the_metadata_too_large_for_one_state_entry_is_refused() {
    // With 64 KiB segments the metadata log's entries hold 64 KiB: its
    // `State` entries (the whole metadata) must fit, or it could never
    // be compacted again (it used to go on taking changes, logging that
    // the State was over the limit, and grow for good).
    let mut cluster = Cluster::start(ClusterOptions {
        settings: "segmentBytes: 65536\nmetaCompactEveryEntries: 2\n".into(),
        ..ClusterOptions::default()
    });
    let all = urls(&cluster, &cluster.ids());
    let out = apply_cli(&cluster, &stream_yaml("wide", 1), &all);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    let mut refused = None;
    for i in 0..40 {
        let out = apply_cli(&cluster, &wide_pipeline(&format!("p{i}")), &all);
        if !out.status.success() {
            refused = Some((i, out));
            break;
        }
    }
    let (refused, out) = refused.expect("an apply refused before 40 pipelines of several KiB");
    assert!(
        refused >= 2,
        "pipelines p0 and p1 fit: refused at p{refused}"
    );
    assert!(
        out.stderr.contains("the cluster's metadata")
            && out.stderr.contains("over the 65536")
            && out.stderr.contains("segmentBytes")
            && out.stderr.contains("nothing was changed"),
        "{}",
        out.stderr
    );
    // Nothing changed: no node has the refused pipeline; each has the last
    // one accepted. The log was compacted meanwhile, with no State over
    // its limit.
    for id in cluster.ids() {
        let last = format!("p{}", refused - 1);
        eventually(WAIT, &format!("node {id} has pipeline {last}"), || async {
            let doc = cluster.status_doc(id).await?;
            let names: Vec<String> = doc["pipelines"]
                .as_array()?
                .iter()
                .filter_map(|p| p["name"].as_str().map(String::from))
                .collect();
            names.contains(&last).then_some(names)
        })
        .await;
        let doc = cluster.status_doc(id).await.unwrap();
        let text = doc["pipelines"].to_string();
        assert!(!text.contains(&format!("\"p{refused}\"")), "{text}");
        let first = cluster.meta_status(id).await.unwrap()["first_index"].as_u64();
        assert!(
            first > Some(1),
            "node {id}'s metadata log compacted: {first:?}"
        );
        let log = cluster.node(id).log();
        assert!(
            !log.contains("over the metadata log's batch limit"),
            "{log}"
        );
    }
    // A smaller change still goes through.
    let out = apply_cli(&cluster, &stream_yaml("after", 1), &all);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    await_stream(&cluster, 1, "after", 1).await;
}

/// A token revoke carries the client's change id: sent again after the
/// metadata group applied it (its answer lost, or its leader's lead lost
/// after proposing it, as the client then resends), it is answered as it
/// was instead of `UnknownToken`; a revoke of the same name under another
/// id is a new change, refused as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoke_sent_again_with_its_change_id_is_answered_as_it_was() {
    use hadron_tests::Frame;
    use hadron_wire::{ErrorCode, Message};
    let cluster = Cluster::start(ClusterOptions::default());
    await_meta_leader(&cluster).await;
    let hash = [7u8; 32];
    let create = Message::TokenCreate(hadron_wire::TokenCreate {
        name: "ops",
        secret_sha256: &hash,
        scope: hadron_wire::TokenScope {
            all: true,
            ..hadron_wire::TokenScope::default()
        },
    });
    let applied = |f: &Frame| {
        matches!(
            f,
            Frame::Other {
                name: "ApplyOk",
                ..
            }
        )
    };
    let reply = cluster.meta_request(&create).await;
    assert!(applied(&reply), "{reply:?}");
    let revoke = |change_id| {
        Message::TokenRevoke(hadron_wire::TokenRevoke {
            name: "ops",
            change_id,
        })
    };
    for attempt in 0..2 {
        let reply = cluster.meta_request(&revoke(0x5eed)).await;
        assert!(applied(&reply), "attempt {attempt}: {reply:?}");
    }
    let reply = cluster.meta_request(&revoke(0x5eee)).await;
    match reply {
        Frame::Error { code, message, .. } => {
            assert_eq!(code, ErrorCode::InvalidRequest, "{message}");
            assert!(message.contains("no token named \"ops\""), "{message}");
        }
        other => panic!("a new revoke of a revoked token: {other:?}"),
    }
}

/// The metadata group's voters as node `id` knows them, in id order.
async fn meta_voters(cluster: &Cluster, id: u64) -> Option<Vec<u64>> {
    meta_members(cluster, id, "voters").await
}

/// The metadata group's `voters` or `learners` as node `id` knows them,
/// in id order.
async fn meta_members(cluster: &Cluster, id: u64, which: &str) -> Option<Vec<u64>> {
    let meta = cluster.meta_status(id).await?;
    let members = meta["replication"][which].as_array()?;
    let mut ids: Vec<u64> = members
        .iter()
        .map(serde_json::Value::as_u64)
        .collect::<Option<_>>()?;
    ids.sort_unstable();
    Some(ids)
}

/// Waits until every node of `on` knows the metadata group's voters and
/// learners as `voters` and `learners`.
async fn await_meta_members(cluster: &Cluster, on: &[u64], voters: &[u64], learners: &[u64]) {
    let what = format!("cluster/meta voters {voters:?} and learners {learners:?} on {on:?}");
    eventually(WAIT, &what, || async {
        for &id in on {
            let v = meta_members(cluster, id, "voters").await?;
            let l = meta_members(cluster, id, "learners").await?;
            if (v.as_slice(), l.as_slice()) != (voters, learners) {
                return None;
            }
        }
        Some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_past_meta_voters_learns_the_log_and_is_promoted_when_a_voter_is_removed() {
    let mut cluster = Cluster::start(ClusterOptions {
        resources: one_partition_stream("orders"),
        settings: "metaVoters: 3\n".into(),
        ..ClusterOptions::default()
    });
    let leader = await_meta_leader(&cluster).await;
    let new = cluster.add_node();
    let out = cluster.add_node_cli(new, None, &cluster.client_addr(leader));
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    let all = cluster.ids();
    await_meta_members(&cluster, &all, &[1, 2, 3], &[new]).await;

    // The learner takes a change (it follows NotLeader to the leader) and
    // applies it from the log.
    let out = apply_cli(
        &cluster,
        &stream_yaml("later", 2),
        &cluster.client_addr(new),
    );
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    for &id in &all {
        await_stream(&cluster, id, "later", 2).await;
    }
    assert_eq!(meta_voters(&cluster, new).await, Some(vec![1, 2, 3]));

    // A voter other than the leader, drained and removed: the learner is
    // promoted.
    let gone = all
        .iter()
        .copied()
        .find(|&id| id != leader && id != new)
        .unwrap_or_else(|| panic!("a founder not leading in {all:?}"));
    let rest: Vec<u64> = all.iter().copied().filter(|&id| id != gone).collect();
    let out = cluster.cli(
        &[
            "cluster",
            "rebalance",
            "--drain",
            &gone.to_string(),
            "--url",
            &urls(&cluster, &all),
        ],
        CLI,
    );
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    let moves = rebalance_moves(&out.stdout);
    assert!(!moves.is_empty(), "{}", out.stdout);
    for (stream, partition, voters) in &moves {
        await_partition_moved(&cluster, stream, *partition, voters).await;
    }
    let out = cluster.cli(
        &[
            "cluster",
            "remove-node",
            &gone.to_string(),
            "--url",
            &urls(&cluster, &all),
        ],
        CLI,
    );
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    await_meta_members(&cluster, &rest, &rest, &[]).await;
    let out = apply_cli(&cluster, &stream_yaml("after", 1), &urls(&cluster, &rest));
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    for &id in &rest {
        await_stream(&cluster, id, "after", 1).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_node_that_leads_the_metadata_group_leaves_a_group_of_the_others() {
    let cluster = Cluster::start(ClusterOptions {
        nodes: 4,
        resources: one_partition_stream("orders"),
        ..ClusterOptions::default()
    });
    let leader = await_meta_leader(&cluster).await;
    let rest: Vec<u64> = cluster
        .ids()
        .into_iter()
        .filter(|&id| id != leader)
        .collect();
    // Drained first: a node still placed is refused.
    let to: Vec<String> = rest.iter().map(u64::to_string).collect();
    let out = move_cli("orders", &to.join(","), &urls(&cluster, &cluster.ids()));
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    await_moved(&cluster, "orders", &rest).await;
    let out = cluster.cli(
        &[
            "cluster",
            "remove-node",
            &leader.to_string(),
            "--url",
            &urls(&cluster, &cluster.ids()),
        ],
        CLI,
    );
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);

    // The others go on without it: one of them leads, and the group's
    // voters are the three of them on each.
    eventually(
        WAIT,
        "the metadata group without the removed node",
        || async {
            for &id in &rest {
                if meta_voters(&cluster, id).await? != rest {
                    return None;
                }
            }
            let now = cluster.meta_leader().await?;
            (now != leader).then_some(())
        },
    )
    .await;

    // A change through the others reaches each of them.
    let out = apply_cli(&cluster, &stream_yaml("after", 1), &urls(&cluster, &rest));
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    for &id in &rest {
        await_stream(&cluster, id, "after", 1).await;
    }
}
