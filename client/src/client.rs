//! `Client`: options, lazily opened connections, shard-aware routing, and
//! the plain request/answer calls (status, apply, fetch, metadata).
//!
//! Connections: one main connection to an address given to `Client::new`
//! (one, or a comma-separated bootstrap list: see `routing.rs`), opened on
//! first use and reopened when it dies. When the handshake
//! reports shard ports (and `ClientOptions::shard_aware` is on), requests
//! for a partition go to a connection to the owning shard's port on the
//! same host, opened lazily; if that connection cannot be opened the
//! request goes to the main connection, which accepts any request. In a
//! cluster, partitions whose leader is known go to the leader
//! (`routing.rs`).
//! Subscriptions and pipeline handlers open their own connections (see
//! `subscribe.rs`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hadron_wire::{ErrorCode, FRAME_BYTES_MAX, Limits, Message, shard_of};

use crate::conn::{Conn, Reply, ServerInfo};

mod cluster;
pub(crate) mod routing;
pub(crate) mod tokens;
use crate::endpoint::Endpoint;

/// How long a cluster's client asks again for a stream the node it asked
/// does not know yet ([`Client::partitions`]): nodes apply a change a
/// moment after its metadata leader answered it.
pub const STREAM_PROPAGATION_WAIT: Duration = Duration::from_secs(2);
/// How often it asks meanwhile.
const STREAM_PROPAGATION_POLL: Duration = Duration::from_millis(50);
use crate::tls::Connector;
use crate::{Error, Event, LeaderAddr, Metadata, TlsOptions};

/// How the client connects and retries. All fields have defaults
/// (`ClientOptions::default()`); override the ones you need:
///
/// ```
/// use std::time::Duration;
/// let options = hadron::ClientOptions {
///     name: "example-cloud-app".into(),
///     request_timeout: Duration::from_secs(10),
///     ..Default::default()
/// };
/// # let _ = options;
/// ```
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The application's name, sent in the handshake for the server's logs
    /// and status.
    pub name: String,
    /// The credential sent in the handshake; `None` for servers without
    /// authentication.
    pub token: Option<String>,
    /// How long opening a TCP connection may take.
    pub connect_timeout: Duration,
    /// How long the client waits for the answer to one request (including
    /// the handshake) before failing it with `Error::Timeout`.
    pub request_timeout: Duration,
    /// First pause before reconnecting or retrying; doubles each time.
    pub backoff_initial: Duration,
    /// Longest pause between reconnects or retries.
    pub backoff_max: Duration,
    /// Most requests outstanding on one connection; more wait for a slot.
    pub max_in_flight_requests: usize,
    /// Send each partition's requests straight to the shard that owns it,
    /// when the server offers shard ports.
    pub shard_aware: bool,
    /// Most attempts for one publish (the first included) when failures
    /// are retryable, and for a fetch that follows a partition's leader.
    /// The pauses between them (`backoff_initial` doubling up to
    /// `backoff_max`) add up to about 31 s with the defaults (12 attempts,
    /// 0.1 s to 5 s), enough to ride out a cluster's leader election
    /// (about 0.5 to 2 s) even when a stale hint costs every other
    /// attempt; raise it for a cluster that takes longer.
    pub publish_attempts_max: u32,
    /// The longest one publish (or leader-following fetch) keeps retrying,
    /// from its first attempt: no retry starts past it, whatever attempts
    /// are left (as Kafka's `delivery.timeout.ms` bounds `retries`), so
    /// that attempts each waiting up to `request_timeout` cannot add up to
    /// minutes. A retry is the same request, so a publish retried here is
    /// stored once (the leader's idempotency window).
    pub publish_retry_deadline: Duration,
    /// Largest frame the client sends or accepts (the server's
    /// `frame_bytes_max`).
    pub frame_bytes_max: usize,
    /// Whom to trust, and what to present, for an `https://` URL.
    pub tls: TlsOptions,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            name: "hadron-client".to_owned(),
            token: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            max_in_flight_requests: 1024,
            shard_aware: true,
            publish_attempts_max: 12,
            publish_retry_deadline: Duration::from_secs(60),
            frame_bytes_max: FRAME_BYTES_MAX,
            tls: TlsOptions::default(),
        }
    }
}

impl ClientOptions {
    pub(crate) fn limits(&self) -> Limits {
        Limits {
            frame_bytes_max: self.frame_bytes_max.min(FRAME_BYTES_MAX),
            ..Limits::DEFAULT
        }
    }

