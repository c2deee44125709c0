//! CloudEvents interoperability with the official Python SDK (PyPI
//! `cloudevents`, installed by .ci/run): the SDK's `JSONFormat` reads every
//! line `hadron subscribe` prints with the attributes that were published,
//! and events the SDK writes (one, and a batch) go through `hadron publish
//! -f` and come back out of `hadron subscribe` as the SDK wrote them.
//! tests/cloudevents_sdk.py is the SDK's side; without python3 or the SDK
//! these tests fail, they do not skip.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed command or a missing member must fail the test at once"
)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use hadron::NewEvent;
use hadron_tests::{Server, hadron_bin, run_cli};
use serde_json::{Value, json};

const CLI_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs tests/cloudevents_sdk.py with `args`; its stdout parsed as JSON.
fn sdk(args: &[&str]) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/cloudevents_sdk.py");
    let out = Command::new("python3")
        .arg(&script)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run python3 ({e}): the CloudEvents SDK check needs it (.ci/run)")
        });
    assert!(
        out.status.success(),
        "the CloudEvents SDK script failed (is PyPI `cloudevents` installed? .ci/run \
         installs it): {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `hadron subscribe` of `count` events of stream `events` from the
/// beginning: its lines, and its stderr.
fn subscribe(url: &str, group: &str, count: usize) -> (Vec<String>, String) {
    let count = count.to_string();
    let out = run_cli(
        &[
            "subscribe",
            "--url",
            url,
            "--group",
            group,
            "--count",
            &count,
        ],
        CLI_TIMEOUT,
    );
    assert!(out.status.success(), "subscribe failed: {out:?}");
    let lines: Vec<String> = out.stdout.lines().map(str::to_owned).collect();
    (lines, out.stderr)
}

/// What the SDK reads from `lines`, by event id.
fn sdk_read(lines: &[String]) -> BTreeMap<String, Value> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("subscribed.jsonl");
    std::fs::write(&file, lines.join("\n")).unwrap();
    by_id(sdk(&["read", file.to_str().unwrap()]))
}

fn by_id(summaries: Value) -> BTreeMap<String, Value> {
    summaries
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["id"].as_str().unwrap().to_owned(), s.clone()))
        .collect()
}

/// Asserts that `got` has `expected` for each of its attributes, naming the
/// event and attribute that differ.
fn assert_attributes(id: &str, got: &Value, expected: &Value) {
    for (attribute, value) in expected.as_object().unwrap() {
        assert_eq!(
            &got[attribute], value,
            "event {id}, attribute `{attribute}`: the SDK read {got}"
        );
    }
}

