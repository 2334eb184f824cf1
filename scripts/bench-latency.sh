#!/usr/bin/env bash
# Request/response latency matrix of docs/benchmarks.md ("RPC latency"): the closed-loop `rpc`
# scenario of rmb-loadtest (1 KiB payloads), each run side by side with rmb-loadtest's trivial
# websocket forwarder, against (1) one relay with the memory backplane, (2) one relay on one
# Redis, (3) three relays on a 3-master Redis Cluster with every pair across pods. Each setup
# runs window 1 with Nagle on in the clients (like the original rmb-peer), window 1 with Nagle
# off, and window 64 (Nagle on).
#
#   scripts/bench-latency.sh [duration-seconds] [pairs] [extra relay flags...]
#
# Needs release binaries (cargo build --release -p rmb-relay -p rmb-loadtest) and
# redis-server / redis-cli. Everything runs on loopback and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${1:-10}
PAIRS=${2:-16}
shift $(( $# > 2 ? 2 : $# ))
EXTRA=("$@")
OUT=target/bench-latency
mkdir -p "$OUT"
# shellcheck source=scripts/bench-common.sh
source scripts/bench-common.sh

"$BIN/rmb-loadtest" twins --count $((2 * PAIRS)) --seed 7 --out "$OUT/twins.yaml" --identities-out "$OUT/ids.json"

# Limits opened up: the benchmark measures latency, not the per-twin rate limiter.
RELAY_ARGS=(--twins "$OUT/twins.yaml" --rate-messages 10000000 --rate-bytes 100000000000
            --outbound-queue 65536 --log warn "${EXTRA[@]}")

matrix() { # name, redis nodes (comma list or ""), relay urls...
  local name=$1 nodes=$2; shift 2
  local args=()
  for u in "$@"; do args+=(--relay "$u"); done
  for pid in "${RELAY_PIDS[@]}"; do args+=(--relay-pid "$pid"); done
  for n in ${nodes//,/ }; do args+=(--redis-node "$n"); done
  for run in "1 on" "1 off" "64 on"; do
    set -- $run
    echo "== $name: window $1, nagle $2"
    "$BIN/rmb-loadtest" run "${args[@]}" --identities "$OUT/ids.json" --scenario rpc \
      --pairs "$PAIRS" --window "$1" --nagle "$2" --payload-bytes 1024 \
      --duration "${DURATION}s" --warmup 2s --baseline-forwarder
  done
}

stop_relays() { for pid in "${RELAY_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; RELAY_PIDS=(); sleep 1; }

relay 127.0.0.1:18180
matrix "memory backplane" "" ws://127.0.0.1:18180
stop_relays

redis_node 16479
relay 127.0.0.1:18181 --redis redis://127.0.0.1:16479
matrix "one Redis" "127.0.0.1:16479" ws://127.0.0.1:18181
stop_relays

PORTS=(17101 17102 17103)
for p in "${PORTS[@]}"; do redis_node "$p" --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000; done
redis-cli --cluster create $(printf '127.0.0.1:%s ' "${PORTS[@]}") --cluster-replicas 0 --cluster-yes >/dev/null
for _ in $(seq 1 100); do redis-cli -p 17101 cluster info | grep -q cluster_state:ok && break; sleep 0.1; done
CLUSTER="redis-cluster://127.0.0.1:17101?node=127.0.0.1:17102&node=127.0.0.1:17103"
relay 127.0.0.1:18191 --redis "$CLUSTER"
relay 127.0.0.1:18192 --redis "$CLUSTER"
relay 127.0.0.1:18193 --redis "$CLUSTER"
matrix "3 pods on Redis Cluster, every pair across pods" "127.0.0.1:17101,127.0.0.1:17102,127.0.0.1:17103" \
  ws://127.0.0.1:18191 ws://127.0.0.1:18192 ws://127.0.0.1:18193
