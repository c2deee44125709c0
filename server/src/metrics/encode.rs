//! The metrics of one scrape, encoded with `prometheus-client`.
//!
//! A scrape's figures ([`Scrape`]: every shard's [`ShardMetrics`] and the
//! process-wide ones) are plain data; [`Scrape`] is a `prometheus-client`
//! `Collector` that writes them as metric families, each family once with
//! the series of every shard (OpenMetrics wants a family's samples
//! together). The crate writes the OpenMetrics text format;
//! [`openmetrics_to_text`] turns that into the Prometheus text format
//! (version 0.0.4), which `promtool check metrics` and older scrapers read:
//! the two differ, for what Hadron writes (no exemplars, no units
//! metadata, no `_created`), only in a counter family's name, which
//! OpenMetrics writes without its `_total` suffix, and in the closing
//! `# EOF`.
//!
//! Names follow Prometheus' conventions: `hadron_` first, base units
//! (`_seconds`, `_bytes`) last, counters `_total`. The list is in
//! docs/metrics.md.

use std::collections::BTreeMap;

use hadron_engine::log::{LATENCY_BUCKET_BOUNDS_US, LatencyHistogram};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::shard::metrics::{ConnTotals, ShardMetrics};

mod replication;

/// Everything one scrape reports.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    /// Every shard's figures, in shard order.
    pub shards: Vec<ShardMetrics>,
    /// Client connections open on all shards.
    pub connections: u64,
    /// The process's resident set (`VmRSS`), when it could be read.
    pub resident_bytes: Option<u64>,
}

/// A series' labels.
type Labels = Vec<(&'static str, String)>;

/// How to write one family's samples.
enum Kind {
    Gauge,
    Counter,
}

/// A sample's value: counts are written as integers, times as decimals.
#[derive(Debug, Clone, Copy)]
enum Value {
    Count(u64),
    Seconds(f64),
}

impl From<u64> for Value {
    fn from(n: u64) -> Value {
        Value::Count(n)
    }
}

impl From<usize> for Value {
    fn from(n: usize) -> Value {
        Value::Count(n as u64)
    }
}

/// Writes one sample of `value` as `kind`.
fn sample(m: &mut MetricEncoder, kind: &Kind, value: Value) -> Result<(), std::fmt::Error> {
    match (kind, value) {
        (Kind::Gauge, Value::Count(n)) => m.encode_gauge(&n),
        (Kind::Gauge, Value::Seconds(s)) => m.encode_gauge(&s),
        (Kind::Counter, Value::Count(n)) => m.encode_counter::<NoLabelSet, u64, u64>(&n, None),
        (Kind::Counter, Value::Seconds(s)) => m.encode_counter::<NoLabelSet, f64, f64>(&s, None),
    }
}

/// Writes one family of plain samples (gauges or counters).
fn family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: Kind,
    samples: impl IntoIterator<Item = (Labels, Value)>,
) -> Result<(), std::fmt::Error> {
    let metric_type = match kind {
        Kind::Gauge => MetricType::Gauge,
        Kind::Counter => MetricType::Counter,
    };
    let mut metric = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, value) in samples {
        if labels.is_empty() {
            sample(&mut metric, &kind, value)?;
        } else {
            sample(&mut metric.encode_family(&labels)?, &kind, value)?;
        }
    }
    Ok(())
}

/// Writes one family of latency histograms, in seconds.
fn histograms<'h>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Labels, &'h LatencyHistogram)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, h) in series {
        // Per-bucket counts; the encoder makes them cumulative, and
        // `f64::MAX` is its `+Inf`.
        let buckets: Vec<(f64, u64)> = LATENCY_BUCKET_BOUNDS_US
            .iter()
            .map(|&us| us as f64 / 1e6)
            .chain([f64::MAX])
            .zip(h.counts)
            .collect();
        metric
            .encode_family(&labels)?
            .encode_histogram::<NoLabelSet>(h.sum_us as f64 / 1e6, h.count(), &buckets, None)?;
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.encode_server(&mut encoder)?;
        self.encode_partitions(&mut encoder)?;
        self.encode_groups(&mut encoder)?;
        self.encode_pipelines(&mut encoder)?;
        self.encode_replication(&mut encoder)?;
        Ok(())
    }
}

