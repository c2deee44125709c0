//! Consumer groups at their limits, on the real binary: `groupsMax` durable
//! groups with the longest names on one partition keep their offsets across
//! a restart; one group more, an Ack of more than `ackIdsMax` ids and a
//! subscription past `subscriptionsPerConnectionMax` are refused with
//! LimitExceeded while the server goes on serving; and groups without
//! members cost no CPU.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed request must fail the test at once"
)]

use std::time::Duration;

use futures::StreamExt;
use hadron_tests::{
    Frame, RawConn, RawDelivery, Server, ServerOptions, event_bytes, eventually, status,
    stream_partitions, stream_yaml,
};
use hadron_wire::{ErrorCode, Message, StartPoint};

/// The server's `groupsMax` default (the one the unit tests size the
/// snapshot for), set explicitly so that the test says what it tests.
const GROUPS_MAX: u32 = 1024;
/// Events in the partition; every group acks fewer.
const EVENTS: u64 = 64;
/// Connections working at once while groups are set up.
const CONCURRENT: usize = 16;

/// A server with one shard, these server settings, and `streams` (name,
/// partitions).
fn server(settings: &str, streams: &[(&str, u32)]) -> Server {
    let mut config = format!("kind: ServerConfig\n{settings}");
    for (name, partitions) in streams {
        config.push_str("---\n");
        config.push_str(&stream_yaml(name, *partitions));
    }
    Server::start_with(ServerOptions {
        config: Some(config),
        ..ServerOptions::default()
    })
}

/// A group name of 255 bytes (the longest), distinct per `i`.
fn long_name(i: u32) -> String {
    let name = format!("group-{i:05}-{}", "x".repeat(255));
    name[..255].to_string()
}

/// How many events group `i` acks before the restart: 1 to 63, varied.
fn acked(i: u32) -> u64 {
    1 + u64::from(i * 37 % 63)
}

/// Publishes `EVENTS` events to partition 0 of `stream`.
async fn publish(port: u16, stream: &str) {
    let mut conn = RawConn::handshaken(port).await;
    let events: Vec<Vec<u8>> = (0..EVENTS)
        .map(|i| event_bytes(&format!("e{i}"), "scale", "t", b"x"))
        .collect();
    let reply = conn
        .request(
            &Message::Publish(hadron_wire::Publish {
                stream,
                partition: 0,
                events: events.iter().map(Vec::as_slice).collect(),
            }),
            &mut Vec::new(),
        )
        .await;
    assert!(matches!(reply, Frame::PublishOk { .. }), "{reply:?}");
}

/// Sends a Subscribe from the beginning and returns the answer.
async fn try_subscribe(conn: &mut RawConn, stream: &str, group: &str, max_in_flight: u32) -> Frame {
    conn.request(
        &Message::Subscribe(hadron_wire::Subscribe {
            stream,
            group,
            durable: true,
            start: StartPoint::Beginning,
            max_in_flight,
        }),
        &mut Vec::new(),
    )
    .await
}

/// Receives deliveries until `n` have come (those in `pushed` first).
async fn deliveries(
    conn: &mut RawConn,
    mut pushed: Vec<RawDelivery>,
    n: usize,
) -> Vec<RawDelivery> {
    while pushed.len() < n {
        let d = conn
            .next_delivery(Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("{} of {n} deliveries came", pushed.len()));
        pushed.push(d);
    }
    pushed
}

fn expect_error(frame: &Frame, code: ErrorCode, words: &str) {
    match frame {
        Frame::Error {
            code: got, message, ..
        } => {
            assert_eq!(*got, code, "{message}");
            assert!(message.contains(words), "{message:?} lacks {words:?}");
        }
        other => panic!("expected {code:?}, got {other:?}"),
    }
}

/// Group `i` acks the first `acked(i)` events: it subscribes with that
/// many in flight, acks them, and disconnects (what was delivered after
/// the ack goes out again, so the committed offset is exactly `acked(i)`).
async fn ack_first(port: u16, stream: &str, i: u32) {
    let mut conn = RawConn::handshaken(port).await;
    let n = acked(i);
    let reply = try_subscribe(&mut conn, stream, &long_name(i), n as u32).await;
    assert!(
        matches!(reply, Frame::SubscribeOk { .. }),
        "group {i}: {reply:?}"
    );
    let got = deliveries(&mut conn, Vec::new(), n as usize).await;
    let mut offsets: Vec<u64> = got.iter().map(|d| d.offset).collect();
    offsets.sort_unstable();
    assert_eq!(offsets, (0..n).collect::<Vec<_>>(), "group {i}");
    let ids: Vec<u64> = got.iter().map(|d| d.delivery_id).collect();
    let reply = conn.ack(&ids, &mut Vec::new()).await;
    assert!(matches!(reply, Frame::AckOk { .. }), "group {i}: {reply:?}");
    conn.close().await;
}

