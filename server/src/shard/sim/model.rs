//! What the clients and the stage handlers of the shard simulation saw,
//! and the checks made against it (see the module header of `sim`).

use std::collections::{BTreeMap, BTreeSet};

use hadron_wire::{EventRef, StageDelivery};

/// The pipeline's stages, as in the seed walkthrough
/// (`service-provisioning.md`): name and dependencies.
pub const STAGES: [(&str, &[&str]); 5] = [
    ("deploy-service", &[]),
    ("setup-billing", &["deploy-service"]),
    ("setup-monitoring", &["deploy-service"]),
    ("notify-user", &["deploy-service"]),
    (
        "sync",
        &[
            "deploy-service",
            "setup-billing",
            "setup-monitoring",
            "notify-user",
        ],
    ),
];
/// The stage whose handlers refuse doomed events.
pub const BILLING: usize = 1;
/// `maxAttempts` of the billing stage: a doomed execution fails after it.
pub const BILLING_MAX_ATTEMPTS: u32 = 3;
/// The event type that triggers the pipeline.
pub const TRIGGER: &str = "service.created";

/// An event a client made.
#[derive(Debug, Clone)]
pub struct Event {
    pub bytes: Vec<u8>,
    /// Of the trigger type (else the pipeline must ignore it).
    pub trigger: bool,
    /// The billing handlers always refuse it: its execution must fail.
    pub doomed: bool,
}

/// A root's place: (partition, offset).
pub type Root = (u32, u64);

/// What the clients and handlers saw.
#[derive(Debug, Default)]
pub struct Model {
    pub events: Vec<Event>,
    pub by_bytes: BTreeMap<Vec<u8>, usize>,
    /// Offsets a publish acknowledged, and their event.
    pub acked: BTreeMap<Root, usize>,
    /// What each offset holds, as far as anyone saw (acknowledged, read
    /// back, or delivered as a root): it never changes.
    pub known: BTreeMap<Root, usize>,
    /// Stages whose ack was answered `Ok`: (root, stage) -> life.
    pub completed: BTreeMap<(Root, usize), u64>,
    /// In this life, per completed (root, stage): the owner shard's next
    /// id when the ack was answered. A delivery of that stage with an id at
    /// or above it was made after the stage completed.
    pub completed_at_id: BTreeMap<(Root, usize), u64>,
    /// Expected output per (event, stage), memoized.
    outputs: BTreeMap<(usize, usize), Vec<u8>>,
    /// Streams the applies added (beside `events`).
    pub extra_streams: BTreeSet<String>,
    /// Offsets the durable group acked (the ack answered `Done`), in any
    /// life.
    pub group_acked: BTreeSet<Root>,
}

impl Model {
    /// The event whose bytes are `bytes`.
    pub fn event_of(&self, bytes: &[u8]) -> Option<usize> {
        self.by_bytes.get(bytes).copied()
    }

    /// Records that `root` holds `event`; panics if it held another.
    pub fn learn(&mut self, root: Root, event: usize, what: &str) {
        if let Some(&was) = self.known.get(&root) {
            assert_eq!(
                was, event,
                "{what}: partition {} offset {} held event {was} and now event {event}",
                root.0, root.1
            );
        }
        self.known.insert(root, event);
    }

    /// The first offset of `partition` the group never acked.
    pub fn group_unacked_first(&self, partition: u32) -> u64 {
        let mut first = 0;
        while self.group_acked.contains(&(partition, first)) {
            first += 1;
        }
        first
    }

    /// The output a correct run gives `stage` of an execution of `event`:
    /// the handler's function of the root and the outputs of the stage's
    /// dependencies, each computed the same way.
    pub fn expected_output(&mut self, event: usize, stage: usize) -> Vec<u8> {
        if let Some(out) = self.outputs.get(&(event, stage)) {
            return out.clone();
        }
        let inputs = self.expected_inputs(event, stage);
        let out = handler_output(&self.events[event].bytes, stage, &inputs);
        self.outputs.insert((event, stage), out.clone());
        out
    }

    /// The inputs `stage` must see: each dependency's output, by name.
    pub fn expected_inputs(&mut self, event: usize, stage: usize) -> Vec<(String, Vec<u8>)> {
        let mut inputs: Vec<(String, Vec<u8>)> = STAGES[stage]
            .1
            .iter()
            .map(|dep| {
                let d = stage_index(dep).unwrap_or(usize::MAX);
                (dep.to_string(), self.expected_output(event, d))
            })
            .collect();
        inputs.sort();
        inputs
    }

    /// Checks a stage delivery a handler received in life `life`; returns
    /// the root event and the stage.
    pub fn check_delivery(&mut self, d: &StageDelivery<'_>, life: u64) -> (usize, usize) {
        let what = format!(
            "life {life}: delivery {} of stage {} for partition {} offset {} (attempt {})",
            d.delivery_id, d.stage, d.partition, d.offset, d.attempt
        );
        let Some(stage) = stage_index(d.stage) else {
            panic!("{what}: no such stage");
        };
        let Some(event) = self.event_of(d.root) else {
            panic!("{what}: a root event nobody published");
        };
        let root = (d.partition, d.offset);
        self.learn(root, event, &what);
        assert!(
            self.events[event].trigger,
            "{what}: the root's type does not trigger the pipeline"
        );
        if let Some(&done_in) = self.completed.get(&(root, stage)) {
            assert!(
                done_in == life,
                "{what}: the stage completed in life {done_in} and runs again after a restart"
            );
            let made = d.delivery_id & ((1 << 48) - 1);
            let owner = (d.delivery_id >> 48) as u16;
            let at = self.completed_at_id.get(&(root, stage)).copied();
            assert!(
                at.is_none_or(|at| made < at),
                "{what}: made after the stage completed (owner {owner} was at id {at:?})"
            );
        }
        if self.events[event].doomed {
            assert!(
                stage != stage_index("sync").unwrap_or(usize::MAX),
                "{what}: sync of a doomed execution, whose billing never succeeds"
            );
        }
        let mut inputs: Vec<(String, Vec<u8>)> = d
            .inputs
            .iter()
            .map(|i| (i.stage.to_string(), i.event.to_vec()))
            .collect();
        inputs.sort();
        let expected = self.expected_inputs(event, stage);
        assert!(
            inputs == expected,
            "{what}: the inputs are {:?}, not the outputs of its dependencies {:?}",
            names(&inputs),
            names(&expected)
        );
        (event, stage)
    }
}

fn names(inputs: &[(String, Vec<u8>)]) -> Vec<(&str, usize)> {
    inputs.iter().map(|(n, b)| (n.as_str(), b.len())).collect()
}

/// A stage's index in [`STAGES`].
pub fn stage_index(name: &str) -> Option<usize> {
    STAGES.iter().position(|(n, _)| *n == name)
}

/// What a handler answers for `stage` of `root` given `inputs` (sorted by
/// name): an event naming the stage, whose data digests all three, so a
/// wrong or missing input changes every output after it.
pub fn handler_output(root: &[u8], stage: usize, inputs: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    let mut absorb = |bytes: &[u8]| {
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3);
        }
        h = (h ^ 0xFF).wrapping_mul(0x100_0000_01B3);
    };
    absorb(root);
    absorb(STAGES[stage].0.as_bytes());
    for (name, event) in inputs {
        absorb(name.as_bytes());
        absorb(event);
    }
    let data = h.to_le_bytes();
    hadron_wire::encode_event(&EventRef {
        id: &format!("{h:016x}"),
        source: STAGES[stage].0,
        ty: "stage.output",
        data: &data,
        ..EventRef::default()
    })
}
