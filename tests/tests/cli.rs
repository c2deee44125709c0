//! The command-line client against a real server: `publish` prints where
//! each event went, `subscribe --count` prints those events, `status --json`
//! shows the offsets, and `apply -f` creates streams or names the field it
//! rejects.

use std::collections::BTreeMap;
use std::time::Duration;

use hadron_tests::{Server, run_cli};

const CLI_TIMEOUT: Duration = Duration::from_secs(20);

#[test]
fn publish_subscribe_status_and_apply_through_the_cli() {
    let server = Server::start();
    let url = server.addr();
    let url = url.as_str();

    // publish: one JSON line each, dense offsets per partition.
    const EVENTS: usize = 6;
    let mut sent: BTreeMap<(u64, u64), (String, String, String)> = BTreeMap::new();
    let mut per_partition: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for i in 0..EVENTS {
        let id = format!("cli-{i}");
        let subject = format!("subject-{i}");
        let data = format!("{{\"n\":{i}}}");
        let out = run_cli(
            &[
                "publish",
                "--url",
                url,
                "--stream",
                "events",
                "--type",
                "cli.test",
                "--id",
                &id,
                "--source",
                "cli-e2e",
                "--subject",
                &subject,
                &data,
            ],
            CLI_TIMEOUT,
        );
        assert!(out.status.success(), "publish failed: {out:?}");
        let lines = out.json_lines();
        assert_eq!(lines.len(), 1, "one line per publish: {out:?}");
        let partition = lines[0]["partition"].as_u64().unwrap();
        let offset = lines[0]["offset"].as_u64().unwrap();
        assert!(partition < 4);
        assert_eq!(lines[0].get("duplicate"), None, "a new event: {out:?}");
        per_partition.entry(partition).or_default().push(offset);
        sent.insert((partition, offset), (id, subject, data));
    }
    for (partition, offsets) in &per_partition {
        let dense: Vec<u64> = (0..offsets.len() as u64).collect();
        assert_eq!(offsets, &dense, "partition {partition}");
    }

    // The same id and source again is a duplicate at the first offset.
    let out = run_cli(
        &[
            "publish",
            "--url",
            url,
            "--type",
            "cli.test",
            "--id",
            "cli-0",
            "--source",
            "cli-e2e",
            "--subject",
            "subject-0",
            "other data",
        ],
        CLI_TIMEOUT,
    );
    assert!(out.status.success(), "{out:?}");
    let line = &out.json_lines()[0];
    let (&(p0, o0), _) = sent.iter().find(|(_, v)| v.0 == "cli-0").unwrap();
    assert_eq!(line["duplicate"], true, "{out:?}");
    assert_eq!(
        (line["partition"].as_u64(), line["offset"].as_u64()),
        (Some(p0), Some(o0))
    );

    // status --json: next offsets match what was published.
    let out = run_cli(&["status", "--json", "--url", url], CLI_TIMEOUT);
    assert!(out.status.success(), "{out:?}");
    let status = &out.json_lines()[0];
    assert_eq!(status["shards"], 1);
    let next = hadron_tests::next_offsets(status, "events");
    for partition in 0..4u64 {
        let count = per_partition.get(&partition).map_or(0, Vec::len) as u64;
        assert_eq!(next[&(partition as u32)], count, "partition {partition}");
    }

    // subscribe --count N prints exactly the published events.
    let count = EVENTS.to_string();
    let out = run_cli(
        &[
            "subscribe",
            "--url",
            url,
            "--stream",
            "events",
            "--group",
            "cli-readers",
            "--start",
            "beginning",
            "--count",
            &count,
        ],
        CLI_TIMEOUT,
    );
    assert!(out.status.success(), "subscribe failed: {out:?}");
    let lines = out.json_lines();
    assert_eq!(lines.len(), EVENTS, "{out:?}");
    let mut got = BTreeMap::new();
    for l in &lines {
        // CloudEvents JSON: the position as extension attributes, the
        // offset a string (it outgrows a CloudEvents Integer).
        let key = (
            l["partition"].as_u64().unwrap(),
            l["offset"].as_str().unwrap().parse().unwrap(),
        );
        assert_eq!(l["specversion"], "1.0");
        assert_eq!(l["type"], "cli.test");
        assert_eq!(l["source"], "cli-e2e");
        assert_eq!(l["datacontenttype"], "application/json");
        let value = (
            l["id"].as_str().unwrap().to_owned(),
            l["subject"].as_str().unwrap().to_owned(),
            l["data"].to_string(),
        );
        assert!(got.insert(key, value).is_none(), "printed twice: {l}");
    }
    assert_eq!(got, sent, "subscribe printed what publish stored");

    // apply -f of a new stream: created, then usable.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("orders.yaml");
    std::fs::write(&file, hadron_tests::stream_yaml("orders", 2)).unwrap();
    let file = file.to_str().unwrap();
    let out = run_cli(&["apply", "-f", file, "--url", url], CLI_TIMEOUT);
    assert!(out.status.success(), "apply failed: {out:?}");
    assert_eq!(out.stdout.trim(), "stream/orders created (2 partitions)");
    let out = run_cli(&["apply", "-f", file, "--url", url], CLI_TIMEOUT);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout.trim(), "stream/orders unchanged");
    for partition in 0..2 {
        let p = partition.to_string();
        let out = run_cli(
            &[
                "publish",
                "--url",
                url,
                "--stream",
                "orders",
                "--type",
                "order.created",
                "--partition",
                &p,
                "--id",
                "o-1",
                "payload",
            ],
            CLI_TIMEOUT,
        );
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            out.json_lines()[0],
            serde_json::json!({"partition": partition, "offset": 0})
        );
    }
    let out = run_cli(
        &[
            "publish",
            "--url",
            url,
            "--stream",
            "orders",
            "--type",
            "order.created",
            "--partition",
            "2",
            "payload",
        ],
        CLI_TIMEOUT,
    );
    assert!(!out.status.success(), "partition 2 of 2 exists? {out:?}");
    assert!(out.stderr.contains("UnknownPartition"), "{out:?}");
    let out = run_cli(&["status", "--json", "--url", url], CLI_TIMEOUT);
    let status = &out.json_lines()[0];
    let orders = status["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "orders")
        .unwrap();
    assert_eq!(orders["partition_count"], 2);
    let next = hadron_tests::next_offsets(status, "orders");
    assert_eq!(next, BTreeMap::from([(0, 1), (1, 1)]));

    // Invalid YAML: non-zero exit, the message names the field, nothing
    // is created.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, hadron_tests::stream_yaml("broken", 0)).unwrap();
    let out = run_cli(
        &["apply", "-f", bad.to_str().unwrap(), "--url", url],
        CLI_TIMEOUT,
    );
    assert!(!out.status.success(), "partitions: 0 was accepted: {out:?}");
    assert!(out.stderr.contains("spec.partitions"), "{out:?}");
    let unknown_field = dir.path().join("unknown.yaml");
    std::fs::write(
        &unknown_field,
        "apiVersion: hadron.rs/v1beta1\nkind: Stream\nmetadata:\n  name: typo\nspec:\n  partitons: 3\n",
    )
    .unwrap();
    let out = run_cli(
        &["apply", "-f", unknown_field.to_str().unwrap(), "--url", url],
        CLI_TIMEOUT,
    );
    assert!(
        !out.status.success(),
        "a misspelt field was accepted: {out:?}"
    );
    assert!(out.stderr.contains("partitons"), "{out:?}");
    let out = run_cli(&["status", "--json", "--url", url], CLI_TIMEOUT);
    let names: Vec<String> = out.json_lines()[0]["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["events", "orders"]);
}

/// A second server can neither share a running server's data dir (it would
/// corrupt it) nor its port (SO_REUSEPORT would otherwise let it in
/// silently); both refusals say why, and the first server carries on.
#[test]
fn a_second_server_on_the_same_data_dir_or_port_is_refused() {
    let server = Server::start();
    let data_dir = server.data_dir().to_str().unwrap().to_string();
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other_port = free.local_addr().unwrap().port();
    drop(free);

    let same_dir = run_cli(
        &[
            "server",
            "--data-dir",
            &data_dir,
            "--listen",
            &format!("127.0.0.1:{other_port}"),
            "--shards",
            "1",
        ],
        CLI_TIMEOUT,
    );
    assert!(!same_dir.status.success());
    assert!(
        same_dir.stderr.contains("in use by another hadron server"),
        "{}",
        same_dir.stderr
    );

    let other_dir = tempfile::tempdir().unwrap();
    let same_port = run_cli(
        &[
            "server",
            "--data-dir",
            other_dir.path().to_str().unwrap(),
            "--listen",
            &server.addr(),
            "--shards",
            "1",
        ],
        CLI_TIMEOUT,
    );
    assert!(!same_port.status.success());
    assert!(
        same_port.stderr.contains("cannot listen on"),
        "{}",
        same_port.stderr
    );
    assert!(
        !other_dir.path().join("streams").exists(),
        "nothing was created"
    );

    // The first server is unharmed.
    let out = run_cli(
        &[
            "publish",
            "--url",
            &server.addr(),
            "--type",
            "t",
            "still here",
        ],
        CLI_TIMEOUT,
    );
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.json_lines()[0]["offset"], 0);
}

