//! A seeded simulation of whole shards: several [`Shard`]s on one
//! simulated disk (`SimStorage`) and clock (`SimClock`), joined by an
//! in-process mesh, in one thread on a `LocalPool`, driven by a seed,
//! crashed at random storage operations and recovered again and again, and
//! checked against a model. (The partition simulation,
//! `partition/sim_tests.rs`, goes deeper into one partition's log, dedup
//! window and consumer group; this one covers what spans shards:
//! forwarding, pipelines, applies, connections.)
//!
//! **A run.** [`SHARDS`] shards own the [`PARTITIONS`] partitions of
//! `events` and the pipeline of the seed walkthrough (`service-creation`:
//! `deploy-service`, then `setup-billing`, `setup-monitoring` and
//! `notify-user` in parallel, then `sync` over all four; billing allows
//! [`model::BILLING_MAX_ATTEMPTS`] attempts). A seed runs [`LIVES`] lives.
//! Each opens every shard from the simulated disk with the resources the
//! applies persisted, checks the logs against the model, connects stage
//! handlers (members on a random shard, attached to stages on every
//! partition through the mesh), may arm a crash after a random number of
//! storage operations, then runs random steps, each followed by running
//! the executor until it stalls:
//!
//! - clients publish batches through a random shard (forwarded to the
//!   owner), some of trigger type, some "doomed"; they publish a batch
//!   again after an error or a lost answer (the same ids);
//! - handlers take their deliveries from their connection's outbox (the
//!   encoded frames a client would read) and answer each: an output, a
//!   nack, or nothing (held until the ack timeout). Billing handlers always
//!   refuse doomed events;
//! - consumers of a durable group (`audit`, on every partition) ack, nack
//!   or hold their deliveries;
//! - a handler's or consumer's connection closes (its deliveries go back
//!   at once) and a new one attaches;
//! - applies: the same resources again, resources with one more stream,
//!   or invalid ones (malformed YAML, a cyclic DAG, an unknown source);
//! - the clock moves (ack deadlines, retry backoff, commits).
//!
//! A life ends at the crash, with one at a random point, or with a clean
//! stop (`flush_all`). The last life answers every delivery (except doomed
//! billing) until every execution finished or failed.
//!
//! **Checked** ([`model`]), in every life and at the end:
//! - every acknowledged event is in its partition at its offset, byte for
//!   byte; no offset ever changes its event; no event is stored twice
//!   (retries of the same ids, within the dedup window);
//! - every delivery is of a triggering event at its offset, and gives the
//!   stage exactly its dependencies' outputs (by name, byte for byte);
//! - no stage whose output was acknowledged is delivered again: never after
//!   a restart, and not within the life (a delivery made after the ack);
//! - a group's delivery is of the event at its offset; after a restart the
//!   group's stored offset is not past an offset it never acked; at the end
//!   the group acked every acknowledged event;
//! - no `sync` for a doomed execution; at the end every execution of a
//!   non-doomed event completed, and every doomed one failed at billing;
//! - a valid apply is answered `Applied` (unless the disk is crashing), an
//!   invalid one `InvalidConfig`, and leaves every shard's topology as it
//!   was; a restart installs exactly the resources applied.
//!
//! A failing seed names itself and the command that replays it:
//! `HADRON_SIM_SEED=<seed> cargo test -p hadron-server shard_sim`
//! (`HADRON_SIM_DEBUG=1` narrates). Shard code iterates hash maps only
//! where order does not matter, the run reads no real time and spawns no
//! thread, so a seed replays identically (a test checks it does).

#[cfg(test)]
mod disk_full;
mod model;
mod run;

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Duration;

use futures::executor::LocalPool;
use futures::future::LocalBoxFuture;
use hadron_engine::storage::sim::{SimFaults, SimRng, SimStorage};

use super::clock::sim::SimClock;
use super::outbox::Outbox;
use super::sim_support::run_seeds;
use super::{Mesh, MeshMsg, Reply, ResourceStore, Settings, Shard, Topology};
use crate::config::{Resource, ServerConfig};
use model::Model;

type SimShard = Shard<SimStorage, SimClock>;

/// Seeds run by default.
const SEEDS: u64 = 300;
/// Lives per seed (each but the last ends in a crash or a stop).
const LIVES: u64 = 5;
/// Steps per life at most.
const STEPS_MAX: u64 = 40;
const SHARDS: u16 = 3;
const PARTITIONS: u32 = 3;
/// Publishing clients.
const CLIENTS: usize = 3;
const DIR: &str = "/sim";
/// Wall time at the clock's start.
const EPOCH_MS: u64 = 1_700_000_000_000;
/// The pipeline's ack timeout.
const ACK_TIMEOUT_MS: u64 = 1_500;
/// Rounds of the final drain at most (each moves the clock 200 ms).
const DRAIN_ROUNDS_MAX: u64 = 2_000;
const PIPELINE: &str = "service-creation";
/// The durable consumer group.
const GROUP: &str = "audit";
const STREAM: &str = "events";

