//! Replication across real processes: 3 nodes on loopback, a stream with
//! 3 replicas, durable publishes under leader SIGKILLs and link cuts.
//! Afterwards every acknowledged event is readable from the cluster's
//! leader, once, at the offset it was acknowledged at, and every replica
//! holds the same log.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed set-up step must fail the test at once"
)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hadron::{Client, Error, NewEvent};
use hadron_tests::cluster::{Cluster, ClusterOptions};
use hadron_tests::pki::{client_tls, cluster_pki};
use hadron_tests::{Frame, RawConn, fetch_all, run_cli};
use hadron_wire::Message;

const STREAM: &str = "orders";

fn resources(partitions: u32) -> String {
    format!(
        "apiVersion: hadron.rs/v1beta1\nkind: Stream\nmetadata: {{ name: {STREAM} }}\nspec: {{ partitions: {partitions}, replicas: 3 }}\n"
    )
}

fn event(id: &str) -> NewEvent {
    NewEvent {
        id: id.to_owned(),
        ty: "order.created".into(),
        data: id.as_bytes().to_vec(),
        ..NewEvent::default()
    }
}

/// The leader of `partition` (other than `not`), once one is known.
async fn await_leader(cluster: &mut Cluster, partition: u32, not: Option<u64>) -> u64 {
    cluster
        .await_leader_where(STREAM, partition, Duration::from_secs(20), |id| {
            Some(id) != not
        })
        .await
}

