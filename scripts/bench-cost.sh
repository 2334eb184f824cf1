#!/usr/bin/env bash
# Cost-per-envelope matrix of docs/benchmarks.md ("Cluster cost per envelope", issue #18):
# rmb-loadtest's closed-loop `rpc` scenario (1 KiB, window 64 and window 1, Nagle off) side by
# side with its trivial websocket forwarder against (1) one relay on the memory backplane,
# (2) one relay on one Redis, (3) three relays on a 3-master Redis Cluster, every pair across
# pods. rmb-loadtest prints throughput, p50/p99, the relays' CPU per envelope (from their own
# /metrics `process_cpu_seconds_total`, --relay-metrics) and Redis CPU and commands per envelope
# (`INFO cpu` / `INFO commandstats` of every node; given one cluster node it finds the others
# with `CLUSTER NODES`), each read before and after the relay run, and the forwarder's from /proc.
# WINDOW1=0 skips the window-1 runs. NAGLE=on runs the clients with Nagle's algorithm on (as the
# original rmb-peer does); the default is off.
# With PERF=1 it records a `perf` profile (cpu-clock) of one relay during the window-64 run of
# each setup into target/bench-cost/perf-*.txt.
#
#   scripts/bench-cost.sh [duration-seconds] [pairs]
#
# Needs release binaries (cargo build --release -p rmb-relay -p rmb-loadtest), redis-server
# and redis-cli. Everything runs on loopback and stops by itself.
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."

DURATION=${1:-8}
PAIRS=${2:-10}
WARMUP=2
OUT=target/bench-cost
mkdir -p "$OUT"
# shellcheck source=scripts/bench-common.sh
source scripts/bench-common.sh

"$BIN/rmb-loadtest" twins --count $((2 * PAIRS)) --seed 7 --out "$OUT/twins.yaml" --identities-out "$OUT/ids.json"

RELAY_ARGS=(--twins "$OUT/twins.yaml" --rate-messages 10000000 --rate-bytes 100000000000
            --outbound-queue 65536 --log warn)
# RELAY_EXTRA="--redis-owner-cache-ms 0" adds relay flags; SETUPS="memory redis cluster" picks.
# shellcheck disable=SC2206
RELAY_ARGS+=(${RELAY_EXTRA:-})
SETUPS=${SETUPS:-memory redis cluster}
want() { [[ " $SETUPS " == *" $1 "* ]]; }

run() { # name, window, first Redis node ("" for none), relay urls...
  local name=$1 window=$2 node=$3; shift 3
  local args=()
  for u in "$@"; do args+=(--relay "$u" --relay-metrics "http://${u#ws://}/metrics"); done
  [ -n "$node" ] && args+=(--redis-node "$node")
  local tag
  tag=$(echo "$name-w$window-nagle-${NAGLE:-off}" | tr -c 'a-zA-Z0-9-\n' '_')
  echo "== $name: window $window, $PAIRS pairs, 1 KiB, nagle ${NAGLE:-off}; load:$(uptime | sed 's/.*load average//')"
  local perf_pid=""
  if [ "${PERF:-0}" = 1 ] && [ "$window" = 64 ]; then
    perf record -F 999 -g -e cpu-clock -o "$RUN/perf.data" -p "${RELAY_PIDS[0]}" -- sleep "$DURATION" >/dev/null 2>&1 &
    perf_pid=$!
  fi
  local nodes=()
  if [ -n "$node" ]; then
    # Every node of a cluster (one for a lone Redis); their counters restart with each run so
    # $OUT/commandstats-*.txt (calls and µs per call of each command) cover this run only.
    mapfile -t nodes < <(redis-cli -h "${node%:*}" -p "${node#*:}" cluster nodes 2>/dev/null | awk '/master/ {split($2, a, "@"); print a[1]}')
    [ "${#nodes[@]}" -gt 0 ] || nodes=("$node")
    for n in "${nodes[@]}"; do redis-cli -h "${n%:*}" -p "${n#*:}" config resetstat >/dev/null; done
  fi
  "$BIN/rmb-loadtest" run "${args[@]}" --identities "$OUT/ids.json" --scenario rpc \
    --pairs "$PAIRS" --window "$window" --nagle "${NAGLE:-off}" --payload-bytes 1024 \
    --duration "${DURATION}s" --warmup "${WARMUP}s" --baseline-forwarder --json-out "$OUT/$tag.json"
  for n in "${nodes[@]}"; do
    echo "# $n"; redis-cli -h "${n%:*}" -p "${n#*:}" info commandstats | grep -v '^#'
  done >"$OUT/commandstats-$tag.txt"
  if [ -n "$perf_pid" ]; then
    wait "$perf_pid" || true
    perf report -i "$RUN/perf.data" --no-children --percent-limit 0.4 --stdio -g none \
      >"$OUT/perf-$tag.txt" 2>/dev/null || true
    perf report -i "$RUN/perf.data" --children --percent-limit 3 --stdio -g caller,0.5,callee,function,percent \
      >"$OUT/perf-$tag-callers.txt" 2>/dev/null || true
    echo "perf profile of relay pid ${RELAY_PIDS[0]}: $OUT/perf-$tag.txt (call graphs: $OUT/perf-$tag-callers.txt)"
  fi
}

matrix() { # name, first Redis node, relay urls...
  local name=$1 node=$2; shift 2
  run "$name" 64 "$node" "$@"
  [ "${WINDOW1:-1}" = 1 ] && run "$name" 1 "$node" "$@"
  return 0
}

stop_relays() { for pid in "${RELAY_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; RELAY_PIDS=(); sleep 1; }

if want memory; then
  relay 127.0.0.1:18280
  matrix "memory backplane" "" ws://127.0.0.1:18280
  stop_relays
fi

if want redis; then
  redis_node 16579
  relay 127.0.0.1:18281 --redis redis://127.0.0.1:16579
  matrix "one Redis" "127.0.0.1:16579" ws://127.0.0.1:18281
  stop_relays
fi

want cluster || exit 0

PORTS=(17201 17202 17203)
for p in "${PORTS[@]}"; do redis_node "$p" --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000; done
redis-cli --cluster create $(printf '127.0.0.1:%s ' "${PORTS[@]}") --cluster-replicas 0 --cluster-yes >/dev/null
# Every node must agree before the relays connect: one that has not learned the slots yet
# makes their first commands time out.
for p in "${PORTS[@]}"; do
  for _ in $(seq 1 100); do redis-cli -p "$p" cluster info | grep -q cluster_state:ok && break; sleep 0.1; done
done
CLUSTER="redis-cluster://127.0.0.1:17201?node=127.0.0.1:17202&node=127.0.0.1:17203"
relay 127.0.0.1:18291 --redis "$CLUSTER"
relay 127.0.0.1:18292 --redis "$CLUSTER"
relay 127.0.0.1:18293 --redis "$CLUSTER"
matrix "3 pods on Redis Cluster, every pair across pods" 127.0.0.1:17201 \
  ws://127.0.0.1:18291 ws://127.0.0.1:18292 ws://127.0.0.1:18293