    /// The pause before attempt `failures + 1`: `backoff_initial * 2^(failures-1)`,
    /// at most `backoff_max`.
    pub(crate) fn backoff(&self, failures: u32) -> Duration {
        let shift = failures.saturating_sub(1).min(20);
        self.backoff_initial
            .saturating_mul(1 << shift)
            .min(self.backoff_max)
    }
}

/// A lazily opened, reopened-on-failure connection to one address.
#[derive(Debug)]
struct Slot {
    endpoint: Endpoint,
    state: tokio::sync::Mutex<SlotState>,
}

#[derive(Debug, Default)]
struct SlotState {
    conn: Option<Arc<Conn>>,
    failures: u32,
    /// After a failed connect: no new attempt before this instant; callers
    /// get `last_error` instead (their own retry loops pause).
    retry_at: Option<Instant>,
    last_error: Option<LastError>,
}

/// Enough of a failed connect to report it again during the backoff
/// window, keeping its retryability (`Error` is not `Clone`).
#[derive(Debug, Clone)]
enum LastError {
    Io(std::io::ErrorKind, String),
    Server(ErrorCode, String),
    Tls(String),
}

impl Slot {
    fn new(endpoint: Endpoint) -> Slot {
        Slot {
            endpoint,
            state: tokio::sync::Mutex::new(SlotState::default()),
        }
    }

    async fn get(&self, options: &ClientOptions) -> Result<Arc<Conn>, Error> {
        let mut state = self.state.lock().await;
        if let Some(conn) = &state.conn
            && conn.is_alive()
        {
            return Ok(Arc::clone(conn));
        }
        state.conn = None;
        if let Some(at) = state.retry_at
            && Instant::now() < at
        {
            let (kind, message) = match state.last_error.clone() {
                Some(LastError::Server(code, message)) => {
                    return Err(Error::Server { code, message });
                }
                Some(LastError::Tls(reason)) => {
                    return Err(Error::Tls {
                        addr: self.endpoint.to_string(),
                        reason,
                    });
                }
                Some(LastError::Io(kind, message)) => (kind, message),
                None => (std::io::ErrorKind::Other, "recently failed".to_owned()),
            };
            return Err(Error::Connect {
                addr: self.endpoint.to_string(),
                source: std::io::Error::new(kind, format!("{message} (backing off)")),
            });
        }
        match Conn::open(&self.endpoint, options, None).await {
            Ok(conn) => {
                state.failures = 0;
                state.retry_at = None;
                state.last_error = None;
                state.conn = Some(Arc::clone(&conn));
                Ok(conn)
            }
            Err(e) => {
                state.failures = state.failures.saturating_add(1);
                state.retry_at = Some(Instant::now() + options.backoff(state.failures));
                state.last_error = Some(match &e {
                    Error::Connect { source, .. } => {
                        LastError::Io(source.kind(), source.to_string())
                    }
                    Error::Server { code, message } => LastError::Server(*code, message.clone()),
                    Error::Tls { reason, .. } => LastError::Tls(reason.clone()),
                    other => LastError::Io(std::io::ErrorKind::Other, other.to_string()),
                });
                tracing::debug!(addr = %self.endpoint, error = %e, "connect failed");
                Err(e)
            }
        }
    }
}

#[derive(Debug)]
pub(crate) struct Inner {
    /// The addresses given to `Client::new`, in order; never empty.
    pub(crate) bootstrap: Vec<Endpoint>,
    pub(crate) options: ClientOptions,
    /// One main-connection slot per bootstrap address.
    main: Vec<Slot>,
    /// The bootstrap address the main connection last reached.
    main_index: AtomicUsize,
    /// Connections to shard ports, by bootstrap address index and port.
    shards: Mutex<HashMap<(usize, u16), Arc<Slot>>>,
    /// Partition counts by stream name, from `Metadata` (or `Status`, from
    /// a server older than `Metadata`).
    partitions: Mutex<HashMap<String, u32>>,
    /// Partitions whose leader a `NotLeader` answer (or the Metadata
    /// refresh after one) named: their requests go there, not by the main
    /// connection's shard ports. Empty on a single node, which never
    /// answers `NotLeader`.
    leaders: Mutex<HashMap<(String, u32), Endpoint>>,
    /// Connections to leaders, by endpoint.
    leader_slots: Mutex<HashMap<String, Arc<Slot>>>,
    /// Makes generated event ids unique across clients and processes.
    id_prefix: String,
    id_counter: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A Hadron client. Cheap to clone: clones share connections and caches.
///
/// Creating a client does no I/O; the first request connects. Every
/// request is pipelined on its connection, so one client serves many
/// concurrent tasks.
///
/// ```no_run
/// # async fn example() -> Result<(), hadron::Error> {
/// let client = hadron::Client::new("http://events.default:7000", Default::default())?;
/// let publisher = client.publisher("example-cloud-app").await?;
/// let published = publisher
///     .publish(hadron::NewEvent::new("service.created", b"{}".to_vec()))
///     .await?;
/// println!("stored at {}/{}", published.partition, published.offset);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

/// The answer to `Client::fetch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The partition read.
    pub partition: u32,
    /// The offset to fetch next.
    pub next_offset: u64,
    /// `(offset, event)` pairs in offset order.
    pub records: Vec<(u64, Event)>,
}