/// Waits until every running node's replica of `partition` has applied the
/// same index and high watermark as the leader (so: the same log).
async fn await_converged(cluster: &mut Cluster, partition: u32) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut seen = Vec::new();
        for id in cluster.ids() {
            if let Some(r) = cluster.replica_status(id, STREAM, partition).await {
                seen.push((
                    id,
                    r["last_index"].clone(),
                    r["commit"].clone(),
                    r["high_watermark"].clone(),
                ));
            }
        }
        let first = seen
            .first()
            .map(|s| (s.1.clone(), s.2.clone(), s.3.clone()));
        if seen.len() == 3
            && seen
                .iter()
                .all(|s| Some((s.1.clone(), s.2.clone(), s.3.clone())) == first)
        {
            return seen[0].3.as_u64().unwrap_or(0);
        }
        assert!(
            Instant::now() < deadline,
            "replicas did not converge: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many publishes the workers had acknowledged, and a wake-up on each.
#[derive(Default)]
struct Progress {
    acked: std::sync::atomic::AtomicU64,
    changed: tokio::sync::Notify,
}

impl Progress {
    fn count(&self) -> u64 {
        self.acked.load(Ordering::SeqCst)
    }

    fn add(&self) {
        self.acked.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// Waits until `more` publishes beyond now were acknowledged: the load
    /// runs (through the current leader) before the next fault.
    async fn wait_for(&self, more: u64, what: &str) {
        let target = self.count() + more;
        let wait = async {
            loop {
                let changed = self.changed.notified();
                if self.count() >= target {
                    return;
                }
                changed.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .unwrap_or_else(|_| {
                panic!("{more} more publishes not acknowledged within 30 s {what}")
            });
    }
}

/// Three [`publish_until`] workers, one bootstrapped at each node.
struct Publishers {
    stop: Arc<AtomicBool>,
    progress: Arc<Progress>,
    workers: Vec<tokio::task::JoinHandle<BTreeMap<String, u64>>>,
}

impl Publishers {
    fn start(cluster: &Cluster) -> Publishers {
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(Progress::default());
        let clients: Vec<Client> = cluster
            .ids()
            .into_iter()
            .map(|id| cluster.client(id))
            .collect();
        let workers = (0..3)
            .map(|w| {
                tokio::spawn(publish_until(
                    clients.clone(),
                    w,
                    stop.clone(),
                    progress.clone(),
                ))
            })
            .collect();
        Publishers {
            stop,
            progress,
            workers,
        }
    }

    /// Stops the workers; every event acknowledged, id -> offset.
    async fn stop(self) -> BTreeMap<String, u64> {
        self.stop.store(true, Ordering::Relaxed);
        let mut acked = BTreeMap::new();
        for w in self.workers {
            acked.extend(w.await.unwrap());
        }
        acked
    }
}

/// A publisher that keeps publishing distinct events to partition 0 with
/// fixed ids, moving to another node's client when one fails, and retrying
/// the same event (same id) until it is acknowledged. Returns id -> offset.
async fn publish_until(
    clients: Vec<Client>,
    worker: usize,
    stop: Arc<AtomicBool>,
    progress: Arc<Progress>,
) -> BTreeMap<String, u64> {
    let mut acked = BTreeMap::new();
    let mut at = worker % clients.len();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let id = format!("w{worker}-{n}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let publisher = clients[at].publisher_for(STREAM, "cluster-e2e").await;
            let result = match publisher {
                Ok(p) => p.publish_to(0, event(&id)).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(p) => {
                    acked.insert(id.clone(), p.offset);
                    progress.add();
                    break;
                }
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "event {id} not acknowledged within 60 s: {e}"
                    );
                    at = (at + 1) % clients.len();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        n += 1;
    }
    acked
}

/// Reads partition 0 from its leader and checks it against what was
/// acknowledged: each acknowledged event once, at its offset; offsets dense.
async fn check_log(cluster: &mut Cluster, acked: &BTreeMap<String, u64>) -> usize {
    let leader = await_leader(cluster, 0, None).await;
    let hw = await_converged(cluster, 0).await;
    let records = fetch_all(&cluster.client(leader), STREAM, 0).await;
    assert_eq!(
        records.len() as u64,
        hw,
        "the leader's log up to its high watermark"
    );
    let mut at: HashMap<String, u64> = HashMap::new();
    for (i, (offset, e)) in records.iter().enumerate() {
        assert_eq!(*offset, i as u64, "offsets are dense");
        assert_eq!(
            e.data,
            e.id.as_bytes(),
            "event {} holds its own bytes",
            e.id
        );
        if let Some(first) = at.insert(e.id.clone(), *offset) {
            panic!("event {} stored twice: at {first} and {offset}", e.id);
        }
    }
    for (id, offset) in acked {
        assert_eq!(
            at.get(id),
            Some(offset),
            "acknowledged event {id} is not at its acknowledged offset {offset}"
        );
    }
    records.len()
}

/// Three nodes elect a leader per partition; a publish through any node
/// is stored on every replica; a follower refuses a fetch with
/// `NotLeader` naming the leader's node and shard port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_publishes_and_followers_name_the_leader() {
    let mut cluster = Cluster::start(ClusterOptions {
        resources: resources(2),
        ..ClusterOptions::default()
    });
    let publisher = cluster
        .client(1)
        .publisher_for(STREAM, "app")
        .await
        .unwrap();
    let mut offsets = Vec::new();
    for i in 0..20 {
        let p = publisher
            .publish_to(0, event(&format!("e{i}")))
            .await
            .unwrap();
        offsets.push(p.offset);
    }
    assert_eq!(offsets, (0..20).collect::<Vec<u64>>());
    // Publishing the same ids again stores nothing new.
    let again = publisher.publish_to(0, event("e7")).await.unwrap();
    assert_eq!((again.offset, again.duplicate), (7, true));

    let leader = await_leader(&mut cluster, 0, None).await;
    assert_eq!(await_converged(&mut cluster, 0).await, 20);
    let records = fetch_all(&cluster.client(leader), STREAM, 0).await;
    let ids: Vec<&str> = records.iter().map(|(_, e)| e.id.as_str()).collect();
    let expected: Vec<String> = (0..20).map(|i| format!("e{i}")).collect();
    assert_eq!(ids, expected);

    // `hadron cluster status` asks every node: one leader, no lag.
    let urls: Vec<String> = cluster
        .ids()
        .into_iter()
        .map(|id| cluster.node(id).addr())
        .collect();
    let doc = cluster.cluster_status_json();
    let p0 = doc["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["stream"] == STREAM && p["partition"] == 0)
        .unwrap();
    assert_eq!(p0["leader"], leader);
    let lags: Vec<u64> = p0["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["lag"].as_u64().unwrap())
        .collect();
    assert_eq!(lags, [0, 0, 0], "{doc}");
    let text = run_cli(
        &["cluster", "status", "--url", &urls.join(",")],
        Duration::from_secs(30),
    );
    assert!(
        text.stdout
            .contains(&format!("{STREAM}/0: leader node {leader}")),
        "{}",
        text.stdout
    );

    // A follower: NotLeader, naming the leader.
    let follower = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
    let leader_shard_port = cluster.node(leader).shard_port(0);
    let mut raw = RawConn::handshaken(cluster.node(follower).port()).await;
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
    let Frame::NotLeader {
        message,
        leader: hint,
        ..
    } = &reply
    else {
        panic!("a follower answered a fetch with {reply:?}");
    };
    let (node_id, _, shard_port, _) = hint.as_ref().expect("the follower names the leader");
    assert_eq!((*node_id, *shard_port), (leader, leader_shard_port));
    assert!(message.contains(&format!("node {leader}")), "{message}");

    // Metadata from a follower names the leader too.
    let metadata = cluster.client(follower).metadata().await.unwrap();
    let p0 = &metadata.stream(STREAM).unwrap().partitions[0];
    assert_eq!(p0.leader.as_ref().map(|l| l.node_id), Some(leader));
}

/// Durable publishes from three workers while the leader of the partition
/// is SIGKILLed three times (and restarted): every acknowledged event is
/// in the log once, at its acknowledged offset, and the killed nodes catch
/// up to the same log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_leader_sigkills_under_durable_load_lose_no_acknowledged_event() {
    let mut cluster = Cluster::start(ClusterOptions {
        resources: resources(1),
        ..ClusterOptions::default()
    });
    let publishers = Publishers::start(&cluster);
    let progress = publishers.progress.clone();
    let mut killed = Vec::new();
    for round in 0..3 {
        progress.wait_for(20, &format!("before kill {round}")).await;
        let leader = await_leader(&mut cluster, 0, None).await;
        cluster.node(leader).kill_now();
        let next = await_leader(&mut cluster, 0, Some(leader)).await;
        assert_ne!(next, leader);
        killed.push(leader);
        // The survivors serve while the killed node is down.
        progress.wait_for(10, &format!("after kill {round}")).await;
        cluster.node(leader).restart();
    }
    progress.wait_for(10, "after the last restart").await;
    let acked = publishers.stop().await;
    assert!(
        acked.len() >= 30,
        "only {} events acknowledged",
        acked.len()
    );
    let stored = check_log(&mut cluster, &acked).await;
    eprintln!(
        "killed leaders {killed:?}; {} acknowledged, {stored} stored",
        acked.len()
    );
}

/// The leader is cut off from both followers (both directions, by the
/// proxies between the nodes) under durable load: the others elect a new
/// leader and go on; healed, the old leader steps down and catches up;
/// then one direction only is cut. Nothing acknowledged is lost or
/// stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_links_isolate_the_leader_and_the_rest_go_on_without_loss() {
    let mut cluster = Cluster::start(ClusterOptions {
        resources: resources(1),
        proxies: true,
        ..ClusterOptions::default()
    });
    let publishers = Publishers::start(&cluster);
    let progress = publishers.progress.clone();
    progress.wait_for(20, "before the cut").await;
    let old = await_leader(&mut cluster, 0, None).await;
    cluster.isolate(old);
    // The rest elect another; the cut-off one steps down (check_quorum).
    let next = await_leader(&mut cluster, 0, Some(old)).await;
    // The others serve while the old leader is cut off.
    progress
        .wait_for(10, "while the old leader is isolated")
        .await;
    cluster.rejoin(old);
    // One direction: the new leader's messages to one follower are lost.
    let follower = cluster
        .ids()
        .into_iter()
        .find(|&id| id != next && id != old)
        .unwrap();
    cluster.link(next, follower).cut();
    progress.wait_for(20, "with one direction cut").await;
    cluster.link(next, follower).heal();
    progress.wait_for(10, "after healing").await;
    let acked = publishers.stop().await;
    assert!(
        acked.len() >= 20,
        "only {} events acknowledged",
        acked.len()
    );
    check_log(&mut cluster, &acked).await;
}

/// A publish to a follower that cannot reach a leader fails with a
/// `NotLeader` the client reports after its attempts, not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_the_rest_refuses_publishes_with_not_leader() {
    let mut cluster = Cluster::start(ClusterOptions {
        resources: resources(1),
        proxies: true,
        ..ClusterOptions::default()
    });
    let leader = await_leader(&mut cluster, 0, None).await;
    let lonely = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
    cluster.isolate(lonely);
    let client = Client::new(
        &cluster.node(lonely).addr(),
        hadron::ClientOptions {
            publish_attempts_max: 2,
            ..hadron::ClientOptions::default()
        },
    )
    .unwrap();
    // Its own connection to the lonely node works; that node knows no
    // reachable leader within its election timeouts, and its hint (if it
    // still names the old leader) is followed; either way the error is a
    // NotLeader or a publish stored by the real leader.
    let publisher = client.publisher_for(STREAM, "lonely").await.unwrap();
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        publisher.publish_to(0, event("alone")),
    )
    .await
    .expect("the publish must not hang");
    match result {
        Ok(p) => {
            // Followed the hint to the real leader, which stored it.
            let records = fetch_all(&cluster.client(leader), STREAM, 0).await;
            assert_eq!(records[p.offset as usize].1.id, "alone");
        }
        Err(Error::NotLeader { .. }) => {}
        Err(e) => panic!("expected NotLeader, got {e}"),
    }
    cluster.rejoin(lonely);
    await_converged(&mut cluster, 0).await;
}

/// Peers prove the cluster secret: two nodes sharing it form a majority
/// and serve; a third with another secret is refused by both (their log
/// says why) and never learns of any entry. A cluster whose peers go
/// beyond loopback with no secret does not start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_the_cluster_secret_is_refused() {
    let good = "0123456789abcdef0123456789abcdef";
    let mut cluster = Cluster::start(ClusterOptions {
        resources: resources(1),
        secrets: vec![
            good.into(),
            good.into(),
            "another secret, 32 bytes long!!".into(),
        ],
        ..ClusterOptions::default()
    });
    let leader = await_leader(&mut cluster, 0, None).await;
    assert_ne!(leader, 3, "the node without the secret cannot lead");
    let publisher = cluster
        .client(leader)
        .publisher_for(STREAM, "app")
        .await
        .unwrap();
    for i in 0..5 {
        assert_eq!(
            publisher
                .publish_to(0, event(&format!("s{i}")))
                .await
                .unwrap()
                .offset,
            i
        );
    }
    let outsider = cluster.replica_status(3, STREAM, 0).await.unwrap();
    assert_eq!(outsider["last_index"], 0, "{outsider}");
    let log = cluster.node(leader).log();
    assert!(log.contains("does not prove the cluster secret"), "{log}");

    let out = run_cli(
        &[
            "server",
            "--check-config",
            "--node-id",
            "1",
            "--peer",
            "1=127.0.0.1:7000",
            "--peer",
            "2=10.0.0.2:7000",
        ],
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("no cluster secret is set"),
        "{}",
        out.stderr
    );
}

