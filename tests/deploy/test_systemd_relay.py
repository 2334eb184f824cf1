"""deploy/systemd/rmb-relay.service: a valid, hardened unit whose command line the relay takes,
and whose environment file carries the original relay's flags."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from conftest import ROOT, clean_env

UNIT = ROOT / "deploy/systemd/rmb-relay.service"
ENV = ROOT / "deploy/systemd/rmb-relay.env"
ANALYZE = shutil.which("systemd-analyze")


def unit_for(relay_bin: Path, tmp_path: Path) -> Path:
    """The unit with the binary and environment file of this machine."""
    env = tmp_path / "rmb-relay.env"
    env.write_text(ENV.read_text())
    text = UNIT.read_text()
    text = text.replace("/usr/local/bin/rmb-relay", str(relay_bin))
    text = text.replace("/etc/rmb-relay/rmb-relay.env", str(env))
    unit = tmp_path / "rmb-relay.service"
    unit.write_text(text)
    return unit


def directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key, []).append(value)
    return out


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
def test_unit_verifies_and_is_hardened(relay_bin, tmp_path):
    unit = unit_for(relay_bin, tmp_path)
    out = subprocess.run([ANALYZE, "verify", str(unit)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    out = subprocess.run([ANALYZE, "security", "--offline=true", str(unit)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    level = float(out.stdout.rsplit("exposure level for rmb-relay.service:", 1)[1].split()[0])
    assert level <= 2.0, f"exposure {level}:\n{out.stdout}"


def test_unit_settings():
    d = directives(UNIT.read_text())
    assert d["ExecStart"] == ["/usr/local/bin/rmb-relay $RMB_RELAY_ARGS"]
    assert d["DynamicUser"] == ["yes"] and d["NoNewPrivileges"] == ["yes"]
    assert d["CapabilityBoundingSet"] == [""], "no capabilities by default"
    assert d["ProtectSystem"] == ["strict"]
    assert d["KillSignal"] == ["SIGTERM"]
    # Drain budget: --drain-seconds 10 + 5 s flush + 10 s connection wait, with a margin.
    assert int(d["TimeoutStopSec"][0].rstrip("s")) > 25
    assert int(d["LimitNOFILE"][0]) >= 100_000, "one socket per session"
    assert d["StateDirectory"] == ["rmb-relay"], "where a generated identity key is kept"


def test_environment_file_flags_pass_check_config(relay_bin):
    env = dict(line.split("=", 1) for line in ENV.read_text().splitlines()
               if line and not line.startswith("#"))
    # systemd splits an unbraced $VAR on whitespace, as shlex does here.
    args = shlex.split(env["RMB_RELAY_ARGS"])
    out = subprocess.run([str(relay_bin), *args, "--check-config"], capture_output=True,
                         text=True, timeout=60, env=clean_env())
    assert out.returncode == 0, out.stderr
    effective = tomllib.loads(out.stdout)
    assert effective["domains"] == ["relay.example.com"]
    assert effective["substrate"] == ["wss://tfchain.grid.tf:443"], "mainnet by default"
    assert effective["redis"].startswith("redis://")


def test_the_original_relay_command_line_fits_the_environment_file(relay_bin):
    """The original chart's command, pasted into RMB_RELAY_ARGS, is taken as is."""
    args = shlex.split("-d --domain relay.dev.grid.tf -r redis://redis:6379 "
                       "-s wss://tfchain.dev.grid.tf:443 -u 1000 -w 500 -l 0.0.0.0:80")
    out = subprocess.run([str(relay_bin), *args, "--check-config"], capture_output=True,
                         text=True, timeout=60, env=clean_env())
    assert out.returncode == 0, out.stderr
    effective = tomllib.loads(out.stdout)
    assert effective["listen"] == "0.0.0.0:80"
    assert effective["max_connections"] == 500_000
