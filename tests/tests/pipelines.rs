//! Pipelines end to end, against the real binary: the seed's
//! service-creation DAG runs every stage once per execution with the
//! outputs of its dependencies; failed attempts are retried with backoff;
//! a handler that vanishes mid-delivery hands its stage to another; a
//! `kill -9` mid-run neither loses an execution nor reruns a completed
//! stage; exhausted retries fail an execution until `pipeline retry`;
//! `maxParallel` bounds the executions in progress; start points pick the
//! first event; `hadron apply` rejects invalid pipelines by field; and
//! handlers attached before an update keep working after it.
//!
//! Every handler records each run (a global start sequence number, the
//! attempt, the root event and the inputs) in a [`Recorder`], so the
//! assertions are about outcomes: which stage ran how often for which
//! execution, what it received, and what `pipeline status` reports.
//! Every wait is bounded.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a failed set-up step must fail the test at once, with its message"
)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hadron::{Client, ClientOptions, Event, NewEvent, PipelineHandle, StageInput};
use hadron_tests::{
    CliOutput, Frame, RawConn, RawStageDelivery, Server, create_stream, event_bytes, eventually,
    next_offsets, run_cli, status,
};
use hadron_wire::Message;

/// Longest wait for a pipeline to reach an expected state.
const WAIT: Duration = Duration::from_secs(30);

/// Waits until `gate` opens; an error (a failed attempt) after [`WAIT`].
async fn wait_for_gate(gate: &AtomicBool) -> Result<(), String> {
    let deadline = Instant::now() + WAIT;
    while !gate.load(Ordering::SeqCst) {
        if Instant::now() > deadline {
            return Err("the gate never opened".to_owned());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}
/// Longest a CLI command may run.
const CLI_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest a single client request (apply, registration, publish) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

use hadron_tests::SERVICE_CREATION_PIPELINE as SERVICE_CREATION;

/// The seed's stages and their dependencies, in document order.
const SEED_STAGES: [(&str, &[&str]); 5] = [
    ("deploy-service", &[]),
    ("setup-billing", &["deploy-service"]),
    ("setup-monitoring", &["deploy-service"]),
    ("notify-user", &["deploy-service"]),
    (
        "sync",
        &[
            "deploy-service",
            "setup-billing",
            "setup-monitoring",
            "notify-user",
        ],
    ),
];

// ---------------------------------------------------------------------------
// Recording handlers
// ---------------------------------------------------------------------------

/// One handler run, as the handler saw it.
#[derive(Debug, Clone)]
struct Run {
    /// Order of the run's start among all runs of the recorder.
    seq: u64,
    attempt: u32,
    partition: u32,
    offset: u64,
    root: Event,
    inputs: BTreeMap<String, Event>,
    started: Instant,
    /// When the handler returned, and whether with success.
    finished: Option<(Instant, bool)>,
}

/// Every run of every stage, by (root event id, stage).
#[derive(Debug, Default)]
struct Recorder {
    next_seq: AtomicU64,
    runs: Mutex<BTreeMap<(String, String), Vec<Run>>>,
}

/// Where a run is in its recorder, to mark it finished.
type Slot = (String, String, usize);

impl Recorder {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<(String, String), Vec<Run>>> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn start(&self, input: &StageInput) -> Slot {
        let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
        let key = (input.root.id.clone(), input.stage.clone());
        let mut runs = self.lock();
        let list = runs.entry(key.clone()).or_default();
        list.push(Run {
            seq,
            attempt: input.attempt,
            partition: input.partition,
            offset: input.offset,
            root: input.root.clone(),
            inputs: input.inputs.clone(),
            started: Instant::now(),
            finished: None,
        });
        (key.0, key.1, list.len() - 1)
    }

    fn finish(&self, slot: &Slot, ok: bool) {
        let mut runs = self.lock();
        let run = &mut runs.get_mut(&(slot.0.clone(), slot.1.clone())).unwrap()[slot.2];
        run.finished = Some((Instant::now(), ok));
    }

    /// The runs of `stage` for the execution of root event `root`.
    fn runs(&self, root: &str, stage: &str) -> Vec<Run> {
        self.lock()
            .get(&(root.to_owned(), stage.to_owned()))
            .cloned()
            .unwrap_or_default()
    }

    /// Root event ids with at least one run of `stage` that succeeded.
    fn succeeded(&self, stage: &str) -> BTreeSet<String> {
        self.lock()
            .iter()
            .filter(|((_, s), runs)| {
                s == stage && runs.iter().any(|r| matches!(r.finished, Some((_, true))))
            })
            .map(|((root, _), _)| root.clone())
            .collect()
    }

    /// Root event ids with at least one run of `stage`.
    fn started(&self, stage: &str) -> BTreeSet<String> {
        self.lock()
            .keys()
            .filter(|(_, s)| s == stage)
            .map(|(root, _)| root.clone())
            .collect()
    }

    /// Every root event id any stage ran for.
    fn roots(&self) -> BTreeSet<String> {
        self.lock().keys().map(|(root, _)| root.clone()).collect()
    }

    fn snapshot(&self) -> BTreeMap<(String, String), Vec<Run>> {
        self.lock().clone()
    }
}

type HandlerFuture = Pin<Box<dyn Future<Output = Result<NewEvent, String>> + Send>>;

/// The output every test handler returns: type `<stage>.done`, data
/// `<root id>/<stage>`, so a dependent can tell whose output it got.
fn output_of(input: &StageInput) -> NewEvent {
    NewEvent::new(
        format!("{}.done", input.stage),
        format!("{}/{}", input.root.id, input.stage).into_bytes(),
    )
}

/// A stage handler that records each run in `rec`, then runs `behave`:
/// `Ok(())` completes the stage with [`output_of`], `Err(text)` fails the
/// attempt with that text.
fn recording<B, Fut>(
    rec: &Arc<Recorder>,
    behave: B,
) -> impl Fn(StageInput) -> HandlerFuture + Send + Sync + 'static
where
    B: Fn(StageInput) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let rec = Arc::clone(rec);
    let behave = Arc::new(behave);
    move |input: StageInput| {
        let rec = Arc::clone(&rec);
        let behave = Arc::clone(&behave);
        Box::pin(async move {
            let slot = rec.start(&input);
            let result = (*behave)(input.clone()).await;
            rec.finish(&slot, result.is_ok());
            result.map(|()| output_of(&input))
        })
    }
}

/// A handler behaviour that succeeds at once.
async fn succeed(_: StageInput) -> Result<(), String> {
    Ok(())
}

/// Registers `handler` for `pipeline`/`stage` and waits for the server to
/// accept it.
async fn attach<H>(
    client: &Client,
    pipeline: &str,
    stage: &str,
    max_in_flight: u32,
    handler: H,
) -> PipelineHandle
where
    H: Fn(StageInput) -> HandlerFuture + Send + Sync + 'static,
{
    tokio::time::timeout(
        REQUEST_TIMEOUT,
        client.pipeline_with(pipeline, stage, max_in_flight, handler),
    )
    .await
    .unwrap_or_else(|_| panic!("registering {pipeline}/{stage} timed out"))
    .unwrap_or_else(|e| panic!("registering {pipeline}/{stage}: {e}"))
}

// ---------------------------------------------------------------------------
// Server, CLI and status helpers
// ---------------------------------------------------------------------------

async fn apply(client: &Client, yaml: &str) -> Vec<String> {
    tokio::time::timeout(REQUEST_TIMEOUT, client.apply(yaml))
        .await
        .expect("apply timed out")
        .unwrap_or_else(|e| panic!("apply failed: {e}\n{yaml}"))
}

/// Publishes `events` to `stream` and returns (id -> (partition, offset)).
async fn publish(
    client: &Client,
    stream: &str,
    events: Vec<NewEvent>,
) -> BTreeMap<String, (u32, u64)> {
    let publisher = client.publisher_for(stream, "pipelines-e2e").await.unwrap();
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    assert!(
        ids.iter().all(|id| !id.is_empty()),
        "tests name their events"
    );
    let published = tokio::time::timeout(REQUEST_TIMEOUT, publisher.publish_batch(events))
        .await
        .expect("publish timed out")
        .unwrap_or_else(|e| panic!("publish to {stream}: {e}"));
    ids.into_iter()
        .zip(published)
        .map(|(id, p)| {
            assert!(!p.duplicate, "{id} published twice");
            (id, (p.partition, p.offset))
        })
        .collect()
}

/// Runs the CLI off the async workers (it blocks until the command ends).
async fn cli(args: &[&str]) -> CliOutput {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run_cli(&refs, CLI_TIMEOUT)
    })
    .await
    .unwrap()
}

/// `hadron pipeline status NAME --json`, parsed.
async fn cli_pipeline_status(server: &Server, name: &str) -> serde_json::Value {
    let url = server.addr();
    let out = cli(&["pipeline", "status", name, "--json", "--url", &url]).await;
    assert!(out.status.success(), "pipeline status failed: {out:?}");
    serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("pipeline status --json is not JSON ({e}): {out:?}"))
}

