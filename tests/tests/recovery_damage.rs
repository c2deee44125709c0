//! Damage in a partition's active segment: the partition comes up
//! read-only (publishes answer `Damaged`, reads below the damage work,
//! everything else is served), and `hadron repair`, with the server
//! stopped, keeps the cut bytes beside the segment and lets the partition
//! continue above every offset it acknowledged.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed request must fail the test at once"
)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use hadron::NewEvent;
use hadron_tests::{Server, create_stream, fetch_all, run_cli};
use hadron_wire::ErrorCode;

/// Where each batch of a segment file starts, up to its zero-filled end
/// (header: magic "HDRB" at 0, the version at 8, payload bytes as a u32 at
/// 12; 56 bytes long in version 2, 40 in version 1).
fn batch_positions(segment: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 40 <= segment.len() && &segment[at..at + 4] == b"HDRB" {
        out.push(at);
        let payload = u32::from_le_bytes(segment[at + 12..at + 16].try_into().unwrap());
        at += header_bytes(segment, at) + payload as usize;
    }
    out
}

fn header_bytes(segment: &[u8], at: usize) -> usize {
    if segment[at + 8] == 1 { 40 } else { 56 }
}

fn segment_path(log_dir: &Path) -> PathBuf {
    log_dir.join("00000000000000000000.log")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_makes_the_partition_read_only_until_hadron_repair() {
    const EVENTS: u64 = 200;
    let mut server = Server::start();
    let client = server.client();
    create_stream(&client, "side", 1).await;
    let publisher = client.publisher("damage").await.unwrap();
    for i in 0..EVENTS {
        let p = publisher
            .publish_to(
                0,
                NewEvent::new("t", vec![i as u8; 200]).with_id(format!("e-{i}")),
            )
            .await
            .unwrap();
        assert_eq!(p.offset, i);
    }
    for i in 0..10 {
        publisher
            .publish_to(1, NewEvent::new("t", vec![1]).with_id(format!("p1-{i}")))
            .await
            .unwrap();
    }
    drop(publisher);
    drop(client);
    let exit = server.stop();
    assert!(exit.success(), "SIGTERM exit: {exit:?}\n{}", server.log());

    // Flip one byte in the middle of partition 0's active segment.
    let log_dir = server.data_dir().join("streams/events/00000/log");
    let segment = segment_path(&log_dir);
    let mut bytes = std::fs::read(&segment).unwrap();
    let positions = batch_positions(&bytes);
    assert_eq!(positions.len() as u64, EVENTS, "one batch per publish");
    let damaged_at = positions[100];
    bytes[damaged_at + 60] ^= 0x08;
    std::fs::write(&segment, &bytes).unwrap();
    let data_end = positions[EVENTS as usize - 1]
        + header_bytes(&bytes, positions[199])
        + u32::from_le_bytes(
            bytes[positions[199] + 12..positions[199] + 16]
                .try_into()
                .unwrap(),
        ) as usize;

    server.restart();
    assert!(
        server
            .log()
            .contains(&format!("damaged at byte {damaged_at}")),
        "the damage is logged:\n{}",
        server.log()
    );
    let client = server.client();
    let publisher = client.publisher("damage").await.unwrap();
    let err = publisher
        .publish_to(0, NewEvent::new("t", vec![0]).with_id("refused"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Damaged), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("00000000000000000000.log")
            && message.contains(&format!("byte {damaged_at}")),
        "{message}"
    );
    // Everything else is served: another partition, another stream, and
    // the damaged partition's records before the damage.
    let p = publisher
        .publish_to(1, NewEvent::new("t", vec![1]).with_id("p1-after"))
        .await
        .unwrap();
    assert_eq!(p.offset, 10);
    let side = client.publisher_for("side", "damage").await.unwrap();
    assert_eq!(
        side.publish(NewEvent::new("t", vec![2]).with_id("s"))
            .await
            .unwrap()
            .offset,
        0
    );
    let before = fetch_all(&client, "events", 0).await;
    let ids: Vec<(u64, String)> = before.iter().map(|(o, e)| (*o, e.id.clone())).collect();
    let want: Vec<(u64, String)> = (0..100).map(|i| (i, format!("e-{i}"))).collect();
    assert_eq!(ids, want, "reads up to the damage work");
    drop(side);
    drop(publisher);
    drop(client);

    // Repair with the server running is refused (the data dir is locked).
    let data_dir = server.data_dir();
    let data_dir = data_dir.to_str().unwrap();
    let refused = run_cli(&["repair", "--data-dir", data_dir], Duration::from_secs(60));
    assert!(!refused.status.success(), "repair ran beside the server");
    assert!(refused.stderr.contains("in use"), "{}", refused.stderr);

    let exit = server.stop();
    assert!(exit.success(), "SIGTERM exit: {exit:?}\n{}", server.log());
    let repaired = run_cli(&["repair", "--data-dir", data_dir], Duration::from_secs(60));
    assert!(
        repaired.status.success(),
        "repair failed: {}\n{}",
        repaired.stdout,
        repaired.stderr
    );
    assert!(
        repaired.stdout.contains("1 repaired"),
        "{}",
        repaired.stdout
    );
    let cut = log_dir.join(format!("00000000000000000000.log.cut-{damaged_at}"));
    assert_eq!(
        std::fs::read(&cut).unwrap(),
        bytes[damaged_at..data_end],
        "the cut bytes are kept beside the segment"
    );

    server.restart();
    let client = server.client();
    let publisher = client.publisher("damage").await.unwrap();
    let p = publisher
        .publish_to(0, NewEvent::new("t", vec![3]).with_id("after-repair"))
        .await
        .unwrap();
    assert_eq!(
        p.offset, EVENTS,
        "above every offset acknowledged before the damage"
    );
    let page = client.fetch("events", 0, EVENTS, 64 << 10).await.unwrap();
    assert_eq!(page.records.len(), 1);
    assert_eq!(page.records[0].1.id, "after-repair");
    assert!(cut.exists(), "the cut file is never deleted");
}
