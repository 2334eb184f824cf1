#!/usr/bin/env bash
# Sourced by tests/deploy/run.sh and deploy/render.sh: makes sure target/deploy-venv holds
# exactly tests/deploy/requirements.txt, and sets DEPLOY_PY to its python.
# Python >= 3.10 is needed (helm-python-sdk); PYTHON picks the interpreter (default python3).
# shellcheck disable=SC2034  # DEPLOY_PY is read by the scripts that source this file

deploy_venv() {
  local root venv req stamp want python
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
  venv="$root/target/deploy-venv"
  req="$root/tests/deploy/requirements.txt"
  stamp="$venv/.requirements.sha256"
  python="${PYTHON:-python3}"
  want="$(sha256sum "$req" | cut -d' ' -f1)"
  if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    DEPLOY_PY="$venv/bin/python"
    return 0
  fi
  "$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' || {
    echo "deploy tests need Python >= 3.10 (found: $("$python" --version 2>&1))" >&2
    return 1
  }
  echo "setting up $venv (tests/deploy/requirements.txt)" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv"
  # Wheels only: the helm-python-sdk source package would need a Go toolchain.
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    --only-binary=:all: -r "$req"
  echo "$want" >"$stamp"
  DEPLOY_PY="$venv/bin/python"
}
