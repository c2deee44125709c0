//! The shard: one glommio executor pinned to one core, owning a fixed set
//! of stream partitions and everything about them (logs, dedup windows,
//! consumer groups). Nothing is shared between shards; they talk over a
//! glommio channel mesh.
//!
//! - Placement is `hadron_wire::shard_of(stream, partition, shards)`; a
//!   shard's id is its peer id in the mesh.
//! - Every shard accepts on the client port (SO_REUSEPORT) and, when shard
//!   ports are on, on `port + 1 + shard id`. A request for a partition owned
//!   elsewhere is forwarded over the mesh ([`Request`]) and its [`Reply`]
//!   comes back the same way; deliveries for a connection on another shard
//!   travel as [`MeshMsg::Push`].
//! - Shard 0 coordinates `apply`: it parses the YAML on a blocking thread
//!   (bounded by `applyBytesMax` and `config/yaml.rs`), checks the
//!   resource limits, persists the resources to `<data dir>/resources.yaml`
//!   (only when they changed), then installs the new topology on every
//!   shard, which opens new partitions and gives existing ones their new
//!   retention and dedup limits at once.

pub mod conn;
pub mod group;
pub mod outbox;
pub mod partition;
pub mod pipeline;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::channel::oneshot;
use futures::future::{Either, select};
use glommio::channels::channel_mesh::{Full, MeshBuilder, Senders};
use glommio::{CpuSet, LocalExecutorPoolBuilder, PoolPlacement};
use hadron_engine::storage::dma::DmaStorage;
use hadron_engine::{LogConfig, Retention};
use hadron_wire::{ErrorCode, Limits, StartPoint, shard_of};

use crate::config::server::ResourceCounts;
use crate::config::{self, PipelineSpec, Resource, ServerConfig, StreamSpec};
use crate::failpoint;
use group::{Deliveries, GroupPartition, GroupStatus, MemberId, Outgoing};
use outbox::Outbox;
use partition::{Failure, Partition, Published, now_ms};
use pipeline::{PipelineRun, RunStatus, StageAckOf};

/// Capacity of each mesh channel, in messages.
const MESH_CHANNEL_CAPACITY: usize = 1024;
/// How often retention runs.
const RETENTION_EVERY: Duration = Duration::from_secs(10);
/// How often durable groups' offsets are committed.
const COMMIT_EVERY: Duration = Duration::from_millis(200);
/// The file that keeps applied resources.
pub const RESOURCES_FILE: &str = "resources.yaml";

/// The streams and pipelines the server serves.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Topology {
    /// Streams by name.
    pub streams: BTreeMap<String, StreamSpec>,
    /// Pipelines by name.
    pub pipelines: BTreeMap<String, PipelineSpec>,
}

impl Topology {
    /// The resources, for persisting: streams first, so that pipelines'
    /// source streams are known when they are read back.
    pub fn resources(&self) -> Vec<Resource> {
        let streams = self.streams.values().cloned().map(Resource::Stream);
        let pipelines = self.pipelines.values().cloned().map(Resource::Pipeline);
        streams.chain(pipelines).collect()
    }

    /// What these resources cost, for the server's limits.
    pub fn counts(&self) -> ResourceCounts {
        let partitions_of = |stream: &str| {
            self.streams
                .get(stream)
                .map_or(0, |s| u64::from(s.partitions))
        };
        ResourceCounts {
            streams: self.streams.len() as u64,
            partitions: self.streams.values().map(|s| u64::from(s.partitions)).sum(),
            pipelines: self.pipelines.len() as u64,
            pipeline_runs: self
                .pipelines
                .values()
                .map(|p| partitions_of(&p.source_stream))
                .sum(),
        }
    }

    /// Adds or replaces a resource, checking what can be checked without
    /// runtime state. Returns a one-line summary.
    pub fn put(&mut self, resource: Resource) -> Result<String, Failure> {
        let invalid = |m: String| (ErrorCode::InvalidConfig, m);
        match resource {
            Resource::Stream(spec) => match self.streams.get(&spec.name) {
                Some(old) if old == &spec => Ok(format!("stream/{} unchanged", spec.name)),
                Some(old) if spec.partitions < old.partitions => Err(invalid(format!(
                    "Stream {:?}: spec.partitions cannot shrink from {} to {}",
                    spec.name, old.partitions, spec.partitions
                ))),
                old => {
                    let verb = if old.is_some() {
                        "configured"
                    } else {
                        "created"
                    };
                    let line = format!(
                        "stream/{} {verb} ({} partitions)",
                        spec.name, spec.partitions
                    );
                    self.streams.insert(spec.name.clone(), spec);
                    Ok(line)
                }
            },
            Resource::Pipeline(spec) => {
                spec.plan(|s| self.streams.contains_key(s))
                    .map_err(|e| invalid(e.to_string()))?;
                let line = match self.pipelines.get(&spec.name) {
                    Some(old) if old == &spec => format!("pipeline/{} unchanged", spec.name),
                    Some(_) => format!(
                        "pipeline/{} configured ({} stages)",
                        spec.name,
                        spec.stages.len()
                    ),
                    None => format!(
                        "pipeline/{} created ({} stages)",
                        spec.name,
                        spec.stages.len()
                    ),
                };
                self.pipelines.insert(spec.name.clone(), spec);
                Ok(line)
            }
        }
    }
}

/// Everything a shard needs to start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Server settings with defaults resolved.
    pub config: ServerConfig,
    /// Ack timeout for stream consumer groups.
    pub ack_timeout: Duration,
    /// The resources at start.
    pub topology: Topology,
    /// Client connections open on all shards, against `connectionsMax`.
    pub open_connections: Arc<std::sync::atomic::AtomicUsize>,
}

impl Settings {
    fn limits(&self) -> Limits {
        Limits {
            frame_bytes_max: self.config.frame_bytes_max,
            ..Limits::DEFAULT
        }
    }

    fn log_config(&self, retention: Retention) -> LogConfig {
        let defaults = LogConfig::default();
        // A batch must fit in a segment; small segments take small batches.
        let batch_bytes_max = defaults
            .batch_bytes_max
            .min(self.config.segment_bytes as usize);
        LogConfig {
            segment_bytes: self.config.segment_bytes,
            durability: self.config.fsync.durability(),
            retention,
            batch_bytes_max,
            pending_bytes_max: defaults.pending_bytes_max.max(batch_bytes_max),
            ..defaults
        }
    }
}

