//! The Prometheus endpoint end to end: a two-shard server started with
//! `--metrics-listen` takes publishes (one of them a duplicate), a
//! consumer group that nacks once and then leaves, a pipeline, and a
//! publish to a stream that does not exist; `GET /metrics` then reports
//! exactly those figures, agrees with `status`, passes `promtool check
//! metrics` (Debian's `prometheus` package; `.ci/run` installs it, and
//! this test fails without it), serves OpenMetrics to a client that asks
//! for it, and answers other paths 404. A 3-node cluster's endpoints
//! report one leader per partition in one term, commits advancing, and a
//! stopped follower's growing lag on its leader, which then counts the
//! partition under-replicated.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a failed set-up step must fail the test at once, with its message"
)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hadron::{Client, NewEvent, SubscribeOptions};
use hadron_tests::cluster::{Cluster, ClusterOptions};
use hadron_tests::{Frame, RawConn, Server, ServerOptions, eventually, status, stream_partitions};
use hadron_wire::{ErrorCode, Message};

/// Longest wait for the server to reach an expected state.
const WAIT: Duration = Duration::from_secs(30);
/// Longest a single client request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

const PIPELINE: &str = r#"
apiVersion: hadron.rs/v1beta1
kind: Pipeline
metadata:
  name: orders
spec:
  sourceStream: events
  triggers:
    - order.created
  startPoint:
    location: beginning
  stages:
    - name: bill
"#;

/// The metrics address the server logged (it was started on port 0).
fn metrics_addr(server: &Server) -> String {
    let log = server.log();
    let line = log
        .lines()
        .find_map(|l| l.split("serving metrics on http://").nth(1))
        .unwrap_or_else(|| panic!("no metrics address in the log:\n{log}"));
    line.trim_end().trim_end_matches("/metrics").to_owned()
}

/// `GET path` over plain HTTP/1.1: (status line, content type, body).
fn http_get(addr: &str, path: &str, accept: Option<&str>) -> (String, String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(REQUEST_TIMEOUT)).unwrap();
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{accept}\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    let mut lines = head.lines();
    let status = lines.next().unwrap().to_owned();
    let content_type = lines
        .find_map(|l| l.strip_prefix("Content-Type: "))
        .unwrap_or_default()
        .to_owned();
    (status, content_type, body.to_owned())
}

/// The samples of a text exposition: series (name and labels) -> value.
fn samples(body: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse().unwrap())
        })
        .collect()
}

/// The sum of `name`'s samples whose labels include every one of `with`
/// (each written `key="value"`).
fn sum(samples: &BTreeMap<String, f64>, name: &str, with: &[&str]) -> f64 {
    samples
        .iter()
        .filter(|(series, _)| {
            let (n, labels) = series.split_once('{').unwrap_or((series, ""));
            n == name && with.iter().all(|w| labels.contains(w))
        })
        .map(|(_, v)| v)
        .sum()
}

fn scrape(addr: &str) -> BTreeMap<String, f64> {
    let (status, content_type, body) = http_get(addr, "/metrics", None);
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    samples(&body)
}

async fn publish_orders(client: &Client, ids: impl Iterator<Item = String>) {
    let publisher = client.publisher_for("events", "metrics-e2e").await.unwrap();
    let events = ids
        .map(|id| NewEvent::new("order.created", id.clone().into_bytes()).with_id(&id))
        .collect();
    tokio::time::timeout(REQUEST_TIMEOUT, publisher.publish_batch(events))
        .await
        .expect("publish timed out")
        .unwrap();
}

