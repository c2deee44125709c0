//! `hadron cluster status --url A,B,C`: asks every node listed for its
//! status (each on its own, not the first that answers) and prints the
//! nodes, then per Raft group its leader and term and each replica's Raft
//! state and lag behind the leader (in log entries): every replicated
//! partition (`STREAM/P`), its consumer groups' offsets
//! (`offsets/STREAM/P`), each pipeline's outputs on it
//! (`pipelines/NAME/P`) and the metadata group (`cluster/meta/0`, with
//! the index each node applied).
//!
//! The lag is the leader's last index minus the replica's, from status
//! documents taken one after the other, so it is approximate under load;
//! a node that does not answer is listed as such and its replicas are
//! missing from the rows.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// One node's answer.
pub(super) struct NodeStatus {
    pub(super) url: String,
    pub(super) doc: Result<Value, String>,
}

/// Node `url`'s status document, parsed (its own connection).
pub(super) async fn node_status(url: &str) -> NodeStatus {
    let doc = match super::connect(url) {
        Ok(client) => match client.status().await {
            Ok(json) => serde_json::from_str(&json).map_err(|e| format!("bad status JSON: {e}")),
            Err(e) => Err(e.to_string()),
        },
        Err(e) => Err(e),
    };
    NodeStatus {
        url: url.to_owned(),
        doc,
    }
}

/// (stream, partition) -> [(node id, its `replication` object)].
type Replicas = BTreeMap<(String, u64), Vec<(u64, Value)>>;

fn replicas(nodes: &[NodeStatus]) -> Replicas {
    let mut out: Replicas = BTreeMap::new();
    let mut add = |name: String, p: &Value, r: &Value, id: u64| {
        if r.is_object() {
            let partition = p["partition"].as_u64().unwrap_or(0);
            out.entry((name, partition))
                .or_default()
                .push((id, r.clone()));
        }
    };
    for node in nodes {
        let Ok(doc) = &node.doc else { continue };
        let id = doc["node_id"].as_u64().unwrap_or(0);
        for stream in doc["streams"].as_array().into_iter().flatten() {
            let name = stream["name"].as_str().unwrap_or("?");
            for p in stream["partitions"].as_array().into_iter().flatten() {
                add(name.to_owned(), p, &p["replication"], id);
                // Its consumer groups' offsets group.
                add(format!("offsets/{name}"), p, &p["offsets_replication"], id);
            }
        }
        // Each pipeline run's outputs group.
        for pipeline in doc["pipelines"].as_array().into_iter().flatten() {
            let name = pipeline["name"].as_str().unwrap_or("?");
            for p in pipeline["partitions"].as_array().into_iter().flatten() {
                add(format!("pipelines/{name}"), p, &p["replication"], id);
            }
        }
        // The metadata group, with the index this node applied.
        let meta = &doc["meta"];
        if meta.is_object() {
            let mut r = meta["replication"].clone();
            if let Some(o) = r.as_object_mut() {
                o.insert("meta_applied".into(), meta["applied"].clone());
            }
            add("cluster/meta".into(), &json!({"partition": 0}), &r, id);
        }
    }
    out
}

/// The document `--json` prints: nodes, and per partition its leader,
/// term and replicas with their lag.
fn summary(nodes: &[NodeStatus]) -> Value {
    let node_rows: Vec<Value> = nodes
        .iter()
        .map(|n| match &n.doc {
            Ok(doc) => json!({"url": n.url, "node_id": doc["node_id"], "up": true}),
            Err(e) => json!({"url": n.url, "up": false, "error": e}),
        })
        .collect();
    let partitions: Vec<Value> = replicas(nodes)
        .into_iter()
        .map(|((stream, partition), reps)| {
            let leader = reps
                .iter()
                .filter(|(_, r)| r["is_leader"] == true)
                .max_by_key(|(_, r)| r["term"].as_u64().unwrap_or(0));
            let leader_last = leader.map(|(_, r)| r["last_index"].as_u64().unwrap_or(0));
            let rows: Vec<Value> = reps
                .iter()
                .map(|(id, r)| {
                    let last = r["last_index"].as_u64().unwrap_or(0);
                    json!({
                        "node_id": id,
                        "role": if r["is_leader"] == true { "leader" } else { "follower" },
                        "term": r["term"],
                        "commit": r["commit"],
                        "last_index": last,
                        "high_watermark": r["high_watermark"],
                        "lag": leader_last.map(|l| l.saturating_sub(last)),
                        "stopped": r["stopped"],
                        "voters": r["voters"],
                        "learners": r["learners"],
                        "meta_applied": r["meta_applied"],
                    })
                })
                .collect();
            json!({
                "stream": stream,
                "partition": partition,
                "leader": leader.map(|(id, _)| *id),
                "term": leader.map(|(_, r)| r["term"].clone()),
                "replicas": rows,
            })
        })
        .collect();
    json!({"nodes": node_rows, "partitions": partitions})
}

