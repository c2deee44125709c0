//! The simulated network: a deterministic router between nodes that
//! drops, duplicates, delays (and so reorders) messages, and cuts links
//! one way or both, all driven by a seed.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use hadron_engine::storage::sim::SimRng;
use raft::eraftpb::Message;

use crate::replication::PeerNet;

/// Fault rates of a run.
#[derive(Debug, Clone, Copy, Default)]
pub struct NetFaults {
    pub drop_ppm: u32,
    pub duplicate_ppm: u32,
    /// Steps a message may wait beyond the next one, at most.
    pub delay_steps_max: u64,
}

/// What the router did.
#[derive(Debug, Default, Clone, Copy)]
pub struct NetStats {
    pub sent: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub cut: u64,
}

#[derive(Debug)]
pub struct Router {
    rng: SimRng,
    pub faults: NetFaults,
    /// The step messages sent now are sent at.
    pub step: u64,
    /// In flight, by (delivery step, send order).
    queue: BTreeMap<(u64, u64), Message>,
    sent_count: u64,
    /// Cut links, one way: (from, to).
    cuts: BTreeSet<(u64, u64)>,
    pub stats: NetStats,
}

impl Router {
    pub fn new(seed: u64, faults: NetFaults) -> Router {
        Router {
            rng: SimRng::new(seed),
            faults,
            step: 0,
            queue: BTreeMap::new(),
            sent_count: 0,
            cuts: BTreeSet::new(),
            stats: NetStats::default(),
        }
    }

    fn send(&mut self, msg: Message) -> bool {
        self.stats.sent += 1;
        if self.cuts.contains(&(msg.from, msg.to)) {
            self.stats.cut += 1;
            return false;
        }
        if self.rng.chance_ppm(self.faults.drop_ppm) {
            self.stats.dropped += 1;
            return true;
        }
        let copies = if self.rng.chance_ppm(self.faults.duplicate_ppm) {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = self.rng.below(self.faults.delay_steps_max + 1);
            self.sent_count += 1;
            self.queue
                .insert((self.step + 1 + delay, self.sent_count), msg.clone());
        }
        true
    }

    /// The messages due by `step`, in delivery order.
    pub fn take_due(&mut self, step: u64) -> Vec<Message> {
        let later = self.queue.split_off(&(step + 1, 0));
        std::mem::replace(&mut self.queue, later)
            .into_values()
            .collect()
    }

    pub fn cut(&mut self, from: u64, to: u64) {
        self.cuts.insert((from, to));
    }

    /// Cuts every link to and from `node`.
    pub fn isolate(&mut self, node: u64, nodes: &[u64]) {
        for &other in nodes.iter().filter(|&&o| o != node) {
            self.cut(node, other);
            self.cut(other, node);
        }
    }

    pub fn heal(&mut self) {
        self.cuts.clear();
    }
}

/// One node's side of the router.
#[derive(Debug, Clone)]
pub struct SimNet(pub Rc<RefCell<Router>>);

impl PeerNet for SimNet {
    fn send(&self, msg: Message) -> bool {
        self.0.borrow_mut().send(msg)
    }
}