/// Runs `promtool check metrics` on `body`; panics when promtool is
/// missing or finds a problem.
fn promtool_check(body: &str) {
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}): install Debian's `prometheus` package (.ci/run does)"
            )
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}):\n{}{}\n--- metrics:\n{body}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_report_offsets_totals_lag_and_pipelines_and_pass_promtool() {
    let server = Server::start_with(ServerOptions {
        shards: 2,
        args: vec!["--metrics-listen".into(), "127.0.0.1:0".into()],
        ..ServerOptions::default()
    });
    let addr = metrics_addr(&server);
    let client = server.client();
    tokio::time::timeout(REQUEST_TIMEOUT, client.apply(PIPELINE))
        .await
        .unwrap()
        .unwrap();
    let handle = client
        .pipeline("orders", "bill", |_| async {
            Ok::<_, String>(NewEvent::new("order.billed", b"ok".to_vec()))
        })
        .await
        .unwrap();

    // 10 orders, then the first 3 again: duplicates, not stored.
    const ORDERS: u64 = 10;
    publish_orders(&client, (0..ORDERS).map(|i| format!("order-{i}"))).await;
    publish_orders(&client, (0..3).map(|i| format!("order-{i}"))).await;

    // A group that nacks order-0 once, then takes everything.
    let nacked = Arc::new(AtomicBool::new(false));
    let flag = nacked.clone();
    let billing = client
        .subscribe("events", "billing", SubscribeOptions::default(), move |d| {
            let first = d.event.id == "order-0" && !flag.swap(true, Ordering::SeqCst);
            async move {
                if first {
                    Err("not yet".to_owned())
                } else {
                    Ok(())
                }
            }
        })
        .await
        .unwrap();
    let m = eventually(WAIT, "the group and the pipeline to finish", || {
        let addr = addr.clone();
        async move {
            let m = tokio::task::spawn_blocking(move || scrape(&addr))
                .await
                .unwrap();
            let done = sum(&m, "hadron_group_lag", &["group=\"billing\""]) == 0.0
                && sum(&m, "hadron_group_in_flight", &["group=\"billing\""]) == 0.0
                && sum(&m, "hadron_group_committed_offset", &["group=\"billing\""])
                    == ORDERS as f64
                && sum(&m, "hadron_pipeline_executions_completed_total", &[]) == ORDERS as f64;
            done.then_some(m)
        }
    })
    .await;
    assert_eq!(
        sum(&m, "hadron_group_nacks_total", &["group=\"billing\""]),
        1.0
    );
    assert_eq!(
        sum(
            &m,
            "hadron_group_redeliveries_total",
            &["group=\"billing\""]
        ),
        1.0,
        "order-0 went out again once"
    );
    assert_eq!(
        sum(
            &m,
            "hadron_stage_completed_total",
            &["pipeline=\"orders\"", "stage=\"bill\""]
        ),
        ORDERS as f64
    );
    assert_eq!(sum(&m, "hadron_pipeline_executions_active", &[]), 0.0);

    // The group leaves; 5 more orders are lag for it; a publish to a
    // stream that does not exist is refused.
    billing.stop().await.unwrap();
    handle.stop().await.unwrap();
    publish_orders(&client, (ORDERS..ORDERS + 5).map(|i| format!("order-{i}"))).await;
    let mut raw = RawConn::handshaken(server.port()).await;
    let fetch = Message::Fetch(hadron_wire::Fetch {
        stream: "no-such-stream",
        partition: 0,
        offset: 0,
        max_bytes: 0,
    });
    match raw.request(&fetch, &mut Vec::new()).await {
        Frame::Error { code, .. } => assert_eq!(code, ErrorCode::UnknownStream),
        other => panic!("expected UnknownStream, got {other:?}"),
    }

    let (status_line, _, text) = http_get(&addr, "/metrics", None);
    assert_eq!(status_line, "HTTP/1.1 200 OK");
    let m = samples(&text);
    let total = ORDERS + 5;
    assert_eq!(sum(&m, "hadron_group_lag", &["group=\"billing\""]), 5.0);
    assert_eq!(
        sum(&m, "hadron_publish_events_total", &["stream=\"events\""]),
        total as f64,
        "duplicates are not counted"
    );
    assert!(sum(&m, "hadron_publish_bytes_total", &["stream=\"events\""]) >= total as f64 * 10.0);
    assert!(
        sum(
            &m,
            "hadron_commit_write_seconds_count",
            &["stream=\"events\""]
        ) > 0.0
    );
    assert!(
        sum(
            &m,
            "hadron_commit_durable_wait_seconds_count",
            &["stream=\"events\""]
        ) > 0.0
    );
    assert!(
        sum(
            &m,
            "hadron_refused_requests_total",
            &["code=\"UnknownStream\""]
        ) >= 1.0
    );
    assert!(sum(&m, "hadron_frames_received_total", &[]) > 0.0);
    assert!(sum(&m, "hadron_frames_sent_total", &[]) > 0.0);
    assert!(sum(&m, "hadron_connections", &[]) >= 1.0);
    assert!(sum(&m, "hadron_resident_memory_bytes", &[]) > 1e6);
    assert_eq!(sum(&m, "hadron_shards", &[]), 2.0);

    // Per partition, the offsets are status's.
    let st = status(&client).await;
    for p in stream_partitions(&st, "events") {
        let labels = format!("partition=\"{}\"", p["partition"]);
        let with = ["stream=\"events\"", labels.as_str()];
        let next = p["next_offset"].as_u64().unwrap() as f64;
        assert_eq!(sum(&m, "hadron_partition_next_offset", &with), next, "{p}");
        assert_eq!(
            sum(&m, "hadron_partition_durable_offset", &with),
            next,
            "{p}"
        );
        assert_eq!(sum(&m, "hadron_publish_events_total", &with), next, "{p}");
        assert_eq!(
            sum(&m, "hadron_partition_segments", &with),
            p["segments"].as_u64().unwrap() as f64
        );
    }
    assert_eq!(
        sum(&m, "hadron_partition_next_offset", &["stream=\"events\""]),
        total as f64
    );

    promtool_check(&text);
    // A single node has no Raft groups: no replication family at all.
    for family in ["hadron_replica", "hadron_meta_"] {
        assert!(!text.contains(family), "{family} on a single node:\n{text}");
    }

    // Prometheus asks for OpenMetrics, and gets it.
    let accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
    let (status_line, content_type, om) = http_get(&addr, "/metrics", Some(accept));
    assert_eq!(status_line, "HTTP/1.1 200 OK");
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(om.ends_with("# EOF\n"));
    assert!(om.contains("# TYPE hadron_publish_events counter\n"));

    // Nothing else is served.
    let (status_line, _, _) = http_get(&addr, "/", None);
    assert_eq!(status_line, "HTTP/1.1 404 Not Found");
}

