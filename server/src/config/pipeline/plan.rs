//! [`PipelineSpec::plan`]: the checks of a spec, field by field and then
//! its stage graph (names, dependencies, a root, no cycle), and the
//! [`PipelinePlan`] built from a spec that passes them. Errors come in
//! field order, so the first one (what `plan` returns) is stable.

use std::collections::HashMap;

use super::*;
use crate::config::error::{ConfigError, Problem, ResourceKind};
use crate::config::name::{check_resource_name, check_stage_name};

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
        let index = self.check_stage_fields(errors, pipeline_retry);
        let (graph, mut sound) = self.resolve_dependencies(errors, &index);
        if graph.deps.iter().all(|d| !d.is_empty()) {
            sound = false;
            errors.push(ConfigError::new("spec.stages", Problem::NoRootStage));
        }
        let (order, left) = graph.order();
        if let Some(error) = self.cycle_error(&graph, &left, &index) {
            sound = false;
            errors.push(error);
        }
        (sound && index.len() == self.stages.len()).then_some((graph, order))
    }

    /// Each stage's name (valid, not repeated) and its own retry and ack
    /// timeout settings. Returns the index of each name's first stage.
    fn check_stage_fields(
        &self,
        errors: &mut Vec<ConfigError>,
        pipeline_retry: RetryPolicy,
    ) -> HashMap<&str, usize> {
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
        index
    }

    /// Resolves every dependency to a stage index. The graph leaves out
    /// unknown and repeated names; the flag is false when there were any.
    fn resolve_dependencies(
        &self,
        errors: &mut Vec<ConfigError>,
        index: &HashMap<&str, usize>,
    ) -> (Graph, bool) {
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
        (Graph { deps }, sound)
    }

    /// The error naming one cycle among `left`, the stages that never
    /// became ready, if there is one.
    fn cycle_error(
        &self,
        graph: &Graph,
        left: &[usize],
        index: &HashMap<&str, usize>,
    ) -> Option<ConfigError> {
        let cycle = graph.cycle(left);
        let (&first, &last) = (cycle.first()?, cycle.last()?);
        // `first` depends on `last`, which closes the loop.
        let j = self.stages[first]
            .dependencies
            .iter()
            .position(|d| index.get(d.as_str()) == Some(&last))
            .unwrap_or(0);
        let mut stages: Vec<String> = cycle.iter().map(|&s| self.stages[s].name.clone()).collect();
        stages.push(self.stages[first].name.clone());
        Some(ConfigError::new(
            format!("spec.stages[{first}].dependencies[{j}]"),
            Problem::Cycle { stages },
        ))
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
