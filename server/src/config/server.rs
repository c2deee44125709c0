//! Server settings: the first document of a config file.
//!
//! Every field is optional; what is left out takes the default below.
//!
//! ```yaml
//! kind: ServerConfig          # optional in the first document
//! dataDir: ./hadron-data
//! listen: 127.0.0.1:7000      # IP:port shared by all shards (SO_REUSEPORT)
//! metricsListen: 127.0.0.1:9464  # serve Prometheus metrics at /metrics
//!                             # (default: off; see docs/metrics.md)
//! shards: 4                   # default: the number of CPUs
//! shardPorts: true            # shard i also listens on listen port + 1 + i
//! fsync: always               # always | interval | never
//! fsyncIntervalMs: 100        # only with `fsync: interval`
//! segmentBytes: 134217728     # 128 MiB
//! segmentPreallocateBytes: 4194304  # the active segment's file grows in
//!                             # steps of this (64 KiB to segmentBytes; a
//!                             # multiple of 4 KiB): every log holds at least
//!                             # a step of disk (default 4 MiB, or
//!                             # segmentBytes if smaller)
//! ioMemoryBytes: 8388608      # glommio io_memory per shard, 8 MiB
//! frameBytesMax: 16777216     # largest wire frame accepted
//! dedupWindowMs: 120000       # default for streams
//! dedupKeysMax: 2097152       # default for streams: keys per partition
//! groupsMax: 1024             # consumer groups per partition (durable ones
//!                             # count until the server forgets them: never)
//! ackIdsMax: 65536            # delivery ids in one Ack
//! subscriptionsPerConnectionMax: 256  # Subscribe + PipelineSubscribe
//! retention: {}               # default for streams: keep forever
//! token: s3cret               # clients must present it in their handshake;
//!                             # default: $HADRON_TOKEN, else none (any client)
//! insecureNoToken: false      # allow a non-loopback `listen` with no token
//! shardStartTimeoutMs: 60000  # every shard must be serving by then, or the
//!                             # server exits non-zero
//! connectionsMax: 1024        # on all shards; more are refused (TooManyConnections)
//! handshakeTimeoutMs: 10000   # a connection must complete its handshake by then
//! idleTimeoutMs: 600000       # close a connection with no subscription and no
//!                             # request that sent nothing this long (0: never)
//! drainTimeoutMs: 10000       # on SIGTERM: time connections get to answer what
//!                             # they read before the logs are flushed
//! handshakeFrameBytesMax: 65536  # largest frame before the handshake
//! outboxBytesMax: 33554432    # per connection: answers queued or being written
//!                             # plus Fetch answers reserved; reading stops above
//! requestsInFlightMax: 1024   # per connection: requests served at once
//! deliveriesInFlightMax: 1024 # per subscription: a larger max_in_flight is
//!                             # lowered to this (0 reads as 1)
//! applyBytesMax: 1048576      # largest `hadron apply` YAML, 1 MiB
//! streamsMax: 256             # streams the server may hold
//! partitionsMax: 1024         # stream partitions in all; also pipeline runs
//!                             # (a pipeline runs once per source partition)
//! pipelinesMax: 64            # pipelines the server may hold
//! tokensMax: 1024             # Tokens the server may hold
//! metaCompactEveryEntries: 1000  # a cluster's metadata log: entries between
//!                             # the State entries it is compacted to
//! metaVoters: 5               # a cluster's metadata group: its voters (1 to 7,
//!                             # the same on every node); other nodes learn
//! tls:                        # TLS on the client and shard ports (default: none)
//!   cert: /etc/hadron/server.pem   # PEM certificate chain, leaf first
//!   key: /etc/hadron/server.key    # PEM private key of the certificate
//!   clientCa: /etc/hadron/ca.pem   # optional: require client certificates
//!                                  # signed by these CAs (mutual TLS)
//! cluster:                    # default: none, a single node (node id 1)
//!   nodeId: 1                 # this node, one of `peers`
//!   secretFile: /etc/hadron/cluster.secret  # shared by every node; needed
//!                             # when peers are beyond loopback
//!   founders: [1, 2, 3]       # a node added later: the ids the cluster was
//!                             # first started with (default: every peer)
//!   peerCa: /etc/hadron/ca.pem  # with tls: the CA peers' certificates are
//!                             # checked against (default: tls.clientCa)
//!   peers:                    # every node, this one included; ids >= 1,
//!     - { id: 1, address: "10.0.0.1:7000" }  # unique; addresses distinct;
//!     - { id: 2, address: "10.0.0.2:7000" }  # at most clusterNodesMax (64)
//!     - { id: 3, address: "10.0.0.3:7000", peerAddress: "10.1.0.3:7100" }
//! ```
//!
//! With `tls`, every port speaks only TLS (clients use `https://` URLs);
//! its files are read and checked at start (see `tls.rs`), and the TLS
//! handshake counts against `connectionsMax` and must end, with the Hadron
//! handshake after it, within `handshakeTimeoutMs`.
//!
//! A `cluster:` of several nodes replicates Streams with `replicas` above
//! 1 by Raft (peer connections on each node's `peerAddress`, default the
//! client port + 100, shard `i` on that port + `i`). See `cluster.rs` and
//! docs/replication.md.
//!
//! `applyBytesMax`, `streamsMax`, `partitionsMax`, `pipelinesMax` and
//! `tokensMax` bound what one `hadron apply` can make the server do; an
//! apply over one is answered `LimitExceeded` with the setting and its value
//! and changes nothing. Their defaults suit a 2-core, 24 GiB machine: 1 MiB
//! of YAML parses in well under a second; each partition and each pipeline
//! run opens its own log (a `segmentPreallocateBytes` step of disk at its
//! first write, two for a replicated partition at once, and memory
//! for its buffers and dedup window), so partitions are the costly count
//! (idle, 1,024 partitions took a one-shard server from 24 to 42 MiB of
//! RSS; a full dedup window costs up to 110 MiB per partition). A
//! server already past a limit (the limit was lowered) keeps what it has; an
//! apply is refused only when it would grow a count past its limit. The
//! YAML itself, this config file's too, is bounded in `yaml.rs` (no anchors
//! or aliases, brackets at most 32 deep), and a stream has at most 1,024
//! partitions and a pipeline 64 stages whatever these say. The config
//! file's resources are held to the same counts on a data dir's first
//! start; later starts keep the applied resources (see `main.rs`).
//!
//! Command-line flags override these after parsing; call
//! [`ServerConfig::validate`] again after applying them.
//!
//! The range checks and the checks against a running server (exposure,
//! an apply's size and resource counts) are in `server/validate.rs`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use hadron_engine::log::{SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN, SEGMENT_PREALLOCATE_BYTES_DEFAULT};
use hadron_engine::storage::IO_ALIGN_BYTES;
use serde::Deserialize;

