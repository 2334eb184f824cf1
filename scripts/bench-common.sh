#!/usr/bin/env bash
# Shared by the benchmark scripts (sourced, not run): release binaries, a scratch directory
# removed on exit, background processes stopped on exit, and starters for relays and Redis
# nodes that return once they answer. The sourcing script sets OUT and RELAY_ARGS.

BIN=${BIN:-target/release}  # release binaries (override: BIN=other/target/release)
RUN=$(mktemp -d)
PIDS=()
RELAY_PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$RUN"
}
trap cleanup EXIT

wait_http() { for _ in $(seq 1 600); do curl -sf "http://$1/readyz" >/dev/null && return 0; sleep 0.05; done; echo "no relay at $1" >&2; tail -5 "$RUN/relay-$1.log" >&2; return 1; }

relay() { # addr, extra args...
  local addr=$1; shift
  "$BIN/rmb-relay" --listen "$addr" "${RELAY_ARGS[@]}" "$@" >"$RUN/relay-$addr.log" 2>&1 &
  PIDS+=($!); RELAY_PIDS+=($!)
  wait_http "$addr"
}

redis_node() { # port, extra args...
  local port=$1; shift
  mkdir -p "$RUN/redis-$port"
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$RUN/redis-$port" "$@" >/dev/null 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && return 0; sleep 0.05; done
}
