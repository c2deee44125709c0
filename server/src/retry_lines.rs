//! The lines a `PipelineRetry` of every failed execution answers (the
//! summary of its `ApplyOk`), written by the server and read back by
//! `hadron pipeline retry`, which asks every node of a cluster and merges
//! their answers. One module, so both sides agree on the text.
//!
//! ```text
//! pipeline/NAME partition P offset O retried              led here: O runs again
//! pipeline/NAME partition P: no failed executions         led here, none failed
//! pipeline/NAME partition P: led by node X, not retried here
//! pipeline/NAME partition P: no leader known, not retried here
//! pipeline/NAME partition P: no replica here
//! pipeline/NAME partition P: not retried: ERROR           led here, its retry failed
//! ```
//!
//! A single node (no cluster) answers only the first form, one line per
//! execution retried, as before clusters. A node of a cluster answers a
//! line for every partition of the pipeline, so that a reader that asked
//! every node knows, per partition, whether its leader answered.

use std::fmt;

/// What one node did about one partition of a pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryLine {
    /// This node leads the run: the failed execution rooted at `offset`
    /// was queued to run again.
    Retried { partition: u32, offset: u64 },
    /// This node leads the run and no execution of it had failed.
    NoneFailed { partition: u32 },
    /// Another node leads the run (`leader`, when known): nothing done
    /// here.
    LedElsewhere { partition: u32, leader: Option<u64> },
    /// This node holds no replica of the partition.
    NotHere { partition: u32 },
    /// This node leads the run and its retry failed with `error` (the
    /// executions retried before the failure have their own lines).
    Failed { partition: u32, error: String },
}

impl RetryLine {
    pub fn partition(&self) -> u32 {
        match self {
            RetryLine::Retried { partition, .. }
            | RetryLine::NoneFailed { partition }
            | RetryLine::LedElsewhere { partition, .. }
            | RetryLine::NotHere { partition }
            | RetryLine::Failed { partition, .. } => *partition,
        }
    }

    /// Whether the node that wrote it led the run (it did what there was
    /// to do for the partition, or failed doing it).
    pub fn by_leader(&self) -> bool {
        matches!(
            self,
            RetryLine::Retried { .. } | RetryLine::NoneFailed { .. } | RetryLine::Failed { .. }
        )
    }

    /// The line, for `pipeline`.
    pub fn to_line(&self, pipeline: &str) -> String {
        Shown(pipeline, self).to_string()
    }

    /// Reads a line of `pipeline` back; `None` for a line of another form.
    pub fn parse(pipeline: &str, line: &str) -> Option<RetryLine> {
        let rest = line
            .strip_prefix("pipeline/")?
            .strip_prefix(pipeline)?
            .strip_prefix(" partition ")?;
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        let partition: u32 = rest[..digits].parse().ok()?;
        let rest = &rest[digits..];
        if let Some(offset) = rest
            .strip_prefix(" offset ")
            .and_then(|r| r.strip_suffix(" retried"))
        {
            let offset = offset.parse().ok()?;
            return Some(RetryLine::Retried { partition, offset });
        }
        let rest = rest.strip_prefix(": ")?;
        if let Some(error) = rest.strip_prefix("not retried: ") {
            let error = error.to_owned();
            return Some(RetryLine::Failed { partition, error });
        }
        match rest {
            "no failed executions" => return Some(RetryLine::NoneFailed { partition }),
            "no replica here" => return Some(RetryLine::NotHere { partition }),
            "no leader known, not retried here" => {
                return Some(RetryLine::LedElsewhere {
                    partition,
                    leader: None,
                });
            }
            _ => {}
        }
        let leader = rest
            .strip_prefix("led by node ")?
            .strip_suffix(", not retried here")?
            .parse()
            .ok()?;
        Some(RetryLine::LedElsewhere {
            partition,
            leader: Some(leader),
        })
    }
}

struct Shown<'a>(&'a str, &'a RetryLine);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Shown(pipeline, line) = self;
        write!(f, "pipeline/{pipeline} partition {}", line.partition())?;
        match line {
            RetryLine::Retried { offset, .. } => write!(f, " offset {offset} retried"),
            RetryLine::NoneFailed { .. } => write!(f, ": no failed executions"),
            RetryLine::LedElsewhere {
                leader: Some(id), ..
            } => write!(f, ": led by node {id}, not retried here"),
            RetryLine::LedElsewhere { leader: None, .. } => {
                write!(f, ": no leader known, not retried here")
            }
            RetryLine::NotHere { .. } => write!(f, ": no replica here"),
            RetryLine::Failed { error, .. } => write!(f, ": not retried: {error}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_retry_line_reads_back_as_written() {
        let lines = [
            RetryLine::Retried {
                partition: 2,
                offset: 41,
            },
            RetryLine::NoneFailed { partition: 0 },
            RetryLine::LedElsewhere {
                partition: 11,
                leader: Some(3),
            },
            RetryLine::LedElsewhere {
                partition: 1,
                leader: None,
            },
            RetryLine::NotHere { partition: 7 },
            RetryLine::Failed {
                partition: 4,
                error: "partition 4: disk full: no space left".into(),
            },
        ];
        for line in lines {
            let text = line.to_line("svc-2");
            assert_eq!(RetryLine::parse("svc-2", &text), Some(line), "{text}");
        }
        assert_eq!(
            RetryLine::Retried {
                partition: 2,
                offset: 41
            }
            .to_line("p"),
            "pipeline/p partition 2 offset 41 retried"
        );
    }

    #[test]
    fn a_line_of_another_form_or_pipeline_is_not_read() {
        for line in [
            "pipeline/p: no failed executions",
            "pipeline/q partition 1 offset 2 retried",
            "pipeline/p partition x offset 2 retried",
            "pipeline/p partition 1 offset 2 retried twice",
            "pipeline/p partition 1: led by node two, not retried here",
            "pipeline/p partition 1: something else",
            "",
        ] {
            assert_eq!(RetryLine::parse("p", line), None, "{line}");
        }
    }
}
