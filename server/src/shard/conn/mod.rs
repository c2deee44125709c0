//! One client connection, on the shard that accepted it.
//!
//! The reader splits the byte stream into frames (`hadron_wire::split_frame`,
//! bounded by `frame_bytes_max`), verifies and decodes each, turns it into an
//! owned [`Op`] and serves it in its own task, so requests are pipelined and
//! answered as they finish, possibly out of order. Answers and pushed
//! deliveries are encoded straight into the connection's [`Outbox`]; the
//! writer takes everything queued there in one piece per write.
//!
//! Bad input never hurts anyone else: a frame over the limit or one that
//! fails verification gets an `Error` frame and the connection is closed
//! (framing is lost); a well-framed request that makes no sense gets an
//! `Error` with its request id and the connection carries on.
//!
//! Each request family is answered by its own module: `streams` (publish,
//! fetch, metadata), `groups` (subscribe, ack, nack), `pipelines` (stage
//! subscriptions, acks, nacks, retries), `admin` (apply, status) and
//! `tokens` (token create, list, revoke). `auth` checks each request
//! against the connection's token first.
//!
//! With `tls:` the connection is TLS from its first byte (`tls`); the code
//! after the TLS handshake is generic over the stream, so a plain
//! connection runs the same code on glommio's `TcpStream` directly.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::future::{AbortHandle, Abortable, select};
use futures::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;
use hadron_engine::notify::Notify;
use hadron_wire::{FrameRef, Message, PLACEMENT_NAME, PROTOCOL_VERSION, StartPoint};

use super::error::{Error, Limit};
use super::group::MemberId;
use super::outbox::{self, Outbox};
use super::pipeline::StageAckOf;
use super::{NodeChange, Reply, Request, Shard, TokenChange};
use crate::config::ServerConfig;

mod admin;
pub(crate) mod auth;
mod groups;
pub mod peer;
mod pipelines;
mod streams;
mod tls;
mod tokens;

/// How long a refused connection's error frame may take to leave.
const REFUSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// The idle watchdog sleeps at least this long between checks.
const IDLE_CHECK_MIN: Duration = Duration::from_millis(100);
/// Bytes read from the socket at a time.
const READ_CHUNK_BYTES: usize = 64 << 10;
/// Default `max_bytes` of a fetch that gives 0.
const FETCH_BYTES_DEFAULT: u32 = 1 << 20;

/// The most event bytes one Fetch answer carries (a larger `max_bytes` is
/// clamped to it): half a frame, so that the answer's per-record framing
/// always fits too. A single record is returned whole whatever its size;
/// records are bounded by the batch limit, far below a frame.
pub fn fetch_bytes_max(config: &crate::config::ServerConfig) -> u32 {
    u32::try_from(config.frame_bytes_max / 2).unwrap_or(u32::MAX)
}

/// A decoded request, owning its data so it can be served in its own task.
#[derive(Debug)]
enum Op {
    Publish {
        stream: String,
        partition: u32,
        /// Slices of the received frame: no copy.
        events: Vec<Bytes>,
    },
    Fetch {
        stream: String,
        partition: u32,
        offset: u64,
        max_bytes: u32,
    },
    Subscribe {
        stream: String,
        group: String,
        durable: bool,
        start: StartPoint,
        max_in_flight: u32,
    },
    Ack(Vec<u64>),
    Nack(u64, String),
    Apply(String, bool),
    Status,
    PipelineSubscribe {
        pipeline: String,
        stage: String,
        max_in_flight: u32,
    },
    /// (delivery id, output): slices of the received frame.
    StageAcks(Vec<StageAckOf>),
    StageNack(u64, String),
    PipelineRetry(String, Option<(u32, u64)>),
    /// The streams asked for; empty for all.
    Metadata(Vec<String>),
    TokenCreate(crate::config::TokenSpec),
    TokenList,
    /// The token's name and the client's change id (0: none).
    TokenRevoke(String, u64),
    /// `hadron cluster move`: stream, partition, target voters.
    PartitionMove(String, u32, Vec<u64>),
    /// `hadron cluster add-node` / `remove-node`.
    Nodes(NodeChange),
    /// `hadron cluster rebalance`: nodes to drain, moves at most (0: the
    /// default), dry run, the client's change id.
    Rebalance(crate::shard::meta::rebalance::Asked),
    Refuse(Error),
}