/// The pipeline's entry of the server's status document, if it has one.
async fn pipeline_doc(client: &Client, name: &str) -> Option<serde_json::Value> {
    status(client).await["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
}

/// A pipeline's `executions` totals: (active, completed, failed).
fn executions(doc: &serde_json::Value) -> (u64, u64, u64) {
    let e = &doc["executions"];
    (
        e["active"].as_u64().unwrap(),
        e["completed"].as_u64().unwrap(),
        e["failed"].as_u64().unwrap(),
    )
}

/// Waits until the pipeline's totals are (active, completed, failed);
/// returns its status entry then.
async fn until_executions(client: &Client, name: &str, want: (u64, u64, u64)) -> serde_json::Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let doc = pipeline_doc(client, name).await;
        if let Some(doc) = &doc
            && executions(doc) == want
        {
            return doc.clone();
        }
        assert!(
            Instant::now() < deadline,
            "pipeline {name} did not reach executions (active, completed, failed) = {want:?} in {WAIT:?}; last status: {doc:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The entry of stage `stage` in a pipeline status document.
fn stage_doc<'a>(doc: &'a serde_json::Value, stage: &str) -> &'a serde_json::Value {
    doc["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == stage)
        .unwrap_or_else(|| panic!("no stage {stage:?} in {doc}"))
}

/// Asserts a stage's counters: completed, in flight, waiting, errors, failed.
fn assert_stage(doc: &serde_json::Value, stage: &str, want: [u64; 5]) {
    let s = stage_doc(doc, stage);
    let got = ["completed", "in_flight", "waiting", "errors", "failed"].map(|k| {
        s[k].as_u64()
            .unwrap_or_else(|| panic!("{k} missing in {s}"))
    });
    assert_eq!(
        got, want,
        "stage {stage} [completed, in_flight, waiting, errors, failed] in {doc}"
    );
}

/// Waits until `check` holds for the recorder.
async fn until_recorded(rec: &Recorder, what: &str, check: impl Fn(&Recorder) -> bool) {
    eventually(WAIT, what, || {
        let done = check(rec);
        async move { done.then_some(()) }
    })
    .await;
}

fn root_event(id: &str, ty: &str, subject: &str, data: &str) -> NewEvent {
    NewEvent {
        id: id.to_owned(),
        ty: ty.to_owned(),
        subject: Some(subject.to_owned()),
        data: data.as_bytes().to_vec(),
        ..NewEvent::default()
    }
}

// ---------------------------------------------------------------------------
// 1. The seed scenario
// ---------------------------------------------------------------------------

/// The seed walkthrough: 30 `service.created` events (and events of other
/// types, which must not trigger) through the five-stage service-creation
/// pipeline. Every stage runs exactly once per execution, on the first
/// attempt, with the root event and exactly the outputs of its
/// dependencies; `hadron pipeline status --json` counts 30 completed
/// executions and 30 completions per stage, and the scanner read every
/// event of every partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_pipeline_runs_every_stage_once_with_its_dependencies_outputs() {
    let server = Server::start();
    let client = server.client();
    assert_eq!(
        apply(&client, SERVICE_CREATION).await,
        vec!["pipeline/service-creation created (5 stages)"]
    );
    let rec = Arc::new(Recorder::default());
    let mut handles = Vec::new();
    for (stage, _) in SEED_STAGES {
        handles.push(
            attach(
                &client,
                "service-creation",
                stage,
                50,
                recording(&rec, succeed),
            )
            .await,
        );
    }

    const N: usize = 30;
    // Types that must not match the trigger `service.created`.
    const OTHER_TYPES: [&str; 4] = [
        "service.deleted",
        "service.created.v2",
        "service",
        "billing.service.created",
    ];
    let mut events = Vec::new();
    let mut sent: BTreeMap<String, NewEvent> = BTreeMap::new();
    for i in 0..N {
        let e = root_event(
            &format!("svc-{i}"),
            "service.created",
            &format!("customer-{}", i % 7),
            &format!(r#"{{"service":"postgres","n":{i}}}"#),
        );
        sent.insert(e.id.clone(), e.clone());
        events.push(e);
        if i % 3 == 0 {
            let ty = OTHER_TYPES[i / 3 % OTHER_TYPES.len()];
            events.push(root_event(
                &format!("other-{i}"),
                ty,
                &format!("customer-{}", i % 5),
                "{}",
            ));
        }
    }
    let at = publish(&client, "events", events).await;

    until_recorded(&rec, "sync succeeded for every execution", |r| {
        r.succeeded("sync").len() >= N
    })
    .await;
    let doc = until_executions(&client, "service-creation", (0, N as u64, 0)).await;

    // What ran, and what each run received.
    let expected_roots: BTreeSet<String> = sent.keys().cloned().collect();
    assert_eq!(
        rec.roots(),
        expected_roots,
        "executions ran for exactly the service.created events"
    );
    for (id, event) in &sent {
        let (partition, offset) = at[id];
        for (stage, deps) in SEED_STAGES {
            let runs = rec.runs(id, stage);
            assert_eq!(runs.len(), 1, "{stage} ran once for {id}: {runs:?}");
            let run = &runs[0];
            assert_eq!(run.attempt, 1, "{stage} of {id} on the first attempt");
            assert_eq!(
                (run.partition, run.offset),
                (partition, offset),
                "{stage} of {id}"
            );
            assert_eq!(run.root.id, event.id);
            assert_eq!(run.root.ty, "service.created");
            assert_eq!(run.root.subject, event.subject);
            assert_eq!(run.root.data, event.data, "{stage} of {id}: root data");
            let got: BTreeSet<&str> = run.inputs.keys().map(String::as_str).collect();
            let want: BTreeSet<&str> = deps.iter().copied().collect();
            assert_eq!(
                got, want,
                "{stage} of {id}: the inputs are its dependencies'"
            );
            for dep in deps {
                let input = &run.inputs[*dep];
                assert_eq!(
                    input.ty,
                    format!("{dep}.done"),
                    "{stage} of {id}: input {dep}"
                );
                assert_eq!(
                    input.data,
                    format!("{id}/{dep}").into_bytes(),
                    "{stage} of {id}: input {dep} is this execution's output"
                );
                assert_eq!(
                    input.id,
                    format!("service-creation/{dep}/{partition}/{offset}"),
                    "{stage} of {id}: the client's default output id"
                );
                let dep_run = &rec.runs(id, dep)[0];
                assert!(
                    dep_run.seq < run.seq,
                    "{stage} of {id} started after its dependency {dep} ran"
                );
            }
        }
    }

    // The status document, through the CLI.
    let cli_doc = cli_pipeline_status(&server, "service-creation").await;
    assert_eq!(cli_doc["name"], "service-creation");
    assert_eq!(cli_doc["source_stream"], "events");
    assert_eq!(executions(&cli_doc), (0, N as u64, 0), "{cli_doc}");
    for (stage, _) in SEED_STAGES {
        assert_stage(&cli_doc, stage, [N as u64, 0, 0, 0, 0]);
        assert!(
            stage_doc(&cli_doc, stage)["last_error"].is_null(),
            "no error for {stage}: {cli_doc}"
        );
    }
    let offsets = next_offsets(&status(&client).await, "events");
    let parts = cli_doc["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 4, "one entry per source partition: {cli_doc}");
    for part in parts {
        let p = part["partition"].as_u64().unwrap() as u32;
        let here = at
            .iter()
            .filter(|(id, (ep, _))| *ep == p && sent.contains_key(*id))
            .count() as u64;
        assert_eq!(part["completed"], here, "partition {p}: {part}");
        assert_eq!(part["active"], 0, "partition {p}: {part}");
        assert_eq!(part["failed"], 0, "partition {p}: {part}");
        assert_eq!(
            part["cursor"], offsets[&p],
            "partition {p}: the scanner read every event: {part}"
        );
        assert_eq!(part["unfinished"], serde_json::json!([]), "{part}");
        assert_eq!(part["failed_executions"], serde_json::json!([]), "{part}");
    }
    assert_eq!(doc["executions"], cli_doc["executions"]);
    for h in handles {
        h.cancel();
    }
}

// ---------------------------------------------------------------------------
// 2. Retries with backoff
// ---------------------------------------------------------------------------

/// A stage handler that fails twice per execution and then succeeds: it
/// sees attempts 1, 2 and 3, each after the backoff (50 ms, then 100 ms),
/// the stage completes, the stage before it does not run again and the
/// stage after it runs once; status counts two errors per execution with
/// the handler's text as the last error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempts_are_retried_with_backoff_until_the_stage_succeeds() {
    let server = Server::start();
    let client = server.client();
    apply(
        &client,
        r#"
apiVersion: hadron.rs/v1beta1
kind: Pipeline
metadata:
  name: payments
spec:
  sourceStream: events
  triggers: [order.placed]
  retry: { initialDelayMs: 50, maxDelayMs: 200, maxAttempts: 5 }
  ackTimeoutMs: 5000
  stages:
    - name: reserve
    - name: charge
      dependencies: [reserve]
    - name: receipt
      dependencies: [charge]
"#,
    )
    .await;
    let rec = Arc::new(Recorder::default());
    let flaky = {
        let rec = Arc::clone(&rec);
        move |input: StageInput| {
            // This run is already recorded: fail the first two per execution.
            let runs = rec.runs(&input.root.id, &input.stage).len();
            async move {
                if runs <= 2 {
                    Err(format!("card processor unavailable (run {runs})"))
                } else {
                    Ok(())
                }
            }
        }
    };
    let _reserve = attach(&client, "payments", "reserve", 16, recording(&rec, succeed)).await;
    let _charge = attach(&client, "payments", "charge", 16, recording(&rec, flaky)).await;
    let _receipt = attach(&client, "payments", "receipt", 16, recording(&rec, succeed)).await;

    const N: usize = 5;
    let events = (0..N)
        .map(|i| {
            root_event(
                &format!("order-{i}"),
                "order.placed",
                &format!("c-{i}"),
                "{}",
            )
        })
        .collect();
    publish(&client, "events", events).await;
    until_recorded(&rec, "receipt succeeded for every order", |r| {
        r.succeeded("receipt").len() >= N
    })
    .await;
    let doc = until_executions(&client, "payments", (0, N as u64, 0)).await;

    for i in 0..N {
        let id = format!("order-{i}");
        let charge = rec.runs(&id, "charge");
        let attempts: Vec<u32> = charge.iter().map(|r| r.attempt).collect();
        assert_eq!(attempts, vec![1, 2, 3], "charge attempts of {id}");
        let outcomes: Vec<bool> = charge.iter().map(|r| r.finished.unwrap().1).collect();
        assert_eq!(
            outcomes,
            vec![false, false, true],
            "charge outcomes of {id}"
        );
        // The hold starts when the server gets the nack, after the handler
        // returned: initialDelayMs x 2^(failures - 1).
        for (k, min_ms) in [(1usize, 50u64), (2, 100)] {
            let failed_at = charge[k - 1].finished.unwrap().0;
            let gap = charge[k].started.duration_since(failed_at);
            assert!(
                gap >= Duration::from_millis(min_ms),
                "attempt {} of charge for {id} came {gap:?} after failure {k}, before the {min_ms} ms backoff",
                k + 1
            );
        }
        assert_eq!(
            rec.runs(&id, "reserve").len(),
            1,
            "reserve ran once for {id}"
        );
        let receipt = rec.runs(&id, "receipt");
        assert_eq!(receipt.len(), 1, "receipt ran once for {id}");
        assert_eq!(receipt[0].attempt, 1);
        assert_eq!(
            receipt[0].inputs["charge"].data,
            format!("{id}/charge").into_bytes(),
            "receipt got the successful charge's output"
        );
    }
    assert_stage(&doc, "reserve", [N as u64, 0, 0, 0, 0]);
    assert_stage(&doc, "charge", [N as u64, 0, 0, 2 * N as u64, 0]);
    assert_stage(&doc, "receipt", [N as u64, 0, 0, 0, 0]);
    let last_error = stage_doc(&doc, "charge")["last_error"]
        .as_str()
        .unwrap_or("");
    assert!(
        last_error.contains("card processor unavailable"),
        "last_error of charge: {doc}"
    );
}

// ---------------------------------------------------------------------------
// 3. A handler that disconnects mid-delivery
// ---------------------------------------------------------------------------

/// Registers a raw stage member; returns the connection.
async fn raw_stage_member(server: &Server, pipeline: &str, stage: &str) -> RawConn {
    raw_stage_member_with_room(server, pipeline, stage, 4).await
}

/// [`raw_stage_member`] with room for `max_in_flight` deliveries.
async fn raw_stage_member_with_room(
    server: &Server,
    pipeline: &str,
    stage: &str,
    max_in_flight: u32,
) -> RawConn {
    RawConn::stage_member(server.port(), pipeline, stage, max_in_flight).await
}

/// Acks stage delivery `delivery_id` with `output` on a raw member and
/// waits for the `AckOk`, keeping the stage deliveries that arrive
/// meanwhile in `queued`, in order.
async fn raw_stage_ack(
    member: &mut RawConn,
    delivery_id: u64,
    output: &[u8],
    queued: &mut VecDeque<RawStageDelivery>,
) {
    let id = member
        .send(&Message::StageAck(hadron_wire::StageAck {
            delivery_id,
            output,
        }))
        .await;
    loop {
        match member.recv().await {
            Some(Frame::StageDelivery(d)) => queued.push_back(*d),
            Some(Frame::AckOk { request_id }) if request_id == id => return,
            other => panic!("expected AckOk for stage ack {id}, got {other:?}"),
        }
    }
}

/// Waits for one stage delivery on a raw member.
async fn raw_stage_delivery(member: &mut RawConn) -> RawStageDelivery {
    match member.recv_within(Duration::from_secs(10)).await {
        Some(Some(Frame::StageDelivery(d))) => *d,
        other => panic!("expected a StageDelivery, got {other:?}"),
    }
}

/// A raw stage member takes a delivery and closes its socket without
/// answering. With the ack timeout at 30 s, the stage must go out again
/// at once: to a client handler of the stage that was already attached,
/// and (second pipeline) to one that attaches only after the close. Either
/// way the stage completes once, its dependent runs once, and the
/// disconnect is not counted as the handler's error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_whose_handler_disconnects_mid_delivery_goes_out_again_and_completes_once() {
    let server = Server::start();
    let client = server.client();
    let yaml = |name: &str, trigger: &str| {
        format!(
            r#"
apiVersion: hadron.rs/v1beta1
kind: Pipeline
metadata:
  name: {name}
spec:
  sourceStream: events
  triggers: [{trigger}]
  ackTimeoutMs: 30000
  stages:
    - name: boot
    - name: configure
      dependencies: [boot]
"#
        )
    };
    apply(&client, &yaml("provision", "vm.requested")).await;
    apply(&client, &yaml("rebuild", "vm.rebuilt")).await;

    // The real handler is attached while the raw member holds the delivery
    // (with room for that one only: see the barrier below).
    let rec = Arc::new(Recorder::default());
    let mut raw = raw_stage_member_with_room(&server, "provision", "boot", 1).await;
    let at = publish(
        &client,
        "events",
        vec![root_event("vm-1", "vm.requested", "vm-1", "{}")],
    )
    .await;
    raw_stage_delivery(&mut raw).await;
    let _boot = attach(&client, "provision", "boot", 4, recording(&rec, succeed)).await;
    let _configure = attach(
        &client,
        "provision",
        "configure",
        4,
        recording(&rec, succeed),
    )
    .await;
    // The barrier: a marker execution on vm-1's partition, published after
    // the handlers attached, runs through both stages in the client. A
    // round hands ready stages out oldest execution first, so had the
    // server given vm-1's boot to the new handler, it would have sent it
    // before the marker's boot (the full raw member can take neither), on
    // the same connection, and the handler would have started it before
    // the marker's configure came back a round trip later.
    let marker = publish(
        &client,
        "events",
        vec![root_event("vm-1-marker", "vm.requested", "vm-1", "{}")],
    )
    .await;
    assert_eq!(marker["vm-1-marker"].0, at["vm-1"].0, "one partition");
    until_recorded(&rec, "configure succeeded for the marker", |r| {
        r.succeeded("configure").contains("vm-1-marker")
    })
    .await;
    assert!(
        rec.runs("vm-1", "boot").is_empty(),
        "boot went to a second handler while the first still held it"
    );
    let closed_at = Instant::now();
    raw.close().await;
    until_recorded(&rec, "configure succeeded for vm-1", |r| {
        r.succeeded("configure").contains("vm-1")
    })
    .await;
    let boot = rec.runs("vm-1", "boot");
    assert_eq!(boot.len(), 1, "boot ran once in the client: {boot:?}");
    assert!(
        boot[0].started.duration_since(closed_at) < Duration::from_secs(10),
        "boot went out again on the disconnect, not after the 30 s ack timeout"
    );
    assert_eq!(rec.runs("vm-1", "configure").len(), 1, "configure ran once");
    // vm-1 and the marker.
    let doc = until_executions(&client, "provision", (0, 2, 0)).await;
    assert_stage(&doc, "boot", [2, 0, 0, 0, 0]);
    assert_stage(&doc, "configure", [2, 0, 0, 0, 0]);

    // The real handler attaches only after the raw member vanished.
    let rec = Arc::new(Recorder::default());
    let mut raw = raw_stage_member(&server, "rebuild", "boot").await;
    publish(
        &client,
        "events",
        vec![root_event("vm-2", "vm.rebuilt", "vm-2", "{}")],
    )
    .await;
    raw_stage_delivery(&mut raw).await;
    raw.close().await;
    // The server has taken the delivery back: boot is no longer in flight
    // but waits for a handler.
    eventually(WAIT, "the raw member's boot taken back", || {
        let client = client.clone();
        async move {
            let doc = pipeline_doc(&client, "rebuild").await?;
            let boot = stage_doc(&doc, "boot");
            (boot["in_flight"] == 0 && boot["waiting"] == 1).then_some(())
        }
    })
    .await;
    let attached_at = Instant::now();
    let _boot = attach(&client, "rebuild", "boot", 4, recording(&rec, succeed)).await;
    let _configure = attach(&client, "rebuild", "configure", 4, recording(&rec, succeed)).await;
    until_recorded(&rec, "configure succeeded for vm-2", |r| {
        r.succeeded("configure").contains("vm-2")
    })
    .await;
    let boot = rec.runs("vm-2", "boot");
    assert_eq!(boot.len(), 1, "boot ran once in the client: {boot:?}");
    assert!(
        boot[0].started.duration_since(attached_at) < Duration::from_secs(10),
        "boot went to the new handler at once, not after the 30 s ack timeout"
    );
    assert_eq!(rec.runs("vm-2", "configure").len(), 1, "configure ran once");
    let doc = until_executions(&client, "rebuild", (0, 1, 0)).await;
    assert_stage(&doc, "boot", [1, 0, 0, 0, 0]);
    assert_stage(&doc, "configure", [1, 0, 0, 0, 0]);
}

