//! One TCP connection to a server port: the handshake, then one task that
//! writes queued frames and reads incoming ones concurrently.
//!
//! Requests are pipelined. Each gets the next request id (starting at 1,
//! never 0) and a oneshot in the `pending` map; the reader completes the
//! oneshot whose id the answer carries, in whatever order answers arrive.
//! Pushes (request id 0: `Delivery`, `StageDelivery`) are decoded into what
//! their handlers receive and go to the connection's push sink, if it has
//! one.
//!
//! Sending: a request encodes its frame straight into the connection's
//! outbox (one buffer, under the lock that also guards the encoder) and
//! wakes the writer only when the outbox was empty. The writer yields once
//! before taking the outbox, so the frames of every task that was ready to
//! run (for example many handlers answering their deliveries) leave in one
//! write: one syscall for many acks instead of one each.
//!
//! Invariants:
//! - Once a connection is dead (`State::dead` is set) no request is added
//!   to `pending`, and every request that was pending has been failed with
//!   `Error::ConnectionLost`, so no caller waits forever.
//! - At most `max_in_flight` requests are outstanding (a semaphore permit
//!   is held from before sending until the answer or the give-up), so the
//!   outbox holds at most that many frames.
//! - The outbox holds whole frames only, in the order their requests were
//!   queued; the writer writes all it takes before taking more.
//! - The task ends, and the socket closes, when the last `Conn` handle is
//!   dropped (after the writer wrote what was queued) or the socket fails.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use hadron_wire::{
    Encoder, Limits, Message, PLACEMENT_NAME, PROTOCOL_VERSION, PublishOk, SubscribeOk, split_frame,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};

use crate::endpoint::Endpoint;
use crate::subscribe::{Delivery, StageInput};
use crate::{ClientOptions, Error, tls};

/// Bytes read from the socket per `read_buf` call, at least.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Capacity an outbox buffer keeps after its frames were written; a larger
/// one (left by a large publish) is given back to the allocator.
const OUTBOX_RETAIN_BYTES_MAX: usize = 256 * 1024;

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
    MetadataOk(crate::Metadata),
    TokenListOk(Vec<crate::TokenInfo>),
}

/// A push from the server, decoded straight from its frame into what the
/// handler receives (one copy of each field), or the nack message saying
/// why its events did not decode.
///
/// The decoded value is boxed: a push is moved through a channel and into
/// the task that handles it, and a small push keeps that task small enough
/// for the allocator's fast path (a `StageInput` alone is about 300 bytes).
#[derive(Debug)]
pub(crate) enum Push {
    Delivery {
        delivery_id: u64,
        delivery: Result<Box<Delivery>, String>,
    },
    Stage {
        delivery_id: u64,
        input: Result<Box<StageInput>, String>,
    },
}

/// Bytes a `Push` may take (40 on 64-bit targets): see above.
const PUSH_BYTES_MAX: usize = 64;
const _: () = assert!(std::mem::size_of::<Push>() <= PUSH_BYTES_MAX);

impl Push {
    pub fn delivery_id(&self) -> u64 {
        match self {
            Push::Delivery { delivery_id, .. } | Push::Stage { delivery_id, .. } => *delivery_id,
        }
    }
}

type Waiter = oneshot::Sender<Result<Reply, Error>>;

#[derive(Default)]
struct State {
    next_id: u64,
    pending: HashMap<u64, Waiter>,
    dead: Option<String>,
}

/// Frames waiting for the writer, and the encoder that writes them there.
struct Outbox {
    encoder: Encoder,
    /// Whole frames, length prefixes included, in the order queued.
    frames: Vec<u8>,
    /// The last `Conn` handle is gone: once `frames` is written the writer
    /// closes the socket.
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    outbox: Mutex<Outbox>,
    /// Woken when `outbox.frames` stops being empty, or on close.
    outbox_ready: Notify,
}

