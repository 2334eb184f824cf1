"""Shared fixtures of the deploy tests: chart renderings and real relay / redis processes."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "deploy"))

import render as chart_render  # noqa: E402  (deploy/render.py)

CHART = ROOT / "helm" / "rmb-relay"
# The relay's fixed drain budget beyond --drain-seconds (relay/src/lib.rs): each closing
# session gets up to 5 s to flush and be confirmed, then up to 10 s are spent waiting for the
# remaining connections.
DRAIN_FLUSH_SECONDS = 5
DRAIN_CONNECTION_WAIT_SECONDS = 10
# A test identity: the 32-byte seed 0x01..01 (never a real twin).
TEST_SEED = "0x" + "01" * 32

# Values scenarios rendered by the tests.
INLINE_SECRETS_VALUES: dict[str, Any] = {
    "replicaCount": 2,
    "redis": {"url": "redis-cluster://:s3cret@redis-0.redis:6379?node=redis-1.redis:6379"},
    "identity": {"key": "0x" + "ab" * 32},
    "twins": {"existingConfigMap": "my-twins", "existingConfigMapKey": "directory.yaml"},
    "termination": {"preStopSleepSeconds": 0},
    "ingress": {"enabled": True, "className": ""},
    "podDisruptionBudget": {"enabled": False},
    "serviceAccount": {"create": False},
    "topologySpread": {"enabled": False},
}


def load_values(name: str) -> dict[str, Any]:
    return yaml.safe_load((HERE / name).read_text())


SCENARIOS: dict[str, dict[str, Any]] = {
    "default": {},
    "full": load_values("values-full.yaml"),
    "inline-secrets": INLINE_SECRETS_VALUES,
}


class Rendering:
    """One rendering of the chart: templates by file name and parsed objects."""

    def __init__(self, values: dict[str, Any], name: str = "rmb-relay", namespace: str = "rmb"):
        self.values = values
        self.templates = {Path(k).name: v for k, v in
                          chart_render.render(values, name=name, namespace=namespace).items()}
        self.objects: list[dict[str, Any]] = []
        for fname, text in self.templates.items():
            if fname.endswith(".yaml"):
                self.objects.extend(d for d in yaml.safe_load_all(text) if d)

    def kinds(self) -> list[str]:
        return sorted(o["kind"] for o in self.objects)

    def one(self, kind: str) -> dict[str, Any]:
        found = [o for o in self.objects if o["kind"] == kind]
        assert len(found) == 1, f"expected one {kind}, found {len(found)}"
        return found[0]

    def maybe(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def config_maps(self) -> dict[str, dict[str, Any]]:
        return {o["metadata"]["name"]: o for o in self.maybe("ConfigMap")}

    def relay_toml_text(self) -> str:
        for cm in self.maybe("ConfigMap"):
            if "relay.toml" in cm.get("data", {}):
                return cm["data"]["relay.toml"]
        raise AssertionError("no ConfigMap with relay.toml")

    def relay_toml(self) -> dict[str, Any]:
        return tomllib.loads(self.relay_toml_text())

    def container(self) -> dict[str, Any]:
        containers = self.one("Deployment")["spec"]["template"]["spec"]["containers"]
        assert len(containers) == 1
        return containers[0]


@pytest.fixture(scope="session")
def renderings() -> dict[str, Rendering]:
    return {name: Rendering(values) for name, values in SCENARIOS.items()}


# ---- processes ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


def wait_until(check, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except OSError as e:
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def binary(env_name: str, default: str) -> Path:
    path = Path(os.environ.get(env_name) or ROOT / default)
    assert path.is_file() and os.access(path, os.X_OK), (
        f"{path} is missing: build it (cargo build -p rmb-relay -p rmbctl) or set {env_name}"
    )
    return path


@pytest.fixture(scope="session")
def relay_bin() -> Path:
    return binary("RMB_RELAY_BIN", "target/debug/rmb-relay")


@pytest.fixture(scope="session")
def rmbctl_bin() -> Path:
    return binary("RMBCTL_BIN", "target/debug/rmbctl")


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any RMB_* variable (they would override the config file)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RMB_")}
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def test_twin(rmbctl_bin: Path) -> dict[str, Any]:
    out = subprocess.run([str(rmbctl_bin), "--json", "keys", "--mnemonic", TEST_SEED],
                         check=True, capture_output=True, text=True, env=clean_env(), timeout=30)
    keys = json.loads(out.stdout)
    return {"id": 1, "account": "0x" + keys["sr25519_public"], "seed": TEST_SEED}


@pytest.fixture(scope="session")
def twins_file(tmp_path_factory, test_twin) -> Path:
    path = tmp_path_factory.mktemp("twins") / "twins.yaml"
    path.write_text(f"twins:\n  - id: {test_twin['id']}\n    account: \"{test_twin['account']}\"\n")
    return path


def localize_toml(text: str, port: int, twins: Path) -> str:
    """The chart's relay.toml with the listen address and twins file of this machine (a local
    twins file in place of tfchain, which tests cannot reach)."""
    text, n1 = re.subn(r'(?m)^listen = .*$', f'listen = "127.0.0.1:{port}"', text)
    text, n2 = re.subn(r'(?m)^(twins|substrate) = .*$', f'twins = "{twins}"', text)
    assert n1 == 1 and n2 == 1, "relay.toml lacks listen, or twins / substrate"
    return text


class Process:
    """A child process we started, with its log; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path):
        self.args = args
        self.log_path = log
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 30.0) -> float:
        """SIGTERM; returns the seconds until exit."""
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired as e:
                self.proc.kill()
                self.proc.wait(10)
                raise AssertionError(
                    f"{self.args[0]} did not stop within {timeout}s of SIGTERM") from e
        self._log.close()
        return time.monotonic() - started

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


