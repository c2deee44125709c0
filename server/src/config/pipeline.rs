//! `kind: Pipeline`: an event-triggered DAG of stages.
//!
//! ```yaml
//! apiVersion: hadron.rs/v1beta1
//! kind: Pipeline
//! metadata: { name: service-creation }
//! spec:
//!   sourceStream: events                  # required; must exist
//!   triggers: [service.created]           # default []: every event
//!   startPoint: { location: beginning }   # beginning (default) | latest | offset (+ offset: N)
//!   maxParallel: 50                       # unfinished executions per partition, default 50
//!   retry:                                # optional; defaults below
//!     initialDelayMs: 500                 # wait after the first failure
//!     maxDelayMs: 30000                   # the doubling stops here
//!     maxAttempts: 10                     # deliveries in all before the execution fails
//!   ackTimeoutMs: 30000                   # redeliver when a delivery is not answered in time
//!   stages:
//!     - name: deploy-service
//!     - name: setup-billing
//!       dependencies: [deploy-service]
//!       retry: { maxAttempts: 3 }         # per stage, field by field over the pipeline's
//!       ackTimeoutMs: 5000
//! ```
//!
//! [`PipelineSpec::plan`] validates a spec and turns it into a
//! [`PipelinePlan`]: stage indices (document order, which is also the bit of
//! each stage in the engine's `done`/`in_flight` masks), dependency index
//! lists and masks, a topological order, and the retry policy and ack timeout
//! of every stage with defaults resolved. Bit indices follow document order,
//! so anything persisted across pipeline updates must record stages by name.
//!
//! This file holds the spec and plan types; the checks and the building of
//! a plan are in `pipeline/plan.rs`, the unit tests in `pipeline/tests.rs`.

use serde::{Deserialize, Serialize};

use super::error::Problem;
use super::trigger::TriggerSet;

mod plan;

/// The most stages a pipeline may have: one bit each in a `u64` mask.
pub const STAGES_MAX: usize = 64;
/// `maxParallel` when the spec leaves it out.
pub const MAX_PARALLEL_DEFAULT: u32 = 50;
/// The largest `maxParallel`: it bounds each partition's execution window.
pub const MAX_PARALLEL_MAX: u32 = 65_536;
/// Retry delay after the first failure, by default.
pub const RETRY_INITIAL_DELAY_MS_DEFAULT: u64 = 500;
/// Longest retry delay, by default.
pub const RETRY_MAX_DELAY_MS_DEFAULT: u64 = 30_000;
/// Deliveries of a stage, first included, before its execution fails.
pub const RETRY_MAX_ATTEMPTS_DEFAULT: u32 = 10;
/// How long a delivery may stay unanswered before redelivery, by default.
pub const ACK_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// The longest retry delay or ack timeout accepted: one day.
pub const DELAY_MS_MAX: u64 = 24 * 60 * 60 * 1000;
/// The largest `maxAttempts` accepted.
pub const MAX_ATTEMPTS_MAX: u32 = 10_000;

const _: () = assert!(STAGES_MAX <= u64::BITS as usize);
const _: () = assert!(STAGES_MAX <= u8::MAX as usize + 1);
const _: () = assert!(RETRY_INITIAL_DELAY_MS_DEFAULT <= RETRY_MAX_DELAY_MS_DEFAULT);
const _: () = assert!(RETRY_MAX_DELAY_MS_DEFAULT <= DELAY_MS_MAX);
const _: () = assert!(ACK_TIMEOUT_MS_DEFAULT <= DELAY_MS_MAX);
const _: () = assert!(MAX_PARALLEL_DEFAULT <= MAX_PARALLEL_MAX);

fn max_parallel_default() -> u32 {
    MAX_PARALLEL_DEFAULT
}