impl Scrape {
    /// A connection counter summed over the shards.
    fn total_of(&self, f: fn(&ConnTotals) -> u64) -> Value {
        Value::Count(self.shards.iter().map(|s| f(&s.conns)).sum())
    }

    fn encode_server(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use Kind::{Counter, Gauge};
        let none = || Labels::new();
        family(
            e,
            "hadron_shards",
            "Shards (executors) serving.",
            Gauge,
            [(none(), Value::from(self.shards.len()))],
        )?;
        family(
            e,
            "hadron_connections",
            "Client connections open, on all shards.",
            Gauge,
            [(none(), Value::from(self.connections))],
        )?;
        if let Some(rss) = self.resident_bytes {
            family(
                e,
                "hadron_resident_memory_bytes",
                "Resident set size of the server process (VmRSS).",
                Gauge,
                [(none(), Value::from(rss))],
            )?;
        }
        let mut refused: BTreeMap<u16, u64> = BTreeMap::new();
        for (code, n) in self.shards.iter().flat_map(|s| &s.conns.refused) {
            *refused.entry(*code).or_default() += n;
        }
        family(
            e,
            "hadron_refused_requests",
            "Error frames sent to clients, by wire error code.",
            Counter,
            refused.iter().map(|(&code, &n)| {
                let name = hadron_wire::ErrorCode::from_u16(code).name().to_string();
                (vec![("code", name)], Value::from(n))
            }),
        )?;
        let whole = [(none(), self)];
        figures(
            e,
            &whole,
            vec![
                (
                    "hadron_frames_received",
                    "Whole frames read from clients.",
                    Counter,
                    |s| s.total_of(|c| c.frames_in),
                ),
                (
                    "hadron_frames_sent",
                    "Frames queued to clients: answers, errors, deliveries.",
                    Counter,
                    |s| s.total_of(|c| c.frames_out),
                ),
                (
                    "hadron_received_bytes",
                    "Bytes read from clients.",
                    Counter,
                    |s| s.total_of(|c| c.bytes_in),
                ),
                (
                    "hadron_sent_bytes",
                    "Bytes of the frames queued to clients.",
                    Counter,
                    |s| s.total_of(|c| c.bytes_out),
                ),
                (
                    "hadron_deliveries_held_back",
                    "Deliveries held back because their connection's outbox was full.",
                    Counter,
                    |s| Value::Count(s.shards.iter().map(|s| s.dropped_deliveries).sum()),
                ),
            ],
        )?;
        Ok(())
    }
}

/// What one family reports of each item: its name, help, kind and value.
type Figure<T> = (&'static str, &'static str, Kind, fn(&T) -> Value);

/// Writes one family per figure, with a series per labelled item.
fn figures<T>(
    e: &mut DescriptorEncoder,
    items: &[(Labels, &T)],
    list: Vec<Figure<T>>,
) -> Result<(), std::fmt::Error> {
    for (name, help, kind, value) in list {
        let samples = items.iter().map(|(l, item)| (l.clone(), value(item)));
        family(e, name, help, kind, samples)?;
    }
    Ok(())
}

