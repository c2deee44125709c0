//! What the seeded simulations of replicated state (`replica_sim.rs`
//! here, `pipeline/replica_sim.rs`) share: the seeded network between
//! the nodes (drops, duplicates, delays, directed cuts) and the Raft
//! settings of one node's group.
//!
//! A message carries the name of the group it belongs to (a stream's, or
//! a pipeline's outputs group, `pipeline::outputs_group`), as the peer
//! frames do, so that a node holding several groups routes it.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::rc::Rc;
use std::time::Duration;

use hadron_engine::storage::sim::SimRng;
use raft::eraftpb::Message;

use super::replica::ReplicaSpec;
use crate::replication::{GroupNet, GroupSettings, PeerLinks};
use crate::shard::clock::Clock;
use crate::shard::clock::sim::SimClock;
use crate::shard::error::LeaderAt;

/// A message on its way.
pub struct InFlight {
    pub due: Duration,
    pub seq: u64,
    pub to: u64,
    /// The group's peer name (a stream's, or an outputs group's).
    pub group: Rc<str>,
    pub msg: Message,
}

/// The seeded network: every message is delayed by up to
/// `delay_steps_max` steps of `step`, and dropped or duplicated at the
/// seed's rates; a cut directed link refuses it.
pub struct Net {
    pub clock: SimClock,
    pub rng: RefCell<SimRng>,
    pub queue: RefCell<Vec<InFlight>>,
    pub seq: Cell<u64>,
    pub cut: RefCell<BTreeSet<(u64, u64)>>,
    /// The cuts made by [`Net::cut_and_heal`] and the step each heals at.
    cuts: RefCell<Vec<((u64, u64), u64)>>,
    pub drop_ppm: u32,
    pub dup_ppm: u32,
    pub delay_steps_max: u64,
    pub step: Duration,
    pub dropped: Cell<u64>,
    pub duplicated: Cell<u64>,
}

impl Net {
    /// One step's link faults among `nodes` nodes: now and then (`cut_ppm`,
    /// drawn from the caller's `rng`) a directed link is cut for 10 to 159
    /// steps; the cuts due by `step` heal. Returns the new cut and the
    /// step it heals at, for the caller's coverage and narration.
    pub fn cut_and_heal(
        &self,
        rng: &mut SimRng,
        cut_ppm: u32,
        step: u64,
        nodes: u64,
    ) -> Option<((u64, u64), u64)> {
        let mut made = None;
        if rng.chance_ppm(cut_ppm) {
            let from = 1 + rng.below(nodes);
            let to = 1 + (from + rng.below(nodes - 1)) % nodes;
            let until = step + 10 + rng.below(150);
            self.cut.borrow_mut().insert((from, to));
            self.cuts.borrow_mut().push(((from, to), until));
            made = Some(((from, to), until));
        }
        let (healed, kept): (Vec<_>, Vec<_>) =
            self.cuts.borrow_mut().drain(..).partition(|c| c.1 <= step);
        *self.cuts.borrow_mut() = kept;
        for (link, _) in healed {
            if !self.cuts.borrow().iter().any(|c| c.0 == link) {
                self.cut.borrow_mut().remove(&link);
            }
        }
        made
    }

    /// Cuts every link to and from `node` (of `nodes`) until `step`
    /// `until`: a leader so isolated leads on until check-quorum steps it
    /// down, while the others may elect another.
    pub fn isolate(&self, node: u64, nodes: u64, until: u64) {
        for other in (1..=nodes).filter(|&o| o != node) {
            self.cut_both(node, other, until);
        }
    }

    /// Cuts the links between `a` and `b`, both ways, until step `until`.
    pub fn cut_both(&self, a: u64, b: u64, until: u64) {
        for link in [(a, b), (b, a)] {
            self.cut.borrow_mut().insert(link);
            self.cuts.borrow_mut().push((link, until));
        }
    }

    /// Heals every link.
    pub fn heal_all(&self) {
        self.cuts.borrow_mut().clear();
        self.cut.borrow_mut().clear();
    }