/// A node added to a running cluster names the cluster's founders with
/// `--founders` (without it, it would take every peer as a founder); the
/// check names them, and a founder that is not a peer is refused by its
/// place in the list.
#[test]
fn founders_are_given_by_flag_and_checked() {
    let peers = [
        "--peer",
        "1=127.0.0.1:7000",
        "--peer",
        "2=127.0.0.1:7010",
        "--peer",
        "3=127.0.0.1:7020",
        "--peer",
        "4=127.0.0.1:7030",
    ];
    let check = |founders: &str| {
        let mut args = vec!["server", "--check-config", "--node-id", "4"];
        args.extend_from_slice(&peers);
        args.extend_from_slice(&["--founders", founders]);
        run_cli(&args, Duration::from_secs(30))
    };
    let out = check("1,2,3");
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.stdout
            .contains("node 4 of a cluster of nodes 1, 2, 3, 4, founded by 1, 2, 3"),
        "{}",
        out.stdout
    );
    let out = check("1,9");
    assert_eq!(out.status.code(), Some(2), "{}", out.stdout);
    assert!(
        out.stderr
            .contains("cluster.founders[1]: node 9 is not among cluster.peers"),
        "{}",
        out.stderr
    );
}

/// Whoever reaches a peer port without the secret costs the node little:
/// a handshake frame is refused by its length before its body is
/// allocated (a header claiming 32 MiB is closed at once, not read), and
/// at most `PEER_UNAUTHENTICATED_MAX` (64) connections per shard may sit
/// in their handshake; past it a new one is closed without a challenge.
/// The cluster serves throughout, and the slots free when they close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_peer_connections_are_bounded_in_size_and_number() {
    use std::io::{Read, Write};
    let mut cluster = Cluster::start(ClusterOptions {
        resources: resources(1),
        ..ClusterOptions::default()
    });
    let leader = await_leader(&mut cluster, 0, None).await;
    let peer_addr = cluster.peer_addr(leader);
    let connect = || {
        let c = std::net::TcpStream::connect(&peer_addr).expect("the peer port");
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c
    };
    // The challenge, as the node's first frame (a header of its length
    // and checksum, then its body).
    let challenged = |c: &mut std::net::TcpStream| {
        let mut header = [0u8; 8];
        if c.read_exact(&mut header).is_err() {
            return false;
        }
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let mut body = vec![0u8; len as usize];
        len <= 256 && c.read_exact(&mut body).is_ok()
    };
    let mut big = connect();
    assert!(challenged(&mut big));
    let claims_32_mib = [&(32u32 << 20).to_le_bytes()[..], &[0u8; 4]].concat();
    big.write_all(&claims_32_mib).unwrap();
    let mut rest = Vec::new();
    let closed = big.read_to_end(&mut rest);
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?} {rest:?}");
    // (The close may come before the log line is written.)
    let refused = "a peer handshake frame of 33554432 bytes (at most 256)";
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cluster.node(leader).log().contains(refused) {
        assert!(Instant::now() < deadline, "{}", cluster.node(leader).log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut idle: Vec<std::net::TcpStream> = (0..64).map(|_| connect()).collect();
    for c in &mut idle {
        assert!(challenged(c), "one of the first 64 gets a challenge");
    }
    let mut over = connect();
    let mut byte = [0u8; 1];
    let read = over.read(&mut byte);
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the 65th is closed: {read:?}"
    );
    let log = cluster.node(leader).log();
    assert!(
        log.contains("64 others are still in their handshake"),
        "{log}"
    );
    // Meanwhile the established links serve: publishes are acknowledged.
    let publisher = cluster
        .client(leader)
        .publisher_for(STREAM, "app")
        .await
        .unwrap();
    assert_eq!(
        publisher
            .publish_to(0, event("during"))
            .await
            .unwrap()
            .offset,
        0
    );
    drop(idle);
    hadron_tests::eventually(Duration::from_secs(10), "a slot freed", || async {
        let mut c = connect();
        challenged(&mut c).then_some(())
    })
    .await;
}

