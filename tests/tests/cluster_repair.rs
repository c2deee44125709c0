//! A follower's damaged log repaired from its peers across real processes
//! (docs/replication.md section 10): 3 nodes, one partition of 3 replicas
//! on 64 KiB segments, durable publishes throughout. A follower is
//! SIGKILLed and a byte of its log flipped, (a) in its first sealed
//! segment, the segment's index file removed (so that the engine's open
//! scans it whole, as after a crash), then (b) in its active segment below
//! the durable watermark; each time it restarts, cuts its log before the
//! damage, refills it from the leader and votes again (no `recovering` in
//! its status), the flipped byte back as it was. Afterwards every
//! acknowledged event is read back once at its offset, and the repaired
//! node's segment files are byte for byte another replica's.
//!
//! A follower whose `log.meta` is lost (both slots bad) starts with that
//! replica offline (`server/src/shard/offline.rs`), naming the file and
//! what to do, changing no file: it serves its other partition, the group
//! goes on with the other two replicas, and a move of the partition off
//! the node makes the node delete the replica's directory. Restored
//! instead, it rejoins at its restart.

use std::path::{Path, PathBuf};

use hadron::NewEvent;
use hadron_tests::cluster::{Cluster, ClusterOptions};
use hadron_tests::moves::{
    Load, WAIT, await_more_acks, await_moved, check_log, move_cli, one_partition_stream,
};
use hadron_tests::{eventually, fetch_all};

const STREAM: &str = "orders";

fn options() -> ClusterOptions {
    ClusterOptions {
        resources: one_partition_stream(STREAM),
        settings: "segmentBytes: 65536\n".into(),
        ..ClusterOptions::default()
    }
}

fn log_dir(cluster: &mut Cluster, id: u64) -> PathBuf {
    cluster
        .node(id)
        .data_dir()
        .join("streams")
        .join(STREAM)
        .join("00000")
        .join("log")
}

/// The segment files of a log directory, oldest first.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| Some(e.ok()?.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "log"));
    files.sort();
    files
}

/// Where a segment's data ends: after its last nonzero byte.
fn data_end(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1)
}

/// Flips every bit of byte `at` of `path`; returns the byte it held.
fn flip(path: &Path, at: usize) -> u8 {
    let mut bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let was = bytes[at];
    bytes[at] ^= 0xff;
    if let Err(e) = std::fs::write(path, &bytes) {
        panic!("{}: {e}", path.display());
    }
    was
}

/// The leader's commit index now (a target: under load it moves on, so a
/// follower compared with it at each read may trail it at every read).
async fn leader_commit(cluster: &Cluster) -> u64 {
    eventually(WAIT, "the leader's commit index", || async {
        let leader = cluster.leader(STREAM, 0).await?;
        cluster.replica_status(leader, STREAM, 0).await?["commit"].as_u64()
    })
    .await
}

/// Node `id` holds every entry through `target` (a commit index of the
/// leader's).
async fn await_caught_up(cluster: &Cluster, id: u64, target: u64) {
    eventually(WAIT, "the follower caught up", || async move {
        let mine = cluster.replica_status(id, STREAM, 0).await?;
        (mine["last_index"].as_u64()? >= target).then_some(())
    })
    .await;
}

/// Node `id` recovered: its replica votes again and holds what the
/// leader had committed, and byte `at` of `path` is `byte` again.
async fn await_repaired(cluster: &Cluster, id: u64, path: &Path, at: usize, byte: u8) {
    let target = leader_commit(cluster).await;
    await_caught_up(cluster, id, target).await;
    eventually(WAIT, "the damaged follower repaired", || async move {
        let mine = cluster.replica_status(id, STREAM, 0).await?;
        let whole = std::fs::read(path).ok()?.get(at) == Some(&byte);
        (mine["recovering"] == false && whole).then_some(())
    })
    .await;
}

