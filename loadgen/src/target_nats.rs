//! The `publish` scenario against NATS JetStream, the peer baseline.
//!
//! Matched to the Hadron run: a connection is one NATS client; each of its
//! `--in-flight` workers issues a batch of B JetStream publishes back to
//! back and then awaits their B acks, so a connection has in-flight x B
//! acks outstanding, as Hadron has in-flight x B events. The stream (name
//! from --stream, subjects `<stream>.>`, file storage) is created or
//! reused. Durability is the nats-server's `sync_interval`, which loadgen
//! cannot see: `--durable` is recorded as given.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, Context};
use bytes::Bytes;

use crate::args::Scenario;
use crate::report::{Basics, Report};
use crate::rss::Sampler;
use crate::run::{self, BatchSender, Error, Progress, Shared};
use crate::schedule::Ticket;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn run(scenario: &Scenario) -> Result<Report, Error> {
    let args = scenario.args();
    if !matches!(scenario, Scenario::Publish(_)) {
        return Err(format!(
            "scenario {} is not supported with --target nats (only publish is)",
            scenario.name()
        )
        .into());
    }
    let mut senders = Vec::new();
    for c in 0..args.connections {
        let client = async_nats::ConnectOptions::new()
            .name(format!("loadgen-{c}"))
            .connection_timeout(CONNECT_TIMEOUT)
            .connect(args.url.as_str())
            .await
            .map_err(|e| format!("cannot connect to NATS at {}: {e}", args.url))?;
        let js = jetstream::new(client);
        if c == 0 {
            js.get_or_create_stream(jetstream::stream::Config {
                name: args.stream.clone(),
                subjects: vec![format!("{}.>", args.stream)],
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| {
                format!(
                    "cannot create or open JetStream stream {} (is JetStream enabled, `nats-server -js`?): {e}",
                    args.stream
                )
            })?;
        }
        for _ in 0..args.in_flight {
            senders.push(NatsSender {
                js: js.clone(),
                subject: format!("{}.loadgen", args.stream),
                template: run::template(args.size),
            });
        }
    }

    let rss = args.server_pid.map(Sampler::start).transpose()?;
    let start = Instant::now();
    let shared = Shared::new(start, run::plan(args));
    let progress = Progress::start(&shared, "publish (nats)", None);
    let published = run::drive(&shared, senders).await;
    progress.finish();
    let published = published?;
    let server_rss = match rss {
        Some(s) => Some(s.finish().await?),
        None => None,
    };
    let warmup_end = shared.tickets.warmup_end();
    let mut report = Report::new(Basics {
        scenario: scenario.name(),
        params: args,
        events: published.events,
        elapsed_secs: published.window_secs(warmup_end),
        latency_us: &published.latency_us,
        latency_to: "ack",
    });
    report.server_rss = server_rss;
    Ok(report)
}

struct NatsSender {
    js: Context,
    subject: String,
    template: Vec<u8>,
}

impl BatchSender for NatsSender {
    async fn send(&mut self, ticket: &Ticket, stamp_ns: u64) -> Result<Instant, Error> {
        let payload = Bytes::from(run::payload(&self.template, stamp_ns));
        let mut acks = Vec::with_capacity(ticket.events as usize);
        for _ in 0..ticket.events {
            acks.push(
                self.js
                    .publish(self.subject.clone(), payload.clone())
                    .await
                    .map_err(|e| format!("NATS publish failed: {e}"))?,
            );
        }
        for ack in acks {
            ack.await
                .map_err(|e| format!("NATS publish was not acknowledged: {e}"))?;
        }
        Ok(Instant::now())
    }
}