impl Op {
    /// A subscription's `max_in_flight` is read as at least 1 and at most
    /// `deliveriesInFlightMax` (a larger one is lowered, not refused).
    fn clamp_in_flight(&mut self, deliveries_in_flight_max: u32) {
        if let Op::Subscribe { max_in_flight, .. } | Op::PipelineSubscribe { max_in_flight, .. } =
            self
        {
            *max_in_flight = (*max_in_flight).clamp(1, deliveries_in_flight_max.max(1));
        }
    }

    /// `frame` is the buffer `message` was decoded from; event bytes are
    /// taken as slices of it.
    fn from_message(message: &Message<'_>, frame: &Bytes) -> Op {
        match message {
            Message::Publish(p) => Op::Publish {
                stream: p.stream.to_string(),
                partition: p.partition,
                events: p.events.iter().map(|e| frame.slice_ref(e)).collect(),
            },
            Message::Fetch(f) => Op::Fetch {
                stream: f.stream.to_string(),
                partition: f.partition,
                offset: f.offset,
                max_bytes: if f.max_bytes == 0 {
                    FETCH_BYTES_DEFAULT
                } else {
                    f.max_bytes
                },
            },
            Message::Subscribe(s) => Op::Subscribe {
                stream: s.stream.to_string(),
                group: s.group.to_string(),
                durable: s.durable,
                start: s.start,
                max_in_flight: s.max_in_flight,
            },
            Message::Ack(a) => Op::Ack(a.delivery_ids.clone()),
            Message::Nack(n) => Op::Nack(n.delivery_id, n.message.to_string()),
            Message::Apply(a) => Op::Apply(a.yaml.to_string(), a.force),
            Message::Status => Op::Status,
            Message::Handshake(_) => Op::Refuse(Error::HandshakeRepeated),
            Message::PipelineSubscribe(p) => Op::PipelineSubscribe {
                pipeline: p.pipeline.to_string(),
                stage: p.stage.to_string(),
                max_in_flight: p.max_in_flight,
            },
            Message::StageAck(a) => Op::StageAcks(vec![(a.delivery_id, frame.slice_ref(a.output))]),
            Message::StageAcks(a) => Op::StageAcks(
                a.acks
                    .iter()
                    .map(|a| (a.delivery_id, frame.slice_ref(a.output)))
                    .collect(),
            ),
            Message::StageNack(n) => Op::StageNack(n.delivery_id, n.message.to_string()),
            Message::PipelineRetry(r) => Op::PipelineRetry(r.pipeline.to_string(), r.execution),
            Message::Metadata(m) => Op::Metadata(m.streams.iter().map(|s| s.to_string()).collect()),
            Message::TokenCreate(t) => Op::TokenCreate(tokens::spec_of(t)),
            Message::TokenList => Op::TokenList,
            Message::TokenRevoke(t) => Op::TokenRevoke(t.name.to_owned(), t.change_id),
            Message::PartitionMove(m) => {
                Op::PartitionMove(m.stream.to_owned(), m.partition, m.voters.clone())
            }
            Message::NodeAdd(m) => Op::Nodes(admin::node_add(m)),
            Message::NodeRemove(id) => Op::Nodes(NodeChange::Remove(*id)),
            Message::Rebalance(m) => Op::Rebalance(crate::shard::meta::rebalance::Asked {
                drain: m.drain.clone(),
                moves_max: m.moves_max,
                dry_run: m.dry_run,
                change: m.change_id,
            }),
            other => Op::Refuse(Error::ServerToClient {
                message: other.name(),
            }),
        }
    }
}

/// What the reader, the request tasks and the watchdog of one connection
/// share.
#[derive(Debug)]
struct ConnState {
    /// Requests being served (answer not yet queued).
    serving: Cell<usize>,
    /// Answer bytes reserved by Fetches being served.
    reserved: Cell<u64>,
    handshaken: Cell<bool>,
    /// Whether the connection ever subscribed (it then waits for pushes,
    /// which is not idleness).
    subscribed: Cell<bool>,
    /// When the last bytes arrived.
    last_read: Cell<Instant>,
    /// Notified when a request settles (its answer was queued).
    settled: Notify,
    /// The connection's token and what it subscribed to.
    auth: Rc<auth::ConnAuth>,
}

