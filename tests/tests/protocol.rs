//! Bad input as raw bytes on TCP connections: each gets the documented
//! `Error` frame (closing the connection where the protocol says so), and
//! none of it disturbs the server or the data already stored.

use std::time::Duration;

use hadron::NewEvent;
use hadron_tests::{Frame, RawConn, Server, event_bytes, fetch_all};
use hadron_wire::{ErrorCode, FRAME_BYTES_MAX, Message};

/// Reads the next frame: it must be an `Error` with `code` answering
/// `request_id`. Returns its message.
async fn expect_error(conn: &mut RawConn, request_id: u64, code: ErrorCode) -> String {
    match conn.recv().await {
        Some(Frame::Error {
            request_id: id,
            code: got,
            message,
        }) => {
            assert_eq!(got, code, "error code (message: {message})");
            assert_eq!(id, request_id, "request id of the {code} error");
            assert!(!message.is_empty(), "{code} comes with a message");
            message
        }
        other => panic!("expected Error {code}, got {other:?}"),
    }
}

/// The server closed the connection (EOF, nothing more).
async fn expect_closed(conn: &mut RawConn) {
    match conn.recv_within(Duration::from_secs(5)).await {
        Some(None) => {}
        Some(Some(frame)) => panic!("expected the connection to close, got {frame:?}"),
        None => panic!("the connection stayed open"),
    }
}

