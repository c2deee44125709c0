//! The simulation's publisher: batches of events with fixed ids, each
//! retried (same ids) until acknowledged, following `NotLeader` hints; a
//! node that is down or an answer that does not come in time sends it to
//! another node.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;

use futures::executor::LocalSpawner;
use futures::task::LocalSpawnExt;
use hadron_engine::storage::sim::SimRng;

use super::{NODES, SimPartition};
use crate::shard::Error;

/// The publisher gives up waiting for an answer after this and retries
/// the same events elsewhere (the answer may still come).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

/// What a publish attempt came back with.
type Answer = Rc<RefCell<Option<Result<Vec<(u64, bool)>, Error>>>>;

pub(super) struct Publisher {
    seed: u64,
    /// Events it makes in all, at most.
    events_max: u64,
    /// The batch under way (ids and bytes) until acknowledged.
    batch: Vec<(String, Vec<u8>)>,
    leader: u64,
    attempt: Option<(Answer, Duration)>,
    /// Every event id made.
    pub made: BTreeSet<String>,
    /// Acknowledged publishes: id -> offset.
    pub published: BTreeMap<String, u64>,
}

impl Publisher {
    pub fn new(seed: u64, events_max: u64) -> Publisher {
        Publisher {
            seed,
            events_max,
            batch: Vec::new(),
            leader: 1,
            attempt: None,
            made: BTreeSet::new(),
            published: BTreeMap::new(),
        }
    }

    /// Whether every batch made was acknowledged.
    pub fn idle(&self) -> bool {
        self.batch.is_empty()
    }

    /// One turn at `now`: settles the attempt under way; then, unless one
    /// is still out, retries the batch or (when `fresh`, now and then)
    /// makes a new one, at the node it believes leads (`node(id)`: its
    /// partition, while up).
    pub fn turn(
        &mut self,
        rng: &mut SimRng,
        now: Duration,
        spawner: &LocalSpawner,
        fresh: bool,
        node: impl Fn(u64) -> Option<Rc<SimPartition>>,
    ) {
        self.settle(rng, now);
        if self.attempt.is_some() {
            return;
        }
        if self.batch.is_empty() {
            if !fresh || self.made.len() as u64 >= self.events_max || rng.below(4) != 0 {
                return;
            }
            self.new_batch(rng);
        }
        let Some(p) = node(self.leader) else {
            // Node down: as a refused connection.
            self.leader = 1 + rng.below(NODES);
            return;
        };
        let answer: Answer = Rc::new(RefCell::new(None));
        let events: Vec<Vec<u8>> = self.batch.iter().map(|b| b.1.clone()).collect();
        let slot = answer.clone();
        let _ = spawner.spawn_local(async move {
            let result = p.publish(&events).await.map(|published| published.results);
            *slot.borrow_mut() = Some(result);
        });
        self.attempt = Some((answer, now + CLIENT_TIMEOUT));
    }

    /// A fresh batch of one to three events.
    fn new_batch(&mut self, rng: &mut SimRng) {
        let left = self.events_max - self.made.len() as u64;
        let count = (1 + rng.below(3)).min(left);
        for _ in 0..count {
            let id = format!("e{}", self.made.len());
            let data = format!("{id}:{}", rng.below(1 << 20));
            let bytes = hadron_wire::encode_event(&hadron_wire::EventRef {
                id: &id,
                source: "sim",
                ty: "t",
                data: data.as_bytes(),
                ..hadron_wire::EventRef::default()
            });
            self.made.insert(id.clone());
            self.batch.push((id, bytes));
        }
    }

    /// Records what the attempt answered, if it did, or gives up on it
    /// past its deadline.
    fn settle(&mut self, rng: &mut SimRng, now: Duration) {
        let Some((answer, deadline)) = self.attempt.clone() else {
            return;
        };
        let result = answer.borrow_mut().take();
        match result {
            None if now >= deadline => {
                self.attempt = None;
                self.leader = 1 + rng.below(NODES);
            }
            None => {}
            Some(Ok(results)) => {
                let batch = std::mem::take(&mut self.batch);
                for ((id, _), (offset, _)) in batch.iter().zip(results) {
                    let first = *self.published.entry(id.clone()).or_insert(offset);
                    assert_eq!(
                        first, offset,
                        "seed {}: event {id} acknowledged at {first} and again at {offset}",
                        self.seed
                    );
                }
                self.attempt = None;
            }
            Some(Err(Error::NotLeader { leader, .. })) => {
                self.leader = match leader {
                    Some(l) => l.node_id,
                    None => 1 + rng.below(NODES),
                };
                self.attempt = None;
            }
            Some(Err(_)) => {
                self.attempt = None;
                self.leader = 1 + rng.below(NODES);
            }
        }
    }
}