/// Closes the connection count's slot when the connection ends.
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one connection until it closes.
pub async fn serve(shard: Rc<Shard>, stream: TcpStream) {
    let accepted = Instant::now();
    let _ = stream.set_nodelay(true);
    let settings = shard.settings.clone();
    let open = &settings.open_connections;
    let _slot = Slot(open);
    let connections_max = settings.config.connections_max;
    let over = open.fetch_add(1, Ordering::Relaxed) >= connections_max as usize;
    match (&settings.tls, over) {
        (None, false) => serve_stream(shard, stream, accepted).await,
        (None, true) => refuse(stream, connections_max).await,
        (Some(config), false) => {
            let deadline = accepted + Duration::from_millis(settings.config.handshake_timeout_ms);
            if let Some(stream) = tls::accept(config, stream, deadline).await {
                serve_stream(shard, stream, accepted).await;
            }
        }
        (Some(config), true) => {
            if let Some(stream) = tls::accept_within(config, stream, REFUSE_WRITE_TIMEOUT).await {
                refuse(stream, connections_max).await;
            }
        }
    }
}

/// Serves a connection (plain, or TLS after its handshake) until it
/// closes; `accepted` is when it was accepted.
async fn serve_stream<S>(shard: Rc<Shard>, stream: S, accepted: Instant)
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let conn = shard.unique_id();
    // Held until the last answer is written: a stop waits for it.
    let _open = shard.connection_opened();
    let (mut reader, mut writer) = stream.split();
    let outbox = Rc::new(Outbox::default());
    shard.register_conn(conn, outbox.clone());
    let writer_outbox = outbox.clone();
    let writer_task = glommio::spawn_local(async move {
        let outbox = writer_outbox;
        let mut batch = Vec::with_capacity(64 << 10);
        while outbox.take(&mut batch).await {
            // The flush costs nothing on a plain socket; TLS may hold
            // back the tail of what it accepted until flushed.
            if writer.write_all(&batch).await.is_err() || writer.flush().await.is_err() {
                outbox.kill();
                return;
            }
            outbox.wrote(batch.len());
            batch.clear();
            if batch.capacity() > outbox::RETAIN_BYTES_MAX {
                batch = Vec::new();
            }
        }
        let _ = writer.flush().await;
        let _ = writer.close().await;
    });
    let (abort, registration) = AbortHandle::new_pair();
    let auth = Rc::new(auth::ConnAuth::new(outbox.clone(), abort.clone()));
    shard.auth.register(conn, auth.clone());
    let state = Rc::new(ConnState {
        serving: Cell::new(0),
        reserved: Cell::new(0),
        handshaken: Cell::new(false),
        subscribed: Cell::new(false),
        last_read: Cell::new(Instant::now()),
        settled: Notify::default(),
        auth,
    });
    let watchdog = glommio::spawn_local(watchdog(
        shard.clone(),
        state.clone(),
        outbox.clone(),
        abort,
        accepted,
    ));
    // On stop the reader stops reading; what it read is answered below.
    let reading = Box::pin(read_loop(&shard, conn, &mut reader, &outbox, &state));
    let _ = Abortable::new(
        select(reading, Box::pin(shard.stop_requested())),
        registration,
    )
    .await;
    // Dropping the watchdog's task cancels it.
    drop(watchdog);
    // Let the requests already being served answer before closing.
    while state.serving.get() > 0 {
        let generation = state.settled.generation();
        if state.serving.get() == 0 {
            break;
        }
        state.settled.changed_since(generation).await;
    }
    shard.auth.unregister(conn);
    shard.unregister_conn(conn).await;
    outbox.close();
    writer_task.await;
}

