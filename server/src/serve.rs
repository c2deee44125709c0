//! Starting the server: the configuration (file, flags, `HADRON_TOKEN`)
//! is resolved and validated, the data directory is created and locked,
//! the ports are checked, the resources are loaded (or seeded from the
//! config file), the process limits are raised, and the shards run until
//! SIGTERM or SIGINT.
//!
//! Invariants: one server per data directory (an exclusive `flock` on
//! `<data dir>/LOCK`, held until the process exits; `hadron repair` takes
//! the same lock), and no second server accepting on the same port
//! ([`check_port_free`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::config::cluster::{ClusterConfig, PeerSpec};
use crate::config::{self, Resource, ServerConfig, StreamSpec};
use crate::shard::{self, Settings, Topology};

/// How long a consumer has to ack a delivery unless `--ack-timeout-ms`
/// says otherwise.
pub const ACK_TIMEOUT_MS_DEFAULT: u64 = 30_000;

/// What `hadron server` was asked for on its command line; each `Some`
/// overrides the config file's setting.
#[derive(Debug, Clone)]
pub struct ServerArgs {
    /// The config file (multi-document YAML: settings, then resources).
    pub config: Option<PathBuf>,
    /// The data directory (default `./hadron-data`).
    pub data_dir: Option<PathBuf>,
    /// The client address (default `127.0.0.1:7000`).
    pub listen: Option<std::net::SocketAddr>,
    /// Where to serve Prometheus metrics (default: nowhere).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The number of shards (default: one per CPU).
    pub shards: Option<u16>,
    /// Milliseconds a consumer has to ack a delivery before it is
    /// redelivered (at least 1).
    pub ack_timeout_ms: u64,
    /// Serve clients beyond loopback with no token.
    pub insecure_no_token: bool,
    /// `cluster.nodeId` (`--node-id`).
    pub node_id: Option<u64>,
    /// `cluster.peers` (`--peer ID=HOST:PORT`, repeated); replaces the
    /// file's list when given.
    pub peers: Vec<PeerSpec>,
    /// `cluster.founders` (`--founders 1,2,3`); replaces the file's when
    /// given.
    pub founders: Vec<u64>,
}

impl Default for ServerArgs {
    fn default() -> Self {
        ServerArgs {
            config: None,
            data_dir: None,
            listen: None,
            metrics_listen: None,
            shards: None,
            ack_timeout_ms: ACK_TIMEOUT_MS_DEFAULT,
            insecure_no_token: false,
            node_id: None,
            peers: Vec::new(),
            founders: Vec::new(),
        }
    }
}

/// Runs the server until SIGTERM or SIGINT; an error says what kept it
/// from starting, or which shard failed.
pub fn serve(args: ServerArgs) -> Result<(), String> {
    let (mut config, declared) = resolve_config(&args)?;
    // Checked before anything is bound or created: a bad file is a
    // configuration error that names it.
    let tls = config
        .tls
        .as_ref()
        .map(config::tls::server_config)
        .transpose()
        .map_err(|e| format!("invalid configuration: {e}"))?;
    let peer_tls = peer_tls(&config).map_err(|e| format!("invalid configuration: {e}"))?;
    // Held until the process exits: two servers on one data dir would
    // corrupt it.
    let _lock = claim_data_dir(&mut config)?;
    config::cluster::check_members(&config.data_dir, config.cluster.as_mut())
        .map_err(|e| format!("invalid configuration: {e}"))?;
    let topology = load_topology(&config, declared)?;

    raise_memlock(3 * config.io_memory_bytes as u64 * u64::from(config.shards) + (16 << 20));
    raise_nofile(u64::from(config.connections_max) + FILES_HEADROOM);
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone())
            .map_err(|e| format!("cannot install the signal handler: {e}"))?;
    }
    if config.insecure_no_token && config.token.is_none() && !config.listen.ip().is_loopback() {
        tracing::warn!(
            "listening on {} with no token (insecureNoToken): anyone who reaches this port may publish, read and apply",
            config.listen
        );
    }
    tracing::info!(
        "hadron {} starting: {} shards, listening on {}{}, data in {}",
        env!("CARGO_PKG_VERSION"),
        config.shards,
        config.listen,
        if tls.is_some() { " (TLS)" } else { "" },
        config.data_dir.display()
    );
    let open_connections = Arc::default();
    let metrics = start_metrics(&config, &open_connections)?;
    let placements = crate::config::placement::Overrides::load(&config.data_dir)?;
    let settings = Settings {
        config,
        ack_timeout: Duration::from_millis(args.ack_timeout_ms.max(1)),
        topology,
        open_connections,
        metrics,
        tls,
        peer_tls,
        leaders: Arc::default(),
        placements: Arc::new(placements),
    };
    shard::run(settings, stop)?;
    tracing::info!("hadron stopped");
    Ok(())
}

