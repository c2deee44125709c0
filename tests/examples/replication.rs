//! Replication figures on this machine (three nodes on loopback, sharing
//! its cores), for docs/benchmarks.md:
//!
//! 1. **Failover**: a publisher sends durable 1 KiB events to `orders/0`
//!    (3 replicas) one at a time, moving to the next node on any error
//!    after 5 ms; the partition's leader is SIGKILLed `KILLS` times (and
//!    restarted, then caught up, before the next kill). Reported: the time
//!    from each SIGKILL to the first publish acknowledged after it (by the
//!    successor), p50 and max.
//! 2. **Catch-up**: one follower is SIGKILLed, `CATCH_UP_MB` MiB of
//!    durable publishes land on the other two, and the follower is
//!    restarted; reported: the time until its log holds the leader's last
//!    index, as MiB/s, against this disk's sequential O_DIRECT write rate
//!    measured here with `dd` (same filesystem, same size).
//!
//! ```sh
//! cargo build --release -p hadron-server
//! cargo run --release -p hadron-tests --example replication
//! KILLS=20 CATCH_UP_MB=1024 cargo run --release -p hadron-tests --example replication
//! ```
//!
//! Election settings: 50 ms ticks, heartbeats every 2 ticks, election
//! timeout drawn from 10 to 19 ticks (0.5 to 1 s), pre-vote and
//! check-quorum on. Nothing here reaches beyond 127.0.0.1.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a measuring program: a failed step must stop it with its message"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hadron::{Client, ClientOptions, NewEvent};
use hadron_tests::cluster::{Cluster, ClusterOptions};

