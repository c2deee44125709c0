//! `hadron pipeline status` and `hadron pipeline retry` on a 3-node
//! cluster whose pipeline runs are led by different nodes: a pipeline on
//! a 4-partition stream, each partition's outputs group led by its
//! preferred replica (spread over the nodes), a first stage that fails
//! the `bad` events until they exhaust their attempts, and a second stage
//! that records the output it received.
//!
//! - `pipeline status --url A,B,C` counts every failed execution once,
//!   each from the node that runs its partition; one node alone counts
//!   only its own and names the partitions it does not run.
//! - `pipeline retry --url A` (one node) retries the executions A runs,
//!   says which node runs each other partition, and fails.
//! - `pipeline retry --partition P --offset O --url A` of an execution
//!   another node runs is followed there (A answers `NotLeader`).
//! - `pipeline retry --url A,B,C` retries the rest, each by the node that
//!   runs it, and succeeds; every failed execution then runs its stages
//!   once more and completes: the second stage receives the first's
//!   output for every event.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed set-up step must fail the test at once"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hadron::{NewEvent, StageInput};
use hadron_tests::cluster::{Cluster, ClusterOptions};
use hadron_tests::{CliOutput, eventually};

const PIPELINE: &str = "flaky";
const PARTITIONS: u32 = 4;

fn resources() -> String {
    format!(
        r#"apiVersion: hadron.rs/v1beta1
kind: Stream
metadata: {{ name: jobs }}
spec: {{ partitions: {PARTITIONS}, replicas: 3 }}
---
apiVersion: hadron.rs/v1beta1
kind: Pipeline
metadata: {{ name: {PIPELINE} }}
spec:
  sourceStream: jobs
  triggers: [job]
  retry: {{ initialDelayMs: 20, maxDelayMs: 40, maxAttempts: 2 }}
  stages:
    - name: work
    - name: report
      dependencies: [work]
"#
    )
}

/// (partition, offset) of an execution.
type Execution = (u32, u64);

#[derive(Debug, Default)]
struct Seen {
    /// Failed runs of `work`, per execution.
    failures: BTreeMap<Execution, u32>,
    /// Successful runs of `work`, per execution.
    worked: BTreeMap<Execution, u32>,
    /// What `report` received from `work`, per execution (each run).
    reported: BTreeMap<Execution, Vec<String>>,
}

/// `work` fails the events whose data begins with `bad` until `healed`;
/// `report` records the output of `work` it received.
async fn start_handlers(cluster: &Cluster, seen: &Arc<Mutex<Seen>>, healed: &Arc<AtomicBool>) {
    let client = cluster.client_of_all();
    let (s, h) = (seen.clone(), healed.clone());
    let work = move |input: StageInput| {
        let (seen, healed) = (s.clone(), h.clone());
        async move {
            let data = String::from_utf8_lossy(&input.root.data).into_owned();
            let key = (input.partition, input.offset);
            if data.starts_with("bad") && !healed.load(Ordering::SeqCst) {
                *seen.lock().unwrap().failures.entry(key).or_default() += 1;
                return Err(std::io::Error::other(format!("{data} is bad")));
            }
            *seen.lock().unwrap().worked.entry(key).or_default() += 1;
            Ok(NewEvent::new(
                "job.worked",
                format!("worked:{data}").into_bytes(),
            ))
        }
    };
    client.pipeline(PIPELINE, "work", work).await.unwrap();
    let s = seen.clone();
    let report = move |input: StageInput| {
        let seen = s.clone();
        async move {
            let got = input
                .inputs
                .get("work")
                .map(|e| String::from_utf8_lossy(&e.data).into_owned())
                .unwrap_or_default();
            let key = (input.partition, input.offset);
            seen.lock()
                .unwrap()
                .reported
                .entry(key)
                .or_default()
                .push(got);
            Ok::<NewEvent, std::io::Error>(NewEvent::new("job.reported", b"ok".to_vec()))
        }
    };
    client.pipeline(PIPELINE, "report", report).await.unwrap();
}