/// Starts the metrics endpoint when `metricsListen` asks for one: bound
/// now, so that a taken address fails the start.
fn start_metrics(
    config: &ServerConfig,
    open_connections: &Arc<std::sync::atomic::AtomicUsize>,
) -> Result<Option<Arc<crate::metrics::Hub>>, String> {
    let Some(addr) = config.metrics_listen else {
        return Ok(None);
    };
    let hub = Arc::new(crate::metrics::Hub::default());
    let sources = crate::metrics::Sources {
        hub: hub.clone(),
        open_connections: open_connections.clone(),
    };
    let bound = crate::metrics::spawn(addr, sources)?;
    tracing::info!("serving metrics on http://{bound}/metrics");
    Ok(Some(hub))
}

/// The config file's settings with the command line's and `HADRON_TOKEN`
/// over them, validated, and the resources the file declares.
fn resolve_config(args: &ServerArgs) -> Result<(ServerConfig, Vec<Resource>), String> {
    let ServerArgs {
        config: config_file,
        data_dir,
        listen,
        metrics_listen,
        shards,
        ack_timeout_ms: _,
        insecure_no_token,
        node_id,
        peers,
        founders,
    } = args;
    let (mut config, declared) = match config_file {
        Some(path) => {
            let yaml = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            config::parse_config_file(&yaml).map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => (ServerConfig::default(), Vec::new()),
    };
    if let Some(d) = data_dir {
        config.data_dir = d.clone();
    }
    if let Some(l) = listen {
        config.listen = *l;
    }
    if let Some(s) = shards {
        config.shards = *s;
    }
    if let Some(m) = metrics_listen {
        config.metrics_listen = Some(*m);
    }
    config.insecure_no_token |= *insecure_no_token;
    if node_id.is_some() || !peers.is_empty() || !founders.is_empty() {
        let file = config.cluster.take();
        config.cluster = Some(ClusterConfig {
            node_id: node_id
                .or(file.as_ref().map(|c| c.node_id))
                .ok_or("--peer needs --node-id (or cluster.nodeId in the config file)")?,
            peers: if peers.is_empty() {
                file.as_ref().map(|c| c.peers.clone()).unwrap_or_default()
            } else {
                peers.clone()
            },
            secret_file: file.as_ref().and_then(|c| c.secret_file.clone()),
            founders: if founders.is_empty() {
                file.as_ref().and_then(|c| c.founders.clone())
            } else {
                Some(founders.clone())
            },
            peer_ca: file.and_then(|c| c.peer_ca),
            secret: Default::default(),
            registry: Default::default(),
        });
    }
    if config.token.is_none()
        && let Ok(secret) = std::env::var(config::server::TOKEN_ENV)
    {
        config.token = Some(config::server::Token::new(secret));
    }
    config
        .validate()
        .and_then(|()| config.check_exposure())
        .and_then(|()| config.check_cluster_listen())
        .map_err(|e| format!("invalid configuration: {e}"))?;
    if let Some(cluster) = &mut config.cluster {
        cluster
            .load_secret()
            .map_err(|e| format!("invalid configuration: {e}"))?;
    }
    Ok((config, declared))
}

/// Creates the data directory, makes `config.data_dir` absolute, locks it
/// and checks that the ports are free. The lock is held as long as the
/// returned file is open.
fn claim_data_dir(config: &mut ServerConfig) -> Result<std::fs::File, String> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| format!("cannot create {}: {e}", config.data_dir.display()))?;
    // Absolute from here on: paths in logs and errors say where, and the
    // default `./hadron-data` must not depend on glommio resolving
    // relative paths (its directory open does not).
    config.data_dir = std::fs::canonicalize(&config.data_dir)
        .map_err(|e| format!("cannot resolve {}: {e}", config.data_dir.display()))?;
    let lock = lock_data_dir(&config.data_dir)?;
    check_port_free(config.listen)?;
    if config.shard_ports {
        for shard in 0..config.shards {
            if let Some(port) = config.listen.port().checked_add(1 + shard) {
                check_port_free(std::net::SocketAddr::new(config.listen.ip(), port))?;
            }
        }
    }
    Ok(lock)
}

