//! The walkthrough's pipeline on a replicated stream, across real
//! processes: 3 nodes on loopback, stage handlers registered on every node
//! through one client with the bootstrap list, triggers published while the
//! node that runs the pipeline (the leader of its outputs group) is
//! SIGKILLed and restarted, and then cut off from the others and healed.
//!
//! Every handler run is recorded with the output it returned, numbered per
//! (execution, stage) in the order the runs began. Afterwards:
//! - every execution completed, each of its five stages with an output;
//! - every dependent, in every run of it, received for each dependency the
//!   same output: one output per (execution, stage), as committed;
//! - no stage ran again after the run whose output was committed (the one
//!   its dependents received): a completed stage never runs again.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed set-up step must fail the test at once"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hadron::{Client, NewEvent, StageInput};
use hadron_tests::cluster::{Cluster, ClusterOptions};

const PIPELINE: &str = "service-creation";

/// The stream, then the walkthrough's pipeline on it.
fn resources() -> String {
    format!(
        "apiVersion: hadron.rs/v1beta1\nkind: Stream\nmetadata: {{ name: events }}\nspec: {{ partitions: 1, replicas: 3 }}\n---{}",
        hadron_tests::SERVICE_CREATION_PIPELINE
    )
}

const STAGES: [&str; 5] = [
    "deploy-service",
    "setup-billing",
    "setup-monitoring",
    "notify-user",
    "sync",
];

/// One handler run: its execution (root offset), its stage, its number
/// among the runs of that (execution, stage), and the inputs it got.
#[derive(Debug, Clone)]
struct Run {
    root: u64,
    stage: String,
    n: u32,
    inputs: BTreeMap<String, String>,
}

#[derive(Debug, Default)]
struct Recorder {
    runs: Vec<Run>,
    counts: BTreeMap<(u64, String), u32>,
    /// Told of every run recorded.
    recorded: Arc<tokio::sync::Notify>,
}

/// Registers a handler for every stage with a client that knows every
/// node; each run is recorded and answers `stage@root#n`.
async fn start_handlers(cluster: &Cluster, recorder: &Arc<Mutex<Recorder>>) {
    let client = cluster.client_of_all();
    for stage in STAGES {
        let recorder = recorder.clone();
        let handler = move |input: StageInput| {
            let recorder = recorder.clone();
            async move {
                let inputs = input
                    .inputs
                    .iter()
                    .map(|(s, e)| (s.clone(), String::from_utf8_lossy(&e.data).into_owned()))
                    .collect();
                let n = {
                    let mut r = recorder.lock().unwrap();
                    let count = r
                        .counts
                        .entry((input.offset, input.stage.clone()))
                        .or_insert(0);
                    *count += 1;
                    let n = *count;
                    r.runs.push(Run {
                        root: input.offset,
                        stage: input.stage.clone(),
                        n,
                        inputs,
                    });
                    r.recorded.notify_waiters();
                    n
                };
                // Some work, so that runs are in flight when a node dies.
                tokio::time::sleep(Duration::from_millis(20)).await;
                let data = format!("{}@{}#{n}", input.stage, input.offset);
                Ok::<NewEvent, std::io::Error>(NewEvent::new("stage.done", data.into_bytes()))
            }
        };
        client.pipeline(PIPELINE, stage, handler).await.unwrap();
    }
}

/// The node whose run of the pipeline leads its outputs group (the one
/// of the highest term that claims it), per the nodes' status.
async fn pipeline_leader(cluster: &mut Cluster) -> Option<u64> {
    let mut best: Option<(u64, u64)> = None;
    for id in cluster.ids() {
        let Some(doc) = cluster.status_doc(id).await else {
            continue;
        };
        let Some(pipeline) = doc["pipelines"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == PIPELINE))
        else {
            continue;
        };
        let r = &pipeline["partitions"][0]["replication"];
        let term = r["term"].as_u64().unwrap_or(0);
        if r["is_leader"] == true && best.is_none_or(|(t, _)| term > t) {
            best = Some((term, id));
        }
    }
    best.map(|(_, id)| id)
}

