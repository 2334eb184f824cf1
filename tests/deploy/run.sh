#!/usr/bin/env bash
# Deploy tests: the Helm chart, the generated manifests, the Dockerfile, the dashboard and the
# alert rules, checked with Helm's engine, Kubernetes schemas and the real relay binary.
#
#   tests/deploy/run.sh [pytest args...]
#
# RMB_RELAY_BIN / RMBCTL_BIN / RMB_PEER_BIN pick the binaries (default target/debug/...,
# built here if missing). Needs redis-server (scripts/test.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/../.."

export PYTHONDONTWRITEBYTECODE=1
# shellcheck source=tests/deploy/venv.sh
. tests/deploy/venv.sh
deploy_venv

if [ -z "${RMB_RELAY_BIN:-}" ] || [ -z "${RMBCTL_BIN:-}" ] || [ -z "${RMB_PEER_BIN:-}" ]; then
  if [ ! -x target/debug/rmb-relay ] || [ ! -x target/debug/rmbctl ] || [ ! -x target/debug/rmb-peer ]; then
    echo "building target/debug/rmb-relay, rmbctl and rmb-peer for the deploy tests" >&2
    cargo build --locked -p rmb-relay -p rmbctl -p rmb-peer
  fi
fi

exec "$DEPLOY_PY" -m pytest tests/deploy -p no:cacheprovider "$@"