impl Scrape {
    fn encode_partitions(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use Kind::{Counter, Gauge};
        let mut items: Vec<(Labels, &crate::shard::metrics::PartitionMetrics)> = self
            .shards
            .iter()
            .flat_map(|s| &s.partitions)
            .map(|p| (partition_labels(&p.status.stream, p.status.partition), p))
            .collect();
        items.sort_by(|a, b| a.0.cmp(&b.0));
        figures(
            e,
            &items,
            vec![
                (
                    "hadron_partition_start_offset",
                    "First offset the partition retains.",
                    Gauge,
                    |p| Value::from(p.status.start_offset),
                ),
                (
                    "hadron_partition_next_offset",
                    "Next offset the partition gives.",
                    Gauge,
                    |p| Value::from(p.status.next_offset),
                ),
                (
                    "hadron_partition_durable_offset",
                    "Offsets below this are durable.",
                    Gauge,
                    |p| Value::from(p.status.durable_offset),
                ),
                (
                    "hadron_partition_bytes",
                    "Bytes of batches the partition's log holds.",
                    Gauge,
                    |p| Value::from(p.status.bytes),
                ),
                (
                    "hadron_partition_segments",
                    "Segment files of the partition's log.",
                    Gauge,
                    |p| Value::from(p.status.segments),
                ),
                (
                    "hadron_partition_read_only",
                    "1 when the partition refuses writes (poisoned or damaged).",
                    Gauge,
                    |p| Value::Count(u64::from(p.status.read_only.is_some())),
                ),
                (
                    "hadron_publish_events",
                    "Events publishes stored (duplicates not counted).",
                    Counter,
                    |p| Value::from(p.published.events),
                ),
                (
                    "hadron_publish_bytes",
                    "Bytes of the events publishes stored.",
                    Counter,
                    |p| Value::from(p.published.bytes),
                ),
                (
                    "hadron_commit_written_bytes",
                    "Bytes the group commit's rounds wrote (whole pages).",
                    Counter,
                    |p| Value::from(p.status.commits.written_bytes),
                ),
                (
                    "hadron_commit_syncs",
                    "fdatasync calls of the partition's log.",
                    Counter,
                    |p| Value::from(p.status.commits.syncs),
                ),
                (
                    "hadron_dedup_keys",
                    "Offsets the dedup window spans.",
                    Gauge,
                    |p| Value::from(p.status.dedup_keys),
                ),
                (
                    "hadron_dedup_window_age_seconds",
                    "Age of the dedup window's oldest batch.",
                    Gauge,
                    |p| Value::Seconds(p.status.dedup_oldest_ms.unwrap_or(0) as f64 / 1e3),
                ),
            ],
        )?;
        commit_histograms(e, &items)
    }

    fn encode_groups(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use Kind::{Counter, Gauge};
        let mut items: Vec<(Labels, &crate::shard::group::GroupStatus)> = self
            .shards
            .iter()
            .flat_map(|s| &s.partitions)
            .flat_map(|p| p.status.groups.iter().map(move |g| (p, g)))
            .map(|(p, g)| {
                let mut labels = partition_labels(&p.status.stream, p.status.partition);
                labels.push(("group", g.group.clone()));
                (labels, g)
            })
            .collect();
        items.sort_by(|a, b| a.0.cmp(&b.0));
        figures(
            e,
            &items,
            vec![
                (
                    "hadron_group_lag",
                    "Events after the group's committed offset.",
                    Gauge,
                    |g| Value::from(g.lag),
                ),
                (
                    "hadron_group_committed_offset",
                    "Every offset below this was acknowledged.",
                    Gauge,
                    |g| Value::from(g.committed),
                ),
                (
                    "hadron_group_in_flight",
                    "Deliveries awaiting an ack.",
                    Gauge,
                    |g| Value::from(g.in_flight),
                ),
                ("hadron_group_members", "Members attached.", Gauge, |g| {
                    Value::from(g.members)
                }),
                (
                    "hadron_group_redeliveries",
                    "Deliveries made again (nack, ack timeout, disconnect).",
                    Counter,
                    |g| Value::from(g.redeliveries),
                ),
                ("hadron_group_nacks", "Nacks received.", Counter, |g| {
                    Value::from(g.nacks)
                }),
            ],
        )
    }

