#!/bin/bash
# The walkthrough's five-stage pipeline on a replicated stream against the
# same pipeline on one node, in one script on this machine, alternating
# PAIRS pairs of fresh runs:
#   single: one server (1 shard), fsync always;
#   cluster: three servers (1 shard each) on loopback, a cluster of 3, the
#            stream with `replicas: 3` (each stage output acknowledged once
#            2 of 3 nodes have it on disk; handlers registered on all three);
# the same client run against each (client/examples/service_provisioning.rs:
# EVENTS triggers published in batches of 64, five handlers, until every
# execution's last stage ran). The three nodes share this machine's cores
# and disk. Prints executions/s per run, then the cluster/single ratio of
# the medians. Build first:
#   cargo build --release -p hadron-server --bin hadron
#   cargo build --release -p hadron --example service_provisioning
#   PAIRS=3 bench/cluster_pipeline.sh
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${HADRON_BIN:-$ROOT/target/release/hadron}
EXAMPLE=${EXAMPLE:-$ROOT/target/release/examples/service_provisioning}
PAIRS=${PAIRS:-3}
EVENTS=${EVENTS:-2000}
PIPELINE_DOC=$(sed -n '/^const PIPELINE: &str = r#"$/,/^"#;$/p' "$ROOT/client/examples/service_provisioning.rs" | sed '1d;$d')
STREAM_DOC='apiVersion: hadron.rs/v1beta1
kind: Stream
metadata: { name: events }
spec: { partitions: 1, replicas: REPLICAS }'

wait_port() { for _ in $(seq 1 100); do (echo > /dev/tcp/127.0.0.1/$1) 2>/dev/null && return; sleep 0.1; done; }
rate() { sed -n 's/.*executions of service-creation in .* (\([0-9]*\)\/s).*/\1/p'; }

single() {
  local d; d=$(mktemp -d); local port=$((24000 + RANDOM % 3000))
  printf "fsync: always\n---\n%s\n---\n%s\n" "${STREAM_DOC/REPLICAS/1}" "$PIPELINE_DOC" > "$d/config.yaml"
  "$BIN" server --config "$d/config.yaml" --data-dir "$d/data" --listen 127.0.0.1:$port --shards 1 > "$d/log" 2>&1 &
  local pid=$!; wait_port $port
  echo "single $("$EXAMPLE" --url 127.0.0.1:$port --events "$EVENTS" 2>/dev/null | rate)"
  kill -TERM $pid; wait $pid 2>/dev/null; rm -rf "$d"
}

cluster() {
  local d; d=$(mktemp -d); local base=$((27000 + RANDOM % 3000))
  local peers="" urls="" pids=()
  for i in 1 2 3; do
    local p=$((base + (i - 1) * 10))
    peers+="    - { id: $i, address: \"127.0.0.1:$p\", peerAddress: \"127.0.0.1:$((p + 5))\" }"$'\n'
    urls+="127.0.0.1:$p,"
  done
  for i in 1 2 3; do
    local p=$((base + (i - 1) * 10))
    printf "fsync: always\ncluster:\n  nodeId: %s\n  peers:\n%s---\n%s\n---\n%s\n" $i "$peers" "${STREAM_DOC/REPLICAS/3}" "$PIPELINE_DOC" > "$d/config$i.yaml"
    "$BIN" server --config "$d/config$i.yaml" --data-dir "$d/data$i" --listen 127.0.0.1:$p --shards 1 > "$d/log$i" 2>&1 &
    pids+=($!)
  done
  for i in 1 2 3; do wait_port $((base + (i - 1) * 10)); done
  sleep 2 # elections: 0.5 to 1 s
  echo "cluster $("$EXAMPLE" --url "${urls%,}" --events "$EVENTS" 2>/dev/null | rate)"
  kill -TERM "${pids[@]}"; wait "${pids[@]}" 2>/dev/null; rm -rf "$d"
}

out=$(for pair in $(seq 1 "$PAIRS"); do single; cluster; done | tee /dev/stderr)
echo "$out" | python3 -c '
import sys, statistics
runs = {}
for line in sys.stdin:
    parts = line.split()
    if len(parts) >= 2 and parts[1].isdigit():
        runs.setdefault(parts[0], []).append(int(parts[1]))
s, c = statistics.median(runs.get("single", [0])), statistics.median(runs.get("cluster", [0]))
print(f"median executions/s: single {s:.0f}, cluster {c:.0f}: cluster/single {c / s:.2f}x" if s and c else f"missing figures: {runs}")
'