/// Answers a connection over `connectionsMax` with one `TooManyConnections`
/// error frame (given at most a second to leave) and closes it.
async fn refuse<S: AsyncWrite + Unpin>(mut stream: S, connections_max: u32) {
    let e = Error::TooManyConnections { connections_max };
    let message = e.to_string();
    let reply = Message::Error(hadron_wire::ErrorReply {
        code: e.code(),
        message: &message,
        leader: None,
    });
    super::metrics::refused(e.code());
    if let Ok(frame) = outbox::encode(0, &reply) {
        super::metrics::frame_sent(frame.len());
        let write = Box::pin(async {
            stream.write_all(&frame).await?;
            stream.flush().await
        });
        let _ = select(write, Box::pin(glommio::timer::sleep(REFUSE_WRITE_TIMEOUT))).await;
    }
    let _ = stream.close().await;
}

/// Closes a connection that did not complete its handshake within
/// `handshakeTimeoutMs` of `accepted` (a TLS handshake included), or
/// that, with no request in flight and no subscription, sent nothing for
/// `idleTimeoutMs`: it answers `Timeout` and stops the reader.
async fn watchdog(
    shard: Rc<Shard>,
    state: Rc<ConnState>,
    outbox: Rc<Outbox>,
    abort: AbortHandle,
    accepted: Instant,
) {
    let config = &shard.settings.config;
    let handshake_deadline = accepted + Duration::from_millis(config.handshake_timeout_ms);
    while !state.handshaken.get() && Instant::now() < handshake_deadline {
        let left = handshake_deadline.saturating_duration_since(Instant::now());
        glommio::timer::sleep(left.min(IDLE_CHECK_MIN)).await;
    }
    if !state.handshaken.get() {
        outbox.fail(
            0,
            &Error::HandshakeTimeout {
                handshake_timeout_ms: config.handshake_timeout_ms,
            },
        );
        abort.abort();
        return;
    }
    if config.idle_timeout_ms == 0 {
        return;
    }
    let idle_max = Duration::from_millis(config.idle_timeout_ms);
    loop {
        let idle_for = state.last_read.get().elapsed();
        let busy =
            state.subscribed.get() || state.serving.get() > 0 || outbox.unwritten_answers() > 0;
        if !busy && idle_for >= idle_max {
            outbox.fail(
                0,
                &Error::IdleTimeout {
                    idle_timeout_ms: config.idle_timeout_ms,
                },
            );
            abort.abort();
            return;
        }
        glommio::timer::sleep(idle_max.saturating_sub(idle_for).max(IDLE_CHECK_MIN)).await;
    }
}

/// What the reader does after a frame.
enum Next {
    /// Go on with the next frame.
    Continue,
    /// Stop reading: the connection closes.
    Close,
}

async fn read_loop(
    shard: &Rc<Shard>,
    conn: u64,
    reader: &mut (impl AsyncRead + Unpin),
    outbox: &Rc<Outbox>,
    state: &Rc<ConnState>,
) {
    let config = &shard.settings.config;
    let limits = shard.settings.limits();
    // Until the handshake, only small frames: a stranger must not make the
    // server buffer a whole frame's worth.
    let handshake_limits = hadron_wire::Limits {
        frame_bytes_max: config.handshake_frame_bytes_max,
        ..limits
    };
    let outbox_max = config.outbox_bytes_max as u64;
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    loop {
        // Serve every whole frame buffered.
        loop {
            let frame_limits = if state.handshaken.get() {
                &limits
            } else {
                &handshake_limits
            };
            let consumed = match hadron_wire::split_frame(&buf, frame_limits) {
                Ok(Some((_, consumed))) => consumed,
                Ok(None) => break,
                Err(e) => {
                    outbox.fail(0, &Error::Frame(e));
                    return;
                }
            };
            let frame = buf.split_to(consumed).freeze();
            super::metrics::frame_received();
            if let Next::Close = serve_frame(shard, conn, outbox, state, frame).await {
                return;
            }
        }
        // A full outbox also holds back reading (pushed deliveries count).
        while outbox.pending_bytes() > outbox_max {
            let written = outbox.written_generation();
            if outbox.pending_bytes() <= outbox_max {
                break;
            }
            outbox.written_since(written).await;
        }
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                super::metrics::bytes_received(n);
                state.last_read.set(Instant::now());
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    }
}

