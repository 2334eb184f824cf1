#!/usr/bin/env bash
# A relay cluster on this machine, without containers: N rmb-relay processes sharing a Redis
# Cluster of 3 masters and 3 replicas (6 redis-server processes), all on 127.0.0.1.
#
#   deploy/local-cluster.sh [start] N [RELAY_BASE_PORT] [REDIS_BASE_PORT]
#   deploy/local-cluster.sh status
#   deploy/local-cluster.sh stop
#
# Relay i listens on RELAY_BASE_PORT+i (default 18080), redis node j on REDIS_BASE_PORT+j
# (default 17000; Redis Cluster also uses port+10000 for its bus). Pids, logs, the twins file,
# the Redis data and a Prometheus scrape config go under RUN_DIR (default target/local-cluster).
#
# Environment:
#   RMB_RELAY_BIN  relay binary (default target/release/rmb-relay, else target/debug/rmb-relay)
#   TWINS          twins file for the relays (default examples/twins.yaml: two public demo twins)
#   RUN_DIR        state directory (default target/local-cluster)
#   DRAIN_SECONDS  --drain-seconds of the relays (default 2)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
RUN_DIR="${RUN_DIR:-$ROOT/target/local-cluster}"
DRAIN_SECONDS="${DRAIN_SECONDS:-2}"
REDIS_NODES=6

usage() {
  sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
}

die() {
  echo "local-cluster: $*" >&2
  exit 1
}

relay_bin() {
  if [ -n "${RMB_RELAY_BIN:-}" ]; then
    echo "$RMB_RELAY_BIN"
  elif [ -x "$ROOT/target/release/rmb-relay" ]; then
    echo "$ROOT/target/release/rmb-relay"
  else
    echo "$ROOT/target/debug/rmb-relay"
  fi
}

