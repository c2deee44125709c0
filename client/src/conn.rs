//! One TCP connection to a server port: the handshake, then one task that
//! writes queued frames and reads incoming ones concurrently.
//!
//! Requests are pipelined. Each gets the next request id (starting at 1,
//! never 0) and a oneshot in the `pending` map; the reader completes the
//! oneshot whose id the answer carries, in whatever order answers arrive.
//! Pushes (request id 0: `Delivery`, `StageDelivery`) go to the
//! connection's push sink, if it has one.
//!
//! Invariants:
//! - Once a connection is dead (`State::dead` is set) no request is added
//!   to `pending`, and every request that was pending has been failed with
//!   `Error::ConnectionLost`, so no caller waits forever.
//! - At most `max_in_flight` requests are outstanding (a semaphore permit
//!   is held from before sending until the answer or the give-up).
//! - The task ends, and the socket closes, when the last `Conn` handle is
//!   dropped (its frame sender closes) or the socket fails.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use hadron_wire::{
    Encoder, Limits, Message, PLACEMENT_NAME, PROTOCOL_VERSION, PublishOk, SubscribeOk, split_frame,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::endpoint::Endpoint;
use crate::{ClientOptions, Error};

/// Bytes read from the socket per `read_buf` call, at least.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Buffered bytes written per flush, at most.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// What the server said about itself in `HandshakeOk`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// Protocol version the server speaks on the connection.
    pub version: u16,
    /// Number of shards (at least 1).
    pub shards: u16,
    /// Each shard's own port, indexed by shard id; empty when the server
    /// does not offer shard ports.
    pub shard_ports: Vec<u16>,
    /// Name of the placement function (`"fnv1a64-v1"`).
    pub placement: String,
}

impl ServerInfo {
    /// Whether requests can be sent straight to the owning shard's port.
    pub fn shard_aware(&self) -> bool {
        self.placement == PLACEMENT_NAME
            && self.shards > 0
            && self.shard_ports.len() == usize::from(self.shards)
    }
}

/// An answer to a request, copied out of its frame. Variants are named as
/// the protocol's messages are.
#[derive(Debug)]
#[expect(
    clippy::enum_variant_names,
    reason = "the names are the protocol's message names"
)]
pub(crate) enum Reply {
    PublishOk(PublishOk),
    FetchOk {
        partition: u32,
        next_offset: u64,
        records: Vec<(u64, Vec<u8>)>,
    },
    SubscribeOk(SubscribeOk),
    AckOk,
    ApplyOk(Vec<String>),
    StatusOk(String),
}

/// A push from the server, copied out of its frame.
#[derive(Debug)]
pub(crate) enum Push {
    Delivery {
        subscription_id: u64,
        delivery_id: u64,
        stream: String,
        partition: u32,
        offset: u64,
        attempt: u32,
        event: Vec<u8>,
    },
    Stage {
        delivery_id: u64,
        pipeline: String,
        stage: String,
        partition: u32,
        offset: u64,
        attempt: u32,
        root: Vec<u8>,
        inputs: Vec<(String, Vec<u8>)>,
    },
}

type Waiter = oneshot::Sender<Result<Reply, Error>>;

#[derive(Default)]
struct State {
    next_id: u64,
    pending: HashMap<u64, Waiter>,
    dead: Option<String>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means another thread panicked while holding
        // it; the map itself is still consistent (every update is one call).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the connection dead and fails every pending request.
    fn fail_all(&self, reason: &str) {
        let pending = {
            let mut state = self.lock();
            if state.dead.is_none() {
                state.dead = Some(reason.to_owned());
            }
            std::mem::take(&mut state.pending)
        };
        for (_, waiter) in pending {
            let _ = waiter.send(Err(Error::lost(reason)));
        }
    }
}

/// Removes a request's waiter when its caller stops waiting (answer, error,
/// timeout or the caller's future being dropped).
struct PendingGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.shared.lock().pending.remove(&self.id);
    }
}

/// A handle to one open, handshaken connection. Dropping the last handle
/// closes the connection.
#[derive(Debug)]
pub(crate) struct Conn {
    frames: mpsc::Sender<Vec<u8>>,
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    request_timeout: Duration,
    encoder: Mutex<Encoder>,
    pub info: ServerInfo,
    pub endpoint: Endpoint,
}

impl core::fmt::Debug for Shared {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let state = self.lock();
        f.debug_struct("Shared")
            .field("pending", &state.pending.len())
            .field("dead", &state.dead)
            .finish()
    }
}