/// A request one shard serves for another (or for itself).
#[derive(Debug)]
pub enum Request {
    /// Append events to a partition.
    Publish {
        stream: String,
        partition: u32,
        events: Vec<bytes::Bytes>,
    },
    /// Read events of a partition.
    Fetch {
        stream: String,
        partition: u32,
        offset: u64,
        max_bytes: u32,
    },
    /// Add a member to a group on a partition.
    Attach {
        stream: String,
        partition: u32,
        group: String,
        durable: bool,
        start: StartPoint,
        max_in_flight: u32,
        member: MemberId,
    },
    /// Remove every member of a connection.
    Detach { shard: u16, conn: u64 },
    /// Remove one member (a subscription that failed to attach everywhere).
    DetachMember { member: MemberId },
    /// Settle deliveries as processed.
    Ack {
        ids: Vec<u64>,
        shard: u16,
        conn: u64,
    },
    /// Settle a delivery as failed.
    Nack {
        id: u64,
        message: String,
        shard: u16,
        conn: u64,
    },
    /// Add a stage handler to a pipeline on a partition.
    StageAttach {
        pipeline: String,
        partition: u32,
        stage: String,
        max_in_flight: u32,
        member: MemberId,
    },
    /// Stages succeeded, each with an output event: (delivery id,
    /// output), settled each on its own.
    StageAcks {
        acks: Vec<StageAckOf>,
        shard: u16,
        conn: u64,
    },
    /// A stage failed.
    StageNack {
        id: u64,
        message: String,
        shard: u16,
        conn: u64,
    },
    /// Run failed executions again: one (partition, root offset) or all.
    PipelineRetry {
        pipeline: String,
        execution: Option<(u32, u64)>,
    },
    /// How many executions of a pipeline still need work on this shard.
    PipelineBusy { pipeline: String },
    /// This shard's partitions and pipeline runs, for `status`.
    Status,
    /// Validate, persist and install resources (shard 0 only).
    Apply { yaml: String, force: bool },
    /// Adopt a new topology, opening partitions this shard now owns.
    Install { topology: Topology },
}

/// The answer to a [`Request`].
#[derive(Debug)]
pub enum Reply {
    /// For `Publish`.
    Published(Published),
    /// For `Fetch`: next offset and events.
    Fetched(u64, Vec<(u64, Vec<u8>)>),
    /// For requests with nothing to say.
    Done,
    /// For `Status`: partitions, and pipeline runs by pipeline name.
    Status(Vec<PartitionStatus>, Vec<(String, RunStatus)>),
    /// A count (for `PipelineBusy`).
    Count(usize),
    /// For `Apply`: one line per resource.
    Applied(Vec<String>),
    /// For `Ack`: the ids that were not outstanding (the others were
    /// acked).
    Refused(Vec<u64>),
    /// For `StageAcks`: the acks that were not taken, and why (the others
    /// were).
    Unsettled(Vec<(u64, Failure)>),
    /// The request failed.
    Failed(ErrorCode, String),
}

impl From<Failure> for Reply {
    fn from((code, message): Failure) -> Reply {
        Reply::Failed(code, message)
    }
}

impl From<Result<(), Failure>> for Reply {
    fn from(result: Result<(), Failure>) -> Reply {
        match result {
            Ok(()) => Reply::Done,
            Err(f) => f.into(),
        }
    }
}

/// What travels over the mesh.
#[derive(Debug)]
pub enum MeshMsg {
    /// A request, answered to its sender with `Reply { id }`.
    Request { id: u64, req: Request },
    /// The answer to request `id`.
    Reply { id: u64, reply: Reply },
    /// A frame to write to connection `conn` of the receiving shard.
    Push { conn: u64, frame: Vec<u8> },
}

/// A log's group-commit counters as the status document shows them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CommitStatus {
    /// Flush rounds that wrote data, the bytes they wrote, and their mean.
    /// Under `fsync: always` each round's write is write-through (`O_DSYNC`):
    /// durable when it returns, with no fdatasync.
    pub writes: u64,
    pub written_bytes: u64,
    pub bytes_per_write: u64,
    /// fdatasync calls.
    pub syncs: u64,
    /// Mean bytes written per fdatasync (0 before the first).
    pub bytes_per_sync: u64,
    /// Mean microseconds awaiting a round's writes, and an fdatasync.
    pub write_us_mean: u64,
    pub sync_us_mean: u64,
    /// Segments begun in a file retention retired (see the engine's
    /// "Recycling").
    pub segments_recycled: u64,
    /// Mean microseconds a durable append waited from its enqueue until it
    /// was durable (the log's share of a publish's latency).
    pub durable_wait_us_mean: u64,
}

impl From<hadron_engine::CommitStats> for CommitStatus {
    fn from(c: hadron_engine::CommitStats) -> CommitStatus {
        CommitStatus {
            writes: c.writes,
            written_bytes: c.written_bytes,
            bytes_per_write: c.written_bytes.checked_div(c.writes).unwrap_or(0),
            syncs: c.syncs,
            bytes_per_sync: c.written_bytes.checked_div(c.syncs).unwrap_or(0),
            write_us_mean: c.write_us.checked_div(c.writes).unwrap_or(0),
            sync_us_mean: c.sync_us.checked_div(c.syncs).unwrap_or(0),
            segments_recycled: c.segments_recycled,
            durable_wait_us_mean: c.durable_wait_us.checked_div(c.durable_waits).unwrap_or(0),
        }
    }
}

/// One partition's state, for `status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PartitionStatus {
    /// Stream.
    #[serde(skip)]
    pub stream: String,
    /// Partition.
    pub partition: u32,
    /// Owner shard.
    pub shard: u16,
    /// First offset retained.
    pub start_offset: u64,
    /// Next offset to be written.
    pub next_offset: u64,
    /// Offsets below this are durable.
    pub durable_offset: u64,
    /// Segment files.
    pub segments: usize,
    /// Bytes of batches.
    pub bytes: u64,
    /// Why the partition refuses writes, if it does.
    pub read_only: Option<String>,
    /// Group-commit counters of its log since the server started.
    pub commits: CommitStatus,
    /// Offsets the dedup window spans (its keys, and the slots of appends
    /// still under way), and the age of its oldest batch: shorter than the
    /// stream's `dedupWindowMs` when `dedupKeysMax` binds.
    pub dedup_keys: u64,
    pub dedup_oldest_ms: Option<u64>,
    /// Consumer groups.
    pub groups: Vec<GroupStatus>,
}

/// A shard.
pub struct Shard {
    /// This shard's id (its mesh peer id).
    pub id: u16,
    /// Number of shards.
    pub shards: u16,
    /// Start-up settings.
    pub settings: Arc<Settings>,
    storage: DmaStorage,
    /// The current topology.
    pub topology: RefCell<Topology>,
    partitions: RefCell<BTreeMap<(String, u32), Rc<Partition>>>,
    runs: RefCell<BTreeMap<(String, u32), Rc<PipelineRun>>>,
    mesh: Senders<MeshMsg>,
    pending: RefCell<HashMap<u64, oneshot::Sender<Reply>>>,
    next_id: Cell<u64>,
    conns: RefCell<HashMap<u64, Rc<Outbox>>>,
    /// Subscriptions each connection of this shard holds (see
    /// `conn::reserve_subscription`).
    pub(crate) subscriptions: RefCell<HashMap<u64, u32>>,
    /// Which group holds each outstanding delivery made here.
    deliveries: Rc<Deliveries>,
    /// Set when the server is shutting down.
    pub stopping: Cell<bool>,
    /// Serializes `apply` on shard 0.
    applying: Cell<bool>,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard").field("id", &self.id).finish()
    }
}

