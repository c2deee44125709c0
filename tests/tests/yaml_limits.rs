//! What one `hadron apply` may ask of the server, on the real binary: YAML
//! bombs (aliases, deep nesting, too many bytes) and too many resources are
//! answered with their documented error at once, change nothing, and leave
//! the server serving other clients within a bounded memory; and applied
//! resources win over the config file's across restarts (retention, a
//! grown partition count), apply without a restart, and a start that
//! changes nothing writes nothing.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "end-to-end tests: a failed request must fail the test at once"
)]

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use hadron::{Error, NewEvent};
use hadron_tests::{Server, ServerOptions, fetch_all, status, stream_partitions};
use hadron_wire::ErrorCode;

/// The server's peak RSS may not pass this while it refuses the bombs.
/// A one-shard server peaked at 28 MiB through this test; before the bounds,
/// the alias bomb alone took it past 1 GB.
const RSS_BYTES_MAX: u64 = 128 << 20;
/// An answer to a refused apply must come this quickly (a debug build on a
/// loaded machine; the parse of the largest allowed YAML takes far less).
const ANSWER_TIME_MAX: Duration = Duration::from_secs(5);

/// Applies `yaml` and returns the error code and message of its refusal,
/// checking it came quickly.
async fn refusal(server: &Server, yaml: &str) -> (ErrorCode, String) {
    let client = server.client();
    let started = Instant::now();
    let result = client.apply(yaml).await;
    let elapsed = started.elapsed();
    assert!(elapsed < ANSWER_TIME_MAX, "the answer took {elapsed:?}");
    match result {
        Err(Error::Server { code, message }) => (code, message),
        other => panic!("apply was not refused: {other:?}"),
    }
}

/// Another client can still publish and read back.
async fn still_serves(server: &Server, id: &str) {
    let client = server.client();
    let publisher = client.publisher("after-bomb").await.unwrap();
    let published = publisher
        .publish_to(0, NewEvent::new("bomb.survived", id.as_bytes().to_vec()))
        .await
        .unwrap();
    let records = fetch_all(&client, "events", 0).await;
    let (_, event) = records
        .iter()
        .find(|(offset, _)| *offset == published.offset)
        .expect("the event just published reads back");
    assert_eq!(event.data, id.as_bytes());
}