impl Shared {
    /// A connection's shared state before its first request: the next
    /// request id is 2 (the handshake was 1).
    fn new(limits: &Limits) -> Shared {
        Shared {
            state: Mutex::new(State {
                next_id: 2,
                ..State::default()
            }),
            outbox: Mutex::new(Outbox {
                encoder: Encoder::new(limits),
                frames: Vec::new(),
                closed: false,
            }),
            outbox_ready: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means another thread panicked while holding
        // it; the map itself is still consistent (every update is one call).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn outbox(&self) -> MutexGuard<'_, Outbox> {
        // As for `lock`: a frame is appended by one call, which either
        // wrote it whole or wrote nothing (the encoder fails before
        // writing).
        self.outbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Encodes `message` as request `request_id` at the end of the outbox
    /// and wakes the writer if the outbox was empty (otherwise a wake-up is
    /// already on its way).
    fn queue(&self, request_id: u64, message: &Message<'_>) -> Result<(), Error> {
        let was_empty = {
            let mut outbox = self.outbox();
            let Outbox {
                encoder, frames, ..
            } = &mut *outbox;
            let was_empty = frames.is_empty();
            encoder.encode_into(request_id, message, frames)?;
            was_empty
        };
        if was_empty {
            self.outbox_ready.notify_one();
        }
        Ok(())
    }

    /// Tells the writer that nothing more will be queued: it writes what
    /// is and closes the socket.
    fn close(&self) {
        self.outbox().closed = true;
        self.outbox_ready.notify_one();
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

/// Removes a request's waiter when its caller stops waiting (error,
/// timeout or the caller's future being dropped). Disarmed once the waiter
/// is known to be gone from `pending` (the reader or `fail_all` took it),
/// which saves a lock per answered request.
struct PendingGuard<'a> {
    shared: &'a Shared,
    id: u64,
    armed: bool,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.shared.lock().pending.remove(&self.id);
        }
    }
}

/// A handle to one open, handshaken connection. Dropping the last handle
/// closes the connection.
#[derive(Debug)]
pub(crate) struct Conn {
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    request_timeout: Duration,
    pub info: ServerInfo,
    pub endpoint: Endpoint,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.shared.close();
    }
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
        let mut tcp = connect_tcp(endpoint, options, &addr).await?;
        let Some(tls) = &endpoint.tls else {
            let (info, buf) = handshake(&mut tcp, options, &addr).await?;
            let (read, write) = tcp.into_split();
            return Ok(Conn::start(
                endpoint,
                options,
                info,
                (read, write, buf),
                push,
            ));
        };
        let connect = tls.connect(&endpoint.host, &addr, tcp);
        let mut stream = match tokio::time::timeout(options.connect_timeout, connect).await {
            Ok(stream) => stream?,
            Err(_) => {
                return Err(Error::Connect {
                    addr,
                    source: std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no TLS handshake within {:?}", options.connect_timeout),
                    ),
                });
            }
        };
        let (info, buf) = handshake(&mut stream, options, &addr).await?;
        let (read, write) = tokio::io::split(stream);
        Ok(Conn::start(
            endpoint,
            options,
            info,
            (read, write, buf),
            push,
        ))
    }

    /// Starts the task of a handshaken connection: its read half, write
    /// half, and the bytes read after the handshake's answer.
    fn start<R, W>(
        endpoint: &Endpoint,
        options: &ClientOptions,
        info: ServerInfo,
        (read, write, buf): (R, W, BytesMut),
        push: Option<mpsc::Sender<Push>>,
    ) -> Arc<Conn>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let addr = endpoint.to_string();
        let limits = options.limits();
        let in_flight_max = options.max_in_flight_requests.max(1);
        let shared = Arc::new(Shared::new(&limits));
        let task_shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let result = tokio::select! {
                r = read_loop(read, buf, &task_shared, push, limits) => r,
                r = write_loop(write, &task_shared) => r,
            };
            let reason = match result {
                Ok(()) => "connection closed by the client".to_owned(),
                Err(e) => e.to_string(),
            };
            tracing::debug!(%addr, %reason, "connection ended");
            task_shared.fail_all(&reason);
        });
        Arc::new(Conn {
            shared,
            permits: Arc::new(Semaphore::new(in_flight_max)),
            request_timeout: options.request_timeout,
            info,
            endpoint: endpoint.clone(),
        })
    }

    /// Whether the connection can still carry requests.
    pub fn is_alive(&self) -> bool {
        // The task marks the connection dead as it ends, whichever half
        // ended it.
        self.shared.lock().dead.is_none()
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
        let mut guard = PendingGuard {
            shared: &self.shared,
            id,
            armed: true,
        };
        self.shared.queue(id, message)?;
        match tokio::time::timeout(self.request_timeout, rx).await {
            Ok(answered) => {
                // The reader removed the waiter to answer it, or `fail_all`
                // took it and dropped it.
                guard.armed = false;
                answered.unwrap_or_else(|_| Err(Error::lost("connection closed")))
            }
            Err(_) => Err(Error::Timeout {
                what,
                after: self.request_timeout,
            }),
        }
    }
}