impl Client {
    /// A client for the server at `url`: `http://host:port`, `host:port` or
    /// `host` (the scheme is optional, the port defaults to 7000, the host
    /// is resolved when connecting), or `https://host:port` for TLS, with
    /// `options.tls` (checked here; without a CA, the platform's trusted
    /// roots are read here). Does no network I/O.
    ///
    /// For a cluster, `url` may list several nodes separated by commas
    /// (`"http://10.0.0.1:7000,http://10.0.0.2:7000"`; at most
    /// [`BOOTSTRAP_URLS_MAX`](crate::BOOTSTRAP_URLS_MAX), all `https://` or
    /// none): the client connects to the first that answers and learns
    /// each partition's leader from the nodes. An address that does not
    /// parse is refused with `Error::InvalidUrl` naming it.
    pub fn new(url: &str, options: ClientOptions) -> Result<Client, Error> {
        let mut bootstrap = routing::parse_bootstrap(url)?;
        if bootstrap.first().is_some_and(|e| e.https) {
            let tls = Connector::new(&options.tls)?;
            for endpoint in &mut bootstrap {
                endpoint.tls = Some(tls.clone());
            }
        }
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let id_prefix = format!("{nanos:x}-{:x}", std::process::id());
        Ok(Client {
            inner: Arc::new(Inner {
                main: bootstrap.iter().cloned().map(Slot::new).collect(),
                main_index: AtomicUsize::new(0),
                bootstrap,
                options,
                shards: Mutex::new(HashMap::new()),
                partitions: Mutex::new(HashMap::new()),
                leaders: Mutex::new(HashMap::new()),
                leader_slots: Mutex::new(HashMap::new()),
                id_prefix,
                id_counter: AtomicU64::new(0),
            }),
        })
    }

    /// The options the client was created with.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    /// Connects if needed and returns what the server said in its
    /// handshake.
    /// With several bootstrap addresses, that of the node the main
    /// connection reached.
    pub async fn server_info(&self) -> Result<ServerInfo, Error> {
        Ok(self.main().await?.info.clone())
    }

    /// The server's status document (JSON; its shape is documented with the
    /// server).
    pub async fn status(&self) -> Result<String, Error> {
        match self.main_request("status", &Message::Status).await? {
            Reply::StatusOk(json) => Ok(json),
            other => Err(unexpected("StatusOk", &other)),
        }
    }

    /// The server's streams (each partition with the shard that owns it),
    /// its pipelines, and its shard ports and placement function.
    pub async fn metadata(&self) -> Result<Metadata, Error> {
        self.metadata_for(&[]).await
    }

    /// Like [`metadata`](Client::metadata), for the streams named only
    /// (and the pipelines reading from them); streams the server does not
    /// have are left out of the answer. An empty list asks for everything.
    ///
    /// A server older than the `Metadata` request answers
    /// `Error::Server` with `ErrorCode::InvalidRequest`.
    pub async fn metadata_for(&self, streams: &[&str]) -> Result<Metadata, Error> {
        let message = Message::Metadata(hadron_wire::Metadata {
            streams: streams.to_vec(),
        });
        match self.main_request("metadata", &message).await? {
            Reply::MetadataOk(metadata) => Ok(metadata),
            other => Err(unexpected("MetadataOk", &other)),
        }
    }

    /// Applies YAML resource definitions (`kind: Stream`, `kind: Pipeline`)
    /// and returns the server's one-line summary per resource.
    pub async fn apply(&self, yaml: &str) -> Result<Vec<String>, Error> {
        self.apply_with(yaml, false).await
    }

