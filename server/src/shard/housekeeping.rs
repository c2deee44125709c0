//! Periodic work of a shard (group offset commits, due writes, checkpoints,
//! retention) and the final flush on shutdown.

use super::*;

/// Runs retention on a partition's log, logging what it deleted.
pub(super) async fn retain<S: Storage, C: Clock>(p: &Partition<S, C>) {
    match p.log.apply_retention(p.clock().now_ms()).await {
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

impl<S: Storage + Clone + 'static, R: Runtime> Shard<S, R> {
    pub(super) fn spawn_housekeeping(self: Rc<Self>) {
        let shard = self.clone();
        self.runtime.spawn(async move {
            loop {
                shard.runtime.sleep(COMMIT_EVERY).await;
                if shard.stopping.get() {
                    return;
                }
                let parts: Vec<Rc<Partition<S, R>>> =
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
                    // A single node's log that found its disk full holds
                    // its staged batches until a round gets past the
                    // allocation: try one, so that they are written once
                    // space is freed even if nobody appends (a replicated
                    // log's replica retries its own persist).
                    if p.replica.is_none() && p.log.disk_full().is_some() {
                        let _ = p.log.sync().await;
                    }
                }
            }
        });
        let runtime = self.runtime.clone();
        runtime.spawn(async move {
            loop {
                self.runtime.sleep(RETENTION_EVERY).await;
                if self.stopping.get() {
                    return;
                }
                let parts: Vec<Rc<Partition<S, R>>> =
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
        });
    }

    /// Makes every log durable and commits group offsets (on shutdown).
    pub(super) async fn flush_all(&self) {
        let runs: Vec<Rc<PipelineRun<S, R>>> = self.runs.borrow().values().cloned().collect();
        for run in runs {
            if let Err(e) = run.sync().await {
                tracing::warn!("final pipeline sync failed: {e}");
            }
        }
        let parts: Vec<Rc<Partition<S, R>>> = self.partitions.borrow().values().cloned().collect();
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