/// A pipeline as declared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PipelineSpec {
    /// `metadata.name`; filled in from the document's metadata.
    #[serde(skip)]
    pub name: String,
    pub source_stream: String,
    /// Event type patterns (see [`TriggerSet`]); empty matches every event.
    #[serde(default)]
    pub triggers: Vec<String>,
    #[serde(default)]
    pub start_point: StartPoint,
    #[serde(default = "max_parallel_default")]
    pub max_parallel: u32,
    /// Pipeline-wide retry settings; `None` takes the defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_timeout_ms: Option<u64>,
    pub stages: Vec<StageSpec>,
}

/// One stage as declared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StageSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependencies: Vec<String>,
    /// Overrides the pipeline's retry settings field by field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_timeout_ms: Option<u64>,
}

impl StageSpec {
    /// A stage with the given dependencies and default settings.
    pub fn new(name: &str, dependencies: &[&str]) -> StageSpec {
        StageSpec {
            name: name.to_owned(),
            dependencies: dependencies.iter().map(|d| (*d).to_owned()).collect(),
            retry: None,
            ack_timeout_ms: None,
        }
    }
}

/// Retry settings as written: each field optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetrySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_delay_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_delay_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
}

/// Resolved retry settings of one stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub initial_delay_ms: u64,
    pub max_delay_ms: u64,
    /// Deliveries in all, the first included; after this many failures the
    /// execution is marked failed.
    pub max_attempts: u32,
}

impl RetryPolicy {
    /// The defaults: 500 ms doubling up to 30 s, 10 attempts.
    pub const DEFAULT: RetryPolicy = RetryPolicy {
        initial_delay_ms: RETRY_INITIAL_DELAY_MS_DEFAULT,
        max_delay_ms: RETRY_MAX_DELAY_MS_DEFAULT,
        max_attempts: RETRY_MAX_ATTEMPTS_DEFAULT,
    };

    /// `over` where it sets a field, else `self`.
    fn overlay(self, over: Option<&RetrySpec>) -> RetryPolicy {
        let Some(over) = over else { return self };
        RetryPolicy {
            initial_delay_ms: over.initial_delay_ms.unwrap_or(self.initial_delay_ms),
            max_delay_ms: over.max_delay_ms.unwrap_or(self.max_delay_ms),
            max_attempts: over.max_attempts.unwrap_or(self.max_attempts),
        }
    }

    /// The wait before the next delivery after `failures` failed ones
    /// (1 or more): the initial delay, doubled per further failure, capped.
    pub fn delay_ms(&self, failures: u32) -> u64 {
        let doublings = failures.saturating_sub(1).min(63);
        self.initial_delay_ms
            .saturating_mul(1u64 << doublings)
            .min(self.max_delay_ms)
    }
}

/// Where a new pipeline starts reading its source stream.
///
/// Written `{ location: beginning }`, `{ location: latest }` or
/// `{ location: offset, offset: N }`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(into = "StartPointDoc")]
pub enum StartPoint {
    /// Every event already in the stream (the default, so that nothing
    /// published before the pipeline existed is missed).
    #[default]
    Beginning,
    /// Only events published after the pipeline is created.
    Latest,
    /// Events from this offset of each partition on.
    Offset(u64),
}

impl StartPoint {
    fn from_parts(
        location: StartLocation,
        offset: Option<u64>,
    ) -> Result<StartPoint, &'static str> {
        match (location, offset) {
            (StartLocation::Beginning, None) => Ok(StartPoint::Beginning),
            (StartLocation::Latest, None) => Ok(StartPoint::Latest),
            (StartLocation::Offset, Some(offset)) => Ok(StartPoint::Offset(offset)),
            (StartLocation::Offset, None) => {
                Err("`location: offset` needs `offset: N`, the offset to start from")
            }
            (_, Some(_)) => Err("`offset` is only used with `location: offset`"),
        }
    }
}