#[test]
fn the_official_sdk_reads_what_subscribe_prints() {
    let server = Server::start();
    let url = server.addr();
    let bytes: Vec<u8> = (0..=255).collect();
    let events = vec![
        NewEvent {
            id: "rs-json".into(),
            source: "https://example.com/rs".into(),
            ty: "com.example.rs.json".into(),
            subject: Some("s-1".into()),
            time_ms: Some(1_700_000_000_123),
            datacontenttype: Some("application/json".into()),
            attributes: vec![
                ("tenant".into(), "acme".into()),
                ("dataschema".into(), "https://example.com/s.json".into()),
            ],
            data: br#"{"a": [1, 2.5], "b": null}"#.to_vec(),
            ..NewEvent::default()
        },
        NewEvent {
            id: "rs-text".into(),
            source: "/rs".into(),
            ty: "com.example.rs.text".into(),
            time_ms: Some(-1),
            datacontenttype: Some("text/plain; charset=utf-8".into()),
            data: "h\u{e9}llo\n\"world\"".into(),
            ..NewEvent::default()
        },
        NewEvent {
            id: "rs-bytes".into(),
            source: "/rs".into(),
            ty: "com.example.rs.bytes".into(),
            datacontenttype: Some("application/octet-stream".into()),
            data: bytes.clone(),
            ..NewEvent::default()
        },
        NewEvent {
            id: "rs-implicit-json".into(),
            source: "/rs".into(),
            ty: "com.example.rs.string".into(),
            data: br#""just a string""#.to_vec(),
            ..NewEvent::default()
        },
        NewEvent {
            id: "rs-none".into(),
            source: "/rs".into(),
            ty: "com.example.rs.none".into(),
            attributes: vec![("Bad-Name".into(), "x".into())],
            ..NewEvent::default()
        },
    ];
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let published = runtime.block_on(async {
        let publisher = server.client().publisher("rs").await.unwrap();
        publisher.publish_batch(events.clone()).await.unwrap()
    });

    let (lines, stderr) = subscribe(&url, "sdk-readers", events.len());
    assert_eq!(lines.len(), events.len(), "{lines:?}");
    assert!(
        stderr.contains("extension attribute \"Bad-Name\" left out"),
        "subscribe says what it left out: {stderr}"
    );
    for line in &lines {
        let v: Value = serde_json::from_str(line).unwrap();
        assert!(
            !v.as_object().unwrap().values().any(Value::is_null),
            "no member is null: {line}"
        );
        if ["rs-bytes", "rs-implicit-json", "rs-none"].contains(&v["id"].as_str().unwrap()) {
            assert_eq!(v.get("time"), None, "no time, not a null one: {line}");
        }
    }

    let read = sdk_read(&lines);
    let expected = [
        json!({
            "specversion": "1.0", "source": "https://example.com/rs",
            "type": "com.example.rs.json", "subject": "s-1",
            "time": "2023-11-14T22:13:20.123000+00:00",
            "datacontenttype": "application/json",
            "dataschema": "https://example.com/s.json",
            "data": {"kind": "json", "value": {"a": [1, 2.5], "b": null}},
        }),
        json!({
            "source": "/rs", "type": "com.example.rs.text", "subject": null,
            "time": "1969-12-31T23:59:59.999000+00:00",
            "datacontenttype": "text/plain; charset=utf-8", "dataschema": null,
            "data": {"kind": "str", "value": "h\u{e9}llo\n\"world\""},
        }),
        json!({
            "type": "com.example.rs.bytes",
            "datacontenttype": "application/octet-stream",
            "data": {"kind": "bytes", "value": base64_of_all_bytes()},
        }),
        json!({
            "type": "com.example.rs.string", "datacontenttype": null,
            "data": {"kind": "str", "value": "just a string"},
        }),
        json!({
            "type": "com.example.rs.none", "datacontenttype": null,
            "data": {"kind": "none"},
        }),
    ];
    assert_eq!(read.len(), events.len(), "{read:?}");
    for ((event, position), expected) in events.iter().zip(&published).zip(expected) {
        let got = &read[&event.id];
        assert_attributes(&event.id, got, &expected);
        let mut extensions = json!({
            "partition": position.partition,
            "offset": position.offset.to_string(),
        });
        for (name, value) in &event.attributes {
            if name != "dataschema" && name != "Bad-Name" {
                extensions[name] = value.as_str().into();
            }
        }
        assert_eq!(got["extensions"], extensions, "event {}", event.id);
    }
}

/// Python's Base64 of the bytes 0..=255 (the standard alphabet, padded).
fn base64_of_all_bytes() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes: Vec<u8> = (0..=255).collect();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .chain(std::iter::repeat(&0))
            .take(3)
            .fold(0u32, |n, &b| (n << 8) | u32::from(b));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
        out.extend(std::iter::repeat_n('=', 3 - chunk.len()));
    }
    out
}

/// `hadron publish -f - --url URL` with `input` on stdin.
fn publish_stdin(url: &str, input: &[u8]) -> (bool, String, String) {
    let mut child = Command::new(hadron_bin())
        .args(["publish", "-f", "-", "--url", url])
        .env_remove("HADRON_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    // Waited for on a thread, so the test waits on the exit itself, with a
    // deadline, instead of polling.
    let (done, exited) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    let output = exited
        .recv_timeout(CLI_TIMEOUT)
        .unwrap_or_else(|_| panic!("publish -f - ran past {CLI_TIMEOUT:?}"))
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout).into_owned();
    let err = String::from_utf8_lossy(&output.stderr).into_owned();
    let status = output.status;
    (status.success(), out, err)
}

