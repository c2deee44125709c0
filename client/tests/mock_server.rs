//! Drives the real client against a small in-test server that speaks the
//! framed protocol through `hadron-wire`, and checks both what the server
//! received and what the client returned.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions unwrap"
)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use hadron_wire::{
    ErrorCode, ErrorReply, FrameRef, HandshakeOk, Limits, Message, MetadataOk, NodeInfo,
    PLACEMENT_NAME, PartitionInfo, PipelineInfo, PublishOk, PublishResult, StageDelivery,
    StageInput, StatusOk, StreamInfo, SubscribeOk, decode, decode_event, encode, fnv1a64, shard_of,
    split_frame,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// What the mock does after a frame.
enum Out {
    Frame(Vec<u8>),
    Close,
}

fn frame(request_id: u64, message: &Message<'_>) -> Out {
    Out::Frame(encode(request_id, message).unwrap())
}

/// Per-connection state the behaviours may use.
#[derive(Default)]
struct ConnState {
    /// Which listener accepted the connection (0 = main port).
    listener: usize,
    /// Requests held back to answer later (request id, offset to answer).
    held: Vec<(u64, u32, u64)>,
}

/// A frame the mock received (handshakes included), with where it arrived.
#[derive(Clone)]
struct Seen {
    listener: usize,
    conn: usize,
    body: Vec<u8>,
}

impl Seen {
    fn frame(&self) -> FrameRef<'_> {
        decode(&self.body, &Limits::DEFAULT).unwrap()
    }
}

