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

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::error::{ConfigError, Problem, ResourceKind};
use super::name::{check_resource_name, check_stage_name};
use super::trigger::TriggerSet;

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

/// Checks the value of one retry-or-timeout field.
fn check_range(
    errors: &mut Vec<ConfigError>,
    path: String,
    value: Option<u64>,
    min: u64,
    max: u64,
) {
    if let Some(value) = value
        && !(min..=max).contains(&value)
    {
        errors.push(ConfigError::new(
            path,
            Problem::OutOfRange { value, min, max },
        ));
    }
}

fn check_retry(
    errors: &mut Vec<ConfigError>,
    prefix: &str,
    spec: Option<&RetrySpec>,
    resolved: RetryPolicy,
) {
    let Some(spec) = spec else { return };
    check_range(
        errors,
        format!("{prefix}.initialDelayMs"),
        spec.initial_delay_ms,
        0,
        DELAY_MS_MAX,
    );
    check_range(
        errors,
        format!("{prefix}.maxDelayMs"),
        spec.max_delay_ms,
        1,
        DELAY_MS_MAX,
    );
    check_range(
        errors,
        format!("{prefix}.maxAttempts"),
        spec.max_attempts.map(u64::from),
        1,
        MAX_ATTEMPTS_MAX.into(),
    );
    if resolved.initial_delay_ms > resolved.max_delay_ms {
        errors.push(ConfigError::new(
            prefix,
            Problem::Invalid {
                reason: format!(
                    "initialDelayMs ({}) is above maxDelayMs ({}); the first delay cannot exceed the longest",
                    resolved.initial_delay_ms, resolved.max_delay_ms
                ),
            },
        ));
    }
}

/// What the graph checks found.
struct Graph {
    /// Per stage, dependency indices (first stage of a name when names
    /// repeat; unknown names left out).
    deps: Vec<Vec<usize>>,
}

impl Graph {
    /// Kahn's algorithm, lowest index first among ready stages: the
    /// topological order, and the stages that never became ready (those on
    /// or behind a cycle).
    fn order(&self) -> (Vec<usize>, Vec<usize>) {
        let n = self.deps.len();
        let mut placed = vec![false; n];
        let mut order = Vec::with_capacity(n);
        'outer: while order.len() < n {
            for i in 0..n {
                if !placed[i] && self.deps[i].iter().all(|&d| placed[d]) {
                    placed[i] = true;
                    order.push(i);
                    continue 'outer;
                }
            }
            break;
        }
        let left = (0..n).filter(|&i| !placed[i]).collect();
        (order, left)
    }

    /// One cycle among `left` (non-empty, every member having a dependency
    /// in `left`), in data-flow order, starting at its first stage in
    /// document order.
    fn cycle(&self, left: &[usize]) -> Vec<usize> {
        let Some(&start) = left.first() else {
            return Vec::new();
        };
        let mut walk: Vec<usize> = Vec::new();
        let mut current = start;
        loop {
            if let Some(pos) = walk.iter().position(|&s| s == current) {
                // `walk[pos..]` is the cycle in dependency direction: each
                // stage depends on the next, the last on the first.
                let mut cycle: Vec<usize> = walk[pos..].to_vec();
                cycle.reverse();
                let first = cycle
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, s)| **s)
                    .map_or(0, |(i, _)| i);
                cycle.rotate_left(first);
                return cycle;
            }
            walk.push(current);
            match self.deps[current].iter().find(|d| left.contains(d)) {
                Some(&next) => current = next,
                None => return Vec::new(),
            }
        }
    }
}

impl PipelineSpec {
    /// Every problem, in field order; empty when valid. `stream_exists`
    /// says whether `sourceStream` names a stream the server has; pass
    /// `|_| true` to leave that check for later.
    pub fn errors(&self, stream_exists: impl Fn(&str) -> bool) -> Vec<ConfigError> {
        self.analyze(stream_exists).0
    }

