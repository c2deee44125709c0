use super::http::{OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE, answer};
use super::*;
use crate::shard::PartitionStatus;
use crate::shard::group::GroupStatus;
use crate::shard::metrics::{ConnTotals, PartitionMetrics};
use crate::shard::partition::PublishedTotals;
use crate::shard::pipeline::{RunStatus, StageStatus};

fn partition(stream: &str, partition: u32, next: u64) -> PartitionMetrics {
    let mut latencies = hadron_engine::CommitLatencies::default();
    latencies.write.record(30);
    latencies.write.record(3_000_000);
    PartitionMetrics {
        status: PartitionStatus {
            stream: stream.into(),
            partition,
            shard: 0,
            start_offset: 0,
            next_offset: next,
            durable_offset: next,
            segments: 1,
            bytes: 4096,
            read_only: None,
            disk_full: None,
            commits: hadron_engine::CommitStats::default().into(),
            dedup_keys: next,
            dedup_oldest_ms: Some(1500),
            groups: vec![GroupStatus {
                group: "billing".into(),
                durable: true,
                committed: 2,
                lag: next - 2,
                members: 1,
                in_flight: 1,
                nacks: 1,
                redeliveries: 1,
                last_error: None,
                persisted: None,
            }],
            replication: None,
            offsets_replication: None,
        },
        published: PublishedTotals {
            events: next,
            bytes: next * 100,
        },
        latencies,
    }
}

fn scrape() -> Scrape {
    let run = RunStatus {
        partition: 0,
        cursor: 3,
        active: 1,
        completed: 2,
        failed: 0,
        stages: vec![StageStatus {
            name: "deploy".into(),
            completed: 2,
            in_flight: 1,
            ..Default::default()
        }],
        unfinished: Vec::new(),
        failed_executions: Vec::new(),
        leading: true,
        replication: None,
    };
    let shard = |partitions, runs, refused| ShardMetrics {
        partitions,
        runs,
        conns: ConnTotals {
            frames_in: 10,
            bytes_in: 1000,
            frames_out: 12,
            bytes_out: 900,
            refused,
        },
        dropped_deliveries: 0,
        replication: None,
    };
    Scrape {
        shards: vec![
            shard(
                vec![partition("events", 0, 7)],
                vec![("deploys".into(), run)],
                vec![(4, 1)],
            ),
            shard(
                vec![partition("events", 1, 5)],
                vec![],
                vec![(4, 2), (21, 1)],
            ),
        ],
        connections: 3,
        resident_bytes: Some(1 << 20),
    }
}

fn get(head_extra: &str) -> http::Answer {
    answer(
        &format!("GET /metrics HTTP/1.1\r\nHost: x{head_extra}"),
        || Ok(scrape()),
    )
}

/// Every shard's series are in one family, summed where the metric is
/// per server, and counters carry `_total` in the text format's names.
#[test]
fn the_text_format_holds_every_shard_and_names_counters_total() {
    let answer = get("");
    assert_eq!(answer.status, "200 OK");
    assert_eq!(answer.content_type, TEXT_CONTENT_TYPE);
    let body = answer.body;
    for line in [
        "# TYPE hadron_publish_events_total counter",
        "hadron_publish_events_total{stream=\"events\",partition=\"0\"} 7",
        "hadron_publish_events_total{stream=\"events\",partition=\"1\"} 5",
        "hadron_partition_next_offset{stream=\"events\",partition=\"1\"} 5",
        "hadron_group_lag{stream=\"events\",partition=\"0\",group=\"billing\"} 5",
        "hadron_refused_requests_total{code=\"UnknownStream\"} 3",
        "hadron_refused_requests_total{code=\"TooManyConnections\"} 1",
        "hadron_frames_received_total 20",
        "hadron_connections 3",
        "hadron_resident_memory_bytes 1048576",
        "hadron_dedup_window_age_seconds{stream=\"events\",partition=\"0\"} 1.5",
        "hadron_pipeline_executions_completed_total{pipeline=\"deploys\",partition=\"0\"} 2",
        "hadron_stage_in_flight{pipeline=\"deploys\",partition=\"0\",stage=\"deploy\"} 1",
        "hadron_commit_write_seconds_count{stream=\"events\",partition=\"0\"} 2",
        "hadron_commit_write_seconds_bucket{le=\"0.00005\",stream=\"events\",partition=\"0\"} 1",
        "hadron_commit_write_seconds_bucket{le=\"2.5\",stream=\"events\",partition=\"0\"} 1",
        "hadron_commit_write_seconds_bucket{le=\"+Inf\",stream=\"events\",partition=\"0\"} 2",
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "no line {line:?} in\n{body}"
        );
    }
    assert!(!body.contains("# EOF"), "{body}");
    let families = body
        .lines()
        .filter(|l| l.starts_with("# TYPE hadron_partition_next_offset "));
    assert_eq!(families.count(), 1, "one family for both shards");
}

/// Prometheus asks for OpenMetrics and gets it: counters' families
/// without `_total`, and the closing `# EOF`.
#[test]
fn openmetrics_is_served_when_accepted() {
    let answer = get(
        "\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
    );
    assert_eq!(answer.content_type, OPENMETRICS_CONTENT_TYPE);
    assert!(answer.body.ends_with("# EOF\n"));
    assert!(
        answer
            .body
            .contains("# TYPE hadron_publish_events counter\n")
    );
    assert!(
        answer
            .body
            .contains("\nhadron_publish_events_total{stream=\"events\",partition=\"0\"} 7\n")
    );
}

#[test]
fn other_paths_methods_and_garbage_are_refused() {
    let scrape = || -> Result<Scrape, String> { panic!("must not scrape") };
    let status = |head: &str| answer(head, scrape).status;
    assert_eq!(status("GET / HTTP/1.1"), "404 Not Found");
    assert_eq!(status("GET /metricsx HTTP/1.1"), "404 Not Found");
    assert_eq!(status("POST /metrics HTTP/1.1"), "405 Method Not Allowed");
    assert_eq!(status("GET /metrics"), "400 Bad Request");
    assert_eq!(status("GET /metrics SPDY/3"), "400 Bad Request");
    assert_eq!(status("\u{1}\u{2}"), "400 Bad Request");
    let ok = answer("GET /metrics?x=1 HTTP/1.0", || Ok(Scrape::default()));
    assert_eq!(ok.status, "200 OK", "a query string is ignored");
}

/// A scrape that cannot reach every shard fails whole, saying why.
#[test]
fn a_failed_scrape_is_a_503_naming_the_cause() {
    let answer = answer("GET /metrics HTTP/1.1", || {
        Err("shard(s) 1 did not answer".into())
    });
    assert_eq!(answer.status, "503 Service Unavailable");
    assert_eq!(answer.body, "shard(s) 1 did not answer\n");
}

#[test]
fn a_hub_without_shards_or_with_a_silent_one_fails_the_scrape() {
    let hub = Hub::default();
    assert_eq!(
        hub.snapshots(Duration::from_millis(10)).unwrap_err(),
        "no shard is serving yet"
    );
    let _silent = hub.register(3);
    let err = hub.snapshots(Duration::from_millis(10)).unwrap_err();
    assert_eq!(err, "shard(s) 3 did not answer within 10 ms");
}

#[test]
fn rss_is_read_in_bytes() {
    assert_eq!(
        parse_vm_rss("Name:\thadron\nVmRSS:\t   2048 kB\n"),
        Some(2 << 20)
    );
    assert_eq!(parse_vm_rss("VmRSS: lots\n"), None);
    assert!(
        resident_bytes().is_some_and(|b| b > 0),
        "this process has an RSS"
    );
}