/// Opens the TCP connection to `endpoint` within `connect_timeout`.
async fn connect_tcp(
    endpoint: &Endpoint,
    options: &ClientOptions,
    addr: &str,
) -> Result<TcpStream, Error> {
    let connect = TcpStream::connect((endpoint.host.as_str(), endpoint.port));
    let stream = match tokio::time::timeout(options.connect_timeout, connect).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(source)) => {
            return Err(Error::Connect {
                addr: addr.to_owned(),
                source,
            });
        }
        Err(_) => {
            return Err(Error::Connect {
                addr: addr.to_owned(),
                source: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no connection within {:?}", options.connect_timeout),
                ),
            });
        }
    };
    stream.set_nodelay(true).map_err(Error::Io)?;
    Ok(stream)
}

/// An I/O error during the handshake: `Error::Tls` when TLS refused.
fn handshake_io(addr: &str, e: std::io::Error) -> Error {
    tls::tls_failure(addr, e).unwrap_or_else(Error::Io)
}

/// The Hadron handshake, the only request on the connection until it is
/// answered, within `request_timeout`: what the server said, and the
/// bytes read after its answer.
async fn handshake<S>(
    stream: &mut S,
    options: &ClientOptions,
    addr: &str,
) -> Result<(ServerInfo, BytesMut), Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let limits = options.limits();
    let hello = Message::Handshake(hadron_wire::Handshake {
        version: PROTOCOL_VERSION,
        token: options.token.as_deref().unwrap_or_default(),
        client_name: &options.name,
    });
    let frame = hadron_wire::encode(1, &hello)?;
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let handshake = async {
        stream
            .write_all(&frame)
            .await
            .map_err(|e| handshake_io(addr, e))?;
        stream.flush().await.map_err(|e| handshake_io(addr, e))?;
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
            let read = stream
                .read_buf(&mut buf)
                .await
                .map_err(|e| handshake_io(addr, e))?;
            if read == 0 && tls::looks_like_tls(&buf) {
                return Err(Error::Tls {
                    addr: addr.to_owned(),
                    reason: "the server answered in TLS; connect with an https:// URL".into(),
                });
            }
            if read == 0 {
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
    Ok((info, buf))
}

/// Writes what requests queue in the outbox until the last `Conn` handle is
/// gone (then closes the write side) or the socket fails.
async fn write_loop<W: AsyncWrite + Unpin>(mut write: W, shared: &Shared) -> Result<(), Error> {
    // The buffer being written; swapped with the outbox's, so neither
    // side allocates in the steady state.
    let mut batch = Vec::new();
    loop {
        shared.outbox_ready.notified().await;
        // The wake-up came from the first frame queued; let the other
        // tasks that are ready to run (handlers finishing at the same
        // time) queue theirs, so that one write carries them all. The
        // cost is the time those tasks run, once per write.
        tokio::task::yield_now().await;
        let closed = {
            let mut outbox = shared.outbox();
            std::mem::swap(&mut outbox.frames, &mut batch);
            outbox.closed
        };
        if !batch.is_empty() {
            write.write_all(&batch).await.map_err(Error::Io)?;
            // Free on a plain socket; TLS may hold back the tail of what
            // it accepted until flushed.
            write.flush().await.map_err(Error::Io)?;
            batch.clear();
            if batch.capacity() > OUTBOX_RETAIN_BYTES_MAX {
                batch = Vec::new();
            }
        }
        if closed {
            // No handle is left to queue more, so this was the last batch.
            let _ = write.shutdown().await;
            return Ok(());
        }
    }
}

async fn read_loop(
    mut read: impl AsyncRead + Unpin,
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
                        delivery_id: d.delivery_id,
                        delivery: Delivery::from_wire(&d, &limits)
                            .map(Box::new)
                            .map_err(|e| format!("client: {e}")),
                    },
                    Message::StageDelivery(d) => Push::Stage {
                        delivery_id: d.delivery_id,
                        input: StageInput::from_wire(&d, &limits)
                            .map(Box::new)
                            .map_err(|e| format!("client: {e}")),
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
                Message::MetadataOk(ok) => Ok(Reply::MetadataOk(crate::Metadata::from_wire(&ok))),
                Message::TokenListOk(ok) => {
                    Ok(Reply::TokenListOk(crate::client::tokens::token_infos(&ok)))
                }
                Message::Error(e) => Err(Error::from_reply(&e)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// A writer that records the bytes of each `poll_write` call and
    /// accepts all of them.
    #[derive(Clone, Default)]
    struct Recorder {
        writes: Arc<Mutex<Vec<Vec<u8>>>>,
        shut_down: Arc<Mutex<bool>>,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.writes.lock().unwrap().push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            *self.shut_down.lock().unwrap() = true;
            Poll::Ready(Ok(()))
        }
    }

    /// The request ids of the whole frames in `bytes`, which must hold
    /// nothing else.
    fn request_ids(mut bytes: &[u8]) -> Vec<u64> {
        let mut ids = Vec::new();
        while let Some((body, total)) = split_frame(bytes, &Limits::DEFAULT).unwrap() {
            ids.push(
                hadron_wire::decode(body, &Limits::DEFAULT)
                    .unwrap()
                    .request_id,
            );
            bytes = &bytes[total..];
        }
        assert!(bytes.is_empty(), "{} bytes of a partial frame", bytes.len());
        ids
    }

    /// A task queues a frame, waking the writer, and more tasks become
    /// ready to run after the writer: the writer yields once before taking
    /// the outbox, so their frames leave with the first in one write
    /// (without the yield it would write the first frame alone). The
    /// current-thread runtime makes the order of the tasks deterministic.
    #[tokio::test(flavor = "current_thread")]
    async fn frames_of_tasks_ready_together_leave_in_one_write_whole_and_in_order() {
        const TASKS: u64 = 16;
        let shared = Arc::new(Shared::new(&Limits::DEFAULT));
        let out = Recorder::default();
        let writer = tokio::spawn({
            let shared = Arc::clone(&shared);
            let out = out.clone();
            async move { write_loop(out, &shared).await }
        });
        // Let the writer start waiting.
        tokio::task::yield_now().await;
        assert!(out.writes.lock().unwrap().is_empty());

        shared.queue(1, &Message::Status).unwrap();
        let queued: Vec<_> = (2..=TASKS)
            .map(|id| {
                let shared = Arc::clone(&shared);
                tokio::spawn(async move { shared.queue(id, &Message::Status) })
            })
            .collect();
        for q in queued {
            q.await.unwrap().unwrap();
        }
        // Let the writer finish the write before closing.
        while out.writes.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        shared.close();
        writer.await.unwrap().unwrap();

        let writes = out.writes.lock().unwrap().clone();
        let ids: Vec<Vec<u64>> = writes.iter().map(|w| request_ids(w)).collect();
        assert_eq!(
            ids,
            vec![(1..=TASKS).collect::<Vec<_>>()],
            "one write, in order"
        );
        assert!(
            *out.shut_down.lock().unwrap(),
            "closed after the last frame"
        );
        assert!(shared.outbox().frames.is_empty());
    }

    /// Frames queued before the writer starts and while it runs are all
    /// written, whole and in the order queued, before close shuts the
    /// socket down.
    #[tokio::test]
    async fn frames_queued_before_close_are_all_written_in_order() {
        let shared = Arc::new(Shared::new(&Limits::DEFAULT));
        let out = Recorder::default();
        for id in [7, 3, 9] {
            shared.queue(id, &Message::Status).unwrap();
        }
        let writer = tokio::spawn({
            let shared = Arc::clone(&shared);
            let out = out.clone();
            async move { write_loop(out, &shared).await }
        });
        for id in [4, 8] {
            shared.queue(id, &Message::Status).unwrap();
        }
        shared.close();
        writer.await.unwrap().unwrap();
        let writes = out.writes.lock().unwrap().clone();
        let ids: Vec<u64> = writes.iter().flat_map(|w| request_ids(w)).collect();
        assert_eq!(ids, vec![7, 3, 9, 4, 8]);
        assert!(*out.shut_down.lock().unwrap());
    }

    #[test]
    fn a_frame_the_encoder_refuses_leaves_the_outbox_unchanged() {
        let limits = Limits {
            frame_bytes_max: 64,
            ..Limits::DEFAULT
        };
        let shared = Shared::new(&limits);
        shared.queue(2, &Message::Status).unwrap();
        let before = shared.outbox().frames.clone();
        let yaml = "x".repeat(100);
        let big = Message::Apply(hadron_wire::Apply {
            yaml: &yaml,
            force: false,
        });
        assert!(matches!(shared.queue(3, &big), Err(Error::Encode(_))));
        assert_eq!(shared.outbox().frames, before);
        assert_eq!(request_ids(&before), vec![2]);
    }
}