use super::API_VERSION;
use super::cluster::{ClusterConfig, NODE_ID_SINGLE};
use super::error::{ConfigError, Problem, ResourceKind};
use super::stream::{DEDUP_WINDOW_MS_MAX, RetentionSpec};
use super::tls::TlsFiles;

mod validate;

/// Where data lives when the config does not say.
pub const DATA_DIR_DEFAULT: &str = "./hadron-data";
/// The client address when the config does not say.
pub const LISTEN_DEFAULT: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7000);
/// The most shards (executors) a server runs.
pub const SHARDS_MAX: u16 = 256;
/// Segment size when the config does not say.
pub const SEGMENT_BYTES_DEFAULT: u64 = 128 << 20;
/// The smallest `segmentPreallocateBytes`: below it a log written in
/// small rounds would extend its file (a `fallocate`, a metadata change)
/// every few rounds. The largest is `segmentBytes`.
pub const SEGMENT_PREALLOCATE_BYTES_MIN: u64 = 64 << 10;
/// glommio `io_memory` per shard when the config does not say.
pub const IO_MEMORY_BYTES_DEFAULT: usize = 8 << 20;
/// glommio refuses less.
pub const IO_MEMORY_BYTES_MIN: usize = 64 << 10;
/// Each shard pins three times this (one per ring), so keep it modest.
pub const IO_MEMORY_BYTES_MAX: usize = 1 << 30;
/// The smallest `frameBytesMax` accepted.
pub const FRAME_BYTES_MIN: usize = 64 << 10;
/// Idempotent-publish window when neither server nor stream says.
pub const DEDUP_WINDOW_MS_DEFAULT: u64 = 120_000;
/// Keys a partition's dedup window holds at most when neither server nor
/// stream says: about 110 MiB per partition at the most.
pub const DEDUP_KEYS_MAX_DEFAULT: u64 = 2 << 20;
/// Consumer groups a partition holds when the config does not say. Each
/// costs little while idle (a sleeping task and a few hundred bytes), and
/// its durable offset is in every offsets snapshot of the partition: at the
/// most 1,024 groups with 255-byte names, a 265 KiB snapshot written (with
/// an fdatasync) at most every 200 ms while offsets move.
pub const GROUPS_MAX_DEFAULT: u32 = 1024;
/// The largest `groupsMax`: its snapshot (4.2 MiB) stays well inside the
/// engine's batch limit, and rewriting it every 200 ms stays affordable.
pub const GROUPS_MAX_MAX: u32 = 16_384;
/// Delivery ids one Ack may carry when the config does not say: 512 KiB of
/// ids, settled in a few milliseconds (one index lookup each).
pub const ACK_IDS_MAX_DEFAULT: u32 = 65_536;
/// The largest `ackIdsMax`: an Ack of this many ids holds its shard for
/// about a quarter of a second.
pub const ACK_IDS_MAX_MAX: u32 = 1 << 20;
/// Subscriptions (stream and pipeline) one connection may hold when the
/// config does not say. Each adds a member on every partition it covers.
pub const SUBSCRIPTIONS_PER_CONNECTION_MAX_DEFAULT: u32 = 256;
/// The largest `subscriptionsPerConnectionMax`.
pub const SUBSCRIPTIONS_PER_CONNECTION_MAX_MAX: u32 = 65_536;
/// The longest handshake token accepted in the config.
pub const TOKEN_BYTES_MAX: usize = 4096;
/// The environment variable the server, the CLI and loadgen read the
/// handshake token from when nothing else sets it.
pub const TOKEN_ENV: &str = "HADRON_TOKEN";
/// How long every shard has to start serving before the server gives up.
pub const SHARD_START_TIMEOUT_MS_DEFAULT: u64 = 60_000;
/// Client connections the server holds at most, on all shards (each costs
/// up to its outbox and one frame of read buffer).
pub const CONNECTIONS_MAX_DEFAULT: u32 = 1024;
/// Time a connection has to complete its handshake.
pub const HANDSHAKE_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// A connection with nothing to do that sent nothing this long is closed.
pub const IDLE_TIMEOUT_MS_DEFAULT: u64 = 600_000;
/// On SIGTERM, the time connections get to answer the requests they had
/// read (durable publishes wait for their fdatasync) before the shards
/// flush and the process exits.
pub const DRAIN_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// The largest frame accepted before the handshake: a handshake is a
/// version, a token of at most `TOKEN_BYTES_MAX` and a client name.
pub const HANDSHAKE_FRAME_BYTES_MAX_DEFAULT: usize = 64 << 10;
/// The smallest `handshakeFrameBytesMax`: a token of `TOKEN_BYTES_MAX`
/// must fit.
pub const HANDSHAKE_FRAME_BYTES_MIN: usize = 8 << 10;
/// Per connection: bytes of answers queued, being written, or reserved
/// for Fetch answers, above which the server stops reading its requests.
pub const OUTBOX_BYTES_MAX_DEFAULT: usize = 32 << 20;
/// Requests one connection may have in flight.
pub const REQUESTS_IN_FLIGHT_MAX_DEFAULT: u32 = 1024;
/// Unacknowledged deliveries one subscription may hold: with events of up
/// to a batch (4 MiB), what a subscription can pin is bounded by this.
pub const DELIVERIES_IN_FLIGHT_MAX_DEFAULT: u32 = 1024;
/// `applyBytesMax` when the config does not say.
pub const APPLY_BYTES_MAX_DEFAULT: usize = 1 << 20;
/// The smallest `applyBytesMax`: room for a few resources.
pub const APPLY_BYTES_MAX_MIN: usize = 4 << 10;
/// `streamsMax` when the config does not say.
pub const STREAMS_MAX_DEFAULT: u32 = 256;
/// `partitionsMax` when the config does not say.
pub const PARTITIONS_MAX_DEFAULT: u32 = 1024;
/// `pipelinesMax` when the config does not say.
pub const PIPELINES_MAX_DEFAULT: u32 = 64;
/// `metaCompactEveryEntries` when the config does not say: a State entry
/// (the whole metadata, up to about `applyBytesMax` of resources) per
/// thousand changes costs little, and a node far behind replays at most
/// this many changes after it.
pub const META_COMPACT_EVERY_ENTRIES_DEFAULT: u64 = 1_000;
/// The largest `metaCompactEveryEntries`: the metadata log's bound.
pub const META_COMPACT_EVERY_ENTRIES_MAX: u64 = 1_000_000;
/// `metaVoters` when the config does not say: five voters ride out two
/// nodes down, and every change waits for three disks only (etcd's and
/// KRaft's advice); the other nodes are learners of the metadata log.
pub const META_VOTERS_DEFAULT: u32 = 5;
/// The largest `metaVoters`: a Raft group's voters, at most.
pub const META_VOTERS_MAX: u32 = 7;
/// `tokensMax` when the config does not say.
pub const TOKENS_MAX_DEFAULT: u32 = 1024;
/// The largest `tokensMax`: a handshake hashes its token once and compares
/// the hash with every token's (32 bytes each, in constant time), so this
/// bounds a handshake's cost to about a millisecond.
pub const TOKENS_MAX_MAX: u32 = 65_536;
/// The largest value `streamsMax`, `partitionsMax` and `pipelinesMax` take.
pub const RESOURCES_MAX_MAX: u32 = 1 << 20;
/// Flush interval for `fsync: interval` when `fsyncIntervalMs` is absent.
pub const FSYNC_INTERVAL_MS_DEFAULT: u64 = 100;
/// The longest `fsyncIntervalMs`: the loss window in a crash.
pub const FSYNC_INTERVAL_MS_MAX: u64 = 60_000;