class Relay(Process):
    def __init__(self, bin: Path, config: Path, port: int, env: dict[str, str], log: Path):
        super().__init__([str(bin), "--config", str(config)], env, log)
        self.port = port
        wait_until(lambda: self.alive() and http_get(port, "/healthz")[0] == 200, 60,
                   f"relay on port {port} to answer /healthz\n{self.log()}")

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"relay exited with {self.proc.returncode}:\n{self.log()}")
        return True

    def get(self, path: str) -> tuple[int, str]:
        return http_get(self.port, path)

    def metrics(self) -> str:
        status, body = self.get("/metrics")
        assert status == 200
        return body


def start_relay(relay_bin: Path, toml_text: str, twins: Path, workdir: Path,
                env: dict[str, str] | None = None) -> Relay:
    port = free_port()
    config = workdir / f"relay-{port}.toml"
    config.write_text(localize_toml(toml_text, port, twins))
    return Relay(relay_bin, config, port, env or clean_env(), workdir / f"relay-{port}.log")


class RedisServer(Process):
    def __init__(self, workdir: Path):
        if not any((Path(p) / "redis-server").exists()
                   for p in os.environ.get("PATH", "").split(os.pathsep)):
            raise AssertionError("redis-server is needed (scripts/test.sh installs it)")
        self.port = free_port()
        data = workdir / f"redis-{self.port}"
        data.mkdir()
        super().__init__(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                          "--save", "", "--appendonly", "no", "--dir", str(data)],
                         clean_env(), workdir / f"redis-{self.port}.log")
        wait_until(self.ping, 20, f"redis-server on port {self.port}")

    def ping(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    """Processes a test starts; whatever is still running at the end is killed."""
    started: list[Process] = []
    yield started
    for p in reversed(started):
        p.kill()


# ---- metrics exposition ---------------------------------------------------------------------


def exposed_series_names(text: str) -> set[str]:
    """Series names a Prometheus server can query, from the relay's /metrics text."""
    names: set[str] = set()
    for line in text.splitlines():
        m = re.match(r"# TYPE (\S+) (\S+)", line)
        if not m:
            continue
        name, kind = m.groups()
        if kind == "histogram":
            names.update({f"{name}_bucket", f"{name}_sum", f"{name}_count"})
        elif kind == "summary":
            names.update({name, f"{name}_sum", f"{name}_count"})
        else:
            names.add(name)
    return names


# ---- guard: a run that executes no test must fail ----------------------------------------

_PASSED = {"n": 0}


def pytest_runtest_logreport(report):
    if report.when == "call" and report.passed:
        _PASSED["n"] += 1


def pytest_sessionfinish(session, exitstatus):
    if exitstatus == 0 and _PASSED["n"] == 0:
        print("\nno deploy test passed (none ran, or all were skipped): failing", file=sys.stderr)
        session.exitstatus = 1