# Whether something accepts TCP connections on 127.0.0.1:$1.
port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Whether pid $1 is alive and runs a program whose name starts with $2 (guards against a
# recycled pid: we only ever signal processes we started).
alive_as() {
  local pid="$1" name="$2" comm
  [ -n "$pid" ] || return 1
  comm="$(ps -p "$pid" -o comm= 2>/dev/null)" || return 1
  [[ "$comm" == "$name"* ]]
}

# Polls `$@` every 0.2 s for up to $TIMEOUT seconds.
wait_for() {
  local deadline=$((SECONDS + TIMEOUT))
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}

http_ok() {
  curl -fs -o /dev/null --max-time 2 "http://127.0.0.1:$1$2"
}

cluster_ok() {
  local info
  info="$(redis-cli -h 127.0.0.1 -p "$1" cluster info 2>/dev/null)" || return 1
  [[ "$info" == *"cluster_state:ok"* && "$info" == *"cluster_slots_ok:16384"* ]]
}

replicas_attached() {
  local n
  n="$(redis-cli -h 127.0.0.1 -p "$1" cluster nodes 2>/dev/null | grep -c ' slave ' || true)"
  [ "$n" -ge 3 ]
}

running_pids() {
  local f
  for f in "$RUN_DIR"/*.pid; do
    [ -e "$f" ] || continue
    echo "$f"
  done
}

start() {
  local n="$1" relay_base="$2" redis_base="$3"
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "N must be a positive number, got '$n'"
  [[ "$relay_base" =~ ^[0-9]+$ && "$redis_base" =~ ^[0-9]+$ ]] || die "ports must be numbers"
  [ $((redis_base + REDIS_NODES - 1 + 10000)) -le 65535 ] || die "REDIS_BASE_PORT too high (bus port = port + 10000)"
  [ $((relay_base + n - 1)) -le 65535 ] || die "RELAY_BASE_PORT too high"
  command -v redis-server >/dev/null || die "redis-server not found (Debian: apt-get install redis-server)"
  command -v redis-cli >/dev/null || die "redis-cli not found (Debian: apt-get install redis-server)"
  command -v curl >/dev/null || die "curl not found"
  local bin
  bin="$(relay_bin)"
  [ -x "$bin" ] || die "relay binary $bin not found: cargo build -p rmb-relay (or set RMB_RELAY_BIN)"
  local twins="${TWINS:-$ROOT/examples/twins.yaml}"
  [ -r "$twins" ] || die "twins file $twins not readable (set TWINS)"

  if [ -n "$(running_pids)" ]; then
    die "$RUN_DIR already holds pid files: run '$0 stop' first"
  fi
  local p i
  for ((i = 0; i < REDIS_NODES; i++)); do
    p=$((redis_base + i))
    ! port_open "$p" || die "port $p is in use"
    ! port_open $((p + 10000)) || die "port $((p + 10000)) (cluster bus) is in use"
  done
  for ((i = 0; i < n; i++)); do
    ! port_open $((relay_base + i)) || die "port $((relay_base + i)) is in use"
  done

  mkdir -p "$RUN_DIR"
  rm -rf "$RUN_DIR"/redis-* "$RUN_DIR"/relay-*.log
  cp "$twins" "$RUN_DIR/twins.yaml"

  echo "starting $REDIS_NODES redis-server nodes on ports $redis_base..$((redis_base + REDIS_NODES - 1))"
  local addrs=() url=""
  for ((i = 0; i < REDIS_NODES; i++)); do
    p=$((redis_base + i))
    mkdir -p "$RUN_DIR/redis-$p"
    redis-server --port "$p" --bind 127.0.0.1 --protected-mode yes \
      --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000 \
      --dir "$RUN_DIR/redis-$p" --save "" --appendonly no --shutdown-timeout 1 \
      --daemonize yes --pidfile "$RUN_DIR/redis-$p.pid" --logfile "$RUN_DIR/redis-$p.log"
    addrs+=("127.0.0.1:$p")
    if [ -z "$url" ]; then url="redis-cluster://127.0.0.1:$p"; sep="?"; else url="$url${sep}node=127.0.0.1:$p"; sep="&"; fi
  done
  for ((i = 0; i < REDIS_NODES; i++)); do
    p=$((redis_base + i))
    TIMEOUT=10 wait_for redis-cli -h 127.0.0.1 -p "$p" ping >/dev/null \
      || die "redis-server on $p did not start (see $RUN_DIR/redis-$p.log)"
  done
  echo "forming the Redis Cluster (3 masters, 1 replica each)"
  redis-cli -h 127.0.0.1 -p "$redis_base" --cluster create "${addrs[@]}" \
    --cluster-replicas 1 --cluster-yes >"$RUN_DIR/cluster-create.log" 2>&1 \
    || die "redis-cli --cluster create failed (see $RUN_DIR/cluster-create.log)"
  TIMEOUT=30 wait_for cluster_ok "$redis_base" || die "Redis Cluster did not become healthy"
  TIMEOUT=30 wait_for replicas_attached "$redis_base" || die "Redis Cluster replicas did not attach"
  echo "$url" >"$RUN_DIR/redis-url"

  echo "starting $n relay(s) on ports $relay_base..$((relay_base + n - 1)) ($bin)"
  for ((i = 0; i < n; i++)); do
    p=$((relay_base + i))
    RMB_POD_ID="local-$i" nohup "$bin" \
      --listen "127.0.0.1:$p" --twins "$RUN_DIR/twins.yaml" --redis "$url" \
      --drain-seconds "$DRAIN_SECONDS" --log-format text \
      </dev/null >"$RUN_DIR/relay-$i.log" 2>&1 &
    echo "$!" >"$RUN_DIR/relay-$i.pid"
  done
  for ((i = 0; i < n; i++)); do
    p=$((relay_base + i))
    TIMEOUT=30 wait_for http_ok "$p" /readyz \
      || die "relay $i on port $p is not ready (see $RUN_DIR/relay-$i.log; '$0 stop' cleans up)"
  done

  {
    echo "# Prometheus scrape config for the local cluster (job name as in deploy/prometheus/alerts.yaml)."
    echo "scrape_configs:"
    echo "  - job_name: rmb-relay"
    echo "    static_configs:"
    echo "      - targets:"
    for ((i = 0; i < n; i++)); do echo "          - 127.0.0.1:$((relay_base + i))"; done
  } >"$RUN_DIR/prometheus.yml"

  echo
  echo "ready: $n relay(s) over a 6-node Redis Cluster"
  for ((i = 0; i < n; i++)); do
    echo "  relay $i: ws://127.0.0.1:$((relay_base + i))/   metrics: http://127.0.0.1:$((relay_base + i))/metrics"
  done
  echo "  redis:   $url"
  echo "  state:   $RUN_DIR (logs, pids, prometheus.yml)"
  echo "try:  target/debug/rmbctl ping --relay ws://127.0.0.1:$relay_base --twin 1 \\"
  echo "        --mnemonic \"absent express mesh fossil powder alien reform mansion symbol tuition mixed armor\""
  echo "stop: $0 stop"
}

status() {
  local f pid name any=""
  for f in $(running_pids); do
    any=1
    pid="$(cat "$f")"
    name="$(basename "$f" .pid)"
    case "$name" in relay-*) comm=rmb-relay ;; *) comm=redis-server ;; esac
    if alive_as "$pid" "$comm"; then
      echo "$name: running (pid $pid)"
    else
      echo "$name: not running (stale pid $pid)"
    fi
  done
  [ -n "$any" ] || echo "no local cluster in $RUN_DIR"
}

# Sends TERM to the process in pid file $1 if it is still ours, waits up to $2 seconds, then
# KILLs it. Removes the pid file.
stop_one() {
  local f="$1" limit="$2" comm="$3" pid
  pid="$(cat "$f" 2>/dev/null || true)"
  if alive_as "$pid" "$comm"; then
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + limit))
    while alive_as "$pid" "$comm" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
    if alive_as "$pid" "$comm"; then
      echo "  $(basename "$f" .pid) (pid $pid) did not stop in ${limit}s: killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$f"
}

stop() {
  local f found=""
  # Relays first, so they drain while Redis is still there (paced drain + flush + wait).
  for f in "$RUN_DIR"/relay-*.pid; do
    [ -e "$f" ] || continue
    found=1
    echo "stopping $(basename "$f" .pid) (drain)"
    stop_one "$f" $((DRAIN_SECONDS + 20)) rmb-relay &
  done
  wait
  for f in "$RUN_DIR"/redis-*.pid; do
    [ -e "$f" ] || continue
    found=1
    stop_one "$f" 15 redis-server &
  done
  wait
  if [ -n "$found" ]; then
    echo "stopped (logs kept in $RUN_DIR)"
  else
    echo "nothing to stop in $RUN_DIR"
  fi
}

cmd="${1:-}"
case "$cmd" in
  stop) stop ;;
  status) status ;;
  start) shift; [ $# -ge 1 ] || usage; start "$1" "${2:-18080}" "${3:-17000}" ;;
  "" | -h | --help | help) usage ;;
  *) start "$1" "${2:-18080}" "${3:-17000}" ;;
esac