/// What a shard tells the thread that started it.
#[derive(Debug)]
enum ShardEvent {
    /// Listening and serving.
    Ready(u16),
    /// Its executor ended: `Ok` after a requested stop, else why it failed.
    Ended(Result<(), String>),
}

/// Starts one executor per shard and runs until `stop` is set, then flushes
/// and returns.
///
/// No half-alive server: every shard must report ready within
/// `shardStartTimeoutMs`, and a shard that fails (at start or later) stops
/// the whole server with an error; the other shards are told to stop and
/// flush first. (A panic aborts the process; see `stop_on_panic` in
/// main.rs.)
pub fn run(settings: Settings, stop: Arc<AtomicBool>) -> Result<(), String> {
    let shards = settings.config.shards as usize;
    let start_timeout = Duration::from_millis(settings.config.shard_start_timeout_ms);
    let online = CpuSet::online().map_err(|e| format!("cannot read the online CPUs: {e}"))?;
    let cpus: Vec<usize> = online.iter().map(|l| l.cpu).collect();
    if cpus.is_empty() {
        return Err("no online CPU found".into());
    }
    let sets: Vec<CpuSet> = (0..shards)
        .map(|i| {
            let cpu = cpus[i % cpus.len()];
            online.clone().filter(move |l| l.cpu == cpu)
        })
        .collect();
    let settings = Arc::new(settings);
    let mesh: MeshBuilder<MeshMsg, Full> = MeshBuilder::full(shards, MESH_CHANNEL_CAPACITY);
    let (events_tx, events) = std::sync::mpsc::channel::<ShardEvent>();
    let shard_stop = stop.clone();
    let handles = LocalExecutorPoolBuilder::new(PoolPlacement::Custom(sets))
        .name("hadron-shard")
        .io_memory(settings.config.io_memory_bytes)
        .on_all_shards(move || {
            let settings = settings.clone();
            let mesh = mesh.clone();
            let stop = shard_stop.clone();
            let events = events_tx.clone();
            async move {
                let ended = shard_main(settings, mesh, stop, &events).await;
                // The receiver lives until every shard has ended.
                let _ = events.send(ShardEvent::Ended(ended.clone()));
                ended
            }
        })
        .map_err(|e| format!("cannot start the shard executors: {e}"))?;

    // Start: every shard ready in time, or the server fails.
    let deadline = std::time::Instant::now() + start_timeout;
    let mut ready = vec![false; shards];
    while ready.iter().any(|r| !r) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match events.recv_timeout(left) {
            Ok(ShardEvent::Ready(id)) => ready[usize::from(id)] = true,
            Ok(ShardEvent::Ended(result)) => {
                stop.store(true, Ordering::Relaxed);
                return Err(format!(
                    "a shard failed to start, so the server stops: {}",
                    result
                        .err()
                        .unwrap_or_else(|| "it ended without an error".into())
                ));
            }
            Err(_) => {
                stop.store(true, Ordering::Relaxed);
                let late: Vec<String> = (0..shards)
                    .filter(|&i| !ready[i])
                    .map(|i| i.to_string())
                    .collect();
                return Err(format!(
                    "shard(s) {} did not become ready within {} ms (shardStartTimeoutMs), so the server stops",
                    late.join(", "),
                    start_timeout.as_millis()
                ));
            }
        }
    }
    tracing::info!("all {shards} shards ready");

    // Run: until stopped, or until a shard fails, which stops the rest.
    let mut errors = Vec::new();
    let mut ended = 0;
    while ended < shards {
        match events.recv() {
            Ok(ShardEvent::Ended(result)) => {
                ended += 1;
                if let Err(e) = result {
                    tracing::error!("{e}; stopping the other shards");
                    stop.store(true, Ordering::Relaxed);
                    errors.push(e);
                }
            }
            Ok(ShardEvent::Ready(_)) => {}
            Err(_) => break,
        }
    }
    for result in handles.join_all() {
        if let Err(e) = result {
            errors.push(format!("a shard panicked: {e}"));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

async fn shard_main(
    settings: Arc<Settings>,
    mesh: MeshBuilder<MeshMsg, Full>,
    stop: Arc<AtomicBool>,
    events: &std::sync::mpsc::Sender<ShardEvent>,
) -> Result<(), String> {
    let (senders, mut receivers) = mesh
        .join()
        .await
        .map_err(|_| "cannot join the shard mesh".to_string())?;
    let id = senders.peer_id() as u16;
    let shards = settings.config.shards;
    if failpoint::armed("shard-start-fail", id) {
        return Err(format!("shard {id}: failpoint shard-start-fail"));
    }
    while failpoint::armed("shard-start-hang", id) && !stop.load(Ordering::Relaxed) {
        glommio::timer::sleep(Duration::from_millis(50)).await;
    }
    let storage = DmaStorage::new(&settings.config.data_dir)
        .await
        .map_err(|e| {
            format!(
                "shard {id}: cannot prepare {}: {e}",
                settings.config.data_dir.display()
            )
        })?;
    let shard = Rc::new(Shard {
        id,
        shards,
        settings: settings.clone(),
        storage,
        topology: RefCell::new(Topology::default()),
        partitions: RefCell::new(BTreeMap::new()),
        runs: RefCell::new(BTreeMap::new()),
        mesh: senders,
        pending: RefCell::new(HashMap::new()),
        next_id: Cell::new(1),
        conns: RefCell::new(HashMap::new()),
        subscriptions: RefCell::new(HashMap::new()),
        deliveries: Rc::new(Deliveries::default()),
        stopping: Cell::new(false),
        applying: Cell::new(false),
    });
    shard.install(settings.topology.clone()).await?;
    for (peer, rx) in receivers.streams() {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            while let Some(msg) = rx.recv().await {
                shard.clone().on_mesh(peer as u16, msg);
            }
        })
        .detach();
    }
    let listen = settings.config.listen;
    let mut addrs = vec![listen];
    if settings.config.shard_ports {
        let port = listen
            .port()
            .checked_add(1 + id)
            .ok_or_else(|| format!("shard {id}: port {} + 1 + {id} overflows", listen.port()))?;
        addrs.push(SocketAddr::new(listen.ip(), port));
    }
    for addr in addrs {
        let listener = glommio::net::TcpListener::bind(addr)
            .map_err(|e| format!("shard {id}: cannot listen on {addr}: {e}"))?;
        let shard = shard.clone();
        glommio::spawn_local(async move {
            loop {
                match listener.accept().await {
                    Ok(stream) => {
                        if shard.stopping.get() {
                            continue;
                        }
                        glommio::spawn_local(conn::serve(shard.clone(), stream)).detach();
                    }
                    Err(e) => {
                        tracing::warn!(shard = shard.id, "accept on {addr} failed: {e}");
                        glommio::timer::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        })
        .detach();
    }
    shard.clone().spawn_housekeeping();
    tracing::info!(shard = id, "shard ready on {listen}");
    let _ = events.send(ShardEvent::Ready(id));
    if failpoint::armed("shard-panic", id) {
        glommio::spawn_local(async move {
            glommio::timer::sleep(Duration::from_millis(100)).await;
            panic!("failpoint shard-panic on shard {id}");
        })
        .detach();
    }
    while !stop.load(Ordering::Relaxed) {
        glommio::timer::sleep(Duration::from_millis(50)).await;
    }
    shard.stopping.set(true);
    shard.flush_all().await;
    tracing::info!(shard = id, "shard stopped");
    Ok(())
}

impl Shard {
    fn next_id(&self) -> u64 {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        id
    }

    /// A fresh id, unique across shards: the shard id in the top 16 bits.
    pub fn unique_id(&self) -> u64 {
        (u64::from(self.id) << 48) | self.next_id()
    }

    /// The owner of a partition.
    pub fn owner(&self, stream: &str, partition: u32) -> u16 {
        shard_of(stream, partition, self.shards)
    }

    /// Checks that a stream and partition exist.
    pub fn check_partition(&self, stream: &str, partition: u32) -> Result<(), Failure> {
        let topology = self.topology.borrow();
        let Some(spec) = topology.streams.get(stream) else {
            return Err((
                ErrorCode::UnknownStream,
                format!("no stream named {stream:?}"),
            ));
        };
        if partition >= spec.partitions {
            return Err((
                ErrorCode::UnknownPartition,
                format!(
                    "stream {stream:?} has partitions 0..{}; {partition} does not exist",
                    spec.partitions
                ),
            ));
        }
        Ok(())
    }

    /// Serves `req` on shard `to`: here, or over the mesh.
    pub async fn call(self: &Rc<Self>, to: u16, req: Request) -> Reply {
        if to == self.id {
            return self.clone().handle(req).await;
        }
        let id = self.next_id();
        let (tx, rx) = oneshot::channel();
        self.pending.borrow_mut().insert(id, tx);
        let msg = MeshMsg::Request { id, req };
        if self.mesh.send_to(to as usize, msg).await.is_err() {
            self.pending.borrow_mut().remove(&id);
            return Reply::Failed(ErrorCode::ShuttingDown, format!("shard {to} is gone"));
        }
        rx.await.unwrap_or_else(|_| {
            Reply::Failed(ErrorCode::Internal, format!("shard {to} dropped a request"))
        })
    }

    fn on_mesh(self: Rc<Self>, from: u16, msg: MeshMsg) {
        match msg {
            MeshMsg::Request { id, req, .. } => {
                glommio::spawn_local(async move {
                    let reply = self.clone().handle(req).await;
                    let _ = self
                        .mesh
                        .send_to(from as usize, MeshMsg::Reply { id, reply })
                        .await;
                })
                .detach();
            }
            MeshMsg::Reply { id, reply } => {
                if let Some(tx) = self.pending.borrow_mut().remove(&id) {
                    let _ = tx.send(reply);
                }
            }
            MeshMsg::Push { conn, frame } => {
                if let Some(outbox) = self.conns.borrow().get(&conn) {
                    outbox.send_frame(&frame);
                }
            }
        }
    }

    /// Registers a connection's outbox.
    pub fn register_conn(&self, conn: u64, outbox: Rc<Outbox>) {
        self.conns.borrow_mut().insert(conn, outbox);
    }

    /// Forgets a connection and detaches its members everywhere.
    pub async fn unregister_conn(self: &Rc<Self>, conn: u64) {
        self.conns.borrow_mut().remove(&conn);
        self.subscriptions.borrow_mut().remove(&conn);
        let calls = (0..self.shards).map(|to| {
            self.call(
                to,
                Request::Detach {
                    shard: self.id,
                    conn,
                },
            )
        });
        futures::future::join_all(calls).await;
    }

    fn partition(&self, stream: &str, partition: u32) -> Result<Rc<Partition>, Failure> {
        self.partitions
            .borrow()
            .get(&(stream.to_string(), partition))
            .cloned()
            .ok_or_else(|| {
                (
                    ErrorCode::UnknownPartition,
                    format!(
                        "partition {partition} of stream {stream:?} is not on shard {}",
                        self.id
                    ),
                )
            })
    }

    async fn handle(self: Rc<Self>, req: Request) -> Reply {
        match req {
            Request::Publish {
                stream,
                partition,
                events,
            } => {
                if self.stopping.get() {
                    return Reply::Failed(
                        ErrorCode::ShuttingDown,
                        "the server is shutting down".into(),
                    );
                }
                match self.partition(&stream, partition) {
                    Ok(p) => {
                        let reply = match p.publish(&events).await {
                            Ok(published) => Reply::Published(published),
                            Err(f) => f.into(),
                        };
                        // Under relaxed durability the partition's log writes
                        // behind the acks (see `Partition::open`): start the
                        // write this publish made due, in a task of its own.
                        if p.log.write_due() {
                            let p = p.clone();
                            glommio::spawn_local(async move { p.log.write_pending().await })
                                .detach();
                        }
                        reply
                    }
                    Err(f) => f.into(),
                }
            }
            Request::Fetch {
                stream,
                partition,
                offset,
                max_bytes,
            } => match self.partition(&stream, partition) {
                Ok(p) => match p.fetch(offset, max_bytes).await {
                    Ok((next, records)) => Reply::Fetched(next, records),
                    Err(f) => f.into(),
                },
                Err(f) => f.into(),
            },
            Request::Attach {
                stream,
                partition,
                group,
                durable,
                start,
                max_in_flight,
                member,
            } => match self.attach(
                &stream,
                partition,
                &group,
                durable,
                start,
                max_in_flight,
                member,
            ) {
                Ok(()) => Reply::Done,
                Err(f) => f.into(),
            },
            Request::Detach { shard, conn } => {
                self.detach(shard, conn);
                Reply::Done
            }
            Request::DetachMember { member } => {
                self.detach_groups(|g| g.detach_member(member).1);
                Reply::Done
            }
            Request::Ack { ids, shard, conn } => {
                // Every id is settled on its own: one stale id must not
                // leave the others to be redelivered.
                let mut refused = Vec::new();
                for id in ids {
                    if self.settle(id, |g| g.ack(id, (shard, conn))).is_err() {
                        refused.push(id);
                    }
                }
                if refused.is_empty() {
                    Reply::Done
                } else {
                    Reply::Refused(refused)
                }
            }
            Request::Nack {
                id,
                message,
                shard,
                conn,
            } => match self.settle(id, |g| g.nack(id, (shard, conn), &message)) {
                Ok(()) => Reply::Done,
                Err(f) => f.into(),
            },
            Request::StageAttach {
                pipeline,
                partition,
                stage,
                max_in_flight,
                member,
            } => {
                let Some(run) = self
                    .runs
                    .borrow()
                    .get(&(pipeline.clone(), partition))
                    .cloned()
                else {
                    return Reply::Failed(
                        ErrorCode::UnknownPipeline,
                        format!("pipeline {pipeline:?} does not run on partition {partition} here"),
                    );
                };
                let Some(s) = run.plan.stage_index(&stage) else {
                    return Reply::Failed(
                        ErrorCode::UnknownStage,
                        format!("pipeline {pipeline:?} has no stage {stage:?}"),
                    );
                };
                run.attach(member, s, max_in_flight);
                Reply::Done
            }
            Request::StageAcks { acks, shard, conn } => {
                // The acks of one run are made durable together: one append.
                let mut by_run: Vec<(Rc<PipelineRun>, Vec<StageAckOf>)> = Vec::new();
                let mut unsettled = Vec::new();
                for (id, output) in acks {
                    // The runs already found first: a burst of acks
                    // usually comes from few runs.
                    if let Some((_, acks)) = by_run.iter_mut().find(|(r, _)| r.owns(id)) {
                        acks.push((id, output));
                        continue;
                    }
                    match self.run_of(id) {
                        Ok(run) => by_run.push((run, vec![(id, output)])),
                        Err(f) => unsettled.push((id, f)),
                    }
                }
                let settles = by_run
                    .iter()
                    .map(|(run, acks)| run.ack_many(acks, (shard, conn)));
                for failures in futures::future::join_all(settles).await {
                    unsettled.extend(failures);
                }
                Reply::Unsettled(unsettled)
            }
            Request::StageNack {
                id,
                message,
                shard,
                conn,
            } => match self.run_of(id) {
                Ok(run) => run.nack(id, (shard, conn), &message).await.into(),
                Err(f) => f.into(),
            },
            Request::PipelineRetry {
                pipeline,
                execution,
            } => {
                let runs: Vec<Rc<PipelineRun>> = self
                    .runs
                    .borrow()
                    .iter()
                    .filter(|((name, p), _)| {
                        *name == pipeline && execution.is_none_or(|(ep, _)| ep == *p)
                    })
                    .map(|(_, r)| r.clone())
                    .collect();
                let mut lines = Vec::new();
                for run in runs {
                    match run.retry(execution.map(|(_, o)| o)).await {
                        Ok(roots) => lines.extend(roots.into_iter().map(|o| {
                            format!(
                                "pipeline/{pipeline} partition {} offset {o} retried",
                                run.source.partition
                            )
                        })),
                        Err(f) => return f.into(),
                    }
                }
                Reply::Applied(lines)
            }
            Request::PipelineBusy { pipeline } => Reply::Count(
                self.runs
                    .borrow()
                    .iter()
                    .filter(|((name, _), _)| *name == pipeline)
                    .map(|(_, r)| r.busy())
                    .sum(),
            ),
            Request::Status => Reply::Status(self.status(), self.run_status()),
            Request::Apply { yaml, force } => self.apply(yaml, force).await,
            Request::Install { topology } => match self.install(topology).await {
                Ok(()) => Reply::Done,
                Err(e) => Reply::Failed(ErrorCode::StorageError, e),
            },
        }
    }

    #[expect(clippy::too_many_arguments, reason = "mirrors the Attach request")]
    fn attach(
        self: &Rc<Self>,
        stream: &str,
        partition: u32,
        group: &str,
        durable: bool,
        start: StartPoint,
        max_in_flight: u32,
        member: MemberId,
    ) -> Result<(), Failure> {
        let p = self.partition(stream, partition)?;
        let existing = p.groups.borrow().get(group).cloned();
        let g = match existing {
            Some(g) => g,
            None => {
                p.admit_group(group, self.settings.config.groups_max)?;
                let stored = if durable {
                    p.stored_offsets.borrow().get(group).copied()
                } else {
                    None
                };
                let stats = p.log.stats();
                let cursor = stored.unwrap_or(match start {
                    StartPoint::Beginning => stats.start_offset,
                    StartPoint::Latest => p.log.visible_offset(),
                    StartPoint::Offset(o) => o.clamp(stats.start_offset, stats.next_offset),
                });
                let g = GroupPartition::new(
                    group,
                    durable,
                    cursor,
                    self.settings.ack_timeout,
                    self.deliveries.clone(),
                );
                p.groups.borrow_mut().insert(group.to_string(), g.clone());
                glommio::spawn_local(self.clone().dispatch(Rc::downgrade(&g), Rc::downgrade(&p)))
                    .detach();
                g
            }
        };
        g.attach(member, max_in_flight);
        Ok(())
    }

    fn run_of(&self, delivery_id: u64) -> Result<Rc<PipelineRun>, Failure> {
        self.runs
            .borrow()
            .values()
            .find(|r| r.owns(delivery_id))
            .cloned()
            .ok_or_else(|| {
                (
                    ErrorCode::UnknownDelivery,
                    format!("stage delivery {delivery_id} is not outstanding"),
                )
            })
    }

    fn run_status(&self) -> Vec<(String, RunStatus)> {
        self.runs
            .borrow()
            .iter()
            .map(|((name, _), run)| (name.clone(), run.status()))
            .collect()
    }

    fn detach(&self, shard: u16, conn: u64) {
        for run in self.runs.borrow().values() {
            run.detach(shard, conn);
        }
        self.detach_groups(|g| g.detach(shard, conn).1);
    }

    /// Detaches members from every group with `detach` (which says whether
    /// members remain), and removes the non-durable groups left empty.
    fn detach_groups(&self, detach: impl Fn(&GroupPartition) -> bool) {
        for p in self.partitions.borrow().values() {
            let mut gone = Vec::new();
            for (name, g) in p.groups.borrow().iter() {
                let any_left = detach(g);
                if !any_left && !g.durable {
                    gone.push(name.clone());
                }
            }
            let mut groups = p.groups.borrow_mut();
            for name in gone {
                if let Some(g) = groups.remove(&name) {
                    g.closed.set(true);
                    g.wake.notify_all();
                }
            }
        }
    }

    /// Settles a delivery id in the group holding it (one index lookup).
    fn settle(
        &self,
        id: u64,
        f: impl Fn(&GroupPartition) -> Result<(), Failure>,
    ) -> Result<(), Failure> {
        match self.deliveries.group_of(id) {
            Some(g) => f(&g),
            None => Err((
                ErrorCode::UnknownDelivery,
                format!("delivery {id} is not outstanding"),
            )),
        }
    }

    /// A group's dispatcher: hands out deliveries until the group closes.
    async fn dispatch(self: Rc<Self>, group: Weak<GroupPartition>, partition: Weak<Partition>) {
        loop {
            let (Some(g), Some(p)) = (group.upgrade(), partition.upgrade()) else {
                return;
            };
            if g.closed.get() || self.stopping.get() {
                return;
            }
            let wake_gen = g.wake.generation();
            let data_gen = p.appended.generation();
            let this = self.clone();
            // After a failure, wait a tick before trying again.
            let mut wait_min = Duration::from_millis(1);
            match g.round(&p, &move || this.unique_id()).await {
                Ok(out) if !out.is_empty() => {
                    self.send_deliveries(&p, out).await;
                    continue;
                }
                Ok(_) => {}
                Err((_, message)) => {
                    tracing::warn!(group = %g.group, stream = %p.stream, partition = p.partition, "dispatch failed: {message}");
                    wait_min = group::TICK;
                }
            }
            // Sleep until something this group could act on happens (see
            // `GroupPartition::idle_wait`): no timer and no append wakes a
            // group without members.
            let idle = g.idle_wait();
            let appended = async {
                if idle.appends {
                    p.appended.changed_since(data_gen).await;
                } else {
                    futures::future::pending::<()>().await;
                }
            };
            let due = async {
                match idle.until {
                    Some(t) => {
                        let wait = t.saturating_duration_since(std::time::Instant::now());
                        glommio::timer::sleep(wait.max(wait_min)).await;
                    }
                    None if wait_min > Duration::from_millis(1) => {
                        glommio::timer::sleep(wait_min).await;
                    }
                    None => futures::future::pending::<()>().await,
                }
            };
            let woken = select(Box::pin(g.wake.changed_since(wake_gen)), Box::pin(appended));
            match select(Box::pin(woken), Box::pin(due)).await {
                Either::Left(_) | Either::Right(_) => {}
            }
        }
    }

    /// A pipeline run's dispatcher: hands out stage deliveries until the
    /// run closes.
    async fn dispatch_pipeline(self: Rc<Self>, run: Weak<PipelineRun>) {
        loop {
            let Some(run) = run.upgrade() else { return };
            if run.closed.get() || self.stopping.get() {
                return;
            }
            if run.claim_checkpoint() {
                let run = run.clone();
                glommio::spawn_local(async move {
                    if let Err(e) = run.checkpoint().await {
                        tracing::warn!(pipeline = %run.plan.name, partition = run.source.partition, "checkpoint failed: {e}");
                    }
                })
                .detach();
            }
            let wake_gen = run.wake.generation();
            let data_gen = run.source.appended.generation();
            let this = self.clone();
            match run.round(&move || this.unique_id()).await {
                Ok(out) if !out.is_empty() => {
                    for d in out {
                        self.push(d.member, &run.delivery_message(&d)).await;
                    }
                    continue;
                }
                Ok(_) => {}
                Err((_, message)) => {
                    tracing::warn!(pipeline = %run.plan.name, partition = run.source.partition, "dispatch failed: {message}");
                }
            }
            let wait = run.next_due().map_or(group::TICK, |t| {
                t.saturating_duration_since(std::time::Instant::now())
                    .min(group::TICK)
            });
            let woken = select(
                Box::pin(run.wake.changed_since(wake_gen)),
                Box::pin(run.source.appended.changed_since(data_gen)),
            );
            let timer = glommio::timer::sleep(wait.max(Duration::from_millis(1)));
            match select(Box::pin(woken), Box::pin(timer)).await {
                Either::Left(_) | Either::Right(_) => {}
            }
        }
    }

    /// Sends a push to a member's connection, on whichever shard it is: a
    /// local connection gets it encoded straight into its outbox.
    async fn push(&self, member: MemberId, message: &hadron_wire::Message<'_>) {
        if member.shard == self.id {
            if let Some(outbox) = self.conns.borrow().get(&member.conn)
                && let Err(e) = outbox.try_send(0, message)
            {
                tracing::error!("cannot encode a {}: {e}", message.name());
            }
            return;
        }
        let frame = match outbox::encode(0, message) {
            Ok(frame) => frame,
            Err(e) => {
                tracing::error!("cannot encode a {}: {e}", message.name());
                return;
            }
        };
        let msg = MeshMsg::Push {
            conn: member.conn,
            frame,
        };
        let _ = self.mesh.send_to(member.shard as usize, msg).await;
    }

    async fn send_deliveries(&self, p: &Partition, out: Vec<Outgoing>) {
        for d in out {
            let message = hadron_wire::Message::Delivery(hadron_wire::Delivery {
                subscription_id: d.member.subscription,
                delivery_id: d.delivery_id,
                stream: &p.stream,
                partition: p.partition,
                offset: d.offset,
                attempt: d.attempt,
                event: &d.event,
            });
            self.push(d.member, &message).await;
        }
    }

    fn status(&self) -> Vec<PartitionStatus> {
        let now = now_ms();
        self.partitions
            .borrow()
            .values()
            .map(|p| {
                let stats = p.log.stats();
                let visible = p.log.visible_offset();
                let (dedup_keys, dedup_oldest_ms) = p.dedup_window(now);
                PartitionStatus {
                    stream: p.stream.clone(),
                    partition: p.partition,
                    shard: self.id,
                    start_offset: stats.start_offset,
                    next_offset: stats.next_offset,
                    durable_offset: stats.durable_offset,
                    segments: stats.segments,
                    bytes: stats.bytes,
                    read_only: p.log.poisoned().map(|s| s.to_string()),
                    commits: CommitStatus::from(stats.commits),
                    dedup_keys,
                    dedup_oldest_ms,
                    groups: p
                        .groups
                        .borrow()
                        .values()
                        .map(|g| g.status(visible))
                        .collect(),
                }
            })
            .collect()
    }

    /// Gathers every shard's status into the `StatusOk` JSON document.
    pub async fn status_json(self: &Rc<Self>) -> Result<String, Failure> {
        let replies =
            futures::future::join_all((0..self.shards).map(|to| self.call(to, Request::Status)))
                .await;
        let mut all = Vec::new();
        let mut runs: Vec<(String, RunStatus)> = Vec::new();
        for reply in replies {
            match reply {
                Reply::Status(parts, r) => {
                    all.extend(parts);
                    runs.extend(r);
                }
                Reply::Failed(code, message) => return Err((code, message)),
                other => {
                    return Err((
                        ErrorCode::Internal,
                        format!("unexpected status reply {other:?}"),
                    ));
                }
            }
        }
        let topology = self.topology.borrow().clone();
        let streams: Vec<serde_json::Value> = topology
            .streams
            .values()
            .map(|spec| {
                let mut parts: Vec<&PartitionStatus> =
                    all.iter().filter(|p| p.stream == spec.name).collect();
                parts.sort_by_key(|p| p.partition);
                serde_json::json!({
                    "name": spec.name,
                    "partition_count": spec.partitions,
                    "partitions": parts,
                })
            })
            .collect();
        let pipelines: Vec<serde_json::Value> = topology
            .pipelines
            .values()
            .map(|spec| pipeline_status(spec, &runs))
            .collect();
        let doc = serde_json::json!({
            "shards": self.shards,
            "shard_ports": self.settings.config.shard_ports,
            "fsync": format!("{:?}", self.settings.config.fsync),
            "streams": streams,
            "pipelines": pipelines,
        });
        Ok(doc.to_string())
    }

    /// Opens the partitions of `topology` this shard owns and adopts it.
    async fn install(self: &Rc<Self>, topology: Topology) -> Result<(), String> {
        let config = &self.settings.config;
        for spec in topology.streams.values() {
            let stream_settings = spec.settings(config);
            for partition in 0..spec.partitions {
                if self.owner(&spec.name, partition) != self.id {
                    continue;
                }
                let key = (spec.name.clone(), partition);
                let open = self.partitions.borrow().get(&key).cloned();
                if let Some(p) = open {
                    // An applied change to the stream: at once (turning
                    // dedup on or off waits for a start; the apply says so).
                    p.set_dedup_limits(partition::DedupLimits {
                        window_ms: stream_settings.dedup_window_ms,
                        keys_max: stream_settings.dedup_keys_max,
                    });
                    if p.log.retention() != stream_settings.retention {
                        p.log.set_retention(stream_settings.retention);
                        retain(&p).await;
                    }
                    continue;
                }
                let p = Partition::open(
                    &self.storage,
                    &config.data_dir,
                    &spec.name,
                    partition,
                    self.settings.log_config(stream_settings.retention),
                    partition::DedupLimits {
                        window_ms: stream_settings.dedup_window_ms,
                        keys_max: stream_settings.dedup_keys_max,
                    },
                    self.settings.limits(),
                    config.groups_max,
                )
                .await?;
                self.partitions.borrow_mut().insert(key, Rc::new(p));
            }
        }
        // Pipelines: keep runs whose plan is unchanged, replace the others
        // (they rebuild from their outputs log), stop removed ones.
        let mut wanted = BTreeMap::new();
        for spec in topology.pipelines.values() {
            let plan = spec
                .plan(|s| topology.streams.contains_key(s))
                .map_err(|e| e.to_string())?;
            let Some(stream) = topology.streams.get(&plan.source_stream) else {
                continue;
            };
            for partition in 0..stream.partitions {
                if self.owner(&stream.name, partition) == self.id {
                    wanted.insert((plan.name.clone(), partition), plan.clone());
                }
            }
        }
        let stale: Vec<(String, u32)> = self
            .runs
            .borrow()
            .iter()
            .filter(|(key, run)| wanted.get(*key) != Some(&run.plan))
            .map(|(key, _)| key.clone())
            .collect();
        // Stage handlers stay attached across an update: the new run gets
        // the old one's members whose stages still exist.
        let mut carried: HashMap<(String, u32), Vec<pipeline::CarriedMember>> = HashMap::new();
        for key in stale {
            let removed = self.runs.borrow_mut().remove(&key);
            if let Some(run) = removed {
                carried.insert(key.clone(), run.members());
                run.closed.set(true);
                run.wake.notify_all();
                if let Err(e) = run.sync().await {
                    tracing::warn!("closing pipeline {} partition {}: {e}", key.0, key.1);
                }
            }
        }
        for ((name, partition), plan) in wanted {
            if self.runs.borrow().contains_key(&(name.clone(), partition)) {
                continue;
            }
            let source = self
                .partition(&plan.source_stream, partition)
                .map_err(|(_, m)| m)?;
            let run = PipelineRun::open(
                &self.storage,
                &config.data_dir,
                plan,
                source,
                self.settings.log_config(Retention::default()),
                self.settings.limits(),
            )
            .await?;
            let run = Rc::new(run);
            for (member, stage, max_in_flight) in carried
                .remove(&(name.clone(), partition))
                .unwrap_or_default()
            {
                if let Some(s) = run.plan.stage_index(&stage) {
                    run.attach(member, s, max_in_flight);
                }
            }
            self.runs
                .borrow_mut()
                .insert((name, partition), run.clone());
            glommio::spawn_local(self.clone().dispatch_pipeline(Rc::downgrade(&run))).detach();
        }
        *self.topology.borrow_mut() = topology;
        Ok(())
    }

    /// Validates and applies resources (runs on shard 0).
    async fn apply(self: &Rc<Self>, yaml: String, force: bool) -> Reply {
        if self.applying.get() {
            return Reply::Failed(
                ErrorCode::InvalidRequest,
                "another apply is in progress; retry".into(),
            );
        }
        self.applying.set(true);
        let reply = self.apply_inner(yaml, force).await;
        self.applying.set(false);
        reply
    }

    async fn apply_inner(self: &Rc<Self>, yaml: String, force: bool) -> Reply {
        // The connection refused more than `applyBytesMax`, and the YAML
        // reader bounds nesting and refuses aliases, so parsing is cheap;
        // still, it runs off the shard's thread so that no document can
        // stall the shard's connections and partitions meanwhile.
        let parsed = glommio::executor()
            .spawn_blocking(move || config::parse_documents(&yaml))
            .await;
        let resources = match parsed {
            Ok(r) => r,
            Err(e) => return Reply::Failed(ErrorCode::InvalidConfig, e.to_string()),
        };
        let current = self.topology.borrow().clone();
        let mut next = current.clone();
        let mut summary = Vec::new();
        // Streams first, so a pipeline may name a stream of the same apply.
        let (streams, pipelines): (Vec<_>, Vec<_>) = resources
            .into_iter()
            .partition(|r| matches!(r, Resource::Stream(_)));
        for resource in streams.into_iter().chain(pipelines) {
            match next.put(resource) {
                Ok(line) => summary.push(line),
                Err((code, message)) => return Reply::Failed(code, message),
            }
        }
        if let Err(message) = self
            .settings
            .config
            .check_resource_counts(current.counts(), next.counts())
        {
            return Reply::Failed(ErrorCode::LimitExceeded, message);
        }
        // Retention and dedup limits of existing streams change at once,
        // except turning dedup on or off (see `Partition::set_dedup_limits`).
        let config = &self.settings.config;
        for (name, spec) in &next.streams {
            let Some(old) = current.streams.get(name) else {
                continue;
            };
            let (was, now) = (
                old.settings(config).dedup_window_ms,
                spec.settings(config).dedup_window_ms,
            );
            if (was == 0) != (now == 0) {
                summary.push(format!(
                    "stream/{name}: dedupWindowMs {was} -> {now} turns deduplication {} at the next server start; its other settings apply now",
                    if now == 0 { "off" } else { "on" }
                ));
            }
        }
        // Removing a stage drops its pending work: refuse unless forced.
        for (name, spec) in &next.pipelines {
            let Some(old) = current.pipelines.get(name) else {
                continue;
            };
            let removed: Vec<&str> = old
                .stages
                .iter()
                .map(|s| s.name.as_str())
                .filter(|n| !spec.stages.iter().any(|s| s.name == *n))
                .collect();
            if removed.is_empty() || force {
                continue;
            }
            let counts = (0..self.shards).map(|to| {
                self.call(
                    to,
                    Request::PipelineBusy {
                        pipeline: name.clone(),
                    },
                )
            });
            let busy: usize = futures::future::join_all(counts)
                .await
                .into_iter()
                .map(|r| if let Reply::Count(n) = r { n } else { 0 })
                .sum();
            if busy > 0 {
                return Reply::Failed(
                    ErrorCode::InvalidConfig,
                    format!(
                        "Pipeline {name:?}: removing stage(s) {removed:?} would drop the work of {busy} unfinished or failed executions; apply with --force to do it anyway"
                    ),
                );
            }
        }
        if next == current {
            return Reply::Applied(summary);
        }
        if let Err(e) = persist_resources(&self.settings.config.data_dir, &next.resources()) {
            return Reply::Failed(ErrorCode::StorageError, e);
        }
        let installs = (0..self.shards).map(|to| {
            self.call(
                to,
                Request::Install {
                    topology: next.clone(),
                },
            )
        });
        for reply in futures::future::join_all(installs).await {
            if let Reply::Failed(code, message) = reply {
                return Reply::Failed(code, message);
            }
        }
        Reply::Applied(summary)
    }

    fn spawn_housekeeping(self: Rc<Self>) {
        let shard = self.clone();
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(COMMIT_EVERY).await;
                if shard.stopping.get() {
                    return;
                }
                let parts: Vec<Rc<Partition>> =
                    shard.partitions.borrow().values().cloned().collect();
                for p in parts {
                    if let Err(e) = p.commit_offsets().await {
                        tracing::warn!(stream = %p.stream, partition = p.partition, "{e}");
                    }
                    if let Err(e) = p.log.flush_if_due().await {
                        tracing::warn!(stream = %p.stream, partition = p.partition, "{e}");
                    }
                    // A write that fell due while another flush ran (one a
                    // full buffer or a sync started) and that no publish
                    // has started since.
                    p.log.write_pending().await;
                }
            }
        })
        .detach();
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(RETENTION_EVERY).await;
                if self.stopping.get() {
                    return;
                }
                let parts: Vec<Rc<Partition>> =
                    self.partitions.borrow().values().cloned().collect();
                for p in parts {
                    // Record how far the log is durable, so that damage
                    // below it is told from a torn tail after a crash.
                    if let Err(e) = p.log.checkpoint().await {
                        tracing::warn!(stream = %p.stream, partition = p.partition, "checkpoint failed: {e}");
                    }
                    retain(&p).await;
                }
            }
        })
        .detach();
    }

    /// Makes every log durable and commits group offsets (on shutdown).
    async fn flush_all(&self) {
        let runs: Vec<Rc<PipelineRun>> = self.runs.borrow().values().cloned().collect();
        for run in runs {
            if let Err(e) = run.sync().await {
                tracing::warn!("final pipeline sync failed: {e}");
            }
        }
        let parts: Vec<Rc<Partition>> = self.partitions.borrow().values().cloned().collect();
        for p in parts {
            if let Err(e) = p.log.sync().await {
                tracing::warn!(stream = %p.stream, partition = p.partition, "final sync failed: {e}");
            } else if let Err(e) = p.log.checkpoint().await {
                tracing::warn!(stream = %p.stream, partition = p.partition, "final checkpoint failed: {e}");
            }
            if let Err(e) = p.commit_offsets().await {
                tracing::warn!(stream = %p.stream, partition = p.partition, "{e}");
            }
        }
    }
}

