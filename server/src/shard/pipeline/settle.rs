//! Settlement of stage deliveries: acks with outputs, nacks, failed
//! attempts, and retries of failed executions.
//!
//! **Failures.** A nack or an ack timeout counts as a failed attempt: the
//! stage is held for the stage's backoff and then delivered again; after
//! `maxAttempts` the execution fails, leaves the window (so it blocks
//! nothing) and is remembered, visible in status, until `pipeline retry`.
//! A disconnect is not the handler's failure: the stage goes out again at
//! once, to another member if there is one.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use crate::shard::clock::Clock;
use hadron_engine::storage::Storage;

use hadron_engine::AppendError;
use hadron_engine::pipeline::Completion;

use super::codec::{
    KIND_FAILED, KIND_OUTPUT, KIND_RETRIED, batch_ranges, encode_named, encode_offset,
};
use super::{FailedExecution, Issued, PipelineRun, StageAckOf};
use crate::shard::error::{DeliveryKind, Error, LogName};

/// Longest error message kept per stage.
const ERROR_BYTES_MAX: usize = 1024;

pub(super) fn append_failure(name: &str, e: AppendError) -> Error {
    let log = LogName::Outputs {
        pipeline: name.to_owned(),
    };
    Error::append(log, e)
}

impl<S: Storage + Clone + 'static, C: Clock> PipelineRun<S, C> {
    /// Stage handlers succeeded: `acks` holds (delivery id, output event).
    /// Each ack is settled on its own, as if it came alone; the outputs of
    /// those taken are appended in as few batches as the log allows and
    /// are made durable together before any of their stages counts as done.
    /// Returns the acks that were not taken, and why. A duplicate or late
    /// ack of a completed stage is taken and ignored.
    pub async fn ack_many(&self, acks: &[StageAckOf], from: (u16, u64)) -> Vec<(u64, Error)> {
        if let Err(e) = self.check_active() {
            return acks.iter().map(|(id, _)| (*id, e.clone())).collect();
        }
        let mut unsettled = Vec::new();
        // (index into `acks`, root, stage) of the acks to make durable.
        let mut taken: Vec<(usize, u64, u8)> = Vec::with_capacity(acks.len());
        // Acks of a stage taken earlier in this frame: answered as that one is.
        let mut mirrors: Vec<(u64, (u64, u8))> = Vec::new();
        for (i, (delivery_id, output)) in acks.iter().enumerate() {
            let same_frame = self
                .state
                .borrow()
                .issued
                .get(delivery_id)
                .copied()
                .filter(|&key| taken.iter().any(|&(_, r, s)| (r, s) == key));
            match self.take_ack(*delivery_id, from, output) {
                Ok(Some((root, stage))) => taken.push((i, root, stage)),
                Ok(None) => {}
                Err(Error::NotOutstanding {
                    on_this_connection: false,
                    ..
                }) if same_frame.is_some() => {
                    mirrors.extend(same_frame.map(|key| (*delivery_id, key)));
                }
                Err(failure) => unsettled.push((*delivery_id, failure)),
            }
        }
        if taken.is_empty() {
            return unsettled;
        }
        let records: Vec<Vec<u8>> = taken
            .iter()
            .map(|&(i, root, stage)| {
                let name = &self.plan.stages[stage as usize].name;
                encode_named(KIND_OUTPUT, root, name, &acks[i].1)
            })
            .collect();
        // One batch per chunk that fits the log's limits; the chunks are
        // enqueued back to back and share the group commit.
        let chunks = batch_ranges(&records, self.outputs.config().batch_bytes_max);
        let now = self.source.clock().now_ms();
        let epoch = self.epoch.get();
        let appends = chunks
            .iter()
            .map(|c| self.append_records(&records[c.clone()], now));
        let appended = futures::future::join_all(appends).await;
        if let Err(e) = self.check_epoch(epoch) {
            // Rebuilt meanwhile (leadership moved): the new state knows
            // nothing of these acks.
            unsettled.extend(taken.iter().map(|&(i, ..)| (acks[i].0, e.clone())));
            unsettled.extend(mirrors.iter().map(|&(id, _)| (id, e.clone())));
            return unsettled;
        }
        let mut failed: HashMap<(u64, u8), Error> = HashMap::new();
        let mut st = self.state.borrow_mut();
        let mut index = self.index.borrow_mut();
        for (chunk, result) in chunks.into_iter().zip(appended) {
            for &(i, root, stage) in &taken[chunk] {
                st.completing.remove(&(root, stage));
                if let Err(e) = &result {
                    index.release(root, stage as usize);
                    unsettled.push((acks[i].0, e.clone()));
                    failed.insert((root, stage), e.clone());
                    continue;
                }
                st.stats[stage as usize].completed += 1;
                st.attempts.remove(&(root, stage));
                match index.complete(root, stage as usize) {
                    Completion::Done { finished: true, .. } => {
                        st.completed += 1;
                        st.retried.remove(&root);
                        st.outputs.remove(&root);
                        st.roots.remove(&root);
                        for id in st.issued_by_root.remove(&root).unwrap_or_default() {
                            st.issued.remove(&id);
                        }
                        st.attempts.retain(|(r, _), _| *r != root);
                    }
                    // Dependents may need the output.
                    _ => {
                        st.outputs
                            .entry(root)
                            .or_default()
                            .insert(stage, Rc::new(acks[i].1.to_vec()));
                    }
                }
            }
        }
        drop(index);
        drop(st);
        for (id, key) in mirrors {
            if let Some(e) = failed.get(&key) {
                unsettled.push((id, e.clone()));
            }
        }
        self.wake.notify_all();
        unsettled
    }

    /// The checks of one ack before its output is appended: a valid event,
    /// a delivery this run made to this connection. `Some((root, stage))`
    /// when the output is to be made durable (the stage is then held);
    /// `None` for a duplicate or late ack of a completed stage.
    fn take_ack(
        &self,
        delivery_id: u64,
        from: (u16, u64),
        output: &[u8],
    ) -> Result<Option<(u64, u8)>, Error> {
        hadron_wire::verify_event(output, &self.limits)
            .map_err(|reason| Error::InvalidOutput { reason })?;
        let mut st = self.state.borrow_mut();
        let Some(&(root, stage)) = st.issued.get(&delivery_id) else {
            return Err(Error::NotOutstanding {
                delivery: delivery_id,
                kind: DeliveryKind::Stage,
                on_this_connection: false,
            });
        };
        if let Some(f) = st.ledger.get(delivery_id).copied() {
            if (f.member.shard, f.member.conn) != from {
                return Err(Error::NotMadeHere {
                    delivery: delivery_id,
                });
            }
            st.ledger.settle(delivery_id);
        }
        let failed = st.failed.contains_key(&root);
        let done = failed
            && st
                .outputs
                .get(&root)
                .is_some_and(|m| m.contains_key(&stage))
            || (!failed
                && self
                    .index
                    .borrow()
                    .get(root)
                    .is_none_or(|e| e.done & (1 << stage) != 0));
        if done {
            // A duplicate or late ack of a completed stage: ignored.
            return Ok(None);
        }
        if !st.completing.insert((root, stage)) {
            // Another ack's output for this stage is being made durable:
            // answering this one OK now would claim a completion that is
            // not committed yet, and never is if that append fails (a
            // replicated run losing its lead), when the stage runs again.
            return Err(Error::NotOutstanding {
                delivery: delivery_id,
                kind: DeliveryKind::Stage,
                on_this_connection: false,
            });
        }
        self.index.borrow_mut().hold(root, stage as usize);
        Ok(Some((root, stage)))
    }

    /// A stage's handler failed.
    pub async fn nack(
        &self,
        delivery_id: u64,
        from: (u16, u64),
        message: &str,
    ) -> Result<(), Error> {
        self.check_active()?;
        let owned = {
            let st = self.state.borrow();
            match st.ledger.get(delivery_id) {
                Some(f) => (f.member.shard, f.member.conn) == from,
                None => st.issued.contains_key(&delivery_id),
            }
        };
        if !owned {
            return Err(Error::NotOutstanding {
                delivery: delivery_id,
                kind: DeliveryKind::Stage,
                on_this_connection: true,
            });
        }
        self.fail_attempt(delivery_id, message).await
    }

    /// Counts a failed attempt of an in-flight delivery: hold it for the
    /// backoff, or fail the execution after the last attempt.
    async fn fail_attempt(&self, delivery_id: u64, message: &str) -> Result<(), Error> {
        let settled = self.state.borrow_mut().ledger.settle(delivery_id);
        let Some(held) = settled else {
            // Settled meanwhile (or a stale delivery): nothing to do.
            return Ok(());
        };
        self.fail_issued(held.what, message).await
    }

    /// Counts a failed attempt of delivery `f`, already taken out of the
    /// ledger (nacked, or its ack deadline passed).
    pub(super) async fn fail_issued(&self, f: Issued, message: &str) -> Result<(), Error> {
        let message = &message[..message.floor_char_boundary(ERROR_BYTES_MAX)];
        let (root, stage, exhausted) = {
            let mut st = self.state.borrow_mut();
            let key = (f.root, f.stage);
            let failures = st.attempts.get(&key).copied().unwrap_or(0) + 1;
            st.attempts.insert(key, failures);
            let stats = &mut st.stats[f.stage as usize];
            stats.errors += 1;
            stats.last_error = Some(message.to_string());
            stats.last_error_ms = Some(self.source.clock().now_ms());
            let policy = self.plan.stages[f.stage as usize].retry;
            if failures >= policy.max_attempts {
                (f.root, f.stage, true)
            } else {
                self.index.borrow_mut().hold(f.root, f.stage as usize);
                let at =
                    self.source.clock().now() + Duration::from_millis(policy.delay_ms(failures));
                st.retry_at.push(at, (f.root, f.stage));
                (f.root, f.stage, false)
            }
        };
        if exhausted {
            let name = &self.plan.stages[stage as usize].name;
            let record = encode_named(KIND_FAILED, root, name, message.as_bytes());
            let epoch = self.epoch.get();
            self.append_records(&[record], self.source.clock().now_ms())
                .await?;
            self.check_epoch(epoch)?;
            let mut st = self.state.borrow_mut();
            self.index.borrow_mut().remove(root);
            st.failed.insert(
                root,
                FailedExecution {
                    stage: name.clone(),
                    error: message.to_string(),
                },
            );
            st.stats[stage as usize].failed += 1;
            st.retried.remove(&root);
            st.roots.remove(&root);
            st.attempts.retain(|(r, _), _| *r != root);
            st.retry_at.retain(|&(r, _)| r != root);
        }
        self.wake.notify_all();
        Ok(())
    }

    /// Queues failed executions to run again: `root`, or all. Returns the
    /// roots retried.
    pub async fn retry(&self, root: Option<u64>) -> Result<Vec<u64>, Error> {
        self.check_active()?;
        let roots: Vec<u64> = {
            let st = self.state.borrow();
            match root {
                Some(r) if st.failed.contains_key(&r) => vec![r],
                Some(_) => Vec::new(),
                None => st.failed.keys().copied().collect(),
            }
        };
        for &r in &roots {
            // Before the record is appended: a checkpoint taken meanwhile
            // must not move the watermark as if the execution were done.
            self.state.borrow_mut().retried.insert(r);
            let epoch = self.epoch.get();
            let appended = self
                .append_records(
                    &[encode_offset(KIND_RETRIED, r)],
                    self.source.clock().now_ms(),
                )
                .await;
            self.check_epoch(epoch)?;
            if let Err(e) = appended {
                self.state.borrow_mut().retried.remove(&r);
                return Err(e);
            }
            let mut st = self.state.borrow_mut();
            if let Some(f) = st.failed.remove(&r)
                && let Some(s) = self.stage_index(&f.stage)
            {
                let stats = &mut st.stats[s as usize];
                stats.failed = stats.failed.saturating_sub(1);
            }
            st.retry_queue.push(r);
        }
        self.wake.notify_all();
        Ok(roots)
    }
}