/// SimStorage's scheduling noise, without faults.
const QUIET: SimFaults = SimFaults {
    write_fail_ppm: 0,
    sync_fail_ppm: 0,
    yields_max: 2,
    disk_full: false,
};

/// The resources of every run: the stream and the seed's pipeline.
fn resources_yaml(extra_streams: &BTreeSet<String>) -> String {
    let mut yaml = format!(
        "apiVersion: hadron.rs/v1beta1
kind: Stream
metadata: {{ name: {STREAM} }}
spec:
  partitions: {PARTITIONS}
  dedupWindowMs: 86400000
---
apiVersion: hadron.rs/v1beta1
kind: Pipeline
metadata: {{ name: {PIPELINE} }}
spec:
  sourceStream: {STREAM}
  triggers: [{trigger}]
  startPoint: {{ location: beginning }}
  maxParallel: 8
  retry: {{ initialDelayMs: 100, maxDelayMs: 800, maxAttempts: 10000 }}
  ackTimeoutMs: {ACK_TIMEOUT_MS}
  stages:
    - name: deploy-service
    - name: setup-billing
      dependencies: [deploy-service]
      retry: {{ maxAttempts: {billing} }}
    - name: setup-monitoring
      dependencies: [deploy-service]
    - name: notify-user
      dependencies: [deploy-service]
    - name: sync
      dependencies: [deploy-service, setup-billing, setup-monitoring, notify-user]
",
        trigger = model::TRIGGER,
        billing = model::BILLING_MAX_ATTEMPTS,
    );
    for name in extra_streams {
        yaml.push_str(&format!(
            "---\napiVersion: hadron.rs/v1beta1\nkind: Stream\nmetadata: {{ name: {name} }}\nspec: {{ partitions: 1 }}\n"
        ));
    }
    yaml
}

/// Applies that must be refused, each for a reason named in the answer.
const INVALID_APPLIES: [(&str, &str); 3] = [
    ("kind: Stream\nmetadata: { name: [\n", "malformed YAML"),
    (
        "apiVersion: hadron.rs/v1beta1\nkind: Pipeline\nmetadata: { name: loop }\nspec:\n  sourceStream: events\n  stages:\n    - { name: a, dependencies: [b] }\n    - { name: b, dependencies: [a] }\n",
        "a cyclic DAG",
    ),
    (
        "apiVersion: hadron.rs/v1beta1\nkind: Pipeline\nmetadata: { name: orphan }\nspec:\n  sourceStream: nowhere\n  stages:\n    - { name: a }\n",
        "an unknown source stream",
    ),
];

fn settings() -> Arc<Settings> {
    let config = ServerConfig {
        data_dir: DIR.into(),
        shards: SHARDS,
        segment_bytes: 64 << 10,
        ..ServerConfig::default()
    };
    Arc::new(Settings {
        config,
        ack_timeout: Duration::from_millis(ACK_TIMEOUT_MS),
        topology: Topology::default(),
        open_connections: Arc::default(),
        metrics: None,
        tls: None,
        peer_tls: None,
        leaders: Arc::default(),
        placements: Arc::default(),
    })
}

/// The resources shard 0 persisted: they survive crashes (the server
/// writes them with a rename and an fsync before installing them).
#[derive(Debug, Clone, Default)]
struct MemResources(Rc<RefCell<Vec<Resource>>>);

impl ResourceStore for MemResources {
    fn save(&self, resources: &[Resource]) -> Result<bool, String> {
        let changed = *self.0.borrow() != resources;
        *self.0.borrow_mut() = resources.to_vec();
        Ok(changed)
    }
}

/// The topology a start installs from persisted resources.
fn topology_of(resources: &[Resource]) -> Topology {
    let mut topology = Topology::default();
    let (streams, pipelines): (Vec<_>, Vec<_>) = resources
        .iter()
        .cloned()
        .partition(|r| matches!(r, Resource::Stream(_)));
    for r in streams.into_iter().chain(pipelines) {
        if let Err(e) = topology.put(r) {
            panic!("persisted resources do not install: {e}");
        }
    }
    topology
}

/// The in-process mesh: a message is taken by its shard at once, in the
/// order sent; a shard that is gone (crashed) refuses it.
struct SimMesh {
    from: u16,
    shards: Rc<RefCell<Vec<Weak<SimShard>>>>,
}

