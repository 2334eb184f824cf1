#!/usr/bin/env bash
# Runs the benchmark matrix of docs/benchmarks.md on this machine: echo with 1 KiB payloads
# against (1) one relay with the memory backplane, (2) one relay on one Redis, (3) three
# relays on a 3-master Redis Cluster, at increasing request rates. Reports land in
# target/bench/*.json and *.html; a summary table is printed at the end.
#
#   scripts/bench.sh [duration-seconds] [rates for memory] [rates for redis] [rates for cluster]
#
# Needs release binaries (cargo build --release -p rmb-relay -p rmb-loadtest) and
# redis-server / redis-cli. Everything runs on loopback and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${1:-10}
MEMORY_RATES=${2:-"25000 50000 100000 150000"}
REDIS_RATES=${3:-"10000 20000 40000"}
CLUSTER_RATES=${4:-"5000 10000 20000"}
OUT=target/bench
mkdir -p "$OUT"
# shellcheck source=scripts/bench-common.sh
source scripts/bench-common.sh

"$BIN/rmb-loadtest" twins --count 256 --seed 1 --out "$OUT/twins.yaml" --identities-out "$OUT/ids.json"

# Limits opened up: the benchmark measures the relay, not its per-twin rate limiter.
RELAY_ARGS=(--twins "$OUT/twins.yaml" --rate-messages 10000000 --rate-bytes 100000000000
            --outbound-queue 65536 --max-unconfirmed 4096 --log warn)

load() { # name, rate, relay urls...
  local name=$1 rate=$2; shift 2
  local relays=()
  for u in "$@"; do relays+=(--relay "$u"); done
  "$BIN/rmb-loadtest" run "${relays[@]}" --identities "$OUT/ids.json" --scenario echo \
    --rate "$rate" --duration "${DURATION}s" --payload-bytes 1024 --connections 64 --quiet \
    --json-out "$OUT/$name-$rate.json" --html-out "$OUT/$name-$rate.html" | sed "s/^/[$name $rate] /"
}

echo "== memory backplane, 1 relay"
relay 127.0.0.1:18080
for r in $MEMORY_RATES; do load memory "$r" ws://127.0.0.1:18080; done
kill "${PIDS[-1]}"; sleep 1

echo "== redis backplane, 1 relay, 1 redis"
redis_node 16379
relay 127.0.0.1:18081 --redis redis://127.0.0.1:16379
for r in $REDIS_RATES; do load redis "$r" ws://127.0.0.1:18081; done
kill "${PIDS[-1]}" "${PIDS[-2]}"; sleep 1

echo "== redis cluster, 3 relays, 3 masters + 3 replicas"
PORTS=(17001 17002 17003 17004 17005 17006)
for p in "${PORTS[@]}"; do redis_node "$p" --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000; done
redis-cli --cluster create $(printf '127.0.0.1:%s ' "${PORTS[@]}") --cluster-replicas 1 --cluster-yes >/dev/null
for _ in $(seq 1 100); do redis-cli -p 17001 cluster info | grep -q cluster_state:ok && break; sleep 0.1; done
CLUSTER="redis-cluster://127.0.0.1:17001?node=127.0.0.1:17002&node=127.0.0.1:17003"
relay 127.0.0.1:18091 --redis "$CLUSTER"
relay 127.0.0.1:18092 --redis "$CLUSTER"
relay 127.0.0.1:18093 --redis "$CLUSTER"
for r in $CLUSTER_RATES; do load cluster "$r" ws://127.0.0.1:18091 ws://127.0.0.1:18092 ws://127.0.0.1:18093; done

echo
echo "| setup | request rate/s | relayed envelopes/s | lost | p50 ms | p99 ms | p99.9 ms | max ms | relay RSS MiB |"
echo "|---|---|---|---|---|---|---|---|---|"
for f in "$OUT"/memory-*.json "$OUT"/redis-*.json "$OUT"/cluster-*.json; do
  [ -f "$f" ] || continue
  python3 - "$f" <<'PY'
import json, sys, os
r = json.load(open(sys.argv[1]))
l = r["latency_ms"]
rss = (r.get("relay_rss_bytes") or 0) / 2**20
name = os.path.basename(sys.argv[1]).split("-")[0]
print(f"| {name} | {r['rate']} | {r['throughput_per_s']:.0f} | {r['lost']} | {l['p50']:.2f} | {l['p99']:.2f} | {l['p999']:.2f} | {l['max']:.2f} | {rss:.0f} |")
PY
done
