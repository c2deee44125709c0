//! The client-side commands of the `hadron` binary: `apply`, `publish`,
//! `subscribe`, `status`, `pipeline`, `token` (in `tokens`). They use the `hadron` client crate,
//! like any application would. A module of the binary, not of the
//! `hadron_server` library: nothing in the library uses the client.

use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use hadron::{Client, ClientOptions, NewEvent, StartPoint, SubscribeOptions, TlsOptions};

/// The TLS files of `--ca`, `--cert` and `--key`, read once before the
/// command runs; used when its `--url` is `https://`.
static TLS: OnceLock<TlsOptions> = OnceLock::new();

/// Reads the files of `--ca`, `--cert` and `--key` (errors name the file).
pub fn use_tls_files(
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> Result<(), String> {
    let tls = TlsOptions::from_files(ca.as_deref(), cert.as_deref(), key.as_deref())
        .map_err(|e| e.to_string())?;
    let _ = TLS.set(tls);
    Ok(())
}

mod cloudevents;
pub mod cluster;
mod pipeline_admin;
pub mod tokens;

/// `hadron apply -f FILE`.
pub async fn apply(url: &str, file: &str, force: bool) -> Result<(), String> {
    let yaml = if file == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| format!("cannot read stdin: {e}"))?;
        s
    } else {
        std::fs::read_to_string(file).map_err(|e| format!("cannot read {file}: {e}"))?
    };
    // Check locally first, for an error that names the document and field
    // without a round trip.
    hadron_server::check_resources_yaml(&yaml).map_err(|e| format!("{file}: {e}"))?;
    let client = connect(url)?;
    let summary = client
        .apply_with(&yaml, force)
        .await
        .map_err(|e| format!("{file}: {e}"))?;
    for line in summary {
        println!("{line}");
    }
    Ok(())
}

/// What `hadron publish` sends.
#[derive(Debug)]
pub struct PublishArgs {
    pub stream: String,
    /// CloudEvents JSON (an event or a batch) to publish instead of the
    /// event the other fields describe; `-` for stdin.
    pub file: Option<String>,
    pub ty: Option<String>,
    pub datacontenttype: Option<String>,
    pub id: Option<String>,
    pub source: Option<String>,
    pub subject: Option<String>,
    pub partition: Option<u32>,
    pub data: Option<String>,
}

/// `hadron publish`: prints `{"partition":P,"offset":N}` for each event.
pub async fn publish(url: &str, args: PublishArgs) -> Result<(), String> {
    if let Some(file) = &args.file {
        return publish_cloudevents(url, &args.stream, args.partition, file).await;
    }
    let data = match args.data {
        Some(d) => d.into_bytes(),
        None => {
            let mut d = Vec::new();
            std::io::stdin()
                .read_to_end(&mut d)
                .map_err(|e| format!("cannot read stdin: {e}"))?;
            d
        }
    };
    let client = connect(url)?;
    let publisher = client
        .publisher_for(&args.stream, "hadron-cli")
        .await
        .map_err(|e| e.to_string())?;
    let event = NewEvent {
        id: args.id.unwrap_or_default(),
        source: args.source.unwrap_or_else(|| "hadron-cli".into()),
        ty: args.ty.ok_or("--type is required (or -f FILE)")?,
        subject: args.subject,
        datacontenttype: args
            .datacontenttype
            .or_else(|| cloudevents::guess_content_type(&data)),
        data,
        ..NewEvent::default()
    };
    let published = match args.partition {
        Some(p) => publisher.publish_to(p, event).await,
        None => publisher.publish(event).await,
    }
    .map_err(|e| e.to_string())?;
    print_published(&published);
    Ok(())
}

fn print_published(published: &hadron::Published) {
    let mut line =
        serde_json::json!({"partition": published.partition, "offset": published.offset});
    if published.duplicate {
        line["duplicate"] = true.into();
    }
    println!("{line}");
}