/// The resources this server starts with (those applied to the data dir,
/// else the config file's), held to the resource limits and persisted.
fn load_topology(config: &ServerConfig, declared: Vec<Resource>) -> Result<Topology, String> {
    // The resources applied to this data dir win: the config file's
    // resources (and the default `events` stream) only seed a new data dir.
    // Re-declaring them at every start reverted applied changes (retention)
    // and refused to start after an applied partition count.
    let persisted = shard::load_resources(&config.data_dir)?;
    let seeding = persisted.is_none();
    let resources = match persisted {
        Some(applied) => {
            let differ: Vec<String> = declared
                .iter()
                .filter(|r| !applied.contains(r))
                .map(|r| format!("{}/{}", r.kind().as_str().to_lowercase(), r.name()))
                .collect();
            if !differ.is_empty() {
                tracing::info!(
                    "the config file's resources ({}) differ from those applied to {}; the applied ones are kept (the config file's only seed a new data dir; change resources with `hadron apply`)",
                    differ.join(", "),
                    config.data_dir.display()
                );
            }
            applied
        }
        None => declared,
    };
    let (topology, within_limits) = topology_of(config, resources)?;
    // The config file is held to the same limits as an apply; what a data
    // dir already holds is kept even if a limit was lowered since.
    if let Err(message) = within_limits {
        if seeding {
            return Err(format!("the config file's resources: {message}"));
        }
        tracing::warn!("the resources applied to this data dir exceed a limit: {message}");
    }
    // Written only when it changes, so a start that changes nothing needs
    // no disk space.
    shard::persist_resources(&config.data_dir, &topology.resources())?;
    Ok(topology)
}

/// The topology of `resources` (with the default `events` stream when
/// they have no stream), and whether it is within the resource limits.
fn topology_of(
    config: &ServerConfig,
    resources: Vec<Resource>,
) -> Result<(Topology, Result<(), String>), String> {
    let (mut streams, pipelines): (Vec<_>, Vec<_>) = resources
        .into_iter()
        .partition(|r| matches!(r, Resource::Stream(_)));
    if streams.is_empty() {
        // A server with no stream gets `events` (a pipeline may read it).
        streams.push(Resource::Stream(StreamSpec::with_defaults(
            config::stream::DEFAULT_STREAM_NAME,
        )));
    }
    for stream in &streams {
        if let Resource::Stream(spec) = stream {
            config
                .check_stream_replicas(spec)
                .map_err(|e| e.to_string())?;
        }
    }
    let mut topology = Topology::default();
    for resource in streams.into_iter().chain(pipelines) {
        topology.put(resource).map_err(|e| e.to_string())?;
    }
    let within_limits = config
        .check_resource_counts(Default::default(), topology.counts())
        .map_err(|limit| limit.to_string());
    Ok((topology, within_limits))
}

/// How a cluster node with `tls:` dials its peers: TLS, trusting
/// `cluster.peerCa` (else `tls.clientCa`), presenting its own certificate.
/// `None` without `tls:` or without a cluster of several nodes.
fn peer_tls(config: &ServerConfig) -> Result<Option<Arc<rustls::ClientConfig>>, String> {
    let (Some(files), Some(cluster)) = (&config.tls, &config.cluster) else {
        return Ok(None);
    };
    if cluster.nodes() < 2 {
        return Ok(None);
    }
    let (ca, setting) = match (&cluster.peer_ca, &files.client_ca) {
        (Some(ca), _) => (ca, "cluster.peerCa"),
        (None, Some(ca)) => (ca, "tls.clientCa"),
        (None, None) => {
            return Err(
                "cluster.peerCa: a cluster with tls: speaks TLS between its nodes too, and needs the CA that signed the nodes' certificates (cluster.peerCa, or tls.clientCa)".into(),
            );
        }
    };
    config::tls::peer_client_config(files, ca, setting).map(Some)
}

