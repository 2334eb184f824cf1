#!/usr/bin/env bash
# Runs every test of the workspace. Integration tests start their own redis-server processes
# (standalone and Redis Cluster) on free ports, so the binaries must be installed; on a Debian
# machine where we are root, this installs them.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing redis-server (Debian package) for the integration tests"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "redis-server and redis-cli are needed by the tests: install the redis-server package" >&2
    exit 1
  fi
fi

exec cargo test --workspace --locked "$@"
