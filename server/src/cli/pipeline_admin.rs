//! `hadron pipeline status` and `hadron pipeline retry` over every node
//! of `--url` (one node, or a cluster's nodes separated by commas).
//!
//! In a cluster only the leader of a partition's outputs group runs the
//! pipeline there; a follower's counts for it are 0, and it retries
//! nothing of it. So both commands ask every node listed, each on its own:
//! - **status** takes each partition's run from the node that runs it
//!   (`leading` in the status document; the highest term when two claim
//!   it) and sums the counts over those runs. A partition that no node
//!   asked runs is listed under `unled`, and counted nowhere.
//! - **retry** of every failed execution: each node retries the runs it
//!   leads and answers a line per partition (`hadron_server::retry_lines`).
//!   The lines of each partition's leader are printed; a partition no
//!   leader answered for is printed with what the others said, and the
//!   command fails. A node that does not answer is reported on stderr.
//!
//! A single node answers for every partition itself, so its output is
//! what it was before clusters.

use std::collections::BTreeMap;

use hadron_server::retry_lines::RetryLine;
use serde_json::{Value, json};

use super::cluster::{NodeStatus, node_status, node_urls};

/// `pipeline`'s status over the nodes of `urls`: the object one node's
/// status document holds for it, with each partition taken from the node
/// that runs it and the totals summed over those.
pub(super) async fn merged_status(urls: &str, pipeline: &str) -> Result<Value, String> {
    let list = node_urls(urls)?;
    let nodes = futures::future::join_all(list.iter().map(|u| node_status(u))).await;
    let answered = answered(&nodes, "pipeline status")?;
    let found: Vec<&Value> = answered
        .iter()
        .filter_map(|doc| {
            doc["pipelines"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["name"] == pipeline)
        })
        .collect();
    if found.is_empty() {
        return Err(format!("no pipeline named {pipeline:?}"));
    }
    Ok(merge_status(&found))
}

/// The documents of the nodes that answered; the others reported on
/// stderr. Fails when none did (with a lone node's own error).
fn answered<'a>(nodes: &'a [NodeStatus], command: &str) -> Result<Vec<&'a Value>, String> {
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for node in nodes {
        match &node.doc {
            Ok(doc) => docs.push(doc),
            Err(e) => errors.push((node.url.as_str(), e.as_str())),
        }
    }
    match (docs.is_empty(), errors.as_slice()) {
        (true, [(_, e)]) => return Err((*e).to_owned()),
        (true, _) => {
            let all: Vec<String> = errors.iter().map(|(u, e)| format!("{u}: {e}")).collect();
            return Err(format!("no node answered: {}", all.join("; ")));
        }
        _ => {}
    }
    for (url, e) in errors {
        eprintln!("hadron {command}: node {url} did not answer: {e}");
    }
    Ok(docs)
}