/// Per partition, the node whose run leads it, once every partition's
/// outputs group is led by its preferred replica (none moves after) and
/// the leaders are at least two nodes.
async fn settled_leaders(cluster: &Cluster) -> BTreeMap<u32, u64> {
    eventually(
        Duration::from_secs(60),
        "every outputs group led by its preferred replica, over 2 nodes or more",
        || async move {
            let mut leaders = BTreeMap::new();
            for id in cluster.ids() {
                let doc = cluster.status_doc(id).await?;
                for run in runs_of(&doc) {
                    let r = &run["replication"];
                    if run["leading"] == true && r["preferred"].as_u64() == Some(id) {
                        leaders.insert(run["partition"].as_u64()? as u32, id);
                    }
                }
            }
            let nodes: BTreeSet<u64> = leaders.values().copied().collect();
            (leaders.len() == PARTITIONS as usize && nodes.len() >= 2).then_some(leaders)
        },
    )
    .await
}

/// The pipeline's runs in one node's status document.
fn runs_of(doc: &serde_json::Value) -> Vec<serde_json::Value> {
    doc["pipelines"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == PIPELINE))
        .and_then(|p| p["partitions"].as_array().cloned())
        .unwrap_or_default()
}

fn cli(cluster: &Cluster, args: &[&str]) -> CliOutput {
    tokio::task::block_in_place(|| cluster.cli(args, Duration::from_secs(60)))
}

/// The executions named by `offset O retried` lines.
fn retried(pipeline_out: &str) -> BTreeSet<Execution> {
    pipeline_out
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&format!("pipeline/{PIPELINE} partition "))?;
            let (partition, rest) = rest.split_once(" offset ")?;
            let offset = rest.strip_suffix(" retried")?;
            Some((partition.parse().ok()?, offset.parse().ok()?))
        })
        .collect()
}

