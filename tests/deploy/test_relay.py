"""The chart, dashboard and alerts against the real relay binary: probe paths and port, the
rendered config file, the drain budget, and every metric name."""

from __future__ import annotations

import http.client
import json
import subprocess
import tomllib

import promql_parser
import pytest
import yaml

from conftest import (ROOT, SCENARIOS, RedisServer, clean_env, exposed_series_names,
                      localize_toml, start_relay, wait_until)
from test_deploy_files import ALERTS, dashboard_panels, grafana_expr

# ---- --check-config accepts what the chart renders ----------------------------------------


def check_config(relay_bin, config, env=None):
    return subprocess.run([str(relay_bin), "--config", str(config), "--check-config"],
                          capture_output=True, text=True, timeout=60, env=env or clean_env())


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_rendered_config_passes_check_config(renderings, relay_bin, twins_file, tmp_path,
                                             scenario):
    r = renderings[scenario]
    text = localize_toml(r.relay_toml_text(), 8080, twins_file)
    config = tmp_path / "relay.toml"
    config.write_text(text)
    env = clean_env()
    container_env = {e["name"] for e in r.container().get("env", [])}
    if "RMB_REDIS" in container_env:
        # The chart injects the URL from a Secret: check the two together.
        env["RMB_REDIS"] = "redis-cluster://u:p@127.0.0.1:7000?node=127.0.0.1:7001"
    out = check_config(relay_bin, config, env)
    assert out.returncode == 0, out.stderr
    effective = tomllib.loads(out.stdout)
    for key, value in tomllib.loads(text).items():
        assert effective[key] == value, f"{key}: chart {value!r}, relay {effective[key]!r}"
    if "RMB_REDIS" in env:
        # Taken from the environment, and printed without its password.
        assert effective["redis"] == env["RMB_REDIS"].replace("u:p@", "u:***@")


def test_check_config_would_catch_a_wrong_key(renderings, relay_bin, twins_file, tmp_path):
    """The test above is not vacuous: the relay refuses what it does not know."""
    text = localize_toml(renderings["default"].relay_toml_text(), 8080, twins_file)
    config = tmp_path / "relay.toml"
    config.write_text(text + "max_tll = 5\n")
    out = check_config(relay_bin, config)
    assert out.returncode == 2
    assert "max_tll" in out.stderr


# ---- probes, drain ----------------------------------------------------------------------------


def probe_paths(rendering):
    c = rendering.container()
    return {c[p]["httpGet"]["path"] for p in ("startupProbe", "livenessProbe", "readinessProbe")}


def test_probes_answer_on_the_chart_port(renderings, relay_bin, twins_file, tmp_path, processes):
    r = renderings["default"]
    relay = start_relay(relay_bin, r.relay_toml_text(), twins_file, tmp_path)
    processes.append(relay)
    for path in sorted(probe_paths(r)):
        status, body = relay.get(path)
        assert status == 200, f"{path}: {status} {body}"
    status, _ = relay.get("/metrics")
    assert status == 200
    # The chart's Service and Ingress send websockets to "/": without upgrade headers the relay
    # answers 426 there, not 404.
    assert relay.get("/")[0] == 426