type Behavior = Arc<dyn Fn(&mut ConnState, &FrameRef<'_>) -> Vec<Out> + Send + Sync>;

struct Mock {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Connections whose `serve` ended (the client closed them, or the
    /// behaviour did), by number.
    ended: Arc<Mutex<HashSet<usize>>>,
    /// Notified whenever a frame is received or a connection ends.
    changed: Arc<Notify>,
    shard_ports: Vec<u16>,
    /// The listeners' and connections' tasks, for `kill`.
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

/// How long a test waits for the client to do what it expects.
const WAIT_MAX: Duration = Duration::from_secs(5);

impl Mock {
    /// Starts a mock with `shard_listeners` extra ports reported as shard
    /// ports (0: none, the handshake reports no shard ports).
    async fn start(shard_listeners: usize, behavior: Behavior) -> Mock {
        let main = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut listeners = vec![main];
        for _ in 0..shard_listeners {
            listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
        }
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        let shard_ports = ports[1..].to_vec();
        let url = format!("http://127.0.0.1:{}", ports[0]);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let ended: Arc<Mutex<HashSet<usize>>> = Arc::default();
        let changed = Arc::new(Notify::new());
        let conns = Arc::new(AtomicUsize::new(0));
        let tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        for (index, listener) in listeners.into_iter().enumerate() {
            let behavior = Arc::clone(&behavior);
            let seen = Arc::clone(&seen);
            let ended = Arc::clone(&ended);
            let changed = Arc::clone(&changed);
            let conns = Arc::clone(&conns);
            let shard_ports = shard_ports.clone();
            let conn_tasks = Arc::clone(&tasks);
            let accepting = tokio::spawn(async move {
                loop {
                    let (socket, _) = listener.accept().await.unwrap();
                    let conn = conns.fetch_add(1, Ordering::SeqCst);
                    let state = ConnState {
                        listener: index,
                        ..ConnState::default()
                    };
                    let serving = serve(
                        socket,
                        state,
                        conn,
                        Arc::clone(&behavior),
                        Arc::clone(&seen),
                        Arc::clone(&changed),
                        shard_ports.clone(),
                    );
                    let ended = Arc::clone(&ended);
                    let changed = Arc::clone(&changed);
                    let serving = tokio::spawn(async move {
                        serving.await;
                        ended.lock().unwrap().insert(conn);
                        changed.notify_waiters();
                    });
                    conn_tasks.lock().unwrap().push(serving.abort_handle());
                }
            });
            tasks.lock().unwrap().push(accepting.abort_handle());
        }
        Mock {
            url,
            seen,
            ended,
            changed,
            shard_ports,
            tasks,
        }
    }

    /// Stops the node as SIGKILL would: its ports stop listening and its
    /// open connections close, answering nothing more. Returns once the
    /// ports refuse connections.
    async fn kill(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
        let addr = self.url.trim_start_matches("http://").to_owned();
        let deadline = tokio::time::Instant::now() + WAIT_MAX;
        while tokio::net::TcpStream::connect(&addr).await.is_ok() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{addr} still accepts connections"
            );
            tokio::task::yield_now().await;
        }
    }

    /// Waits until `check` holds, re-checking whenever a frame arrives or
    /// a connection ends; panics naming `what` after [`WAIT_MAX`].
    async fn until(&self, what: &str, mut check: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT_MAX;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if check() {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("{what}: not within {WAIT_MAX:?}");
            }
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Received frames whose message `pick` accepts, mapped by it.
    fn picked<T>(&self, pick: impl Fn(&Seen, &FrameRef<'_>) -> Option<T>) -> Vec<T> {
        self.seen()
            .iter()
            .filter_map(|s| pick(s, &s.frame()))
            .collect()
    }

    /// Waits until `pick` matches at least `n` received frames.
    async fn wait_for<T>(
        &self,
        n: usize,
        pick: impl Fn(&Seen, &FrameRef<'_>) -> Option<T>,
    ) -> Vec<T> {
        let mut got = Vec::new();
        self.until(&format!("the mock receives {n} matching frames"), || {
            got = self.picked(&pick);
            got.len() >= n
        })
        .await;
        got
    }

    /// Waits until every connection that carried a frame `pick` accepts
    /// has ended. The client closes a connection's write side only after
    /// its last queued frame, so from then on `seen` holds every frame it
    /// sent on them: the barrier for "nothing more arrives".
    async fn wait_ended(&self, pick: impl Fn(&FrameRef<'_>) -> bool) {
        let conns: HashSet<usize> = self
            .seen()
            .iter()
            .filter(|s| pick(&s.frame()))
            .map(|s| s.conn)
            .collect();
        assert!(!conns.is_empty(), "no connection carried such a frame");
        self.until(&format!("the client closes connections {conns:?}"), || {
            conns.is_subset(&self.ended.lock().unwrap())
        })
        .await;
    }
}

async fn serve(
    mut socket: tokio::net::TcpStream,
    mut state: ConnState,
    conn: usize,
    behavior: Behavior,
    seen: Arc<Mutex<Vec<Seen>>>,
    changed: Arc<Notify>,
    shard_ports: Vec<u16>,
) {
    let mut buf = BytesMut::new();
    loop {
        while let Some((body, total)) = split_frame(&buf, &Limits::DEFAULT).unwrap() {
            seen.lock().unwrap().push(Seen {
                listener: state.listener,
                conn,
                body: body.to_vec(),
            });
            changed.notify_waiters();
            let f = decode(body, &Limits::DEFAULT).unwrap();
            let outs = match &f.message {
                Message::Handshake(h) => {
                    assert_eq!(h.version, hadron_wire::PROTOCOL_VERSION);
                    let shards = u16::try_from(shard_ports.len().max(1)).unwrap();
                    vec![frame(
                        f.request_id,
                        &Message::HandshakeOk(HandshakeOk {
                            version: 1,
                            shards,
                            shard_ports: shard_ports.clone(),
                            placement: PLACEMENT_NAME,
                        }),
                    )]
                }
                _ => behavior(&mut state, &f),
            };
            buf.advance(total);
            for out in outs {
                match out {
                    Out::Frame(bytes) => socket.write_all(&bytes).await.unwrap(),
                    Out::Close => return,
                }
            }
        }
        match socket.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

const STATUS_JSON: &str = r#"{"shards":1,"streams":[{"name":"events","partitions":[{"partition":0},{"partition":1},{"partition":2},{"partition":3}]}]}"#;

/// Answers Status with `STATUS_JSON` and Publish with offsets counted per
/// partition across all connections; everything else with `InvalidRequest`.
fn log_server() -> Behavior {
    let next: Arc<Mutex<HashMap<u32, u64>>> = Arc::default();
    Arc::new(move |_state, f| match &f.message {
        Message::Status => vec![frame(
            f.request_id,
            &Message::StatusOk(StatusOk { json: STATUS_JSON }),
        )],
        Message::Publish(p) => {
            let mut next = next.lock().unwrap();
            let at = next.entry(p.partition).or_insert(0);
            let first = *at;
            let results = p
                .events
                .iter()
                .map(|_| {
                    *at += 1;
                    PublishResult {
                        offset: *at - 1,
                        duplicate: false,
                    }
                })
                .collect();
            vec![frame(
                f.request_id,
                &Message::PublishOk(PublishOk {
                    partition: p.partition,
                    first_offset: first,
                    last_offset: *at - 1,
                    results,
                }),
            )]
        }
        other => vec![frame(
            f.request_id,
            &Message::Error(ErrorReply {
                code: ErrorCode::InvalidRequest,
                message: other.name(),
                leader: None,
            }),
        )],
    })
}

fn fast_options() -> hadron::ClientOptions {
    hadron::ClientOptions {
        name: "mock-test".into(),
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        request_timeout: Duration::from_secs(5),
        ..Default::default()
    }
}

/// Events carried by the Publish frames the mock received, with their
/// partition.
fn published_events(mock: &Mock) -> Vec<(u32, hadron::Event)> {
    mock.picked(|_, f| match &f.message {
        Message::Publish(p) => Some(
            p.events
                .iter()
                .map(|e| (p.partition, hadron::Event::decode(e).unwrap()))
                .collect::<Vec<_>>(),
        ),
        _ => None,
    })
    .into_iter()
    .flatten()
    .collect()
}

#[tokio::test]
async fn publish_fills_ids_and_picks_partitions_by_key() {
    let mock = Mock::start(0, log_server()).await;
    let client = hadron::Client::new(&mock.url, fast_options()).unwrap();
    let publisher = client.publisher("example-cloud-app").await.unwrap();
    assert_eq!(publisher.stream_name(), "events");

    let event = hadron::NewEvent {
        ty: "service.created".into(),
        subject: Some("svc-42".into()),
        data: b"{\"plan\":\"small\"}".to_vec(),
        ..Default::default()
    };
    let first = publisher.publish(event.clone()).await.unwrap();
    let expected_partition = u32::try_from(fnv1a64(b"svc-42") % 4).unwrap();
    assert_eq!(
        first,
        hadron::Published {
            partition: expected_partition,
            offset: 0,
            duplicate: false
        }
    );
    let second = publisher.publish(event).await.unwrap();
    assert_eq!(
        second.partition, expected_partition,
        "same subject, same partition"
    );
    assert_eq!(second.offset, 1);

    let explicit = publisher
        .publish_to(
            2,
            hadron::NewEvent::new("t", b"x".to_vec()).with_id("fixed"),
        )
        .await
        .unwrap();
    assert_eq!(explicit.partition, 2);

    let events = published_events(&mock);
    assert_eq!(events.len(), 3);
    let (p, e) = &events[0];
    assert_eq!(*p, expected_partition);
    assert_eq!(
        e.source, "example-cloud-app",
        "the publisher name is the default source"
    );
    assert!(e.id.starts_with("example-cloud-app-"), "{}", e.id);
    assert_eq!(e.ty, "service.created");
    assert_eq!(e.specversion, "1.0");
    assert_eq!(e.subject.as_deref(), Some("svc-42"));
    assert_eq!(e.data, b"{\"plan\":\"small\"}");
    assert_ne!(events[0].1.id, events[1].1.id, "generated ids are unique");
    assert_eq!(events[2].1.id, "fixed");

    // Status was asked once: the partition count is cached.
    let statuses = mock.picked(|_, f| matches!(f.message, Message::Status).then_some(()));
    assert_eq!(statuses.len(), 1);
    // The handshake carried the client name.
    let names = mock.picked(|_, f| match &f.message {
        Message::Handshake(h) => Some(h.client_name.to_owned()),
        _ => None,
    });
    assert_eq!(names, vec!["mock-test".to_owned()]);
}

#[tokio::test]
async fn publish_batch_sends_one_frame_per_partition_in_order() {
    let mock = Mock::start(0, log_server()).await;
    let client = hadron::Client::new(&mock.url, fast_options()).unwrap();
    let publisher = client.publisher("batcher").await.unwrap();
    let events: Vec<hadron::NewEvent> = (0..20)
        .map(|i| hadron::NewEvent::new("t", vec![i]).with_subject(format!("key-{}", i % 6)))
        .collect();
    let results = publisher.publish_batch(events.clone()).await.unwrap();
    assert_eq!(results.len(), 20);
    let partitions: HashSet<u32> = events.iter().map(|e| key_partition(e, 4)).collect();
    let frames = mock.picked(|_, f| match &f.message {
        Message::Publish(p) => Some(p.partition),
        _ => None,
    });
    assert_eq!(frames.len(), partitions.len(), "one Publish per partition");
    let mut next: BTreeMap<u32, u64> = BTreeMap::new();
    for (event, result) in events.iter().zip(&results) {
        assert_eq!(result.partition, key_partition(event, 4));
        // Within a partition, offsets follow the input order.
        let want = next.entry(result.partition).or_insert(0);
        assert_eq!(result.offset, *want);
        *want += 1;
    }
    // The stored bytes are the input events, in order per partition.
    let stored = published_events(&mock);
    for (event, result) in events.iter().zip(&results) {
        let in_partition: Vec<_> = stored
            .iter()
            .filter(|(p, _)| *p == result.partition)
            .collect();
        let offset = usize::try_from(result.offset).unwrap();
        assert_eq!(in_partition[offset].1.data, event.data);
    }
}

fn key_partition(event: &hadron::NewEvent, partitions: u64) -> u32 {
    let subject = event.subject.as_deref().unwrap();
    u32::try_from(fnv1a64(subject.as_bytes()) % partitions).unwrap()
}

#[tokio::test]
async fn pipelined_publishes_are_matched_by_request_id_out_of_order() {
    const N: usize = 32;
    // Hold every publish until all N are in flight at once, then answer
    // them in reverse order, each with an offset derived from its event.
    let behavior: Behavior = Arc::new(|state, f| match &f.message {
        Message::Publish(p) => {
            let event = decode_event(p.events[0], &Limits::DEFAULT).unwrap();
            let index: u64 = u64::from(event.data[0]);
            state.held.push((f.request_id, p.partition, 1000 + index));
            if state.held.len() < N {
                return Vec::new();
            }
            state
                .held
                .drain(..)
                .rev()
                .map(|(id, partition, offset)| {
                    frame(
                        id,
                        &Message::PublishOk(PublishOk {
                            partition,
                            first_offset: offset,
                            last_offset: offset,
                            results: vec![PublishResult {
                                offset,
                                duplicate: false,
                            }],
                        }),
                    )
                })
                .collect()
        }
        _ => Vec::new(),
    });
    let mock = Mock::start(0, behavior).await;
    let client = hadron::Client::new(&mock.url, fast_options()).unwrap();
    let publisher = client.publisher("pipeliner").await.unwrap();
    let sends = (0..N).map(|i| {
        let publisher = publisher.clone();
        async move {
            let event = hadron::NewEvent::new("t", vec![u8::try_from(i).unwrap()]);
            publisher.publish_to(1, event).await
        }
    });
    let results = futures::future::join_all(sends).await;
    for (i, result) in results.into_iter().enumerate() {
        let published = result.unwrap();
        assert_eq!(
            published.offset,
            1000 + i as u64,
            "answer {i} matched by id"
        );
        assert_eq!(published.partition, 1);
    }
    let seen = mock.seen();
    let ids: Vec<u64> = seen
        .iter()
        .filter(|s| matches!(s.frame().message, Message::Publish(_)))
        .map(|s| s.frame().request_id)
        .collect();
    assert_eq!(ids.len(), N);
    assert!(ids.iter().all(|id| *id != 0), "request ids are never 0");
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        N,
        "ids are distinct"
    );
    assert!(
        seen.iter().all(|s| s.conn == seen[0].conn),
        "all on one connection"
    );
}

#[tokio::test]
async fn lost_answer_is_retried_with_the_same_id_on_the_same_partition() {
    let publishes = Arc::new(AtomicUsize::new(0));
    let inner = log_server();
    let count = Arc::clone(&publishes);
    let behavior: Behavior = Arc::new(move |state, f| {
        if matches!(f.message, Message::Publish(_)) && count.fetch_add(1, Ordering::SeqCst) == 0 {
            // The first publish "gets lost": the connection dies before the
            // answer.
            return vec![Out::Close];
        }
        inner(state, f)
    });
    let mock = Mock::start(0, behavior).await;
    let client = hadron::Client::new(&mock.url, fast_options()).unwrap();
    let publisher = client.publisher("retrier").await.unwrap();
    let published = publisher
        .publish(hadron::NewEvent::new("t", b"once".to_vec()))
        .await
        .unwrap();
    let events = published_events(&mock);
    assert_eq!(events.len(), 2, "sent twice");
    assert_eq!(events[0], events[1], "same event (id, source, partition)");
    assert_eq!(events[1].0, published.partition);
    let conns: HashSet<usize> = mock
        .seen()
        .iter()
        .filter(|s| matches!(s.frame().message, Message::Publish(_)))
        .map(|s| s.conn)
        .collect();
    assert_eq!(conns.len(), 2, "the retry went over a new connection");
}

/// A `MetadataOk` of one shard with stream `events` (4 partitions) and
/// stream `orders` (3), and pipeline `fulfil` on `orders`.
fn metadata_ok() -> Message<'static> {
    let partitions = |n: u32| {
        (0..n)
            .map(|partition| PartitionInfo {
                partition,
                shard: 0,
                leader: None,
            })
            .collect()
    };
    Message::MetadataOk(MetadataOk {
        shards: 1,
        shard_ports: Vec::new(),
        placement: PLACEMENT_NAME,
        streams: vec![
            StreamInfo {
                name: "events",
                partitions: partitions(4),
            },
            StreamInfo {
                name: "orders",
                partitions: partitions(3),
            },
        ],
        pipelines: vec![PipelineInfo {
            name: "fulfil",
            source_stream: "orders",
            stages: vec!["reserve", "ship"],
        }],
        nodes: Vec::new(),
    })
}

/// The client learns partition counts from `Metadata`: once for every
/// stream, without asking for the status document.
#[tokio::test]
async fn partition_counts_come_from_metadata() {
    let behavior: Behavior = Arc::new(|_state, f| match &f.message {
        Message::Metadata(_) => vec![frame(f.request_id, &metadata_ok())],
        other => vec![frame(
            f.request_id,
            &Message::Error(ErrorReply {
                code: ErrorCode::InvalidRequest,
                message: other.name(),
                leader: None,
            }),
        )],
    });
    let mock = Mock::start(0, behavior).await;
    let client = hadron::Client::new(&mock.url, fast_options()).unwrap();
    assert_eq!(client.partitions("orders").await.unwrap(), 3);
    assert_eq!(client.partitions("events").await.unwrap(), 4);
    let err = client.partitions("missing").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnknownStream), "{err}");
    assert!(err.to_string().contains("missing"), "{err}");

    let metadata = client.metadata().await.unwrap();
    assert_eq!(metadata.shards, 1);
    assert_eq!(metadata.placement, PLACEMENT_NAME);
    let orders = metadata.stream("orders").unwrap();
    assert_eq!(orders.partition_count(), 3);
    assert!(orders.partitions.iter().all(|p| p.shard == 0));
    let fulfil = metadata.pipeline("fulfil").unwrap();
    assert_eq!(fulfil.source_stream, "orders");
    assert_eq!(fulfil.stages, vec!["reserve".to_owned(), "ship".to_owned()]);

    let asked = mock.picked(|_, f| match &f.message {
        Message::Metadata(m) => Some(m.streams.len()),
        _ => None,
    });
    // One for the cached counts, one for the unknown stream, one for
    // `metadata()`; each asks for every stream.
    assert_eq!(asked, vec![0, 0, 0]);
    let statuses = mock.picked(|_, f| matches!(f.message, Message::Status).then_some(()));
    assert!(statuses.is_empty(), "the status document was not needed");
}

/// A server older than `Metadata` answers it `InvalidRequest`; the client
/// then reads the partition counts from the status document.
#[tokio::test]
async fn partition_counts_fall_back_to_status_on_a_server_without_metadata() {
    let mock = Mock::start(0, log_server()).await;
    let client = hadron::Client::new(&mock.url, fast_options()).unwrap();
    assert_eq!(client.partitions("events").await.unwrap(), 4);
    let err = client.metadata().await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidRequest), "{err}");
    let order = mock.picked(|_, f| match &f.message {
        Message::Metadata(_) | Message::Status => Some(f.message.name()),
        _ => None,
    });
    assert_eq!(order, vec!["Metadata", "Status", "Metadata"]);
}

#[tokio::test]
async fn server_errors_are_typed() {
    let behavior: Behavior = Arc::new(|_state, f| match &f.message {
        Message::Metadata(_) => vec![frame(f.request_id, &metadata_ok())],
        Message::Publish(_) => vec![frame(
            f.request_id,
            &Message::Error(ErrorReply {
                code: ErrorCode::ReadOnly,
                message: "partition 3 is read-only",
                leader: None,
            }),
        )],
        _ => Vec::new(),
    });
    let mock = Mock::start(0, behavior).await;
    let client = hadron::Client::new(&mock.url, fast_options()).unwrap();
    let publisher = client.publisher_for("missing", "p").await.unwrap();
    let err = publisher
        .publish(hadron::NewEvent::new("t", Vec::new()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnknownStream), "{err}");
    let err = publisher
        .stream("events")
        .publish_to(3, hadron::NewEvent::new("t", Vec::new()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ReadOnly), "{err}");
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("partition 3 is read-only"));
}

