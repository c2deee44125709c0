//! What a shard tells the Prometheus endpoint (`crate::metrics`), and the
//! connection counters it keeps for it.
//!
//! The endpoint runs on a thread of its own. Per scrape it sends every
//! shard a [`SnapshotRequest`] over a bounded channel; the shard's
//! [`answer_snapshots`] task answers with a [`ShardMetrics`]: what `status`
//! reports of each partition and pipeline run, plus the counters below.
//! Nothing on the request path is shared between threads, so publishing
//! pays no atomic or lock for the metrics: partitions and groups keep their
//! counters in `Cell`s of their own, and the connection counters (frames
//! and bytes in and out, refusals by error code) are `Cell`s in a
//! thread-local, one per shard thread. Building a snapshot walks the
//! shard's partitions, groups and runs once (what `status` does), on the
//! shard, between two of its tasks.
//!
//! In the shard simulation several shards share one thread, and so these
//! thread-local counters; nothing there reads them.

use futures::StreamExt;
use futures::channel::mpsc;
use hadron_engine::CommitLatencies;

use super::partition::PublishedTotals;
use super::*;

/// How the endpoint asks a shard for its figures: the shard sends them on
/// this channel (of capacity 1: one answer per request, so the send never
/// blocks the shard).
pub type SnapshotRequest = std::sync::mpsc::SyncSender<ShardMetrics>;

/// The shard's end of its snapshot channel.
pub type SnapshotRequests = mpsc::Receiver<SnapshotRequest>;

/// One shard's figures at one moment.
#[derive(Debug, Clone)]
pub struct ShardMetrics {
    /// Its partitions.
    pub partitions: Vec<PartitionMetrics>,
    /// Its pipeline runs, by pipeline name.
    pub runs: Vec<(String, RunStatus)>,
    /// Its connections' traffic since the server started.
    pub conns: ConnTotals,
    /// Deliveries held back from connections whose outbox was full.
    pub dropped_deliveries: u64,
    /// Its Raft groups, on a node of a cluster (`replica_metrics`).
    pub replication: Option<super::replica_metrics::ReplicationMetrics>,
}

/// One partition's figures: its status, and the counters status does not
/// show.
#[derive(Debug, Clone)]
pub struct PartitionMetrics {
    pub status: PartitionStatus,
    pub published: PublishedTotals,
    pub latencies: CommitLatencies,
}

/// What a shard's client connections did since the server started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnTotals {
    /// Whole frames read from clients, and every byte read.
    pub frames_in: u64,
    pub bytes_in: u64,
    /// Frames queued to clients (answers, errors and pushed deliveries),
    /// and their bytes.
    pub frames_out: u64,
    pub bytes_out: u64,
    /// Error frames sent, by wire error code (ascending).
    pub refused: Vec<(u16, u64)>,
}

#[derive(Debug)]
struct Counters {
    frames_in: Cell<u64>,
    bytes_in: Cell<u64>,
    frames_out: Cell<u64>,
    bytes_out: Cell<u64>,
    refused: RefCell<BTreeMap<u16, u64>>,
}

thread_local! {
    /// This shard thread's connection counters.
    static COUNTERS: Counters = const {
        Counters {
            frames_in: Cell::new(0),
            bytes_in: Cell::new(0),
            frames_out: Cell::new(0),
            bytes_out: Cell::new(0),
            refused: RefCell::new(BTreeMap::new()),
        }
    };
}

fn add(cell: &Cell<u64>, n: u64) {
    cell.set(cell.get().wrapping_add(n));
}

/// A whole frame was read from a client.
pub fn frame_received() {
    // `try_with` fails only while the thread is torn down: nothing to
    // count then.
    let _ = COUNTERS.try_with(|c| add(&c.frames_in, 1));
}

/// `bytes` were read from a client.
pub fn bytes_received(bytes: usize) {
    let _ = COUNTERS.try_with(|c| add(&c.bytes_in, bytes as u64));
}

/// A frame of `bytes` was queued to a client.
pub fn frame_sent(bytes: usize) {
    let _ = COUNTERS.try_with(|c| {
        add(&c.frames_out, 1);
        add(&c.bytes_out, bytes as u64);
    });
}

/// An error frame with `code` was queued to a client.
pub fn refused(code: hadron_wire::ErrorCode) {
    let _ = COUNTERS.try_with(|c| *c.refused.borrow_mut().entry(code.as_u16()).or_default() += 1);
}

/// This thread's connection counters.
pub fn conn_totals() -> ConnTotals {
    COUNTERS
        .try_with(|c| ConnTotals {
            frames_in: c.frames_in.get(),
            bytes_in: c.bytes_in.get(),
            frames_out: c.frames_out.get(),
            bytes_out: c.bytes_out.get(),
            refused: c.refused.borrow().iter().map(|(&k, &v)| (k, v)).collect(),
        })
        .unwrap_or_default()
}

impl<S: Storage + Clone + 'static, R: Runtime> Shard<S, R> {
    /// This shard's figures now.
    pub fn metrics(&self) -> ShardMetrics {
        let now = self.runtime.now_ms();
        let partitions = self
            .partitions
            .borrow()
            .values()
            .map(|p| PartitionMetrics {
                status: self.partition_status(p, now),
                published: p.published(),
                latencies: p.log.commit_latencies(),
            })
            .collect();
        ShardMetrics {
            partitions,
            runs: self.run_status(),
            conns: conn_totals(),
            dropped_deliveries: self.dropped_deliveries.get(),
            replication: self.replication_metrics(),
        }
    }
}

/// Answers every snapshot request with the shard's figures, until the
/// endpoint's side of the channel is gone.
pub async fn answer_snapshots(shard: Rc<Shard>, mut requests: SnapshotRequests) {
    while let Some(reply) = requests.next().await {
        // The endpoint may have given up waiting: nothing to do then.
        let _ = reply.try_send(shard.metrics());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hadron_wire::ErrorCode;

    /// The counters are this thread's: a fresh thread starts at zero, and
    /// what it counts comes back, refusals grouped by code.
    #[test]
    fn connection_counters_add_up_per_thread() {
        let totals = std::thread::spawn(|| {
            frame_received();
            frame_received();
            bytes_received(100);
            frame_sent(40);
            refused(ErrorCode::UnknownStream);
            refused(ErrorCode::FrameTooLarge);
            refused(ErrorCode::UnknownStream);
            conn_totals()
        })
        .join()
        .unwrap();
        assert_eq!(
            totals,
            ConnTotals {
                frames_in: 2,
                bytes_in: 100,
                frames_out: 1,
                bytes_out: 40,
                refused: vec![(1, 1), (4, 2)],
            }
        );
    }
}