/// Runs retention on a partition's log, logging what it deleted.
async fn retain(p: &Partition) {
    match p.log.apply_retention(now_ms()).await {
        Ok(r) if r.segments > 0 => tracing::info!(
            stream = %p.stream,
            partition = p.partition,
            "retention deleted {} segments ({} bytes; {} files kept for reuse)",
            r.segments,
            r.bytes,
            r.recycled
        ),
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(stream = %p.stream, partition = p.partition, "retention failed: {e}")
        }
    }
}

/// A pipeline's entry in the status document: totals, per-stage counts
/// summed over partitions, and each partition's detail.
fn pipeline_status(spec: &PipelineSpec, runs: &[(String, RunStatus)]) -> serde_json::Value {
    let mut parts: Vec<&RunStatus> = runs
        .iter()
        .filter(|(name, _)| *name == spec.name)
        .map(|(_, r)| r)
        .collect();
    parts.sort_by_key(|r| r.partition);
    let mut stages: Vec<pipeline::StageStatus> = spec
        .stages
        .iter()
        .map(|s| pipeline::StageStatus {
            name: s.name.clone(),
            ..Default::default()
        })
        .collect();
    for part in &parts {
        for (total, s) in stages.iter_mut().zip(&part.stages) {
            total.completed += s.completed;
            total.in_flight += s.in_flight;
            total.waiting += s.waiting;
            total.errors += s.errors;
            total.failed += s.failed;
            if s.last_error.is_some() {
                total.last_error = s.last_error.clone();
            }
        }
    }
    serde_json::json!({
        "name": spec.name,
        "source_stream": spec.source_stream,
        "executions": {
            "active": parts.iter().map(|r| r.active).sum::<usize>(),
            "completed": parts.iter().map(|r| r.completed).sum::<u64>(),
            "failed": parts.iter().map(|r| r.failed).sum::<usize>(),
        },
        "stages": stages,
        "partitions": parts,
    })
}

