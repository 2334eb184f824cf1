#!/usr/bin/env bash
# Renders the Helm chart into deploy/kubernetes/ and deploy/prometheus/alerts.yaml, with Helm's
# engine from the pinned helm-python-sdk (no helm binary needed). `--check` only compares.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONDONTWRITEBYTECODE=1
# shellcheck source=tests/deploy/venv.sh
. tests/deploy/venv.sh
deploy_venv
exec "$DEPLOY_PY" deploy/render.py "$@"