    /// Validates and plans; the error is the first of [`Self::errors`].
    pub fn plan(&self, stream_exists: impl Fn(&str) -> bool) -> Result<PipelinePlan, ConfigError> {
        let (errors, plan) = self.analyze(stream_exists);
        match (errors.into_iter().next(), plan) {
            (Some(error), _) => Err(error),
            (None, Some(plan)) => Ok(plan),
            (None, None) => unreachable!("a pipeline without a plan has errors"),
        }
    }

    fn analyze(
        &self,
        stream_exists: impl Fn(&str) -> bool,
    ) -> (Vec<ConfigError>, Option<PipelinePlan>) {
        let mut errors = Vec::new();
        if let Err(reason) = check_resource_name(&self.name) {
            errors.push(ConfigError::new(
                "metadata.name",
                Problem::InvalidName {
                    name: self.name.clone(),
                    reason,
                },
            ));
        }
        if let Err(reason) = check_resource_name(&self.source_stream) {
            errors.push(ConfigError::new(
                "spec.sourceStream",
                Problem::InvalidName {
                    name: self.source_stream.clone(),
                    reason,
                },
            ));
        } else if !stream_exists(&self.source_stream) {
            errors.push(ConfigError::new(
                "spec.sourceStream",
                Problem::UnknownStream {
                    name: self.source_stream.clone(),
                },
            ));
        }
        errors.extend(TriggerSet::check(&self.triggers));
        check_range(
            &mut errors,
            "spec.maxParallel".into(),
            Some(self.max_parallel.into()),
            1,
            MAX_PARALLEL_MAX.into(),
        );
        let pipeline_retry = RetryPolicy::DEFAULT.overlay(self.retry.as_ref());
        check_retry(
            &mut errors,
            "spec.retry",
            self.retry.as_ref(),
            pipeline_retry,
        );
        check_range(
            &mut errors,
            "spec.ackTimeoutMs".into(),
            self.ack_timeout_ms,
            1,
            DELAY_MS_MAX,
        );

        let graph = self.check_stages(&mut errors, pipeline_retry);
        let errors: Vec<ConfigError> = errors
            .into_iter()
            .map(|e| e.in_resource(ResourceKind::Pipeline, Some(&self.name)))
            .collect();
        let plan = match graph {
            Some((graph, order)) if errors.is_empty() => {
                Some(self.build_plan(&graph, &order, pipeline_retry))
            }
            _ => None,
        };
        (errors, plan)
    }