impl Conn {
    /// Connects to `endpoint`, performs the handshake and starts the
    /// connection's task. Pushes go to `push` when given.
    pub async fn open(
        endpoint: &Endpoint,
        options: &ClientOptions,
        push: Option<mpsc::Sender<Push>>,
    ) -> Result<Arc<Conn>, Error> {
        let addr = endpoint.to_string();
        let connect = TcpStream::connect((endpoint.host.as_str(), endpoint.port));
        let mut stream = match tokio::time::timeout(options.connect_timeout, connect).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => return Err(Error::Connect { addr, source }),
            Err(_) => {
                return Err(Error::Connect {
                    addr,
                    source: std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no connection within {:?}", options.connect_timeout),
                    ),
                });
            }
        };
        stream.set_nodelay(true).map_err(Error::Io)?;
        let limits = options.limits();

        // The handshake is the only request on the connection until it is
        // answered, so it is done inline before the task starts.
        let hello = Message::Handshake(hadron_wire::Handshake {
            version: PROTOCOL_VERSION,
            token: options.token.as_deref().unwrap_or_default(),
            client_name: &options.name,
        });
        let frame = hadron_wire::encode(1, &hello)?;
        let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
        let handshake = async {
            stream.write_all(&frame).await.map_err(Error::Io)?;
            loop {
                if let Some((body, total)) =
                    split_frame(&buf, &limits).map_err(|e| Error::Protocol(e.to_string()))?
                {
                    let frame = hadron_wire::decode(body, &limits)?;
                    let reply = match frame.message {
                        Message::HandshakeOk(ok) if frame.request_id == 1 => ServerInfo {
                            version: ok.version,
                            shards: ok.shards,
                            shard_ports: ok.shard_ports,
                            placement: ok.placement.to_owned(),
                        },
                        Message::Error(e) => return Err(Error::server(e.code, e.message)),
                        other => {
                            return Err(Error::Protocol(format!(
                                "expected HandshakeOk for request 1, got {} for request {}",
                                other.name(),
                                frame.request_id
                            )));
                        }
                    };
                    buf.advance(total);
                    return Ok(reply);
                }
                buf.reserve(READ_CHUNK_BYTES);
                if stream.read_buf(&mut buf).await.map_err(Error::Io)? == 0 {
                    return Err(Error::lost(
                        "the server closed the connection during the handshake",
                    ));
                }
            }
        };
        let info = match tokio::time::timeout(options.request_timeout, handshake).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(Error::Timeout {
                    what: "handshake",
                    after: options.request_timeout,
                });
            }
        };
        if info.shards == 0
            || !(info.shard_ports.is_empty() || info.shard_ports.len() == usize::from(info.shards))
        {
            return Err(Error::Protocol(format!(
                "HandshakeOk reports {} shards and {} shard ports",
                info.shards,
                info.shard_ports.len()
            )));
        }
        tracing::debug!(%addr, shards = info.shards, ports = ?info.shard_ports, "connected");

        let in_flight_max = options.max_in_flight_requests.max(1);
        let (frames, frames_rx) = mpsc::channel(in_flight_max);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                next_id: 2,
                ..State::default()
            }),
        });
        let (read, write) = stream.into_split();
        let task_shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let result = tokio::select! {
                r = read_loop(read, buf, &task_shared, push, limits) => r,
                r = write_loop(write, frames_rx) => r,
            };
            let reason = match result {
                Ok(()) => "connection closed by the client".to_owned(),
                Err(e) => e.to_string(),
            };
            tracing::debug!(%addr, %reason, "connection ended");
            task_shared.fail_all(&reason);
        });
        Ok(Arc::new(Conn {
            frames,
            shared,
            permits: Arc::new(Semaphore::new(in_flight_max)),
            request_timeout: options.request_timeout,
            encoder: Mutex::new(Encoder::new(&limits)),
            info,
            endpoint: endpoint.clone(),
        }))
    }

    /// Whether the connection can still carry requests.
    pub fn is_alive(&self) -> bool {
        self.shared.lock().dead.is_none() && !self.frames.is_closed()
    }

    /// Sends `message` as a request and waits for its answer. A server
    /// `Error` answer becomes `Error::Server`.
    pub async fn request(&self, what: &'static str, message: &Message<'_>) -> Result<Reply, Error> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| Error::lost("connection closed"))?;
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut state = self.shared.lock();
            if let Some(reason) = &state.dead {
                return Err(Error::lost(reason.clone()));
            }
            let id = state.next_id;
            state.next_id += 1;
            state.pending.insert(id, tx);
            id
        };
        let _guard = PendingGuard {
            shared: &self.shared,
            id,
        };
        let frame = self
            .encoder
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .encode(id, message)?;
        if self.frames.send(frame).await.is_err() {
            return Err(Error::lost("connection closed"));
        }
        match tokio::time::timeout(self.request_timeout, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(Error::lost("connection closed")),
            Err(_) => Err(Error::Timeout {
                what,
                after: self.request_timeout,
            }),
        }
    }
}