const _: () = assert!(SEGMENT_BYTES_DEFAULT >= SEGMENT_BYTES_MIN);
const _: () = assert!(SEGMENT_BYTES_DEFAULT <= SEGMENT_BYTES_MAX);
const _: () = assert!(SEGMENT_BYTES_DEFAULT.is_multiple_of(IO_ALIGN_BYTES));
const _: () = assert!(SEGMENT_PREALLOCATE_BYTES_MIN.is_multiple_of(IO_ALIGN_BYTES));
const _: () = assert!(SEGMENT_PREALLOCATE_BYTES_MIN <= SEGMENT_BYTES_MIN);
const _: () = assert!(SEGMENT_PREALLOCATE_BYTES_DEFAULT >= SEGMENT_PREALLOCATE_BYTES_MIN);
const _: () = assert!(SEGMENT_PREALLOCATE_BYTES_DEFAULT <= SEGMENT_BYTES_DEFAULT);
const _: () = assert!(IO_MEMORY_BYTES_DEFAULT >= IO_MEMORY_BYTES_MIN);
const _: () = assert!(FRAME_BYTES_MIN <= hadron_wire::FRAME_BYTES_MAX);
const _: () = assert!(DEDUP_WINDOW_MS_DEFAULT <= DEDUP_WINDOW_MS_MAX);
const _: () = assert!(GROUPS_MAX_DEFAULT <= GROUPS_MAX_MAX);
const _: () = assert!(ACK_IDS_MAX_DEFAULT <= ACK_IDS_MAX_MAX);
const _: () =
    assert!(SUBSCRIPTIONS_PER_CONNECTION_MAX_DEFAULT <= SUBSCRIPTIONS_PER_CONNECTION_MAX_MAX);