async fn await_pipeline_leader(cluster: &mut Cluster, not: Option<u64>) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(id) = pipeline_leader(cluster).await
            && Some(id) != not
        {
            return id;
        }
        assert!(
            Instant::now() < deadline,
            "no pipeline leader other than {not:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Publishes `count` triggers (ids `svc-{from}`..), each until
/// acknowledged; returns their offsets.
async fn publish(client: &Client, from: usize, count: usize) -> Vec<u64> {
    let publisher = client
        .publisher_for("events", "provisioning")
        .await
        .unwrap();
    let mut offsets = Vec::new();
    for i in from..from + count {
        let mut event = NewEvent::new("service.created", format!("svc-{i}").into_bytes());
        event.id = format!("svc-{i}");
        let published = publisher.publish(event).await.unwrap();
        offsets.push(published.offset);
    }
    offsets
}

/// Runs of each (execution, stage) recorded so far.
fn runs_of(recorder: &Arc<Mutex<Recorder>>) -> Vec<Run> {
    recorder.lock().unwrap().runs.clone()
}

/// Waits until every execution of `roots` had its `sync` stage run and the
/// pipeline's leader counts them all completed.
async fn await_completed(cluster: &mut Cluster, roots: &BTreeSet<u64>) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(leader) = pipeline_leader(cluster).await
            && let Some(doc) = cluster.status_doc(leader).await
            && let Some(p) = doc["pipelines"]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["name"] == PIPELINE))
            && p["executions"]["completed"].as_u64() == Some(roots.len() as u64)
            && p["executions"]["active"].as_u64() == Some(0)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the executions did not all complete"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_walkthrough_pipeline_completes_each_stage_once_across_leader_kills_and_cuts() {
    let mut cluster = Cluster::start(ClusterOptions {
        resources: resources(),
        proxies: true,
        ..ClusterOptions::default()
    });
    let recorder = Arc::new(Mutex::new(Recorder::default()));
    start_handlers(&cluster, &recorder).await;
    let publisher = cluster.client_of_all();
    let mut roots = BTreeSet::new();
    let mut published = 0;
    let mut leaders = Vec::new();
    for round in 0..3 {
        roots.extend(publish(&publisher, published, 15).await);
        published += 15;
        let leader = await_pipeline_leader(&mut cluster, None).await;
        // Kill it while its stages are in flight.
        eventually_runs(&recorder, 5 * (round + 1)).await;
        cluster.node(leader).kill_now();
        leaders.push(leader);
        await_pipeline_leader(&mut cluster, Some(leader)).await;
        cluster.node(leader).restart();
    }
    // The pipeline's node cut off from the others, then healed.
    roots.extend(publish(&publisher, published, 15).await);
    let cut = await_pipeline_leader(&mut cluster, None).await;
    cluster.isolate(cut);
    let next = await_pipeline_leader(&mut cluster, Some(cut)).await;
    cluster.rejoin(cut);
    leaders.extend([cut, next]);
    await_completed(&mut cluster, &roots).await;

    let runs = runs_of(&recorder);
    check_runs(&runs, &roots);
    eprintln!(
        "pipeline leaders {leaders:?}; {} executions, {} handler runs",
        roots.len(),
        runs.len()
    );
}

/// Waits until at least `n` handler runs were recorded.
async fn eventually_runs(recorder: &Arc<Mutex<Recorder>>, n: usize) {
    let recorded = recorder.lock().unwrap().recorded.clone();
    let wait = async {
        loop {
            let next = recorded.notified();
            if recorder.lock().unwrap().runs.len() >= n {
                return;
            }
            next.await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .unwrap_or_else(|_| panic!("fewer than {n} handler runs"));
}

/// The checks of the module header.
fn check_runs(runs: &[Run], roots: &BTreeSet<u64>) {
    // The output each (execution, stage) had as its dependents saw it.
    let mut seen: BTreeMap<(u64, String), String> = BTreeMap::new();
    for run in runs {
        for (dep, output) in &run.inputs {
            let key = (run.root, dep.clone());
            if let Some(earlier) = seen.get(&key) {
                assert_eq!(
                    earlier, output,
                    "two outputs of {dep} of execution {} reached its dependents",
                    run.root
                );
            }
            seen.insert(key, output.clone());
        }
    }
    for &root in roots {
        for stage in STAGES {
            let of_stage: Vec<&Run> = runs
                .iter()
                .filter(|r| r.root == root && r.stage == stage)
                .collect();
            assert!(!of_stage.is_empty(), "{stage} of {root} never ran");
            if stage == "sync" {
                let deps: BTreeSet<&str> = of_stage[0].inputs.keys().map(String::as_str).collect();
                assert_eq!(deps, STAGES[..4].iter().copied().collect());
                continue;
            }
            let committed = seen
                .get(&(root, stage.to_owned()))
                .unwrap_or_else(|| panic!("no dependent of {root} received {stage}"));
            let n: u32 = committed
                .rsplit('#')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap();
            assert_eq!(committed, &format!("{stage}@{root}#{n}"));
            let later: Vec<u32> = of_stage.iter().map(|r| r.n).filter(|&m| m > n).collect();
            assert!(
                later.is_empty(),
                "{stage} of {root} ran again (runs {later:?}) after its run {n} completed"
            );
        }
    }
}