#[tokio::test]
async fn connect_failure_is_a_retryable_error() {
    // A port nobody listens on: bind, read the port, close.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let client = hadron::Client::new(&format!("127.0.0.1:{port}"), fast_options()).unwrap();
    let err = client.publisher("p").await.unwrap_err();
    assert!(matches!(err, hadron::Error::Connect { .. }), "{err}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn shard_aware_client_sends_each_partition_to_its_owner() {
    let mock = Mock::start(2, log_server()).await;
    let client = hadron::Client::new(&mock.url, fast_options()).unwrap();
    let info = client.server_info().await.unwrap();
    assert_eq!(info.shards, 2);
    assert_eq!(info.shard_ports, mock.shard_ports);
    let publisher = client.publisher("sharded").await.unwrap();
    for partition in 0..4 {
        publisher
            .publish_to(partition, hadron::NewEvent::new("t", Vec::new()))
            .await
            .unwrap();
    }
    let arrivals = mock.picked(|s, f| match &f.message {
        Message::Publish(p) => Some((p.partition, s.listener)),
        _ => None,
    });
    assert_eq!(arrivals.len(), 4);
    for (partition, listener) in arrivals {
        let owner = usize::from(shard_of("events", partition, 2));
        assert_eq!(
            listener,
            owner + 1,
            "partition {partition} went to shard {owner}'s port"
        );
    }
}

fn delivery_event(ty: &str, data: &[u8]) -> Vec<u8> {
    hadron_wire::Event {
        id: format!("id-{ty}"),
        source: "src".into(),
        ty: ty.into(),
        data: data.to_vec(),
        ..hadron_wire::Event::default()
    }
    .encode()
}

/// Answers Subscribe with SubscribeOk and pushes `deliveries` (id, type);
/// answers Ack/Nack/StageAck/StageNack with AckOk.
fn subscription_server(deliveries: Vec<(u64, &'static str)>, close_first: bool) -> Behavior {
    let subscribes = Arc::new(AtomicUsize::new(0));
    Arc::new(move |_state, f| match &f.message {
        Message::Subscribe(_) => {
            let n = subscribes.fetch_add(1, Ordering::SeqCst);
            let mut out = vec![frame(
                f.request_id,
                &Message::SubscribeOk(SubscribeOk {
                    subscription_id: 77,
                    partitions: vec![0, 1],
                }),
            )];
            if close_first && n == 0 {
                out.push(Out::Close);
                return out;
            }
            for (id, ty) in &deliveries {
                let event = delivery_event(ty, b"payload");
                out.push(frame(
                    0,
                    &Message::Delivery(hadron_wire::Delivery {
                        subscription_id: 77,
                        delivery_id: *id,
                        stream: "events",
                        partition: 1,
                        offset: 40 + *id,
                        attempt: 2,
                        event: &event,
                    }),
                ));
            }
            out
        }
        Message::Ack(_) | Message::Nack(_) | Message::StageAck(_) | Message::StageNack(_) => {
            vec![frame(f.request_id, &Message::AckOk)]
        }
        _ => Vec::new(),
    })
}

#[tokio::test]
async fn subscription_acks_ok_and_nacks_errors() {
    let mock = Mock::start(0, subscription_server(vec![(5, "ok"), (6, "fail")], false)).await;
    let client = hadron::Client::new(&mock.url, fast_options()).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let options = hadron::SubscribeOptions {
        durable: false,
        start: hadron::StartPoint::Offset(9),
        max_in_flight: 4,
    };
    let subscription = client
        .subscribe("events", "billing", options, move |d: hadron::Delivery| {
            let tx = tx.clone();
            async move {
                let fail = d.event.ty == "fail";
                tx.send(d).unwrap();
                if fail { Err("boom: try later") } else { Ok(()) }
            }
        })
        .await
        .unwrap();
    assert_eq!(subscription.id(), 77);
    assert_eq!(subscription.partitions(), &[0, 1]);

    let subscribe = mock
        .wait_for(1, |_, f| match &f.message {
            Message::Subscribe(s) => Some((
                s.stream.to_owned(),
                s.group.to_owned(),
                s.durable,
                s.start,
                s.max_in_flight,
            )),
            _ => None,
        })
        .await;
    assert_eq!(
        subscribe[0],
        (
            "events".to_owned(),
            "billing".to_owned(),
            false,
            hadron_wire::StartPoint::Offset(9),
            4
        )
    );

    let acks = mock
        .wait_for(1, |_, f| match &f.message {
            Message::Ack(a) => Some(a.delivery_ids.clone()),
            _ => None,
        })
        .await;
    assert_eq!(acks, vec![vec![5]]);
    let nacks = mock
        .wait_for(1, |_, f| match &f.message {
            Message::Nack(n) => Some((n.delivery_id, n.message.to_owned())),
            _ => None,
        })
        .await;
    assert_eq!(nacks, vec![(6, "boom: try later".to_owned())]);

    let mut got = [rx.recv().await.unwrap(), rx.recv().await.unwrap()];
    got.sort_by_key(|d| d.delivery_id);
    assert_eq!(got[0].stream, "events");
    assert_eq!(got[0].partition, 1);
    assert_eq!(got[0].offset, 45);
    assert_eq!(got[0].attempt, 2);
    assert_eq!(got[0].subscription_id, 77);
    assert_eq!(got[0].event.ty, "ok");
    assert_eq!(got[0].event.id, "id-ok");
    assert_eq!(got[0].event.data, b"payload");
    assert_eq!(got[1].event.ty, "fail");

    subscription.stop().await.unwrap();
}

#[tokio::test]
async fn subscription_resubscribes_after_disconnect() {
    let mock = Mock::start(0, subscription_server(vec![(1, "ok")], true)).await;
    let client = hadron::Client::new(&mock.url, fast_options()).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let subscription = client
        .subscribe(
            "events",
            "g",
            hadron::SubscribeOptions::default(),
            move |d: hadron::Delivery| {
                let tx = tx.clone();
                async move {
                    tx.send(d.delivery_id).unwrap();
                    Ok::<(), std::io::Error>(())
                }
            },
        )
        .await
        .unwrap();
    let id = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(id, 1);
    let subscribes =
        mock.picked(|s, f| matches!(f.message, Message::Subscribe(_)).then_some(s.conn));
    assert_eq!(subscribes.len(), 2, "subscribed again after the disconnect");
    assert_ne!(subscribes[0], subscribes[1], "on a new connection");
    mock.wait_for(1, |_, f| matches!(f.message, Message::Ack(_)).then_some(()))
        .await;
    subscription.stop().await.unwrap();
}

/// Answers PipelineSubscribe with AckOk and pushes two stage deliveries:
/// id 9 (root type "service.created", input from deploy-service) and id 10
/// (root type "fail").
fn pipeline_server() -> Behavior {
    Arc::new(|_state, f| match &f.message {
        Message::PipelineSubscribe(_) => {
            let root = delivery_event("service.created", b"root-data");
            let deployed = delivery_event("service.deployed", b"deployed-data");
            let failing = delivery_event("fail", b"");
            let mut out = vec![frame(f.request_id, &Message::AckOk)];
            out.push(frame(
                0,
                &Message::StageDelivery(StageDelivery {
                    delivery_id: 9,
                    pipeline: "service-creation",
                    stage: "setup-billing",
                    partition: 3,
                    offset: 42,
                    attempt: 1,
                    root: &root,
                    inputs: vec![StageInput {
                        stage: "deploy-service",
                        event: &deployed,
                    }],
                }),
            ));
            out.push(frame(
                0,
                &Message::StageDelivery(StageDelivery {
                    delivery_id: 10,
                    pipeline: "service-creation",
                    stage: "setup-billing",
                    partition: 0,
                    offset: 7,
                    attempt: 3,
                    root: &failing,
                    inputs: Vec::new(),
                }),
            ));
            out
        }
        Message::StageAck(_) | Message::StageNack(_) => {
            vec![frame(f.request_id, &Message::AckOk)]
        }
        _ => Vec::new(),
    })
}

#[derive(Debug)]
struct BillingError(String);

impl std::fmt::Display for BillingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "billing failed: {}", self.0)
    }
}

async fn billing_handler(input: hadron::StageInput) -> Result<hadron::NewEvent, BillingError> {
    if input.root.ty == "fail" {
        return Err(BillingError(format!("attempt {}", input.attempt)));
    }
    let deployed = input
        .input("deploy-service")
        .ok_or_else(|| BillingError("no deploy-service input".into()))?;
    let mut data = input.root.data.clone();
    data.extend_from_slice(b"+");
    data.extend_from_slice(&deployed.data);
    Ok(hadron::NewEvent {
        ty: "service.billed".into(),
        subject: Some(format!("{}/{}", input.partition, input.offset)),
        data,
        ..Default::default()
    })
}

#[tokio::test]
async fn pipeline_stage_ack_carries_the_output_and_errors_nack() {
    let mock = Mock::start(0, pipeline_server()).await;
    let client = hadron::Client::new(&mock.url, fast_options()).unwrap();

    // The seed's first form: not awaited, and still running.
    client.pipeline("service-creation", "setup-billing", billing_handler);

    let registered = mock
        .wait_for(1, |_, f| match &f.message {
            Message::PipelineSubscribe(p) => {
                Some((p.pipeline.to_owned(), p.stage.to_owned(), p.max_in_flight))
            }
            _ => None,
        })
        .await;
    assert_eq!(
        registered[0],
        (
            "service-creation".to_owned(),
            "setup-billing".to_owned(),
            50
        )
    );

    let acks = mock
        .wait_for(1, |_, f| match &f.message {
            Message::StageAck(a) => Some((a.delivery_id, hadron::Event::decode(a.output).unwrap())),
            _ => None,
        })
        .await;
    let (delivery_id, output) = &acks[0];
    assert_eq!(*delivery_id, 9);
    assert_eq!(output.ty, "service.billed");
    assert_eq!(output.data, b"root-data+deployed-data");
    assert_eq!(output.subject.as_deref(), Some("3/42"));
    assert_eq!(output.id, "service-creation/setup-billing/3/42");
    assert_eq!(output.source, "service-creation/setup-billing");

    let nacks = mock
        .wait_for(1, |_, f| match &f.message {
            Message::StageNack(n) => Some((n.delivery_id, n.message.to_owned())),
            _ => None,
        })
        .await;
    assert_eq!(nacks, vec![(10, "billing failed: attempt 3".to_owned())]);

    // The awaited form returns a handle that stops the handler.
    let handle = client
        .pipeline("service-creation", "setup-billing", billing_handler)
        .await
        .unwrap();
    handle.stop().await.unwrap();
}