const _: () = assert!(APPLY_BYTES_MAX_MIN <= APPLY_BYTES_MAX_DEFAULT);
const _: () = assert!(APPLY_BYTES_MAX_DEFAULT <= hadron_wire::FRAME_BYTES_MAX);
const _: () = assert!(PARTITIONS_MAX_DEFAULT >= super::stream::PARTITIONS_DEFAULT);
const _: () = assert!(TOKENS_MAX_DEFAULT <= TOKENS_MAX_MAX);
const _: () = assert!(META_COMPACT_EVERY_ENTRIES_DEFAULT <= META_COMPACT_EVERY_ENTRIES_MAX);

/// When a publish is acknowledged relative to fdatasync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// Once durable: segment files are write-through (`O_DSYNC`), and a
    /// publish is answered after the write that holds it returned. Nothing
    /// acknowledged is lost.
    #[default]
    Always,
    /// At once, with an fdatasync at most this often: a crash loses up to
    /// an interval of acknowledged events.
    Interval { interval_ms: u64 },
    /// At once, synced only when a segment is sealed: a crash may lose any
    /// acknowledged event not yet synced.
    Never,
}

impl FsyncPolicy {
    /// The engine's form.
    pub fn durability(self) -> hadron_engine::Durability {
        match self {
            FsyncPolicy::Always => hadron_engine::Durability::Always,
            FsyncPolicy::Interval { interval_ms } => {
                hadron_engine::Durability::Interval(std::time::Duration::from_millis(interval_ms))
            }
            FsyncPolicy::Never => hadron_engine::Durability::Never,
        }
    }
}