/// `hadron cluster move STREAM PARTITION --to 1,2,4`: sends the move to
/// the first node listed that answers, which the client follows to the
/// metadata group's leader (`Client::move_partition`); prints the
/// leader's answer (what it did).
pub async fn move_partition(
    urls: &str,
    stream: &str,
    partition: u32,
    to: &str,
) -> Result<(), String> {
    let voters = to
        .split(',')
        .map(|v| {
            v.trim()
                .parse::<u64>()
                .map_err(|e| format!("--to {to:?}: node id {v:?}: {e}"))
        })
        .collect::<Result<Vec<u64>, String>>()?;
    let client = super::connect(&node_urls(urls)?.join(","))?;
    let lines = client
        .move_partition(stream, partition, &voters)
        .await
        .map_err(|e| e.to_string())?;
    lines.iter().for_each(|l| println!("{l}"));
    Ok(())
}

/// `hadron cluster add-node --id N --address A --peer-address P`: sent
/// like a move (to the metadata group's leader, by any node listed).
pub async fn add_node(
    urls: &str,
    id: u64,
    address: &str,
    peer_address: &str,
) -> Result<(), String> {
    let client = super::connect(&node_urls(urls)?.join(","))?;
    let lines = client
        .add_node(id, address, peer_address)
        .await
        .map_err(|e| e.to_string())?;
    lines.iter().for_each(|l| println!("{l}"));
    Ok(())
}

/// `hadron cluster remove-node N`: sent like a move.
pub async fn remove_node(urls: &str, id: u64) -> Result<(), String> {
    let client = super::connect(&node_urls(urls)?.join(","))?;
    let lines = client.remove_node(id).await.map_err(|e| e.to_string())?;
    lines.iter().for_each(|l| println!("{l}"));
    Ok(())
}

/// `hadron cluster rebalance [--drain 2,3] [--max-moves N] [--dry-run]`:
/// sent like a move; prints the moves the leader planned (and made,
/// unless a dry run).
pub async fn rebalance(
    urls: &str,
    drain: &str,
    max_moves: Option<u32>,
    dry_run: bool,
) -> Result<(), String> {
    let drain = drain
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.parse::<u64>()
                .map_err(|e| format!("--drain {drain:?}: node id {v:?}: {e}"))
        })
        .collect::<Result<Vec<u64>, String>>()?;
    if max_moves == Some(0) {
        return Err("--max-moves 0: name at least 1".into());
    }
    let client = super::connect(&node_urls(urls)?.join(","))?;
    let lines = client
        .rebalance(&drain, max_moves.unwrap_or(0), dry_run)
        .await
        .map_err(|e| e.to_string())?;
    lines.iter().for_each(|l| println!("{l}"));
    Ok(())
}

/// A list of node ids in a status document, as text.
fn ids(list: &Value) -> Vec<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .map(Value::to_string)
        .collect()
}

pub(super) fn node_urls(urls: &str) -> Result<Vec<&str>, String> {
    let list: Vec<&str> = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    if list.is_empty() {
        return Err("--url lists no node".into());
    }
    Ok(list)
}

