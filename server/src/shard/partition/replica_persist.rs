//! A replica's persist rounds with the durable watermark pipelined
//! (docs/replication.md section 10, "As built"): every entry a replica
//! acknowledges (a follower's append response, the leader counting
//! itself) lies below `log.meta`'s durable watermark first
//! (`replica_repair.rs`), yet a round whose hard state did not change
//! does not wait for that second `log.meta` write inline:
//!
//! ```text
//!  round N:    sync entries N ─┬─ hard state changed: log.meta (+watermark)
//!                              │    -> on_persisted(N)
//!                              └─ unchanged: watermark write W(N) starts,
//!                                   held in flight; the turn goes on
//!  round N+1:  sync entries N+1 ‖ W(N)  (both awaited) -> on_persisted(N)
//!              then as round N (a hard state written covers N+1 and N)
//!  idle:       the drive loop waits on W(N) too -> on_persisted(N)
//! ```
//!
//! So the watermark write of one round overlaps the next round's segment
//! sync, and `on_persisted(n)` (raft's `on_persist_ready`, which releases
//! the held acknowledgments) still comes only once both the entries of
//! round `n` and a watermark over them are durable. `log.meta` writes stay
//! one at a time (the engine's `update_meta`); at most one watermark write
//! is in flight, and it records the newest durable position when it
//! begins. A staged cut or restart lowers the watermark, so the write in
//! flight is finished before such a round starts.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use hadron_engine::storage::Storage;

use super::replica::Replica;
use crate::replication::StoreError;
use crate::shard::clock::Clock;

/// A watermark write in flight for the rounds up to `number`.
pub(super) struct Mark {
    number: u64,
    write: Option<Pin<Box<dyn Future<Output = Result<(), StoreError>>>>>,
    done: Option<Result<(), StoreError>>,
}

impl<S: Storage, C: Clock> Replica<S, C> {
    /// Makes every round due durable, reporting each (`on_persisted`) once
    /// its entries and a watermark over them are; leaves at most one
    /// watermark write in flight. Returns whether the high watermark moved.
    pub(super) async fn persist_due(&self) -> Result<bool, String> {
        let mut moved = self.report_mark()?;
        loop {
            let due = self.group.borrow().persist_number();
            let marking = self.mark.borrow().as_ref().map(|m| m.number);
            let Some(number) = due.filter(|&n| marking.is_none_or(|m| n > m)) else {
                return Ok(moved);
            };
            if self.store.cut_staged() {
                // A cut lowers the watermark: not alongside a raise.
                self.mark_written().await;
                moved |= self.report_mark()?;
            }
            let in_flight = self.mark.borrow().is_some();
            let wrote_state = match in_flight {
                true => {
                    let (entries, ()) =
                        futures::future::join(self.store.persist_entries(), self.mark_written())
                            .await;
                    entries
                }
                false => self.store.persist_entries().await,
            }
            .map_err(|e| e.to_string())?;
            moved |= self.report_mark()?;
            if wrote_state {
                moved |= self.report(number)?;
            } else {
                let store = self.store.clone();
                *self.mark.borrow_mut() = Some(Mark {
                    number,
                    write: Some(Box::pin(async move { store.persist_watermark().await })),
                    done: None,
                });
                // Often done at once (nothing new to record).
                if let Poll::Ready(()) = futures::poll!(std::pin::pin!(self.mark_written())) {
                    moved |= self.report_mark()?;
                }
            }
        }
    }

    /// Reports the round a finished watermark write covers.
    fn report_mark(&self) -> Result<bool, String> {
        let finished = {
            let mut mark = self.mark.borrow_mut();
            match mark.as_ref().is_some_and(|m| m.done.is_some()) {
                true => mark.take(),
                false => None,
            }
        };
        let Some(Mark { number, done, .. }) = finished else {
            return Ok(false);
        };
        done.unwrap_or(Ok(())).map_err(|e| e.to_string())?;
        self.report(number)
    }

    /// Rounds up to `number` are durable, watermark included.
    fn report(&self, number: u64) -> Result<bool, String> {
        self.group
            .borrow_mut()
            .on_persisted(number)
            .map_err(|e| e.to_string())?;
        self.apply_committed()
    }

    /// Polls the watermark write in flight: ready once it finished (its
    /// result kept for [`Replica::report_mark`]) or when there is none.
    fn poll_mark(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut mark = self.mark.borrow_mut();
        let Some(m) = mark.as_mut() else {
            return Poll::Ready(());
        };
        let Some(write) = m.write.as_mut() else {
            return Poll::Ready(());
        };
        match write.as_mut().poll(cx) {
            Poll::Ready(result) => {
                m.write = None;
                m.done = Some(result);
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// Waits for the watermark write in flight, if any, to finish.
    pub(super) async fn mark_written(&self) {
        std::future::poll_fn(|cx| self.poll_mark(cx)).await;
    }

    /// Waits for a watermark write in flight to finish; never when there
    /// is none (the drive loop's idle wait).
    pub(super) async fn mark_finishing(&self) {
        if self.mark.borrow().is_none() {
            return std::future::pending().await;
        }
        self.mark_written().await;
    }
}