/// Server settings, defaults resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Where `GET /metrics` is served; `None`: nowhere.
    pub metrics_listen: Option<SocketAddr>,
    pub shards: u16,
    pub shard_ports: bool,
    pub fsync: FsyncPolicy,
    pub segment_bytes: u64,
    /// The step the active segment's file is allocated in
    /// (`segmentPreallocateBytes`).
    pub segment_preallocate_bytes: u64,
    pub io_memory_bytes: usize,
    pub frame_bytes_max: usize,
    /// Default for streams that do not set `dedupWindowMs`; 0 is off.
    pub dedup_window_ms: u64,
    /// Default for streams that do not set `dedupKeysMax`.
    pub dedup_keys_max: u64,
    /// Consumer groups per partition (`groupsMax`).
    pub groups_max: u32,
    /// Delivery ids per Ack (`ackIdsMax`).
    pub ack_ids_max: u32,
    /// Subscriptions per connection (`subscriptionsPerConnectionMax`).
    pub subscriptions_per_connection_max: u32,
    /// Default for streams that do not set `retention`.
    pub retention: RetentionSpec,
    /// The token every client's handshake must carry; `None` accepts any.
    pub token: Option<Token>,
    /// Listening beyond loopback with no token is refused unless this is set.
    pub insecure_no_token: bool,
    /// Every shard must be serving within this, or the server exits.
    pub shard_start_timeout_ms: u64,
    /// Client connections, on all shards.
    pub connections_max: u32,
    /// Time a connection has to complete its handshake.
    pub handshake_timeout_ms: u64,
    /// Idle connections are closed after this; 0 never.
    pub idle_timeout_ms: u64,
    /// On SIGTERM, how long connections may take to answer and close.
    pub drain_timeout_ms: u64,
    /// Largest frame before the handshake.
    pub handshake_frame_bytes_max: usize,
    /// Per connection: answer bytes queued, being written or reserved.
    pub outbox_bytes_max: usize,
    /// Requests per connection served at once.
    pub requests_in_flight_max: u32,
    /// Unacknowledged deliveries per subscription, at most.
    pub deliveries_in_flight_max: u32,
    /// The largest YAML `hadron apply` may send.
    pub apply_bytes_max: usize,
    /// The most streams.
    pub streams_max: u32,
    /// The most stream partitions in all, and the most pipeline runs.
    pub partitions_max: u32,
    /// The most pipelines.
    pub pipelines_max: u32,
    /// The most Tokens.
    pub tokens_max: u32,
    /// The metadata group's leader proposes a State entry (and its log is
    /// compacted to it) after this many entries.
    pub meta_compact_every_entries: u64,
    /// Voters of the metadata group (the first nodes of the cluster's
    /// registry, current voters kept); the other nodes are its learners.
    pub meta_voters: u32,
    /// TLS on every port; `None` for plain TCP.
    pub tls: Option<TlsFiles>,
    /// `cluster:`; `None`: a single node.
    pub cluster: Option<ClusterConfig>,
}

