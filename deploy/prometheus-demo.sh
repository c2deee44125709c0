#!/usr/bin/env bash
# A real Prometheus scraping a real Hadron, on loopback, in temporary
# directories: starts a release `hadron server` with `metricsListen`, a
# Prometheus (Debian's `prometheus` package) with a generated config that
# scrapes it every second, publishes EVENTS events with the CLI, lets a
# consumer group take some of them, and asks Prometheus' HTTP API
# (/api/v1/query) PromQL questions until it answers with every event
# counted, and evaluates every query of deploy/grafana-dashboard.json.
# Exits non-zero when Prometheus does not count every event within
# DEADLINE_S seconds, or a dashboard query fails.
#
#   apt-get install prometheus      # ships prometheus and promtool
#   cargo build --release -p hadron-server --bin hadron
#   deploy/prometheus-demo.sh
#
# HADRON_BIN and PROMETHEUS_BIN override the binaries; EVENTS (200) and
# CONSUMED (50) the amounts.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
HADRON=${HADRON_BIN:-$ROOT/target/release/hadron}
PROMETHEUS=${PROMETHEUS_BIN:-prometheus}
EVENTS=${EVENTS:-200}
CONSUMED=${CONSUMED:-50}
DEADLINE_S=${DEADLINE_S:-60}

command -v "$PROMETHEUS" >/dev/null || { echo "no $PROMETHEUS: apt-get install prometheus" >&2; exit 1; }
[ -x "$HADRON" ] || { echo "no $HADRON: cargo build --release -p hadron-server --bin hadron" >&2; exit 1; }

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# Waits (up to DEADLINE_S) until `curl URL` succeeds.
wait_http() {
  for _ in $(seq 1 $((DEADLINE_S * 10))); do
    curl -sf -o /dev/null "$1" && return 0
    sleep 0.1
  done
  echo "$1 did not answer within ${DEADLINE_S}s" >&2
  return 1
}

port=$(free_port); metrics_port=$(free_port); prom_port=$(free_port)
cat > "$work/hadron.yaml" <<EOF
dataDir: $work/hadron-data
listen: 127.0.0.1:$port
shardPorts: false
metricsListen: 127.0.0.1:$metrics_port
EOF
"$HADRON" server --config "$work/hadron.yaml" > "$work/hadron.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$metrics_port/metrics"
echo "hadron: client 127.0.0.1:$port, metrics http://127.0.0.1:$metrics_port/metrics"

cat > "$work/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: hadron
    static_configs:
      - targets: ["127.0.0.1:$metrics_port"]
EOF
"$PROMETHEUS" --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/prometheus-data" \
  --web.listen-address="127.0.0.1:$prom_port" > "$work/prometheus.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$prom_port/-/ready"
echo "prometheus: $("$PROMETHEUS" --version 2>&1 | head -1), http://127.0.0.1:$prom_port"

# The value of a PromQL query (the first series'), or "none".
query() {
  curl -sf --data-urlencode "query=$1" "http://127.0.0.1:$prom_port/api/v1/query" |
    python3 -c 'import sys, json
r = json.load(sys.stdin)["data"]["result"]
print(r[0]["value"][1] if r else "none")'
}

# Publish only once Prometheus has scraped the idle server, so that the
# rates below see the counters grow.
for _ in $(seq 1 $((DEADLINE_S * 10))); do
  [ "$(query 'up{job="hadron"}')" = "1" ] && break
  sleep 0.1
done
echo "publishing $EVENTS events with hadron publish..."
for i in $(seq 1 "$EVENTS"); do
  "$HADRON" publish --url "127.0.0.1:$port" --type demo.created --id "demo-$i" "payload $i" > /dev/null
done
"$HADRON" subscribe --url "127.0.0.1:$port" --group demo --count "$CONSUMED" > /dev/null
echo "consumer group demo took $CONSUMED of them"

published='sum(hadron_publish_events_total{stream="events"})'
got=none
for _ in $(seq 1 $((DEADLINE_S * 2))); do
  got=$(query "$published")
  [ "$got" = "$EVENTS" ] && break
  sleep 0.5
done
echo
echo "PromQL through Prometheus' /api/v1/query:"
for q in "$published" \
         'sum(rate(hadron_publish_events_total[1m]))' \
         'sum by (group) (hadron_group_lag)' \
         'histogram_quantile(0.99, sum by (le) (rate(hadron_commit_durable_wait_seconds_bucket[1m])))' \
         'sum(hadron_frames_received_total)' \
         'hadron_resident_memory_bytes' \
         'up{job="hadron"}'; do
  printf '  %-100s = %s\n' "$q" "$(query "$q")"
done
health=$(curl -sf "http://127.0.0.1:$prom_port/api/v1/targets" |
  python3 -c 'import sys, json
t = json.load(sys.stdin)["data"]["activeTargets"][0]
print(t["health"], repr(t["lastError"]))')
echo "  scrape target health: $health"
# Every query of the Grafana dashboard, its variables set to "all", must
# parse and evaluate (an error fails the demo); count those with data.
dashboard_check=$(python3 - "$ROOT/deploy/grafana-dashboard.json" "http://127.0.0.1:$prom_port" <<'PY'
import json, sys, urllib.parse, urllib.request
dash, base = json.load(open(sys.argv[1])), sys.argv[2]
bad, with_data, total = [], 0, 0
for panel in dash["panels"]:
    for target in panel["targets"]:
        total += 1
        q = target["expr"].replace("$__rate_interval", "1m")
        for v in ("instance", "stream", "pipeline"):
            q = q.replace("$" + v, ".*")
        url = base + "/api/v1/query?" + urllib.parse.urlencode({"query": q})
        try:
            r = json.load(urllib.request.urlopen(url))
        except Exception as e:
            bad.append(f"{panel['title']}: {q}: {e}")
            continue
        if r.get("status") != "success":
            bad.append(f"{panel['title']}: {q}: {r}")
        elif r["data"]["result"]:
            with_data += 1
print(f"{total} queries evaluate, {with_data} with data" if not bad else "FAIL " + "; ".join(bad))
PY
)
echo "  grafana dashboard: $dashboard_check"
case $dashboard_check in FAIL*) exit 1 ;; esac
if [ "$got" != "$EVENTS" ]; then
  echo "FAIL: $published answered $got, not $EVENTS, within ${DEADLINE_S}s" >&2
  exit 1
fi
echo "OK: Prometheus counts all $EVENTS events"