/// A delivery not acked within the stage's ack timeout counts as a failed
/// attempt and goes out again after it, while deliveries acked in time,
/// and those issued later with later deadlines, do not: a raw member takes
/// two boots, acks one at once and holds the other; only the held one
/// comes back (attempt 2, after the timeout, and again after each timeout),
/// and a third root published meanwhile is delivered once. The roots share
/// a partition, so their deadlines are kept by one run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacked_delivery_goes_out_again_after_the_ack_timeout_and_only_it() {
    const TIMEOUT_MS: u64 = 400;
    let server = Server::start();
    let client = server.client();
    let yaml = format!(
        r#"
apiVersion: hadron.rs/v1beta1
kind: Pipeline
metadata:
  name: provision
spec:
  sourceStream: events
  triggers: [vm.requested]
  ackTimeoutMs: {TIMEOUT_MS}
  retry: {{ initialDelayMs: 1, maxDelayMs: 1, maxAttempts: 10 }}
  stages:
    - name: boot
"#
    );
    apply(&client, &yaml).await;
    let mut raw = raw_stage_member(&server, "provision", "boot").await;
    // No delivery of these roots can leave before this instant, so the
    // held one's deadline is at least the timeout after it. (Taking the
    // time when the deliveries arrive instead would be later than the
    // server's send by however long the client took to read them.)
    let published_at = Instant::now();
    publish(
        &client,
        "events",
        ["vm-1", "vm-2"]
            .iter()
            .map(|id| root_event(id, "vm.requested", "rack-1", "{}"))
            .collect(),
    )
    .await;
    let first = raw_stage_delivery(&mut raw).await;
    let second = raw_stage_delivery(&mut raw).await;
    let (acked, held) = if first.root.id == "vm-1" {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!((acked.attempt, held.attempt), (1, 1));
    let up = event_bytes("vm-1/booted", "raw-boot", "boot.done", b"up");
    // Deliveries that arrive while an ack awaits its answer, in order.
    let mut queued = VecDeque::new();
    raw_stage_ack(&mut raw, acked.delivery_id, &up, &mut queued).await;
    // A later delivery, with a later deadline, acked before it passes. (The
    // pause is part of the scenario, not a wait for the server: it puts
    // vm-3's deadline a quarter of the timeout after the first two.)
    tokio::time::sleep(Duration::from_millis(TIMEOUT_MS / 4)).await;
    publish(
        &client,
        "events",
        vec![root_event("vm-3", "vm.requested", "rack-1", "{}")],
    )
    .await;

    // From here the raw member acks vm-3 and holds every boot of the held
    // root, which comes back once per ack timeout (on a loaded machine its
    // second attempt may even come before vm-3). Nothing else may come.
    // The barrier for "nothing else": one connection gets deliveries in
    // the order the server sent them, so the first held boot to arrive
    // after vm-3's was handed out after it, with a later deadline than
    // vm-1's and vm-3's. A round expires every passed deadline and a
    // failed attempt waits the same 1 ms backoff whoever it is, so a
    // redelivery of vm-1 or vm-3 would go out no later than the next held
    // boot (after it, in the same round, if its root is later), and so
    // before the one after that: three held boots after vm-3's.
    let mut third: Option<RawStageDelivery> = None;
    let mut held_again: Vec<RawStageDelivery> = Vec::new();
    let mut held_after_third = 0;
    while held_after_third < 3 {
        let d = match queued.pop_front() {
            Some(d) => d,
            None => raw_stage_delivery(&mut raw).await,
        };
        if d.root.id == "vm-3" {
            assert!(third.is_none(), "vm-3 went out again: {d:?}");
            assert_eq!(d.attempt, 1, "{d:?}");
            raw_stage_ack(&mut raw, d.delivery_id, &up, &mut queued).await;
            third = Some(d);
            continue;
        }
        assert_eq!(
            d.root.id, held.root.id,
            "only the unacked boot comes back: {d:?}"
        );
        assert_eq!(d.attempt, 2 + held_again.len() as u32, "{d:?}");
        if held_again.is_empty() {
            assert_ne!(d.delivery_id, held.delivery_id);
            assert!(
                published_at.elapsed() >= Duration::from_millis(TIMEOUT_MS),
                "redelivered {:?} after the publish, before the {TIMEOUT_MS} ms ack timeout",
                published_at.elapsed()
            );
        }
        held_again.push(d);
        held_after_third += usize::from(third.is_some());
    }
    let doc = pipeline_doc(&client, "provision").await.unwrap();
    let boot = stage_doc(&doc, "boot");
    assert_eq!(boot["completed"], 2, "{doc}");
    assert!(boot["errors"].as_u64().unwrap() >= 1, "{doc}");
    let last_error = boot["last_error"].as_str().unwrap_or_default();
    assert!(
        last_error.contains(&format!("no ack within the ack timeout of {TIMEOUT_MS} ms")),
        "{doc}"
    );
}