fn stream_doc(name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: hadron.rs/v1beta1\nkind: Stream\nmetadata: {{ name: {name} }}\nspec: {spec}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yaml_bombs_and_too_many_streams_are_refused_at_once_and_the_server_serves_on() {
    let server = Server::start();

    // A few KB of anchors and aliases that would expand to a billion values.
    let mut aliases = String::from("a: &a [");
    aliases.push_str(&vec!["xxxxxxxx"; 1000].join(","));
    for (name, of) in [("b", "a"), ("c", "b"), ("d", "c")] {
        aliases.push_str(&format!("]\n{name}: &{name} ["));
        aliases.push_str(&vec![format!("*{of}"); 1000].join(","));
    }
    aliases.push_str("]\n");
    let (code, message) = refusal(&server, &aliases).await;
    assert_eq!(code, ErrorCode::InvalidConfig, "{message}");
    assert!(
        message.contains("YAML anchors (`&name`) are not accepted"),
        "{message}"
    );
    assert!(message.contains("(line 1, column 4)"), "{message}");
    still_serves(&server, "after the alias bomb").await;

    // 100,000 nested `[` stalled a shard for 36 s.
    let (code, message) = refusal(&server, &"[".repeat(100_000)).await;
    assert_eq!(code, ErrorCode::InvalidConfig, "{message}");
    assert!(
        message.contains("brackets nest deeper than 32 levels"),
        "{message}"
    );
    let (code, message) = refusal(&server, &"{a: ".repeat(100_000)).await;
    assert_eq!(code, ErrorCode::InvalidConfig, "{message}");
    still_serves(&server, "after the nesting bombs").await;

    // One more byte than `applyBytesMax` (comments: nothing else to read).
    let mut big = String::from("# padding\n");
    while big.len() < (1 << 20) + 1 {
        big.push_str("# padding padding padding padding padding padding padding\n");
    }
    big.truncate((1 << 20) + 1);
    let (code, message) = refusal(&server, &big).await;
    assert_eq!(code, ErrorCode::LimitExceeded, "{message}");
    assert!(
        message.contains("1048577 bytes of YAML; applyBytesMax is 1048576"),
        "{message}"
    );
    // At the limit it is read (and holds nothing).
    big.truncate(1 << 20);
    big.replace_range(big.len() - 1.., "\n");
    assert_eq!(
        server.client().apply(&big).await.unwrap(),
        Vec::<String>::new()
    );

    // One stream more than `streamsMax` (256, with `events`): nothing made.
    let many: String = (0..256)
        .map(|i| stream_doc(&format!("s{i}"), "{ partitions: 1 }"))
        .collect();
    let (code, message) = refusal(&server, &many).await;
    assert_eq!(code, ErrorCode::LimitExceeded, "{message}");
    assert!(
        message.starts_with("the server would hold 257 streams; streamsMax is 256"),
        "{message}"
    );
    let doc = status(&server.client()).await;
    assert_eq!(doc["streams"].as_array().unwrap().len(), 1, "{doc}");
    // One partition more than `partitionsMax` (1024, with 4 in `events`).
    let (code, message) = refusal(&server, &stream_doc("wide", "{ partitions: 1021 }")).await;
    assert_eq!(code, ErrorCode::LimitExceeded, "{message}");
    assert!(message.contains("partitionsMax is 1024"), "{message}");
    still_serves(&server, "after too many resources").await;

    let rss = server.peak_rss_bytes().unwrap();
    eprintln!("peak RSS after the bombs: {} MiB", rss >> 20);
    assert!(rss < RSS_BYTES_MAX, "peak RSS {rss} bytes");
}

/// The config file's `events` stream (here implied: the file declares no
/// stream) only seeds a new data dir: retention and partitions applied
/// later survive restarts, retention applies at once, and a start that
/// changes nothing does not write `resources.yaml`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applied_resources_win_over_the_config_file_and_apply_without_a_restart() {
    let mut server = Server::start_with(ServerOptions {
        config: Some("segmentBytes: 65536\n".into()),
        ..ServerOptions::default()
    });
    let client = server.client();
    let publisher = client.publisher("retention").await.unwrap();
    // About five 64 KiB segments in partition 0.
    for _ in 0..300 {
        let event = NewEvent::new("retention.filler", vec![b'x'; 1000]);
        publisher.publish_to(0, event).await.unwrap();
    }
    let doc = status(&client).await;
    let p0 = &stream_partitions(&doc, "events")[0];
    assert!(p0["segments"].as_u64().unwrap() >= 4, "{p0}");
    assert_eq!(p0["start_offset"], 0, "{p0}");

    // Retention applies at once: the old segments are gone when the apply
    // answers, not at the next start.
    let summary = client
        .apply(&stream_doc(
            "events",
            "{ partitions: 4, retention: { maxBytes: 65536 } }",
        ))
        .await
        .unwrap();
    assert_eq!(summary, vec!["stream/events configured (4 partitions)"]);
    let doc = status(&client).await;
    let p0 = &stream_partitions(&doc, "events")[0];
    assert!(p0["segments"].as_u64().unwrap() <= 2, "{p0}");
    let start = p0["start_offset"].as_u64().unwrap();
    assert!(start > 0, "{p0}");

    // Turning dedup off is said to wait for the next start.
    let summary = client
        .apply(&stream_doc(
            "events",
            "{ partitions: 8, retention: { maxBytes: 65536 }, dedupWindowMs: 0 }",
        ))
        .await
        .unwrap();
    assert_eq!(
        summary,
        vec![
            "stream/events configured (8 partitions)".to_owned(),
            "stream/events: dedupWindowMs 120000 -> 0 turns deduplication off at the next server start; its other settings apply now".to_owned(),
        ]
    );

    // The restart keeps what was applied: it starts (with 8 partitions, which
    // the config file's 4 would have refused), and retention still holds.
    assert!(server.stop().success());
    server.restart();
    let client = server.client();
    let doc = status(&client).await;
    assert_eq!(doc["streams"][0]["partition_count"], 8, "{doc}");
    let resources = std::fs::read_to_string(server.data_dir().join("resources.yaml")).unwrap();
    assert!(resources.contains("maxBytes: 65536"), "{resources}");
    let publisher = client.publisher("retention").await.unwrap();
    let published = publisher
        .publish_to(7, NewEvent::new("partition.seven", b"p7".to_vec()))
        .await
        .unwrap();
    assert_eq!((published.partition, published.offset), (7, 0));
    for _ in 0..300 {
        let event = NewEvent::new("retention.filler", vec![b'x'; 1000]);
        publisher.publish_to(0, event).await.unwrap();
    }
    let doc = status(&client).await;
    let p0 = &stream_partitions(&doc, "events")[0];
    assert!(p0["segments"].as_u64().unwrap() <= 3, "{p0}");
    assert!(p0["start_offset"].as_u64().unwrap() > start, "{p0}");

    // A start that changes nothing does not write the file: it starts even
    // where a write would fail (the temporary file's name is taken).
    let path = server.data_dir().join("resources.yaml");
    let before = std::fs::metadata(&path).unwrap();
    std::fs::create_dir(server.data_dir().join("resources.yaml.tmp")).unwrap();
    assert!(server.stop().success());
    server.restart();
    let after = std::fs::metadata(&path).unwrap();
    assert_eq!(
        (after.ino(), after.mtime(), after.mtime_nsec()),
        (before.ino(), before.mtime(), before.mtime_nsec())
    );
    let doc = status(&server.client()).await;
    assert_eq!(doc["streams"][0]["partition_count"], 8, "{doc}");
}
