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
//!
//! Layout: `boot` starts the executors and the mesh; `protocol` is the
//! inter-shard request and reply; `handle` serves a request on the owning
//! shard; `dispatch` runs the one dispatcher loop of groups and pipeline
//! runs and pushes deliveries; `deliver` is their shared dispatch core
//! (members, deliveries out and their deadlines); `apply` and `topology`
//! change and keep the resources; `housekeeping` commits, checkpoints and
//! applies retention; `status` reports (and `metrics`, to the Prometheus
//! endpoint); `conn` and `outbox` are client
//! connections; `partition`, `group` and `pipeline` are the state machines
//! a shard owns; `error` is the [`Error`] every request fails with, and
//! its wire code.

mod apply;
mod boot;
pub mod clock;
pub mod conn;
mod deliver;
mod dispatch;
pub mod error;
pub mod group;
mod handle;
mod housekeeping;
pub mod meta;
pub mod metrics;
mod moves;
mod nodes;
mod offline;
pub mod outbox;
pub mod partition;
pub mod pipeline;
mod protocol;
pub mod replica_metrics;
#[cfg(test)]
mod sim;
#[cfg(test)]
pub(crate) mod sim_support;
mod status;
mod topology;

pub use boot::run;
pub use error::Error;
pub use protocol::{Mesh, MeshMsg, NodeChange, Reply, Request, TokenChange};
pub use status::PartitionStatus;
pub use topology::{FileResources, ResourceStore, Topology, load_resources, persist_resources};

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures::channel::oneshot;
use futures::future::select;
use glommio::channels::channel_mesh::{Full, MeshBuilder, Senders};
use glommio::{CpuSet, LocalExecutorPoolBuilder, PoolPlacement};
use hadron_engine::notify::Notify;
use hadron_engine::storage::Storage;
use hadron_engine::storage::dma::DmaStorage;
use hadron_engine::{LogConfig, Retention};
use hadron_wire::{Limits, StartPoint, shard_of};

use crate::config::server::ResourceCounts;
use crate::config::{self, PipelineSpec, Resource, ServerConfig, StreamSpec, TokenSpec};
use crate::failpoint;
use clock::{Clock, Runtime, SystemClock};
use group::{Deliveries, GroupPartition, GroupStatus, MemberId, Outgoing};
use outbox::Outbox;
use partition::{Partition, Published};
use pipeline::{PipelineRun, RunStatus, StageAckOf};

/// Capacity of each mesh channel, in messages.
const MESH_CHANNEL_CAPACITY: usize = 1024;
/// How often retention runs.
const RETENTION_EVERY: Duration = Duration::from_secs(10);
/// How often durable groups' offsets are committed.
const COMMIT_EVERY: Duration = Duration::from_millis(200);

/// Things kept per (stream or pipeline name, partition).
type ByPartition<T> = BTreeMap<(String, u32), T>;

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
    /// Where each shard registers for the metrics endpoint's snapshot
    /// requests (`metricsListen`); `None` when metrics are off.
    pub metrics: Option<Arc<crate::metrics::Hub>>,
    /// The TLS every port speaks (`tls:`, loaded); `None` for plain TCP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// How this node dials its peers when it has `tls:` (a cluster's
    /// links are TLS too); `None`: plain TCP.
    pub peer_tls: Option<Arc<rustls::ClientConfig>>,
    /// Each replicated partition's leader as its owning shard last saw it.
    pub leaders: Arc<crate::replication::Leaders>,
    /// Where `hadron cluster move` placed partitions (`cluster.placement`).
    pub placements: Arc<crate::config::placement::Overrides>,
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
            segment_preallocate_bytes: self.config.segment_preallocate_bytes,
            durability: self.config.fsync.durability(),
            retention,
            batch_bytes_max,
            pending_bytes_max: defaults.pending_bytes_max.max(batch_bytes_max),
            ..defaults
        }
    }
}