/// Decodes one whole frame (length prefix included) and serves it: the
/// handshake, or a request admitted under the connection's budget and
/// answered in a task of its own.
async fn serve_frame(
    shard: &Rc<Shard>,
    conn: u64,
    outbox: &Rc<Outbox>,
    state: &Rc<ConnState>,
    frame: Bytes,
) -> Next {
    let config = &shard.settings.config;
    let limits = shard.settings.limits();
    let body = &frame[hadron_wire::LENGTH_PREFIX_BYTES..];
    let decoded = match hadron_wire::decode(body, &limits) {
        Ok(f) => f,
        Err(e) => {
            let id = e.request_id().unwrap_or(0);
            let e = Error::Decode(e);
            outbox.fail(id, &e);
            // Before the handshake nothing but a handshake is read.
            return if e.code().closes_connection() || !state.handshaken.get() {
                Next::Close
            } else {
                Next::Continue
            };
        }
    };
    if decoded.request_id == 0 {
        outbox.fail(
            0,
            &Error::RequestIdZero {
                message: decoded.message.name(),
            },
        );
        return if state.handshaken.get() {
            Next::Continue
        } else {
            Next::Close
        };
    }
    if !state.handshaken.get() {
        return match handshake(shard, &decoded) {
            Ok((reply, principal)) => {
                state.auth.set_principal(principal);
                outbox.send_frame(&reply);
                state.handshaken.set(true);
                Next::Continue
            }
            Err(e) => {
                outbox.fail(decoded.request_id, &e);
                Next::Close
            }
        };
    }
    let request_id = decoded.request_id;
    let mut op = Op::from_message(&decoded.message, &frame);
    op.clamp_in_flight(config.deliveries_in_flight_max);
    if let Err(e) = state.auth.check(&shard.topology.borrow(), &op) {
        outbox.fail(request_id, &e);
        return Next::Continue;
    }
    if matches!(op, Op::Subscribe { .. } | Op::PipelineSubscribe { .. }) {
        state.subscribed.set(true);
    }
    // Admission: the connection's budget must allow the request; it is
    // released when the answer is written.
    let cost = match &op {
        Op::Fetch { max_bytes, .. } => u64::from((*max_bytes).min(fetch_bytes_max(config))),
        _ => 0,
    };
    admit(config, outbox, state, cost).await;
    state.serving.set(state.serving.get() + 1);
    state.reserved.set(state.reserved.get() + cost);
    let (shard, outbox, state) = (shard.clone(), outbox.clone(), state.clone());
    glommio::spawn_local(async move {
        match answer(&shard, conn, op).await {
            Ok(answer) => answer(request_id, &outbox),
            Err(e) => outbox.fail(request_id, &e),
        }
        outbox.answered();
        state.reserved.set(state.reserved.get() - cost);
        state.serving.set(state.serving.get() - 1);
        state.settled.notify_all();
    })
    .detach();
    Next::Continue
}

/// Waits until the connection's budget allows a request that reserves
/// `cost` answer bytes: fewer than `requestsInFlightMax` requests served
/// or unwritten, and the answers queued, being written or reserved within
/// `outboxBytesMax` (a request always goes through when nothing is).
async fn admit(config: &ServerConfig, outbox: &Outbox, state: &ConnState, cost: u64) {
    let requests_max = config.requests_in_flight_max as usize;
    let outbox_max = config.outbox_bytes_max as u64;
    while state.serving.get() + outbox.unwritten_answers() >= requests_max
        || (state.reserved.get() > 0 || outbox.pending_bytes() > 0)
            && state.reserved.get() + outbox.pending_bytes() + cost > outbox_max
    {
        let settled = state.settled.generation();
        let written = outbox.written_generation();
        select(
            state.settled.changed_since(settled),
            Box::pin(outbox.written_since(written)),
        )
        .await;
    }
}

