//! Helpers of the replica-move tests (`cluster_move.rs`, `cluster_add.rs`):
//! a publisher with fixed ids running under the moves, waits on the
//! voters every node reports, and the check of the log afterwards (all on
//! partition 0 of the stream named).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hadron::{Client, NewEvent};

use crate::cluster::Cluster;
use crate::{eventually, fetch_all};

/// `hadron cluster move STREAM 0 --to TO --url URLS`: its output.
pub fn move_cli(stream: &str, to: &str, urls: &str) -> crate::CliOutput {
    crate::run_cli(
        &["cluster", "move", stream, "0", "--to", to, "--url", urls],
        Duration::from_secs(30),
    )
}

/// A stream of one partition with 3 replicas, as a resources document.
pub fn one_partition_stream(stream: &str) -> String {
    format!(
        "apiVersion: hadron.rs/v1beta1\nkind: Stream\nmetadata: {{ name: {stream} }}\nspec: {{ partitions: 1, replicas: 3 }}\n"
    )
}

/// [`publish_until`] running in a task: its acknowledged count, and a stop
/// that gives id -> offset of every acknowledged event.
#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    /// Events acknowledged so far.
    pub count: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<BTreeMap<String, u64>>,
}

impl Load {
    /// Starts publishing to `stream` through `client`.
    pub fn start(client: Client, stream: &'static str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(publish_until(client, stream, stop.clone(), count.clone()));
        Load { stop, count, task }
    }

    /// Stops publishing; every acknowledged id and its offset.
    pub async fn stop(self) -> BTreeMap<String, u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the publisher task")
    }
}

/// How long a move, or an acknowledgement, may take.
pub const WAIT: Duration = Duration::from_secs(60);

/// Publishes events with fixed ids until stopped, retrying each until
/// acknowledged; id -> offset.
pub async fn publish_until(
    client: Client,
    stream: &'static str,
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
            let result = match client.publisher_for(stream, "moves").await {
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

pub async fn await_more_acks(count: &AtomicU64, more: u64) {
    let target = count.load(Ordering::SeqCst) + more;
    eventually(WAIT, "more publishes acknowledged", || async {
        (count.load(Ordering::SeqCst) >= target).then_some(())
    })
    .await;
}

/// The moves `hadron cluster rebalance` printed: (stream, partition,
/// voters with the preferred leader first), from its lines
/// `STREAM/P: [old] -> [new]`.
pub fn rebalance_moves(stdout: &str) -> Vec<(String, u32, Vec<u64>)> {
    stdout
        .lines()
        .filter_map(|line| {
            let (stream, rest) = line.split_once('/')?;
            let (partition, rest) = rest.split_once(": [")?;
            let (_, to) = rest.split_once("-> ")?;
            let voters = to
                .trim()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .split(',')
                .map(|v| v.trim().parse().ok())
                .collect::<Option<Vec<u64>>>()?;
            Some((stream.to_owned(), partition.parse().ok()?, voters))
        })
        .collect()
}

pub fn sorted(mut v: Vec<u64>) -> Vec<u64> {
    v.sort_unstable();
    v
}

pub fn voters_of(replica: &serde_json::Value) -> Option<Vec<u64>> {
    let v = replica["voters"].as_array()?;
    Some(sorted(
        v.iter().filter_map(serde_json::Value::as_u64).collect(),
    ))
}

/// Waits until every node of `target` reports the target voters, and
/// returns the leader (which leads with them).
pub async fn await_moved(cluster: &Cluster, stream: &str, target: &[u64]) -> u64 {
    await_partition_moved(cluster, stream, 0, target).await
}

/// [`await_moved`] for partition `partition`.
pub async fn await_partition_moved(
    cluster: &Cluster,
    stream: &str,
    partition: u32,
    target: &[u64],
) -> u64 {
    let want = sorted(target.to_vec());
    let what =
        format!("every node of {target:?} reporting the voters {want:?} of {stream}/{partition}");
    eventually(WAIT, &what, || {
        let want = want.clone();
        async move {
            for &id in target {
                let r = cluster.replica_status(id, stream, partition).await;
                if r.as_ref().and_then(voters_of) != Some(want.clone()) {
                    return None;
                }
            }
            cluster
                .leader(stream, partition)
                .await
                .filter(|l| target.contains(l))
        }
    })
    .await
}

/// Every acknowledged event once, at its offset, from the leader; the
/// other target replicas at the leader's high watermark.
pub async fn check_log(
    cluster: &Cluster,
    stream: &str,
    target: &[u64],
    acked: &BTreeMap<String, u64>,
) {
    let leader = await_moved(cluster, stream, target).await;
    let what = format!("the same high watermark on every node of {target:?}");
    let hw = eventually(WAIT, &what, || async move {
        let mut marks = Vec::new();
        for &id in target {
            marks.push(cluster.replica_status(id, stream, 0).await?["high_watermark"].as_u64()?);
        }
        marks.iter().all(|&m| m == marks[0]).then(|| marks[0])
    })
    .await;
    let records = fetch_all(&cluster.client(leader), stream, 0).await;
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
