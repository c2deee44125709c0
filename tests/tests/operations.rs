//! Running Hadron as a service: `--check-config`, the systemd unit in
//! deploy/, log formats, and SIGTERM draining under load.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed request must fail the test at once"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hadron::{ClientOptions, NewEvent};
use hadron_tests::{
    Frame, RawConn, Server, ServerOptions, event_bytes, eventually, fetch_all, hadron_bin,
};
use hadron_wire::{ErrorCode, Message};

/// Runs `hadron server --check-config` on a config file with `text`;
/// returns (exit code, stdout, stderr).
fn check_config(dir: &Path, text: &str) -> (Option<i32>, String, String) {
    let path = dir.join("config.yaml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(hadron_bin())
        .args(["server", "--check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `--check-config` accepts a valid file (summarising it) and names what is
/// wrong in an invalid one, with exit code 2; it creates no data dir.
#[test]
fn check_config_validates_a_file_and_names_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let valid = format!(
        "dataDir: {}\nshards: 2\nlisten: 127.0.0.1:7999\n---\napiVersion: hadron.rs/v1beta1\nkind: Stream\nmetadata: {{ name: orders }}\nspec: {{ partitions: 6 }}\n---\napiVersion: hadron.rs/v1beta1\nkind: Pipeline\nmetadata: {{ name: p }}\nspec:\n  sourceStream: orders\n  stages:\n    - name: a\n    - {{ name: b, dependencies: [a] }}\n",
        data.display()
    );
    let (code, stdout, stderr) = check_config(dir.path(), &valid);
    assert_eq!(code, Some(0), "stderr: {stderr}");
    assert_eq!(
        stdout.trim(),
        format!(
            "config ok: 2 shards, listening on 127.0.0.1:7999, data in {}; 1 streams (6 partitions), 1 pipelines",
            data.display()
        )
    );
    assert!(!data.exists(), "--check-config created the data dir");

    for (text, named) in [
        ("shards: 2\nfsnyc: always\n", "unknown field `fsnyc`"),
        ("shards: 0\n", "shards"),
        ("drainTimeoutMs: 0\n", "drainTimeoutMs"),
        (
            "tls: { cert: /nonexistent/server.pem, key: /nonexistent/server.key }\n",
            "/nonexistent/server.pem",
        ),
        (
            "---\napiVersion: hadron.rs/v1beta1\nkind: Pipeline\nmetadata: { name: loop }\nspec:\n  sourceStream: events\n  stages:\n    - { name: a }\n    - { name: b, dependencies: [a, c] }\n    - { name: c, dependencies: [b] }\n",
            "cycle",
        ),
    ] {
        let (code, stdout, stderr) = check_config(dir.path(), text);
        assert_eq!(code, Some(2), "{text:?}: stdout {stdout} stderr {stderr}");
        assert!(stdout.is_empty(), "{text:?}: {stdout}");
        assert!(stderr.contains(named), "{text:?}: {stderr} names {named:?}");
    }
}

/// deploy/hadron.service passes `systemd-analyze verify` (with the built
/// binary in place of /usr/local/bin/hadron, which verify requires to
/// exist), and the same check reports a unit with a bad value, so a
/// broken unit cannot pass unnoticed.
#[test]
fn the_systemd_unit_verifies() {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/hadron.service"),
    )
    .unwrap();
    for needed in [
        "LimitMEMLOCK=infinity",
        "Restart=on-failure",
        "User=hadron",
        "ExecStart=/usr/local/bin/hadron --log-format json server --config /etc/hadron/config.yaml",
        "--check-config",
    ] {
        assert!(unit.contains(needed), "the unit has {needed:?}");
    }
    let bin = hadron_bin().display().to_string();
    let verify = |text: &str| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hadron.service");
        std::fs::write(&path, text.replace("/usr/local/bin/hadron", &bin)).unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .output()
            .expect("systemd-analyze (Debian package systemd; .ci/run installs it)");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), said)
    };
    let (ok, said) = verify(&unit);
    assert!(ok && said.trim().is_empty(), "verify: {said}");
    let (_, said) = verify(&unit.replace("LimitMEMLOCK=infinity", "LimitMEMLOCK=lots"));
    assert!(
        said.contains("Failed to parse resource value"),
        "a bad value is reported: {said}"
    );
}