#[test]
fn what_the_official_sdk_writes_publishes_unchanged() {
    let server = Server::start();
    let url = server.addr();
    let dir = tempfile::tempdir().unwrap();
    let single = dir.path().join("single.json");
    let batch = dir.path().join("batch.json");
    let written = sdk(&["write", single.to_str().unwrap(), batch.to_str().unwrap()]);
    let written = written.as_array().unwrap();
    assert_eq!(written.len(), 4);

    // One event from a file, then the batch on stdin: the batch's first
    // event is the same (source, id), so a duplicate where it went before.
    let out = run_cli(
        &["publish", "-f", single.to_str().unwrap(), "--url", &url],
        CLI_TIMEOUT,
    );
    assert!(out.status.success(), "publish -f FILE failed: {out:?}");
    let first = out.json_lines();
    assert_eq!(first.len(), 1, "{out:?}");
    let (ok, stdout, stderr) = publish_stdin(&url, &std::fs::read(&batch).unwrap());
    assert!(ok, "publish -f - failed: {stdout}\n{stderr}");
    let positions: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        positions.len(),
        written.len(),
        "one line per event: {stdout}"
    );
    assert_eq!(positions[0]["duplicate"], true, "{stdout}");
    assert_eq!(positions[0]["partition"], first[0]["partition"]);
    assert_eq!(positions[0]["offset"], first[0]["offset"]);

    let (lines, stderr) = subscribe(&url, "round-trip", written.len());
    assert!(stderr.is_empty(), "nothing left out: {stderr}");
    let read = sdk_read(&lines);
    assert_eq!(read.len(), written.len(), "{lines:?}");
    for (wrote, position) in written.iter().zip(&positions) {
        let id = wrote["id"].as_str().unwrap();
        let got = &read[id];
        let mut expected = wrote.clone();
        // Hadron keeps milliseconds: py-empty's time is the SDK's "now",
        // with microseconds; the others were written with milliseconds.
        let time = expected["time"].as_str().unwrap().to_owned();
        expected["time"] = format!("{}000+00:00", &time[..23]).into();
        // Extension values are stored as their canonical strings; the
        // position comes with the event.
        let extensions = expected["extensions"].as_object_mut().unwrap();
        for value in extensions.values_mut() {
            if !value.is_string() {
                *value = value.to_string().into();
            }
        }
        extensions.insert("partition".into(), position["partition"].clone());
        extensions.insert(
            "offset".into(),
            position["offset"].as_u64().unwrap().to_string().into(),
        );
        assert_attributes(id, got, &expected);
    }
    assert_eq!(read["py-json"]["extensions"]["count"], "5");
    assert_eq!(read["py-json"]["extensions"]["flag"], "true");
    assert_eq!(
        read["py-text"]["time"], "2024-05-06T07:08:09.123000+00:00",
        "+02:00 is the same instant in UTC"
    );
}

#[test]
fn publish_refuses_cloudevents_json_naming_the_attribute() {
    let server = Server::start();
    let url = server.addr();
    let cases = [
        (
            r#"{"specversion":"1.0","id":"1","source":"/s"}"#,
            "`type` is missing",
        ),
        (
            r#"[{"specversion":"1.0","id":"1","source":"/s","type":"t"},
               {"specversion":"1.0","id":"2","type":"t"}]"#,
            "event 1: `source` is missing",
        ),
        (
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","time":"noon"}"#,
            "`time` \"noon\"",
        ),
        (
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","My-Ext":"x"}"#,
            "extension attribute \"My-Ext\"",
        ),
    ];
    for (input, expected) in cases {
        let (ok, stdout, stderr) = publish_stdin(&url, input.as_bytes());
        assert!(!ok, "{input} was published: {stdout}");
        assert!(stderr.contains(expected), "{input}: {stderr}");
        assert!(stdout.is_empty(), "nothing published: {stdout}");
    }
    // Nothing reached the stream: a batch is checked whole before any of
    // it is sent.
    let out = run_cli(&["status", "--json", "--url", &url], CLI_TIMEOUT);
    let status = &out.json_lines()[0];
    let next = hadron_tests::next_offsets(status, "events");
    assert!(next.values().all(|&n| n == 0), "{next:?}");
    // Without -f, --type is still required.
    let out = run_cli(&["publish", "--url", &url, "data"], CLI_TIMEOUT);
    assert!(!out.status.success());
    assert!(out.stderr.contains("--type"), "{out:?}");
}

#[test]
fn publish_file_with_a_partition_sends_every_event_there() {
    let server = Server::start();
    let url = server.addr();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.json");
    let event = |id: &str| json!({"specversion": "1.0", "id": id, "source": "/p", "type": "t"});
    // Subjects or ids would spread these over partitions; --partition wins.
    let text = format!("{}\n{}\n", event("a"), json!([event("b"), event("c")]));
    std::fs::write(&file, text).unwrap();
    let out = run_cli(
        &[
            "publish",
            "-f",
            file.to_str().unwrap(),
            "--partition",
            "2",
            "--url",
            &url,
        ],
        CLI_TIMEOUT,
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        out.json_lines(),
        [0, 1, 2]
            .map(|offset| json!({"partition": 2, "offset": offset}))
            .to_vec()
    );
}