/// Stage acks sent together in one `StageAcks` frame are each settled on
/// their own. The valid ones complete their stages, durably before the
/// answer: after a `kill -9` right after it and a restart they are not
/// delivered again, and the dependent stage gets exactly those outputs
/// back from the outputs log. A repeated ack is ignored; an unknown
/// delivery and an invalid output are refused, by id, in one `Error`, and
/// the stage of the invalid one goes out again after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_acks_in_one_frame_are_settled_each_and_durable_before_the_answer() {
    let mut server = Server::start();
    let client = server.client();
    let yaml = r#"
apiVersion: hadron.rs/v1beta1
kind: Pipeline
metadata:
  name: provision
spec:
  sourceStream: events
  triggers: [vm.requested]
  ackTimeoutMs: 30000
  stages:
    - name: boot
    - name: configure
      dependencies: [boot]
"#;
    apply(&client, yaml).await;
    let mut raw = raw_stage_member(&server, "provision", "boot").await;
    let roots = ["vm-1", "vm-2", "vm-3"];
    publish(
        &client,
        "events",
        roots
            .iter()
            .map(|id| root_event(id, "vm.requested", id, "{}"))
            .collect(),
    )
    .await;
    let mut delivered = BTreeMap::new();
    for _ in 0..roots.len() {
        let d = raw_stage_delivery(&mut raw).await;
        assert_eq!(d.stage, "boot");
        assert!(d.inputs.is_empty(), "boot has no dependencies: {d:?}");
        delivered.insert(d.root.id.clone(), d.delivery_id);
    }
    let id_of = |root: &str| delivered[root];
    let output = |root: &str| {
        event_bytes(
            &format!("{root}/booted"),
            "raw-boot",
            "boot.done",
            format!("{root} is up").as_bytes(),
        )
    };
    let (up1, up2) = (output("vm-1"), output("vm-2"));
    let unknown = id_of("vm-3") + 1_000_000;
    let acks = Message::StageAcks(hadron_wire::StageAcks {
        acks: vec![
            hadron_wire::StageAck {
                delivery_id: id_of("vm-1"),
                output: &up1,
            },
            hadron_wire::StageAck {
                delivery_id: unknown,
                output: &up2,
            },
            hadron_wire::StageAck {
                delivery_id: id_of("vm-2"),
                output: &up2,
            },
            hadron_wire::StageAck {
                delivery_id: id_of("vm-1"),
                output: &up1,
            },
            hadron_wire::StageAck {
                delivery_id: id_of("vm-3"),
                output: b"not an event",
            },
        ],
    });
    let mut pushed = Vec::new();
    match raw.request(&acks, &mut pushed).await {
        Frame::Error { code, message, .. } => {
            assert_eq!(
                code,
                hadron_wire::ErrorCode::UnknownDelivery,
                "the first refusal's code: {message}"
            );
            assert!(
                message.starts_with(&format!("stage acks {unknown} (")),
                "{message}"
            );
            assert!(
                message.contains(&format!(
                    ", {} (the stage output is not a valid event",
                    id_of("vm-3")
                )),
                "{message}"
            );
            for taken in ["vm-1", "vm-2"] {
                assert!(
                    !message.contains(&format!("{} (", id_of(taken))),
                    "{taken} was taken: {message}"
                );
            }
        }
        other => panic!("expected an Error naming the refused acks, got {other:?}"),
    }
    assert!(pushed.is_empty(), "{pushed:?}");

    // The answer came after the fdatasync: a kill now loses nothing.
    server.kill_now();
    server.restart();
    let client = server.client();
    let mut raw = raw_stage_member(&server, "provision", "boot").await;
    let again = raw_stage_delivery(&mut raw).await;
    assert_eq!(
        again.root.id, "vm-3",
        "only the refused boot goes out again"
    );
    // And no other: by the restarted server's own account (read back from
    // its outputs log) the other boots are done, none waits to go out, and
    // only vm-3's is in flight, which a boot sent before it would be too.
    let doc = pipeline_doc(&client, "provision").await.unwrap();
    assert_stage(&doc, "boot", [2, 1, 0, 0, 0]);
    match raw.recv_within(Duration::ZERO).await {
        None => {}
        other => panic!("boot of a taken ack went out again: {other:?}"),
    }
    let rec = Arc::new(Recorder::default());
    let _configure = attach(
        &client,
        "provision",
        "configure",
        4,
        recording(&rec, succeed),
    )
    .await;
    until_recorded(&rec, "configure ran for vm-1 and vm-2", |r| {
        ["vm-1", "vm-2"]
            .iter()
            .all(|id| r.succeeded("configure").contains(*id))
    })
    .await;
    for (root, sent) in [("vm-1", &up1), ("vm-2", &up2)] {
        let runs = rec.runs(root, "configure");
        assert_eq!(runs.len(), 1, "configure of {root} ran once: {runs:?}");
        let boot = &runs[0].inputs["boot"];
        assert_eq!(boot, &Event::decode(sent).unwrap(), "{root}'s boot output");
    }
    assert!(
        rec.runs("vm-3", "configure").is_empty(),
        "vm-3 is not booted"
    );

    let up3 = output("vm-3");
    let reply = raw
        .request(
            &Message::StageAck(hadron_wire::StageAck {
                delivery_id: again.delivery_id,
                output: &up3,
            }),
            &mut pushed,
        )
        .await;
    assert!(matches!(reply, Frame::AckOk { .. }), "{reply:?}");
    until_recorded(&rec, "configure ran for vm-3", |r| {
        r.succeeded("configure").contains("vm-3")
    })
    .await;
    let doc = until_executions(&client, "provision", (0, 3, 0)).await;
    assert_stage(&doc, "boot", [3, 0, 0, 0, 0]);
    assert_stage(&doc, "configure", [3, 0, 0, 0, 0]);
}

// ---------------------------------------------------------------------------
// 4. kill -9 mid-run
// ---------------------------------------------------------------------------

/// Attaches the five seed handlers; `notify-user` of roots named `held-*`
/// waits for `gate`.
async fn attach_seed_handlers(
    client: &Client,
    rec: &Arc<Recorder>,
    gate: &Arc<AtomicBool>,
) -> Vec<PipelineHandle> {
    let mut handles = Vec::new();
    for (stage, _) in SEED_STAGES {
        let gate = Arc::clone(gate);
        let behave = move |input: StageInput| {
            let gate = Arc::clone(&gate);
            async move {
                // A little work (not a wait for the server), so executions
                // overlap when the server is killed.
                tokio::time::sleep(Duration::from_millis(2)).await;
                if input.stage == "notify-user" && input.root.id.starts_with("held-") {
                    wait_for_gate(&gate).await?;
                }
                Ok(())
            }
        };
        // Room for every delivery the server may push (50 per partition),
        // so no push waits in the client behind a held one.
        handles.push(
            attach(
                client,
                "service-creation",
                stage,
                256,
                recording(rec, behave),
            )
            .await,
        );
    }
    handles
}