/// A request head larger than the limit is refused with 431, and the
/// endpoint keeps serving.
#[test]
fn an_oversized_request_is_refused_and_the_endpoint_keeps_serving() {
    let server = Server::start_with(ServerOptions {
        args: vec!["--metrics-listen".into(), "127.0.0.1:0".into()],
        ..ServerOptions::default()
    });
    let addr = metrics_addr(&server);
    let mut stream = TcpStream::connect(&addr).unwrap();
    stream.set_read_timeout(Some(REQUEST_TIMEOUT)).unwrap();
    let filler = "x".repeat(16 << 10);
    // The server may close as soon as it has seen too much: a failed
    // write of the rest is fine.
    let _ = write!(
        stream,
        "GET /metrics HTTP/1.1\r\nX-Filler: {filler}\r\n\r\n"
    );
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 431 "),
        "{}",
        &answer[..answer.len().min(200)]
    );
    assert_eq!(http_get(&addr, "/metrics", None).0, "HTTP/1.1 200 OK");
}

/// Every node's scrape (off the runtime: the HTTP client blocks).
async fn scrape_nodes(addrs: &[(u64, String)]) -> Vec<(u64, BTreeMap<String, f64>)> {
    let addrs = addrs.to_vec();
    tokio::task::spawn_blocking(move || {
        addrs
            .into_iter()
            .map(|(id, addr)| (id, scrape(&addr)))
            .collect()
    })
    .await
    .unwrap()
}

/// Publishes `count` events to orders/0 one at a time (one Raft entry
/// each).
async fn publish_entries(client: &Client, from: u64, count: u64) {
    let publisher = client.publisher_for("orders", "metrics-e2e").await.unwrap();
    for i in from..from + count {
        let id = format!("order-{i}");
        let event = NewEvent::new("order.created", id.clone().into_bytes()).with_id(&id);
        tokio::time::timeout(REQUEST_TIMEOUT, publisher.publish_to(0, event))
            .await
            .expect("publish timed out")
            .unwrap();
    }
}

/// The events group of orders/0 on one node.
const ORDERS_0: [&str; 3] = ["stream=\"orders\"", "partition=\"0\"", "kind=\"events\""];