/// Off a terminal the text logs carry no colour codes; `--log-format
/// json` writes one JSON object a line.
#[test]
fn logs_have_no_colour_off_a_terminal_and_json_is_one_object_a_line() {
    let mut text = Server::start();
    let log = text.log();
    assert!(log.contains("all 1 shards ready"), "{log}");
    assert!(!log.contains('\u{1b}'), "colour codes in {log}");
    text.stop();

    let mut json = Server::start_with(ServerOptions {
        args: vec!["--log-format".into(), "json".into()],
        ..ServerOptions::default()
    });
    let log = json.log();
    json.stop();
    // The helper marks each start with a `--- start N ---` line.
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.starts_with("--- "))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    let ready = lines
        .iter()
        .find(|l| l["fields"]["message"] == "all 1 shards ready")
        .unwrap_or_else(|| panic!("no ready line in {log}"));
    assert_eq!(ready["level"], "INFO");
    assert!(ready["timestamp"].is_string());
}

/// SIGTERM under load: publishers on two shards (so some publishes are
/// forwarded) keep writing; the server drains and exits 0 within the
/// test helper's bound; every publish it acknowledged is at its offset
/// with its id after a restart; a connection with publishes in flight
/// gets an answer for each request it sent (an ack or ShuttingDown) and
/// then an orderly close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_drains_and_loses_no_acknowledged_event() {
    // A drain that hangs shows as the warning checked below, within the
    // test helper's 10 s bound on the stop.
    let mut server = Server::start_with(ServerOptions {
        shards: 2,
        config: Some("drainTimeoutMs: 5000\n".into()),
        ..ServerOptions::default()
    });
    let client = server.client_with(ClientOptions {
        publish_attempts_max: 1,
        request_timeout: Duration::from_secs(10),
        ..ClientOptions::default()
    });
    let acked: Arc<Mutex<Vec<(u32, u64, String)>>> = Arc::default();
    let mut tasks = Vec::new();
    for t in 0..4 {
        let publisher = client.publisher(&format!("w{t}")).await.unwrap();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..u64::MAX {
                let id = format!("w{t}-{i}");
                let event = NewEvent::new("load", id.clone().into_bytes()).with_id(&id);
                match publisher.publish(event).await {
                    Ok(p) => acked.lock().unwrap().push((p.partition, p.offset, id)),
                    Err(_) => return,
                }
            }
        }));
    }
    eventually(Duration::from_secs(20), "acknowledged publishes", || {
        let n = acked.lock().unwrap().len();
        async move { (n >= 300).then_some(()) }
    })
    .await;

    // A raw connection with publishes in flight when SIGTERM arrives, all
    // sent in one write (so the server reads them before it stops reading).
    let mut raw = RawConn::handshaken(server.port()).await;
    let mut sent: BTreeMap<u64, u32> = BTreeMap::new();
    let mut frames = Vec::new();
    for i in 0..16u32 {
        let event = event_bytes(&format!("raw-{i}"), "raw", "load", b"raw");
        let id = 1_000 + u64::from(i);
        let message = Message::Publish(hadron_wire::Publish {
            stream: "events",
            partition: i % 4,
            events: vec![&event],
        });
        frames.extend(hadron_wire::encode(id, &message).unwrap());
        sent.insert(id, i % 4);
    }
    raw.send_bytes(&frames).await;
    let first = raw.recv().await.expect("an answer before the stop");
    let status = tokio::task::spawn_blocking(move || {
        let status = server.stop();
        (server, status)
    });
    let mut answers = vec![first];
    while let Some(frame) = raw.recv().await {
        answers.push(frame);
    }
    let (mut server, status) = status.await.unwrap();
    assert!(status.success(), "exit status {status:?}: {}", server.log());
    assert!(
        !server.log().contains("after drainTimeoutMs"),
        "{}",
        server.log()
    );
    let mut raw_acked = Vec::new();
    for frame in &answers {
        match frame {
            Frame::PublishOk {
                request_id,
                offsets,
            } => raw_acked.push((*request_id, offsets[0].0)),
            Frame::Error {
                code: ErrorCode::ShuttingDown,
                ..
            } => {}
            other => panic!("a request answered {other:?}"),
        }
    }
    let answered: BTreeSet<u64> = answers.iter().map(hadron_tests::request_id).collect();
    let sent_ids: BTreeSet<u64> = sent.keys().copied().collect();
    assert_eq!(answered, sent_ids, "every request sent got one answer");
    assert_eq!(answers.len(), sent.len(), "one answer each");
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(15), task)
            .await
            .expect("a publisher did not stop")
            .unwrap();
    }

    server.restart();
    let client = server.client();
    let mut stored: BTreeMap<(u32, u64), String> = BTreeMap::new();
    for partition in 0..4u32 {
        for (offset, event) in fetch_all(&client, "events", partition).await {
            stored.insert((partition, offset), event.id);
        }
    }
    for (partition, offset, id) in acked.lock().unwrap().iter() {
        assert_eq!(
            stored.get(&(*partition, *offset)),
            Some(id),
            "acknowledged {id} at {partition}/{offset} is missing after the stop"
        );
    }
    for (request_id, offset) in raw_acked {
        let partition = sent[&request_id];
        assert!(
            stored
                .get(&(partition, offset))
                .is_some_and(|id| id.starts_with("raw-")),
            "the raw publish {request_id} acknowledged at {partition}/{offset} is missing"
        );
    }
}