impl From<StartPoint> for hadron_wire::StartPoint {
    fn from(start: StartPoint) -> hadron_wire::StartPoint {
        match start {
            StartPoint::Beginning => hadron_wire::StartPoint::Beginning,
            StartPoint::Latest => hadron_wire::StartPoint::Latest,
            StartPoint::Offset(offset) => hadron_wire::StartPoint::Offset(offset),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum StartLocation {
    Beginning,
    Latest,
    Offset,
}

/// `startPoint` as written out.
#[derive(Debug, Clone, Copy, Serialize)]
struct StartPointDoc {
    location: StartLocation,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
}

impl From<StartPoint> for StartPointDoc {
    fn from(start: StartPoint) -> StartPointDoc {
        let (location, offset) = match start {
            StartPoint::Beginning => (StartLocation::Beginning, None),
            StartPoint::Latest => (StartLocation::Latest, None),
            StartPoint::Offset(offset) => (StartLocation::Offset, Some(offset)),
        };
        StartPointDoc { location, offset }
    }
}

/// Read by hand rather than derived through a conversion, so that a
/// `location`/`offset` mismatch is reported while the parser is still at
/// `startPoint`, with that path and position.
impl<'de> Deserialize<'de> for StartPoint {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<StartPoint, D::Error> {
        use serde::de::{Error, MapAccess, Visitor};

        #[derive(Deserialize)]
        #[serde(field_identifier, rename_all = "lowercase")]
        enum Field {
            Location,
            Offset,
        }

        struct StartPointVisitor;

        impl<'de> Visitor<'de> for StartPointVisitor {
            type Value = StartPoint;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a mapping with `location` (beginning, latest or offset) and, for offset, `offset`")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StartPoint, A::Error> {
                let mut location = None;
                let mut offset = None;
                while let Some(field) = map.next_key::<Field>()? {
                    match field {
                        Field::Location if location.is_some() => {
                            return Err(A::Error::duplicate_field("location"));
                        }
                        Field::Location => location = Some(map.next_value::<StartLocation>()?),
                        Field::Offset if offset.is_some() => {
                            return Err(A::Error::duplicate_field("offset"));
                        }
                        Field::Offset => offset = Some(map.next_value::<u64>()?),
                    }
                }
                let location = location.ok_or_else(|| A::Error::missing_field("location"))?;
                StartPoint::from_parts(location, offset).map_err(A::Error::custom)
            }
        }

        deserializer.deserialize_map(StartPointVisitor)
    }
}

/// A validated pipeline, in the form the engine runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelinePlan {
    pub name: String,
    pub source_stream: String,
    pub triggers: TriggerSet,
    pub start_point: StartPoint,
    pub max_parallel: u32,
    /// In document order; a stage's index is its bit in stage masks.
    pub stages: Vec<PlannedStage>,
    /// Every stage index once, each after all of its dependencies; among
    /// stages ready together, document order.
    pub topo_order: Vec<u8>,
}

/// One stage of a [`PipelinePlan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedStage {
    pub name: String,
    /// Indices of the stages this one waits for, in the order listed.
    pub dependencies: Vec<u8>,
    /// Indices of the stages that wait for this one, ascending.
    pub dependents: Vec<u8>,
    /// Bits of `dependencies`: the stage is ready when `done & deps_mask ==
    /// deps_mask`.
    pub deps_mask: u64,
    /// Bits of `dependents`: the stages to look at when this one completes.
    pub dependents_mask: u64,
    pub retry: RetryPolicy,
    pub ack_timeout_ms: u64,
}

impl PipelinePlan {
    /// The index (bit) of the stage with this name.
    pub fn stage_index(&self, name: &str) -> Option<u8> {
        let index = self.stages.iter().position(|s| s.name == name)?;
        u8::try_from(index).ok()
    }

    /// Bits of the stages without dependencies: ready as soon as an
    /// execution starts.
    pub fn roots_mask(&self) -> u64 {
        self.mask(|s| s.dependencies.is_empty())
    }

    /// Bits of every stage: an execution is complete when `done` equals it.
    pub fn all_mask(&self) -> u64 {
        self.mask(|_| true)
    }

    fn mask(&self, keep: impl Fn(&PlannedStage) -> bool) -> u64 {
        self.stages
            .iter()
            .enumerate()
            .filter(|(_, s)| keep(s))
            .fold(0, |mask, (i, _)| mask | (1u64 << i))
    }
}

#[cfg(test)]
mod tests;