/// Writes the resources file when its content changes (see
/// [`write_if_changed`]). Returns whether it wrote.
pub fn persist_resources(data_dir: &Path, resources: &[Resource]) -> Result<bool, String> {
    let yaml = config::to_yaml_documents(resources).map_err(|e| e.to_string())?;
    write_if_changed(data_dir, RESOURCES_FILE, yaml.as_bytes())
}

/// Writes `<dir>/<name>` atomically (a temporary file, fsync, rename, fsync
/// of the directory), unless it already holds exactly `content`: then
/// nothing is written, so a start that changes nothing needs no disk space
/// and no write permission. Returns whether it wrote.
pub fn write_if_changed(dir: &Path, name: &str, content: &[u8]) -> Result<bool, String> {
    let path = dir.join(name);
    match std::fs::read(&path) {
        Ok(old) if old == content => return Ok(false),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    }
    let tmp = dir.join(format!("{name}.tmp"));
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, content)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(true)
}

/// Reads the persisted resources; `None` when the data dir has none yet
/// (a first start).
pub fn load_resources(data_dir: &Path) -> Result<Option<Vec<Resource>>, String> {
    let path = data_dir.join(RESOURCES_FILE);
    match std::fs::read_to_string(&path) {
        Ok(yaml) => config::parse_documents(&yaml)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn resources_file_is_written_only_when_its_content_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(RESOURCES_FILE);
        let events = [Resource::Stream(StreamSpec::with_defaults("events"))];
        assert_eq!(persist_resources(dir.path(), &events), Ok(true));
        let first = std::fs::metadata(&path).unwrap();
        // A write now would fail: the temporary file's name is taken by a
        // directory (as a full disk or a read-only file would make it fail).
        std::fs::create_dir(dir.path().join(format!("{RESOURCES_FILE}.tmp"))).unwrap();
        assert_eq!(persist_resources(dir.path(), &events), Ok(false));
        let second = std::fs::metadata(&path).unwrap();
        assert_eq!(first.ino(), second.ino());
        assert_eq!(first.mtime_nsec(), second.mtime_nsec());
        assert_eq!(load_resources(dir.path()), Ok(Some(events.to_vec())));
        // A change must be written, and the failure is reported.
        let orders = [Resource::Stream(StreamSpec::with_defaults("orders"))];
        let e = persist_resources(dir.path(), &orders).unwrap_err();
        assert!(e.starts_with("cannot write "), "{e}");
        std::fs::remove_dir(dir.path().join(format!("{RESOURCES_FILE}.tmp"))).unwrap();
        assert_eq!(persist_resources(dir.path(), &orders), Ok(true));
        assert_eq!(load_resources(dir.path()), Ok(Some(orders.to_vec())));
        assert_ne!(std::fs::metadata(&path).unwrap().ino(), first.ino());
    }

    #[test]
    fn a_data_dir_without_resources_file_is_a_first_start() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_resources(dir.path()), Ok(None));
    }
}