#[tokio::test]
async fn pipeline_registration_errors_are_returned() {
    let behavior: Behavior = Arc::new(|_state, f| {
        vec![frame(
            f.request_id,
            &Message::Error(ErrorReply {
                code: ErrorCode::UnknownPipeline,
                message: "no pipeline nope",
                leader: None,
            }),
        )]
    });
    let mock = Mock::start(0, behavior).await;
    let client = hadron::Client::new(&mock.url, fast_options()).unwrap();
    let err = client
        .pipeline("nope", "stage", billing_handler)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnknownPipeline), "{err}");
}

#[tokio::test]
async fn unanswered_publish_times_out_after_bounded_retries_with_one_id() {
    let inner = log_server();
    // Answers Status, never Publish.
    let behavior: Behavior = Arc::new(move |state, f| match &f.message {
        Message::Publish(_) => Vec::new(),
        _ => inner(state, f),
    });
    let mock = Mock::start(0, behavior).await;
    let options = hadron::ClientOptions {
        request_timeout: Duration::from_millis(100),
        publish_attempts_max: 3,
        ..fast_options()
    };
    let client = hadron::Client::new(&mock.url, options).unwrap();
    let publisher = client.publisher("slow").await.unwrap();
    let err = publisher
        .publish(hadron::NewEvent::new("t", Vec::new()))
        .await
        .unwrap_err();
    assert!(matches!(err, hadron::Error::Timeout { .. }), "{err}");
    let events = published_events(&mock);
    assert_eq!(events.len(), 3, "three attempts");
    assert!(
        events.iter().all(|e| *e == events[0]),
        "one id, one partition"
    );
}

#[tokio::test]
async fn rejected_handshake_is_not_retryable() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = BytesMut::new();
            while split_frame(&buf, &Limits::DEFAULT).unwrap().is_none() {
                if socket.read_buf(&mut buf).await.unwrap() == 0 {
                    break;
                }
            }
            let reply = encode(
                1,
                &Message::Error(ErrorReply {
                    code: ErrorCode::Unauthorized,
                    message: "bad token",
                    leader: None,
                }),
            )
            .unwrap();
            let _ = socket.write_all(&reply).await;
        }
    });
    let options = hadron::ClientOptions {
        token: Some("wrong".into()),
        ..fast_options()
    };
    let client = hadron::Client::new(&format!("127.0.0.1:{port}"), options).unwrap();
    for _ in 0..2 {
        // The second call falls in the backoff window and must report the
        // same, non-retryable error.
        let err = client.publisher("p").await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err}");
        assert!(!err.is_retryable());
    }
}

/// Deliveries the many-deliveries tests push in all.
const MANY: u64 = 200;
/// Deliveries the many-deliveries mocks keep unanswered, as a server
/// keeps to a member's `max_in_flight`: more than the handlers' limit (8),
/// so some wait for a free slot in the client. Each answer lets one more
/// out.
const MOCK_WINDOW: u64 = 24;
/// The delivery id the many-deliveries tests give a push whose event is not
/// a valid event buffer (pushed last).
const MALFORMED_ID: u64 = MANY + 1;

/// Pushes for delivery ids `from..to` (at most `MALFORMED_ID`), made by
/// `push`.
fn pushes(from: u64, to: u64, push: impl Fn(u64) -> Out) -> Vec<Out> {
    (from..to.min(MALFORMED_ID + 1)).map(push).collect()
}

/// A `StageDelivery` push for id `id` in 1..=MANY (partition id % 4, offset
/// 1000 + id, root data `root-{id}`, one input from deploy-service for even
/// ids), or one whose root is not an event for `MALFORMED_ID`.
fn many_stage_push(id: u64) -> Out {
    if id == MALFORMED_ID {
        return frame(
            0,
            &Message::StageDelivery(StageDelivery {
                delivery_id: MALFORMED_ID,
                pipeline: "service-creation",
                stage: "setup-billing",
                root: b"not an event buffer",
                ..StageDelivery::default()
            }),
        );
    }
    let root = delivery_event("service.created", format!("root-{id}").as_bytes());
    let deployed = delivery_event("service.deployed", b"deployed");
    let inputs = if id.is_multiple_of(2) {
        vec![StageInput {
            stage: "deploy-service",
            event: &deployed,
        }]
    } else {
        Vec::new()
    };
    frame(
        0,
        &Message::StageDelivery(StageDelivery {
            delivery_id: id,
            pipeline: "service-creation",
            stage: "setup-billing",
            partition: u32::try_from(id % 4).unwrap(),
            offset: 1000 + id,
            attempt: 1,
            root: &root,
            inputs,
        }),
    )
}

/// Answers PipelineSubscribe with AckOk and pushes the first `MOCK_WINDOW`
/// of `many_stage_push`; answers StageAck, StageAcks and StageNack with
/// AckOk and one more push per delivery answered, or, when
/// `refuse_batches`, StageAcks with `InvalidRequest` as a server that
/// predates it does.
fn many_stages_server(refuse_batches: bool) -> Behavior {
    let next = Arc::new(AtomicU64::new(1));
    Arc::new(move |_state, f| match &f.message {
        Message::PipelineSubscribe(_) => {
            let mut out = vec![frame(f.request_id, &Message::AckOk)];
            let from = next.fetch_add(MOCK_WINDOW, Ordering::SeqCst);
            out.extend(pushes(from, from + MOCK_WINDOW, many_stage_push));
            out
        }
        Message::StageAck(_) | Message::StageNack(_) | Message::StageAcks(_) => {
            if refuse_batches && matches!(f.message, Message::StageAcks(_)) {
                // A server that predates `StageAcks`.
                return vec![frame(
                    f.request_id,
                    &Message::Error(ErrorReply {
                        code: ErrorCode::InvalidRequest,
                        message: "frame has unknown body type 23",
                        leader: None,
                    }),
                )];
            }
            let answered = match &f.message {
                Message::StageAcks(a) => a.acks.len() as u64,
                _ => 1,
            };
            let mut out = vec![frame(f.request_id, &Message::AckOk)];
            let from = next.fetch_add(answered, Ordering::SeqCst);
            out.extend(pushes(from, from + answered, many_stage_push));
            out
        }
        _ => Vec::new(),
    })
}

/// The stage acks in a received frame, whether it is a `StageAck` or a
/// `StageAcks`: (delivery id, output event).
fn stage_acks_of(f: &FrameRef<'_>) -> Option<Vec<(u64, hadron::Event)>> {
    match &f.message {
        Message::StageAck(a) => Some(vec![(
            a.delivery_id,
            hadron::Event::decode(a.output).unwrap(),
        )]),
        Message::StageAcks(a) => Some(
            a.acks
                .iter()
                .map(|a| (a.delivery_id, hadron::Event::decode(a.output).unwrap()))
                .collect(),
        ),
        _ => None,
    }
}

/// Many stage deliveries, up to `MOCK_WINDOW` unanswered at a time and
/// handled at most 8 at a time on a two-thread runtime: every stage runs
/// exactly once with its own input, every delivery is answered exactly once
/// with its own output (default id and source included), and an
/// undecodable delivery is nacked without running the handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_stage_deliveries_each_run_once_and_are_each_answered_once() {
    many_stage_deliveries(false).await;
}

/// Handlers that finish together answer together: on a current-thread
/// runtime the deliveries of one burst are handled before the first
/// answer leaves, so their acks share `StageAcks` frames, and every
/// delivery is still answered exactly once.
#[tokio::test(flavor = "current_thread")]
async fn stage_acks_of_handlers_that_finish_together_share_a_frame() {
    let (frames, refused) = many_stage_deliveries(false).await;
    assert_eq!(refused, 0);
    let acks: usize = frames.iter().map(|(_, n)| n).sum();
    assert_eq!(acks as u64, MANY);
    assert!(
        frames.len() < acks / 2,
        "{} frames carried {acks} acks",
        frames.len()
    );
    assert!(frames.iter().any(|&(single, n)| !single && n > 1));
}

/// The same against a server that does not know `StageAcks` (it answers
/// `InvalidRequest`): the client sends the refused acks again one per
/// `StageAck`, sends no more `StageAcks` after the first refusals, and
/// still answers each delivery exactly once.
#[tokio::test(flavor = "current_thread")]
async fn stage_acks_go_one_by_one_to_a_server_without_stage_acks() {
    let (frames, refused) = many_stage_deliveries(true).await;
    assert!(refused >= 1, "the batching path was tried");
    // Batching would have taken dozens of frames (the test above).
    assert!(
        refused <= 4,
        "{refused} StageAcks sent to a server that refuses them"
    );
    assert!(frames.iter().all(|&(single, n)| single && n == 1));
}

/// Runs the many-stage-deliveries scenario against `many_stages_server`
/// and checks that every delivery ran once and was answered once with
/// its own output. Returns, per ack frame the mock took, whether it was a
/// lone `StageAck` and how many acks it carried, and how many `StageAcks`
/// it refused.
async fn many_stage_deliveries(refuse_batches: bool) -> (Vec<(bool, usize)>, usize) {
    let mock = Mock::start(0, many_stages_server(refuse_batches)).await;
    let client = hadron::Client::new(&mock.url, fast_options()).unwrap();
    let runs: Arc<Mutex<BTreeMap<u64, u32>>> = Arc::default();
    let handler = {
        let runs = Arc::clone(&runs);
        move |input: hadron::StageInput| {
            *runs.lock().unwrap().entry(input.delivery_id).or_default() += 1;
            async move {
                // Let other handlers and the connection run in between.
                tokio::task::yield_now().await;
                let mut data = input.root.data.clone();
                if let Some(deployed) = input.input("deploy-service") {
                    data.extend_from_slice(b"+");
                    data.extend_from_slice(&deployed.data);
                }
                Ok::<_, std::io::Error>(hadron::NewEvent::new(
                    format!("billed.{}", input.delivery_id),
                    data,
                ))
            }
        }
    };
    let handle = client
        .pipeline_with("service-creation", "setup-billing", 8, handler)
        .await
        .unwrap();

    // Frames an old server refused do not count: it took none of their
    // acks.
    let taken = |f: &FrameRef<'_>| -> Option<Vec<(u64, hadron::Event)>> {
        if refuse_batches && matches!(f.message, Message::StageAcks(_)) {
            return None;
        }
        stage_acks_of(f)
    };
    mock.until(&format!("the mock receives {MANY} acks"), || {
        mock.picked(|_, f| taken(f)).concat().len() >= MANY as usize
    })
    .await;
    let stage_nack = |_: &Seen, f: &FrameRef<'_>| match &f.message {
        Message::StageNack(n) => Some((n.delivery_id, n.message.to_owned())),
        _ => None,
    };
    mock.wait_for(1, stage_nack).await;
    // Nothing more arrives: no delivery is answered twice. Stopping the
    // handler lets the handlers still running answer; the connection
    // closes after the last answer is written, and once the mock has seen
    // it end, it has every answer the client will ever send.
    handle.stop().await.unwrap();
    mock.wait_ended(|f| stage_acks_of(f).is_some()).await;
    let nacks = mock.picked(stage_nack);
    let frames = mock.picked(|_, f| {
        let acks = taken(f)?;
        Some((matches!(f.message, Message::StageAck(_)), acks))
    });
    let refused = if refuse_batches {
        mock.picked(|_, f| matches!(f.message, Message::StageAcks(_)).then_some(()))
            .len()
    } else {
        0
    };
    let acks: Vec<(u64, hadron::Event)> = frames.iter().flat_map(|(_, a)| a.clone()).collect();
    let answered: Vec<(bool, usize)> = frames.iter().map(|(s, a)| (*s, a.len())).collect();
    assert_eq!(acks.len() as u64, MANY, "one ack per delivery");

    let mut acked = BTreeMap::new();
    for (id, output) in acks {
        assert!(
            acked.insert(id, output).is_none(),
            "delivery {id} acked twice"
        );
    }
    assert_eq!(
        acked.keys().copied().collect::<Vec<_>>(),
        (1..=MANY).collect::<Vec<_>>()
    );
    for (id, output) in &acked {
        assert_eq!(output.ty, format!("billed.{id}"));
        let mut data = format!("root-{id}").into_bytes();
        if id.is_multiple_of(2) {
            data.extend_from_slice(b"+deployed");
        }
        assert_eq!(output.data, data, "delivery {id}");
        assert_eq!(
            output.id,
            format!("service-creation/setup-billing/{}/{}", id % 4, 1000 + id)
        );
        assert_eq!(output.source, "service-creation/setup-billing");
    }
    assert_eq!(nacks.len(), 1, "one nack");
    assert_eq!(nacks[0].0, MALFORMED_ID);
    assert!(nacks[0].1.starts_with("client: "), "{}", nacks[0].1);

    let runs = runs.lock().unwrap().clone();
    assert_eq!(
        runs.keys().copied().collect::<Vec<_>>(),
        (1..=MANY).collect::<Vec<_>>()
    );
    assert!(
        runs.values().all(|&n| n == 1),
        "every stage ran exactly once"
    );
    (answered, refused)
}