/// Leadership goes back to the replica placement prefers once it is
/// caught up: after its SIGKILL another node leads; restarted, it catches
/// up and leads again, so leaders stay spread as placement spread them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_returns_to_the_preferred_replica_after_it_restarts() {
    let mut cluster = Cluster::start(ClusterOptions {
        resources: resources(1),
        ..ClusterOptions::default()
    });
    let status = cluster.replica_status(1, STREAM, 0).await.unwrap();
    let preferred = status["preferred"].as_u64().unwrap();
    let twenty = Duration::from_secs(20);
    cluster
        .await_leader_where(STREAM, 0, twenty, |id| id == preferred)
        .await;
    let publisher = cluster
        .client(preferred)
        .publisher_for(STREAM, "app")
        .await
        .unwrap();
    publisher.publish_to(0, event("before")).await.unwrap();
    cluster.node(preferred).kill_now();
    let other = await_leader(&mut cluster, 0, Some(preferred)).await;
    assert_ne!(other, preferred);
    let publisher = cluster
        .client(other)
        .publisher_for(STREAM, "app")
        .await
        .unwrap();
    publisher.publish_to(0, event("during")).await.unwrap();
    cluster.node(preferred).restart();
    // Leadership returns once the restarted node has caught up.
    cluster
        .await_leader_where(STREAM, 0, twenty, |id| id == preferred)
        .await;
    let records = fetch_all(&cluster.client(preferred), STREAM, 0).await;
    let ids: Vec<&str> = records.iter().map(|(_, e)| e.id.as_str()).collect();
    assert_eq!(ids, ["before", "during"]);
}