/// A handshake token: a shared secret, never printed.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Token(String);

impl Token {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Token {
        Token(secret.into())
    }

    /// Whether `presented` is this token, in time that depends only on the
    /// lengths, not on where the first difference is.
    pub fn matches(&self, presented: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), presented.as_bytes());
        let mut diff = u8::from(a.len() != b.len());
        for (i, x) in a.iter().enumerate() {
            diff |= x ^ b.get(i).copied().unwrap_or(!x);
        }
        diff == 0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// The number of CPUs this process may run on, within `1..=SHARDS_MAX`.
pub fn shards_default() -> u16 {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    u16::try_from(cpus)
        .unwrap_or(SHARDS_MAX)
        .clamp(1, SHARDS_MAX)
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            data_dir: PathBuf::from(DATA_DIR_DEFAULT),
            listen: LISTEN_DEFAULT,
            metrics_listen: None,
            shards: shards_default(),
            shard_ports: true,
            fsync: FsyncPolicy::Always,
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            segment_preallocate_bytes: SEGMENT_PREALLOCATE_BYTES_DEFAULT,
            io_memory_bytes: IO_MEMORY_BYTES_DEFAULT,
            frame_bytes_max: hadron_wire::FRAME_BYTES_MAX,
            dedup_window_ms: DEDUP_WINDOW_MS_DEFAULT,
            dedup_keys_max: DEDUP_KEYS_MAX_DEFAULT,
            groups_max: GROUPS_MAX_DEFAULT,
            ack_ids_max: ACK_IDS_MAX_DEFAULT,
            subscriptions_per_connection_max: SUBSCRIPTIONS_PER_CONNECTION_MAX_DEFAULT,
            retention: RetentionSpec::default(),
            token: None,
            insecure_no_token: false,
            shard_start_timeout_ms: SHARD_START_TIMEOUT_MS_DEFAULT,
            connections_max: CONNECTIONS_MAX_DEFAULT,
            handshake_timeout_ms: HANDSHAKE_TIMEOUT_MS_DEFAULT,
            idle_timeout_ms: IDLE_TIMEOUT_MS_DEFAULT,
            drain_timeout_ms: DRAIN_TIMEOUT_MS_DEFAULT,
            handshake_frame_bytes_max: HANDSHAKE_FRAME_BYTES_MAX_DEFAULT,
            outbox_bytes_max: OUTBOX_BYTES_MAX_DEFAULT,
            requests_in_flight_max: REQUESTS_IN_FLIGHT_MAX_DEFAULT,
            deliveries_in_flight_max: DELIVERIES_IN_FLIGHT_MAX_DEFAULT,
            apply_bytes_max: APPLY_BYTES_MAX_DEFAULT,
            streams_max: STREAMS_MAX_DEFAULT,
            partitions_max: PARTITIONS_MAX_DEFAULT,
            pipelines_max: PIPELINES_MAX_DEFAULT,
            tokens_max: TOKENS_MAX_DEFAULT,
            meta_compact_every_entries: META_COMPACT_EVERY_ENTRIES_DEFAULT,
            meta_voters: META_VOTERS_DEFAULT,
            tls: None,
            cluster: None,
        }
    }
}

impl ServerConfig {
    /// This node's id: `cluster.nodeId`, or [`NODE_ID_SINGLE`] without a
    /// cluster.
    pub fn node_id(&self) -> u64 {
        self.cluster.as_ref().map_or(NODE_ID_SINGLE, |c| c.node_id)
    }

    /// The nodes of the cluster: 1 without one.
    pub fn cluster_nodes(&self) -> usize {
        self.cluster.as_ref().map_or(1, ClusterConfig::nodes)
    }