/// `replicas` with `out` replaced by a node holding none of them.
fn replaced(cluster: &Cluster, replicas: &[u64], out: u64) -> Vec<u64> {
    let spare = cluster
        .ids()
        .into_iter()
        .find(|id| !replicas.contains(id))
        .unwrap_or_else(|| panic!("a node outside {replicas:?}"));
    let mut target: Vec<u64> = replicas.iter().copied().filter(|&id| id != out).collect();
    target.push(spare);
    target
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_damaged_in_a_sealed_and_its_active_segment_repairs_from_its_peers() {
    let mut cluster = Cluster::start(options());
    let leader = cluster.await_leader_where(STREAM, 0, WAIT, |_| true).await;
    let follower = *cluster.ids().iter().find(|&&id| id != leader).unwrap();
    let dir = log_dir(&mut cluster, follower);
    let load = Load::start(cluster.client_of_all(), STREAM);
    eventually(WAIT, "three segments on the follower", || async {
        (segments(&dir).len() >= 3).then_some(())
    })
    .await;

    // (a) The first sealed segment, its index file gone.
    cluster.node(follower).kill_now();
    let first = segments(&dir)[0].clone();
    let len = data_end(&std::fs::read(&first).unwrap());
    let at = len / 2;
    let byte = flip(&first, at);
    std::fs::remove_file(first.with_extension("idx")).unwrap();
    cluster.node(follower).restart();
    await_repaired(&cluster, follower, &first, at, byte).await;
    await_more_acks(&load.count, 30).await;

    // (b) The active segment, below its durable watermark: the first
    // batch of a segment with several kilobytes of data acknowledged.
    eventually(WAIT, "data in the follower's active segment", || async {
        let active = segments(&dir).pop()?;
        (data_end(&std::fs::read(active).ok()?) > 8 << 10).then_some(())
    })
    .await;
    cluster.node(follower).kill_now();
    let active = segments(&dir).pop().unwrap();
    let at = 100;
    let byte = flip(&active, at);
    cluster.node(follower).restart();
    await_repaired(&cluster, follower, &active, at, byte).await;
    await_more_acks(&load.count, 30).await;

    // Each start found the damage and cut there (`replica_repair.rs`).
    let said = cluster.node(follower).log();
    assert_eq!(
        said.matches("cutting the log there and refilling it from the leader")
            .count(),
        2,
        "{said}"
    );
    assert!(
        said.contains(&format!("{} is damaged at byte", first.display())),
        "{said}"
    );
    assert!(
        said.contains(&format!("{} is damaged at byte", active.display())),
        "{said}"
    );

    let acked = load.stop().await;
    let voters = cluster.ids();
    check_log(&cluster, STREAM, &voters, &acked).await;
    let other = *voters.iter().find(|&&id| id != follower).unwrap();
    let theirs = log_dir(&mut cluster, other);
    let mine = segments(&dir);
    let names = |v: &[PathBuf]| -> Vec<_> {
        v.iter()
            .map(|p| p.file_name().map(|n| n.to_owned()))
            .collect()
    };
    assert_eq!(names(&mine), names(&segments(&theirs)), "the same segments");
    for path in &mine {
        let a = std::fs::read(path).unwrap();
        let b = std::fs::read(theirs.join(path.file_name().unwrap())).unwrap();
        assert!(
            a[..data_end(&a)] == b[..data_end(&b)],
            "{} differs from node {other}'s",
            path.display()
        );
    }
}

/// Every file of `dir` (not recursive) and its bytes.
fn files_of(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, bytes)
        })
        .collect()
}

/// Node `id`'s partition 0 directory of `stream`.
fn partition_dir(cluster: &mut Cluster, id: u64, stream: &str) -> PathBuf {
    cluster
        .node(id)
        .data_dir()
        .join("streams")
        .join(stream)
        .join("00000")
}

/// Every file of a partition's `log` and `groups` directories, and its
/// bytes.
fn partition_files(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut all = files_of(&dir.join("log"));
    all.extend(files_of(&dir.join("groups")));
    all
}

/// Overwrites both slots of `dir`'s `log.meta` (its node down): its Raft
/// term and vote are gone. Returns the file's path and its bytes before.
fn lose_log_meta(dir: &Path) -> (PathBuf, Vec<u8>) {
    let meta = dir.join("log.meta");
    let kept = std::fs::read(&meta).unwrap_or_else(|e| panic!("{}: {e}", meta.display()));
    if let Err(e) = std::fs::write(&meta, vec![0xa5; kept.len()]) {
        panic!("{}: {e}", meta.display());
    }
    (meta, kept)
}