/// The seed pipeline with 200 executions; the server is killed with
/// SIGKILL while some have completed and 100 wait in `notify-user`, and
/// restarted on the same data while the handlers keep running (they
/// reconnect). All 200 complete; every stage of every execution ran at
/// least once; no stage that status showed done just before the kill ran
/// after it; no stage ran again after any of its dependents had started
/// for that execution (so a completed stage never reran); and the
/// restarted server counts 200 completions per stage, no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_run_loses_no_execution_and_reruns_no_completed_stage() {
    let mut server = Server::start();
    let options = ClientOptions {
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(5),
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(250),
        ..ClientOptions::default()
    };
    let client = server.client_with(options.clone());
    apply(&client, SERVICE_CREATION).await;
    let rec = Arc::new(Recorder::default());
    let gate = Arc::new(AtomicBool::new(false));
    let mut handles = attach_seed_handlers(&client, &rec, &gate).await;

    const HALF: usize = 100;
    const N: usize = 2 * HALF;
    let events: Vec<NewEvent> = (0..N)
        .map(|i| {
            let id = if i % 2 == 0 {
                format!("free-{}", i / 2)
            } else {
                format!("held-{}", i / 2)
            };
            root_event(&id, "service.created", &format!("customer-{i}"), "{}")
        })
        .collect();
    let at = publish(&client, "events", events).await;
    let root_at: BTreeMap<(u64, u64), String> = at
        .iter()
        .map(|(id, &(p, o))| ((u64::from(p), o), id.clone()))
        .collect();

    // Mid-run: some executions completed, held ones wait in notify-user.
    // The status taken just before the kill says which stages were done
    // (their outputs durable) then; none of them may run after the kill.
    let deadline = Instant::now() + WAIT;
    let before = loop {
        let doc = pipeline_doc(&client, "service-creation").await.unwrap();
        let held = rec
            .started("notify-user")
            .iter()
            .filter(|id| id.starts_with("held-"))
            .count();
        if executions(&doc).1 >= 20 && held >= 20 {
            break doc;
        }
        assert!(
            Instant::now() < deadline,
            "no progress before the kill: {doc}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    server.kill_now();
    let seq_at_kill = rec.next_seq.load(Ordering::SeqCst);
    let mut done_at_kill: BTreeSet<(String, &str)> = BTreeSet::new();
    let mut partly_done = 0;
    for part in before["partitions"].as_array().unwrap() {
        let p = part["partition"].as_u64().unwrap();
        let cursor = part["cursor"].as_u64().unwrap();
        let unfinished: BTreeMap<u64, Vec<String>> = part["unfinished"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| {
                let done = u["done"].as_array().unwrap();
                let done = done.iter().map(|s| s.as_str().unwrap().to_owned());
                (u["offset"].as_u64().unwrap(), done.collect())
            })
            .collect();
        for ((rp, offset), id) in &root_at {
            if *rp != p || *offset >= cursor {
                continue;
            }
            for (stage, _) in SEED_STAGES {
                let done = unfinished
                    .get(offset)
                    .is_none_or(|d| d.iter().any(|s| s == stage));
                if done {
                    done_at_kill.insert((id.clone(), stage));
                }
            }
            partly_done += usize::from(unfinished.get(offset).is_some_and(|d| !d.is_empty()));
        }
    }
    assert!(
        executions(&before).1 < N as u64 && partly_done > 0,
        "the kill landed mid-run: {before}"
    );

    let addr = server.addr();
    server.restart();
    let client = if server.addr() == addr {
        client
    } else {
        // The old ports were taken meanwhile: attach the same handlers on
        // a client for the new address.
        for h in handles.drain(..) {
            h.cancel();
        }
        let client = server.client_with(options);
        handles = attach_seed_handlers(&client, &rec, &gate).await;
        client
    };
    gate.store(true, Ordering::SeqCst);

    until_recorded(&rec, "sync succeeded for every execution", |r| {
        r.succeeded("sync").len() >= N
    })
    .await;
    let doc = until_executions(&client, "service-creation", (0, N as u64, 0)).await;

    let runs = rec.snapshot();
    for (id, stage) in &done_at_kill {
        let again: Vec<&Run> = runs[&(id.clone(), (*stage).to_owned())]
            .iter()
            .filter(|r| r.seq >= seq_at_kill)
            .collect();
        assert!(
            again.is_empty(),
            "{stage} of {id} was done before the kill and ran again after it: {again:?}"
        );
    }
    let roots = rec.roots();
    assert_eq!(
        roots.len(),
        N,
        "executions ran for exactly the events published"
    );
    for root in &roots {
        for (stage, deps) in SEED_STAGES {
            let mine = runs.get(&(root.clone(), stage.to_owned()));
            assert!(
                mine.is_some_and(|r| !r.is_empty()),
                "{stage} never ran for {root}"
            );
            let first_start = mine.unwrap().iter().map(|r| r.seq).min().unwrap();
            for dep in deps {
                let dep_runs = &runs[&(root.clone(), (*dep).to_owned())];
                let last_dep_start = dep_runs.iter().map(|r| r.seq).max().unwrap();
                assert!(
                    last_dep_start < first_start,
                    "{dep} ran again for {root} after its dependent {stage} had started: {dep_runs:?}"
                );
            }
        }
    }
    for (stage, _) in SEED_STAGES {
        assert_stage(&doc, stage, [N as u64, 0, 0, 0, 0]);
    }
    let cli_doc = cli_pipeline_status(&server, "service-creation").await;
    assert_eq!(executions(&cli_doc), (0, N as u64, 0), "{cli_doc}");
    for h in handles {
        h.cancel();
    }
}

// ---------------------------------------------------------------------------
// 5. Exhausted retries, then `pipeline retry`
// ---------------------------------------------------------------------------

/// A stage that always fails (maxAttempts 3) fails its execution: status
/// shows it failed, with the stage and the handler's error, and the stages
/// that had completed do not run again. Once the handler is fixed, `hadron
/// pipeline retry NAME --partition P --offset N` runs that execution
/// again (attempt counts start over) and leaves the other failed one
/// alone (asking for an execution that is not failed is refused); `hadron
/// pipeline retry NAME` then runs the rest. Completed stages still ran
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_fail_the_execution_until_pipeline_retry() {
    let server = Server::start();
    let client = server.client();
    let url = server.addr();
    apply(
        &client,
        r#"
apiVersion: hadron.rs/v1beta1
kind: Pipeline
metadata:
  name: invoicing
spec:
  sourceStream: events
  triggers: [invoice.due]
  retry: { initialDelayMs: 50, maxDelayMs: 100, maxAttempts: 10 }
  ackTimeoutMs: 5000
  stages:
    - name: reserve
    - name: audit
      dependencies: [reserve]
    - name: charge
      dependencies: [reserve]
      retry: { maxAttempts: 3 }
    - name: receipt
      dependencies: [charge, audit]
"#,
    )
    .await;
    let rec = Arc::new(Recorder::default());
    let fixed = Arc::new(AtomicBool::new(false));
    let charge = {
        let fixed = Arc::clone(&fixed);
        move |input: StageInput| {
            let ok = fixed.load(Ordering::SeqCst);
            async move {
                if input.root.id.starts_with("marker-") && input.attempt < 3 {
                    Err("a marker waits out two backoffs".to_owned())
                } else if ok {
                    Ok(())
                } else {
                    Err("card declined by issuer".to_owned())
                }
            }
        }
    };
    let _h = [
        attach(&client, "invoicing", "reserve", 8, recording(&rec, succeed)).await,
        attach(&client, "invoicing", "audit", 8, recording(&rec, succeed)).await,
        attach(&client, "invoicing", "charge", 8, recording(&rec, charge)).await,
        attach(&client, "invoicing", "receipt", 8, recording(&rec, succeed)).await,
    ];
    let at = publish(
        &client,
        "events",
        vec![
            root_event("inv-0", "invoice.due", "acct-0", "{}"),
            root_event("inv-1", "invoice.due", "acct-1", "{}"),
        ],
    )
    .await;

    let doc = until_executions(&client, "invoicing", (0, 0, 2)).await;
    for id in ["inv-0", "inv-1"] {
        let attempts: Vec<u32> = rec.runs(id, "charge").iter().map(|r| r.attempt).collect();
        assert_eq!(attempts, vec![1, 2, 3], "charge attempts of {id}");
        assert_eq!(rec.runs(id, "reserve").len(), 1, "reserve of {id}");
        assert_eq!(rec.runs(id, "audit").len(), 1, "audit of {id}");
        assert!(
            rec.runs(id, "receipt").is_empty(),
            "receipt of {id} never ran"
        );
    }
    assert_stage(&doc, "reserve", [2, 0, 0, 0, 0]);
    assert_stage(&doc, "audit", [2, 0, 0, 0, 0]);
    assert_stage(&doc, "charge", [0, 0, 0, 6, 2]);
    assert_stage(&doc, "receipt", [0, 0, 0, 0, 0]);
    assert!(
        stage_doc(&doc, "charge")["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("card declined by issuer")),
        "last_error of charge: {doc}"
    );
    let mut failed: BTreeSet<(u64, u64)> = BTreeSet::new();
    for part in doc["partitions"].as_array().unwrap() {
        for f in part["failed_executions"].as_array().unwrap() {
            assert_eq!(f["stage"], "charge", "{f}");
            assert!(
                f["error"]
                    .as_str()
                    .unwrap()
                    .contains("card declined by issuer"),
                "{f}"
            );
            failed.insert((
                part["partition"].as_u64().unwrap(),
                f["offset"].as_u64().unwrap(),
            ));
        }
    }
    let positions: BTreeSet<(u64, u64)> = at.values().map(|&(p, o)| (u64::from(p), o)).collect();
    assert_eq!(failed, positions, "failed_executions name both executions");

    // Fixed, but a failed execution waits for `pipeline retry`. The
    // barrier: a marker execution on each of their partitions whose charge
    // fails twice, so that its third attempt is released at least 150 ms
    // (50 + 100) after the marker was published: later than any backoff
    // (100 ms at most) a failed execution could still have had pending.
    // A round releases every due retry before it hands stages out, oldest
    // execution first, so a charge of inv-0 or inv-1 would have gone to
    // the handler before the marker's third, on the same connection, and
    // started before the marker's receipt came back a round trip later.
    fixed.store(true, Ordering::SeqCst);
    let markers = publish(
        &client,
        "events",
        vec![
            root_event("marker-0", "invoice.due", "acct-0", "{}"),
            root_event("marker-1", "invoice.due", "acct-1", "{}"),
        ],
    )
    .await;
    for i in 0..2 {
        let (marker, inv) = (format!("marker-{i}"), format!("inv-{i}"));
        assert_eq!(markers[&marker].0, at[&inv].0, "{marker} beside {inv}");
    }
    until_recorded(&rec, "receipts of both markers", |r| {
        let receipts = r.succeeded("receipt");
        receipts.contains("marker-0") && receipts.contains("marker-1")
    })
    .await;
    for i in 0..2 {
        let attempts: Vec<u32> = rec
            .runs(&format!("marker-{i}"), "charge")
            .iter()
            .map(|r| r.attempt)
            .collect();
        assert_eq!(attempts, vec![1, 2, 3], "charge of marker-{i}");
    }
    for id in ["inv-0", "inv-1"] {
        assert_eq!(rec.runs(id, "charge").len(), 3, "{id} stays failed");
    }
    // The two markers completed; the two failed executions stay failed.
    until_executions(&client, "invoicing", (0, 2, 2)).await;

    // One execution by partition and offset.
    let (p0, o0) = at["inv-0"];
    let (p1, o1) = at["inv-1"];
    let (p0s, o0s) = (p0.to_string(), o0.to_string());
    let out = cli(&[
        "pipeline",
        "retry",
        "invoicing",
        "--partition",
        &p0s,
        "--offset",
        &o0s,
        "--url",
        &url,
    ])
    .await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        out.stdout.trim(),
        format!("pipeline/invoicing partition {p0} offset {o0} retried"),
        "{out:?}"
    );
    until_recorded(&rec, "receipt of inv-0", |r| {
        r.succeeded("receipt").contains("inv-0")
    })
    .await;
    let doc = until_executions(&client, "invoicing", (0, 3, 1)).await;
    let charge0: Vec<u32> = rec
        .runs("inv-0", "charge")
        .iter()
        .map(|r| r.attempt)
        .collect();
    assert_eq!(
        charge0,
        vec![1, 2, 3, 1],
        "charge of inv-0: attempts start over"
    );
    assert_eq!(
        rec.runs("inv-1", "charge").len(),
        3,
        "inv-1 was not retried"
    );
    // Counting the markers' two completions and four errors.
    assert_stage(&doc, "charge", [3, 0, 0, 10, 1]);
    let still_failed: Vec<(u64, u64)> = doc["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|part| {
            let p = part["partition"].as_u64().unwrap();
            part["failed_executions"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |f| (p, f["offset"].as_u64().unwrap()))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(still_failed, vec![(u64::from(p1), o1)], "{doc}");

    // Retrying an execution that is not failed is refused, naming it, and
    // runs nothing.
    let out = cli(&[
        "pipeline",
        "retry",
        "invoicing",
        "--partition",
        &p0s,
        "--offset",
        &o0s,
        "--url",
        &url,
    ])
    .await;
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "no failed execution at partition {p0} offset {o0}"
        )),
        "{out:?}"
    );

    // Every failed execution.
    let out = cli(&["pipeline", "retry", "invoicing", "--url", &url]).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        out.stdout.trim(),
        format!("pipeline/invoicing partition {p1} offset {o1} retried"),
        "{out:?}"
    );
    until_recorded(&rec, "receipt of inv-1", |r| {
        r.succeeded("receipt").contains("inv-1")
    })
    .await;
    let doc = until_executions(&client, "invoicing", (0, 4, 0)).await;
    for id in ["inv-0", "inv-1"] {
        for stage in ["reserve", "audit", "receipt"] {
            assert_eq!(rec.runs(id, stage).len(), 1, "{stage} of {id} ran once");
        }
        let attempts: Vec<u32> = rec.runs(id, "charge").iter().map(|r| r.attempt).collect();
        assert_eq!(attempts, vec![1, 2, 3, 1], "charge of {id}");
    }
    for stage in ["reserve", "audit", "charge", "receipt"] {
        let s = stage_doc(&doc, stage);
        assert_eq!(s["completed"], 4, "{stage} (markers too): {doc}");
        assert_eq!(s["failed"], 0, "{stage}: {doc}");
    }
}

