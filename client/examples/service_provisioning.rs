//! The seed walkthrough, end to end: ExampleCloud's `service-creation`
//! pipeline with five stages (deploy-service; setup-billing,
//! setup-monitoring and notify-user in parallel; sync after all four).
//!
//! ```sh
//! cargo run -p hadron --example service_provisioning -- --url 127.0.0.1:7000 --events 100
//! ```
//!
//! It applies the pipeline (a no-op when it exists), runs a handler per
//! stage that checks what it receives, publishes N `service.created`
//! events, and exits 0 once all N executions completed, printing per-stage
//! counts and the publish-to-sync latency.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use hadron::{Client, ClientOptions, NewEvent, StageInput};
use hdrhistogram::Histogram;

const PIPELINE: &str = r#"
apiVersion: hadron.rs/v1beta1
kind: Pipeline
metadata:
  name: service-creation
spec:
  sourceStream: events
  triggers:
    - service.created
  startPoint:
    location: beginning
  maxParallel: 50
  stages:
    - name: deploy-service
    - name: setup-billing
      dependencies: ["deploy-service"]
    - name: setup-monitoring
      dependencies: ["deploy-service"]
    - name: notify-user
      dependencies: ["deploy-service"]
    - name: sync
      dependencies:
        - deploy-service
        - setup-billing
        - setup-monitoring
        - notify-user
"#;

#[derive(Parser, Debug)]
struct Args {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:7000")]
    url: String,
    /// Events to publish.
    #[arg(long, default_value_t = 100)]
    events: u64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
}

/// What the handlers saw, shared between them.
#[derive(Default)]
struct Seen {
    /// Stage name -> roots of this run it ran for (a set: a stage that ran
    /// twice for one execution would show as a count above the set size).
    runs: HashMap<&'static str, Vec<String>>,
    synced: HashSet<String>,
    problems: Vec<String>,
    published_at: HashMap<String, Instant>,
    latency_us: Option<Histogram<u64>>,
}

type Shared = Arc<Mutex<Seen>>;

fn lock(seen: &Shared) -> std::sync::MutexGuard<'_, Seen> {
    seen.lock().unwrap_or_else(|p| p.into_inner())
}

/// Checks a stage's input and records it; returns the output event.
fn handle(
    seen: &Shared,
    run_id: &str,
    stage: &'static str,
    needs: &[&str],
    input: &StageInput,
) -> NewEvent {
    let root = &input.root;
    let mut s = lock(seen);
    if root.ty != "service.created" {
        s.problems.push(format!("{stage}: root type {:?}", root.ty));
    }
    for dep in needs {
        match input.input(dep) {
            Some(out) if out.ty == format!("{dep}.done") && out.data == root.id.as_bytes() => {}
            Some(out) => s.problems.push(format!(
                "{stage}: input {dep} for {} is {:?} {:?}",
                root.id,
                out.ty,
                String::from_utf8_lossy(&out.data)
            )),
            None => s
                .problems
                .push(format!("{stage}: input {dep} missing for {}", root.id)),
        }
    }
    if input.inputs.len() != needs.len() {
        s.problems.push(format!(
            "{stage}: {} inputs for {}, expected {}",
            input.inputs.len(),
            root.id,
            needs.len()
        ));
    }
    if root.id.starts_with(run_id) {
        s.runs.entry(stage).or_default().push(root.id.clone());
        if stage == "sync"
            && s.synced.insert(root.id.clone())
            && let Some(at) = s.published_at.get(&root.id).copied()
        {
            let us = at.elapsed().as_micros() as u64;
            if let Some(h) = s.latency_us.as_mut() {
                let _ = h.record(us.max(1));
            }
        }
    }
    NewEvent::new(format!("{stage}.done"), root.id.as_bytes().to_vec())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let client = Client::new(&args.url, ClientOptions::default())?;
    for line in client.apply(PIPELINE).await? {
        println!("{line}");
    }
    let run_id = format!(
        "run-{}-",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis()
    );
    let seen: Shared = Arc::new(Mutex::new(Seen {
        latency_us: Some(Histogram::new_with_bounds(1, 600_000_000, 3)?),
        ..Seen::default()
    }));
    let stages: [(&'static str, &'static [&'static str]); 5] = [
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
    let mut handles = Vec::new();
    for (stage, needs) in stages {
        let seen = seen.clone();
        let run_id = run_id.clone();
        let handler = move |input: StageInput| {
            let out = handle(&seen, &run_id, stage, needs, &input);
            async move { Ok::<_, std::convert::Infallible>(out) }
        };
        handles.push(client.pipeline("service-creation", stage, handler).await?);
    }

    let publisher = client.publisher("example-cloud-app").await?;
    let start = Instant::now();
    // Publish in batches of 64, so that the pipeline, not one publisher's
    // round trips, sets the pace.
    let ids: Vec<u64> = (0..args.events).collect();
    for chunk in ids.chunks(64) {
        let mut batch = Vec::with_capacity(chunk.len());
        for &i in chunk {
            let id = format!("{run_id}{i}");
            lock(&seen).published_at.insert(id.clone(), Instant::now());
            batch.push(NewEvent {
                id,
                ty: "service.created".into(),
                subject: Some(format!("customer-{}", i % 17)),
                data: format!(r#"{{"service":"postgres","size":"{}"}}"#, i % 3).into_bytes(),
                ..NewEvent::default()
            });
        }
        publisher.publish_batch(batch).await?;
    }

    let deadline = start + Duration::from_secs(args.timeout_secs);
    loop {
        let done = lock(&seen).synced.len() as u64;
        if done >= args.events {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "only {done} of {} executions completed in time",
                args.events
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = start.elapsed();
    let s = lock(&seen);
    println!(
        "{} executions of service-creation in {:.2?} ({:.0}/s)",
        args.events,
        elapsed,
        args.events as f64 / elapsed.as_secs_f64()
    );
    let mut ok = s.problems.is_empty();
    for (stage, _) in stages {
        let runs = s.runs.get(stage).map_or(&[][..], Vec::as_slice);
        let distinct: HashSet<&String> = runs.iter().collect();
        println!(
            "  {stage:<18} ran {:>6} times for {:>6} executions",
            runs.len(),
            distinct.len()
        );
        ok &= distinct.len() as u64 == args.events;
    }
    if let Some(h) = &s.latency_us {
        println!(
            "  publish -> sync done: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
            h.max() as f64 / 1000.0
        );
    }
    for p in s.problems.iter().take(10) {
        eprintln!("problem: {p}");
    }
    drop(s);
    for h in handles {
        h.cancel();
    }
    if ok {
        Ok(())
    } else {
        Err("some stage did not see what it should have".into())
    }
}