    /// Like [`apply`](Client::apply); with `force`, the server also accepts
    /// changes that drop work, such as removing a pipeline stage that
    /// unfinished executions still need.
    pub async fn apply_with(&self, yaml: &str, force: bool) -> Result<Vec<String>, Error> {
        let message = Message::Apply(hadron_wire::Apply { yaml, force });
        match self.admin_request("apply", &message).await? {
            Reply::ApplyOk(summary) => {
                self.forget_partitions();
                Ok(summary)
            }
            other => Err(unexpected("ApplyOk", &other)),
        }
    }

    /// Runs failed executions of `pipeline` again: the one whose root event
    /// is at `execution` = (partition, offset), or every failed one. Returns
    /// one line per execution retried.
    ///
    /// In a cluster, one execution goes to the node that runs its
    /// partition, following `NotLeader` answers as a fetch does; all go to
    /// one node, which retries those it runs and answers a line for each
    /// partition it does not (`hadron pipeline retry` asks every node).
    pub async fn retry_pipeline(
        &self,
        pipeline: &str,
        execution: Option<(u32, u64)>,
    ) -> Result<Vec<String>, Error> {
        let message = Message::PipelineRetry(hadron_wire::PipelineRetry {
            pipeline,
            execution,
        });
        let reply = match execution {
            None => {
                self.main()
                    .await?
                    .request("pipeline retry", &message)
                    .await?
            }
            Some((partition, _)) => {
                // Leaders noted under the outputs group's name (never a
                // stream's: streams have no `/`), whose leader may not be
                // the source partition's.
                let key = format!("pipelines/{pipeline}");
                let message = &message;
                self.routed(
                    "pipeline retry",
                    &key,
                    partition,
                    routing::Retry::LeaderChanges,
                    |conn| async move { conn.request("pipeline retry", message).await },
                )
                .await?
            }
        };
        match reply {
            Reply::ApplyOk(summary) => Ok(summary),
            other => Err(unexpected("ApplyOk", &other)),
        }
    }

    /// Reads events of `stream`/`partition` from `offset`, at most about
    /// `max_bytes` of them (at least one when one exists). In a cluster
    /// the request goes to the partition's leader, following `NotLeader`
    /// answers and a leader's lost connection (at most
    /// `publish_attempts_max` attempts).
    pub async fn fetch(
        &self,
        stream: &str,
        partition: u32,
        offset: u64,
        max_bytes: u32,
    ) -> Result<Fetched, Error> {
        let reply = self
            .routed(
                "fetch",
                stream,
                partition,
                routing::Retry::LeaderChanges,
                |conn| async move {
                    let message = Message::Fetch(hadron_wire::Fetch {
                        stream,
                        partition,
                        offset,
                        max_bytes,
                    });
                    conn.request("fetch", &message).await
                },
            )
            .await?;
        match reply {
            Reply::FetchOk {
                partition,
                next_offset,
                records,
            } => {
                let limits = self.inner.options.limits();
                let records = records
                    .iter()
                    .map(|(offset, bytes)| Ok((*offset, Event::decode_with(bytes, &limits)?)))
                    .collect::<Result<Vec<_>, Error>>()?;
                Ok(Fetched {
                    partition,
                    next_offset,
                    records,
                })
            }
            other => Err(unexpected("FetchOk", &other)),
        }
    }

    /// The number of partitions of `stream`, from the server's metadata
    /// (cached for every stream; refreshed after
    /// `UnknownPartition`/`UnknownStream` errors). A server older than the
    /// `Metadata` request answers it `InvalidRequest`; the counts then come
    /// from its status document.
    ///
    /// In a cluster (a Metadata answer naming several nodes), a stream the
    /// node asked does not know is asked for again for up to
    /// [`STREAM_PROPAGATION_WAIT`]: an apply is answered once the
    /// metadata group's leader applied it, and the other nodes apply it a
    /// moment later.
    pub async fn partitions(&self, stream: &str) -> Result<u32, Error> {
        let deadline = Instant::now() + STREAM_PROPAGATION_WAIT;
        loop {
            if let Some(n) = lock(&self.inner.partitions).get(stream) {
                return Ok(*n);
            }
            let (counts, clustered): (Vec<(String, u32)>, bool) = match self.metadata().await {
                Ok(metadata) => (
                    metadata
                        .streams
                        .iter()
                        .map(|s| (s.name.clone(), s.partition_count()))
                        .filter(|(_, count)| *count > 0)
                        .collect(),
                    metadata.nodes.len() > 1,
                ),
                Err(Error::Server {
                    code: ErrorCode::InvalidRequest,
                    ..
                }) => (parse_partition_counts(&self.status().await?)?, false),
                Err(e) => return Err(e),
            };
            let known = {
                let mut cache = lock(&self.inner.partitions);
                cache.extend(counts);
                cache.get(stream).copied()
            };
            if let Some(n) = known {
                return Ok(n);
            }
            if !clustered || Instant::now() >= deadline {
                return Err(Error::Server {
                    code: ErrorCode::UnknownStream,
                    message: format!("the server has no stream {stream:?}"),
                });
            }
            tokio::time::sleep(STREAM_PROPAGATION_POLL).await;
        }
    }

