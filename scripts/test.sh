#!/usr/bin/env bash
# Runs every test: the Rust workspace, then the deploy checks. Integration tests start their own
# redis-server processes (standalone and Redis Cluster) on free ports; on a Debian machine where
# we are root, missing tools are installed from Debian's packages.
set -euo pipefail
cd "$(dirname "$0")/.."

# Binaries the tests start: redis-server/redis-cli (standalone and cluster), openssl (a test
# CA for Redis TLS), systemd-analyze (the systemd units), python3 (the deploy tests make their
# own virtual environment), node/npm (polkadot.js against rmb-testchain).
missing=()
command -v redis-server >/dev/null && command -v redis-cli >/dev/null || missing+=(redis-server)
command -v openssl >/dev/null || missing+=(openssl)
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v python3 >/dev/null || missing+=(python3 python3-venv)
command -v npm >/dev/null || missing+=(nodejs npm)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing ${missing[*]} (Debian packages) for the tests"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "the tests need these Debian packages: ${missing[*]}" >&2
    exit 1
  fi
fi

# Rust tests first, then the deploy tests (Helm chart, generated manifests, Dockerfile, Grafana
# dashboard and alert rules, checked against the relay binary the cargo run just built). Both
# always run; the script fails if either does.
# The polkadot.js client testkit/tests/polkadot_js.rs drives (versions from package-lock.json).
npm ci --prefix tests/polkadotjs --no-audit --no-fund --loglevel=error

status=0
cargo test --workspace --locked "$@" || status=$?
deploy_status=0
tests/deploy/run.sh || deploy_status=$?
if [ "$status" -eq 0 ]; then
  status=$deploy_status
fi
exit "$status"