/// A shard, on any storage and runtime: the server runs
/// `Shard<DmaStorage, SystemClock>` on glommio; the shard simulation runs
/// several on `SimStorage` and `SimClock` in one thread.
pub struct Shard<S: Storage = DmaStorage, R: Runtime = SystemClock> {
    /// This shard's id (its mesh peer id).
    pub id: u16,
    /// Number of shards.
    pub shards: u16,
    /// Start-up settings.
    pub settings: Arc<Settings>,
    storage: S,
    /// The shard's clock and executor.
    runtime: R,
    /// Where shard 0 persists applied resources.
    resources: Box<dyn ResourceStore>,
    /// The current topology.
    pub topology: RefCell<Topology>,
    partitions: RefCell<ByPartition<Rc<Partition<S, R>>>>,
    runs: RefCell<ByPartition<Rc<PipelineRun<S, R>>>>,
    /// Replicated partitions, and pipeline runs, whose logs could not open
    /// here, and why (`offline.rs`).
    offline: RefCell<ByPartition<String>>,
    offline_runs: RefCell<ByPartition<String>>,
    mesh: Box<dyn Mesh>,
    pending: RefCell<HashMap<u64, oneshot::Sender<Reply>>>,
    next_id: Cell<u64>,
    conns: RefCell<HashMap<u64, Rc<Outbox>>>,
    /// Subscriptions each connection of this shard holds (see
    /// `conn::reserve_subscription`).
    pub(crate) subscriptions: RefCell<HashMap<u64, u32>>,
    /// Which group holds each outstanding delivery made here.
    deliveries: Rc<Deliveries<R>>,
    /// Deliveries dropped because their connection's outbox was full (see
    /// `congestion_checked`).
    dropped_deliveries: Cell<u64>,
    /// Set when the server is shutting down.
    pub stopping: Cell<bool>,
    /// Notified when `stopping` is set: connections stop reading.
    stop_requested: Notify,
    /// Client connections being served here, until their last answer is
    /// written (see [`Shard::connection_opened`]).
    conns_open: Cell<usize>,
    /// Notified when `conns_open` falls (for the drain on stop).
    conns_changed: Notify,
    /// Serializes `apply` on shard 0.
    applying: Cell<bool>,
    /// Turns the replica a `NotLeader` from a node holding none names
    /// (`not_here`).
    hints: Cell<u64>,
    /// This shard's connections and their tokens.
    pub(crate) auth: conn::auth::Registry,
    /// Links to this shard on the other nodes of the cluster (set before
    /// the first install when the cluster has several nodes).
    peer_links: RefCell<Option<Rc<dyn crate::replication::PeerLinks>>>,
    /// The metadata group (`meta`): on shard 0 of a node of a cluster of
    /// several nodes.
    meta: RefCell<Option<Rc<meta::ShardMeta<S, R>>>>,
}

impl<S: Storage, R: Runtime> std::fmt::Debug for Shard<S, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard").field("id", &self.id).finish()
    }
}