    /// Stage names, dependencies, per-stage settings and the graph. Returns
    /// the graph and a topological order when the graph is sound.
    fn check_stages(
        &self,
        errors: &mut Vec<ConfigError>,
        pipeline_retry: RetryPolicy,
    ) -> Option<(Graph, Vec<usize>)> {
        if self.stages.is_empty() {
            errors.push(ConfigError::new("spec.stages", Problem::NoStages));
            return None;
        }
        if self.stages.len() > STAGES_MAX {
            errors.push(ConfigError::new(
                "spec.stages",
                Problem::TooManyStages {
                    count: self.stages.len(),
                    max: STAGES_MAX,
                },
            ));
            return None;
        }
        let mut index: HashMap<&str, usize> = HashMap::with_capacity(self.stages.len());
        for (i, stage) in self.stages.iter().enumerate() {
            if let Err(reason) = check_stage_name(&stage.name) {
                errors.push(ConfigError::new(
                    format!("spec.stages[{i}].name"),
                    Problem::InvalidName {
                        name: stage.name.clone(),
                        reason,
                    },
                ));
            }
            if let Some(&first_index) = index.get(stage.name.as_str()) {
                errors.push(ConfigError::new(
                    format!("spec.stages[{i}].name"),
                    Problem::DuplicateStage {
                        name: stage.name.clone(),
                        first_index,
                    },
                ));
            } else {
                index.insert(&stage.name, i);
            }
            let prefix = format!("spec.stages[{i}]");
            check_retry(
                errors,
                &format!("{prefix}.retry"),
                stage.retry.as_ref(),
                pipeline_retry.overlay(stage.retry.as_ref()),
            );
            check_range(
                errors,
                format!("{prefix}.ackTimeoutMs"),
                stage.ack_timeout_ms,
                1,
                DELAY_MS_MAX,
            );
        }

        let mut deps = Vec::with_capacity(self.stages.len());
        let mut sound = true;
        for (i, stage) in self.stages.iter().enumerate() {
            let mut resolved: Vec<usize> = Vec::with_capacity(stage.dependencies.len());
            for (j, dependency) in stage.dependencies.iter().enumerate() {
                let path = format!("spec.stages[{i}].dependencies[{j}]");
                match index.get(dependency.as_str()) {
                    None => {
                        sound = false;
                        errors.push(ConfigError::new(
                            path,
                            Problem::UnknownDependency {
                                name: dependency.clone(),
                            },
                        ));
                    }
                    Some(d) if resolved.contains(d) => {
                        sound = false;
                        errors.push(ConfigError::new(
                            path,
                            Problem::DuplicateDependency {
                                name: dependency.clone(),
                            },
                        ));
                    }
                    Some(&d) => resolved.push(d),
                }
            }
            deps.push(resolved);
        }
        let graph = Graph { deps };

        if graph.deps.iter().all(|d| !d.is_empty()) {
            sound = false;
            errors.push(ConfigError::new("spec.stages", Problem::NoRootStage));
        }
        let (order, left) = graph.order();
        let cycle = graph.cycle(&left);
        if let (Some(&first), Some(&last)) = (cycle.first(), cycle.last()) {
            sound = false;
            // `first` depends on `last`, which closes the loop.
            let j = self.stages[first]
                .dependencies
                .iter()
                .position(|d| index.get(d.as_str()) == Some(&last))
                .unwrap_or(0);
            let mut stages: Vec<String> =
                cycle.iter().map(|&s| self.stages[s].name.clone()).collect();
            stages.push(self.stages[first].name.clone());
            errors.push(ConfigError::new(
                format!("spec.stages[{first}].dependencies[{j}]"),
                Problem::Cycle { stages },
            ));
        }
        (sound && index.len() == self.stages.len()).then_some((graph, order))
    }