/// The `HandshakeOk` frame, and who the connection acts as.
fn handshake(shard: &Shard, frame: &FrameRef<'_>) -> Result<(Vec<u8>, auth::Principal), Error> {
    let Message::Handshake(h) = &frame.message else {
        return Err(Error::HandshakeRequired {
            got: frame.message.name(),
        });
    };
    if h.version != PROTOCOL_VERSION {
        return Err(Error::UnsupportedVersion { version: h.version });
    }
    let config = &shard.settings.config;
    let principal =
        auth::Principal::of(config, &shard.topology.borrow(), h.token).ok_or_else(|| {
            Error::Unauthorized {
                client: h.client_name.to_owned(),
                token_missing: h.token.is_empty(),
            }
        })?;
    let reply = Message::HandshakeOk(hadron_wire::HandshakeOk {
        version: PROTOCOL_VERSION,
        shards: shard.shards,
        shard_ports: shard_ports(shard),
        placement: PLACEMENT_NAME,
    });
    let reply = outbox::encode(frame.request_id, &reply)
        .map_err(|e| Error::Internal(format!("cannot encode HandshakeOk: {e}")))?;
    Ok((reply, principal))
}

/// Each shard's own port, indexed by shard id (`HandshakeOk`, `MetadataOk`);
/// empty when the server offers none.
fn shard_ports(shard: &Shard) -> Vec<u16> {
    let config = &shard.settings.config;
    if config.shard_ports {
        (0..shard.shards)
            .filter_map(|i| config.listen.port().checked_add(1 + i))
            .collect()
    } else {
        Vec::new()
    }
}

/// Writes a successful answer, given its request id, into the outbox.
type Encode = Box<dyn FnOnce(u64, &Outbox)>;

/// The answer `AckOk`.
fn ack_ok() -> Encode {
    Box::new(|id, outbox| outbox.send(id, &Message::AckOk))
}

fn unexpected(reply: Reply) -> Error {
    match reply {
        Reply::Failed(e) => e,
        other => Error::Internal(format!("unexpected internal reply {other:?}")),
    }
}

/// A new member id for a subscription of connection `conn`.
fn new_member(shard: &Shard, conn: u64) -> MemberId {
    MemberId {
        shard: shard.id,
        conn,
        subscription: shard.unique_id(),
    }
}

/// Sends the attach request `attach(partition, per_partition_in_flight)` to
/// the owner of every partition of `stream`; a member's in-flight bound is
/// spread over the partitions.
async fn attach_everywhere(
    shard: &Rc<Shard>,
    stream: &str,
    partitions: u32,
    max_in_flight: u32,
    attach: impl Fn(u32, u32) -> Request,
) -> Result<(), Error> {
    let per_partition = max_in_flight.max(1).div_ceil(partitions.max(1)).max(1);
    let attaches = (0..partitions).map(|partition| {
        shard.call(
            shard.owner(stream, partition),
            attach(partition, per_partition),
        )
    });
    for reply in futures::future::join_all(attaches).await {
        if !matches!(reply, Reply::Done) {
            return Err(unexpected(reply));
        }
    }
    Ok(())
}

/// Takes one of connection `conn`'s `subscriptionsPerConnectionMax`
/// subscriptions (stream or pipeline), before the subscription is attached
/// anywhere; [`release_subscription`] gives it back when that fails. The
/// count is kept until the connection closes (there is no unsubscribe).
fn reserve_subscription(shard: &Shard, conn: u64) -> Result<(), Error> {
    let max = shard.settings.config.subscriptions_per_connection_max;
    let mut counts = shard.subscriptions.borrow_mut();
    let count = counts.entry(conn).or_insert(0);
    if *count >= max {
        return Err(Limit::Subscriptions { held: *count, max }.into());
    }
    *count += 1;
    Ok(())
}

fn release_subscription(shard: &Shard, conn: u64) {
    if let Some(count) = shard.subscriptions.borrow_mut().get_mut(&conn) {
        *count = count.saturating_sub(1);
    }
}

/// Refuses an Ack (or StageAcks) of more than `ackIdsMax` (`max`) ids,
/// before any is settled.
fn check_ack_ids(ids: usize, max: u32) -> Result<(), Error> {
    if ids > max as usize {
        return Err(Limit::AckIds { ids, max }.into());
    }
    Ok(())
}

