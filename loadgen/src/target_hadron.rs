//! The three scenarios against Hadron, through the `hadron` client.
//!
//! A connection is one `hadron::Client` (its main socket plus, with shard
//! routing, one per shard port it publishes to); `--in-flight` workers
//! share it, each with one publish request outstanding. A batch's events
//! share a subject, so one batch is one `Publish` frame to one partition;
//! consecutive batches spread over the partitions.
//!
//! - publish: latency is publish to ack.
//! - e2e: a consumer group (`--consumers` members, not durable, starting
//!   at the latest offset, group name unique per run) receives what is
//!   published; latency is the stamp in the data (send time) to the
//!   handler's call, in this process.
//! - pipeline: the seed's service-creation DAG as pipeline
//!   `loadgen-<stream>`, triggered by `loadgen.pipeline` (not
//!   `loadgen.test`, so publish runs on the same stream start no
//!   executions). Latency is publish to the `sync` handler's call. With
//!   --rate the roots are published on schedule; without it, each worker
//!   waits until its batch's executions reached `sync` (closed loop:
//!   connections x in-flight x batch executions outstanding).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hadron::{
    Client, ClientOptions, Delivery, NewEvent, Publisher, StageInput, StartPoint, SubscribeOptions,
    TlsOptions,
};
use tokio::sync::oneshot;

use crate::args::{Args, Scenario};
use crate::report::{Basics, PipelineSide, PublishSide, Report};
use crate::rss::Sampler;
use crate::run::{self, BatchSender, Error, Progress, Shared};
use crate::schedule::{Recorder, Ticket};