/// `hadron publish -f FILE`: publishes the CloudEvents JSON event, or batch
/// of events, in `file` (`-`: stdin), in order.
async fn publish_cloudevents(
    url: &str,
    stream: &str,
    partition: Option<u32>,
    file: &str,
) -> Result<(), String> {
    let limit = cloudevents::JSON_BYTES_MAX;
    let mut bytes = Vec::new();
    let read = if file == "-" {
        std::io::stdin()
            .take(limit as u64 + 1)
            .read_to_end(&mut bytes)
    } else {
        std::fs::File::open(file).and_then(|f| f.take(limit as u64 + 1).read_to_end(&mut bytes))
    };
    read.map_err(|e| format!("cannot read {file}: {e}"))?;
    if bytes.len() > limit {
        return Err(format!(
            "{file}: over {limit} bytes, the most publish -f reads"
        ));
    }
    let text = String::from_utf8(bytes).map_err(|e| format!("{file}: not UTF-8: {e}"))?;
    let events = cloudevents::parse_events(&text).map_err(|e| format!("{file}: {e}"))?;
    let client = connect(url)?;
    let publisher = client
        .publisher_for(stream, "hadron-cli")
        .await
        .map_err(|e| e.to_string())?;
    let published = match partition {
        None => publisher.publish_batch(events).await,
        Some(p) => {
            let mut all = Vec::with_capacity(events.len());
            for event in events {
                all.push(
                    publisher
                        .publish_to(p, event)
                        .await
                        .map_err(|e| e.to_string())?,
                );
            }
            Ok(all)
        }
    }
    .map_err(|e| e.to_string())?;
    published.iter().for_each(print_published);
    Ok(())
}

/// `hadron subscribe`: prints each event as one line of CloudEvents JSON
/// (the `cloudevents` module) and acks it.
pub async fn subscribe(
    url: &str,
    stream: &str,
    group: &str,
    start: &str,
    count: Option<u64>,
    ephemeral: bool,
) -> Result<(), String> {
    let start = match start {
        "beginning" => StartPoint::Beginning,
        "latest" => StartPoint::Latest,
        other => StartPoint::Offset(other.parse().map_err(|_| {
            format!("--start must be beginning, latest or an offset, not {other:?}")
        })?),
    };
    let client = connect(url)?;
    let seen = Arc::new(AtomicU64::new(0));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let handler_seen = seen.clone();
    let options = SubscribeOptions {
        durable: !ephemeral,
        start,
        max_in_flight: 1,
    };
    let subscription = client
        .subscribe(stream, group, options, move |delivery: hadron::Delivery| {
            let seen = handler_seen.clone();
            let done = done_tx.clone();
            async move {
                let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
                if count.is_some_and(|c| n > c) {
                    // Past the count: leave it for another member.
                    return Err("subscriber is done");
                }
                let (line, left_out) =
                    cloudevents::event_line(&delivery.event, delivery.partition, delivery.offset);
                for why in left_out {
                    eprintln!(
                        "hadron subscribe: partition {} offset {}: {why}",
                        delivery.partition, delivery.offset
                    );
                }
                println!("{line}");
                if count.is_some_and(|c| n >= c) {
                    let _ = done.send(());
                }
                Ok(())
            }
        })
        .await
        .map_err(|e| e.to_string())?;
    if count.is_some() {
        done_rx.recv().await;
        // Give the last ack a moment to leave before closing.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        subscription.stop().await.map_err(|e| e.to_string())
    } else {
        subscription.closed().await.map_err(|e| e.to_string())
    }
}

/// `hadron status`.
pub async fn status(url: &str, json: bool) -> Result<(), String> {
    let client = connect(url)?;
    let doc = client.status().await.map_err(|e| e.to_string())?;
    if json {
        println!("{doc}");
        return Ok(());
    }
    let v: serde_json::Value =
        serde_json::from_str(&doc).map_err(|e| format!("bad status JSON: {e}"))?;
    println!("shards: {}", v["shards"]);
    for stream in v["streams"].as_array().into_iter().flatten() {
        println!("stream {}", stream["name"].as_str().unwrap_or("?"));
        for p in stream["partitions"].as_array().into_iter().flatten() {
            println!(
                "  partition {:>3}  shard {:>2}  offsets {}..{}  durable {}",
                p["partition"],
                p["shard"],
                p["start_offset"],
                p["next_offset"],
                p["durable_offset"]
            );
            let r = &p["replication"];
            if r.is_object() {
                let role = if r["is_leader"].as_bool().unwrap_or(false) {
                    "leader".to_owned()
                } else {
                    format!("follower of {}", r["leader"])
                };
                println!(
                    "    raft: {role}, term {}, voters {}, commit {}, last index {}, high watermark {}{}",
                    r["term"],
                    r["voters"],
                    r["commit"],
                    r["last_index"],
                    r["high_watermark"],
                    r["stopped"]
                        .as_str()
                        .map(|why| format!(", STOPPED: {why}"))
                        .or_else(|| r["disk_full"]
                            .as_str()
                            .map(|why| format!(", DISK FULL: {why}")))
                        .unwrap_or_default()
                );
            }
            if let Some(age) = p["dedup_oldest_ms"].as_u64() {
                println!(
                    "    dedup window: {} keys, the oldest {:.1} s old",
                    p["dedup_keys"],
                    age as f64 / 1000.0
                );
            }
            let c = &p["commits"];
            if c["writes"].as_u64().unwrap_or(0) > 0 {
                println!(
                    "    commits: {} writes, {} bytes per write, {} fdatasyncs, {} bytes per fdatasync, mean write {} us, mean fdatasync {} us, mean durable wait {} us, {} segments recycled",
                    c["writes"],
                    c["bytes_per_write"],
                    c["syncs"],
                    c["bytes_per_sync"],
                    c["write_us_mean"],
                    c["sync_us_mean"],
                    c["durable_wait_us_mean"],
                    c["segments_recycled"]
                );
            }
            for g in p["groups"].as_array().into_iter().flatten() {
                println!(
                    "    group {} committed {} lag {} members {} in flight {}",
                    g["group"].as_str().unwrap_or("?"),
                    g["committed"],
                    g["lag"],
                    g["members"],
                    g["in_flight"]
                );
            }
        }
    }
    Ok(())
}