/// With `tls:` (client certificates required), the nodes' peer links are
/// TLS too, each node checking the others' certificates against the CA:
/// publishes through any node replicate and commit, and a follower names
/// the leader to a TLS client, which follows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_the_nodes_replicate_over_tls() {
    let pki = tempfile::tempdir().unwrap();
    cluster_pki(pki.path());
    let mut cluster = Cluster::start(ClusterOptions {
        resources: resources(1),
        tls: Some(pki.path().to_path_buf()),
        ..ClusterOptions::default()
    });
    let tls = client_tls(pki.path());
    let client = |id: u64, c: &mut Cluster| {
        Client::new(
            &format!("https://{}", c.node(id).addr()),
            hadron::ClientOptions {
                tls: tls.clone(),
                publish_attempts_max: 40,
                ..hadron::ClientOptions::default()
            },
        )
        .unwrap()
    };
    let publisher = client(1, &mut cluster)
        .publisher_for(STREAM, "app")
        .await
        .unwrap();
    for i in 0..10 {
        let published = publisher
            .publish_to(0, event(&format!("t{i}")))
            .await
            .unwrap();
        assert_eq!(published.offset, i);
    }
    // Committed means a majority wrote it: the peer links work over TLS.
    for id in cluster.ids() {
        let log = cluster.node(id).log();
        assert!(!log.contains("peer connection refused"), "node {id}: {log}");
        assert!(log.contains("(TLS)"), "node {id} serves TLS: {log}");
    }
    let records = fetch_all(&client(2, &mut cluster), STREAM, 0).await;
    assert_eq!(records.len(), 10);
}