/// A `Delivery` push for id `id` in 1..=MANY (offset 100 + id, data
/// `event-{id}`), or one whose event is not an event for `MALFORMED_ID`.
fn many_delivery_push(id: u64) -> Out {
    let event = if id == MALFORMED_ID {
        b"not an event buffer".to_vec()
    } else {
        delivery_event("ok", format!("event-{id}").as_bytes())
    };
    frame(
        0,
        &Message::Delivery(hadron_wire::Delivery {
            subscription_id: 5,
            delivery_id: id,
            stream: "events",
            partition: 0,
            offset: 100 + id,
            attempt: 1,
            event: &event,
        }),
    )
}

/// Answers Subscribe with SubscribeOk and pushes the first `MOCK_WINDOW` of
/// `many_delivery_push`; answers Ack and Nack with AckOk and one more
/// push per delivery answered.
fn many_deliveries_server() -> Behavior {
    let next = Arc::new(AtomicU64::new(1));
    Arc::new(move |_state, f| match &f.message {
        Message::Subscribe(_) => {
            let mut out = vec![frame(
                f.request_id,
                &Message::SubscribeOk(SubscribeOk {
                    subscription_id: 5,
                    partitions: vec![0],
                }),
            )];
            let from = next.fetch_add(MOCK_WINDOW, Ordering::SeqCst);
            out.extend(pushes(from, from + MOCK_WINDOW, many_delivery_push));
            out
        }
        Message::Ack(_) | Message::Nack(_) => {
            let answered = match &f.message {
                Message::Ack(a) => a.delivery_ids.len() as u64,
                _ => 1,
            };
            let mut out = vec![frame(f.request_id, &Message::AckOk)];
            let from = next.fetch_add(answered, Ordering::SeqCst);
            out.extend(pushes(from, from + answered, many_delivery_push));
            out
        }
        _ => Vec::new(),
    })
}

/// The subscription side of the same: every event is handled exactly once
/// and acked exactly once; an undecodable one is nacked unhandled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_deliveries_each_run_once_and_are_each_acked_once() {
    let mock = Mock::start(0, many_deliveries_server()).await;
    let client = hadron::Client::new(&mock.url, fast_options()).unwrap();
    let runs: Arc<Mutex<BTreeMap<u64, u32>>> = Arc::default();
    let options = hadron::SubscribeOptions {
        durable: false,
        start: hadron::StartPoint::Latest,
        max_in_flight: 8,
    };
    let subscription = client
        .subscribe("events", "g", options, {
            let runs = Arc::clone(&runs);
            move |d: hadron::Delivery| {
                let expected = format!("event-{}", d.delivery_id);
                assert_eq!(d.event.data, expected.as_bytes());
                assert_eq!(d.offset, 100 + d.delivery_id);
                *runs.lock().unwrap().entry(d.delivery_id).or_default() += 1;
                async {
                    tokio::task::yield_now().await;
                    Ok::<(), std::io::Error>(())
                }
            }
        })
        .await
        .unwrap();

    mock.until(&format!("the mock receives {MANY} acks"), || {
        mock.picked(|_, f| match &f.message {
            Message::Ack(a) => Some(a.delivery_ids.clone()),
            _ => None,
        })
        .concat()
        .len()
            >= MANY as usize
    })
    .await;
    let nack = |_: &Seen, f: &FrameRef<'_>| match &f.message {
        Message::Nack(n) => Some((n.delivery_id, n.message.to_owned())),
        _ => None,
    };
    mock.wait_for(1, nack).await;
    // Nothing more arrives: stopping lets the running handlers answer, and
    // the connection closes after the last answer is written; once the
    // mock has seen it end, it has every answer the client will send.
    subscription.stop().await.unwrap();
    mock.wait_ended(|f| matches!(f.message, Message::Ack(_)))
        .await;
    let nacks = mock.picked(nack);

    let mut acked: Vec<u64> = mock
        .picked(|_, f| match &f.message {
            Message::Ack(a) => Some(a.delivery_ids.clone()),
            _ => None,
        })
        .into_iter()
        .flatten()
        .collect();
    acked.sort_unstable();
    assert_eq!(
        acked,
        (1..=MANY).collect::<Vec<_>>(),
        "each acked exactly once"
    );
    assert_eq!(nacks.len(), 1);
    assert_eq!(nacks[0].0, MALFORMED_ID);
    assert!(nacks[0].1.starts_with("client: "), "{}", nacks[0].1);
    let runs = runs.lock().unwrap().clone();
    assert_eq!(
        runs.keys().copied().collect::<Vec<_>>(),
        (1..=MANY).collect::<Vec<_>>()
    );
    assert!(
        runs.values().all(|&n| n == 1),
        "every event handled exactly once"
    );
}

/// A cluster node that leads nothing: every Publish and Fetch is answered
/// `NotLeader`, naming `leader` (a `host:port`) when given; Metadata names
/// `leader` as every partition's leader.
fn follower(leader: Option<String>) -> Behavior {
    Arc::new(move |_state, f| {
        let hint = leader.as_deref().map(|address| hadron_wire::LeaderHint {
            node_id: 2,
            address,
            shard_port: 0,
            term: 3,
        });
        match &f.message {
            Message::Publish(hadron_wire::Publish { partition, .. })
            | Message::Fetch(hadron_wire::Fetch { partition, .. }) => vec![frame(
                f.request_id,
                &Message::Error(ErrorReply {
                    code: ErrorCode::NotLeader,
                    message: &format!("node 1 does not lead events/{partition}"),
                    leader: hint,
                }),
            )],
            Message::Metadata(_) => {
                let partitions = (0..4)
                    .map(|partition| PartitionInfo {
                        partition,
                        shard: 0,
                        leader: leader.as_deref().map(|address| hadron_wire::LeaderHint {
                            node_id: 2,
                            address,
                            shard_port: 0,
                            term: 3,
                        }),
                    })
                    .collect();
                vec![frame(
                    f.request_id,
                    &Message::MetadataOk(MetadataOk {
                        shards: 1,
                        placement: PLACEMENT_NAME,
                        streams: vec![StreamInfo {
                            name: "events",
                            partitions,
                        }],
                        ..MetadataOk::default()
                    }),
                )]
            }
            Message::Status => vec![frame(
                f.request_id,
                &Message::StatusOk(StatusOk { json: STATUS_JSON }),
            )],
            other => vec![frame(
                f.request_id,
                &Message::Error(ErrorReply {
                    code: ErrorCode::InvalidRequest,
                    message: other.name(),
                    leader: None,
                }),
            )],
        }
    })
}

/// The `(source, id)` of every event in `mock`'s Publish frames.
fn published_ids(mock: &Mock) -> Vec<(String, String)> {
    published_events(mock)
        .into_iter()
        .map(|(_, e)| (e.source, e.id))
        .collect()
}