/// `hadron pipeline status PIPELINE --json --url ALL`: the status merged
/// over the nodes, when it printed JSON.
fn merged_status(cluster: &Cluster, all: &str) -> Option<serde_json::Value> {
    let out = cli(
        cluster,
        &["pipeline", "status", PIPELINE, "--json", "--url", all],
    );
    serde_json::from_str(out.stdout.trim()).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_status_and_retry_cover_the_runs_every_node_leads() {
    let cluster = Cluster::start(ClusterOptions {
        resources: resources(),
        ..ClusterOptions::default()
    });
    let leaders = settled_leaders(&cluster).await;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let healed = Arc::new(AtomicBool::new(false));
    start_handlers(&cluster, &seen, &healed).await;

    // A good and a bad job on every partition.
    let publisher = cluster
        .client_of_all()
        .publisher_for("jobs", "admin-test")
        .await
        .unwrap();
    let mut bad = BTreeSet::new();
    let mut good = BTreeSet::new();
    for partition in 0..PARTITIONS {
        for kind in ["good", "bad"] {
            let event = NewEvent::new("job", format!("{kind}-{partition}").into_bytes());
            let published = publisher.publish_to(partition, event).await.unwrap();
            let set = if kind == "bad" { &mut bad } else { &mut good };
            set.insert((partition, published.offset));
        }
    }
    // Every bad job failed for good (its two attempts), every good one
    // completed, as the leaders count them.
    let urls: Vec<String> = cluster
        .ids()
        .into_iter()
        .map(|id| cluster.client_addr(id))
        .collect();
    let all = urls.join(",");
    let want_failed = bad.len() as u64;
    let merged = eventually(
        Duration::from_secs(60),
        "every bad job failed and every good one completed",
        || {
            let all = all.clone();
            let cluster = &cluster;
            async move {
                let doc = merged_status(cluster, &all)?;
                let e = &doc["executions"];
                (e["failed"].as_u64() == Some(want_failed) && e["completed"].as_u64() == Some(4))
                    .then_some(doc)
            }
        },
    )
    .await;
    assert!(merged.get("unled").is_none(), "{merged}");
    assert_eq!(merged["stages"][0]["failed"], want_failed, "{merged}");
    let failed: BTreeSet<Execution> = merged["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            let partition = p["partition"].as_u64().unwrap() as u32;
            let fails = p["failed_executions"].as_array().unwrap().clone();
            fails
                .into_iter()
                .map(move |f| (partition, f["offset"].as_u64().unwrap()))
        })
        .collect();
    assert_eq!(failed, bad);
    for (&execution, &n) in &seen.lock().unwrap().failures {
        assert!(bad.contains(&execution), "{execution:?} failed");
        assert_eq!(n, 2, "{execution:?} ran {n} times, not maxAttempts 2");
    }
    // The table says so too.
    let out = cli(&cluster, &["pipeline", "status", PIPELINE, "--url", &all]);
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.stdout.contains("0 active, 4 completed, 4 failed"),
        "{}",
        out.stdout
    );

    // One node alone counts only the partitions it runs, and names the
    // others' leaders.
    let a = leaders[&0];
    let of_a: BTreeSet<u32> = leaders
        .iter()
        .filter(|&(_, &id)| id == a)
        .map(|(&p, _)| p)
        .collect();
    let url_a = cluster.client_addr(a);
    let out = cli(&cluster, &["pipeline", "status", PIPELINE, "--url", &url_a]);
    assert!(out.status.success(), "{}", out.stderr);
    let line = format!("{} failed", of_a.len());
    assert!(out.stdout.contains(&line), "{line} in {}", out.stdout);
    for (&p, &id) in leaders.iter().filter(|&(_, &id)| id != a) {
        let named = format!("partition {p}: led by node {id}");
        assert!(out.stdout.contains(&named), "{named} in {}", out.stdout);
    }

    healed.store(true, Ordering::SeqCst);
    // Retried through A alone: A's executions run again, the others are
    // named with their leader, and the command fails.
    let out = cli(&cluster, &["pipeline", "retry", PIPELINE, "--url", &url_a]);
    assert!(!out.status.success(), "{}", out.stdout);
    let by_a = retried(&out.stdout);
    let want_a: BTreeSet<Execution> = bad
        .iter()
        .copied()
        .filter(|(p, _)| of_a.contains(p))
        .collect();
    assert_eq!(by_a, want_a, "{}", out.stdout);
    for (&p, &id) in leaders.iter().filter(|&(_, &id)| id != a) {
        let named =
            format!("pipeline/{PIPELINE} partition {p}: led by node {id}, not retried here");
        assert!(out.stdout.contains(&named), "{named} in {}", out.stdout);
    }
    assert!(out.stderr.contains("not retried"), "{}", out.stderr);

    // One execution led elsewhere, asked of A: the client follows A's
    // NotLeader to its leader.
    let &(p, o) = bad.iter().find(|(p, _)| !of_a.contains(p)).unwrap();
    let (p_arg, o_arg) = (p.to_string(), o.to_string());
    let args = [
        "pipeline",
        "retry",
        PIPELINE,
        "--partition",
        &p_arg,
        "--offset",
        &o_arg,
        "--url",
        &url_a,
    ];
    let out = cli(&cluster, &args);
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(
        out.stdout.trim(),
        format!("pipeline/{PIPELINE} partition {p} offset {o} retried")
    );

    // Retried through every node: the rest, each once, by its leader.
    let out = cli(&cluster, &["pipeline", "retry", PIPELINE, "--url", &all]);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    let by_all = retried(&out.stdout);
    let mut rest: BTreeSet<Execution> = bad.difference(&want_a).copied().collect();
    rest.remove(&(p, o));
    assert_eq!(by_all, rest, "{}", out.stdout);
    for p in &of_a {
        let none = format!("pipeline/{PIPELINE} partition {p}: no failed executions");
        assert!(out.stdout.contains(&none), "{none} in {}", out.stdout);
    }
    assert!(!out.stdout.contains("not retried"), "{}", out.stdout);

    // Every execution completes; the bad ones ran `work` once more and
    // `report` received its output.
    eventually(
        Duration::from_secs(60),
        "every execution completed after the retry",
        || {
            let all = all.clone();
            let cluster = &cluster;
            async move {
                let doc = merged_status(cluster, &all)?;
                let e = &doc["executions"];
                (e["failed"].as_u64() == Some(0)
                    && e["active"].as_u64() == Some(0)
                    && e["completed"].as_u64() == Some(8))
                .then_some(())
            }
        },
    )
    .await;
    let seen = seen.lock().unwrap();
    for &execution in bad.iter().chain(&good) {
        assert_eq!(seen.worked.get(&execution), Some(&1), "{execution:?}");
        let kind = if bad.contains(&execution) {
            "bad"
        } else {
            "good"
        };
        let want = format!("worked:{kind}-{}", execution.0);
        let reported = &seen.reported[&execution];
        assert!(
            !reported.is_empty() && reported.iter().all(|r| *r == want),
            "{execution:?}: report received {reported:?}, not {want}"
        );
    }
}
