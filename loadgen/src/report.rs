//! The run's figures: one JSON object for machines (`--json`, the last
//! line of stdout) and a table for people.
//!
//! Rates are measured events over the measurement window: from the end of
//! the warmup to the last measured completion (ack, delivery or `sync`).
//! `bytes_per_sec` counts event data bytes (`--size`); the encoded size,
//! when known, adds the event's envelope (id, source, type, subject).

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::args::Args;
use crate::rss::RssReport;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencyUs {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
    /// Events recorded.
    pub count: u64,
}

impl LatencyUs {
    pub fn from_histogram(h: &Histogram<u64>) -> LatencyUs {
        if h.is_empty() {
            return LatencyUs {
                p50: 0,
                p90: 0,
                p99: 0,
                p999: 0,
                max: 0,
                mean: 0.0,
                count: 0,
            };
        }
        LatencyUs {
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
            count: h.len(),
        }
    }
}

/// The publishing side of an e2e or pipeline run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PublishSide {
    pub events: u64,
    pub events_per_sec: f64,
    /// Publish to ack.
    pub latency_us: LatencyUs,
}

/// Pipeline figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PipelineSide {
    pub executions: u64,
    pub executions_per_sec: f64,
    pub stage_completions: u64,
    pub stage_completions_per_sec: f64,
    /// Executions of this run that had not reached `sync` when the drain
    /// timeout ended the run.
    pub unfinished: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub target: &'static str,
    /// The flags the run used.
    pub params: Args,
    /// Whether acknowledged events were fsynced: for Hadron the server's
    /// policy (`fsync: always`), for NATS the `--durable` flag as given
    /// (its durability is the nats-server's `sync_interval`).
    pub durable: Option<bool>,
    /// Hadron's fsync policy as its status reports it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_fsync: Option<String>,
    /// Measured events: acked (publish), delivered (e2e), executions'
    /// root events that reached `sync` (pipeline).
    pub events: u64,
    pub elapsed_secs: f64,
    pub events_per_sec: f64,
    pub bytes_per_sec: f64,
    pub event_bytes: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encoded_event_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encoded_bytes_per_sec: Option<f64>,
    pub latency_us: LatencyUs,
    /// What latency runs to: `ack`, `delivery` or `sync`.
    pub latency_to: &'static str,
    /// What latency runs from: `send` (unbounded) or `schedule` (under
    /// --rate: the intended send time for a batch its worker could only
    /// claim late, correcting coordinated omission; else the send).
    pub latency_from: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish: Option<PublishSide>,
    /// e2e: measured events published but not delivered by the drain
    /// timeout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undelivered: Option<u64>,
    /// Hadron: events whose publish failed even after the client's
    /// retries (a cluster without a leader for longer than they cover);
    /// the run went on without them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_events: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<PipelineSide>,
    /// Pipeline: the same as `pipeline.executions_per_sec`, at the top for
    /// scripts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub executions_per_sec: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage_completions_per_sec: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss: Option<RssReport>,
}

/// The fields every scenario fills in; the rest start empty.
#[derive(Debug)]
pub struct Basics<'a> {
    pub scenario: &'static str,
    pub params: &'a Args,
    pub events: u64,
    pub elapsed_secs: f64,
    pub latency_us: &'a Histogram<u64>,
    pub latency_to: &'static str,
}

impl Report {
    pub fn new(b: Basics<'_>) -> Report {
        let elapsed = b.elapsed_secs.max(1e-6);
        let events_per_sec = b.events as f64 / elapsed;
        Report {
            scenario: b.scenario,
            target: b.params.target.name(),
            params: b.params.clone(),
            durable: b.params.durable,
            server_fsync: None,
            events: b.events,
            elapsed_secs: b.elapsed_secs,
            events_per_sec,
            bytes_per_sec: events_per_sec * f64::from(b.params.size),
            event_bytes: b.params.size,
            encoded_event_bytes: None,
            encoded_bytes_per_sec: None,
            latency_us: LatencyUs::from_histogram(b.latency_us),
            latency_to: b.latency_to,
            latency_from: if b.params.rate.is_some() {
                "schedule"
            } else {
                "send"
            },
            publish: None,
            undelivered: None,
            failed_events: None,
            pipeline: None,
            executions_per_sec: None,
            stage_completions_per_sec: None,
            server_rss: None,
        }
    }

    pub fn with_encoded_size(mut self, bytes: u64) -> Report {
        self.encoded_event_bytes = Some(bytes);
        self.encoded_bytes_per_sec = Some(self.events_per_sec * bytes as f64);
        self
    }