/// `hadron cluster status`.
pub async fn status(urls: &str, as_json: bool) -> Result<(), String> {
    let list = node_urls(urls)?;
    let nodes = futures::future::join_all(list.iter().map(|u| node_status(u))).await;
    let doc = summary(&nodes);
    if as_json {
        println!("{doc}");
        return Ok(());
    }
    println!("nodes:");
    for n in doc["nodes"].as_array().into_iter().flatten() {
        match n["up"].as_bool() {
            Some(true) => println!(
                "  node {:<3} {}  up",
                n["node_id"],
                n["url"].as_str().unwrap_or("?")
            ),
            _ => println!(
                "  ?        {}  DOWN: {}",
                n["url"].as_str().unwrap_or("?"),
                n["error"].as_str().unwrap_or("?")
            ),
        }
    }
    for p in doc["partitions"].as_array().into_iter().flatten() {
        let leader = match p["leader"].as_u64() {
            Some(id) => format!("leader node {id}, term {}", p["term"]),
            None => "no leader known".into(),
        };
        println!(
            "{}/{}: {leader}",
            p["stream"].as_str().unwrap_or("?"),
            p["partition"]
        );
        for r in p["replicas"].as_array().into_iter().flatten() {
            let lag = match r["lag"].as_u64() {
                Some(l) => format!("lag {l}"),
                None => "lag ?".into(),
            };
            let voters = ids(&r["voters"]);
            let applied = r["meta_applied"]
                .as_u64()
                .map(|a| format!("  applied {a}"))
                .unwrap_or_default();
            let learners = ids(&r["learners"]);
            let learners = if learners.is_empty() {
                String::new()
            } else {
                format!("  learners {}", learners.join(","))
            };
            println!(
                "  node {:<3} {:<8} commit {:<8} last index {:<8} high watermark {:<8} {lag}  voters {}{learners}{applied}{}",
                r["node_id"],
                r["role"].as_str().unwrap_or("?"),
                r["commit"],
                r["last_index"],
                r["high_watermark"],
                voters.join(","),
                r["stopped"]
                    .as_str()
                    .map(|why| format!("  STOPPED: {why}"))
                    .unwrap_or_default()
            );
        }
    }
    if nodes.iter().all(|n| n.doc.is_err()) {
        return Err("no node answered".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, leader: bool, term: u64, last: u64) -> NodeStatus {
        NodeStatus {
            url: format!("127.0.0.1:70{id}0"),
            doc: Ok(json!({
                "node_id": id,
                "streams": [{"name": "orders", "partitions": [
                    {"partition": 0, "replication": {
                        "is_leader": leader, "term": term, "commit": last,
                        "last_index": last, "high_watermark": last * 10,
                        "stopped": null
                    }},
                    {"partition": 1}
                ]}]
            })),
        }
    }

    #[test]
    fn the_summary_lists_the_metadata_group_with_each_nodes_applied_index() {
        let meta = |id: u64, leader: bool, applied: u64| NodeStatus {
            url: format!("127.0.0.1:70{id}0"),
            doc: Ok(json!({
                "node_id": id,
                "meta": {"group": "cluster/meta", "applied": applied, "replication": {
                    "is_leader": leader, "term": 2, "commit": 9, "last_index": 9,
                    "voters": [1, 2], "stopped": null
                }}
            })),
        };
        let doc = summary(&[meta(1, true, 9), meta(2, false, 7)]);
        let p = &doc["partitions"][0];
        assert_eq!(p["stream"], "cluster/meta");
        assert_eq!(p["leader"], 1);
        assert_eq!(p["replicas"][1]["meta_applied"], 7);
    }

    #[test]
    fn the_summary_names_the_leader_of_the_highest_term_and_each_lag() {
        let nodes = vec![
            node(1, true, 3, 40),  // a stale leader of term 3
            node(2, true, 4, 50),  // the leader
            node(3, false, 4, 45), // behind by 5
            NodeStatus {
                url: "127.0.0.1:7999".into(),
                doc: Err("connection refused".into()),
            },
        ];
        let doc = summary(&nodes);
        let p = &doc["partitions"][0];
        assert_eq!(p["leader"], 2);
        assert_eq!(p["term"], 4);
        let lags: Vec<(u64, u64)> = p["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["node_id"].as_u64().unwrap(), r["lag"].as_u64().unwrap()))
            .collect();
        assert_eq!(lags, [(1, 10), (2, 0), (3, 5)]);
        // Unreplicated partitions are not rows; the node that is down is.
        assert_eq!(doc["partitions"].as_array().unwrap().len(), 1);
        assert_eq!(doc["nodes"][3]["up"], false);
        assert_eq!(doc["nodes"][3]["error"], "connection refused");
    }
}