#[tokio::test]
async fn publish_follows_a_not_leader_hint_and_resends_the_same_ids() {
    let leader = Mock::start(0, log_server()).await;
    let node = Mock::start(0, follower(Some(leader.url.clone()))).await;
    let client = hadron::Client::new(&node.url, fast_options()).unwrap();
    let publisher = client.publisher("router").await.unwrap();
    let events: Vec<hadron::NewEvent> = (0..3)
        .map(|i| hadron::NewEvent::new("t", vec![i]).with_subject("same-key"))
        .collect();
    let results = publisher.publish_batch(events).await.unwrap();
    let partition = results[0].partition;
    assert_eq!(
        results.iter().map(|p| p.offset).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    assert!(
        results
            .iter()
            .all(|p| p.partition == partition && !p.duplicate)
    );
    // The leader stored the batch once; the node was asked once, with the
    // same ids.
    let stored = published_ids(&leader);
    assert_eq!(stored.len(), 3);
    assert_eq!(published_ids(&node), stored);
    // Later publishes to that partition go straight to the leader.
    let next = publisher
        .publish(hadron::NewEvent::new("t", vec![9]).with_subject("same-key"))
        .await
        .unwrap();
    assert_eq!((next.partition, next.offset), (partition, 3));
    assert_eq!(published_ids(&node).len(), 3);
    assert_eq!(published_ids(&leader).len(), 4);
}

#[tokio::test]
async fn publish_without_a_hint_refreshes_metadata_and_finds_the_leader() {
    let leader = Mock::start(0, log_server()).await;
    // A node that knows no leader in its NotLeader answers but names it in
    // Metadata (the election ended in between).
    let url = leader.url.clone();
    let hintless = follower(None);
    let with_metadata = follower(Some(url));
    let behavior: Behavior = Arc::new(move |state, f| match &f.message {
        Message::Metadata(_) => with_metadata(state, f),
        _ => hintless(state, f),
    });
    let node = Mock::start(0, behavior).await;
    let client = hadron::Client::new(&node.url, fast_options()).unwrap();
    let publisher = client.publisher("router").await.unwrap();
    let published = publisher
        .publish(hadron::NewEvent::new("t", vec![1]).with_subject("k"))
        .await
        .unwrap();
    assert_eq!(published.offset, 0);
    assert_eq!(published_ids(&leader), published_ids(&node));
    assert_eq!(published_ids(&leader).len(), 1);
}

#[tokio::test]
async fn publish_gives_up_after_publish_attempts_max_not_leader_answers() {
    // A node that names no leader anywhere: an election that never ends.
    let node = Mock::start(0, follower(None)).await;
    let options = hadron::ClientOptions {
        publish_attempts_max: 3,
        ..fast_options()
    };
    let client = hadron::Client::new(&node.url, options).unwrap();
    let publisher = client.publisher("router").await.unwrap();
    let e = publisher
        .publish(hadron::NewEvent::new("t", vec![1]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotLeader));
    assert!(e.to_string().contains("no leader named"), "{e}");
    assert_eq!(published_ids(&node).len(), 3, "one publish per attempt");
}

#[tokio::test]
async fn publish_stops_retrying_at_its_retry_deadline_with_attempts_left() {
    // An election that never ends, attempts without bound: the deadline
    // ends the retries. Pauses are at least 10 ms each, so no more than
    // 1 + 2 s / 10 ms attempts fit before it.
    let node = Mock::start(0, follower(None)).await;
    let options = hadron::ClientOptions {
        publish_attempts_max: u32::MAX,
        publish_retry_deadline: Duration::from_secs(2),
        ..fast_options()
    };
    let client = hadron::Client::new(&node.url, options).unwrap();
    let publisher = client.publisher("router").await.unwrap();
    let e = publisher
        .publish(hadron::NewEvent::new("t", vec![1]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotLeader));
    let attempts = published_ids(&node).len();
    assert!((2..=201).contains(&attempts), "{attempts} attempts");
}

/// A node that took the request and then went silent (it is about to be
/// killed): Publish and Fetch are never answered; the rest as `inner`.
fn holding(inner: Behavior) -> Behavior {
    Arc::new(move |state, f| match &f.message {
        Message::Publish(_) | Message::Fetch(_) => Vec::new(),
        _ => inner(state, f),
    })
}

/// A leader: stores publishes as `log_server` does and names itself, at
/// its own address, as every partition's leader in Metadata.
async fn self_naming_leader() -> Mock {
    let me: Arc<Mutex<Option<String>>> = Arc::default();
    let store = log_server();
    let named = Arc::clone(&me);
    let behavior: Behavior = Arc::new(move |state, f| match &f.message {
        Message::Metadata(_) => follower(named.lock().unwrap().clone())(state, f),
        _ => store(state, f),
    });
    let mock = Mock::start(0, behavior).await;
    *me.lock().unwrap() = Some(mock.url.clone());
    mock
}

/// Handshakes `mock` received.
fn handshakes(mock: &Mock) -> usize {
    mock.picked(|_, f| matches!(f.message, Message::Handshake(_)).then_some(()))
        .len()
}

#[tokio::test]
async fn a_bootstrap_list_whose_first_node_is_down_uses_the_next() {
    let down = Mock::start(0, log_server()).await;
    down.kill().await;
    let up = Mock::start(0, log_server()).await;
    let urls = format!("{},{}", down.url, up.url);
    let client = hadron::Client::new(&urls, fast_options()).unwrap();
    let publisher = client.publisher("bootstrapper").await.unwrap();
    let published = publisher
        .publish_to(1, hadron::NewEvent::new("t", vec![1]).with_id("b-1"))
        .await
        .unwrap();
    assert_eq!((published.partition, published.offset), (1, 0));
    let status = client.status().await.unwrap();
    assert_eq!(status, STATUS_JSON);
    assert_eq!(
        published_ids(&up),
        [("bootstrapper".to_owned(), "b-1".to_owned())]
    );
    assert_eq!(handshakes(&up), 1, "one main connection, kept");
    assert!(down.seen().is_empty());
}

#[tokio::test]
async fn publish_whose_leader_dies_mid_request_is_resent_to_the_new_leader_with_the_same_ids() {
    let old = Mock::start(0, holding(log_server())).await;
    let new = self_naming_leader().await;
    // The bootstrap node's NotLeader hints stay stale (naming the old
    // leader); its Metadata names whoever `named` says: only a refresh
    // finds the new leader.
    let named: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(Some(old.url.clone())));
    let stale = follower(Some(old.url.clone()));
    let current = Arc::clone(&named);
    let behavior: Behavior = Arc::new(move |state, f| match &f.message {
        Message::Metadata(_) => follower(current.lock().unwrap().clone())(state, f),
        _ => stale(state, f),
    });
    let node = Mock::start(0, behavior).await;
    let client = hadron::Client::new(&node.url, fast_options()).unwrap();
    let publisher = client.publisher("survivor").await.unwrap();
    let events: Vec<hadron::NewEvent> = (0..3)
        .map(|i| hadron::NewEvent::new("t", vec![i]).with_subject("same-key"))
        .collect();
    let publishing = tokio::spawn(async move { publisher.publish_batch(events).await });

    // The old leader has the batch and will never answer: an election
    // names the new one, and the old one dies.
    old.wait_for(1, |_, f| {
        matches!(f.message, Message::Publish(_)).then_some(())
    })
    .await;
    *named.lock().unwrap() = Some(new.url.clone());
    old.kill().await;

    let results = publishing.await.unwrap().unwrap();
    assert_eq!(
        results.iter().map(|p| p.offset).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    assert!(results.iter().all(|p| !p.duplicate));
    let stored = published_ids(&new);
    assert_eq!(stored.len(), 3, "stored once, by the new leader");
    assert_eq!(published_ids(&old), stored, "the same ids were resent");
    assert_eq!(
        published_ids(&node),
        stored,
        "the bootstrap node was asked once"
    );
    let refreshes = node.picked(|_, f| match &f.message {
        Message::Metadata(m) => Some(
            m.streams
                .iter()
                .map(|s| (*s).to_owned())
                .collect::<Vec<_>>(),
        ),
        _ => None,
    });
    assert!(
        refreshes.contains(&vec!["events".to_owned()]),
        "the leaders of `events` were refreshed: {refreshes:?}"
    );
}

#[tokio::test]
async fn publish_whose_bootstrap_node_dies_mid_request_moves_to_the_next() {
    let first = Mock::start(0, holding(log_server())).await;
    let second = Mock::start(0, log_server()).await;
    let urls = format!("{},{}", first.url, second.url);
    let client = hadron::Client::new(&urls, fast_options()).unwrap();
    let publisher = client.publisher("mover").await.unwrap();
    let publishing = tokio::spawn(async move {
        publisher
            .publish_to(2, hadron::NewEvent::new("t", vec![7]).with_id("m-1"))
            .await
    });
    first
        .wait_for(1, |_, f| {
            matches!(f.message, Message::Publish(_)).then_some(())
        })
        .await;
    first.kill().await;
    let published = publishing.await.unwrap().unwrap();
    assert_eq!((published.partition, published.offset), (2, 0));
    assert_eq!(published_ids(&first), published_ids(&second));
    assert_eq!(
        published_ids(&second),
        [("mover".to_owned(), "m-1".to_owned())]
    );
    // Metadata, which any node answers, now comes from the second node.
    client.status().await.unwrap();
    assert_eq!(
        second
            .picked(|_, f| matches!(f.message, Message::Status).then_some(()))
            .len(),
        1
    );
}

/// Answers Fetch from `offset` with two records (offsets `offset` and
/// `offset + 1`, events typed `fetched-{offset}`).
fn fetch_server() -> Behavior {
    Arc::new(|_state, f| match &f.message {
        Message::Fetch(fetch) => {
            let events: Vec<Vec<u8>> = (0..2)
                .map(|i| delivery_event(&format!("fetched-{}", fetch.offset + i), &[1]))
                .collect();
            let records = events
                .iter()
                .enumerate()
                .map(|(i, event)| hadron_wire::Record {
                    offset: fetch.offset + i as u64,
                    event,
                })
                .collect();
            vec![frame(
                f.request_id,
                &Message::FetchOk(hadron_wire::FetchOk {
                    partition: fetch.partition,
                    next_offset: fetch.offset + 2,
                    records,
                }),
            )]
        }
        other => vec![frame(
            f.request_id,
            &Message::Error(ErrorReply {
                code: ErrorCode::InvalidRequest,
                message: other.name(),
                leader: None,
            }),
        )],
    })
}

/// `(partition, offset)` of the Fetch requests `mock` received.
fn fetches(mock: &Mock) -> Vec<(u32, u64)> {
    mock.picked(|_, f| match &f.message {
        Message::Fetch(fetch) => Some((fetch.partition, fetch.offset)),
        _ => None,
    })
}

#[tokio::test]
async fn fetch_follows_a_not_leader_hint() {
    let leader = Mock::start(0, fetch_server()).await;
    let node = Mock::start(0, follower(Some(leader.url.clone()))).await;
    let client = hadron::Client::new(&node.url, fast_options()).unwrap();
    let fetched = client.fetch("events", 1, 5, 4096).await.unwrap();
    assert_eq!((fetched.partition, fetched.next_offset), (1, 7));
    let got: Vec<(u64, String)> = fetched
        .records
        .iter()
        .map(|(offset, e)| (*offset, e.ty.clone()))
        .collect();
    assert_eq!(
        got,
        [(5, "fetched-5".to_owned()), (6, "fetched-6".to_owned())]
    );
    // The next fetch of that partition goes straight to the leader.
    let next = client.fetch("events", 1, 7, 4096).await.unwrap();
    assert_eq!(next.records[0].0, 7);
    assert_eq!(fetches(&node), [(1, 5)]);
    assert_eq!(fetches(&leader), [(1, 5), (1, 7)]);
}

#[tokio::test]
async fn fetch_whose_leader_dies_finds_the_new_one() {
    let old = Mock::start(0, holding(fetch_server())).await;
    let new = Mock::start(0, fetch_server()).await;
    let named: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(Some(old.url.clone())));
    let current = Arc::clone(&named);
    let behavior: Behavior =
        Arc::new(move |state, f| follower(current.lock().unwrap().clone())(state, f));
    let node = Mock::start(0, behavior).await;
    let client = hadron::Client::new(&node.url, fast_options()).unwrap();
    let fetching = tokio::spawn(async move { client.fetch("events", 0, 3, 4096).await });
    old.wait_for(1, |_, f| {
        matches!(f.message, Message::Fetch(_)).then_some(())
    })
    .await;
    *named.lock().unwrap() = Some(new.url.clone());
    old.kill().await;
    let fetched = fetching.await.unwrap().unwrap();
    assert_eq!(fetched.next_offset, 5);
    assert_eq!(fetches(&old), [(0, 3)]);
    assert_eq!(fetches(&new), [(0, 3)]);
}