    /// Records where `stream`/`partition`'s leader is (from a `NotLeader`
    /// hint or Metadata): its shard port when it has one, else its client
    /// port; an unspecified IP (a server listening on 0.0.0.0) becomes the
    /// host of the bootstrap address in use. It is dialled with the
    /// bootstrap list's TLS. `None` forgets it, so that requests go to the
    /// bootstrap address again.
    /// Where to dial a node whose client address a server gave
    /// (`address`): an unspecified IP (a server listening on 0.0.0.0)
    /// becomes the host of the bootstrap address in use, with the
    /// bootstrap list's TLS. `None` when it does not parse.
    pub(crate) fn node_endpoint(&self, address: &str) -> Option<Endpoint> {
        let mut endpoint = Endpoint::parse(address).ok()?;
        let dialled = self.main_endpoint();
        if endpoint
            .host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_unspecified())
        {
            endpoint.host = dialled.host.clone();
        }
        endpoint.https = dialled.https;
        endpoint.tls = dialled.tls.clone();
        Some(endpoint)
    }

    pub(crate) fn note_leader(&self, stream: &str, partition: u32, leader: Option<&LeaderAddr>) {
        let key = (stream.to_owned(), partition);
        let endpoint = leader.and_then(|l| {
            let mut endpoint = self.node_endpoint(&l.address)?;
            if l.shard_port != 0 {
                endpoint.port = l.shard_port;
            }
            Some(endpoint)
        });
        let mut leaders = lock(&self.inner.leaders);
        match endpoint {
            Some(endpoint) => leaders.insert(key, endpoint),
            None => leaders.remove(&key),
        };
    }

    /// After a `NotLeader` with no hint, or a leader that stopped
    /// answering: asks any bootstrap node for `stream`'s leaders and
    /// records what it knows (forgetting those it knows none for).
    pub(crate) async fn refresh_leaders(&self, stream: &str) -> Result<(), Error> {
        let metadata = self.metadata_for(&[stream]).await?;
        if let Some(s) = metadata.stream(stream) {
            for p in &s.partitions {
                self.note_leader(stream, p.partition, p.leader.as_ref());
            }
        }
        Ok(())
    }

    pub(crate) fn forget_partitions(&self) {
        lock(&self.inner.partitions).clear();
    }

    /// Appends a unique event id to `out`:
    /// `{name}-{client start, ns, hex}-{pid, hex}-{n}`. Appending into the
    /// caller's buffer lets a batch generate ids without one allocation
    /// each.
    pub(crate) fn write_id(&self, name: &str, out: &mut String) {
        let n = self.inner.id_counter.fetch_add(1, Ordering::Relaxed);
        // Writing into a `String` cannot fail.
        let _ = write!(out, "{name}-{}-{n}", self.inner.id_prefix);
    }

    /// The main connection, opened if needed (see `main_indexed`).
    pub(crate) async fn main(&self) -> Result<Arc<Conn>, Error> {
        Ok(self.main_indexed().await?.1)
    }

    /// The connection for requests about `stream`/`partition`: the owning
    /// shard's when known and reachable, else the main one.
    pub(crate) async fn conn_for(&self, stream: &str, partition: u32) -> Result<Arc<Conn>, Error> {
        if let Some(endpoint) = self.leader_of(stream, partition) {
            let slot = Arc::clone(
                lock(&self.inner.leader_slots)
                    .entry(endpoint.to_string())
                    .or_insert_with(|| Arc::new(Slot::new(endpoint.clone()))),
            );
            return slot.get(&self.inner.options).await.inspect_err(|_| {
                // Unreachable: ask the bootstrap address again next time.
                lock(&self.inner.leaders).remove(&(stream.to_owned(), partition));
            });
        }
        let (index, main) = self.main_indexed().await?;
        if !self.inner.options.shard_aware || !main.info.shard_aware() {
            return Ok(main);
        }
        let shard = shard_of(stream, partition, main.info.shards);
        let Some(&port) = main.info.shard_ports.get(usize::from(shard)) else {
            return Ok(main);
        };
        if port == main.endpoint.port {
            return Ok(main);
        }
        let slot = Arc::clone(
            lock(&self.inner.shards)
                .entry((index, port))
                .or_insert_with(|| Arc::new(Slot::new(main.endpoint.with_port(port)))),
        );
        match slot.get(&self.inner.options).await {
            Ok(conn) => Ok(conn),
            Err(e) => {
                tracing::debug!(port, error = %e, "shard port unreachable; using the main connection");
                Ok(main)
            }
        }
    }
}

