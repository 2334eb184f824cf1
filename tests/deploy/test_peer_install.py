"""rmb-peer install files: the container image (deploy/peer.Dockerfile) and the systemd unit
(deploy/systemd/rmb-peer.service with its environment file), checked with hadolint, BuildKit's
parser, systemd-analyze and the rmb-peer binary the cargo run just built."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import dockerfile
import pytest

from conftest import ROOT, TEST_SEED, Process, RedisServer, binary, clean_env, wait_until

BIN = Path(sys.executable).parent
DOCKERFILE = ROOT / "deploy/peer.Dockerfile"
UNIT = ROOT / "deploy/systemd/rmb-peer.service"
ENV_FILE = ROOT / "deploy/systemd/rmb-peer.env"


@pytest.fixture(scope="session")
def peer_bin() -> Path:
    return binary("RMB_PEER_BIN", "target/debug/rmb-peer")


def systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze is needed (Debian package systemd; scripts/test.sh installs it)"
    return tool


def env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as systemd's EnvironmentFile= reads them (comments, quotes)."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def unit_settings(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


# ---- container image -------------------------------------------------------------------------


def test_peer_dockerfile_lints():
    out = subprocess.run([str(BIN / "hadolint"), "--no-color", str(DOCKERFILE)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_peer_dockerfile_builds_rmb_peer_and_runs_it_unprivileged_without_secrets():
    commands = dockerfile.parse_file(str(DOCKERFILE))
    froms = [c for c in commands if c.cmd == "FROM"]
    assert len(froms) == 2, "multi-stage: a Rust builder and a runtime image"
    assert froms[0].value[0].startswith("rust:") and froms[0].value[-1] == "build"
    assert froms[1].value[0].startswith("debian:") and froms[1].value[0].endswith("-slim")
    build = commands[:commands.index(froms[1])]
    runtime = commands[commands.index(froms[1]):]
    build_runs = " ".join(" ".join(c.value) for c in build if c.cmd == "RUN")
    assert "cargo build --release --locked -p rmb-peer --bin rmb-peer" in build_runs
    users = [c.value[0] for c in runtime if c.cmd == "USER"]
    assert users and users[-1].split(":")[0] == "10001", "runtime runs as a non-root uid"
    assert [c.value for c in runtime if c.cmd == "ENTRYPOINT"] == [("/usr/local/bin/rmb-peer",)]
    assert not [c for c in runtime if c.cmd == "EXPOSE"], "the peer listens on nothing by default"
    copies = [c for c in runtime if c.cmd == "COPY"]
    assert any("--from=build" in c.flags and "/out/rmb-peer" in c.value for c in copies)
    for c in commands:
        text = " ".join(c.value).upper()
        assert not (c.cmd in ("ENV", "ARG") and ("MNEMONIC" in text or "SEED" in text)), \
            "a secret baked into the image"
    ignore = (ROOT / "deploy/peer.Dockerfile.dockerignore").read_text().split()
    assert "target/" in ignore and ".git/" in ignore


# ---- systemd unit ----------------------------------------------------------------------------


def localized_unit(tmp_path: Path, peer_bin: Path) -> Path:
    """The unit with its binary and environment file pointing into this checkout."""
    text = UNIT.read_text()
    text = text.replace("/usr/local/bin/rmb-peer", str(peer_bin))
    text = text.replace("/etc/rmb-peer/rmb-peer.env", str(ENV_FILE))
    path = tmp_path / "rmb-peer.service"
    path.write_text(text)
    return path


def test_unit_verifies(tmp_path, peer_bin):
    out = subprocess.run([systemd_analyze(), "verify", str(localized_unit(tmp_path, peer_bin))],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and not out.stderr.strip(), out.stdout + out.stderr


def test_unit_is_hardened(tmp_path, peer_bin):
    out = subprocess.run([systemd_analyze(), "security", "--offline=true", "--no-pager",
                          str(localized_unit(tmp_path, peer_bin))],
                         capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for rmb-peer\.service: ([0-9.]+)", out.stdout)
    assert m, out.stdout + out.stderr
    assert float(m.group(1)) <= 2.0, out.stdout


def test_unit_keeps_the_secret_off_the_command_line():
    settings = unit_settings(UNIT.read_text())
    exec_start = " ".join(settings["ExecStart"])
    assert exec_start == "/usr/local/bin/rmb-peer $RMB_PEER_ARGS"
    assert "-m" not in shlex.split(exec_start) and "mnemonic" not in exec_start.lower()
    assert settings["EnvironmentFile"] == ["/etc/rmb-peer/rmb-peer.env"]
    assert settings["DynamicUser"] == ["yes"] and settings["NoNewPrivileges"] == ["yes"]
    assert settings["Restart"] == ["always"]
    env = env_file(ENV_FILE)
    assert "RMB_MNEMONIC" in env and "RMB_PEER_ARGS" in env


def test_env_file_names_what_the_binary_reads(tmp_path, peer_bin, processes):
    """The example environment file, filled in, starts the peer as systemd would: the secret
    and the Redis from the environment, the other flags split from RMB_PEER_ARGS."""
    redis = RedisServer(tmp_path)
    processes.append(redis)
    twins = tmp_path / "twins.yaml"
    keys = subprocess.run([str(binary("RMBCTL_BIN", "target/debug/rmbctl")), "--json", "keys",
                           "--mnemonic", TEST_SEED], check=True, capture_output=True, text=True,
                          env=clean_env(), timeout=30)
    account = "0x" + json.loads(keys.stdout)["sr25519_public"]
    twins.write_text(f"twins:\n  - id: 1\n    account: \"{account}\"\n")
    values = env_file(ENV_FILE)
    values.update(RMB_MNEMONIC=TEST_SEED, RMB_REDIS=redis.url,
                  RMB_PEER_ARGS=f"--twins {twins} --relay ws://127.0.0.1:9")
    env = clean_env(**values, NO_COLOR="1")
    peer = Process([str(peer_bin), *shlex.split(values["RMB_PEER_ARGS"])], env,
                   tmp_path / "rmb-peer.log")
    processes.append(peer)

    def cli(*args: str) -> str:
        return subprocess.run(["redis-cli", "-p", str(redis.port), *args], check=True,
                              capture_output=True, text=True, timeout=30).stdout

    cli("LPUSH", "msgbus.system.local", json.dumps(
        {"ver": 1, "ref": "v", "cmd": "rmb.version", "exp": 10, "dat": "", "dst": [0],
         "ret": "install.ret", "shm": None, "now": 0}))
    answer = wait_until(lambda: cli("RPOP", "install.ret").strip(), 30,
                        f"rmb.version answered\n{peer.log()}")
    doc = json.loads(answer)
    assert doc["ref"] == "v" and doc["err"] is None
    wait_until(lambda: "gateway starting" in peer.log(), 30, f"twin 1 resolved\n{peer.log()}")
    assert TEST_SEED not in peer.log(), "the secret is never logged"
    assert peer.terminate(20) < 20
    assert peer.proc.returncode == 0, peer.log()