/// Where group `i` resumes: the offset of its first delivery.
async fn resumes_at(port: u16, stream: &str, i: u32) -> u64 {
    let mut conn = RawConn::handshaken(port).await;
    let mut pushed = Vec::new();
    let reply = conn
        .request(
            &Message::Subscribe(hadron_wire::Subscribe {
                stream,
                group: &long_name(i),
                durable: true,
                start: StartPoint::Beginning,
                max_in_flight: 1,
            }),
            &mut pushed,
        )
        .await;
    assert!(
        matches!(reply, Frame::SubscribeOk { .. }),
        "group {i}: {reply:?}"
    );
    let first = deliveries(&mut conn, pushed, 1).await;
    conn.close().await;
    first[0].offset
}

/// `groupsMax` durable groups with 255-byte names on one partition (a
/// 265 KiB offsets snapshot; 300 such groups once made every commit of the
/// partition fail): each acks a different number of events, and after a
/// restart each resumes exactly after what it acked. One group more is
/// refused with LimitExceeded naming `groupsMax`, and the server goes on
/// serving the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_groups_at_groups_max_with_long_names_resume_exactly_after_their_acks() {
    let mut server = server(&format!("groupsMax: {GROUPS_MAX}\n"), &[("wide", 1)]);
    publish(server.port(), "wide").await;
    let port = server.port();
    futures::stream::iter(0..GROUPS_MAX)
        .map(|i| ack_first(port, "wide", i))
        .buffer_unordered(CONCURRENT)
        .collect::<Vec<()>>()
        .await;

    // One group more: refused, nothing created.
    let mut conn = RawConn::handshaken(port).await;
    let reply = try_subscribe(&mut conn, "wide", "one-too-many", 1).await;
    expect_error(&reply, ErrorCode::LimitExceeded, "groupsMax (1024)");
    conn.close().await;

    server.stop();
    server.restart();
    let port = server.port();
    let resumed: Vec<(u32, u64)> = futures::stream::iter(0..GROUPS_MAX)
        .map(|i| async move { (i, resumes_at(port, "wide", i).await) })
        .buffer_unordered(CONCURRENT)
        .collect()
        .await;
    let wrong: Vec<(u32, u64, u64)> = resumed
        .into_iter()
        .filter(|&(i, at)| at != acked(i))
        .map(|(i, at)| (i, at, acked(i)))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} groups resumed elsewhere than after their acks (group, at, acked): {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(10)]
    );

    // Still full after the restart (the durable groups count), and still
    // serving: an existing group resumes, a publish is taken.
    let mut conn = RawConn::handshaken(port).await;
    let reply = try_subscribe(&mut conn, "wide", "one-too-many", 1).await;
    expect_error(&reply, ErrorCode::LimitExceeded, "groupsMax");
    conn.close().await;
    assert_eq!(resumes_at(port, "wide", 5).await, acked(5));
    publish(port, "wide").await;
}

/// An Ack of `ackIdsMax` + 1 ids is refused with LimitExceeded and settles
/// nothing (the one real delivery in it can still be acked alone); an Ack
/// of exactly `ackIdsMax` ids is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_of_more_than_ack_ids_max_ids_is_refused_and_acks_nothing() {
    const ACK_IDS_MAX: usize = 1000;
    let server = server(&format!("ackIdsMax: {ACK_IDS_MAX}\n"), &[("acks", 1)]);
    let port = server.port();
    publish(port, "acks").await;
    let mut conn = RawConn::handshaken(port).await;
    let reply = try_subscribe(&mut conn, "acks", "g", 2).await;
    assert!(matches!(reply, Frame::SubscribeOk { .. }), "{reply:?}");
    let got = deliveries(&mut conn, Vec::new(), 2).await;
    let (real, other) = (got[0].delivery_id, got[1].delivery_id);
    // Ids no shard made (shard 9 of 1): never outstanding.
    let unknown = |n: usize| (0..n as u64).map(|k| (9 << 48) | k);

    // Deliveries that come while acks are answered.
    let mut pushed = Vec::new();
    let too_many: Vec<u64> = std::iter::once(real).chain(unknown(ACK_IDS_MAX)).collect();
    let reply = conn.ack(&too_many, &mut pushed).await;
    expect_error(
        &reply,
        ErrorCode::LimitExceeded,
        &format!(
            "{} delivery ids exceeds ackIdsMax ({ACK_IDS_MAX})",
            ACK_IDS_MAX + 1
        ),
    );
    let reply = conn.ack(&[real], &mut pushed).await;
    assert!(
        matches!(reply, Frame::AckOk { .. }),
        "the refused Ack acked it: {reply:?}"
    );

    // At the limit: taken; the unknown ids are named, the real one acked.
    let at_max: Vec<u64> = std::iter::once(other)
        .chain(unknown(ACK_IDS_MAX - 1))
        .collect();
    let reply = conn.ack(&at_max, &mut pushed).await;
    expect_error(
        &reply,
        ErrorCode::UnknownDelivery,
        "the other ids were acked",
    );
    let reply = conn.ack(&[other], &mut pushed).await;
    expect_error(&reply, ErrorCode::UnknownDelivery, "not outstanding");
    // The connection goes on: the next deliveries come, from offset 2 (the
    // refused Ack left nothing to redeliver).
    let next = deliveries(&mut conn, pushed, 2).await;
    let mut offsets: Vec<u64> = next.iter().map(|d| d.offset).collect();
    offsets.sort_unstable();
    assert_eq!(offsets, [2, 3]);
}