pub(crate) fn unexpected(expected: &str, got: &Reply) -> Error {
    Error::Protocol(format!("expected {expected}, got {got:?}"))
}

/// Reads partition counts from the status JSON. Assumed shape (the server
/// documents the real one): `{"streams": [{"name": "events", "partitions":
/// [...] }]}` where `partitions` is an array with one entry per partition
/// or a number; a `partition_count` number is accepted too.
pub(crate) fn parse_partition_counts(json: &str) -> Result<Vec<(String, u32)>, Error> {
    let doc: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| Error::Protocol(format!("status is not JSON: {e}")))?;
    let streams = doc
        .get("streams")
        .and_then(|s| s.as_array())
        .ok_or_else(|| Error::Protocol("status JSON has no \"streams\" array".into()))?;
    let mut counts = Vec::with_capacity(streams.len());
    for stream in streams {
        let Some(name) = stream.get("name").and_then(|n| n.as_str()) else {
            continue;
        };
        let count = match stream.get("partitions") {
            Some(serde_json::Value::Array(list)) => Some(list.len() as u64),
            Some(serde_json::Value::Number(n)) => n.as_u64(),
            _ => stream.get("partition_count").and_then(|n| n.as_u64()),
        };
        if let Some(count) = count.and_then(|c| u32::try_from(c).ok())
            && count > 0
        {
            counts.push((name.to_owned(), count));
        }
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_counts_from_status() {
        let json = r#"{"shards":2,"streams":[
            {"name":"events","partitions":[{"partition":0},{"partition":1},{"partition":2}]},
            {"name":"orders","partitions":4},
            {"name":"audit","partition_count":2},
            {"name":"empty","partitions":[]},
            {"nameless":true}
        ]}"#;
        let counts = parse_partition_counts(json).unwrap();
        assert_eq!(
            counts,
            vec![
                ("events".to_owned(), 3),
                ("orders".to_owned(), 4),
                ("audit".to_owned(), 2)
            ]
        );
        assert!(matches!(
            parse_partition_counts("{}"),
            Err(Error::Protocol(_))
        ));
        assert!(matches!(
            parse_partition_counts("nope"),
            Err(Error::Protocol(_))
        ));
    }

    #[test]
    fn backoff_doubles_up_to_the_max() {
        let o = ClientOptions {
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(700),
            ..ClientOptions::default()
        };
        assert_eq!(o.backoff(0), Duration::from_millis(100));
        assert_eq!(o.backoff(1), Duration::from_millis(100));
        assert_eq!(o.backoff(2), Duration::from_millis(200));
        assert_eq!(o.backoff(3), Duration::from_millis(400));
        assert_eq!(o.backoff(4), Duration::from_millis(700));
        assert_eq!(o.backoff(u32::MAX), Duration::from_millis(700));
    }

    #[test]
    fn new_does_no_io_and_rejects_bad_urls() {
        let client = Client::new("http://events.default:7000", ClientOptions::default()).unwrap();
        assert_eq!(client.inner.bootstrap.len(), 1);
        assert_eq!(client.inner.bootstrap[0].port, 7000);
        assert!(matches!(
            Client::new("host:notaport", ClientOptions::default()),
            Err(Error::InvalidUrl { .. })
        ));
        let (mut a, mut b) = (String::new(), String::new());
        client.write_id("app", &mut a);
        client.clone().write_id("app", &mut b);
        assert_ne!(a, b, "clones share the id counter");
        assert!(a.starts_with("app-"));
    }
}