/// A three-node `cluster:` is valid to `--check-config`; one whose peers
/// are beyond loopback with no cluster secret is refused at start (exit
/// non-zero, naming the setting) rather than serving Raft to anyone; a
/// cluster of this node alone starts as a single server.
#[test]
fn a_multi_node_cluster_beyond_loopback_needs_its_secret_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let three = format!(
        "dataDir: {}\nlisten: 127.0.0.1:7998\ncluster:\n  nodeId: 1\n  peers:\n    - {{ id: 1, address: \"127.0.0.1:7998\" }}\n    - {{ id: 2, address: \"127.0.0.1:8998\" }}\n    - {{ id: 3, address: \"127.0.0.1:9998\" }}\n",
        data.display()
    );
    let (code, stdout, stderr) = check_config(dir.path(), &three);
    assert_eq!(code, Some(0), "stderr: {stderr}");
    assert!(stdout.starts_with("config ok:"), "{stdout}");
    let exposed = "cluster:\n  nodeId: 1\n  peers:\n    - { id: 1, address: \"127.0.0.1:7998\" }\n    - { id: 2, address: \"10.0.0.2:7000\" }\n";
    let (status, log) = Server::start_expecting_exit(
        ServerOptions {
            config: Some(exposed.into()),
            ..ServerOptions::default()
        },
        Duration::from_secs(20),
    );
    assert!(
        !status.success(),
        "a cluster beyond loopback started without a secret: {log}"
    );
    assert!(log.contains("no cluster secret is set"), "{log}");

    let mut alone = Server::start_with(ServerOptions {
        config: Some(
            "cluster:\n  nodeId: 7\n  peers:\n    - { id: 7, address: \"127.0.0.1:1\" }\n".into(),
        ),
        ..ServerOptions::default()
    });
    assert!(alone.is_running(), "{}", alone.log());
    alone.stop();
}