/// The README's first command, `hadron server` with no flags, keeps its data
/// in `./hadron-data`, a relative path: every partition takes a durable
/// publish (which creates and syncs segment files under that path) and
/// keeps it across a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_relative_data_dir_takes_writes_and_keeps_them() {
    let mut server = Server::start_with(hadron_tests::ServerOptions {
        shards: 2,
        default_data_dir: true,
        ..hadron_tests::ServerOptions::default()
    });
    let client = server.client();
    let publisher = client.publisher("events").await.unwrap();
    let partitions = hadron_tests::stream_partitions(&hadron_tests::status(&client).await, "events")
        .len() as u32;
    assert!(partitions >= 2);
    for p in 0..partitions {
        let id = format!("rel-{p}");
        let ack = publisher
            .publish_to(
                p,
                hadron::NewEvent::new("t", id.clone().into_bytes()).with_id(&id),
            )
            .await
            .unwrap_or_else(|e| panic!("partition {p}: {e}\n{}", server.log()));
        assert_eq!((ack.partition, ack.offset), (p, 0));
    }
    assert!(server.data_dir().join("streams").join("events").is_dir());
    drop(publisher);
    drop(client);
    let status = server.stop();
    assert!(status.success(), "{status:?}\n{}", server.log());
    server.restart();
    let client = server.client();
    for p in 0..partitions {
        let stored = hadron_tests::fetch_all(&client, "events", p).await;
        assert_eq!(stored.len(), 1, "partition {p}");
        assert_eq!(stored[0].1.data, format!("rel-{p}").into_bytes());
    }
}

/// `--url` takes a cluster's comma-separated bootstrap list: with the
/// first node down, publish and status go to the next.
#[test]
fn the_cli_takes_a_bootstrap_list_and_uses_the_node_that_answers() {
    let server = Server::start();
    // A loopback port nobody listens on: bound, read, closed.
    let down = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let urls = format!("http://{down},http://{}", server.addr());
    let out = run_cli(
        &[
            "publish",
            "--url",
            &urls,
            "--type",
            "cli.test",
            "--id",
            "boot-1",
            "--source",
            "cli-e2e",
            "--partition",
            "2",
            "{}",
        ],
        CLI_TIMEOUT,
    );
    assert!(out.status.success(), "publish failed: {out:?}");
    let line = &out.json_lines()[0];
    assert_eq!(
        (line["partition"].as_u64(), line["offset"].as_u64()),
        (Some(2), Some(0))
    );
    let out = run_cli(&["status", "--json", "--url", &urls], CLI_TIMEOUT);
    assert!(out.status.success(), "status failed: {out:?}");

    let out = run_cli(
        &["status", "--url", &format!("{urls},http://h:x")],
        CLI_TIMEOUT,
    );
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stderr.contains("\"http://h:x\""),
        "the bad entry is named: {out:?}"
    );
}
