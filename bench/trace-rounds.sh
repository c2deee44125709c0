#!/usr/bin/env bash
# Where a durable round's time goes, from the kernel's own io_uring
# tracepoints: a fresh server (1 shard, `fsync: always`) takes a closed-loop
# durable publish run from loadgen, and `perf` records every io_uring
# submission and completion of the server for one second of it. Printed:
#   - segment writes (writes of at least 64 KiB: sockets write less): count,
#     mean size, and time from submission to completion (under `always` the
#     write is write-through, so this includes the device flush);
#   - fdatasyncs, the same way (under `always`, since its writes are
#     write-through, only a sealed segment's final one);
#   - the time from a segment write's completion to the next segment
#     write's submission, and, where an fdatasync follows each round, to the
#     next fdatasync's: glommio submits what a task queued only once the pass
#     over ready tasks ends, so this shows what request processing on the
#     same core adds to a round.
#
# Usage: bench/trace-rounds.sh [PARTITIONS (4)] [FSYNC (always)]
# Environment: SIZE (1024), CONNS (8), BATCH (64), PORT (27981).
# Needs perf (Debian: linux-perf) and root for the tracepoints; builds the
# release binaries first.
set -euo pipefail
cd "$(dirname "$0")/.."
PARTS=${1:-4}
FSYNC=${2:-always}
SIZE=${SIZE:-1024}
CONNS=${CONNS:-8}
BATCH=${BATCH:-64}
PORT=${PORT:-27981}
command -v perf >/dev/null || { echo "trace-rounds: needs perf (apt-get install linux-perf)" >&2; exit 1; }
cargo build --release --quiet -p hadron-server -p hadron-loadgen
BIN=$PWD/target/release
WORK=$(mktemp -d)
trap 'kill "$SERVER" 2>/dev/null || true; rm -rf "$WORK"' EXIT
printf 'fsync: %s\n---\napiVersion: hadron.rs/v1beta1\nkind: Stream\nmetadata: { name: events }\nspec: { partitions: %s }\n' \
    "$FSYNC" "$PARTS" > "$WORK/config.yaml"
"$BIN/hadron" server --config "$WORK/config.yaml" --data-dir "$WORK/data" \
    --listen "127.0.0.1:$PORT" --shards 1 2> "$WORK/server.log" &
SERVER=$!
for _ in $(seq 100); do
    "$BIN/hadron" status --url "127.0.0.1:$PORT" >/dev/null 2>&1 && break
    sleep 0.1
done
durable=true
[ "$FSYNC" = always ] || durable=false
"$BIN/loadgen" publish --url "127.0.0.1:$PORT" --connections "$CONNS" --batch "$BATCH" \
    --in-flight 1 --size "$SIZE" --durable "$durable" --duration 6 --threads 1 --json \
    2>/dev/null | tail -n 1 > "$WORK/run.json" &
LOADGEN=$!
sleep 3
perf record -q -e io_uring:io_uring_submit_req -e io_uring:io_uring_complete \
    -p "$SERVER" -o "$WORK/perf.data" -- sleep 1 >/dev/null 2>&1
wait "$LOADGEN"
perf script -i "$WORK/perf.data" 2>/dev/null > "$WORK/trace.txt"
python3 - "$WORK/trace.txt" "$WORK/run.json" <<'PY'
import bisect, json, re, sys

submitted, ops = {}, []
for line in open(sys.argv[1]):
    m = re.search(r"\s(\d+\.\d+):\s+io_uring:(io_uring_submit_req|io_uring_complete):", line)
    req = re.search(r"req (0x[0-9a-f]+)", line)
    if not m or not req:
        continue
    t, kind, req = float(m.group(1)), m.group(2), req.group(1)
    if kind == "io_uring_submit_req":
        op = re.search(r"opcode (\w+)", line)
        submitted[req] = (t, op.group(1) if op else "?")
    elif req in submitted:
        t0, op = submitted.pop(req)
        res = re.search(r"result (-?\d+)", line)
        ops.append((t0, t, op, int(res.group(1)) if res else 0))

def stats(xs):
    xs = sorted(xs)
    if not xs:
        return "none"
    n = len(xs)
    return (f"n {n}, mean {sum(xs) / n * 1e6:.0f} us, p50 {xs[n // 2] * 1e6:.0f} us, "
            f"p90 {xs[int(n * 0.9)] * 1e6:.0f} us")

writes = [o for o in ops if o[2].startswith("WRITE") and o[3] >= 65536]
syncs = [o for o in ops if o[2] == "FSYNC"]
write_subs = sorted(o[0] for o in writes)
sync_subs = sorted(o[0] for o in syncs)
def gaps(subs):
    out = []
    for _, done, _, _ in writes:
        i = bisect.bisect_right(subs, done)
        if i < len(subs):
            out.append(subs[i] - done)
    return out
run = json.load(open(sys.argv[2]))
print(f"run: {run['events_per_sec']:,.0f} events/s, p50 {run['latency_us']['p50'] / 1000:.2f} ms")
if writes:
    print(f"segment writes: {stats([b - a for a, b, _, _ in writes])}; "
          f"mean {sum(o[3] for o in writes) / len(writes) / 1024:.0f} KiB")
print(f"fdatasyncs: {stats([b - a for a, b, _, _ in syncs])}")
print(f"segment write done -> next segment write submitted: {stats(gaps(write_subs))}")
if len(syncs) * 2 >= len(writes) > 0:
    # An fdatasync per round (not write-through): how long it waited.
    print(f"segment write done -> next fdatasync submitted: {stats(gaps(sync_subs))}")
PY