// ---------------------------------------------------------------------------
// 6. maxParallel
// ---------------------------------------------------------------------------

/// `maxParallel: 2` on a one-partition stream, one stage whose handler
/// takes 150 ms and may run 8 at once: never more than 2 executions are in
/// progress (in the handler, and in status), 2 are reached, and all 10
/// complete once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_parallel_bounds_the_executions_in_progress_per_partition() {
    let server = Server::start();
    let client = server.client();
    create_stream(&client, "jobs", 1).await;
    apply(
        &client,
        r#"
apiVersion: hadron.rs/v1beta1
kind: Pipeline
metadata:
  name: render
spec:
  sourceStream: jobs
  maxParallel: 2
  stages:
    - name: render
"#,
    )
    .await;
    let rec = Arc::new(Recorder::default());
    let active = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let behave = {
        let (active, most) = (Arc::clone(&active), Arc::clone(&most));
        move |_: StageInput| {
            let (active, most) = (Arc::clone(&active), Arc::clone(&most));
            async move {
                let now = active.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                // The handler's work (not a wait for the server): it keeps
                // executions in progress long enough to overlap.
                tokio::time::sleep(Duration::from_millis(150)).await;
                active.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            }
        }
    };
    let _h = attach(&client, "render", "render", 8, recording(&rec, behave)).await;

    const N: usize = 10;
    let events = (0..N)
        .map(|i| root_event(&format!("job-{i}"), "job.submitted", "all", "{}"))
        .collect();
    publish(&client, "jobs", events).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let doc = pipeline_doc(&client, "render").await.unwrap();
        let (in_progress, completed, failed) = executions(&doc);
        assert!(
            in_progress <= 2,
            "more than maxParallel executions active: {doc}"
        );
        assert_eq!(failed, 0, "{doc}");
        if completed == N as u64 {
            assert_eq!(in_progress, 0, "{doc}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {completed} of {N} completed: {doc}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        most.load(Ordering::SeqCst),
        2,
        "at most, and up to, 2 at once"
    );
    for i in 0..N {
        assert_eq!(
            rec.runs(&format!("job-{i}"), "render").len(),
            1,
            "job-{i} ran once"
        );
    }
}

// ---------------------------------------------------------------------------
// 7. Start points
// ---------------------------------------------------------------------------

/// Three events are in a one-partition stream before three pipelines are
/// applied: `latest` runs none of them but runs the two published later,
/// `beginning` runs all five, `offset: 1` runs offsets 1 to 4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_points_pick_the_first_event_of_a_new_pipeline() {
    let server = Server::start();
    let client = server.client();
    create_stream(&client, "ledger", 1).await;
    let entries = |range: std::ops::Range<usize>| {
        range
            .map(|i| root_event(&format!("entry-{i}"), "entry.added", "all", "{}"))
            .collect::<Vec<_>>()
    };
    let before = publish(&client, "ledger", entries(0..3)).await;
    assert_eq!(
        before.values().copied().collect::<BTreeSet<_>>(),
        (0..3).map(|o| (0, o)).collect::<BTreeSet<_>>()
    );

    let pipeline = |name: &str, start: &str| {
        format!(
            "apiVersion: hadron.rs/v1beta1\nkind: Pipeline\nmetadata:\n  name: {name}\nspec:\n  sourceStream: ledger\n  startPoint: {start}\n  stages:\n    - name: post\n"
        )
    };
    let yaml = [
        pipeline("from-latest", "{ location: latest }"),
        pipeline("from-beginning", "{ location: beginning }"),
        pipeline("from-offset", "{ location: offset, offset: 1 }"),
    ]
    .join("---\n");
    assert_eq!(
        apply(&client, &yaml).await,
        vec![
            "pipeline/from-latest created (1 stages)",
            "pipeline/from-beginning created (1 stages)",
            "pipeline/from-offset created (1 stages)",
        ]
    );
    let names = ["from-latest", "from-beginning", "from-offset"];
    let mut recs = BTreeMap::new();
    let mut handles = Vec::new();
    for name in names {
        let rec = Arc::new(Recorder::default());
        handles.push(attach(&client, name, "post", 8, recording(&rec, succeed)).await);
        recs.insert(name, rec);
    }
    // The older events are done before the newer ones are published.
    until_executions(&client, "from-beginning", (0, 3, 0)).await;
    until_executions(&client, "from-offset", (0, 2, 0)).await;
    let after = publish(&client, "ledger", entries(3..5)).await;
    assert_eq!(
        after.values().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([(0, 3), (0, 4)])
    );

    for (name, first, count) in [
        ("from-latest", 3, 2u64),
        ("from-beginning", 0, 5),
        ("from-offset", 1, 4),
    ] {
        let doc = until_executions(&client, name, (0, count, 0)).await;
        let rec = &recs[name];
        let want: BTreeSet<String> = (first..5).map(|i| format!("entry-{i}")).collect();
        assert_eq!(rec.roots(), want, "{name} ran exactly these");
        for id in &want {
            let runs = rec.runs(id, "post");
            assert_eq!(runs.len(), 1, "{name}: {id} ran once");
            let i: u64 = id["entry-".len()..].parse().unwrap();
            assert_eq!((runs[0].partition, runs[0].offset), (0, i), "{name}: {id}");
        }
        assert_eq!(doc["partitions"][0]["cursor"], 5, "{name}: {doc}");
    }
    for h in handles {
        h.cancel();
    }
}

// ---------------------------------------------------------------------------
// 8. Validation through `hadron apply -f`
// ---------------------------------------------------------------------------

/// Writes `yaml` to `dir/name` and runs `hadron apply -f` on it.
async fn cli_apply(
    server: &Server,
    dir: &tempfile::TempDir,
    name: &str,
    yaml: &str,
    force: bool,
) -> CliOutput {
    let path = dir.path().join(name);
    std::fs::write(&path, yaml).unwrap();
    let path = path.to_str().unwrap().to_owned();
    let url = server.addr();
    let mut args = vec!["apply", "-f", path.as_str(), "--url", url.as_str()];
    if force {
        args.push("--force");
    }
    cli(&args).await
}

/// Asserts that an apply failed with a message containing every one of
/// `parts`.
fn assert_rejected(out: &CliOutput, parts: &[&str]) {
    assert!(!out.status.success(), "apply should have failed: {out:?}");
    let message = format!("{}{}", out.stdout, out.stderr);
    for part in parts {
        assert!(
            message.contains(part),
            "{part:?} missing from the error: {out:?}"
        );
    }
}

/// `hadron apply -f` refuses a cycle (naming the pipeline and the stages on
/// the cycle), an unknown dependency (naming the field) and an unknown
/// source stream, and creates none of them. Removing a stage that an
/// unfinished execution still needs is refused without `--force` and
/// done with it; the execution, whose remaining stage had completed, then
/// counts as completed without that stage running again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_rejects_invalid_pipelines_and_guards_stage_removal() {
    let server = Server::start();
    let client = server.client();
    let dir = tempfile::tempdir().unwrap();
    let header = |name: &str, stream: &str| {
        format!(
            "apiVersion: hadron.rs/v1beta1\nkind: Pipeline\nmetadata:\n  name: {name}\nspec:\n  sourceStream: {stream}\n  stages:\n"
        )
    };

    let cyclic = header("cyclic", "events")
        + "    - name: fetch\n\
           \x20   - name: parse\n      dependencies: [fetch, store]\n\
           \x20   - name: index\n      dependencies: [parse]\n\
           \x20   - name: store\n      dependencies: [index]\n";
    let out = cli_apply(&server, &dir, "cyclic.yaml", &cyclic, false).await;
    assert_rejected(
        &out,
        &[
            "Pipeline \"cyclic\"",
            "cycle",
            "parse -> index -> store -> parse",
        ],
    );

    let unknown_dep = header("unknown-dep", "events")
        + "    - name: fetch\n\
           \x20   - name: parse\n      dependencies: [fecth]\n";
    let out = cli_apply(&server, &dir, "unknown-dep.yaml", &unknown_dep, false).await;
    assert_rejected(
        &out,
        &[
            "Pipeline \"unknown-dep\"",
            "spec.stages[1].dependencies[0]",
            "unknown stage \"fecth\"",
        ],
    );

    let unknown_stream = header("unknown-stream", "no-such-stream") + "    - name: fetch\n";
    let out = cli_apply(&server, &dir, "unknown-stream.yaml", &unknown_stream, false).await;
    assert_rejected(
        &out,
        &[
            "Pipeline \"unknown-stream\"",
            "spec.sourceStream",
            "unknown stream \"no-such-stream\"",
        ],
    );
    let st = status(&client).await;
    assert_eq!(
        st["pipelines"],
        serde_json::json!([]),
        "rejected pipelines are not created"
    );

    // Removing a stage with unfinished work.
    let two = header("shrink", "events")
        + "    - name: extract\n\
           \x20   - name: load\n      dependencies: [extract]\n";
    let out = cli_apply(&server, &dir, "shrink.yaml", &two, false).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        out.stdout.trim(),
        "pipeline/shrink created (2 stages)",
        "{out:?}"
    );
    let rec = Arc::new(Recorder::default());
    let _extract = attach(&client, "shrink", "extract", 4, recording(&rec, succeed)).await;
    let at = publish(
        &client,
        "events",
        vec![root_event("etl-0", "etl.run", "etl", "{}")],
    )
    .await;
    // `load` has no handler: the execution stays unfinished after extract.
    until_recorded(&rec, "extract succeeded", |r| {
        r.succeeded("extract").contains("etl-0")
    })
    .await;
    eventually(WAIT, "extract done in status", || {
        let client = client.clone();
        async move {
            let doc = pipeline_doc(&client, "shrink").await?;
            (stage_doc(&doc, "extract")["completed"] == 1 && executions(&doc) == (1, 0, 0))
                .then_some(())
        }
    })
    .await;

    let one = header("shrink", "events") + "    - name: extract\n";
    let out = cli_apply(&server, &dir, "shrink-1.yaml", &one, false).await;
    assert_rejected(&out, &["\"shrink\"", "load", "--force"]);
    let doc = pipeline_doc(&client, "shrink").await.unwrap();
    assert_eq!(
        doc["stages"].as_array().unwrap().len(),
        2,
        "still two stages: {doc}"
    );
    assert_eq!(executions(&doc), (1, 0, 0), "{doc}");

    let out = cli_apply(&server, &dir, "shrink-1.yaml", &one, true).await;
    assert!(out.status.success(), "--force applies: {out:?}");
    assert_eq!(
        out.stdout.trim(),
        "pipeline/shrink configured (1 stages)",
        "{out:?}"
    );
    let doc = until_executions(&client, "shrink", (0, 1, 0)).await;
    assert_eq!(doc["stages"].as_array().unwrap().len(), 1, "{doc}");
    assert_stage(&doc, "extract", [1, 0, 0, 0, 0]);
    // The barrier for "extract did not run again": a marker execution on
    // the same partition, published after the update, completes. A round
    // hands stages out oldest execution first, so an extract of etl-0
    // would have gone to the handler before the marker's, on the same
    // connection, and started before the marker's ack reached the server
    // and a status round trip showed it (or counted a third extract).
    let marker = publish(
        &client,
        "events",
        vec![root_event("etl-marker", "etl.run", "etl", "{}")],
    )
    .await;
    assert_eq!(marker["etl-marker"].0, at["etl-0"].0, "one partition");
    let doc = until_executions(&client, "shrink", (0, 2, 0)).await;
    assert_stage(&doc, "extract", [2, 0, 0, 0, 0]);
    assert_eq!(
        rec.runs("etl-0", "extract").len(),
        1,
        "extract did not run again"
    );
}