/// Node `id` shows its replica of `STREAM`/0 offline, naming the lost file.
async fn await_offline(cluster: &Cluster, id: u64, meta: &Path) -> String {
    let why = eventually(WAIT, "the replica offline in the node's status", || async {
        let r = cluster.replica_status(id, STREAM, 0).await?;
        r["stopped"].as_str().map(str::to_owned)
    })
    .await;
    assert!(why.starts_with("offline on this node: "), "{why}");
    assert!(
        why.contains(&format!(
            "{}: neither of its two slots is valid",
            meta.display()
        )),
        "{why}"
    );
    why
}

/// The nodes whose status lists `stream`'s partition 0 (its replicas).
async fn hosts(cluster: &Cluster, stream: &str, replicas: usize) -> Vec<u64> {
    eventually(WAIT, "every replica listed", || async {
        let mut found = Vec::new();
        for id in cluster.ids() {
            if cluster.replica_status(id, stream, 0).await.is_some() {
                found.push(id);
            }
        }
        (found.len() == replicas).then_some(found)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_log_meta_is_lost_takes_only_that_partition_offline_until_moved_off() {
    const OTHER: &str = "other";
    let mut cluster = Cluster::start(ClusterOptions {
        nodes: 4,
        resources: format!(
            "{}---\n{}",
            one_partition_stream(STREAM),
            one_partition_stream(OTHER)
        ),
        ..options()
    });
    let leader = cluster.await_leader_where(STREAM, 0, WAIT, |_| true).await;
    let replicas = hosts(&cluster, STREAM, 3).await;
    let others = hosts(&cluster, OTHER, 3).await;
    // Two sets of 3 of 4 nodes share 2: one of them does not lead STREAM.
    let follower = *replicas
        .iter()
        .find(|&&id| id != leader && others.contains(&id))
        .unwrap();
    let dir = partition_dir(&mut cluster, follower, STREAM);
    let load = Load::start(cluster.client_of_all(), STREAM);
    await_more_acks(&load.count, 30).await;

    cluster.node(follower).kill_now();
    let (meta, _) = lose_log_meta(&dir.join("log"));
    let before = partition_files(&dir);
    cluster.node(follower).restart();
    await_offline(&cluster, follower, &meta).await;
    let said = cluster.node(follower).log();
    let line = "stream orders partition 0 is offline on this node";
    assert_eq!(said.matches(line).count(), 1, "one error line: {said}");
    assert!(said.contains("Restore the directory"), "{said}");
    // `hadron cluster status` shows it too.
    let doc = cluster.cluster_status_json();
    let rows = doc["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["stream"] == STREAM)
        .unwrap()["replicas"]
        .clone();
    let mine = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["node_id"] == follower)
        .unwrap();
    assert!(
        mine["stopped"]
            .as_str()
            .is_some_and(|s| s.starts_with("offline on this node")),
        "{rows}"
    );

    // The node serves its other partition: published through it, read
    // back at the offset acknowledged.
    let client = cluster.client(follower);
    let event = NewEvent {
        id: "served".into(),
        ty: "t".into(),
        data: b"served".to_vec(),
        ..NewEvent::default()
    };
    let publisher = client.publisher_for(OTHER, "offline-test").await.unwrap();
    let at = publisher.publish_to(0, event).await.unwrap().offset;
    let read = fetch_all(&client, OTHER, 0).await;
    assert!(
        read.iter()
            .any(|(o, e)| *o == at && e.id == "served" && e.data == b"served"),
        "{read:?}"
    );
    // The offline partition stays available through the other two (the
    // client asking the node is sent to another replica).
    await_more_acks(&load.count, 30).await;
    let event = NewEvent {
        id: "redirected".into(),
        ty: "t".into(),
        data: b"redirected".to_vec(),
        ..NewEvent::default()
    };
    let publisher = client.publisher_for(STREAM, "offline-test").await.unwrap();
    publisher.publish_to(0, event).await.unwrap();
    assert!(
        before == partition_files(&dir),
        "the offline replica's files are unchanged"
    );

    // Moved off the node: the node deletes the directory, no restart.
    let target = replaced(&cluster, &replicas, follower);
    let to: Vec<String> = target.iter().map(u64::to_string).collect();
    let urls: Vec<String> = cluster
        .ids()
        .iter()
        .map(|&id| cluster.client_addr(id))
        .collect();
    let out = move_cli(STREAM, &to.join(","), &urls.join(","));
    assert!(out.status.success(), "{}", out.stderr);
    eventually(WAIT, "the offline replica's directory deleted", || async {
        (!dir.exists()).then_some(())
    })
    .await;
    assert!(cluster.replica_status(follower, STREAM, 0).await.is_none());
    await_moved(&cluster, STREAM, &target).await;
    await_more_acks(&load.count, 30).await;
    let acked = load.stop().await;
    check_log(&cluster, STREAM, &target, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_log_meta_is_restored_rejoins_at_its_restart() {
    let mut cluster = Cluster::start(options());
    let leader = cluster.await_leader_where(STREAM, 0, WAIT, |_| true).await;
    let follower = *cluster.ids().iter().find(|&&id| id != leader).unwrap();
    let dir = log_dir(&mut cluster, follower);
    let load = Load::start(cluster.client_of_all(), STREAM);
    await_more_acks(&load.count, 30).await;

    cluster.node(follower).kill_now();
    let (meta, kept) = lose_log_meta(&dir);
    let before = files_of(&dir);
    cluster.node(follower).restart();
    await_offline(&cluster, follower, &meta).await;
    await_more_acks(&load.count, 30).await;
    assert!(
        before == files_of(&dir),
        "the offline replica changed no file"
    );

    // The operator restores it (a copy taken while the node was down) and
    // restarts the node: the replica opens, catches up, and nothing
    // acknowledged was lost.
    cluster.node(follower).kill_now();
    std::fs::write(&meta, &kept).unwrap();
    cluster.node(follower).restart();
    let target = leader_commit(&cluster).await;
    await_caught_up(&cluster, follower, target).await;
    await_more_acks(&load.count, 30).await;
    let acked = load.stop().await;
    check_log(&cluster, STREAM, &cluster.ids(), &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_a_lost_log_meta_moved_off_while_its_node_was_down_is_deleted_after_its_start()
 {
    let mut cluster = Cluster::start(ClusterOptions {
        nodes: 4,
        ..options()
    });
    let leader = cluster.await_leader_where(STREAM, 0, WAIT, |_| true).await;
    let replicas = hosts(&cluster, STREAM, 3).await;
    let follower = *replicas.iter().find(|&&id| id != leader).unwrap();
    let dir = partition_dir(&mut cluster, follower, STREAM);
    let load = Load::start(cluster.client_of_all(), STREAM);
    await_more_acks(&load.count, 30).await;

    // Lost while the node is down, and moved off meanwhile.
    cluster.node(follower).kill_now();
    lose_log_meta(&dir.join("log"));
    let target = replaced(&cluster, &replicas, follower);
    let to: Vec<String> = target.iter().map(u64::to_string).collect();
    let urls: Vec<String> = target.iter().map(|&id| cluster.client_addr(id)).collect();
    let out = move_cli(STREAM, &to.join(","), &urls.join(","));
    assert!(out.status.success(), "{}", out.stderr);
    await_moved(&cluster, STREAM, &target).await;

    // Started, the node learns the move and deletes the replica: no
    // restore needed, nothing of it served.
    cluster.node(follower).restart();
    eventually(WAIT, "the offline replica's directory deleted", || async {
        (!dir.exists()).then_some(())
    })
    .await;
    eventually(WAIT, "the replica gone from the node's status", || async {
        cluster.status_doc(follower).await?;
        cluster
            .replica_status(follower, STREAM, 0)
            .await
            .is_none()
            .then_some(())
    })
    .await;
    await_more_acks(&load.count, 30).await;
    let acked = load.stop().await;
    check_log(&cluster, STREAM, &target, &acked).await;
}
