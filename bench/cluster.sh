#!/bin/bash
# Replicated durable publish against single-node durable publish, in one
# script on this machine, alternating PAIRS pairs of fresh runs:
#   single: one server (1 shard), fsync always;
#   cluster: three servers (1 shard each) on loopback, a cluster of 3, the
#            same stream with `replicas: 3` (a publish is acknowledged once
#            2 of 3 nodes have it on disk);
# the same loadgen run against each (durable 1 KiB events, 8 connections x
# batches of 64, 1 in flight, 6 s; against the cluster with the three
# nodes as its bootstrap list, following each partition's leader).
# The three nodes share this machine's cores and disk, so the cluster pays
# for all three replicas' writes here. Prints events/s and p99 (us) per
# run, then the cluster/single ratio of the medians. Build first:
#   cargo build --release -p hadron-server -p hadron-loadgen
#   PAIRS=3 bench/cluster.sh
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${HADRON_BIN:-$ROOT/target/release/hadron}
LG=${LOADGEN:-$ROOT/target/release/loadgen}
PAIRS=${PAIRS:-3}
DURATION=${DURATION:-6}
STREAM_DOC='apiVersion: hadron.rs/v1beta1
kind: Stream
metadata: { name: bench }
spec: { partitions: 6, replicas: REPLICAS }'
LOAD=(publish --stream bench --connections 8 --batch 64 --in-flight 1 --size 1024 --durable true --duration "$DURATION" --threads 1 --json)

wait_port() { for _ in $(seq 1 100); do (echo > /dev/tcp/127.0.0.1/$1) 2>/dev/null && return; sleep 0.1; done; }
summary() { python3 -c 'import sys,json; d=json.loads(sys.stdin.read().strip().splitlines()[-1]); print(round(d.get("events_per_sec", 0)), d.get("latency_us",{}).get("p99","?"))' 2>/dev/null; }

single() {
  local d; d=$(mktemp -d); local port=$((24000 + RANDOM % 3000))
  printf "fsync: always\n---\n%s\n" "${STREAM_DOC/REPLICAS/1}" > "$d/config.yaml"
  "$BIN" server --config "$d/config.yaml" --data-dir "$d/data" --listen 127.0.0.1:$port --shards 1 > "$d/log" 2>&1 &
  local pid=$!; wait_port $port
  echo "single $("$LG" "${LOAD[@]}" --url 127.0.0.1:$port 2>/dev/null | summary)"
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
    printf "fsync: always\ncluster:\n  nodeId: %s\n  peers:\n%s---\n%s\n" $i "$peers" "${STREAM_DOC/REPLICAS/3}" > "$d/config$i.yaml"
    "$BIN" server --config "$d/config$i.yaml" --data-dir "$d/data$i" --listen 127.0.0.1:$p --shards 1 > "$d/log$i" 2>&1 &
    pids+=($!)
  done
  for i in 1 2 3; do wait_port $((base + (i - 1) * 10)); done
  sleep 2 # elections: 0.5 to 1 s
  echo "cluster $("$LG" "${LOAD[@]}" --url "${urls%,}" 2>/dev/null | summary)"
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
print(f"median events/s: single {s:.0f}, cluster {c:.0f}: cluster/single {c / s:.2f}x" if s else "no single-node figure")
'