    fn encode_pipelines(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use Kind::{Counter, Gauge};
        let runs = |stages: bool| {
            let mut items: Vec<(Labels, (&crate::shard::pipeline::RunStatus, usize))> = Vec::new();
            for (name, run) in self.shards.iter().flat_map(|s| &s.runs) {
                let labels = vec![
                    ("pipeline", name.clone()),
                    ("partition", run.partition.to_string()),
                ];
                if !stages {
                    items.push((labels, (run, 0)));
                    continue;
                }
                for (i, stage) in run.stages.iter().enumerate() {
                    let mut labels = labels.clone();
                    labels.push(("stage", stage.name.clone()));
                    items.push((labels, (run, i)));
                }
            }
            items.sort_by(|a, b| a.0.cmp(&b.0));
            items
        };
        let items = runs(false);
        let refs: Vec<(Labels, &_)> = items.iter().map(|(l, r)| (l.clone(), r)).collect();
        figures(
            e,
            &refs,
            vec![
                (
                    "hadron_pipeline_executions_active",
                    "Executions unfinished (running or queued for a retry).",
                    Gauge,
                    |r| Value::from(r.0.active),
                ),
                (
                    "hadron_pipeline_executions_completed",
                    "Executions that completed every stage.",
                    Counter,
                    |r| Value::from(r.0.completed),
                ),
                (
                    "hadron_pipeline_executions_failed",
                    "Executions failed and awaiting a retry.",
                    Gauge,
                    |r| Value::from(r.0.failed),
                ),
            ],
        )?;
        let items = runs(true);
        let refs: Vec<(Labels, &_)> = items.iter().map(|(l, r)| (l.clone(), r)).collect();
        figures(
            e,
            &refs,
            vec![
                (
                    "hadron_stage_completed",
                    "Stage deliveries acknowledged with an output.",
                    Counter,
                    |r| Value::from(r.0.stages[r.1].completed),
                ),
                (
                    "hadron_stage_errors",
                    "Stage deliveries nacked or timed out.",
                    Counter,
                    |r| Value::from(r.0.stages[r.1].errors),
                ),
                (
                    "hadron_stage_failed",
                    "Executions failed at this stage and awaiting a retry.",
                    Gauge,
                    |r| Value::from(r.0.stages[r.1].failed),
                ),
                (
                    "hadron_stage_in_flight",
                    "Stage deliveries awaiting an ack.",
                    Gauge,
                    |r| Value::from(r.0.stages[r.1].in_flight),
                ),
                (
                    "hadron_stage_waiting",
                    "Unfinished executions whose stage has not run yet.",
                    Gauge,
                    |r| Value::from(r.0.stages[r.1].waiting),
                ),
            ],
        )
    }
}

/// The group commit's latency histograms of every partition.
fn commit_histograms(
    e: &mut DescriptorEncoder,
    items: &[(Labels, &crate::shard::metrics::PartitionMetrics)],
) -> Result<(), std::fmt::Error> {
    histograms(
        e,
        "hadron_commit_write_seconds",
        "Time each group-commit round awaited its writes; the count is the rounds that wrote.",
        items.iter().map(|(l, p)| (l.clone(), &p.latencies.write)),
    )?;
    histograms(
        e,
        "hadron_commit_durable_wait_seconds",
        "Time each durable append (fsync: always) waited until it was durable.",
        items
            .iter()
            .map(|(l, p)| (l.clone(), &p.latencies.durable_wait)),
    )
}

fn partition_labels(stream: &str, partition: u32) -> Labels {
    vec![
        ("stream", stream.to_owned()),
        ("partition", partition.to_string()),
    ]
}

/// Encodes a scrape in the OpenMetrics text format.
pub fn openmetrics(scrape: Scrape) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

/// The Prometheus text format (0.0.4) of what [`openmetrics`] wrote:
/// counter families named with their `_total`, no `# EOF`.
pub fn openmetrics_to_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 64 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| Some((p, line.strip_prefix(p)?)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}