    fn build_plan(
        &self,
        graph: &Graph,
        order: &[usize],
        pipeline_retry: RetryPolicy,
    ) -> PipelinePlan {
        // Indices are below STAGES_MAX (64), checked before a graph is built.
        let small = |i: usize| u8::try_from(i).unwrap_or(u8::MAX);
        let ack_timeout_ms = self.ack_timeout_ms.unwrap_or(ACK_TIMEOUT_MS_DEFAULT);
        let mut stages: Vec<PlannedStage> = self
            .stages
            .iter()
            .zip(&graph.deps)
            .map(|(stage, deps)| PlannedStage {
                name: stage.name.clone(),
                dependencies: deps.iter().map(|&d| small(d)).collect(),
                dependents: Vec::new(),
                deps_mask: deps.iter().fold(0, |m, &d| m | (1u64 << d)),
                dependents_mask: 0,
                retry: pipeline_retry.overlay(stage.retry.as_ref()),
                ack_timeout_ms: stage.ack_timeout_ms.unwrap_or(ack_timeout_ms),
            })
            .collect();
        for (i, deps) in graph.deps.iter().enumerate() {
            for &d in deps {
                stages[d].dependents.push(small(i));
                stages[d].dependents_mask |= 1u64 << i;
            }
        }
        let plan = PipelinePlan {
            name: self.name.clone(),
            source_stream: self.source_stream.clone(),
            triggers: TriggerSet::new(&self.triggers).unwrap_or_default(),
            start_point: self.start_point,
            max_parallel: self.max_parallel,
            stages,
            topo_order: order.iter().map(|&i| small(i)).collect(),
        };
        assert_eq!(plan.topo_order.len(), plan.stages.len());
        assert_ne!(plan.roots_mask(), 0);
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(stages: Vec<StageSpec>) -> PipelineSpec {
        PipelineSpec {
            name: "service-creation".into(),
            source_stream: "events".into(),
            triggers: vec!["service.created".into()],
            start_point: StartPoint::Beginning,
            max_parallel: 50,
            retry: None,
            ack_timeout_ms: None,
            stages,
        }
    }

    fn seed_stages() -> Vec<StageSpec> {
        vec![
            StageSpec::new("deploy-service", &[]),
            StageSpec::new("setup-billing", &["deploy-service"]),
            StageSpec::new("setup-monitoring", &["deploy-service"]),
            StageSpec::new("notify-user", &["deploy-service"]),
            StageSpec::new(
                "sync",
                &[
                    "deploy-service",
                    "setup-billing",
                    "setup-monitoring",
                    "notify-user",
                ],
            ),
        ]
    }

    fn only_events(stream: &str) -> bool {
        stream == "events"
    }

    /// The single error of `spec`, as text.
    fn error_of(spec: &PipelineSpec) -> String {
        let errors = spec.errors(only_events);
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert!(spec.plan(only_events).is_err());
        errors[0].to_string()
    }

    #[test]
    fn seed_dag_plans_with_indices_masks_and_topological_order() {
        let plan = spec(seed_stages()).plan(only_events).unwrap();
        assert_eq!(plan.stages.len(), 5);
        assert_eq!(plan.stage_index("sync"), Some(4));
        assert_eq!(plan.stage_index("nope"), None);
        assert_eq!(plan.stages[4].dependencies, vec![0, 1, 2, 3]);
        assert_eq!(plan.stages[4].deps_mask, 0b01111);
        assert_eq!(plan.stages[0].dependents, vec![1, 2, 3, 4]);
        assert_eq!(plan.stages[0].dependents_mask, 0b11110);
        assert_eq!(plan.stages[1].dependents, vec![4]);
        assert_eq!(plan.roots_mask(), 0b00001);
        assert_eq!(plan.all_mask(), 0b11111);
        assert_eq!(plan.topo_order, vec![0, 1, 2, 3, 4]);
        assert!(plan.triggers.matches("service.created"));
        assert!(!plan.triggers.matches("service.deleted"));
        for stage in &plan.stages {
            assert_eq!(stage.retry, RetryPolicy::DEFAULT);
            assert_eq!(stage.ack_timeout_ms, ACK_TIMEOUT_MS_DEFAULT);
        }
    }

    #[test]
    fn topological_order_puts_dependencies_first_even_when_listed_later() {
        let plan = spec(vec![
            StageSpec::new("c", &["b"]),
            StageSpec::new("b", &["a"]),
            StageSpec::new("a", &[]),
            StageSpec::new("d", &[]),
        ])
        .plan(only_events)
        .unwrap();
        assert_eq!(plan.topo_order, vec![2, 1, 0, 3]);
        assert_eq!(plan.roots_mask(), 0b1100);
    }

    #[test]
    fn sixty_four_stages_fit_and_sixty_five_do_not() {
        let mut stages: Vec<StageSpec> = (0..64)
            .map(|i| StageSpec::new(&format!("s{i}"), &[]))
            .collect();
        stages[63].dependencies = vec!["s0".into()];
        let plan = spec(stages.clone()).plan(only_events).unwrap();
        assert_eq!(plan.all_mask(), u64::MAX);
        assert_eq!(plan.stages[0].dependents_mask, 1u64 << 63);
        stages.push(StageSpec::new("s64", &[]));
        assert_eq!(
            error_of(&spec(stages)),
            "Pipeline \"service-creation\": spec.stages: 65 stages; a pipeline may have at most 64"
        );
    }

    #[test]
    fn duplicate_stage_name() {
        let mut stages = seed_stages();
        stages[2].name = "setup-billing".into();
        stages[4].dependencies.remove(2);
        assert_eq!(
            error_of(&spec(stages)),
            "Pipeline \"service-creation\": spec.stages[2].name: duplicate stage name \"setup-billing\" (first used by spec.stages[1]); stage names must be unique"
        );
    }

    #[test]
    fn invalid_stage_name() {
        let mut stages = seed_stages();
        stages.push(StageSpec::new("Bad_Stage", &["sync"]));
        let message = error_of(&spec(stages));
        assert!(
            message.starts_with(
                "Pipeline \"service-creation\": spec.stages[5].name: invalid name \"Bad_Stage\""
            ),
            "{message}"
        );
        let mut stages = seed_stages();
        stages.push(StageSpec::new("a.b", &[]));
        assert!(error_of(&spec(stages)).contains("spec.stages[5].name: invalid name \"a.b\""));
    }

    #[test]
    fn unknown_dependency() {
        let mut stages = seed_stages();
        stages[2].dependencies = vec!["deploy".into()];
        assert_eq!(
            error_of(&spec(stages)),
            "Pipeline \"service-creation\": spec.stages[2].dependencies[0]: unknown stage \"deploy\"; dependencies must name stages of this pipeline"
        );
    }

    #[test]
    fn duplicate_dependency() {
        let mut stages = seed_stages();
        stages[4].dependencies.push("notify-user".into());
        let message = error_of(&spec(stages));
        assert!(
            message.starts_with("Pipeline \"service-creation\": spec.stages[4].dependencies[4]: stage \"notify-user\" is listed twice"),
            "{message}"
        );
    }

    #[test]
    fn cycle_names_its_stages_in_order() {
        let stages = vec![
            StageSpec::new("root", &[]),
            StageSpec::new("a", &["root", "c"]),
            StageSpec::new("b", &["a"]),
            StageSpec::new("c", &["b"]),
            StageSpec::new("after", &["c"]),
        ];
        let errors = spec(stages).errors(only_events);
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert_eq!(
            errors[0].problem,
            Problem::Cycle {
                stages: vec!["a".into(), "b".into(), "c".into(), "a".into()]
            }
        );
        assert_eq!(
            errors[0].to_string(),
            "Pipeline \"service-creation\": spec.stages[1].dependencies[1]: dependency cycle: a -> b -> c -> a; break the cycle by removing one of these dependencies"
        );
    }

    #[test]
    fn self_dependency_is_a_cycle() {
        let stages = vec![
            StageSpec::new("root", &[]),
            StageSpec::new("loop", &["loop"]),
        ];
        let message = error_of(&spec(stages));
        assert!(
            message.starts_with("Pipeline \"service-creation\": spec.stages[1].dependencies[0]: dependency cycle: loop -> loop"),
            "{message}"
        );
    }

    #[test]
    fn no_root_stage() {
        let stages = vec![StageSpec::new("a", &["b"]), StageSpec::new("b", &["a"])];
        let errors = spec(stages).errors(only_events);
        let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(messages.len(), 2, "{messages:#?}");
        assert!(
            messages[0].starts_with("Pipeline \"service-creation\": spec.stages: no root stage")
        );
        assert!(
            messages[1].contains("spec.stages[0].dependencies[0]: dependency cycle: a -> b -> a")
        );
    }

    #[test]
    fn no_stages() {
        assert_eq!(
            error_of(&spec(Vec::new())),
            "Pipeline \"service-creation\": spec.stages: a pipeline needs at least one stage"
        );
    }

    #[test]
    fn max_parallel_zero_and_too_large() {
        let mut s = spec(seed_stages());
        s.max_parallel = 0;
        assert_eq!(
            error_of(&s),
            "Pipeline \"service-creation\": spec.maxParallel: 0 is out of range; allowed: 1 to 65536"
        );
        s.max_parallel = MAX_PARALLEL_MAX + 1;
        assert!(error_of(&s).contains("spec.maxParallel"));
    }

    #[test]
    fn unknown_source_stream() {
        let mut s = spec(seed_stages());
        s.source_stream = "orders".into();
        assert_eq!(
            error_of(&s),
            "Pipeline \"service-creation\": spec.sourceStream: unknown stream \"orders\"; declare it with `kind: Stream` first"
        );
        assert!(s.plan(|_| true).is_ok(), "the check can be left for later");
        s.source_stream = "Orders!".into();
        assert!(
            s.plan(|_| true)
                .unwrap_err()
                .to_string()
                .contains("spec.sourceStream: invalid name")
        );
    }

    #[test]
    fn invalid_pipeline_name_and_trigger() {
        let mut s = spec(seed_stages());
        s.name = "Service Creation".into();
        assert!(
            error_of(&s).starts_with("Pipeline \"Service Creation\": metadata.name: invalid name")
        );
        let mut s = spec(seed_stages());
        s.triggers = vec!["service.>.x".into()];
        assert!(error_of(&s).starts_with(
            "Pipeline \"service-creation\": spec.triggers[0]: invalid trigger \"service.>.x\""
        ));
    }

    #[test]
    fn all_errors_are_reported_together() {
        let mut s = spec(vec![
            StageSpec::new("a", &["ghost"]),
            StageSpec::new("a", &[]),
        ]);
        s.max_parallel = 0;
        s.source_stream = "nope".into();
        let paths: Vec<String> = s.errors(only_events).into_iter().map(|e| e.path).collect();
        assert_eq!(
            paths,
            vec![
                "spec.sourceStream",
                "spec.maxParallel",
                "spec.stages[1].name",
                "spec.stages[0].dependencies[0]"
            ]
        );
    }

    #[test]
    fn retry_defaults_overlay_and_limits() {
        let mut s = spec(seed_stages());
        s.retry = Some(RetrySpec {
            initial_delay_ms: Some(100),
            max_delay_ms: None,
            max_attempts: Some(3),
        });
        s.ack_timeout_ms = Some(1000);
        s.stages[1].retry = Some(RetrySpec {
            max_attempts: Some(20),
            ..RetrySpec::default()
        });
        s.stages[1].ack_timeout_ms = Some(5);
        let plan = s.plan(only_events).unwrap();
        assert_eq!(
            plan.stages[0].retry,
            RetryPolicy {
                initial_delay_ms: 100,
                max_delay_ms: 30_000,
                max_attempts: 3
            }
        );
        assert_eq!(plan.stages[0].ack_timeout_ms, 1000);
        assert_eq!(
            plan.stages[1].retry,
            RetryPolicy {
                initial_delay_ms: 100,
                max_delay_ms: 30_000,
                max_attempts: 20
            }
        );
        assert_eq!(plan.stages[1].ack_timeout_ms, 5);

        s.stages[1].retry = Some(RetrySpec {
            max_attempts: Some(0),
            ..RetrySpec::default()
        });
        assert_eq!(
            s.plan(only_events).unwrap_err().path,
            "spec.stages[1].retry.maxAttempts"
        );
        s.stages[1].retry = Some(RetrySpec {
            max_delay_ms: Some(50),
            ..RetrySpec::default()
        });
        let e = s.plan(only_events).unwrap_err();
        assert_eq!(e.path, "spec.stages[1].retry");
        assert!(
            e.to_string()
                .contains("initialDelayMs (100) is above maxDelayMs (50)"),
            "{e}"
        );
        s.stages[1].retry = None;
        s.stages[1].ack_timeout_ms = Some(0);
        assert_eq!(
            s.plan(only_events).unwrap_err().path,
            "spec.stages[1].ackTimeoutMs"
        );
        s.stages[1].ack_timeout_ms = None;
        s.ack_timeout_ms = Some(DELAY_MS_MAX + 1);
        assert_eq!(s.plan(only_events).unwrap_err().path, "spec.ackTimeoutMs");
        s.ack_timeout_ms = None;
        s.retry = Some(RetrySpec {
            initial_delay_ms: Some(40_000),
            ..RetrySpec::default()
        });
        assert_eq!(s.plan(only_events).unwrap_err().path, "spec.retry");
    }

    #[test]
    fn retry_delay_doubles_and_caps() {
        let p = RetryPolicy::DEFAULT;
        assert_eq!(p.delay_ms(1), 500);
        assert_eq!(p.delay_ms(2), 1000);
        assert_eq!(p.delay_ms(3), 2000);
        assert_eq!(p.delay_ms(7), 30_000);
        assert_eq!(p.delay_ms(u32::MAX), 30_000);
        assert_eq!(p.delay_ms(0), 500);
    }

    #[test]
    fn start_point_converts_to_wire() {
        assert_eq!(
            hadron_wire::StartPoint::from(StartPoint::Offset(9)),
            hadron_wire::StartPoint::Offset(9)
        );
        assert_eq!(
            hadron_wire::StartPoint::from(StartPoint::default()),
            hadron_wire::StartPoint::Beginning
        );
    }
}