impl Mesh for SimMesh {
    fn send_to(&self, to: u16, msg: MeshMsg) -> LocalBoxFuture<'_, Result<(), String>> {
        let target = self
            .shards
            .borrow()
            .get(to as usize)
            .and_then(Weak::upgrade);
        Box::pin(async move {
            match target {
                Some(shard) => {
                    shard.on_mesh(self.from, msg);
                    Ok(())
                }
                None => Err(format!("shard {to} is gone")),
            }
        })
    }
}

/// A stage handler's or group consumer's connection, on one shard.
struct Handler {
    shard: u16,
    conn: u64,
    outbox: Rc<Outbox>,
}

/// Subscription id of the group consumers' members.
const GROUP_SUBSCRIPTION: u64 = 1_000;

/// What a spawned request came back with.
enum Outcome {
    Published {
        client: usize,
        partition: u32,
        batch: Vec<usize>,
        reply: Reply,
    },
    GroupAcked {
        root: model::Root,
        id: u64,
        reply: Reply,
    },
    StageAcked {
        root: model::Root,
        stage: usize,
        owner: u16,
        reply: Reply,
    },
    Applied {
        /// `None` for a valid apply, else why it is invalid.
        invalid: Option<&'static str>,
        /// The stream the apply added, if any.
        added: Option<String>,
        reply: Reply,
    },
    /// Attaches, nacks, closes: they must answer.
    Answered(&'static str, Reply),
}

/// One life: the shards opened, the executor, the handlers.
struct Life {
    no: u64,
    pool: LocalPool,
    shards: Vec<Rc<SimShard>>,
    handlers: Vec<Handler>,
    outcomes: Rc<RefCell<Vec<Outcome>>>,
    running: Rc<Cell<usize>>,
}

/// A publishing client.
#[derive(Debug, Default)]
struct Client {
    next_seq: u64,
    /// A batch it has no answer for (partition, events): sent again.
    unanswered: Option<(u32, Vec<usize>)>,
}

/// What a run exercised.
#[derive(Debug, Default, Clone, Copy)]
struct Coverage {
    crashes: u64,
    stored: u64,
    duplicates: u64,
    deliveries: u64,
    outputs: u64,
    nacks: u64,
    held: u64,
    group_deliveries: u64,
    group_acks: u64,
    closes: u64,
    applies: u64,
    refused_applies: u64,
    failed_executions: u64,
    completed_executions: u64,
}

impl std::ops::AddAssign for Coverage {
    fn add_assign(&mut self, o: Coverage) {
        self.crashes += o.crashes;
        self.stored += o.stored;
        self.duplicates += o.duplicates;
        self.deliveries += o.deliveries;
        self.outputs += o.outputs;
        self.nacks += o.nacks;
        self.held += o.held;
        self.group_deliveries += o.group_deliveries;
        self.group_acks += o.group_acks;
        self.closes += o.closes;
        self.applies += o.applies;
        self.refused_applies += o.refused_applies;
        self.failed_executions += o.failed_executions;
        self.completed_executions += o.completed_executions;
    }
}

/// A seed's run.
struct Sim {
    rng: SimRng,
    storage: SimStorage,
    clock: SimClock,
    settings: Arc<Settings>,
    resources: MemResources,
    model: Model,
    clients: Vec<Client>,
    next_conn: u64,
    /// Streams an apply tried to add (persisted or not).
    tried_streams: BTreeSet<String>,
    /// A digest of everything that happened, to show a replay is the same.
    trace: u64,
    coverage: Coverage,
    debug: bool,
}

/// Runs every seed; the first that fails is named with the command that
/// replays it.
#[test]
fn shard_sim_keeps_events_and_runs_each_stage_once_across_crashes() {
    let (seeds, total) = run_seeds("shard_sim", SEEDS, |seed| Sim::new(seed).run().1);
    if seeds > 1 {
        let c = total;
        for (what, n) in [
            ("crashes", c.crashes),
            ("stored events", c.stored),
            ("duplicates", c.duplicates),
            ("deliveries", c.deliveries),
            ("outputs", c.outputs),
            ("nacks", c.nacks),
            ("held deliveries", c.held),
            ("group deliveries", c.group_deliveries),
            ("group acks", c.group_acks),
            ("closed connections", c.closes),
            ("applies", c.applies),
            ("refused applies", c.refused_applies),
            ("failed executions", c.failed_executions),
            ("completed executions", c.completed_executions),
        ] {
            assert!(n >= seeds as u64 / 10, "only {n} {what}");
        }
    }
}

/// A seed is the same run every time.
#[test]
fn shard_sim_replays_a_seed_identically() {
    for seed in [3, 987_654] {
        assert_eq!(
            Sim::new(seed).run().0,
            Sim::new(seed).run().0,
            "seed {seed}"
        );
    }
}