/// The shard that made a delivery: its id is in the top 16 bits.
fn delivery_owner(shard: &Shard, delivery: u64) -> Result<u16, Error> {
    let owner = (delivery >> 48) as u16;
    if owner >= shard.shards {
        return Err(Error::UnknownDelivery { delivery });
    }
    Ok(owner)
}

/// Sends a settlement (nack, stage ack, stage nack) to the shard that made
/// the delivery; `AckOk` when it took it.
async fn settle(shard: &Rc<Shard>, delivery: u64, req: Request) -> Result<Encode, Error> {
    let owner = delivery_owner(shard, delivery)?;
    match shard.call(owner, req).await {
        Reply::Done => Ok(ack_ok()),
        other => Err(unexpected(other)),
    }
}

async fn answer(shard: &Rc<Shard>, conn: u64, op: Op) -> Result<Encode, Error> {
    match op {
        Op::Publish {
            stream,
            partition,
            events,
        } => streams::publish(shard, stream, partition, events).await,
        Op::Fetch {
            stream,
            partition,
            offset,
            max_bytes,
        } => streams::fetch(shard, stream, partition, offset, max_bytes).await,
        Op::Metadata(names) => Ok(streams::metadata(shard, &names)),
        Op::Subscribe {
            stream,
            group,
            durable,
            start,
            max_in_flight,
        } => groups::subscribe(shard, conn, stream, group, durable, start, max_in_flight).await,
        Op::Ack(ids) => groups::ack(shard, conn, ids).await,
        Op::Nack(delivery, message) => groups::nack(shard, conn, delivery, message).await,
        Op::PipelineSubscribe {
            pipeline,
            stage,
            max_in_flight,
        } => pipelines::subscribe(shard, conn, pipeline, stage, max_in_flight).await,
        Op::StageAcks(acks) => pipelines::stage_acks(shard, conn, acks).await,
        Op::StageNack(delivery, message) => {
            pipelines::stage_nack(shard, conn, delivery, message).await
        }
        Op::PipelineRetry(pipeline, execution) => {
            pipelines::retry(shard, pipeline, execution).await
        }
        Op::Apply(yaml, force) => admin::apply(shard, yaml, force).await,
        Op::Status => admin::status(shard).await,
        Op::TokenCreate(spec) => tokens::change(shard, TokenChange::Create(spec)).await,
        Op::TokenList => Ok(tokens::list(shard)),
        Op::TokenRevoke(name, change) => {
            tokens::change(shard, TokenChange::Revoke(name, change)).await
        }
        Op::PartitionMove(stream, partition, voters) => {
            admin::move_partition(shard, stream, partition, voters).await
        }
        Op::Nodes(change) => admin::change_nodes(shard, change).await,
        Op::Rebalance(asked) => admin::rebalance(shard, asked).await,
        Op::Refuse(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use hadron_wire::ErrorCode;

    use super::*;

    #[test]
    fn server_to_client_messages_are_refused_with_a_reason() {
        let op = Op::from_message(&Message::AckOk, &Bytes::new());
        assert!(
            matches!(op, Op::Refuse(ref e) if e.code() == ErrorCode::InvalidRequest && e.to_string().contains("server-to-client"))
        );
        let op = Op::from_message(
            &Message::Fetch(hadron_wire::Fetch {
                stream: "s",
                partition: 1,
                offset: 2,
                max_bytes: 0,
            }),
            &Bytes::new(),
        );
        assert!(matches!(
            op,
            Op::Fetch {
                max_bytes: FETCH_BYTES_DEFAULT,
                offset: 2,
                ..
            }
        ));
    }

    #[test]
    fn an_ack_of_more_than_ack_ids_max_ids_is_refused_naming_the_setting() {
        assert_eq!(check_ack_ids(0, 3), Ok(()));
        assert_eq!(check_ack_ids(3, 3), Ok(()));
        let e = check_ack_ids(4, 3).unwrap_err();
        assert_eq!(e.code(), ErrorCode::LimitExceeded);
        let message = e.to_string();
        assert!(
            message.contains("4 delivery ids exceeds ackIdsMax (3)"),
            "{message}"
        );
        assert!(message.contains("nothing was acked"), "{message}");
    }
}