/// A connection holds at most `subscriptionsPerConnectionMax`
/// subscriptions; the one past it is refused naming the setting, and
/// another connection may still subscribe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_past_the_per_connection_limit_are_refused() {
    let server = server("subscriptionsPerConnectionMax: 3\n", &[("subs", 1)]);
    let port = server.port();
    let mut conn = RawConn::handshaken(port).await;
    for i in 0..3 {
        let reply = try_subscribe(&mut conn, "subs", &format!("g{i}"), 1).await;
        assert!(matches!(reply, Frame::SubscribeOk { .. }), "{i}: {reply:?}");
    }
    let reply = try_subscribe(&mut conn, "subs", "g3", 1).await;
    expect_error(
        &reply,
        ErrorCode::LimitExceeded,
        "subscriptionsPerConnectionMax (3)",
    );
    let mut other = RawConn::handshaken(port).await;
    let reply = try_subscribe(&mut other, "subs", "g3", 1).await;
    assert!(matches!(reply, Frame::SubscribeOk { .. }), "{reply:?}");
}

/// CPU seconds the process has used (user + system), from
/// `/proc/<pid>/stat` (fields 14 and 15, in clock ticks: USER_HZ, which
/// Linux fixes at 100 for this file).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name (field 2) is in parentheses and may hold spaces.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3.
    let utime: u64 = fields[14 - 3].parse().unwrap();
    let stime: u64 = fields[15 - 3].parse().unwrap();
    (utime + stime) as f64 / 100.0
}

/// The share of one core the process used over `window`.
async fn cpu_share(pid: u32, window: Duration) -> f64 {
    let before = cpu_seconds(pid);
    // The measurement window itself, not a wait for the server.
    tokio::time::sleep(window).await;
    (cpu_seconds(pid) - before) / window.as_secs_f64()
}

/// Durable groups without members cost no CPU: 4,000 of them (1,000
/// groups on 4 partitions), each a dispatcher that once woke every 50 ms
/// (5,000 kept a shard at 80% of a core), add under 5% of a core over the
/// server's own idle use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_groups_without_members_cost_no_cpu() {
    const GROUPS: u32 = 1000;
    const WINDOW: Duration = Duration::from_secs(2);
    let server = server(&format!("groupsMax: {GROUPS}\n"), &[("idle", 4)]);
    let port = server.port();
    let pid = server.pid().unwrap();
    let idle = cpu_share(pid, WINDOW).await;
    futures::stream::iter(0..GROUPS)
        .map(|i| async move {
            let mut conn = RawConn::handshaken(port).await;
            let reply = try_subscribe(&mut conn, "idle", &format!("idle-{i}"), 1).await;
            assert!(matches!(reply, Frame::SubscribeOk { .. }), "{i}: {reply:?}");
            conn.close().await;
        })
        .buffer_unordered(CONCURRENT)
        .collect::<Vec<()>>()
        .await;
    // Every group is there, on every partition, with no member left.
    let client = server.client();
    eventually(Duration::from_secs(20), "4,000 member-less groups", || {
        let client = client.clone();
        async move {
            let status = status(&client).await;
            let groups: Vec<&serde_json::Value> = stream_partitions(&status, "idle")
                .iter()
                .flat_map(|p| p["groups"].as_array().unwrap())
                .collect();
            let settled =
                groups.len() == 4 * GROUPS as usize && groups.iter().all(|g| g["members"] == 0);
            settled.then_some(())
        }
    })
    .await;
    let with_groups = cpu_share(pid, WINDOW).await;
    eprintln!(
        "server CPU: {:.1}% of a core idle, {:.1}% with {GROUPS} member-less groups on 4 partitions",
        idle * 100.0,
        with_groups * 100.0
    );
    assert!(
        with_groups - idle < 0.05,
        "member-less groups cost {:.1}% of a core ({:.1}% idle, {:.1}% with them)",
        (with_groups - idle) * 100.0,
        idle * 100.0,
        with_groups * 100.0
    );
    // The groups are there, and one resumes when a member comes.
    let mut conn = RawConn::handshaken(port).await;
    let reply = try_subscribe(&mut conn, "idle", "one-too-many", 1).await;
    expect_error(&reply, ErrorCode::LimitExceeded, "groupsMax (1000)");
}