/// A stream of one partition, 3 replicas, 64 KiB segments (so that they
/// roll), and `retention` when given.
fn small_segments(retention: &str) -> ClusterOptions {
    ClusterOptions {
        resources: format!(
            "apiVersion: hadron.rs/v1beta1\nkind: Stream\nmetadata: {{ name: {STREAM} }}\nspec: {{ partitions: 1, replicas: 3{retention} }}\n"
        ),
        settings: "segmentBytes: 65536\n".into(),
        ..ClusterOptions::default()
    }
}

/// Publishes `n` events of `size` bytes of `fill` with ids `{prefix}{i}`
/// through node `via`; returns id -> offset.
async fn publish_many(
    cluster: &Cluster,
    via: u64,
    prefix: &str,
    n: usize,
    size: usize,
    fill: u8,
) -> BTreeMap<String, u64> {
    let publisher = cluster
        .client(via)
        .publisher_for(STREAM, "bulk")
        .await
        .unwrap();
    let mut acked = BTreeMap::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(16) {
        let batch: Vec<NewEvent> = chunk
            .iter()
            .map(|i| NewEvent {
                id: format!("{prefix}{i}"),
                ty: "t".into(),
                data: vec![fill; size],
                ..NewEvent::default()
            })
            .collect();
        let ids: Vec<String> = batch.iter().map(|e| e.id.clone()).collect();
        let published = publisher.publish_batch(batch).await.unwrap();
        for (id, p) in ids.into_iter().zip(published) {
            acked.insert(id, p.offset);
        }
    }
    acked
}