    /// The network of `seed`, its rates drawn from `rng` (drop, duplicate,
    /// delay, in that order).
    pub fn new(clock: SimClock, seed: u64, rng: &mut SimRng, step: Duration) -> Net {
        Net {
            clock,
            rng: RefCell::new(SimRng::new(seed.wrapping_mul(31) ^ 7)),
            queue: RefCell::new(Vec::new()),
            seq: Cell::new(0),
            cut: RefCell::new(BTreeSet::new()),
            cuts: RefCell::new(Vec::new()),
            drop_ppm: rng.below(50_001) as u32,
            dup_ppm: rng.below(30_001) as u32,
            delay_steps_max: rng.below(4),
            step,
            dropped: Cell::new(0),
            duplicated: Cell::new(0),
        }
    }

    fn push(&self, to: u64, group: &str, msg: Message) {
        let delay = self.step * self.rng.borrow_mut().below(self.delay_steps_max + 1) as u32;
        let seq = self.seq.get() + 1;
        self.seq.set(seq);
        self.queue.borrow_mut().push(InFlight {
            due: self.clock.now() + delay,
            seq,
            to,
            group: Rc::from(group),
            msg,
        });
    }

    /// The messages due now, in (due, seq) order.
    pub fn due(&self) -> Vec<InFlight> {
        let now = self.clock.now();
        let mut queue = self.queue.borrow_mut();
        let (mut due, later): (Vec<_>, Vec<_>) = queue.drain(..).partition(|m| m.due <= now);
        *queue = later;
        due.sort_by_key(|m| (m.due, m.seq));
        due
    }
}

/// One node's links: through the network, unless cut.
pub struct SimLinks {
    pub from: u64,
    pub net: Rc<Net>,
}

impl PeerLinks for SimLinks {
    fn send(&self, to: u64, group: &str, _partition: u32, msg: Message) -> bool {
        let net = &self.net;
        if net.cut.borrow().contains(&(self.from, to)) {
            return false;
        }
        if net.rng.borrow_mut().chance_ppm(net.drop_ppm) {
            net.dropped.set(net.dropped.get() + 1);
            return true;
        }
        if net.rng.borrow_mut().chance_ppm(net.dup_ppm) {
            net.duplicated.set(net.duplicated.get() + 1);
            net.push(to, group, msg.clone());
        }
        net.push(to, group, msg);
        true
    }
}

/// Node `id`'s spec for the group named `group` (partition 0) among
/// `nodes` voters, with an election timeout of `ticks` ticks.
pub fn replica_spec(net: &Rc<Net>, id: u64, nodes: u64, group: &str, ticks: usize) -> ReplicaSpec {
    let net = GroupNet {
        links: Rc::new(SimLinks {
            from: id,
            net: net.clone(),
        }),
        stream: Rc::from(group),
        partition: 0,
    };
    // A one-value election range per node: raft-rs draws the timeout
    // with an unseedable RNG (docs/replication.md section 1, finding 6).
    ReplicaSpec {
        group: GroupSettings {
            node_id: id,
            group_id: 0,
            tick_interval: Duration::from_millis(50),
            election_ticks: ticks..ticks + 1,
        },
        voters: (1..=nodes).collect(),
        net,
        leader_at: Rc::new(|node_id, term| {
            Some(LeaderAt {
                node_id,
                address: format!("node-{node_id}:7000"),
                shard_port: 0,
                term,
            })
        }),
        on_leader: Rc::new(|_| {}),
    }
}

/// What the shared fault schedule ([`node_faults`]) needs of a
/// simulation: its nodes (ids 1 to [`Faulted::node_count`]), whether each
/// is up, its storage and restart step, and how it opens and crashes one.
pub trait Faulted {
    fn node_count(&self) -> u64;
    fn is_up(&self, id: u64) -> bool;
    fn storage_of(&self, id: u64) -> &hadron_engine::storage::sim::SimStorage;
    fn back_at_mut(&mut self, id: u64) -> &mut Option<u64>;
    fn rng_mut(&mut self) -> &mut SimRng;
    fn open_node(&mut self, id: u64);
    fn crash_node(&mut self, id: u64, step: u64);
    /// Narrates (under `HADRON_SIM_DEBUG`).
    fn narrate(&self, what: &dyn Fn() -> String);
    /// Before node `id` restarts (the damage simulation damages its files
    /// now and then).
    fn before_restart(&mut self, _id: u64) {}
}