const STREAM: &str = "orders";

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Publishes one event at a time until `stop`, rotating nodes on errors;
/// stores the time of the last acknowledgement (ns since `epoch`), counting
/// only attempts started after `after` (ns since `epoch`): an answer the
/// killed leader sent before it died is not its successor's.
async fn publisher(
    urls: Vec<String>,
    stop: Arc<AtomicBool>,
    last_ack: Arc<AtomicU64>,
    after: Arc<AtomicU64>,
    epoch: Instant,
) {
    let clients: Vec<Client> = urls
        .iter()
        .map(|u| {
            Client::new(
                u,
                ClientOptions {
                    publish_attempts_max: 1,
                    ..ClientOptions::default()
                },
            )
            .unwrap()
        })
        .collect();
    let mut at = 0;
    let mut n = 0u64;
    let data = vec![b'x'; 1024];
    while !stop.load(Ordering::Relaxed) {
        let event = NewEvent {
            id: format!("f-{n}"),
            ty: "t".into(),
            data: data.clone(),
            ..NewEvent::default()
        };
        loop {
            let started = epoch.elapsed().as_nanos() as u64;
            let result = match clients[at].publisher_for(STREAM, "failover").await {
                Ok(p) => p.publish_to(0, event.clone()).await.map(|_| ()),
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => {
                    if started > after.load(Ordering::Relaxed) {
                        last_ack.store(epoch.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    }
                    break;
                }
                Err(_) if stop.load(Ordering::Relaxed) => return,
                Err(_) => {
                    at = (at + 1) % clients.len();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
        n += 1;
    }
}

async fn leader(cluster: &mut Cluster, not: Option<u64>) -> u64 {
    cluster
        .await_leader_where(STREAM, 0, Duration::from_secs(30), |id| Some(id) != not)
        .await
}

/// Waits until node `id`'s last index is the leader's; returns when.
async fn caught_up(cluster: &mut Cluster, id: u64, timeout: Duration) -> Instant {
    let deadline = Instant::now() + timeout;
    loop {
        let l = leader(cluster, None).await;
        let lead = cluster.replica_status(l, STREAM, 0).await;
        let mine = cluster.replica_status(id, STREAM, 0).await;
        if let (Some(a), Some(b)) = (lead, mine)
            && a["last_index"] == b["last_index"]
            && a["last_index"].as_u64().unwrap_or(0) > 0
        {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "node {id} did not catch up in {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn failover(kills: u64) {
    let mut cluster = Cluster::start(ClusterOptions {
        resources: "apiVersion: hadron.rs/v1beta1\nkind: Stream\nmetadata: { name: orders }\nspec: { partitions: 1, replicas: 3 }\n".into(),
        ..ClusterOptions::default()
    });
    let urls: Vec<String> = cluster
        .ids()
        .into_iter()
        .map(|id| cluster.node(id).addr())
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let last_ack = Arc::new(AtomicU64::new(0));
    let after = Arc::new(AtomicU64::new(0));
    let epoch = Instant::now();
    let task = tokio::spawn(publisher(
        urls,
        stop.clone(),
        last_ack.clone(),
        after.clone(),
        epoch,
    ));
    let mut times = Vec::new();
    for k in 0..kills {
        tokio::time::sleep(Duration::from_millis(800)).await;
        let old = leader(&mut cluster, None).await;
        cluster.node(old).kill_now();
        // Dead and reaped: every attempt from now on goes to another node.
        let killed_at = epoch.elapsed().as_nanos() as u64;
        after.store(killed_at, Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(30);
        while last_ack.load(Ordering::Relaxed) <= killed_at {
            assert!(
                Instant::now() < deadline,
                "no publish acknowledged 30 s after kill {k}"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let took = Duration::from_nanos(last_ack.load(Ordering::Relaxed) - killed_at);
        let next = leader(&mut cluster, Some(old)).await;
        println!(
            "kill {k}: leader node {old} SIGKILLed; node {next} acknowledged a publish {took:?} later"
        );
        times.push(took);
        cluster.node(old).restart();
        caught_up(&mut cluster, old, Duration::from_secs(60)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let _ = task.await;
    times.sort();
    let p50 = times[times.len() / 2];
    let max = times[times.len() - 1];
    println!(
        "failover over {} kills: p50 {:.0} ms, max {:.0} ms (min {:.0} ms)",
        times.len(),
        p50.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3
    );
}

/// `dd` of `mb` MiB with O_DIRECT into the temp dir: MiB/s.
fn disk_write_rate(mb: u64) -> f64 {
    let path = std::env::temp_dir().join(format!("hadron-dd-{}", std::process::id()));
    let started = Instant::now();
    let status = std::process::Command::new("dd")
        .args([
            "if=/dev/zero",
            &format!("of={}", path.display()),
            "bs=1M",
            &format!("count={mb}"),
            "oflag=direct",
            "conv=fdatasync",
        ])
        .stderr(std::process::Stdio::null())
        .status()
        .expect("dd runs");
    let took = started.elapsed();
    let _ = std::fs::remove_file(&path);
    assert!(status.success(), "dd failed");
    mb as f64 / took.as_secs_f64()
}

async fn catch_up(mb: u64) {
    let mut cluster = Cluster::start(ClusterOptions {
        resources: "apiVersion: hadron.rs/v1beta1\nkind: Stream\nmetadata: { name: orders }\nspec: { partitions: 1, replicas: 3 }\n".into(),
        ..ClusterOptions::default()
    });
    let l = leader(&mut cluster, None).await;
    let down = cluster.ids().into_iter().find(|&id| id != l).unwrap();
    cluster.node(down).kill_now();
    let publisher = cluster
        .client(l)
        .publisher_for(STREAM, "bulk")
        .await
        .unwrap();
    let data = vec![b'y'; 16 << 10];
    let events = (mb << 20) / data.len() as u64;
    let started = Instant::now();
    let mut sent = 0;
    while sent < events {
        let batch: Vec<NewEvent> = (0..64)
            .map(|i| NewEvent {
                id: format!("b-{}", sent + i),
                ty: "t".into(),
                data: data.clone(),
                ..NewEvent::default()
            })
            .collect();
        publisher.publish_batch(batch).await.unwrap();
        sent += 64;
    }
    let wrote = started.elapsed();
    println!(
        "catch-up: {mb} MiB published to 2 of 3 replicas in {:.1} s ({:.0} MiB/s) while node {down} was down",
        wrote.as_secs_f64(),
        mb as f64 / wrote.as_secs_f64()
    );
    let restarted = Instant::now();
    cluster.node(down).restart();
    let done = caught_up(&mut cluster, down, Duration::from_secs(600)).await;
    let took = done - restarted;
    let rate = mb as f64 / took.as_secs_f64();
    let disk = disk_write_rate(mb.min(1024));
    println!(
        "catch-up: node {down} restarted and caught up {mb} MiB in {:.1} s: {rate:.0} MiB/s; this disk writes {disk:.0} MiB/s (dd, O_DIRECT): {:.2}x",
        took.as_secs_f64(),
        rate / disk
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let kills = env("KILLS", 10);
    let mb = env("CATCH_UP_MB", 1024);
    failover(kills).await;
    catch_up(mb).await;
}
