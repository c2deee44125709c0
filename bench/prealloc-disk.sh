#!/bin/bash
# Disk held by an idle 3-node cluster (1 shard each, loopback) with one
# stream of P partitions x 3 replicas, for two hadron binaries in one
# script: each run starts fresh nodes, waits until every node has opened
# its 2 x P partition logs (events + group offsets), then prints `du -s`
# of each node's data dir (KiB, allocated blocks) and the KiB per
# partition per node, and deletes the data. Usage:
#   bench/prealloc-disk.sh OLD_HADRON_BIN NEW_HADRON_BIN
# OLD runs with P_OLD partitions (default 8: a binary that preallocates
# whole 128 MiB segments holds 256 MiB per partition per node, so keep
# P_OLD at 16 or below), NEW with P_OLD and with P_NEW (default 64).
set -u
OLD=${1:?usage: bench/prealloc-disk.sh OLD_HADRON_BIN NEW_HADRON_BIN}
NEW=${2:?usage: bench/prealloc-disk.sh OLD_HADRON_BIN NEW_HADRON_BIN}
P_OLD=${P_OLD:-8}
P_NEW=${P_NEW:-64}

wait_port() { for _ in $(seq 1 100); do (echo > /dev/tcp/127.0.0.1/$1) 2>/dev/null && return; sleep 0.1; done; }
logs_of() { find "$1/streams/disk" -name '*.log' 2>/dev/null | wc -l; }

run() { # bin label partitions
  local bin=$1 label=$2 parts=$3
  local d; d=$(mktemp -d /tmp/prealloc-disk.XXXXXX); local base=$((30000 + RANDOM % 3000))
  local peers="" pids=()
  for i in 1 2 3; do
    local p=$((base + (i - 1) * 10))
    peers+="    - { id: $i, address: \"127.0.0.1:$p\", peerAddress: \"127.0.0.1:$((p + 5))\" }"$'\n'
  done
  for i in 1 2 3; do
    local p=$((base + (i - 1) * 10))
    printf "cluster:\n  nodeId: %s\n  peers:\n%s---\napiVersion: hadron.rs/v1beta1\nkind: Stream\nmetadata: { name: disk }\nspec: { partitions: %s, replicas: 3 }\n" \
      $i "$peers" "$parts" > "$d/config$i.yaml"
    "$bin" server --config "$d/config$i.yaml" --data-dir "$d/data$i" --listen 127.0.0.1:$p --shards 1 > "$d/log$i" 2>&1 &
    pids+=($!)
  done
  for i in 1 2 3; do wait_port $((base + (i - 1) * 10)); done
  local want=$((2 * parts)) ok=0
  for _ in $(seq 1 600); do
    ok=1
    for i in 1 2 3; do [ "$(logs_of "$d/data$i")" -ge $want ] || ok=0; done
    [ $ok = 1 ] && break
    sleep 0.1
  done
  local line="$label partitions=$parts"
  [ $ok = 1 ] || line+=" (not every log open after 60 s)"
  for i in 1 2 3; do
    local kib; kib=$(du -s "$d/data$i" | cut -f1)
    line+=" node$i=${kib}KiB ($((kib / parts)) KiB/partition)"
  done
  echo "$line"
  kill -TERM "${pids[@]}"; wait "${pids[@]}" 2>/dev/null; rm -rf "$d"
}

run "$OLD" OLD "$P_OLD"
run "$NEW" NEW "$P_OLD"
run "$NEW" NEW "$P_NEW"