    /// The replicas of `stream`'s partitions: its `replicas`, else the
    /// cluster's default (1 unless `fsync` is `always`: a replicated
    /// publish is durable on a majority's disks, docs/replication.md
    /// section 5). The default counts the cluster's founders, which every
    /// node records alike, not its own `peers` list, which a node added
    /// later may list longer than the others: nodes that computed
    /// different defaults placed and moved the same stream differently.
    pub fn stream_replicas(&self, stream: &super::StreamSpec) -> u32 {
        match stream.replicas {
            Some(r) => r,
            None if self.fsync == FsyncPolicy::Always => {
                let founders = self.cluster.as_ref().map_or(1, |c| c.founder_ids().len());
                super::cluster::replicas_default(founders)
            }
            None => 1,
        }
    }

    /// The problem with `stream`'s `replicas` on this server, if any
    /// (the Stream's name and `spec.replicas` in the error).
    pub fn check_stream_replicas(&self, stream: &super::StreamSpec) -> Result<(), ConfigError> {
        let Some(replicas) = stream.replicas else {
            return Ok(());
        };
        let fsync_always = self.fsync == FsyncPolicy::Always;
        // The nodes now (the registry, applied alike on every node), not
        // this node's `peers` list.
        let nodes = self.cluster.as_ref().map_or(1, |c| c.current_peers().len());
        match super::cluster::replicas_error(replicas, nodes, fsync_always) {
            Some(e) => Err(e.in_resource(ResourceKind::Stream, Some(&stream.name))),
            None => Ok(()),
        }
    }

    /// The port shard `shard_id` listens on, when `shardPorts` is on.
    pub fn shard_port(&self, shard_id: u16) -> Option<u16> {
        if self.shard_ports {
            hadron_wire::shard_port(self.listen.port(), shard_id)
        } else {
            None
        }
    }
}

/// What a set of resources costs, for [`ServerConfig::check_resource_counts`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResourceCounts {
    pub streams: u64,
    /// Partitions of all streams.
    pub partitions: u64,
    pub pipelines: u64,
    /// Per pipeline, the partitions of its source stream.
    pub pipeline_runs: u64,
    pub tokens: u64,
}

/// `fsync:` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum FsyncMode {
    Always,
    Interval,
    Never,
}

/// The settings document as written: everything optional.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct ServerConfigDoc {
    api_version: Option<String>,
    /// Checked by the caller, which dispatches on it.
    #[expect(dead_code, reason = "present so that `kind: ServerConfig` is accepted")]
    kind: Option<String>,
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    metrics_listen: Option<SocketAddr>,
    shards: Option<u16>,
    shard_ports: Option<bool>,
    fsync: Option<FsyncMode>,
    fsync_interval_ms: Option<u64>,
    segment_bytes: Option<u64>,
    segment_preallocate_bytes: Option<u64>,
    io_memory_bytes: Option<usize>,
    frame_bytes_max: Option<usize>,
    dedup_window_ms: Option<u64>,
    dedup_keys_max: Option<u64>,
    groups_max: Option<u32>,
    ack_ids_max: Option<u32>,
    subscriptions_per_connection_max: Option<u32>,
    retention: Option<RetentionSpec>,
    token: Option<Token>,
    insecure_no_token: Option<bool>,
    shard_start_timeout_ms: Option<u64>,
    connections_max: Option<u32>,
    handshake_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    drain_timeout_ms: Option<u64>,
    handshake_frame_bytes_max: Option<usize>,
    outbox_bytes_max: Option<usize>,
    requests_in_flight_max: Option<u32>,
    deliveries_in_flight_max: Option<u32>,
    apply_bytes_max: Option<usize>,
    streams_max: Option<u32>,
    partitions_max: Option<u32>,
    pipelines_max: Option<u32>,
    tokens_max: Option<u32>,
    meta_compact_every_entries: Option<u64>,
    meta_voters: Option<u32>,
    tls: Option<TlsFiles>,
    cluster: Option<ClusterConfig>,
}

