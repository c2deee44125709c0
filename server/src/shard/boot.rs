//! Starting the shards: one pinned glommio executor each, joined in a
//! channel mesh; every shard reports ready within `shardStartTimeoutMs` or
//! the server stops (no half-alive server).

use super::*;

/// What a shard tells the thread that started it.
#[derive(Debug)]
pub(super) enum ShardEvent {
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
    let drained = Arc::new(AtomicUsize::new(0));
    let handles = LocalExecutorPoolBuilder::new(PoolPlacement::Custom(sets))
        .name("hadron-shard")
        .io_memory(settings.config.io_memory_bytes)
        .on_all_shards(move || {
            let settings = settings.clone();
            let mesh = mesh.clone();
            let stop = shard_stop.clone();
            let events = events_tx.clone();
            let drained = drained.clone();
            async move {
                let ended = shard_main(settings, mesh, stop, &drained, &events).await;
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

pub(super) async fn shard_main(
    settings: Arc<Settings>,
    mesh: MeshBuilder<MeshMsg, Full>,
    stop: Arc<AtomicBool>,
    drained: &AtomicUsize,
    events: &std::sync::mpsc::Sender<ShardEvent>,
) -> Result<(), String> {
    let (senders, mut receivers) = mesh
        .join()
        .await
        .map_err(|_| "cannot join the shard mesh".to_string())?;
    let id = senders.peer_id() as u16;
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
    let resources = Box::new(FileResources(settings.config.data_dir.clone()));
    let shard = Rc::new(Shard::new(
        id,
        settings.clone(),
        storage,
        SystemClock,
        Box::new(senders),
        resources,
    ));
    if settings.config.cluster_nodes() > 1 {
        shard.set_peer_links(conn::peer::links(&shard)?);
    }
    shard.install(settings.topology.clone()).await?;
    shard.open_meta().await?;
    for (peer, rx) in receivers.streams() {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            while let Some(msg) = rx.recv().await {
                shard.clone().on_mesh(peer as u16, msg);
            }
        })
        .detach();
    }
    let listen = spawn_listeners(&shard)?;
    if let Some(peers) = conn::peer::listen(&shard)? {
        tracing::info!(shard = id, "taking peer connections on {peers}");
    }
    if let Some(hub) = &settings.metrics {
        glommio::spawn_local(metrics::answer_snapshots(shard.clone(), hub.register(id))).detach();
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
    drain(&shard, drained).await;
    shard.flush_all().await;
    tracing::info!(shard = id, "shard stopped");
    Ok(())
}

/// The drain on stop: the shard stops reading and lets its connections
/// answer what they read and close, then waits for every other shard to
/// have drained too, serving their forwarded requests meanwhile (a shard
/// that left early would leave them unanswered), all within
/// `drainTimeoutMs`.
async fn drain(shard: &Rc<Shard>, drained: &AtomicUsize) {
    let config = &shard.settings.config;
    let started = std::time::Instant::now();
    let timeout = Duration::from_millis(config.drain_timeout_ms);
    shard.begin_stop();
    let open = shard.drain_connections(timeout).await;
    if open > 0 {
        tracing::warn!(
            shard = shard.id,
            "{open} connections still open after drainTimeoutMs ({} ms); closing them",
            config.drain_timeout_ms
        );
    }
    drained.fetch_add(1, Ordering::AcqRel);
    while drained.load(Ordering::Acquire) < usize::from(config.shards) {
        if started.elapsed() >= timeout {
            tracing::warn!(
                shard = shard.id,
                "other shards still draining after drainTimeoutMs ({} ms)",
                config.drain_timeout_ms
            );
            return;
        }
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
}

/// Binds the shared listen address and, with `shardPorts`, this shard's
/// own port, and accepts connections on each until the process ends
/// (refusing them once the shard is stopping). Returns the listen address.
fn spawn_listeners(shard: &Rc<Shard>) -> Result<SocketAddr, String> {
    let (id, listen) = (shard.id, shard.settings.config.listen);
    let mut addrs = vec![listen];
    if shard.settings.config.shard_ports {
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
    Ok(listen)
}