/// `hadron server --check-config`: resolves and validates the settings
/// (the config file, the command line, `HADRON_TOKEN`), loads the TLS
/// files when `tls:` names them, and checks the resources the file
/// declares, touching no data dir and no port. Returns a summary.
pub fn check_config(args: &ServerArgs) -> Result<String, String> {
    let (config, declared) = resolve_config(args)?;
    if let Some(files) = &config.tls {
        config::tls::server_config(files)?;
    }
    peer_tls(&config)?;
    let (topology, within_limits) = topology_of(&config, declared)?;
    within_limits.map_err(|message| format!("the config file's resources: {message}"))?;
    let counts = topology.counts();
    let cluster = match config.cluster.as_ref().filter(|c| c.nodes() > 1) {
        Some(c) => {
            let ids = |ids: Vec<u64>| {
                ids.iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let peers = ids(c.peers.iter().map(|p| p.id).collect());
            format!(
                "; node {} of a cluster of nodes {peers}, founded by {}",
                c.node_id,
                ids(c.founder_ids())
            )
        }
        None => String::new(),
    };
    Ok(format!(
        "config ok: {} shards, listening on {}, data in {}; {} streams ({} partitions), {} pipelines{cluster}",
        config.shards,
        config.listen,
        config.data_dir.display(),
        counts.streams,
        counts.partitions,
        counts.pipelines
    ))
}

/// Takes an exclusive lock on `<data dir>/LOCK`, refusing to start when
/// another process holds it.
pub(crate) fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File, String> {
    use std::os::fd::AsRawFd;
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    nix::fcntl::flock(
        file.as_raw_fd(),
        nix::fcntl::FlockArg::LockExclusiveNonblock,
    )
    .map_err(|e| {
        format!(
            "{} is in use by another hadron server ({e}); stop it or choose another --data-dir",
            dir.display()
        )
    })?;
    Ok(file)
}

/// The shards bind with SO_REUSEPORT, which would let a second server share
/// the port silently; so refuse to start when something keeps accepting
/// connections there. A server that just exited can still accept for a
/// moment (the kernel tears its io_uring rings, which hold the listening
/// socket, down asynchronously), so only one that still accepts after
/// `PORT_PROBE_FOR` counts. (A plain test bind would also trip over that,
/// and over connections still in TIME_WAIT.)
fn check_port_free(addr: std::net::SocketAddr) -> Result<(), String> {
    const PORT_PROBE_FOR: Duration = Duration::from_secs(3);
    let deadline = std::time::Instant::now() + PORT_PROBE_FOR;
    loop {
        let probe = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200));
        if probe.is_err() {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(format!(
                "cannot listen on {addr}: another server already accepts connections there"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Descriptors beyond the client connections: segment, index and meta
/// files of every log, listeners, the io_uring rings.
const FILES_HEADROOM: u64 = 4096;

/// Raises RLIMIT_NOFILE's soft limit towards `needed` descriptors (as far
/// as the hard limit allows), so that `connectionsMax`, not the process's
/// file limit, is what refuses connections.
fn raise_nofile(needed: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft >= needed {
        return;
    }
    let target = needed.min(hard);
    if setrlimit(Resource::RLIMIT_NOFILE, target, hard).is_err() || target < needed {
        tracing::warn!(
            "RLIMIT_NOFILE is {soft} (hard {hard}); connectionsMax and the logs want {needed}: \
             raise it (LimitNOFILE=, ulimit -n) or lower connectionsMax"
        );
    }
}

/// Raises RLIMIT_MEMLOCK's soft limit towards `needed` bytes, as far as the
/// hard limit allows: each shard pins 3 x io_memory. Root has CAP_IPC_LOCK
/// and needs none of this; elsewhere glommio would fall back to unregistered
/// buffers (slower) with only a log line.
fn raise_memlock(needed: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_MEMLOCK) else {
        return;
    };
    if soft >= needed || nix::unistd::Uid::effective().is_root() {
        return;
    }
    let target = needed.min(hard);
    match setrlimit(Resource::RLIMIT_MEMLOCK, target, hard) {
        Ok(()) if target >= needed => {}
        Ok(()) | Err(_) => tracing::warn!(
            "RLIMIT_MEMLOCK is {soft} bytes (hard {hard}); the shards want {needed}. \
             Run as root, or raise it (LimitMEMLOCK=infinity, ulimit -l)"
        ),
    }
}