/// `hadron pipeline status NAME`: over every node of `url`, each
/// partition's counts from the node that runs it (`pipeline_admin`).
pub async fn pipeline_status(url: &str, name: &str, json: bool) -> Result<(), String> {
    let p = &pipeline_admin::merged_status(url, name).await?;
    if json {
        println!("{p}");
        return Ok(());
    }
    let e = &p["executions"];
    println!(
        "pipeline {name} (source {}): {} active, {} completed, {} failed",
        p["source_stream"].as_str().unwrap_or("?"),
        e["active"],
        e["completed"],
        e["failed"]
    );
    println!(
        "  {:<24} {:>10} {:>9} {:>8} {:>7} {:>7}  last error",
        "stage", "completed", "in flight", "waiting", "errors", "failed"
    );
    for s in p["stages"].as_array().into_iter().flatten() {
        let n = |k: &str| s[k].as_u64().unwrap_or(0);
        println!(
            "  {:<24} {:>10} {:>9} {:>8} {:>7} {:>7}  {}",
            s["name"].as_str().unwrap_or("?"),
            n("completed"),
            n("in_flight"),
            n("waiting"),
            n("errors"),
            n("failed"),
            s["last_error"].as_str().unwrap_or("")
        );
    }
    for part in p["partitions"].as_array().into_iter().flatten() {
        println!(
            "  partition {}: cursor {}, {} unfinished",
            part["partition"],
            part["cursor"],
            part["unfinished"].as_array().map_or(0, Vec::len)
        );
        for u in part["unfinished"].as_array().into_iter().flatten() {
            println!(
                "    offset {}: done {} in flight {}",
                u["offset"], u["done"], u["in_flight"]
            );
        }
        for f in part["failed_executions"].as_array().into_iter().flatten() {
            println!(
                "    offset {}: FAILED at {}: {}",
                f["offset"],
                f["stage"].as_str().unwrap_or("?"),
                f["error"].as_str().unwrap_or("")
            );
        }
    }
    for u in p["unled"].as_array().into_iter().flatten() {
        let by = match u["leader"].as_u64() {
            Some(id) => format!("led by node {id}, which was not asked (list it in --url)"),
            None => "no leader known; not counted".into(),
        };
        println!("  partition {}: {by}", u["partition"]);
    }
    Ok(())
}

/// `hadron pipeline retry NAME [--partition P --offset N]`: one execution
/// by the node that runs it (the client follows `NotLeader`), or every
/// failed one by every node of `url`, merged (`pipeline_admin`).
pub async fn pipeline_retry(
    url: &str,
    name: &str,
    execution: Option<(u32, u64)>,
) -> Result<(), String> {
    if execution.is_none() {
        return pipeline_admin::retry_all(url, name).await;
    }
    let client = connect(url)?;
    let lines = client
        .retry_pipeline(name, execution)
        .await
        .map_err(|e| e.to_string())?;
    if lines.is_empty() {
        println!("pipeline/{name}: no failed executions");
    }
    for line in lines {
        println!("{line}");
    }
    Ok(())
}

pub(crate) fn connect(url: &str) -> Result<Client, String> {
    let options = ClientOptions {
        name: "hadron-cli".into(),
        token: std::env::var(hadron_server::TOKEN_ENV).ok(),
        tls: TLS.get().cloned().unwrap_or_default(),
        ..ClientOptions::default()
    };
    Client::new(url, options).map_err(|e| e.to_string())
}