/// The type of events that publish and e2e send.
const EVENT_TYPE: &str = "loadgen.test";
/// The type of pipeline root events (the pipeline's trigger).
const ROOT_TYPE: &str = "loadgen.pipeline";
/// Deliveries unacknowledged per e2e consumer (the issue's figure).
const CONSUMER_IN_FLIGHT: u32 = 1024;
/// Handlers running at once per stage registration.
const STAGE_IN_FLIGHT: u32 = 1024;
/// Bounds for the pipeline's `maxParallel` (per source partition).
const PIPELINE_PARALLEL_MIN: u64 = 1024;
const PIPELINE_PARALLEL_MAX: u64 = 65_536;
/// How often a drain checks whether everything arrived.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// The DAG: stage and its dependencies.
const STAGES: [(&str, &[&str]); 5] = [
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

pub async fn run(scenario: &Scenario) -> Result<Report, Error> {
    let args = scenario.args();
    let run_id = format!(
        "lg{:x}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let control = Client::new(&args.url, options("loadgen-control", args)?)?;
    let status = control
        .status()
        .await
        .map_err(|e| format!("cannot reach Hadron at {}: {e}", args.url))?;
    let server = ServerStatus::parse(&status)?;
    check_durable(args.durable, &server.fsync)?;
    if !server.streams.iter().any(|s| s == &args.stream) {
        let yaml = format!(
            "apiVersion: hadron.rs/v1beta1\nkind: Stream\nmetadata:\n  name: {}\nspec: {{}}\n",
            args.stream
        );
        for line in control.apply(&yaml).await? {
            eprintln!("loadgen: {line}");
        }
    }

    let (ty, latency_to) = match scenario {
        Scenario::Publish(_) => (EVENT_TYPE, "ack"),
        Scenario::E2e(_) => (EVENT_TYPE, "delivery"),
        Scenario::Pipeline(_) => (ROOT_TYPE, "sync"),
    };
    let sink = Arc::new(Sink::new(format!("{run_id}-"))?);
    let mut stop_consumers: Vec<Box<dyn FnOnce() + Send>> = Vec::new();
    match scenario {
        Scenario::Publish(_) => {}
        Scenario::E2e(_) => {
            let group = format!("{run_id}-e2e");
            for c in 0..args.consumers {
                let client =
                    Client::new(&args.url, options(&format!("loadgen-consumer-{c}"), args)?)?;
                let sink = Arc::clone(&sink);
                let subscription = client
                    .subscribe(
                        &args.stream,
                        &group,
                        SubscribeOptions {
                            durable: false,
                            start: StartPoint::Latest,
                            max_in_flight: CONSUMER_IN_FLIGHT,
                        },
                        move |d: Delivery| {
                            sink.delivered(&d);
                            async { Ok::<(), Infallible>(()) }
                        },
                    )
                    .await?;
                stop_consumers.push(Box::new(move || subscription.cancel()));
            }
        }
        Scenario::Pipeline(_) => {
            let name = pipeline_name(&args.stream);
            let outstanding =
                u64::from(args.connections) * u64::from(args.in_flight) * u64::from(args.batch);
            let parallel = outstanding.clamp(PIPELINE_PARALLEL_MIN, PIPELINE_PARALLEL_MAX);
            for line in control
                .apply(&pipeline_yaml(&name, &args.stream, parallel))
                .await?
            {
                eprintln!("loadgen: {line}");
            }
            for c in 0..args.consumers {
                let client =
                    Client::new(&args.url, options(&format!("loadgen-stages-{c}"), args)?)?;
                for (stage, _) in STAGES {
                    let sink = Arc::clone(&sink);
                    // Formatted once per stage, not per run of the stage.
                    let output_type = format!("{stage}.done");
                    let handler = move |input: StageInput| {
                        sink.stage_done(stage, &input);
                        let output = NewEvent::new(output_type.clone(), Vec::new());
                        async move { Ok::<_, Infallible>(output) }
                    };
                    let handle = client
                        .pipeline_with(&name, stage, STAGE_IN_FLIGHT, handler)
                        .await?;
                    stop_consumers.push(Box::new(move || handle.cancel()));
                }
            }
        }
    }

    let mut senders = Vec::new();
    let closed_loop = matches!(scenario, Scenario::Pipeline(_)) && args.rate.is_none();
    for c in 0..args.connections {
        let name = format!("loadgen-{c}");
        let client = Client::new(&args.url, options(&name, args)?)?;
        let publisher = client.publisher_for(&args.stream, &name).await?;
        for _ in 0..args.in_flight {
            senders.push(HadronSender {
                publisher: publisher.clone(),
                id_prefix: sink.run_prefix.clone(),
                ty,
                template: run::template(args.size),
                events: Vec::new(),
                wait_for: closed_loop.then(|| {
                    (
                        Arc::clone(&sink),
                        Duration::from_secs_f64(args.drain_timeout),
                    )
                }),
            });
        }
    }
    let encoded = encoded_size(&run_id, ty, args.size);

    let rss = args.server_pid.map(Sampler::start).transpose()?;
    let start = Instant::now();
    let shared = Shared::new(start, run::plan(args));
    sink.begin(start, shared.tickets.warmup_end());
    let extra: Option<Arc<dyn Fn() -> String + Send + Sync>> = match scenario {
        Scenario::Publish(_) => None,
        Scenario::E2e(_) => {
            let sink = Arc::clone(&sink);
            Some(Arc::new(move || format!(", {} delivered", sink.lock().all)))
        }
        Scenario::Pipeline(_) => {
            let sink = Arc::clone(&sink);
            Some(Arc::new(move || {
                format!(", {} executions done", sink.lock().all)
            }))
        }
    };
    let progress = Progress::start(&shared, scenario.name(), extra);
    let published = run::drive(&shared, senders).await;
    let failed = shared.failed.load(std::sync::atomic::Ordering::Relaxed);
    let published = match published {
        Ok(p) => p,
        Err(e) => {
            progress.finish();
            return Err(e);
        }
    };
    if !matches!(scenario, Scenario::Publish(_)) {
        progress.note("draining");
        let deadline = Instant::now() + Duration::from_secs_f64(args.drain_timeout);
        while sink.lock().measured.events < published.events && Instant::now() < deadline {
            tokio::time::sleep(DRAIN_POLL).await;
        }
    }
    progress.finish();
    for stop in stop_consumers {
        stop();
    }
    let server_rss = match rss {
        Some(s) => Some(s.finish().await?),
        None => None,
    };

    let warmup_end = shared.tickets.warmup_end();
    let s = sink.lock();
    let (events, recorder) = match scenario {
        Scenario::Publish(_) => (published.events, &published),
        _ => (s.measured.events, &s.measured),
    };
    let mut report = Report::new(Basics {
        scenario: scenario.name(),
        params: args,
        events,
        elapsed_secs: recorder.window_secs(warmup_end),
        latency_us: &recorder.latency_us,
        latency_to,
    })
    .with_encoded_size(encoded);
    report.durable = Some(server.fsync == "Always");
    report.server_fsync = Some(server.fsync);
    report.server_rss = server_rss;
    report.failed_events = Some(failed);
    if !matches!(scenario, Scenario::Publish(_)) {
        report.publish = Some(publish_side(&published, warmup_end));
    }
    let missing = published.events.saturating_sub(s.measured.events);
    match scenario {
        Scenario::Publish(_) => {}
        Scenario::E2e(_) => report.undelivered = Some(missing),
        Scenario::Pipeline(_) => {
            let stage_secs = s
                .stage_last
                .map_or(0.0, |l| {
                    l.saturating_duration_since(warmup_end).as_secs_f64()
                })
                .max(1e-6);
            let executions_per_sec = report.events_per_sec;
            report = report.with_pipeline(PipelineSide {
                executions: s.measured.events,
                executions_per_sec,
                stage_completions: s.stage_completions,
                stage_completions_per_sec: s.stage_completions as f64 / stage_secs,
                unfinished: missing,
            });
        }
    }
    Ok(report)
}

/// The client options of every client; `--ca`, `--cert` and `--key` are
/// read here (errors name the file).
fn options(name: &str, args: &Args) -> Result<ClientOptions, Error> {
    let tls = TlsOptions::from_files(
        args.ca.as_deref(),
        args.cert.as_deref(),
        args.key.as_deref(),
    )?;
    Ok(ClientOptions {
        name: name.to_owned(),
        max_in_flight_requests: ClientOptions::default()
            .max_in_flight_requests
            .max(args.in_flight as usize),
        // As the `hadron` CLI does: the server's handshake token, if any.
        token: std::env::var("HADRON_TOKEN").ok(),
        tls,
        ..ClientOptions::default()
    })
}

fn publish_side(published: &Recorder, warmup_end: Instant) -> PublishSide {
    PublishSide {
        events: published.events,
        events_per_sec: published.events as f64 / published.window_secs(warmup_end),
        latency_us: crate::report::LatencyUs::from_histogram(&published.latency_us),
    }
}

/// What loadgen needs from Hadron's status document.
#[derive(Debug, PartialEq, Eq)]
struct ServerStatus {
    /// `Always`, `Never` or `Interval { interval_ms: N }`.
    fsync: String,
    streams: Vec<String>,
}

impl ServerStatus {
    fn parse(json: &str) -> Result<ServerStatus, String> {
        let doc: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| format!("the server's status is not JSON: {e}"))?;
        let fsync = doc
            .get("fsync")
            .and_then(|f| f.as_str())
            .ok_or("the server's status has no \"fsync\" field (an older server?)")?
            .to_owned();
        let streams = doc
            .get("streams")
            .and_then(|s| s.as_array())
            .map(|list| {
                list.iter()
                    .filter_map(|s| s.get("name")?.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        Ok(ServerStatus { fsync, streams })
    }
}

/// Refuses a run whose label would be wrong: `--durable true` needs
/// `fsync: always`, `--durable false` anything else.
fn check_durable(wanted: Option<bool>, fsync: &str) -> Result<(), String> {
    let always = fsync == "Always";
    match wanted {
        Some(true) if !always => Err(format!(
            "--durable true, but the server's fsync policy is {fsync}; \
             start it with `fsync: always` in its config, or pass --durable false"
        )),
        Some(false) if always => Err(
            "--durable false, but the server fsyncs every write (fsync: Always); \
             start it with `fsync: never` (or `interval`), or pass --durable true"
                .to_owned(),
        ),
        _ => Ok(()),
    }
}

fn pipeline_name(stream: &str) -> String {
    format!("loadgen-{stream}")
}

fn pipeline_yaml(name: &str, stream: &str, max_parallel: u64) -> String {
    let mut yaml = format!(
        "apiVersion: hadron.rs/v1beta1\nkind: Pipeline\nmetadata:\n  name: {name}\nspec:\n  \
         sourceStream: {stream}\n  triggers:\n    - {ROOT_TYPE}\n  startPoint:\n    \
         location: latest\n  maxParallel: {max_parallel}\n  stages:\n"
    );
    for (stage, deps) in STAGES {
        yaml.push_str(&format!("    - name: {stage}\n"));
        if !deps.is_empty() {
            yaml.push_str(&format!(
                "      dependencies: [{}]\n",
                deps.iter()
                    .map(|d| format!("\"{d}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    yaml
}

/// The wire size of a typical event of this run (the id's batch number
/// varies, so this is within a few bytes).
fn encoded_size(run_id: &str, ty: &str, size: u32) -> u64 {
    let data = run::template(size);
    let id = format!("{run_id}--100000-0");
    let bytes = hadron_wire::encode_event(&hadron_wire::EventRef {
        id: &id,
        source: "loadgen-0",
        specversion: hadron_wire::SPECVERSION,
        ty,
        subject: Some("lg-100000"),
        data: &data,
        ..hadron_wire::EventRef::default()
    });
    bytes.len() as u64
}

struct HadronSender {
    publisher: Publisher,
    id_prefix: String,
    ty: &'static str,
    template: Vec<u8>,
    /// The last batch's events, overwritten in place by the next.
    events: Vec<NewEvent>,
    /// Closed-loop pipeline: wait (at most this long) for the batch's
    /// executions to reach `sync`.
    wait_for: Option<(Arc<Sink>, Duration)>,
}

impl BatchSender for HadronSender {
    async fn send(&mut self, ticket: &Ticket, stamp_ns: u64) -> Result<Instant, Error> {
        let data = run::payload(&self.template, stamp_ns);
        fill_batch(
            &mut self.events,
            &self.id_prefix,
            ticket.index,
            self.ty,
            &data,
            ticket.events,
        );
        let events = &self.events;
        // Register before publishing: `sync` may run before the ack.
        let waits: Vec<(String, oneshot::Receiver<()>)> = match &self.wait_for {
            Some((sink, _)) => {
                let mut s = sink.lock();
                events
                    .iter()
                    .map(|e| {
                        let (tx, rx) = oneshot::channel();
                        s.waiters.insert(e.id.clone(), tx);
                        (e.id.clone(), rx)
                    })
                    .collect()
            }
            None => Vec::new(),
        };
        match self.publisher.publish_slice(events).await {
            Ok(_) => {}
            // The client retried it (following leader changes) as long as
            // its options allow: the cluster was without a leader for
            // longer. Counted, not fatal; a refusal (an unknown stream, a
            // bad token) still halts the run.
            Err(e) if e.is_retryable() => {
                return Err(run::BatchFailed(format!("batch {}: {e}", ticket.index)).into());
            }
            Err(e) => return Err(e.into()),
        }
        let acked = Instant::now();
        if let Some((_, timeout)) = &self.wait_for {
            for (id, rx) in waits {
                match tokio::time::timeout_at((acked + *timeout).into(), rx).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) | Err(_) => {
                        return Err(format!(
                            "execution of {id} did not reach sync within {timeout:?} \
                             (raise --drain-timeout, or check `hadron pipeline status`)"
                        )
                        .into());
                    }
                }
            }
        }
        Ok(acked)
    }
}

/// Makes `events` the `count` events of batch `index`: ids
/// `{id_prefix}{index}-{i}` (unique in the run, as the server dedups by
/// source and id), type `ty`, subject `lg-{index}` (one partition per
/// batch) and `data`. The previous batch's events are overwritten in place,
/// so once the vector has grown to the batch size a batch allocates
/// nothing: loadgen shares the CPUs with the server it measures.
fn fill_batch(
    events: &mut Vec<NewEvent>,
    id_prefix: &str,
    index: u64,
    ty: &str,
    data: &[u8],
    count: u32,
) {
    let count = count as usize;
    events.truncate(count);
    while events.len() < count {
        events.push(NewEvent::default());
    }
    let index = Decimal::new(index);
    let index = index.as_str();
    for (i, event) in events.iter_mut().enumerate() {
        let digits = Decimal::new(i as u64);
        event.id.clear();
        event.id.push_str(id_prefix);
        event.id.push_str(index);
        event.id.push('-');
        event.id.push_str(digits.as_str());
        if event.ty != ty {
            event.ty.clear();
            event.ty.push_str(ty);
        }
        let subject = event.subject.get_or_insert_with(String::new);
        subject.clear();
        subject.push_str("lg-");
        subject.push_str(index);
        event.data.clear();
        event.data.extend_from_slice(data);
    }
}

/// Digits of `u64::MAX`.
const DECIMAL_U64_BYTES_MAX: usize = 20;

/// A number's decimal digits, written without the formatting machinery.
struct Decimal {
    digits: [u8; DECIMAL_U64_BYTES_MAX],
    start: usize,
}

impl Decimal {
    fn new(mut n: u64) -> Decimal {
        let mut digits = [0u8; DECIMAL_U64_BYTES_MAX];
        let mut start = digits.len();
        loop {
            start -= 1;
            digits[start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        Decimal { digits, start }
    }

    fn as_str(&self) -> &str {
        // Only ASCII digits were written.
        core::str::from_utf8(&self.digits[self.start..]).unwrap_or_default()
    }
}

/// What consumers and stage handlers saw, for this run's events only.
#[derive(Debug)]
struct Sink {
    run_prefix: String,
    state: Mutex<SinkState>,
}

#[derive(Debug)]
struct SinkState {
    /// The run's start and the end of its warmup (set by `begin`).
    start: Option<Instant>,
    warmup_end_ns: u64,
    /// Deliveries (e2e) or executions (pipeline) of the run, warmup
    /// included.
    all: u64,
    /// Measured ones: latency to delivery or `sync`.
    measured: Recorder,
    stage_completions: u64,
    stage_last: Option<Instant>,
    waiters: HashMap<String, oneshot::Sender<()>>,
}

impl Sink {
    fn new(run_prefix: String) -> Result<Sink, Error> {
        Ok(Sink {
            run_prefix,
            state: Mutex::new(SinkState {
                start: None,
                warmup_end_ns: 0,
                all: 0,
                measured: Recorder::new()?,
                stage_completions: 0,
                stage_last: None,
                waiters: HashMap::new(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, SinkState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn begin(&self, start: Instant, warmup_end: Instant) {
        let mut s = self.lock();
        s.start = Some(start);
        s.warmup_end_ns = run::nanos_between(start, warmup_end);
    }

    /// The event's latency since its stamp, and whether it is measured;
    /// `None` for other runs' events.
    fn latency(
        &self,
        s: &SinkState,
        id: &str,
        data: &[u8],
        now: Instant,
    ) -> Option<(Duration, bool)> {
        if !id.starts_with(&self.run_prefix) {
            return None;
        }
        let start = s.start?;
        let stamp = run::stamp_of(data)?;
        let now_ns = run::nanos_between(start, now);
        Some((
            Duration::from_nanos(now_ns.saturating_sub(stamp)),
            stamp >= s.warmup_end_ns,
        ))
    }

    fn delivered(&self, d: &Delivery) {
        let now = Instant::now();
        let mut s = self.lock();
        let Some((latency, measured)) = self.latency(&s, &d.event.id, &d.event.data, now) else {
            return;
        };
        if d.attempt != 1 {
            return;
        }
        s.all += 1;
        if measured {
            s.measured.record(latency, 1, now);
        }
    }

    fn stage_done(&self, stage: &str, input: &StageInput) {
        let now = Instant::now();
        let mut s = self.lock();
        let root = &input.root;
        let Some((latency, measured)) = self.latency(&s, &root.id, &root.data, now) else {
            return;
        };
        if measured {
            s.stage_completions += 1;
            s.stage_last = s.stage_last.max(Some(now));
        }
        if stage != "sync" || input.attempt != 1 {
            return;
        }
        s.all += 1;
        if measured {
            s.measured.record(latency, 1, now);
        }
        if let Some(tx) = s.waiters.remove(&root.id) {
            let _ = tx.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_and_durable_checks() {
        let s = ServerStatus::parse(
            r#"{"shards":2,"fsync":"Interval { interval_ms: 100 }","streams":[{"name":"events"},{"name":"b"}]}"#,
        )
        .unwrap();
        assert_eq!(s.fsync, "Interval { interval_ms: 100 }");
        assert_eq!(s.streams, vec!["events", "b"]);
        assert!(ServerStatus::parse(r#"{"streams":[]}"#).is_err());
        assert!(check_durable(Some(true), "Always").is_ok());
        assert!(check_durable(Some(false), "Never").is_ok());
        assert!(check_durable(Some(false), &s.fsync).is_ok());
        assert!(check_durable(None, "Never").is_ok());
        assert!(check_durable(Some(true), "Never").is_err());
        assert!(check_durable(Some(true), &s.fsync).is_err());
        assert!(check_durable(Some(false), "Always").is_err());
    }

    #[test]
    fn pipeline_yaml_spells_the_dag() {
        let yaml = pipeline_yaml("loadgen-events", "events", 2048);
        assert!(yaml.contains("sourceStream: events"));
        assert!(yaml.contains("- loadgen.pipeline"));
        assert!(yaml.contains("maxParallel: 2048"));
        assert!(yaml.contains(
            "    - name: sync\n      dependencies: [\"deploy-service\", \"setup-billing\", \"setup-monitoring\", \"notify-user\"]\n"
        ));
        assert!(yaml.contains("    - name: deploy-service\n    - name: setup-billing\n"));
    }

    #[test]
    fn decimal_writes_what_display_writes() {
        for n in [0, 7, 9, 10, 99, 100, 12_345, u64::from(u32::MAX), u64::MAX] {
            assert_eq!(Decimal::new(n).as_str(), n.to_string());
        }
    }

    #[test]
    fn fill_batch_writes_what_loadgen_always_sent() {
        let data = run::payload(&run::template(64), 42);
        let mut events = Vec::new();
        // Growing, shrinking and growing again: each batch is exactly its
        // own events, whatever the vector held before.
        for (index, count) in [(7u64, 1u32), (8, 1001), (9, 10), (u64::MAX, 64)] {
            fill_batch(&mut events, "lg18a-", index, EVENT_TYPE, &data, count);
            assert_eq!(events.len(), count as usize);
            for (i, e) in events.iter().enumerate() {
                let expected = NewEvent {
                    id: format!("lg18a-{index}-{i}"),
                    ty: EVENT_TYPE.to_owned(),
                    subject: Some(format!("lg-{index}")),
                    data: data.clone(),
                    ..NewEvent::default()
                };
                assert_eq!(*e, expected);
            }
        }
        fill_batch(&mut events, "p", 3, ROOT_TYPE, &[], 2);
        assert_eq!(events[1].id, "p3-1");
        assert_eq!(events[1].ty, ROOT_TYPE);
        assert!(events[1].data.is_empty());
    }

    #[test]
    fn encoded_size_exceeds_the_data() {
        let n = encoded_size("lg18a", EVENT_TYPE, 256);
        assert!(n > 256 && n < 256 + 200, "{n}");
    }
}