/// The connection still answers requests.
async fn expect_open(conn: &mut RawConn) {
    let mut pushed = Vec::new();
    let reply = conn.request(&Message::Status, &mut pushed).await;
    assert!(matches!(reply, Frame::StatusOk { .. }), "{reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_documented_errors_and_harms_nothing() {
    let mut server = Server::start();
    let port = server.port();
    let client = server.client();
    let publisher = client.publisher("before").await.unwrap();
    let mut before = Vec::new();
    for i in 0..4u32 {
        let id = format!("keep-{i}");
        let p = publisher
            .publish_to(
                i % 2,
                NewEvent::new("t", id.clone().into_bytes()).with_id(&id),
            )
            .await
            .unwrap();
        before.push((p.partition, p.offset, id));
    }

    // A length prefix above frame_bytes_max: FrameTooLarge, then close.
    let mut conn = RawConn::handshaken(port).await;
    let too_large = u32::try_from(FRAME_BYTES_MAX + 1).unwrap();
    conn.send_bytes(&too_large.to_le_bytes()).await;
    expect_error(&mut conn, 0, ErrorCode::FrameTooLarge).await;
    expect_closed(&mut conn).await;

    // A zero length prefix, before the handshake: FrameTooLarge, close.
    let mut conn = RawConn::connect(port).await;
    conn.send_bytes(&0u32.to_le_bytes()).await;
    expect_error(&mut conn, 0, ErrorCode::FrameTooLarge).await;
    expect_closed(&mut conn).await;

    // Well-framed garbage that fails verification: MalformedFrame, close.
    let mut conn = RawConn::handshaken(port).await;
    let mut garbage = vec![0u8; 64];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in &mut garbage {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    // The root offset points far outside the buffer: never valid.
    garbage[..4].copy_from_slice(&0x7fff_fff0u32.to_le_bytes());
    let mut frame = (garbage.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&garbage);
    conn.send_bytes(&frame).await;
    expect_error(&mut conn, 0, ErrorCode::MalformedFrame).await;
    expect_closed(&mut conn).await;

    // A truncated frame, then the client goes away: the server carries on.
    // Each connection ends with EOF inside the frame, and the server's
    // close answering it shows that it has read (and survived) all of it.
    let mut conn = RawConn::handshaken(port).await;
    let status = hadron_wire::encode(9, &Message::Status).unwrap();
    conn.send_bytes(&status[..status.len() - 3]).await;
    conn.finish(Duration::from_secs(5)).await;
    let mut conn = RawConn::connect(port).await;
    conn.send_bytes(&100u32.to_le_bytes()).await;
    conn.send_bytes(&[1, 2, 3]).await;
    conn.finish(Duration::from_secs(5)).await;
    assert!(server.is_running(), "the server died:\n{}", server.log());
    expect_open(&mut RawConn::handshaken(port).await).await;

    // A request before the handshake: HandshakeRequired, close.
    let mut conn = RawConn::connect(port).await;
    conn.send_with_id(7, &Message::Status).await;
    expect_error(&mut conn, 7, ErrorCode::HandshakeRequired).await;
    expect_closed(&mut conn).await;

    // A protocol version the server does not speak: UnsupportedVersion,
    // close.
    let mut conn = RawConn::connect(port).await;
    conn.send_with_id(
        3,
        &Message::Handshake(hadron_wire::Handshake {
            version: hadron_wire::PROTOCOL_VERSION + 1,
            token: "",
            client_name: "from-the-future",
        }),
    )
    .await;
    expect_error(&mut conn, 3, ErrorCode::UnsupportedVersion).await;
    expect_closed(&mut conn).await;

    // Request-level errors answer the request and keep the connection.
    let mut conn = RawConn::handshaken(port).await;
    let event = event_bytes("nope-1", "raw", "t", b"never stored");
    let id = conn
        .send(&Message::Publish(hadron_wire::Publish {
            stream: "no-such-stream",
            partition: 0,
            events: vec![&event],
        }))
        .await;
    expect_error(&mut conn, id, ErrorCode::UnknownStream).await;
    expect_open(&mut conn).await;
    let id = conn
        .send(&Message::Publish(hadron_wire::Publish {
            stream: "events",
            partition: 99,
            events: vec![&event],
        }))
        .await;
    expect_error(&mut conn, id, ErrorCode::UnknownPartition).await;
    let id = conn
        .send(&Message::Fetch(hadron_wire::Fetch {
            stream: "events",
            partition: 4,
            offset: 0,
            max_bytes: 0,
        }))
        .await;
    expect_error(&mut conn, id, ErrorCode::UnknownPartition).await;
    let id = conn
        .send(&Message::Nack(hadron_wire::Nack {
            delivery_id: 12_345,
            message: "no such delivery",
        }))
        .await;
    expect_error(&mut conn, id, ErrorCode::UnknownDelivery).await;
    let id = conn
        .send(&Message::Ack(hadron_wire::Ack {
            delivery_ids: vec![12_345],
        }))
        .await;
    expect_error(&mut conn, id, ErrorCode::UnknownDelivery).await;
    // An event that is not an Event flatbuffer: InvalidEvent, nothing of
    // the request written (the valid event beside it neither).
    let id = conn
        .send(&Message::Publish(hadron_wire::Publish {
            stream: "events",
            partition: 0,
            events: vec![&event, b"not an event at all"],
        }))
        .await;
    expect_error(&mut conn, id, ErrorCode::InvalidEvent).await;
    // Fetch beyond the end: OffsetOutOfRange; at the end: nothing, same
    // offset.
    let id = conn
        .send(&Message::Fetch(hadron_wire::Fetch {
            stream: "events",
            partition: 0,
            offset: 100,
            max_bytes: 0,
        }))
        .await;
    expect_error(&mut conn, id, ErrorCode::OffsetOutOfRange).await;
    // Subscriptions to nothing, or without a group name.
    for (stream, group, code) in [
        ("no-such-stream", "g", ErrorCode::UnknownStream),
        ("events", "", ErrorCode::InvalidRequest),
    ] {
        let id = conn
            .send(&Message::Subscribe(hadron_wire::Subscribe {
                stream,
                group,
                durable: false,
                start: hadron_wire::StartPoint::Beginning,
                max_in_flight: 1,
            }))
            .await;
        expect_error(&mut conn, id, code).await;
    }
    // A server-to-client body from a client: InvalidRequest.
    let id = conn.send(&Message::AckOk).await;
    expect_error(&mut conn, id, ErrorCode::InvalidRequest).await;
    expect_open(&mut conn).await;
    conn.close().await;

    // After all of it: the server runs, old data is intact, and a normal
    // publish succeeds at the next offset.
    assert!(server.is_running(), "the server died:\n{}", server.log());
    let end = client.fetch("events", 0, 2, 0).await.unwrap();
    assert_eq!((end.next_offset, end.records.len()), (2, 0), "at the end");
    for partition in 0..2u32 {
        let records = fetch_all(&client, "events", partition).await;
        let got: Vec<(u32, u64, String)> = records
            .iter()
            .map(|(o, e)| (partition, *o, e.id.clone()))
            .collect();
        let want: Vec<(u32, u64, String)> = before
            .iter()
            .filter(|(p, _, _)| *p == partition)
            .cloned()
            .collect();
        assert_eq!(
            got, want,
            "partition {partition} holds exactly the earlier events"
        );
    }
    let p = publisher
        .publish_to(0, NewEvent::new("t", b"after".to_vec()).with_id("after-1"))
        .await
        .unwrap();
    assert_eq!((p.partition, p.offset, p.duplicate), (0, 2, false));
}

/// Handshake with `token` on `port`: the reply frame.
async fn handshake_with(port: u16, token: &str) -> (RawConn, Option<Frame>) {
    let mut conn = RawConn::connect(port).await;
    conn.send_with_id(
        9,
        &Message::Handshake(hadron_wire::Handshake {
            version: hadron_wire::PROTOCOL_VERSION,
            token,
            client_name: "token-test",
        }),
    )
    .await;
    let reply = conn.recv().await;
    (conn, reply)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_a_token_admits_only_clients_that_present_it() {
    const SECRET: &str = "e2e-s3cret-token";
    let server = Server::start_with(hadron_tests::ServerOptions {
        shards: 2,
        token: Some(SECRET.into()),
        ..hadron_tests::ServerOptions::default()
    });

    // Missing or wrong, on the shared port and on a shard port:
    // Unauthorized, naming which, then the connection closes.
    for port in [server.port(), server.shard_port(1)] {
        for (token, says) in [("", "missing"), ("e2e-s3cret-tokem", "wrong")] {
            let (mut conn, reply) = handshake_with(port, token).await;
            match reply {
                Some(Frame::Error {
                    request_id: 9,
                    code: ErrorCode::Unauthorized,
                    message,
                }) => assert!(message.contains(says), "{message}"),
                other => panic!("expected Unauthorized for {token:?}, got {other:?}"),
            }
            expect_closed(&mut conn).await;
        }
        let (_conn, reply) = handshake_with(port, SECRET).await;
        assert!(
            matches!(reply, Some(Frame::HandshakeOk { request_id: 9, .. })),
            "{reply:?}"
        );
    }

    // The client library: with the token it publishes and reads back; a
    // client without it gets an error that points at the token.
    let client = server.client();
    let publisher = client.publisher("events").await.unwrap();
    let p = publisher
        .publish_to(1, NewEvent::new("t", b"admitted".to_vec()).with_id("tok-1"))
        .await
        .unwrap();
    let stored = fetch_all(&client, "events", 1).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(
        (stored[0].0, stored[0].1.data.as_slice()),
        (p.offset, &b"admitted"[..])
    );
    let stranger = server.client_with(hadron::ClientOptions::default());
    let refused = match stranger.publisher("events").await {
        Ok(publisher) => publisher
            .publish_to(0, NewEvent::new("t", b"refused".to_vec()).with_id("tok-2"))
            .await
            .map(|_| ())
            .unwrap_err()
            .to_string(),
        Err(e) => e.to_string(),
    };
    assert!(refused.contains("token"), "{refused}");
    assert_eq!(fetch_all(&client, "events", 0).await.len(), 0);

    // The CLI reads HADRON_TOKEN.
    let url = server.addr();
    let out = hadron_tests::run_cli_with_token(
        &["status", "--json", "--url", &url],
        None,
        Duration::from_secs(30),
    );
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("token"), "{out:?}");
    let out = hadron_tests::run_cli_with_token(
        &["status", "--json", "--url", &url],
        Some(SECRET),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{out:?}");

    // The secret never reaches the log.
    assert!(!server.log().contains(SECRET));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_a_token_admits_any_handshake() {
    let server = Server::start();
    for token in ["", "anything"] {
        let (_conn, reply) = handshake_with(server.port(), token).await;
        assert!(
            matches!(reply, Some(Frame::HandshakeOk { request_id: 9, .. })),
            "{token:?}: {reply:?}"
        );
    }
}

/// A frame whose `request_id` is 0 (reserved for the server's own frames)
/// is refused with InvalidRequest; after the handshake the connection
/// stays open, before it the connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_of_zero_is_refused() {
    let server = Server::start();
    let mut conn = RawConn::handshaken(server.port()).await;
    conn.send_with_id(0, &Message::Status).await;
    let message = expect_error(&mut conn, 0, ErrorCode::InvalidRequest).await;
    assert!(message.contains("request_id 0"), "{message}");
    expect_open(&mut conn).await;

    let mut fresh = RawConn::connect(server.port()).await;
    fresh
        .send_with_id(
            0,
            &Message::Handshake(hadron_wire::Handshake {
                version: hadron_wire::PROTOCOL_VERSION,
                token: "",
                client_name: "zero",
            }),
        )
        .await;
    expect_error(&mut fresh, 0, ErrorCode::InvalidRequest).await;
    expect_closed(&mut fresh).await;
}

/// A frame with body tag 0 (no body) is answered InvalidRequest for its
/// request id; the connection stays open after the handshake and is
/// closed before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_with_no_body_is_refused() {
    let server = Server::start();
    let no_body = |request_id: u64| {
        let mut builder = flatbuffers::FlatBufferBuilder::new();
        let frame = hadron_wire::fb::Frame::create(
            &mut builder,
            &hadron_wire::fb::FrameArgs {
                request_id,
                ..Default::default()
            },
        );
        builder.finish(frame, None);
        let body = builder.finished_data();
        let mut bytes = (body.len() as u32).to_le_bytes().to_vec();
        bytes.extend_from_slice(body);
        bytes
    };
    let mut conn = RawConn::handshaken(server.port()).await;
    conn.send_bytes(&no_body(41)).await;
    expect_error(&mut conn, 41, ErrorCode::InvalidRequest).await;
    expect_open(&mut conn).await;

    let mut fresh = RawConn::connect(server.port()).await;
    fresh.send_bytes(&no_body(42)).await;
    expect_error(&mut fresh, 42, ErrorCode::InvalidRequest).await;
    expect_closed(&mut fresh).await;
}

// ------------------------------------------------------------- Metadata

const FULFIL_PIPELINE: &str = "apiVersion: hadron.rs/v1beta1
kind: Pipeline
metadata: { name: fulfil }
spec:
  sourceStream: orders
  stages:
    - name: reserve
    - name: ship
      dependencies: [reserve]
";

/// `Metadata` lists every stream with each partition's owner (the shard
/// `shard_of` names, and the one Status reports), the handshake's shard
/// ports and placement, and the pipelines with their stages; every shard
/// answers the same; a stream filter narrows streams and pipelines; and
/// the client's partition counts come from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_lists_streams_partition_owners_and_pipelines() {
    let server = Server::start_with(hadron_tests::ServerOptions {
        shards: 2,
        ..Default::default()
    });
    let client = server.client();
    hadron_tests::create_stream(&client, "orders", 3).await;
    client.apply(FULFIL_PIPELINE).await.unwrap();

    let metadata = client.metadata().await.unwrap();
    let (_conn, handshake) = handshake_with(server.port(), "").await;
    let Some(Frame::HandshakeOk {
        shards,
        shard_ports,
        ..
    }) = handshake
    else {
        panic!("expected HandshakeOk, got {handshake:?}");
    };
    assert_eq!((metadata.shards, shards), (2, 2));
    assert_eq!(
        shard_ports,
        vec![server.shard_port(0), server.shard_port(1)]
    );
    assert_eq!(metadata.shard_ports, shard_ports);
    assert_eq!(metadata.placement, hadron_wire::PLACEMENT_NAME);

    let status = hadron_tests::status(&client).await;
    let names: Vec<&str> = metadata.streams.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, vec!["events", "orders"]);
    for stream in &metadata.streams {
        let in_status = hadron_tests::stream_partitions(&status, &stream.name);
        assert_eq!(stream.partitions.len(), in_status.len(), "{}", stream.name);
        for (i, p) in stream.partitions.iter().enumerate() {
            assert_eq!(p.partition as usize, i, "{}", stream.name);
            assert_eq!(
                p.shard,
                hadron_wire::shard_of(&stream.name, p.partition, 2),
                "{}/{}",
                stream.name,
                p.partition
            );
            assert_eq!(
                in_status[i]["shard"].as_u64(),
                Some(u64::from(p.shard)),
                "{}/{}: the owner Status reports",
                stream.name,
                p.partition
            );
        }
    }
    assert_eq!(metadata.stream("orders").unwrap().partition_count(), 3);
    let owners: std::collections::BTreeSet<u16> = metadata
        .stream("orders")
        .unwrap()
        .partitions
        .iter()
        .map(|p| p.shard)
        .collect();
    assert_eq!(owners.len(), 2, "orders spans both shards: {owners:?}");
    assert_eq!(metadata.pipelines.len(), 1);
    let fulfil = metadata.pipeline("fulfil").unwrap();
    assert_eq!(fulfil.source_stream, "orders");
    assert_eq!(fulfil.stages, vec!["reserve".to_owned(), "ship".to_owned()]);

    // Every shard answers the same, on its own port (its own handshake).
    for shard in 0..2 {
        let url = format!("127.0.0.1:{}", server.shard_port(shard));
        let direct = hadron::Client::new(&url, hadron::ClientOptions::default()).unwrap();
        assert_eq!(direct.metadata().await.unwrap(), metadata, "shard {shard}");
    }

    // A filter: only the streams named (unknown names left out) and the
    // pipelines reading from them.
    let orders = client.metadata_for(&["orders", "no-such"]).await.unwrap();
    assert_eq!(
        orders.streams,
        vec![metadata.stream("orders").unwrap().clone()]
    );
    assert_eq!(orders.pipelines, metadata.pipelines);
    let events = client.metadata_for(&["events"]).await.unwrap();
    assert_eq!(
        events.streams,
        vec![metadata.stream("events").unwrap().clone()]
    );
    assert!(events.pipelines.is_empty(), "{:?}", events.pipelines);

    // The client's partition counts agree, and publishing routes by them.
    assert_eq!(client.partitions("orders").await.unwrap(), 3);
    let publisher = client
        .publisher_for("orders", "metadata-e2e")
        .await
        .unwrap();
    let p = publisher
        .publish_to(2, NewEvent::new("t", b"x".to_vec()))
        .await
        .unwrap();
    assert_eq!((p.partition, p.offset), (2, 0));
}
