#!/bin/bash
# A/B of two hadron server binaries in one script, alternating fresh
# 1-shard servers on loopback: durable 1 KiB publishes (8 connections x 64)
# and fsync: never 100 B publishes (8 x 64 x 4 in flight), each 6 s; with
# SUITES="publish dispatch" also a consumer group (loadgen e2e) and the
# five-stage pipeline (loadgen pipeline), which exercise the dispatchers;
# prints events/s and p99 (us) per run. Build loadgen first:
#   cargo build --release -p hadron-loadgen
#   bench/ab.sh OLD/target/release/hadron target/release/hadron
OLD=${1:?usage: bench/ab.sh OLD_HADRON_BIN NEW_HADRON_BIN}
NEW=${2:?usage: bench/ab.sh OLD_HADRON_BIN NEW_HADRON_BIN}
LG=${LOADGEN:-$(cd "$(dirname "$0")/.." && pwd)/target/release/loadgen}
SUITES=${SUITES:-publish}
run() { # bin label extra-config loadgen-command args...
  local bin=$1 label=$2 cfg=$3 cmd=$4; shift 4
  local d=$(mktemp -d); local port=$((24000 + RANDOM % 4000))
  printf "%b" "$cfg" > $d/config.yaml
  $bin server --config $d/config.yaml --data-dir $d/data --listen 127.0.0.1:$port --shards 1 > $d/log 2>&1 &
  local pid=$!
  for i in $(seq 1 100); do (echo > /dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
  local out=$($LG $cmd --url 127.0.0.1:$port "$@" --json 2>/dev/null | tail -1)
  kill -TERM $pid; wait $pid 2>/dev/null
  echo "$label $(echo "$out" | python3 -c 'import sys,json; d=json.load(sys.stdin); print(round(d.get("events_per_sec", d.get("throughput",{}).get("events_per_sec",0))), d.get("latency_us",{}).get("p99","?"))' 2>/dev/null || echo "$out" | head -c 300)"
  rm -rf $d
}
if [[ " $SUITES " == *" publish "* ]]; then
for pair in 1 2 3; do
  for b in OLD NEW; do
    bin=${!b}
    run $bin "$b durable-1KiB" "" publish --connections 8 --batch 64 --in-flight 1 --size 1024 --durable true --duration 6 --threads 1
  done
done
for pair in 1 2; do
  for b in OLD NEW; do
    bin=${!b}
    run $bin "$b never-100B" "fsync: never\n" publish --connections 8 --batch 64 --in-flight 4 --size 100 --durable false --duration 6 --threads 1
  done
done
fi
if [[ " $SUITES " == *" dispatch "* ]]; then
for pair in 1 2 3; do
  for b in OLD NEW; do
    bin=${!b}
    run $bin "$b group-e2e" "fsync: never\n" e2e --connections 4 --batch 32 --in-flight 2 --size 100 --durable false --consumers 2 --duration 6 --threads 1
    run $bin "$b pipeline" "" pipeline --connections 4 --batch 16 --in-flight 1 --size 100 --consumers 1 --duration 6 --threads 1
  done
done
fi