def _handshake_without_token(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/", headers={"Connection": "Upgrade", "Upgrade": "websocket",
                                          "Sec-WebSocket-Version": "13",
                                          "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
        return conn.getresponse().status
    finally:
        conn.close()


def test_drain_fits_the_grace_period(renderings, relay_bin, rmbctl_bin, twins_file, test_twin,
                                     tmp_path, processes):
    """SIGTERM with a live session: the relay, configured by the chart's own file, exits well
    inside terminationGracePeriodSeconds minus the preStop pause."""
    r = renderings["default"]
    relay = start_relay(relay_bin, r.relay_toml_text(), twins_file, tmp_path)
    processes.append(relay)
    listen_log = open(tmp_path / "listen.log", "wb")
    listener = subprocess.Popen(
        [str(rmbctl_bin), "listen", "--relay", f"ws://127.0.0.1:{relay.port}",
         "--twin", str(test_twin["id"]), "--mnemonic", test_twin["seed"]],
        stdin=subprocess.DEVNULL, stdout=listen_log, stderr=subprocess.STDOUT, env=clean_env())
    try:
        wait_until(lambda: "rmb_relay_sessions 1" in relay.metrics(), 30, "a session")
        took = relay.terminate(timeout=120)
    finally:
        if listener.poll() is None:
            listener.kill()
        listener.wait(10)
        listen_log.close()
    assert relay.proc.returncode == 0, relay.log()
    assert "draining" in relay.log()
    pod = r.one("Deployment")["spec"]["template"]["spec"]
    budget = pod["terminationGracePeriodSeconds"] - r.container()["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert took < budget, f"drain took {took:.1f}s, the pod has {budget}s after preStop"


# ---- metric names ---------------------------------------------------------------------------


def metric_names(expr: str) -> set[str]:
    names: set[str] = set()

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            name = node.name
            if name is None:
                name = next(m.value for m in node.matchers.matchers if m.name == "__name__")
            names.add(name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def dashboard_metric_names() -> set[str]:
    _, panels = dashboard_panels()
    board = json.loads((ROOT / "deploy/grafana/rmb-relay-dashboard.json").read_text())
    names = set()
    for p in panels:
        for t in p["targets"]:
            names |= metric_names(grafana_expr(t["expr"]))
    for v in board["templating"]["list"]:
        if v["type"] == "query":
            query = v["query"]["query"]
            inner = query[query.index("(") + 1:query.rindex(",")]
            names |= metric_names(grafana_expr(inner))
    return names


def alert_metric_names(renderings) -> set[str]:
    names = set()
    rules = yaml.safe_load(ALERTS.read_text())["groups"]
    rules += renderings["full"].one("PrometheusRule")["spec"]["groups"]
    for group in rules:
        for rule in group["rules"]:
            names |= metric_names(rule["expr"])
    return names


@pytest.fixture
def busy_relay(renderings, relay_bin, rmbctl_bin, twins_file, test_twin, tmp_path, processes):
    """A relay on the chart's config with a real Redis backplane (URL from RMB_REDIS, as the
    chart does), driven so that every lazily created series exists: a refused handshake, a
    session that came and went, and failed Redis commands after Redis went away."""
    redis = RedisServer(tmp_path)
    processes.append(redis)
    relay = start_relay(relay_bin, renderings["default"].relay_toml_text(), twins_file, tmp_path,
                        env=clean_env(RMB_REDIS=redis.url, RMB_POD_ID="deploy-test"))
    processes.append(relay)
    wait_until(lambda: relay.get("/readyz")[0] == 200, 30,
               "readiness through the Redis delivery probe")
    assert _handshake_without_token(relay.port) == 401
    ping = subprocess.run(
        [str(rmbctl_bin), "ping", "--relay", f"ws://127.0.0.1:{relay.port}",
         "--twin", str(test_twin["id"]), "--mnemonic", test_twin["seed"], "--timeout", "10"],
        capture_output=True, text=True, timeout=60, env=clean_env())
    assert ping.returncode == 0, ping.stdout + ping.stderr
    wait_until(lambda: "rmb_relay_sessions_closed_total{" in relay.metrics(), 20,
               "the session to be counted as closed")
    redis.kill()
    wait_until(lambda: "rmb_relay_redis_errors_total{" in relay.metrics(), 40,
               "failed Redis commands to be counted")
    # Readiness follows Redis: without it the pod must leave the Service.
    wait_until(lambda: relay.get("/readyz")[0] == 503, 30, "/readyz to fail without Redis")
    return relay


def test_every_dashboard_and_alert_metric_is_exported(busy_relay, renderings):
    text = busy_relay.metrics()
    exposed = exposed_series_names(text)
    used_dashboard = dashboard_metric_names()
    used_alerts = alert_metric_names(renderings)
    assert len(used_dashboard) >= 20 and len(used_alerts) >= 8
    missing = sorted((used_dashboard | used_alerts) - exposed)
    assert not missing, f"not in the relay's /metrics: {missing}"
    # Histograms are queried through their series, never by the bare family name.
    families = {line.split()[2]: line.split()[3] for line in text.splitlines()
                if line.startswith("# TYPE ")}
    for name in used_dashboard | used_alerts:
        assert families.get(name) != "histogram", f"{name} is a histogram: use _bucket/_sum/_count"
    # exposed_series_names understands the relay's exposition format.
    assert {"rmb_relay_routing_seconds_bucket", "rmb_relay_routing_seconds_count",
            "rmb_relay_redis_errors_total", "process_resident_memory_bytes"} <= exposed
    assert "rmb_relay_routing_seconds" not in exposed