#[tokio::test]
async fn fetch_from_a_single_unreachable_server_fails_at_once() {
    let down = Mock::start(0, fetch_server()).await;
    down.kill().await;
    let client = hadron::Client::new(&down.url, fast_options()).unwrap();
    let e = client.fetch("events", 0, 0, 4096).await.unwrap_err();
    assert!(matches!(e, hadron::Error::Connect { .. }), "{e}");
}

#[test]
fn a_bad_address_in_a_bootstrap_list_is_refused_by_name() {
    let e = hadron::Client::new(
        "http://127.0.0.1:7000,http://127.0.0.1:notaport,http://127.0.0.1:7020",
        fast_options(),
    )
    .unwrap_err();
    match &e {
        hadron::Error::InvalidUrl { url, .. } => assert_eq!(url, "http://127.0.0.1:notaport"),
        other => panic!("{other}"),
    }
    assert!(e.to_string().contains("127.0.0.1:notaport"), "{e}");
    let many = vec!["127.0.0.1:7000"; hadron::BOOTSTRAP_URLS_MAX + 1].join(",");
    let e = hadron::Client::new(&many, fast_options()).unwrap_err();
    assert!(e.to_string().contains("BOOTSTRAP_URLS_MAX"), "{e}");
}

// --- Handlers on a cluster: one runner per bootstrap node ---------------

/// A cluster node for stage handlers: answers its first `not_leader`
/// PipelineSubscribes `NotLeader`, the next with AckOk followed by one
/// stage delivery (id 5 on every node, so that only the connection tells
/// the answers apart) whose root is `delivery_event(root_ty, root_data)`
/// at `partition`/`offset`; answers stage acks and nacks with AckOk.
fn stage_node(root_ty: &'static str, partition: u32, offset: u64, not_leader: usize) -> Behavior {
    let registrations = Arc::new(AtomicUsize::new(0));
    Arc::new(move |_state, f| match &f.message {
        Message::PipelineSubscribe(_) => {
            if registrations.fetch_add(1, Ordering::SeqCst) < not_leader {
                return vec![frame(
                    f.request_id,
                    &Message::Error(ErrorReply {
                        code: ErrorCode::NotLeader,
                        message: "node 1 leads no partition of the pipeline's stream yet",
                        leader: None,
                    }),
                )];
            }
            let root = delivery_event(root_ty, format!("{root_ty}-data").as_bytes());
            vec![
                frame(f.request_id, &Message::AckOk),
                frame(
                    0,
                    &Message::StageDelivery(StageDelivery {
                        delivery_id: 5,
                        pipeline: "service-creation",
                        stage: "setup-billing",
                        partition,
                        offset,
                        attempt: 1,
                        root: &root,
                        inputs: Vec::new(),
                    }),
                ),
            ]
        }
        Message::StageAck(_) | Message::StageAcks(_) | Message::StageNack(_) => {
            vec![frame(f.request_id, &Message::AckOk)]
        }
        _ => Vec::new(),
    })
}

/// A stage handler that reports each input's (root id, root data,
/// partition, offset) on the returned channel and outputs the root's data
/// followed by `!`.
#[expect(
    clippy::type_complexity,
    reason = "a test handler and its channel, returned together"
)]
fn echo_stage_handler() -> (
    impl Fn(hadron::StageInput) -> std::future::Ready<Result<hadron::NewEvent, std::io::Error>>
    + Send
    + Sync
    + 'static,
    tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>, u32, u64)>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let handler = move |input: hadron::StageInput| {
        let mut data = input.root.data.clone();
        data.push(b'!');
        tx.send((
            input.root.id.clone(),
            input.root.data.clone(),
            input.partition,
            input.offset,
        ))
        .unwrap();
        std::future::ready(Ok(hadron::NewEvent::new("service.billed", data)))
    };
    (handler, rx)
}

/// Receives `n` reports from `echo_stage_handler`, sorted.
async fn handled(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>, u32, u64)>,
    n: usize,
) -> Vec<(String, Vec<u8>, u32, u64)> {
    let mut got = Vec::new();
    for _ in 0..n {
        let input = tokio::time::timeout(WAIT_MAX, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("the handler runs within {WAIT_MAX:?}"))
            .unwrap();
        got.push(input);
    }
    got.sort();
    got
}

fn is_pipeline_subscribe(f: &FrameRef<'_>) -> bool {
    matches!(f.message, Message::PipelineSubscribe(_))
}

/// Every stage ack `mock` received: (delivery id, output data, output id).
fn stage_acks(mock: &Mock) -> Vec<(u64, Vec<u8>, String)> {
    mock.picked(|_, f| stage_acks_of(f))
        .into_iter()
        .flatten()
        .map(|(id, output)| (id, output.data, output.id))
        .collect()
}

/// A mock whose port refuses connections: a cluster node that is down.
async fn down_node() -> Mock {
    let down = Mock::start(0, log_server()).await;
    down.kill().await;
    down
}

#[tokio::test]
async fn a_stage_handler_given_a_node_list_registers_on_every_node_and_answers_each_push_where_it_came_from()
 {
    let a = Mock::start(0, stage_node("root-a", 0, 10, 0)).await;
    let b = Mock::start(0, stage_node("root-b", 1, 20, 0)).await;
    let client = hadron::Client::new(&format!("{},{}", a.url, b.url), fast_options()).unwrap();
    let (handler, mut rx) = echo_stage_handler();
    let handle = client
        .pipeline("service-creation", "setup-billing", handler)
        .await
        .unwrap();

    for node in [&a, &b] {
        let registered = node
            .wait_for(1, |_, f| match &f.message {
                Message::PipelineSubscribe(p) => {
                    Some((p.pipeline.to_owned(), p.stage.to_owned(), p.max_in_flight))
                }
                _ => None,
            })
            .await;
        assert_eq!(
            registered,
            [(
                "service-creation".to_owned(),
                "setup-billing".to_owned(),
                50
            )]
        );
    }
    assert_eq!(
        handled(&mut rx, 2).await,
        [
            ("id-root-a".to_owned(), b"root-a-data".to_vec(), 0, 10),
            ("id-root-b".to_owned(), b"root-b-data".to_vec(), 1, 20),
        ]
    );
    a.wait_for(1, |_, f| stage_acks_of(f)).await;
    b.wait_for(1, |_, f| stage_acks_of(f)).await;

    handle.stop().await.unwrap();
    a.wait_ended(is_pipeline_subscribe).await;
    b.wait_ended(is_pipeline_subscribe).await;
    // Both deliveries are id 5: each node got the answer to its own.
    assert_eq!(
        stage_acks(&a),
        [(
            5,
            b"root-a-data!".to_vec(),
            "service-creation/setup-billing/0/10".to_owned()
        )]
    );
    assert_eq!(
        stage_acks(&b),
        [(
            5,
            b"root-b-data!".to_vec(),
            "service-creation/setup-billing/1/20".to_owned()
        )]
    );
}

#[tokio::test]
async fn a_stage_handler_starts_while_a_listed_node_is_down_and_runs_the_others_deliveries() {
    let down = down_node().await;
    let up = Mock::start(0, stage_node("root-up", 2, 30, 0)).await;
    let client = hadron::Client::new(&format!("{},{}", down.url, up.url), fast_options()).unwrap();
    let (handler, mut rx) = echo_stage_handler();
    let handle = client
        .pipeline("service-creation", "setup-billing", handler)
        .await
        .unwrap();
    assert_eq!(
        handled(&mut rx, 1).await,
        [("id-root-up".to_owned(), b"root-up-data".to_vec(), 2, 30)]
    );
    up.wait_for(1, |_, f| stage_acks_of(f)).await;
    handle.stop().await.unwrap();
    up.wait_ended(is_pipeline_subscribe).await;
    assert_eq!(
        stage_acks(&up),
        [(
            5,
            b"root-up-data!".to_vec(),
            "service-creation/setup-billing/2/30".to_owned()
        )]
    );
    assert!(down.seen().is_empty());
}

#[tokio::test]
async fn a_stage_registration_answered_not_leader_is_retried_on_that_node() {
    // The other node is down: the start waits for the node that answered
    // NotLeader to accept on its runner's retry.
    let down = down_node().await;
    let follower = Mock::start(0, stage_node("root-f", 3, 40, 1)).await;
    let client =
        hadron::Client::new(&format!("{},{}", down.url, follower.url), fast_options()).unwrap();
    let (handler, mut rx) = echo_stage_handler();
    let handle = client
        .pipeline("service-creation", "setup-billing", handler)
        .await
        .unwrap();
    let registrations = follower
        .wait_for(2, |s, f| is_pipeline_subscribe(f).then_some(s.conn))
        .await;
    assert_eq!(registrations.len(), 2, "registered again after NotLeader");
    assert_ne!(
        registrations[0], registrations[1],
        "on a new connection to the same node"
    );
    assert_eq!(
        handled(&mut rx, 1).await,
        [("id-root-f".to_owned(), b"root-f-data".to_vec(), 3, 40)]
    );
    follower.wait_for(1, |_, f| stage_acks_of(f)).await;
    handle.stop().await.unwrap();
}

#[tokio::test]
async fn a_stage_handler_refused_by_every_node_returns_the_first_refusal_naming_its_node() {
    let refusing: Behavior = Arc::new(|_state, f| {
        vec![frame(
            f.request_id,
            &Message::Error(ErrorReply {
                code: ErrorCode::UnknownPipeline,
                message: "no pipeline nope",
                leader: None,
            }),
        )]
    });
    let a = Mock::start(0, Arc::clone(&refusing)).await;
    let b = Mock::start(0, refusing).await;
    let client = hadron::Client::new(&format!("{},{}", a.url, b.url), fast_options()).unwrap();
    let err = client
        .pipeline("nope", "stage", billing_handler)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnknownPipeline), "{err}");
    let a_addr = a.url.trim_start_matches("http://");
    let b_addr = b.url.trim_start_matches("http://");
    let shown = err.to_string();
    assert!(
        shown.contains(&format!("node {a_addr}: no pipeline nope"))
            || shown.contains(&format!("node {b_addr}: no pipeline nope")),
        "{shown}"
    );
    // Each node was asked once: a refusal is not retried.
    for node in [&a, &b] {
        assert_eq!(
            node.picked(|_, f| is_pipeline_subscribe(f).then_some(()))
                .len(),
            1
        );
    }
}

/// A cluster node for subscriptions: answers Subscribe with SubscribeOk
/// (`subscription_id`, `partitions`) and pushes one delivery (id 3, type
/// `ty`, on the first of `partitions`); answers Ack and Nack with AckOk.
fn subscribe_node(subscription_id: u64, partitions: Vec<u32>, ty: &'static str) -> Behavior {
    Arc::new(move |_state, f| match &f.message {
        Message::Subscribe(_) => {
            let event = delivery_event(ty, b"payload");
            vec![
                frame(
                    f.request_id,
                    &Message::SubscribeOk(SubscribeOk {
                        subscription_id,
                        partitions: partitions.clone(),
                    }),
                ),
                frame(
                    0,
                    &Message::Delivery(hadron_wire::Delivery {
                        subscription_id,
                        delivery_id: 3,
                        stream: "events",
                        partition: partitions[0],
                        offset: 8,
                        attempt: 1,
                        event: &event,
                    }),
                ),
            ]
        }
        Message::Ack(_) | Message::Nack(_) => vec![frame(f.request_id, &Message::AckOk)],
        _ => Vec::new(),
    })
}