    pub fn with_pipeline(mut self, p: PipelineSide) -> Report {
        self.executions_per_sec = Some(p.executions_per_sec);
        self.stage_completions_per_sec = Some(p.stage_completions_per_sec);
        self.pipeline = Some(p);
        self
    }

    pub fn json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }

    /// The table for people.
    pub fn table(&self) -> String {
        let p = &self.params;
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        let durable = match (self.durable, &self.server_fsync) {
            (_, Some(fsync)) => format!("fsync {fsync}"),
            (Some(d), None) => format!("durable {d} (as given)"),
            (None, None) => "durability not given".to_owned(),
        };
        line(format!(
            "loadgen {} -> {} {} (stream {}, {durable})",
            self.scenario, self.target, p.url, p.stream
        ));
        let rate = p
            .rate
            .map_or("unbounded".to_owned(), |r| format!("{r} events/s"));
        let stop = match (p.duration, p.count) {
            (Some(d), _) => format!("{d} s"),
            (None, Some(c)) => format!("{c} events"),
            (None, None) => "?".to_owned(),
        };
        line(format!(
            "  {} connections x {} in flight x batch {}, {} B events{}, rate {rate}, {stop} after {} s warmup, {} loadgen threads",
            p.connections,
            p.in_flight,
            p.batch,
            p.size,
            self.encoded_event_bytes
                .map_or(String::new(), |b| format!(" ({b} B encoded)")),
            p.warmup,
            p.threads.map_or("default".to_owned(), |t| t.to_string()),
        ));
        line(format!(
            "  {:<26} {} in {:.2} s",
            "events", self.events, self.elapsed_secs
        ));
        line(format!(
            "  {:<26} {:.0} events/s, {:.2} MB/s data{}",
            "throughput",
            self.events_per_sec,
            self.bytes_per_sec / 1e6,
            self.encoded_bytes_per_sec
                .map_or(String::new(), |b| format!(", {:.2} MB/s encoded", b / 1e6)),
        ));
        line(latency_line(
            &format!("latency to {} (us)", self.latency_to),
            &self.latency_us,
        ));
        if let Some(publish) = &self.publish {
            line(format!(
                "  {:<26} {} events, {:.0} events/s",
                "published", publish.events, publish.events_per_sec
            ));
            line(latency_line("latency to ack (us)", &publish.latency_us));
        }
        if let Some(n) = self.failed_events {
            line(format!("  {:<26} {n}", "failed (after retries)"));
        }
        if let Some(n) = self.undelivered {
            line(format!("  {:<26} {n}", "undelivered"));
        }
        if let Some(pl) = &self.pipeline {
            line(format!(
                "  {:<26} {} ({:.0}/s), stage completions {} ({:.0}/s), unfinished {}",
                "executions",
                pl.executions,
                pl.executions_per_sec,
                pl.stage_completions,
                pl.stage_completions_per_sec,
                pl.unfinished
            ));
        }
        if let Some(r) = &self.server_rss {
            let mb = |kb: u64| kb as f64 / 1024.0;
            line(format!(
                "  {:<26} start {:.1} MiB, peak {:.1} MiB, end {:.1} MiB, VmHWM {:.1} MiB (pid {})",
                "server RSS",
                mb(r.start_kb),
                mb(r.peak_kb),
                mb(r.end_kb),
                mb(r.hwm_kb),
                r.pid
            ));
        }
        if let Some(r) = &self.server_rss {
            let per_event = |cores: f64| cores * 1e6 / self.events_per_sec.max(1e-9);
            for (label, cores) in [
                ("server CPU", r.server_cpu_cores),
                ("loadgen CPU", r.loadgen_cpu_cores),
            ] {
                if let Some(c) = cores {
                    line(format!(
                        "  {label:<26} {c:.2} cores, {:.2} us per event (whole run)",
                        per_event(c)
                    ));
                }
            }
        }
        out
    }
}