/// The node faults of one step every replicated-state simulation shares,
/// in one order (a seed replays the same): the nodes due restart; at most
/// one node is down, or two now and then (no quorum), a crash coming at
/// `crash_ppm` per step, between steps or mid-write (its storage stops at
/// one of its next operations, the next steps crash it); and a directed
/// link is cut or healed at `cut_ppm` (returned when cut: the link and
/// the step it heals at).
pub fn node_faults(
    sim: &mut impl Faulted,
    net: &Net,
    step: u64,
    crash_ppm: u32,
    cut_ppm: u32,
) -> Option<((u64, u64), u64)> {
    let n = sim.node_count();
    for id in 1..=n {
        if sim.back_at_mut(id).is_some_and(|at| at <= step) {
            *sim.back_at_mut(id) = None;
            sim.before_restart(id);
            sim.narrate(&|| format!("node {id} restarts"));
            sim.open_node(id);
        }
    }
    let down = (1..=n).filter(|&id| !sim.is_up(id)).count();
    let may_crash = down == 0 || (down == 1 && sim.rng_mut().below(4) == 0);
    if may_crash && sim.rng_mut().chance_ppm(crash_ppm) {
        let id = 1 + sim.rng_mut().below(n);
        if sim.is_up(id) {
            if sim.rng_mut().below(2) == 0 {
                // Mid-write: the storage stops at one of its next
                // operations (a persist, a cut, a meta write).
                let ops = 1 + sim.rng_mut().below(30);
                sim.storage_of(id).crash_after_ops(ops);
            } else {
                sim.crash_node(id, step);
            }
        }
    }
    for id in 1..=n {
        if sim.is_up(id) && sim.storage_of(id).is_frozen() {
            sim.crash_node(id, step);
        }
    }
    let cut = net.cut_and_heal(sim.rng_mut(), cut_ppm, step, n);
    if let Some(((from, to), until)) = cut {
        sim.narrate(&|| format!("link {from}->{to} cut until step {until}"));
    }
    cut
}

/// Implements [`Faulted`] for a simulation `Sim` whose `nodes[id - 1]`
/// hold `storage`, `back_at` and an `Option` named `$up` (`Some` while
/// the node runs), with `rng`, `open`, `crash` and `say`; `$count` gives
/// its node count from `$s` (the simulation), and `before_restart =
/// method` names its hook, if any.
macro_rules! faulted_sim {
    (up: $up:ident, count: |$s:ident| $count:expr $(, before_restart: $hook:ident)?) => {
        impl $crate::shard::partition::replica_sim_support::Faulted for Sim {
            fn node_count(&self) -> u64 {
                let $s = self;
                $count
            }

            fn is_up(&self, id: u64) -> bool {
                self.nodes[id as usize - 1].$up.is_some()
            }

            fn storage_of(&self, id: u64) -> &hadron_engine::storage::sim::SimStorage {
                &self.nodes[id as usize - 1].storage
            }

            fn back_at_mut(&mut self, id: u64) -> &mut Option<u64> {
                &mut self.nodes[id as usize - 1].back_at
            }

            fn rng_mut(&mut self) -> &mut hadron_engine::storage::sim::SimRng {
                &mut self.rng
            }

            fn open_node(&mut self, id: u64) {
                self.open(id);
            }

            fn crash_node(&mut self, id: u64, step: u64) {
                self.crash(id, step);
            }

            fn narrate(&self, what: &dyn Fn() -> String) {
                self.say(what);
            }

            $(fn before_restart(&mut self, id: u64) {
                self.$hook(id);
            })?
        }
    };
}
pub(crate) use faulted_sim;