async fn write_loop(
    write: OwnedWriteHalf,
    mut frames: mpsc::Receiver<Vec<u8>>,
) -> Result<(), Error> {
    let mut out = BufWriter::with_capacity(WRITE_BUFFER_BYTES, write);
    while let Some(frame) = frames.recv().await {
        out.write_all(&frame).await.map_err(Error::Io)?;
        // Coalesce whatever else is queued into the same flush.
        while let Ok(frame) = frames.try_recv() {
            out.write_all(&frame).await.map_err(Error::Io)?;
        }
        out.flush().await.map_err(Error::Io)?;
    }
    let _ = out.shutdown().await;
    Ok(())
}

async fn read_loop(
    mut read: OwnedReadHalf,
    mut buf: BytesMut,
    shared: &Shared,
    push: Option<mpsc::Sender<Push>>,
    limits: Limits,
) -> Result<(), Error> {
    loop {
        while let Some((body, total)) =
            split_frame(&buf, &limits).map_err(|e| Error::Protocol(e.to_string()))?
        {
            let frame = hadron_wire::decode(body, &limits)?;
            let request_id = frame.request_id;
            if request_id == 0 {
                let pushed = match frame.message {
                    Message::Delivery(d) => Push::Delivery {
                        subscription_id: d.subscription_id,
                        delivery_id: d.delivery_id,
                        stream: d.stream.to_owned(),
                        partition: d.partition,
                        offset: d.offset,
                        attempt: d.attempt,
                        event: d.event.to_vec(),
                    },
                    Message::StageDelivery(d) => Push::Stage {
                        delivery_id: d.delivery_id,
                        pipeline: d.pipeline.to_owned(),
                        stage: d.stage.to_owned(),
                        partition: d.partition,
                        offset: d.offset,
                        attempt: d.attempt,
                        root: d.root.to_vec(),
                        inputs: d
                            .inputs
                            .iter()
                            .map(|i| (i.stage.to_owned(), i.event.to_vec()))
                            .collect(),
                    },
                    Message::Error(e) => {
                        // Request id 0: the error concerns the whole
                        // connection, which the server closes.
                        return Err(Error::server(e.code, e.message));
                    }
                    other => {
                        return Err(Error::Protocol(format!(
                            "unexpected {} push with request id 0",
                            other.name()
                        )));
                    }
                };
                buf.advance(total);
                match &push {
                    Some(sink) => {
                        if sink.send(pushed).await.is_err() {
                            // Nobody handles pushes any more: the
                            // subscription was stopped.
                            return Ok(());
                        }
                    }
                    None => tracing::warn!("dropping a push on a connection without subscriptions"),
                }
                continue;
            }
            let reply = match frame.message {
                Message::HandshakeOk(_) => Err(Error::Protocol("a second HandshakeOk".into())),
                Message::PublishOk(ok) => Ok(Reply::PublishOk(ok)),
                Message::FetchOk(ok) => Ok(Reply::FetchOk {
                    partition: ok.partition,
                    next_offset: ok.next_offset,
                    records: ok
                        .records
                        .iter()
                        .map(|r| (r.offset, r.event.to_vec()))
                        .collect(),
                }),
                Message::SubscribeOk(ok) => Ok(Reply::SubscribeOk(ok)),
                Message::AckOk => Ok(Reply::AckOk),
                Message::ApplyOk(ok) => Ok(Reply::ApplyOk(
                    ok.summary.iter().map(|s| (*s).to_owned()).collect(),
                )),
                Message::StatusOk(ok) => Ok(Reply::StatusOk(ok.json.to_owned())),
                Message::Error(e) => Err(Error::server(e.code, e.message)),
                other => Err(Error::Protocol(format!(
                    "unexpected {} as an answer",
                    other.name()
                ))),
            };
            let closes =
                matches!(&reply, Err(Error::Server { code, .. }) if code.closes_connection());
            buf.advance(total);
            let waiter = shared.lock().pending.remove(&request_id);
            match waiter {
                Some(waiter) => {
                    let _ = waiter.send(reply);
                }
                // The caller gave up (timeout) or the id is bogus.
                None => tracing::debug!(request_id, "answer to a request nobody waits for"),
            }
            if closes {
                return Err(Error::lost(
                    "the server closed the connection after an error",
                ));
            }
        }
        buf.reserve(READ_CHUNK_BYTES);
        if read.read_buf(&mut buf).await.map_err(Error::Io)? == 0 {
            return Err(Error::lost("the server closed the connection"));
        }
    }
}