impl ServerConfigDoc {
    /// Fills in defaults and validates.
    pub(super) fn resolve(self) -> Result<ServerConfig, ConfigError> {
        let context = |e: ConfigError| e.in_resource(ResourceKind::ServerConfig, None);
        if let Some(version) = &self.api_version
            && version != API_VERSION
        {
            return Err(context(ConfigError::new(
                "apiVersion",
                Problem::UnsupportedApiVersion {
                    found: Some(version.clone()),
                },
            )));
        }
        let fsync = match (self.fsync, self.fsync_interval_ms) {
            (None | Some(FsyncMode::Always), None) => FsyncPolicy::Always,
            (Some(FsyncMode::Never), None) => FsyncPolicy::Never,
            (Some(FsyncMode::Interval), interval) => FsyncPolicy::Interval {
                interval_ms: interval.unwrap_or(FSYNC_INTERVAL_MS_DEFAULT),
            },
            (_, Some(_)) => {
                return Err(context(ConfigError::new(
                    "fsyncIntervalMs",
                    Problem::Invalid {
                        reason:
                            "only used with `fsync: interval`; remove it or set `fsync: interval`"
                                .into(),
                    },
                )));
            }
        };
        let defaults = ServerConfig::default();
        let segment_bytes = self.segment_bytes.unwrap_or(defaults.segment_bytes);
        let config = ServerConfig {
            data_dir: self.data_dir.unwrap_or(defaults.data_dir),
            listen: self.listen.unwrap_or(defaults.listen),
            metrics_listen: self.metrics_listen,
            shards: self.shards.unwrap_or(defaults.shards),
            shard_ports: self.shard_ports.unwrap_or(defaults.shard_ports),
            fsync,
            segment_bytes,
            // Small segments take a smaller step by default, not an error.
            segment_preallocate_bytes: self
                .segment_preallocate_bytes
                .unwrap_or(defaults.segment_preallocate_bytes.min(segment_bytes)),
            io_memory_bytes: self.io_memory_bytes.unwrap_or(defaults.io_memory_bytes),
            frame_bytes_max: self.frame_bytes_max.unwrap_or(defaults.frame_bytes_max),
            dedup_window_ms: self.dedup_window_ms.unwrap_or(defaults.dedup_window_ms),
            dedup_keys_max: self.dedup_keys_max.unwrap_or(defaults.dedup_keys_max),
            groups_max: self.groups_max.unwrap_or(defaults.groups_max),
            ack_ids_max: self.ack_ids_max.unwrap_or(defaults.ack_ids_max),
            subscriptions_per_connection_max: self
                .subscriptions_per_connection_max
                .unwrap_or(defaults.subscriptions_per_connection_max),
            retention: self.retention.unwrap_or(defaults.retention),
            token: self.token,
            insecure_no_token: self.insecure_no_token.unwrap_or(defaults.insecure_no_token),
            shard_start_timeout_ms: self
                .shard_start_timeout_ms
                .unwrap_or(defaults.shard_start_timeout_ms),
            connections_max: self.connections_max.unwrap_or(defaults.connections_max),
            handshake_timeout_ms: self
                .handshake_timeout_ms
                .unwrap_or(defaults.handshake_timeout_ms),
            idle_timeout_ms: self.idle_timeout_ms.unwrap_or(defaults.idle_timeout_ms),
            drain_timeout_ms: self.drain_timeout_ms.unwrap_or(defaults.drain_timeout_ms),
            handshake_frame_bytes_max: self
                .handshake_frame_bytes_max
                .unwrap_or(defaults.handshake_frame_bytes_max),
            outbox_bytes_max: self.outbox_bytes_max.unwrap_or(defaults.outbox_bytes_max),
            requests_in_flight_max: self
                .requests_in_flight_max
                .unwrap_or(defaults.requests_in_flight_max),
            deliveries_in_flight_max: self
                .deliveries_in_flight_max
                .unwrap_or(defaults.deliveries_in_flight_max),
            apply_bytes_max: self.apply_bytes_max.unwrap_or(defaults.apply_bytes_max),
            streams_max: self.streams_max.unwrap_or(defaults.streams_max),
            partitions_max: self.partitions_max.unwrap_or(defaults.partitions_max),
            pipelines_max: self.pipelines_max.unwrap_or(defaults.pipelines_max),
            tokens_max: self.tokens_max.unwrap_or(defaults.tokens_max),
            meta_compact_every_entries: self
                .meta_compact_every_entries
                .unwrap_or(defaults.meta_compact_every_entries),
            meta_voters: self.meta_voters.unwrap_or(defaults.meta_voters),
            tls: self.tls,
            cluster: self.cluster,
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests;
