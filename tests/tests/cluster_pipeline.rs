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
use std::time::Duration;

use hadron::{Client, NewEvent, StageInput};
use hadron_tests::cluster::{Cluster, ClusterOptions};
use hadron_tests::eventually;
use hadron_tests::run_cli;

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
async fn start_handlers(cluster: &Cluster, recorder: &Arc<Mutex<Recorder>>, stages: &[&str]) {
    let client = cluster.client_of_all();
    for &stage in stages {
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
async fn pipeline_leader(cluster: &Cluster) -> Option<u64> {
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

async fn await_pipeline_leader(cluster: &Cluster, not: Option<u64>) -> u64 {
    let what = format!("a pipeline leader other than {not:?}");
    eventually(Duration::from_secs(30), &what, || async move {
        pipeline_leader(cluster).await.filter(|&id| Some(id) != not)
    })
    .await
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
async fn await_completed(cluster: &Cluster, roots: &BTreeSet<u64>) {
    let want = roots.len() as u64;
    eventually(
        Duration::from_secs(90),
        "every execution completed on the pipeline's leader",
        || async move {
            let doc = cluster.status_doc(pipeline_leader(cluster).await?).await?;
            let p = doc["pipelines"]
                .as_array()?
                .iter()
                .find(|p| p["name"] == PIPELINE)?
                .clone();
            (p["executions"]["completed"].as_u64() == Some(want)
                && p["executions"]["active"].as_u64() == Some(0))
            .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_walkthrough_pipeline_completes_each_stage_once_across_leader_kills_and_cuts() {
    let mut cluster = Cluster::start(ClusterOptions {
        resources: resources(),
        proxies: true,
        ..ClusterOptions::default()
    });
    let recorder = Arc::new(Mutex::new(Recorder::default()));
    start_handlers(&cluster, &recorder, &STAGES).await;
    let publisher = cluster.client_of_all();
    let mut roots = BTreeSet::new();
    let mut published = 0;
    let mut leaders = Vec::new();
    for round in 0..3 {
        roots.extend(publish(&publisher, published, 15).await);
        published += 15;
        let leader = await_pipeline_leader(&cluster, None).await;
        // Kill it while its stages are in flight.
        eventually_runs(&recorder, 5 * (round + 1)).await;
        cluster.node(leader).kill_now();
        leaders.push(leader);
        await_pipeline_leader(&cluster, Some(leader)).await;
        cluster.node(leader).restart();
    }
    // The pipeline's node cut off from the others, then healed.
    roots.extend(publish(&publisher, published, 15).await);
    let cut = await_pipeline_leader(&cluster, None).await;
    cluster.isolate(cut);
    let next = await_pipeline_leader(&cluster, Some(cut)).await;
    cluster.rejoin(cut);
    leaders.extend([cut, next]);
    await_completed(&cluster, &roots).await;

    let runs = runs_of(&recorder);
    check_runs(&runs, &roots);

    // `hadron cluster status` lists the outputs group with its leader.
    let leader = await_pipeline_leader(&cluster, None).await;
    let urls: Vec<String> = cluster
        .ids()
        .into_iter()
        .map(|id| cluster.client_addr(id))
        .collect();
    let out = run_cli(
        &["cluster", "status", "--json", "--url", &urls.join(",")],
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{}", out.stderr);
    let doc: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    let outputs = doc["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["stream"] == format!("pipelines/{PIPELINE}") && p["partition"] == 0)
        .unwrap_or_else(|| panic!("no outputs group in {doc}"));
    assert_eq!(outputs["leader"], leader, "{doc}");
    assert_eq!(outputs["replicas"].as_array().unwrap().len(), 3, "{doc}");
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

/// The walkthrough's own flow on a cluster: the pipeline starts with
/// `deploy-service` alone; executions complete; then the five-stage
/// version is applied once (the metadata group applies it on every node)
/// and the runs are replaced on every replica. The
/// first stage's outputs made before the update are the ones the new
/// stages receive (never run again), and new triggers run all five.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_walkthrough_update_adds_stages_on_every_node_without_running_a_completed_one_again() {
    let one_stage = {
        let mut yaml = String::new();
        for line in hadron_tests::SERVICE_CREATION_PIPELINE.lines() {
            if line.trim_start().starts_with("- name: setup-billing") {
                break;
            }
            yaml.push_str(line);
            yaml.push('\n');
        }
        yaml
    };
    let cluster = Cluster::start(ClusterOptions {
        resources: format!(
            "apiVersion: hadron.rs/v1beta1\nkind: Stream\nmetadata: {{ name: events }}\nspec: {{ partitions: 1, replicas: 3 }}\n---{one_stage}"
        ),
        ..ClusterOptions::default()
    });
    let recorder = Arc::new(Mutex::new(Recorder::default()));
    start_handlers(&cluster, &recorder, &STAGES[..1]).await;
    let publisher = cluster.client_of_all();
    let first: BTreeSet<u64> = publish(&publisher, 0, 10).await.into_iter().collect();
    // Every first execution completed (its one stage's output committed).
    await_completed(&cluster, &first).await;

    // Sent once, through node 1: the metadata group applies it on every
    // node.
    let lines = cluster
        .client(1)
        .apply(hadron_tests::SERVICE_CREATION_PIPELINE)
        .await
        .unwrap();
    assert!(
        lines.iter().any(|l| l.contains("service-creation")),
        "{lines:?}"
    );
    start_handlers(&cluster, &recorder, &STAGES[1..]).await;
    let second: BTreeSet<u64> = publish(&publisher, 10, 10).await.into_iter().collect();
    let roots: BTreeSet<u64> = first.union(&second).copied().collect();
    await_completed(&cluster, &roots).await;
    let runs = runs_of(&recorder);
    check_runs(&runs, &roots);
    // deploy-service ran once per execution: its outputs from before the
    // update were kept by every replica's replaced run.
    for root in &first {
        let deploys = runs
            .iter()
            .filter(|r| r.root == *root && r.stage == "deploy-service")
            .count();
        assert_eq!(deploys, 1, "deploy-service of {root} ran {deploys} times");
    }
}