/// The leader's retention deletes segments while a follower is down; the
/// restarted follower, behind the leader's first index, installs a
/// snapshot descriptor, restarts its log at the leader's start and
/// catches up: the same events from there on every replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_the_leaders_retention_installs_a_snapshot() {
    let mut cluster = Cluster::start(small_segments(", retention: { maxBytes: 200000 }"));
    let leader = await_leader(&mut cluster, 0, None).await;
    let follower = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
    publish_many(&cluster, leader, "a", 20, 1_000, b'x').await;
    await_converged(&mut cluster, 0).await;
    cluster.node(follower).kill_now();
    // About 1 MB: far past the 200 kB the partition keeps.
    let acked = publish_many(&cluster, leader, "b", 500, 2_000, b'y').await;
    let lead = cluster.replica_status(leader, STREAM, 0).await.unwrap();
    cluster.node(follower).restart();
    let hw = await_converged(&mut cluster, 0).await;
    let leader = await_leader(&mut cluster, 0, None).await;
    let start = start_offset(&cluster, leader).await;
    assert!(
        start > 20,
        "the leader's retention deleted the segments the follower had: {lead}"
    );
    let records = fetch_from_start(&cluster.client(leader), start).await;
    assert_eq!(records.first().map(|r| r.0), Some(start));
    assert_eq!(records.last().map(|r| r.0 + 1), Some(hw));
    for (id, offset) in &acked {
        if *offset >= start {
            let (o, e) = &records[(*offset - start) as usize];
            assert_eq!((o, e.id.as_str()), (offset, id.as_str()));
        }
    }
    let theirs = start_offset(&cluster, follower).await;
    assert!(
        theirs >= start,
        "the follower's log restarts at the leader's start {start} (a snapshot), not {theirs}"
    );
}

/// Every record from the partition's first retained offset, which `from`
/// names.
async fn fetch_from_start(client: &Client, from: u64) -> Vec<(u64, hadron::Event)> {
    let mut offset = from;
    let mut out = Vec::new();
    loop {
        let page = client
            .fetch(STREAM, 0, offset, 64 << 10)
            .await
            .unwrap_or_else(|e| panic!("fetch at {offset}: {e}"));
        if page.records.is_empty() {
            return out;
        }
        offset = page.next_offset;
        out.extend(page.records);
    }
}

/// `start_offset` of partition 0 of the stream on node `id`.
async fn start_offset(cluster: &Cluster, id: u64) -> u64 {
    let status = status_of(cluster, id).await;
    hadron_tests::stream_partitions(&status, STREAM)[0]["start_offset"]
        .as_u64()
        .unwrap()
}

async fn status_of(cluster: &Cluster, id: u64) -> serde_json::Value {
    let json = cluster.client(id).status().await.unwrap();
    serde_json::from_str(&json).unwrap()
}

/// A node whose certificates come from another CA than its peers' (here:
/// restarted after the CA files were replaced, the others keeping the
/// old ones) cannot link to them: its dials fail the TLS handshake, and
/// it says so at warn level, naming the peer, where an operator sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_certificates_of_another_ca_reports_the_failed_peer_handshake() {
    let pki = tempfile::tempdir().unwrap();
    cluster_pki(pki.path());
    let mut cluster = Cluster::start(ClusterOptions {
        resources: resources(1),
        tls: Some(pki.path().to_path_buf()),
        ..ClusterOptions::default()
    });
    await_leader(&mut cluster, 0, None).await;
    // A new CA and certificate in the same files: only a restarted node
    // reads them.
    cluster_pki(pki.path());
    cluster.node(3).kill_now();
    cluster.node(3).restart();
    hadron_tests::eventually(
        Duration::from_secs(30),
        "node 3 reports a failed peer handshake",
        || {
            let log = cluster.node(3).log();
            async move {
                log.lines()
                    .find(|l| l.contains("WARN") && l.contains("TLS handshake failed"))
                    .map(str::to_owned)
            }
        },
    )
    .await;
}