impl<S: Storage + Clone + 'static, R: Runtime> Shard<S, R> {
    /// A shard with no partitions yet (`install` opens them).
    pub fn new(
        id: u16,
        settings: Arc<Settings>,
        storage: S,
        runtime: R,
        mesh: Box<dyn Mesh>,
        resources: Box<dyn ResourceStore>,
    ) -> Shard<S, R> {
        Shard {
            id,
            shards: settings.config.shards,
            settings,
            storage,
            runtime,
            resources,
            topology: RefCell::new(Topology::default()),
            partitions: RefCell::new(BTreeMap::new()),
            runs: RefCell::new(BTreeMap::new()),
            offline: RefCell::new(BTreeMap::new()),
            offline_runs: RefCell::new(BTreeMap::new()),
            mesh,
            pending: RefCell::new(HashMap::new()),
            next_id: Cell::new(1),
            conns: RefCell::new(HashMap::new()),
            subscriptions: RefCell::new(HashMap::new()),
            deliveries: Rc::new(Deliveries::default()),
            dropped_deliveries: Cell::new(0),
            stopping: Cell::new(false),
            stop_requested: Notify::default(),
            conns_open: Cell::new(0),
            conns_changed: Notify::default(),
            applying: Cell::new(false),
            hints: Cell::new(0),
            auth: conn::auth::Registry::default(),
            peer_links: RefCell::new(None),
            meta: RefCell::new(None),
        }
    }

    /// Hands a peer's raft message to its partition's group here; dropped
    /// when the partition is not replicated on this shard (yet).
    pub fn on_peer_message(&self, stream: &str, partition: u32, msg: raft::eraftpb::Message) {
        let offsets = partition::replica_offsets::OFFSETS_GROUP_PREFIX;
        let replica = if stream == meta::META_GROUP {
            self.meta_group().map(|m| m.replica.clone())
        } else if let Some(name) = stream.strip_prefix(pipeline::OUTPUTS_GROUP_PREFIX) {
            self.runs
                .borrow()
                .get(&(name.to_owned(), partition))
                .and_then(|r| r.replica())
        } else if let Some(name) = stream.strip_prefix(offsets) {
            self.partitions
                .borrow()
                .get(&(name.to_owned(), partition))
                .and_then(|p| p.offsets_replica.clone())
        } else {
            self.partitions
                .borrow()
                .get(&(stream.to_owned(), partition))
                .and_then(|p| p.replica.clone())
        };
        match replica {
            Some(r) => r.step(msg),
            None => {
                tracing::debug!(
                    shard = self.id,
                    stream,
                    partition,
                    "raft message for a group not here; dropped"
                );
            }
        }
    }

    /// Gives the shard its links to the other nodes (before `install`).
    pub fn set_peer_links(&self, links: Rc<dyn crate::replication::PeerLinks>) {
        *self.peer_links.borrow_mut() = Some(links);
    }

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
    pub fn check_partition(&self, stream: &str, partition: u32) -> Result<(), Error> {
        let topology = self.topology.borrow();
        let Some(spec) = topology.streams.get(stream) else {
            return Err(Error::UnknownStream {
                stream: stream.to_owned(),
            });
        };
        if partition >= spec.partitions {
            return Err(Error::UnknownPartition {
                stream: stream.to_owned(),
                partition,
                partitions: spec.partitions,
            });
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
        if self.mesh.send_to(to, msg).await.is_err() {
            self.pending.borrow_mut().remove(&id);
            return Reply::Failed(Error::ShardGone { shard: to });
        }
        rx.await.unwrap_or_else(|_| {
            Reply::Failed(Error::Internal(format!("shard {to} dropped a request")))
        })
    }

    /// Takes a message another shard sent this one.
    pub fn on_mesh(self: Rc<Self>, from: u16, msg: MeshMsg) {
        match msg {
            MeshMsg::Request { id, req, .. } => {
                let runtime = self.runtime.clone();
                runtime.spawn(async move {
                    let reply = self.clone().handle(req).await;
                    let _ = self.mesh.send_to(from, MeshMsg::Reply { id, reply }).await;
                });
            }
            MeshMsg::Reply { id, reply } => {
                if let Some(tx) = self.pending.borrow_mut().remove(&id) {
                    let _ = tx.send(reply);
                }
            }
            MeshMsg::Push { conn, frame } => {
                if let Some(outbox) = self.congestion_checked(conn) {
                    outbox.send_frame(&frame);
                }
            }
        }
    }

    /// Registers a connection's outbox.
    pub fn register_conn(&self, conn: u64, outbox: Rc<Outbox>) {
        self.conns.borrow_mut().insert(conn, outbox);
    }

    /// Counts a client connection served here until the guard is dropped,
    /// after its last answer was written.
    pub fn connection_opened(self: &Rc<Self>) -> impl Drop + use<S, R> {
        struct Open<S: Storage + Clone + 'static, R: Runtime>(Rc<Shard<S, R>>);
        impl<S: Storage + Clone + 'static, R: Runtime> Drop for Open<S, R> {
            fn drop(&mut self) {
                let shard = &self.0;
                shard.conns_open.set(shard.conns_open.get() - 1);
                shard.conns_changed.notify_all();
            }
        }
        self.conns_open.set(self.conns_open.get() + 1);
        Open(self.clone())
    }

    /// Begins a stop: no new connection, publish or delivery, and every
    /// connection stops reading (see `conn::serve`), answers what it read
    /// and closes.
    pub fn begin_stop(&self) {
        self.stopping.set(true);
        self.stop_requested.notify_all();
    }

    /// Resolves once the shard is stopping.
    pub async fn stop_requested(&self) {
        loop {
            let generation = self.stop_requested.generation();
            if self.stopping.get() {
                return;
            }
            self.stop_requested.changed_since(generation).await;
        }
    }

    /// After [`Shard::begin_stop`]: waits until every connection of this
    /// shard has answered what it read and closed, or `timeout` passed.
    /// Returns the connections still open.
    pub async fn drain_connections(&self, timeout: Duration) -> usize {
        let deadline = self.runtime.now() + timeout;
        loop {
            let generation = self.conns_changed.generation();
            let open = self.conns_open.get();
            let left = deadline.saturating_sub(self.runtime.now());
            if open == 0 || left.is_zero() {
                return open;
            }
            let changed = Box::pin(self.conns_changed.changed_since(generation));
            let _ = select(changed, Box::pin(self.runtime.sleep(left))).await;
        }
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

    fn partition(&self, stream: &str, partition: u32) -> Result<Rc<Partition<S, R>>, Error> {
        self.partitions
            .borrow()
            .get(&(stream.to_string(), partition))
            .cloned()
            .ok_or_else(|| {
                self.offline_error(stream, partition)
                    .unwrap_or_else(|| self.not_here(stream, partition))
            })
    }

    /// Why a partition of the topology is not open here: placed on other
    /// nodes of the cluster, or not on this shard.
    fn not_here(&self, stream: &str, partition: u32) -> Error {
        let config = &self.settings.config;
        let placed = config.cluster.as_ref().and_then(|cluster| {
            let spec = self.topology.borrow().streams.get(stream).cloned()?;
            let replicas = config.stream_replicas(&spec);
            // Moved (`hadron cluster move`) or static.
            let nodes = self.placed_nodes(&spec, partition);
            (!nodes.contains(&cluster.node_id)).then_some((nodes, replicas))
        });
        match placed {
            // One replica: it is always the leader. Several: this node
            // does not know which leads, so it names one of them (term 0:
            // a hint), another at each refusal, so that a client whose
            // bootstrap list holds no replica reaches one that knows
            // (one that is down is passed over at the next refusal).
            Some((nodes, replicas)) => {
                let hint = if replicas == 1 {
                    self.leader_at(nodes[0], 1, self.owner(stream, partition))
                } else {
                    let turn = self.hints.get();
                    self.hints.set(turn.wrapping_add(1));
                    nodes
                        .get((turn % nodes.len().max(1) as u64) as usize)
                        .and_then(|&n| self.leader_at(n, 0, self.owner(stream, partition)))
                };
                Error::NotLeader {
                    stream: stream.to_owned(),
                    partition,
                    leader: hint,
                }
            }
            None => Error::PartitionNotHere {
                stream: stream.to_owned(),
                partition,
                shard: self.id,
            },
        }
    }

    /// Where node `node_id`'s shard `shard` takes clients, as a
    /// `NotLeader` error names it.
    pub fn leader_at(&self, node_id: u64, term: u64, shard: u16) -> Option<error::LeaderAt> {
        leader_at(&self.settings.config, node_id, term, shard)
    }
}

/// Where node `node_id`'s shard `shard` takes clients: its client address
/// from `cluster.peers`, and the shard's port (every node runs the same
/// shards with the same `shardPorts`).
pub fn leader_at(
    config: &ServerConfig,
    node_id: u64,
    term: u64,
    shard: u16,
) -> Option<error::LeaderAt> {
    let address = match &config.cluster {
        Some(cluster) => cluster.peer(node_id)?.address.clone(),
        None => config.listen.to_string(),
    };
    let port = address.rsplit_once(':')?.1.parse::<u16>().ok()?;
    let shard_port = if config.shard_ports {
        hadron_wire::shard_port(port, shard).unwrap_or(0)
    } else {
        0
    };
    Some(error::LeaderAt {
        node_id,
        address,
        shard_port,
        term,
    })
}