// ---------------------------------------------------------------------------
// 9. Updating a pipeline with handlers attached
// ---------------------------------------------------------------------------

/// A stage is added to a running pipeline (`apply` again). The handler of
/// the existing stage, attached before the update, keeps getting that
/// stage's deliveries: an execution started after the update runs the old
/// stage and then the new one. The execution finished before the update
/// does not run its completed stage again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_attached_before_an_update_keep_receiving_after_it() {
    let server = Server::start();
    let client = server.client();
    let one = "apiVersion: hadron.rs/v1beta1\nkind: Pipeline\nmetadata:\n  name: grow\nspec:\n  sourceStream: events\n  triggers: [signup.completed]\n  stages:\n    - name: welcome\n";
    apply(&client, one).await;
    let rec = Arc::new(Recorder::default());
    let _welcome = attach(&client, "grow", "welcome", 4, recording(&rec, succeed)).await;
    publish(
        &client,
        "events",
        vec![root_event("user-0", "signup.completed", "user-0", "{}")],
    )
    .await;
    until_executions(&client, "grow", (0, 1, 0)).await;

    let two = format!("{one}    - name: survey\n      dependencies: [welcome]\n");
    assert_eq!(
        apply(&client, &two).await,
        vec!["pipeline/grow configured (2 stages)"]
    );
    let _survey = attach(&client, "grow", "survey", 4, recording(&rec, succeed)).await;
    publish(
        &client,
        "events",
        vec![root_event("user-1", "signup.completed", "user-1", "{}")],
    )
    .await;
    // A handful of milliseconds of work: 10 s is ample.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !rec.succeeded("survey").contains("user-1") {
        if Instant::now() > deadline {
            let doc = pipeline_doc(&client, "grow").await;
            panic!(
                "user-1 did not get through welcome and survey within 10 s of the update; \
                 runs: {:?}; status: {doc:?}",
                rec.snapshot().keys().collect::<Vec<_>>()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rec.runs("user-1", "welcome").len(), 1, "welcome of user-1");
    assert_eq!(rec.runs("user-1", "survey").len(), 1, "survey of user-1");
    assert_eq!(
        rec.runs("user-0", "welcome").len(),
        1,
        "welcome of user-0 did not run again"
    );
}

// ---------------------------------------------------------------------------
// Checkpoints of the outputs log
// ---------------------------------------------------------------------------

/// The outputs log's segment size in the checkpoint test (the smallest the
/// server takes); the run checkpoints once the log grew by one.
const CKPT_SEGMENT_BYTES: u64 = 64 << 10;

const CHECKPOINTED: &str = r#"
apiVersion: hadron.rs/v1beta1
kind: Pipeline
metadata:
  name: checkpointed
spec:
  sourceStream: ckpt
  triggers: [job.queued]
  startPoint:
    location: beginning
  maxParallel: 50
  retry: { initialDelayMs: 1, maxDelayMs: 1, maxAttempts: 1 }
  stages:
    - name: build
    - name: test
      dependencies: [build]
    - name: ship
      dependencies: [build, test]
"#;

/// (.log files, their bytes) of the pipeline's outputs log on partition 0.
fn outputs_log_size(server: &Server) -> (usize, u64) {
    let dir = server.data_dir().join("pipelines/checkpointed/00000");
    let mut files = 0;
    let mut bytes = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let entry = entry.unwrap();
        if entry.path().extension().is_some_and(|e| e == "log") {
            files += 1;
            bytes += entry.metadata().unwrap().len();
        }
    }
    (files, bytes)
}

async fn attach_checkpointed(
    client: &Client,
    rec: &Arc<Recorder>,
    gate: &Arc<AtomicBool>,
) -> Vec<PipelineHandle> {
    let mut handles = Vec::new();
    for stage in ["build", "test", "ship"] {
        let gate = Arc::clone(gate);
        let behave = move |input: StageInput| {
            let gate = Arc::clone(&gate);
            async move {
                if input.stage == "test" && input.root.id.starts_with("bad-") {
                    return Err("tests fail".to_owned());
                }
                if input.stage == "ship" && input.root.id.starts_with("held-") {
                    wait_for_gate(&gate).await?;
                }
                Ok(())
            }
        };
        handles.push(attach(client, "checkpointed", stage, 256, recording(rec, behave)).await);
    }
    handles
}

