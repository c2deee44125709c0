#!/bin/bash
# Idle CPU of a 3-node cluster holding one stream of P partitions x 3
# replicas (each node: P events groups and P offsets groups), nothing
# published: CPU ticks of the three processes over 10 s after 15 s of
# settling, per binary, alternating binaries PAIRS times in one script.
#   bench/idle.sh OLD_BIN NEW_BIN        (P=256 PAIRS=2 by default)
# Segments are 64 KiB so that P partitions' preallocated logs fit the disk.
set -u
OLD=$1; NEW=$2
P=${P:-256}; PAIRS=${PAIRS:-2}
run() {
  local bin=$1 d; d=$(mktemp -d); local base=$((31000 + RANDOM % 2000)) peers="" pids=()
  for i in 1 2 3; do local p=$((base + (i-1)*10)); peers+="    - { id: $i, address: \"127.0.0.1:$p\", peerAddress: \"127.0.0.1:$((p+5))\" }"$'\n'; done
  for i in 1 2 3; do
    local p=$((base + (i-1)*10))
    printf "fsync: always\nsegmentBytes: 65536\ncluster:\n  nodeId: %s\n  peers:\n%s---\napiVersion: hadron.rs/v1beta1\nkind: Stream\nmetadata: { name: idle }\nspec: { partitions: %s, replicas: 3 }\n" $i "$peers" "$P" > "$d/c$i.yaml"
    "$bin" server --config "$d/c$i.yaml" --data-dir "$d/d$i" --listen 127.0.0.1:$p --shards 1 > "$d/log$i" 2>&1 &
    pids+=($!)
  done
  sleep 15
  local t0 t1
  t0=$(for pid in "${pids[@]}"; do awk '{print $14+$15}' /proc/$pid/stat; done | paste -sd+ | bc)
  sleep 10
  t1=$(for pid in "${pids[@]}"; do awk '{print $14+$15}' /proc/$pid/stat; done | paste -sd+ | bc)
  kill "${pids[@]}"; wait "${pids[@]}" 2>/dev/null; rm -rf "$d"
  echo $((t1 - t0))
}
for pair in $(seq 1 "$PAIRS"); do
  o=$(run "$OLD"); n=$(run "$NEW")
  echo "P=$P pair $pair: old $o ticks, new $n ticks (100 ticks = one core for 1 s; over 10 s: $((o / 10))% and $((n / 10))% of a core)"
done