/// Three nodes, a stream with 3 replicas: each node's endpoint reports
/// the partition's group, exactly one of them as its leader, all in one
/// term, nothing under-replicated, and the metadata group's one leader;
/// publishes move every node's commit index; a follower stopped, its
/// lag on the leader grows by what was published since, and the leader
/// counts the partition under-replicated. promtool takes the leader's
/// output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_metrics_name_one_leader_advance_commits_and_show_a_stopped_followers_lag() {
    let mut cluster = Cluster::start(ClusterOptions {
        resources: "apiVersion: hadron.rs/v1beta1\nkind: Stream\nmetadata: { name: orders }\nspec: { partitions: 1, replicas: 3 }\n".into(),
        settings: "metricsListen: \"127.0.0.1:0\"\n".into(),
        ..ClusterOptions::default()
    });
    let addrs: Vec<(u64, String)> = cluster
        .ids()
        .into_iter()
        .map(|id| (id, metrics_addr(cluster.node(id))))
        .collect();

    let leader_of = |all: &[(u64, BTreeMap<String, f64>)], name: &str, with: &[&str]| {
        let leaders: Vec<u64> = all
            .iter()
            .filter(|(_, m)| sum(m, name, with) == 1.0)
            .map(|(id, _)| *id)
            .collect();
        (leaders.len() == 1).then(|| leaders[0])
    };
    let (leader, commit) = eventually(WAIT, "one agreed leader of orders/0, all caught up", || {
        let addrs = addrs.clone();
        async move {
            let all = scrape_nodes(&addrs).await;
            let reported = all.iter().all(|(_, m)| {
                m.keys().any(|k| {
                    k.starts_with("hadron_replica_leader{")
                        && ORDERS_0.iter().all(|w| k.contains(w))
                })
            });
            let terms: std::collections::BTreeSet<u64> = all
                .iter()
                .map(|(_, m)| sum(m, "hadron_replica_term", &ORDERS_0) as u64)
                .collect();
            let meta_terms: std::collections::BTreeSet<u64> = all
                .iter()
                .map(|(_, m)| sum(m, "hadron_meta_term", &[]) as u64)
                .collect();
            let calm = all
                .iter()
                .all(|(_, m)| sum(m, "hadron_replicas_under_replicated", &[]) == 0.0);
            let leader = leader_of(&all, "hadron_replica_leader", &ORDERS_0)?;
            leader_of(&all, "hadron_meta_leader", &[])?;
            let m = &all.iter().find(|(id, _)| *id == leader)?.1;
            let commit = sum(m, "hadron_replica_commit_index", &ORDERS_0);
            (reported && terms.len() == 1 && meta_terms.len() == 1 && calm)
                .then_some((leader, commit))
        }
    })
    .await;
    let follower = cluster.ids().into_iter().find(|&id| id != leader).unwrap();

    // 20 publishes: 20 entries, committed and known committed everywhere.
    const PUBLISHES: u64 = 20;
    let client = cluster.client(leader);
    publish_entries(&client, 0, PUBLISHES).await;
    eventually(WAIT, "every node's commit index past the publishes", || {
        let addrs = addrs.clone();
        async move {
            let all = scrape_nodes(&addrs).await;
            let commits: Vec<f64> = all
                .iter()
                .map(|(_, m)| sum(m, "hadron_replica_commit_index", &ORDERS_0))
                .collect();
            commits
                .iter()
                .all(|&c| c >= commit + PUBLISHES as f64 && c == commits[0])
                .then_some(())
        }
    })
    .await;

    // The follower stops; 100 more entries it never gets.
    const WHILE_DOWN: u64 = 100;
    cluster.node(follower).stop();
    let up: Vec<(u64, String)> = addrs
        .iter()
        .filter(|(id, _)| *id != follower)
        .cloned()
        .collect();
    publish_entries(&client, PUBLISHES, WHILE_DOWN).await;
    let lag_of = format!("follower=\"{follower}\"");
    let (lagging, text) = eventually(
        WAIT,
        "the leader to show the stopped follower's lag",
        || {
            let up = up.clone();
            let lag_of = lag_of.clone();
            async move {
                let all = scrape_nodes(&up).await;
                let leader = leader_of(&all, "hadron_replica_leader", &ORDERS_0)?;
                let m = &all.iter().find(|(id, _)| *id == leader)?.1;
                let mut with = ORDERS_0.to_vec();
                with.push(&lag_of);
                let lag = sum(m, "hadron_replica_follower_lag_entries", &with);
                let under = sum(m, "hadron_replicas_under_replicated", &["kind=\"events\""]);
                if lag < WHILE_DOWN as f64 || under < 1.0 {
                    return None;
                }
                let addr = up.iter().find(|(id, _)| *id == leader)?.1.clone();
                let (_, _, text) =
                    tokio::task::spawn_blocking(move || http_get(&addr, "/metrics", None))
                        .await
                        .unwrap();
                Some((lag, text))
            }
        },
    )
    .await;
    assert!(lagging >= WHILE_DOWN as f64, "lag {lagging}");
    promtool_check(&text);
}