/// What a restart must keep of a pipeline's status: the totals, each
/// stage's completed and failed counts, and the failed executions.
fn kept_status(doc: &serde_json::Value) -> serde_json::Value {
    let stages: Vec<serde_json::Value> = doc["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| serde_json::json!([s["name"], s["completed"], s["failed"]]))
        .collect();
    let failed: BTreeSet<String> = doc["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["failed_executions"].as_array().unwrap().iter())
        .map(|f| format!("{}:{}:{}", f["offset"], f["stage"], f["error"]))
        .collect();
    serde_json::json!({
        "executions": doc["executions"],
        "stages": stages,
        "failed": failed,
    })
}

/// A server whose segments are small enough for checkpoints to come
/// often, a client that reconnects quickly across its restarts, the
/// one-partition stream `ckpt` and the `CHECKPOINTED` pipeline on it.
async fn checkpointed_server() -> (Server, ClientOptions, Client) {
    let server = Server::start_with(hadron_tests::ServerOptions {
        config: Some(format!(
            "apiVersion: hadron.rs/v1beta1\nkind: ServerConfig\nsegmentBytes: {CKPT_SEGMENT_BYTES}\n"
        )),
        ..hadron_tests::ServerOptions::default()
    });
    let options = ClientOptions {
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(5),
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(250),
        ..ClientOptions::default()
    };
    let client = server.client_with(options.clone());
    create_stream(&client, "ckpt", 1).await;
    apply(&client, CHECKPOINTED).await;
    (server, options, client)
}

/// A pipeline on a server with 64 KiB segments runs 20 executions held in
/// their last stage (published first, so they hold the watermark back), 5
/// whose middle stage fails, and 1500 that complete, with outputs of about
/// 300 bytes: some 1.5 MB of outputs, 23 segments without checkpoints. The
/// outputs log stays within 4 segments. Then the server is killed with
/// SIGKILL and restarted: status shows the same totals, stage counts and
/// failed executions as before; no completed stage runs again (every stage
/// of every completed execution ran exactly once); the held executions
/// finish, their last stage receiving the outputs of both stages it
/// depends on, which were written before the checkpoints that carried them;
/// the failed ones stay failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_bound_the_outputs_log_and_a_sigkill_restart_keeps_the_run() {
    let (mut server, options, client) = checkpointed_server().await;
    let rec = Arc::new(Recorder::default());
    let gate = Arc::new(AtomicBool::new(false));
    let mut handles = attach_checkpointed(&client, &rec, &gate).await;

    const HELD: usize = 20;
    const BAD: usize = 5;
    const FREE: usize = 1500;
    // Root ids of 280 bytes: each output names its root.
    let id = |kind: &str, i: usize| format!("{kind}-{i:04}-{}", "x".repeat(270));
    let mut ids: Vec<String> = (0..HELD).map(|i| id("held", i)).collect();
    ids.extend((0..BAD).map(|i| id("bad", i)));
    ids.extend((0..FREE).map(|i| id("free", i)));
    for chunk in ids.chunks(100) {
        let events = chunk
            .iter()
            .map(|id| root_event(id, "job.queued", "repo", "{}"))
            .collect();
        publish(&client, "ckpt", events).await;
    }

    let completed = FREE as u64;
    let before = until_executions(
        &client,
        "checkpointed",
        (HELD as u64, completed, BAD as u64),
    )
    .await;
    until_recorded(&rec, "every held execution waits in ship", |r| {
        r.started("ship")
            .iter()
            .filter(|id| id.starts_with("held-"))
            .count()
            == HELD
    })
    .await;
    let (files, bytes) = outputs_log_size(&server);
    eprintln!(
        "outputs log after {} executions: {files} segment files, {bytes} bytes",
        HELD + BAD + FREE
    );
    assert!(
        files <= 4,
        "the outputs log kept {files} segments ({bytes} bytes) of {CKPT_SEGMENT_BYTES} bytes"
    );
    let kept = kept_status(&before);

    server.kill_now();
    let seq_at_kill = rec.next_seq.load(Ordering::SeqCst);
    let addr = server.addr();
    let started = Instant::now();
    server.restart();
    eprintln!("restart took {:?}", started.elapsed());
    let client = if server.addr() == addr {
        client
    } else {
        for h in handles.drain(..) {
            h.cancel();
        }
        let client = server.client_with(options);
        handles = attach_checkpointed(&client, &rec, &gate).await;
        client
    };
    let after = until_executions(
        &client,
        "checkpointed",
        (HELD as u64, completed, BAD as u64),
    )
    .await;
    assert_eq!(kept_status(&after), kept, "status after the restart");
    let cli_doc = cli_pipeline_status(&server, "checkpointed").await;
    assert_eq!(kept_status(&cli_doc), kept, "CLI status after the restart");

    gate.store(true, Ordering::SeqCst);
    let done = until_executions(
        &client,
        "checkpointed",
        (0, (FREE + HELD) as u64, BAD as u64),
    )
    .await;
    let total = (FREE + HELD) as u64;
    assert_stage(&done, "build", [total + BAD as u64, 0, 0, 0, 0]);
    // Errors are counted since the start; the failures are remembered.
    assert_stage(&done, "test", [total, 0, 0, 0, BAD as u64]);
    assert_stage(&done, "ship", [total, 0, 0, 0, 0]);

    let runs = rec.snapshot();
    for root in &ids {
        let ok = |stage: &str| -> Vec<Run> {
            runs.get(&(root.clone(), stage.to_owned()))
                .map(|r| {
                    r.iter()
                        .filter(|r| r.finished.is_some_and(|(_, ok)| ok))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default()
        };
        if root.starts_with("bad-") {
            assert_eq!(ok("build").len(), 1, "build of {root}");
            assert!(
                ok("test").is_empty() && ok("ship").is_empty(),
                "{root} stays failed"
            );
            continue;
        }
        for stage in ["build", "test"] {
            assert_eq!(
                ok(stage).len(),
                1,
                "{stage} of {root} completed exactly once"
            );
        }
        for stage in ["build", "test"] {
            let all = &runs[&(root.clone(), stage.to_owned())];
            assert!(
                all.iter().all(|r| r.seq < seq_at_kill),
                "{stage} of {root} ran after the kill: {all:?}"
            );
        }
        let want = BTreeMap::from([
            ("build".to_owned(), format!("{root}/build")),
            ("test".to_owned(), format!("{root}/test")),
        ]);
        for ship in &runs[&(root.clone(), "ship".to_owned())] {
            let inputs: BTreeMap<String, String> = ship
                .inputs
                .iter()
                .map(|(stage, e)| (stage.clone(), String::from_utf8_lossy(&e.data).into_owned()))
                .collect();
            assert_eq!(inputs, want, "the inputs ship of {root} received");
        }
        let ships = ok("ship");
        if root.starts_with("held-") {
            assert!(
                ships.iter().any(|r| r.seq >= seq_at_kill),
                "ship of {root} completed after the kill"
            );
        } else {
            assert_eq!(ships.len(), 1, "ship of {root} completed exactly once");
        }
    }
    let (files, bytes) = outputs_log_size(&server);
    assert!(
        files <= 4,
        "after the restart: {files} segments, {bytes} bytes"
    );
    for h in handles {
        h.cancel();
    }
}

/// A failed execution retried long after the watermark passed it, and
/// still running when checkpoints delete the records of its failure and
/// retry, survives a SIGKILL: after the restart it runs on from where it
/// was (its last stage gets both outputs it needs) and completes, while
/// the 1600 executions that completed around it do not run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_execution_below_the_watermark_survives_checkpoints_and_sigkill() {
    let (mut server, options, client) = checkpointed_server().await;
    let rec = Arc::new(Recorder::default());
    let fixed = Arc::new(AtomicBool::new(false));
    let gate = Arc::new(AtomicBool::new(false));
    let attach_all = |client: Client| {
        let (rec, fixed, gate) = (Arc::clone(&rec), Arc::clone(&fixed), Arc::clone(&gate));
        async move {
            let mut handles = Vec::new();
            for stage in ["build", "test", "ship"] {
                let (fixed, gate) = (Arc::clone(&fixed), Arc::clone(&gate));
                let behave = move |input: StageInput| {
                    let (fixed, gate) = (Arc::clone(&fixed), Arc::clone(&gate));
                    async move {
                        let bad = input.root.id.starts_with("bad-");
                        if bad && input.stage == "test" && !fixed.load(Ordering::SeqCst) {
                            return Err("tests fail".to_owned());
                        }
                        if bad && input.stage == "ship" {
                            wait_for_gate(&gate).await?;
                        }
                        Ok(())
                    }
                };
                handles.push(
                    attach(&client, "checkpointed", stage, 256, recording(&rec, behave)).await,
                );
            }
            handles
        }
    };
    let mut handles = attach_all(client.clone()).await;

    const FREE: usize = 800;
    let id = |kind: &str, i: usize| format!("{kind}-{i:04}-{}", "x".repeat(270));
    let publish_ids = |ids: Vec<String>| {
        let client = client.clone();
        async move {
            let mut at = BTreeMap::new();
            for chunk in ids.chunks(100) {
                let events = chunk
                    .iter()
                    .map(|id| root_event(id, "job.queued", "repo", "{}"))
                    .collect();
                at.extend(publish(&client, "ckpt", events).await);
            }
            at
        }
    };
    let bad = id("bad", 0);
    let bad_at = publish_ids(vec![bad.clone()]).await[&bad];
    let mut ids: Vec<String> = (0..FREE).map(|i| id("free", i)).collect();
    publish_ids(ids.clone()).await;
    until_executions(&client, "checkpointed", (0, FREE as u64, 1)).await;

    // Fixed, retried, and held in its last stage while 800 more complete
    // (checkpoints meanwhile delete the records of its failure and retry).
    fixed.store(true, Ordering::SeqCst);
    let retried = tokio::time::timeout(
        REQUEST_TIMEOUT,
        client.retry_pipeline("checkpointed", Some(bad_at)),
    )
    .await
    .expect("retry timed out")
    .unwrap();
    assert_eq!(retried.len(), 1, "{retried:?}");
    let more: Vec<String> = (FREE..2 * FREE).map(|i| id("free", i)).collect();
    publish_ids(more.clone()).await;
    ids.extend(more);
    let completed = 2 * FREE as u64;
    let before = until_executions(&client, "checkpointed", (1, completed, 0)).await;
    until_recorded(&rec, "the retried execution waits in ship", |r| {
        !r.runs(&bad, "ship").is_empty()
    })
    .await;
    let (files, bytes) = outputs_log_size(&server);
    assert!(
        files <= 4,
        "the outputs log kept {files} segments ({bytes} bytes)"
    );
    let kept = kept_status(&before);

    server.kill_now();
    let seq_at_kill = rec.next_seq.load(Ordering::SeqCst);
    let addr = server.addr();
    server.restart();
    let client = if server.addr() == addr {
        client
    } else {
        for h in handles.drain(..) {
            h.cancel();
        }
        let client = server.client_with(options);
        handles = attach_all(client.clone()).await;
        client
    };
    let after = until_executions(&client, "checkpointed", (1, completed, 0)).await;
    assert_eq!(kept_status(&after), kept, "status after the restart");

    gate.store(true, Ordering::SeqCst);
    let done = until_executions(&client, "checkpointed", (0, completed + 1, 0)).await;
    assert_stage(&done, "ship", [completed + 1, 0, 0, 0, 0]);
    let runs = rec.snapshot();
    let ok = |root: &str, stage: &str| -> Vec<Run> {
        runs.get(&(root.to_owned(), stage.to_owned()))
            .map(|r| {
                r.iter()
                    .filter(|r| r.finished.is_some_and(|(_, ok)| ok))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    };
    for root in &ids {
        for stage in ["build", "test", "ship"] {
            let mine = ok(root, stage);
            assert_eq!(mine.len(), 1, "{stage} of {root} completed exactly once");
            assert!(
                mine[0].seq < seq_at_kill,
                "{stage} of {root} ran after the kill"
            );
        }
    }
    for stage in ["build", "test"] {
        let mine = ok(&bad, stage);
        assert_eq!(mine.len(), 1, "{stage} of the retried execution: {mine:?}");
        assert!(
            mine[0].seq < seq_at_kill,
            "{stage} of the retried one reran"
        );
    }
    let ships = &runs[&(bad.clone(), "ship".to_owned())];
    assert!(
        ok(&bad, "ship").iter().any(|r| r.seq >= seq_at_kill),
        "the retried execution's ship completed after the restart: {ships:?}"
    );
    for ship in ships {
        let inputs: BTreeMap<String, String> = ship
            .inputs
            .iter()
            .map(|(stage, e)| (stage.clone(), String::from_utf8_lossy(&e.data).into_owned()))
            .collect();
        let want = BTreeMap::from([
            ("build".to_owned(), format!("{bad}/build")),
            ("test".to_owned(), format!("{bad}/test")),
        ]);
        assert_eq!(
            inputs, want,
            "the inputs ship of the retried execution received"
        );
    }
    for h in handles {
        h.cancel();
    }
}

/// One connection may hold several stage subscriptions (and a group
/// subscription beside them): the root stage's delivery and, after its ack,
/// the dependent stage's delivery with the root's output both arrive on
/// the same connection, each naming its stage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_serves_several_stage_subscriptions() {
    let server = Server::start();
    let client = server.client();
    apply(
        &client,
        r#"
apiVersion: hadron.rs/v1beta1
kind: Pipeline
metadata:
  name: two-on-one
spec:
  sourceStream: events
  triggers: [pair.requested]
  stages:
    - name: first
    - name: second
      dependencies: [first]
"#,
    )
    .await;
    let mut member = raw_stage_member(&server, "two-on-one", "first").await;
    let mut pushed = Vec::new();
    let reply = member
        .request(
            &Message::PipelineSubscribe(hadron_wire::PipelineSubscribe {
                pipeline: "two-on-one",
                stage: "second",
                max_in_flight: 4,
            }),
            &mut pushed,
        )
        .await;
    assert!(matches!(reply, Frame::AckOk { .. }), "{reply:?}");
    let group = member.subscribe("events", "beside-stages", false, 4).await;
    publish(
        &client,
        "events",
        vec![root_event("pair-1", "pair.requested", "pair-1", "{}")],
    )
    .await;
    // The group's delivery and the first stage's arrive, in either order.
    let mut first = None;
    let mut delivered = None;
    while first.is_none() || delivered.is_none() {
        match member.recv_within(Duration::from_secs(10)).await {
            Some(Some(Frame::StageDelivery(d))) => first = Some(*d),
            Some(Some(Frame::Delivery(d))) => delivered = Some(*d),
            other => panic!("expected deliveries, got {other:?}"),
        }
    }
    let first = first.unwrap();
    assert_eq!(first.stage, "first");
    assert_eq!(delivered.unwrap().subscription_id, group);
    let output = event_bytes("out-1", "test", "pair.first.done", b"first-output");
    let id = member
        .send(&Message::StageAck(hadron_wire::StageAck {
            delivery_id: first.delivery_id,
            output: &output,
        }))
        .await;
    let mut second = None;
    while second.is_none() {
        match member.recv_within(Duration::from_secs(10)).await {
            Some(Some(Frame::AckOk { request_id })) => assert_eq!(request_id, id),
            Some(Some(Frame::StageDelivery(d))) => second = Some(*d),
            other => panic!("expected the second stage, got {other:?}"),
        }
    }
    let second = second.unwrap();
    assert_eq!(second.stage, "second");
    assert_eq!(
        (second.partition, second.offset),
        (first.partition, first.offset)
    );
    assert_eq!(second.inputs["first"].data, b"first-output".to_vec());
}