#[tokio::test]
async fn a_subscription_given_a_node_list_registers_on_every_node_and_reports_the_union_of_partitions()
 {
    let a = Mock::start(0, subscribe_node(77, vec![0, 2], "from-a")).await;
    let b = Mock::start(0, subscribe_node(78, vec![2, 1], "from-b")).await;
    let client = hadron::Client::new(&format!("{},{}", a.url, b.url), fast_options()).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let subscription = client
        .subscribe(
            "events",
            "billing",
            hadron::SubscribeOptions::default(),
            move |d: hadron::Delivery| {
                tx.send((d.event.ty.clone(), d.subscription_id, d.partition))
                    .unwrap();
                std::future::ready(Ok::<(), std::io::Error>(()))
            },
        )
        .await
        .unwrap();
    assert!(
        [77, 78].contains(&subscription.id()),
        "the first accepting node's id: {}",
        subscription.id()
    );
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(
            tokio::time::timeout(WAIT_MAX, rx.recv())
                .await
                .expect("both nodes' deliveries are handled")
                .unwrap(),
        );
    }
    got.sort();
    assert_eq!(
        got,
        [("from-a".to_owned(), 77, 0), ("from-b".to_owned(), 78, 2)]
    );
    // A node's deliveries run only after its acceptance was recorded.
    assert_eq!(subscription.partitions(), [0, 1, 2]);
    for node in [&a, &b] {
        let acks = node
            .wait_for(1, |_, f| match &f.message {
                Message::Ack(ack) => Some(ack.delivery_ids.clone()),
                _ => None,
            })
            .await;
        assert_eq!(acks, [vec![3]]);
        let subscribes = node.picked(|_, f| match &f.message {
            Message::Subscribe(s) => Some((s.stream.to_owned(), s.group.to_owned())),
            _ => None,
        });
        assert_eq!(subscribes, [("events".to_owned(), "billing".to_owned())]);
    }
    subscription.stop().await.unwrap();
}

#[tokio::test]
async fn stopping_a_cluster_handler_closes_its_connection_to_every_node() {
    let nodes = [
        Mock::start(0, stage_node("r1", 0, 1, 0)).await,
        Mock::start(0, stage_node("r2", 1, 2, 0)).await,
        Mock::start(0, stage_node("r3", 2, 3, 0)).await,
    ];
    let urls: Vec<&str> = nodes.iter().map(|n| n.url.as_str()).collect();
    let client = hadron::Client::new(&urls.join(","), fast_options()).unwrap();
    let (handler, mut rx) = echo_stage_handler();
    let handle = client
        .pipeline("service-creation", "setup-billing", handler)
        .await
        .unwrap();
    assert_eq!(handled(&mut rx, 3).await.len(), 3);
    for node in &nodes {
        node.wait_for(1, |_, f| stage_acks_of(f)).await;
    }
    handle.stop().await.unwrap();
    for node in &nodes {
        node.wait_ended(is_pipeline_subscribe).await;
        assert_eq!(
            node.picked(|_, f| is_pipeline_subscribe(f).then_some(()))
                .len(),
            1,
            "registered once, and not again after the stop"
        );
    }
}

/// `InvalidRequest` naming the message: what a mock answers to anything
/// its scenario does not handle.
fn unsupported(f: &FrameRef<'_>) -> Vec<Out> {
    vec![frame(
        f.request_id,
        &Message::Error(ErrorReply {
            code: ErrorCode::InvalidRequest,
            message: f.message.name(),
            leader: None,
        }),
    )]
}

/// A node killed as an admin change reached it (its connection closes
/// before an answer): the change goes to the next bootstrap node, which
/// answers it (every admin change is idempotent, so a resend is safe).
#[tokio::test]
async fn an_admin_change_whose_connection_breaks_goes_to_the_next_node() {
    let dying: Behavior = Arc::new(|_state, f| match &f.message {
        Message::Apply(_) => vec![Out::Close],
        _ => unsupported(f),
    });
    let applying: Behavior = Arc::new(|_state, f| match &f.message {
        Message::Apply(_) => vec![frame(
            f.request_id,
            &Message::ApplyOk(hadron_wire::ApplyOk {
                summary: vec!["stream/orders created"],
            }),
        )],
        _ => unsupported(f),
    });
    let first = Mock::start(0, dying).await;
    let second = Mock::start(0, applying).await;
    let urls = format!("{},{}", first.url, second.url);
    let client = hadron::Client::new(&urls, fast_options()).unwrap();
    let summary = client.apply("kind: Stream\n").await.unwrap();
    assert_eq!(summary, vec!["stream/orders created".to_owned()]);
    let applies = |mock: &Mock| {
        mock.picked(|_, f| matches!(f.message, Message::Apply(_)).then_some(()))
            .len()
    };
    assert_eq!((applies(&first), applies(&second)), (1, 1));
}

/// Answers `Metadata` with the nodes in `addresses` (node ids 1, 2, ...)
/// and everything else as `pipeline_server`: a node of a cluster.
fn cluster_node(addresses: Arc<Mutex<Vec<String>>>) -> Behavior {
    let pipeline = pipeline_server();
    Arc::new(move |state, f| match &f.message {
        Message::Metadata(_) => {
            let addresses = addresses.lock().unwrap().clone();
            let nodes = (1u64..)
                .zip(&addresses)
                .map(|(node_id, address)| NodeInfo { node_id, address })
                .collect();
            let ok = MetadataOk {
                shards: 1,
                placement: PLACEMENT_NAME,
                nodes,
                ..MetadataOk::default()
            };
            vec![frame(f.request_id, &Message::MetadataOk(ok))]
        }
        _ => pipeline(state, f),
    })
}

/// A stage handler given one node's URL registers on every node the
/// cluster's Metadata names, so a node it was never told of delivers to
/// it; a node removed from the cluster loses the registration (its
/// connection is closed).
#[tokio::test]
async fn a_stage_handler_given_one_url_registers_on_every_node_metadata_names() {
    let addresses: Arc<Mutex<Vec<String>>> = Arc::default();
    let a = Mock::start(0, cluster_node(Arc::clone(&addresses))).await;
    let b = Mock::start(0, cluster_node(Arc::clone(&addresses))).await;
    let c = Mock::start(0, cluster_node(Arc::clone(&addresses))).await;
    let address = |m: &Mock| m.url.trim_start_matches("http://").to_owned();
    *addresses.lock().unwrap() = vec![address(&a), address(&b), address(&c)];
    let client = hadron::Client::new(&a.url, fast_options()).unwrap();
    let handle = client
        .pipeline("service-creation", "setup-billing", billing_handler)
        .await
        .unwrap();
    for node in [&b, &c] {
        let acks = node
            .wait_for(1, |_, f| match &f.message {
                Message::StageAck(a) => Some(a.delivery_id),
                _ => None,
            })
            .await;
        assert_eq!(acks, vec![9], "the delivery of a node given by Metadata");
    }
    // Node 3 leaves the cluster: the handler's runner there stops after a
    // later ask (a failed registration elsewhere asks at once; here the
    // periodic one is waited for).
    addresses.lock().unwrap().pop();
    let registered: HashSet<usize> = c
        .seen()
        .iter()
        .filter(|s| matches!(s.frame().message, Message::PipelineSubscribe(_)))
        .map(|s| s.conn)
        .collect();
    assert_eq!(registered.len(), 1, "one runner on node 3");
    let deadline = tokio::time::Instant::now() + hadron::NODES_REFRESH_INTERVAL * 2;
    loop {
        let notified = c.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if registered.is_subset(&c.ended.lock().unwrap()) {
            break;
        }
        assert!(
            tokio::time::timeout_at(deadline, notified).await.is_ok(),
            "node 3's registration was not dropped within two refreshes"
        );
    }
    let b_registrations =
        b.picked(|_, f| matches!(f.message, Message::PipelineSubscribe(_)).then_some(()));
    assert_eq!(b_registrations.len(), 1, "node 2 keeps its one runner");
    handle.stop().await.unwrap();
}

/// A node of a cluster that has not yet applied a stream its metadata
/// leader just created (nodes apply a change a moment after the leader
/// answered it): its first two Metadata answers lack `orders`, the third
/// has it. When `cluster` is false it names no nodes (a single server).
fn lagging_node(asked: Arc<AtomicUsize>, cluster: bool) -> Behavior {
    Arc::new(move |_, f| match &f.message {
        Message::Metadata(_) => {
            let n = asked.fetch_add(1, Ordering::SeqCst);
            let partitions = (0..3)
                .map(|partition| PartitionInfo {
                    partition,
                    shard: 0,
                    leader: None,
                })
                .collect();
            let streams = if n >= 2 {
                vec![StreamInfo {
                    name: "orders",
                    partitions,
                }]
            } else {
                Vec::new()
            };
            let nodes = if cluster {
                vec![
                    NodeInfo {
                        node_id: 1,
                        address: "127.0.0.1:1",
                    },
                    NodeInfo {
                        node_id: 2,
                        address: "127.0.0.1:2",
                    },
                ]
            } else {
                Vec::new()
            };
            let ok = MetadataOk {
                shards: 1,
                placement: PLACEMENT_NAME,
                streams,
                nodes,
                ..MetadataOk::default()
            };
            vec![frame(f.request_id, &Message::MetadataOk(ok))]
        }
        _ => unsupported(f),
    })
}

/// In a cluster, a stream the node asked does not know yet is asked for
/// again (for up to `STREAM_PROPAGATION_WAIT`), so that an apply followed
/// at once by a publish through another node works; a single server's
/// answer stands at once.
#[tokio::test]
async fn a_cluster_node_that_has_not_applied_a_new_stream_yet_is_asked_again() {
    let asked = Arc::new(AtomicUsize::new(0));
    let node = Mock::start(0, lagging_node(Arc::clone(&asked), true)).await;
    let client = hadron::Client::new(&node.url, fast_options()).unwrap();
    assert_eq!(client.partitions("orders").await.unwrap(), 3);
    assert_eq!(asked.load(Ordering::SeqCst), 3);

    let asked = Arc::new(AtomicUsize::new(0));
    let single = Mock::start(0, lagging_node(Arc::clone(&asked), false)).await;
    let client = hadron::Client::new(&single.url, fast_options()).unwrap();
    let e = client.partitions("orders").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::UnknownStream), "{e}");
    assert_eq!(asked.load(Ordering::SeqCst), 1);
}