fn latency_line(label: &str, l: &LatencyUs) -> String {
    format!(
        "  {label:<26} p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  mean {:.0}",
        l.p50, l.p90, l.p99, l.p999, l.max, l.mean
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::{Cli, Scenario};
    use clap::Parser;

    fn args(line: &str) -> Args {
        match Cli::try_parse_from(line.split_whitespace())
            .unwrap()
            .scenario
        {
            Scenario::Publish(a) | Scenario::E2e(a) | Scenario::Pipeline(a) => a,
        }
    }

    fn histogram() -> Histogram<u64> {
        let mut h = crate::schedule::latency_histogram().unwrap();
        for us in 1..=1000 {
            h.record(us).unwrap();
        }
        h
    }

    #[test]
    fn publish_report_json_has_the_promised_shape() {
        let params = args("loadgen publish --batch 64 --size 100 --duration 2 --durable true");
        let h = histogram();
        let mut report = Report::new(Basics {
            scenario: "publish",
            params: &params,
            events: 20_000,
            elapsed_secs: 2.0,
            latency_us: &h,
            latency_to: "ack",
        })
        .with_encoded_size(180);
        report.server_fsync = Some("Always".into());
        report.failed_events = Some(64);
        report.server_rss = Some(RssReport {
            pid: 7,
            start_kb: 1000,
            peak_kb: 3000,
            end_kb: 2000,
            hwm_kb: 3100,
            server_cpu_cores: Some(0.9),
            loadgen_cpu_cores: None,
        });
        let json = report.json().unwrap();
        assert!(!json.contains('\n'), "one line");
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["scenario"], "publish");
        assert_eq!(v["target"], "hadron");
        assert_eq!(v["events"], 20_000);
        assert_eq!(v["events_per_sec"], 10_000.0);
        assert_eq!(v["bytes_per_sec"], 1_000_000.0);
        assert_eq!(v["encoded_bytes_per_sec"], 1_800_000.0);
        assert_eq!(v["event_bytes"], 100);
        assert_eq!(v["encoded_event_bytes"], 180);
        assert_eq!(v["durable"], true);
        assert_eq!(v["server_fsync"], "Always");
        assert_eq!(v["latency_from"], "send");
        assert_eq!(v["latency_to"], "ack");
        assert_eq!(v["failed_events"], 64);
        let l = &v["latency_us"];
        assert_eq!(l["p50"], 500);
        assert_eq!(l["p99"], 990);
        assert_eq!(l["p999"], 999);
        assert_eq!(l["max"], 1000);
        assert_eq!(l["count"], 1000);
        assert_eq!(v["params"]["batch"], 64);
        assert_eq!(v["params"]["connections"], 1);
        assert_eq!(v["params"]["duration"], 2.0);
        assert!(v["params"]["count"].is_null());
        assert!(v["params"].get("json").is_none());
        let rss = &v["server_rss"];
        assert_eq!(
            (
                &rss["start_kb"],
                &rss["peak_kb"],
                &rss["end_kb"],
                &rss["hwm_kb"]
            ),
            (
                &serde_json::json!(1000),
                &serde_json::json!(3000),
                &serde_json::json!(2000),
                &serde_json::json!(3100)
            )
        );
        assert_eq!(rss["server_cpu_cores"], 0.9);
        assert!(rss["loadgen_cpu_cores"].is_null());
        let table = report.table();
        assert!(
            table.contains("server CPU") && table.contains("90.00 us per event"),
            "{table}"
        );
        assert!(table.contains("failed (after retries)     64"), "{table}");
        for absent in ["executions_per_sec", "pipeline", "publish", "undelivered"] {
            assert!(v.get(absent).is_none(), "{absent} only for other scenarios");
        }
        let table = report.table();
        assert!(table.contains("10000 events/s"), "{table}");
        assert!(table.contains("p99.9 999"), "{table}");
    }

    #[test]
    fn pipeline_report_has_execution_rates_and_schedule_latency() {
        let params = args("loadgen pipeline --rate 500 --count 1000");
        let h = histogram();
        let report = Report::new(Basics {
            scenario: "pipeline",
            params: &params,
            events: 1000,
            elapsed_secs: 2.0,
            latency_us: &h,
            latency_to: "sync",
        })
        .with_pipeline(PipelineSide {
            executions: 1000,
            executions_per_sec: 500.0,
            stage_completions: 5000,
            stage_completions_per_sec: 2500.0,
            unfinished: 0,
        });
        let v: serde_json::Value = serde_json::from_str(&report.json().unwrap()).unwrap();
        assert_eq!(v["executions_per_sec"], 500.0);
        assert_eq!(v["stage_completions_per_sec"], 2500.0);
        assert_eq!(v["pipeline"]["executions"], 1000);
        assert_eq!(v["latency_from"], "schedule");
        assert!(v["durable"].is_null());
        assert!(v.get("server_rss").is_none());
    }

    #[test]
    fn empty_histograms_report_zeros() {
        let h = crate::schedule::latency_histogram().unwrap();
        let l = LatencyUs::from_histogram(&h);
        assert_eq!((l.p50, l.max, l.count), (0, 0, 0));
    }
}
