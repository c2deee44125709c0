//! Status of a pipeline on one partition.

use super::PipelineRun;
use crate::shard::clock::Clock;
use hadron_engine::storage::Storage;

/// Status of a pipeline on one partition.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunStatus {
    pub partition: u32,
    pub cursor: u64,
    pub active: usize,
    pub completed: u64,
    pub failed: usize,
    pub stages: Vec<StageStatus>,
    pub unfinished: Vec<ExecutionStatus>,
    pub failed_executions: Vec<FailedStatus>,
    /// Whether this node runs the pipeline on this partition (a replicated
    /// source: it leads the outputs group and rebuilt the run; always
    /// true otherwise): only then are the counts above the run's own.
    pub leading: bool,
    /// The outputs group on this node, when the source is replicated
    /// (only its leader runs the pipeline; a follower's counts are 0).
    pub replication: Option<crate::shard::partition::replica::ReplicaStatus>,
}

/// Per stage on one partition.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StageStatus {
    pub name: String,
    pub completed: u64,
    pub in_flight: u64,
    pub waiting: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    pub failed: u64,
}

/// One unfinished execution.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExecutionStatus {
    pub offset: u64,
    pub done: Vec<String>,
    pub in_flight: Vec<String>,
}

/// One failed execution.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FailedStatus {
    pub offset: u64,
    pub stage: String,
    pub error: String,
}

impl<S: Storage + Clone + 'static, C: Clock> PipelineRun<S, C> {
    /// Whether executions still need work (live, queued or failed).
    pub fn busy(&self) -> usize {
        let st = self.state.borrow();
        self.index.borrow().unfinished() + st.failed.len() + st.retry_queue.len()
    }

    /// Status of this partition's part of the pipeline.
    pub fn status(&self) -> RunStatus {
        let st = self.state.borrow();
        let index = self.index.borrow();
        let names = |mask: u64| -> Vec<String> {
            self.plan
                .stages
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, s)| s.name.clone())
                .collect()
        };
        let mut stages: Vec<StageStatus> = st
            .stats
            .iter()
            .map(|s| StageStatus {
                name: s.name.clone(),
                completed: s.completed,
                errors: s.errors,
                last_error: s.last_error.clone(),
                failed: s.failed,
                ..StageStatus::default()
            })
            .collect();
        let mut unfinished = Vec::new();
        for e in index.executions() {
            for (i, stage) in stages.iter_mut().enumerate() {
                let bit = 1u64 << i;
                if e.in_flight & bit != 0 {
                    stage.in_flight += 1;
                } else if e.done & bit == 0 {
                    stage.waiting += 1;
                }
            }
            unfinished.push(ExecutionStatus {
                offset: e.root,
                done: names(e.done),
                in_flight: names(e.in_flight),
            });
        }
        RunStatus {
            partition: self.source.partition,
            cursor: st.cursor,
            active: index.unfinished() + st.retry_queue.len(),
            completed: st.completed,
            failed: st.failed.len(),
            stages,
            unfinished,
            failed_executions: st
                .failed
                .iter()
                .map(|(&offset, f)| FailedStatus {
                    offset,
                    stage: f.stage.clone(),
                    error: f.error.clone(),
                })
                .collect(),
            leading: self.active.get(),
            replication: self.replication(),
        }
    }
}