/// Merges one pipeline's objects from several nodes' status documents.
fn merge_status(found: &[&Value]) -> Value {
    // Per partition: the run of the node that runs it (the highest term
    // when two claim it), else the leader a replica names.
    let mut led: BTreeMap<u64, (u64, &Value)> = BTreeMap::new();
    let mut unled: BTreeMap<u64, Option<u64>> = BTreeMap::new();
    for run in found
        .iter()
        .flat_map(|p| p["partitions"].as_array().into_iter().flatten())
    {
        let Some(partition) = run["partition"].as_u64() else {
            continue;
        };
        let replication = &run["replication"];
        // A server from before `leading` ran every run it listed.
        if run["leading"].as_bool().unwrap_or(true) {
            let term = replication["term"].as_u64().unwrap_or(0);
            if led.get(&partition).is_none_or(|(t, _)| term > *t) {
                led.insert(partition, (term, run));
            }
        } else {
            let leader = unled.entry(partition).or_default();
            *leader = leader.or(replication["leader"].as_u64());
        }
    }
    unled.retain(|p, _| !led.contains_key(p));
    let runs: Vec<&Value> = led.values().map(|(_, run)| *run).collect();
    let sum = |key: &str| {
        runs.iter()
            .map(|r| r[key].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    let mut merged = found[0].clone();
    merged["executions"] = json!({
        "active": sum("active"),
        "completed": sum("completed"),
        "failed": sum("failed"),
    });
    merged["stages"] = stage_totals(&found[0]["stages"], &runs);
    merged["partitions"] = json!(runs);
    if !unled.is_empty() {
        let rows: Vec<Value> = unled
            .into_iter()
            .map(|(partition, leader)| json!({"partition": partition, "leader": leader}))
            .collect();
        merged["unled"] = json!(rows);
    }
    merged
}

/// The per-stage totals over `runs`, as one node sums its own: counts
/// added, the last partition's error kept.
fn stage_totals(stages: &Value, runs: &[&Value]) -> Value {
    const COUNTS: [&str; 5] = ["completed", "in_flight", "waiting", "errors", "failed"];
    let mut totals: Vec<Value> = stages.as_array().cloned().unwrap_or_default();
    for total in &mut totals {
        for key in COUNTS {
            total[key] = json!(0);
        }
        total["last_error"] = Value::Null;
    }
    for run in runs {
        let of_run = run["stages"].as_array().into_iter().flatten();
        for (total, s) in totals.iter_mut().zip(of_run) {
            for key in COUNTS {
                let n = total[key].as_u64().unwrap_or(0) + s[key].as_u64().unwrap_or(0);
                total[key] = json!(n);
            }
            if !s["last_error"].is_null() {
                total["last_error"] = s["last_error"].clone();
            }
        }
    }
    Value::Array(totals)
}

/// `hadron pipeline retry NAME` (every failed execution) over the nodes of
/// `urls`: prints the merged lines; fails when a partition was not
/// retried by its leader.
pub(super) async fn retry_all(urls: &str, pipeline: &str) -> Result<(), String> {
    let list = node_urls(urls)?;
    let asks = list.iter().map(|url| async move {
        let client = super::connect(url)?;
        let lines = client
            .retry_pipeline(pipeline, None)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<Vec<String>, String>(lines)
    });
    let answers = futures::future::join_all(asks).await;
    let nodes: Vec<(&str, Result<Vec<String>, String>)> = list.into_iter().zip(answers).collect();
    let merged = merge_retry(pipeline, &nodes)?;
    for line in &merged.lines {
        println!("{line}");
    }
    if merged.not_retried.is_empty() {
        return Ok(());
    }
    let partitions: Vec<String> = merged.not_retried.iter().map(u32::to_string).collect();
    Err(format!(
        "pipeline/{pipeline}: partition {} not retried (see above): list every node of the cluster in --url, or retry once a leader is elected",
        partitions.join(", ")
    ))
}

/// The answer of `retry_all`.
#[derive(Debug, PartialEq, Eq)]
struct MergedRetry {
    /// What to print, by partition.
    lines: Vec<String>,
    /// Partitions whose leader did not answer, or whose retry failed.
    not_retried: Vec<u32>,
}

/// Merges the nodes' answers to a retry of every failed execution: each
/// partition's lines from its leader, or what the others said of it.
fn merge_retry(
    pipeline: &str,
    nodes: &[(&str, Result<Vec<String>, String>)],
) -> Result<MergedRetry, String> {
    let mut by_partition: BTreeMap<u32, Vec<RetryLine>> = BTreeMap::new();
    // Lines of no known form (a server from before this one): as they are.
    let mut other: Vec<String> = Vec::new();
    let mut errors = Vec::new();
    for (url, answer) in nodes {
        match answer {
            Ok(lines) => {
                for line in lines {
                    match RetryLine::parse(pipeline, line) {
                        Some(l) => by_partition.entry(l.partition()).or_default().push(l),
                        None if !other.contains(line) => other.push(line.clone()),
                        None => {}
                    }
                }
            }
            Err(e) => errors.push((*url, e.as_str())),
        }
    }
    match errors.as_slice() {
        [(_, e)] if nodes.len() == 1 => return Err((*e).to_owned()),
        all if all.len() == nodes.len() => {
            let all: Vec<String> = all.iter().map(|(u, e)| format!("{u}: {e}")).collect();
            return Err(format!("no node answered: {}", all.join("; ")));
        }
        some => {
            for (url, e) in some {
                eprintln!("hadron pipeline retry: node {url} did not answer: {e}");
            }
        }
    }
    let mut merged = MergedRetry {
        lines: other,
        not_retried: Vec::new(),
    };
    for (partition, lines) in by_partition {
        let (by_leader, others): (Vec<RetryLine>, Vec<RetryLine>) =
            lines.into_iter().partition(RetryLine::by_leader);
        if by_leader.is_empty() {
            // No leader answered: what the others said, once each.
            for line in others.iter().map(|l| l.to_line(pipeline)) {
                if !merged.lines.contains(&line) {
                    merged.lines.push(line);
                }
            }
            merged.not_retried.push(partition);
            continue;
        }
        let retried = by_leader
            .iter()
            .any(|l| !matches!(l, RetryLine::NoneFailed { .. }));
        for line in &by_leader {
            // "No failed executions" only when its leader retried none.
            if retried && matches!(line, RetryLine::NoneFailed { .. }) {
                continue;
            }
            merged.lines.push(line.to_line(pipeline));
        }
        if by_leader
            .iter()
            .any(|l| matches!(l, RetryLine::Failed { .. }))
        {
            merged.not_retried.push(partition);
        }
    }
    if merged.lines.is_empty() {
        merged
            .lines
            .push(format!("pipeline/{pipeline}: no failed executions"));
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(of: &[RetryLine]) -> Vec<String> {
        of.iter().map(|l| l.to_line("p")).collect()
    }

    #[test]
    fn each_partition_is_reported_by_its_leader_alone() {
        use RetryLine::*;
        // Node 1 leads partition 0, node 2 partition 1, node 3 nothing.
        let node1 = lines(&[
            Retried {
                partition: 0,
                offset: 4,
            },
            Retried {
                partition: 0,
                offset: 9,
            },
            LedElsewhere {
                partition: 1,
                leader: Some(2),
            },
        ]);
        let node2 = lines(&[
            LedElsewhere {
                partition: 0,
                leader: Some(1),
            },
            NoneFailed { partition: 1 },
        ]);
        let node3 = lines(&[
            LedElsewhere {
                partition: 0,
                leader: Some(1),
            },
            LedElsewhere {
                partition: 1,
                leader: Some(2),
            },
        ]);
        let nodes = [("a", Ok(node1)), ("b", Ok(node2)), ("c", Ok(node3))];
        let merged = merge_retry("p", &nodes).unwrap();
        assert_eq!(
            merged.lines,
            [
                "pipeline/p partition 0 offset 4 retried",
                "pipeline/p partition 0 offset 9 retried",
                "pipeline/p partition 1: no failed executions",
            ]
        );
        assert!(merged.not_retried.is_empty());
    }

    #[test]
    fn a_partition_whose_leader_did_not_answer_fails_the_retry() {
        use RetryLine::*;
        let node1 = lines(&[
            LedElsewhere {
                partition: 0,
                leader: Some(3),
            },
            NotHere { partition: 1 },
            Failed {
                partition: 2,
                error: "disk full".into(),
            },
        ]);
        let nodes = [
            ("a", Ok(node1)),
            ("c", Err("connection refused".to_owned())),
        ];
        let merged = merge_retry("p", &nodes).unwrap();
        assert_eq!(
            merged.lines,
            [
                "pipeline/p partition 0: led by node 3, not retried here",
                "pipeline/p partition 1: no replica here",
                "pipeline/p partition 2: not retried: disk full",
            ]
        );
        assert_eq!(merged.not_retried, [0, 1, 2]);
    }

    #[test]
    fn a_single_node_prints_what_it_did_as_before() {
        let none = merge_retry("p", &[("a", Ok(Vec::new()))]).unwrap();
        assert_eq!(none.lines, ["pipeline/p: no failed executions"]);
        let refused = merge_retry("p", &[("a", Err("unknown pipeline \"p\"".into()))]);
        assert_eq!(refused, Err("unknown pipeline \"p\"".to_owned()));
        let both = merge_retry("p", &[("a", Err("x".into())), ("b", Err("y".into()))]);
        assert_eq!(both, Err("no node answered: a: x; b: y".to_owned()));
    }

    fn run(partition: u64, leading: bool, term: u64, failed: u64) -> Value {
        json!({
            "partition": partition, "leading": leading, "active": 1, "completed": 10,
            "failed": failed, "cursor": 0, "unfinished": [], "failed_executions": [],
            "stages": [{"name": "s", "completed": 10, "in_flight": 1, "waiting": 0,
                        "errors": failed, "failed": failed,
                        "last_error": if failed > 0 { json!(format!("boom {partition}")) } else { Value::Null }}],
            "replication": {"is_leader": leading, "term": term, "leader": 2},
        })
    }

    fn pipeline(runs: Vec<Value>) -> Value {
        json!({
            "name": "p", "source_stream": "events",
            "executions": {"active": 0, "completed": 0, "failed": 0},
            "stages": [{"name": "s", "completed": 0, "in_flight": 0, "waiting": 0,
                        "errors": 0, "failed": 0, "last_error": null}],
            "partitions": runs,
        })
    }

    #[test]
    fn status_counts_each_partition_from_the_node_that_runs_it() {
        // Partition 0 led by node 1 (a stale leader of term 2 on node 3),
        // partition 1 by node 2, partition 2 by none asked.
        let n1 = pipeline(vec![run(0, true, 3, 2), run(1, false, 3, 0)]);
        let n2 = pipeline(vec![run(0, false, 3, 0), run(1, true, 3, 5)]);
        let n3 = pipeline(vec![run(0, true, 2, 7), run(2, false, 1, 0)]);
        let merged = merge_status(&[&n1, &n2, &n3]);
        assert_eq!(
            merged["executions"],
            json!({"active": 2, "completed": 20, "failed": 7})
        );
        let s = &merged["stages"][0];
        assert_eq!(
            (&s["failed"], &s["errors"], &s["in_flight"]),
            (&json!(7), &json!(7), &json!(2))
        );
        assert_eq!(s["last_error"], "boom 1");
        let partitions: Vec<u64> = merged["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["partition"].as_u64().unwrap())
            .collect();
        assert_eq!(partitions, [0, 1]);
        assert_eq!(merged["partitions"][0]["failed"], 2);
        assert_eq!(merged["unled"], json!([{"partition": 2, "leader": 2}]));
    }

    #[test]
    fn status_of_a_single_node_is_its_own() {
        let mut one = pipeline(vec![run(0, true, 0, 1), run(1, true, 0, 0)]);
        one["executions"] = json!({"active": 2, "completed": 20, "failed": 1});
        one["stages"] = json!([{"name": "s", "completed": 20, "in_flight": 2,
            "waiting": 0, "errors": 1, "failed": 1, "last_error": "boom 0"}]);
        assert_eq!(merge_status(&[&one]), one);
    }
}
