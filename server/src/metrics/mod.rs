//! The Prometheus endpoint (`metricsListen`, `--metrics-listen`): `GET
//! /metrics` on a listener of its own, served by threads of its own, off
//! the shards.
//!
//! Per scrape the endpoint asks every shard for a snapshot over the
//! [`Hub`] (a bounded channel per shard; each shard answers from a task of
//! its own, see `shard::metrics`), waits at most [`SCRAPE_TIMEOUT`] for all
//! of them, adds the process-wide figures (connections, RSS) and encodes
//! the lot with `prometheus-client` (`encode`). A shard that does not
//! answer in time fails the scrape (503) rather than leave its series out:
//! a series that vanishes reads as a reset, not as a missing shard.
//!
//! The HTTP side is bounded (`http`): one request per connection, a request
//! head of at most [`REQUEST_BYTES_MAX`], read and written within
//! [`REQUEST_TIMEOUT`], and at most [`CONNECTIONS_MAX`] connections served
//! at once (more are answered 503 at once).

mod encode;
mod http;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::channel::mpsc;

use crate::shard::metrics::{ShardMetrics, SnapshotRequest, SnapshotRequests};

pub use encode::{Scrape, openmetrics, openmetrics_to_text};

/// Snapshot requests a shard may have waiting: a scrape sends one to each
/// shard, and at most `CONNECTIONS_MAX` scrapes run at once.
const SNAPSHOT_REQUESTS_MAX: usize = CONNECTIONS_MAX;
/// How long a scrape waits for every shard's snapshot.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once.
pub const CONNECTIONS_MAX: usize = 8;
/// The largest request head (request line and headers) read.
pub const REQUEST_BYTES_MAX: usize = 8 << 10;
/// A connection's request must arrive, and its answer leave, within this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the shards register for snapshot requests, and where the endpoint
/// finds them. Locked only at a shard's start and once per scrape.
#[derive(Debug, Default)]
pub struct Hub {
    shards: Mutex<Vec<(u16, mpsc::Sender<SnapshotRequest>)>>,
}

impl Hub {
    /// Registers shard `shard`; it answers what arrives on the returned
    /// channel.
    pub fn register(&self, shard: u16) -> SnapshotRequests {
        let (tx, rx) = mpsc::channel(SNAPSHOT_REQUESTS_MAX);
        let mut shards = self.shards.lock().unwrap_or_else(|e| e.into_inner());
        shards.retain(|(id, _)| *id != shard);
        shards.push((shard, tx));
        shards.sort_by_key(|(id, _)| *id);
        rx
    }

    /// Every registered shard's snapshot, in shard order, or which shards
    /// did not answer within `timeout`.
    fn snapshots(&self, timeout: Duration) -> Result<Vec<ShardMetrics>, String> {
        let deadline = Instant::now() + timeout;
        let senders = self
            .shards
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if senders.is_empty() {
            return Err("no shard is serving yet".into());
        }
        let mut waiting = Vec::with_capacity(senders.len());
        for (id, mut tx) in senders {
            let (reply, answer) = std::sync::mpsc::sync_channel(1);
            match tx.try_send(reply) {
                Ok(()) => waiting.push((id, answer)),
                Err(e) if e.is_full() => {
                    return Err(format!(
                        "shard {id} has {SNAPSHOT_REQUESTS_MAX} scrapes waiting"
                    ));
                }
                Err(_) => return Err(format!("shard {id} has stopped")),
            }
        }
        let mut late = Vec::new();
        let mut all = Vec::with_capacity(waiting.len());
        for (id, answer) in waiting {
            let left = deadline.saturating_duration_since(Instant::now());
            match answer.recv_timeout(left) {
                Ok(m) => all.push(m),
                Err(_) => late.push(id.to_string()),
            }
        }
        if late.is_empty() {
            Ok(all)
        } else {
            Err(format!(
                "shard(s) {} did not answer within {} ms",
                late.join(", "),
                timeout.as_millis()
            ))
        }
    }
}

/// What the endpoint reads besides the shards' snapshots.
#[derive(Debug, Clone)]
pub struct Sources {
    pub hub: Arc<Hub>,
    /// Client connections open on all shards.
    pub open_connections: Arc<AtomicUsize>,
}

impl Sources {
    /// One scrape's figures.
    fn scrape(&self) -> Result<Scrape, String> {
        Ok(Scrape {
            shards: self.hub.snapshots(SCRAPE_TIMEOUT)?,
            connections: self.open_connections.load(Ordering::Relaxed) as u64,
            resident_bytes: resident_bytes(),
        })
    }
}

/// Binds the metrics address (failing now, not in the background, when it
/// is taken) and serves it from a thread of its own for the life of the
/// process.
pub fn spawn(addr: SocketAddr, sources: Sources) -> Result<SocketAddr, String> {
    let listener = TcpListener::bind(addr)
        .map_err(|e| format!("cannot listen for metrics on {addr} (metricsListen): {e}"))?;
    let bound = listener.local_addr().unwrap_or(addr);
    std::thread::Builder::new()
        .name("hadron-metrics".into())
        .spawn(move || http::accept_loop(listener, sources))
        .map_err(|e| format!("cannot start the metrics thread: {e}"))?;
    Ok(bound)
}

/// The process's resident set size, from `VmRSS` in /proc/self/status.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests;
