#!/bin/bash
# Durable publish with TLS against without, in one script: alternating
# fresh 1-shard release servers on loopback, the same binary, plain and
# with `tls:` (a P-256 certificate made here by openssl); loadgen publishes
# durably (fsync: always) 1 KiB events for DURATION s per run, PAIRS
# pairs per shape. Prints per run events/s, p99 (us), and the server's and
# loadgen's CPU per event (us; CPU time over the run / events/s, which
# holds up better than throughput when other work shares the machine),
# then per shape the ratios TLS/plain of the medians. Build first:
#   cargo build --release -p hadron-server -p hadron-loadgen
#   bench/tls.sh                       # PAIRS=3 DURATION=6
# Shapes: batches of 64 x 8 connections (throughput; TLS costs bytes) and
# batches of 1 x 8 connections x 4 in flight (small requests; TLS costs a
# record per frame).
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${HADRON:-$ROOT/target/release/hadron}
LG=${LOADGEN:-$ROOT/target/release/loadgen}
PAIRS=${PAIRS:-3}
DURATION=${DURATION:-6}
for tool in "$BIN" "$LG"; do
  [ -x "$tool" ] || { echo "missing $tool: cargo build --release -p hadron-server -p hadron-loadgen" >&2; exit 1; }
done
command -v openssl > /dev/null || { echo "openssl is needed to make the test certificate" >&2; exit 1; }

PKI=$(mktemp -d)
RESULTS=$(mktemp)
trap 'rm -rf "$PKI" "$RESULTS"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj "/CN=hadron-bench-ca" -keyout "$PKI/ca.key" -out "$PKI/ca.pem" \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2> /dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -subj "/CN=localhost" -keyout "$PKI/server.key" -out "$PKI/server.csr" 2> /dev/null
printf "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n" > "$PKI/ext"
openssl x509 -req -in "$PKI/server.csr" -CA "$PKI/ca.pem" -CAkey "$PKI/ca.key" -CAcreateserial \
  -days 2 -extfile "$PKI/ext" -out "$PKI/server.pem" 2> /dev/null
TLS_CONFIG="tls:\n  cert: $PKI/server.pem\n  key: $PKI/server.key\n"

run() { # label shape tls(0/1) loadgen-args...
  local label=$1 shape=$2 tls=$3; shift 3
  local d; d=$(mktemp -d)
  local port
  # A port nothing accepts on (other servers may share the machine).
  for _ in $(seq 1 50); do
    port=$((24000 + RANDOM % 4000))
    (echo > /dev/tcp/127.0.0.1/$port) 2> /dev/null || break
  done
  local url=127.0.0.1:$port extra=()
  if [ "$tls" = 1 ]; then
    printf "%b" "$TLS_CONFIG" > "$d/config.yaml"
    url=https://127.0.0.1:$port
    extra=(--ca "$PKI/ca.pem")
  else
    : > "$d/config.yaml"
  fi
  "$BIN" server --config "$d/config.yaml" --data-dir "$d/data" --listen 127.0.0.1:$port --shards 1 > "$d/log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 100); do
    grep -qs "all 1 shards ready" "$d/log" && break
    kill -0 $pid 2> /dev/null || break
    sleep 0.1
  done
  local out
  out=$("$LG" publish --url "$url" "${extra[@]}" "$@" --durable true --duration "$DURATION" --threads 1 --server-pid $pid --json 2> "$d/lg.err" | tail -1)
  kill -TERM $pid 2> /dev/null; wait $pid 2> /dev/null
  local fig
  fig=$(echo "$out" | python3 -c '
import sys, json
d = json.load(sys.stdin)
eps = d.get("events_per_sec", d.get("throughput", {}).get("events_per_sec", 0))
cpu = d.get("server_rss") or {}
per = lambda cores: round(cores * 1e6 / eps, 2) if cores is not None and eps else "nan"
print(round(eps), d.get("latency_us", {}).get("p99", "?"), per(cpu.get("server_cpu_cores")), per(cpu.get("loadgen_cpu_cores")))' 2> /dev/null) \
    || { echo "$label $shape: no result: $(head -c 300 "$d/lg.err") $(tail -3 "$d/log")" >&2; rm -rf "$d"; return; }
  echo "$label $shape $fig"
  echo "$label $shape $fig" >> "$RESULTS"
  rm -rf "$d"
}
for pair in $(seq 1 "$PAIRS"); do
  for tls in 0 1; do
    label=$([ $tls = 1 ] && echo tls || echo plain)
    run $label batch64 $tls --connections 8 --batch 64 --in-flight 1 --size 1024
    run $label batch1 $tls --connections 8 --batch 1 --in-flight 4 --size 1024
  done
done
python3 - "$RESULTS" << 'EOF'
import sys, statistics
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
for shape in sorted({r[1] for r in rows}):
    fig = {k: [[float(x) for x in r[2:6]] for r in rows if r[0] == k and r[1] == shape] for k in ("plain", "tls")}
    if not fig["plain"] or not fig["tls"]:
        continue
    med = {k: [statistics.median(run[i] for run in v) for i in range(4)] for k, v in fig.items()}
    (pe, pp, ps, pl), (te, tp, ts, tl) = med["plain"], med["tls"]
    print(f"{shape}: plain {pe:.0f} ev/s p99 {pp:.0f} us cpu/event server {ps:.2f} us loadgen {pl:.2f} us; "
          f"tls {te:.0f} ev/s p99 {tp:.0f} us cpu/event server {ts:.2f} us loadgen {tl:.2f} us")
    print(f"{shape}: TLS/plain events/s {te / pe:.3f}, p99 {tp / pp:.3f}, server cpu/event {ts / ps:.3f}, "
          f"loadgen cpu/event {tl / pl:.3f} (medians of {len(fig['plain'])} plain and {len(fig['tls'])} TLS runs)")
EOF
