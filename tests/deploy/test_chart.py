"""The Helm chart: lint, render, values schema, and what the templates promise."""

from __future__ import annotations

import copy
import json
import subprocess
import tomllib
from pathlib import Path

import helm_python as helm
import jsonschema
import pytest
import yaml

from conftest import (CHART, DRAIN_CONNECTION_WAIT_SECONDS, DRAIN_FLUSH_SECONDS,
                      SCENARIOS, Rendering, chart_render, clean_env)

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
DEFAULTS = yaml.safe_load((CHART / "values.yaml").read_text())


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_chart_lints_strict(scenario):
    report = helm.lint(str(CHART), SCENARIOS[scenario], strict=True, namespace="rmb")
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert report["total_charts_linted"] == 1
    assert not problems, problems


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_chart_renders(renderings, scenario):
    r = renderings[scenario]
    kinds = r.kinds()
    for kind in ("ConfigMap", "Deployment", "Service"):
        assert kind in kinds
    assert "NOTES.txt" in r.templates and r.templates["NOTES.txt"].strip()


def test_default_render_resources(renderings):
    # Twins come from tfchain by default: no twins ConfigMap.
    assert renderings["default"].kinds() == sorted(
        ["ConfigMap", "Deployment", "PodDisruptionBudget", "Service", "ServiceAccount"]
    )


def test_full_render_resources(renderings):
    assert renderings["full"].kinds() == sorted([
        "ConfigMap", "ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Ingress",
        "PodDisruptionBudget", "PrometheusRule", "Service", "ServiceAccount", "ServiceMonitor",
    ])


def test_values_yaml_matches_schema_and_helm_defaults():
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    jsonschema.validate(DEFAULTS, SCHEMA)
    with helm.Chart.load(str(CHART)) as chart:
        assert chart.values == DEFAULTS
        assert chart.schema is not None


def _described(node, path="$"):
    """Every property in the schema has a type (or oneOf) and a description."""
    missing = []
    for key, sub in node.get("properties", {}).items():
        here = f"{path}.{key}"
        if "description" not in sub:
            missing.append(f"{here}: no description")
        if "type" not in sub and "oneOf" not in sub:
            missing.append(f"{here}: no type")
        missing += _described(sub, here)
    items = node.get("items")
    if isinstance(items, dict):
        missing += _described(items, path + "[]")
    return missing


def test_schema_types_and_describes_every_value():
    assert SCHEMA["additionalProperties"] is False
    assert not _described(SCHEMA)

    def keys(values, prefix=""):
        for k, v in values.items():
            yield prefix + k
            if isinstance(v, dict) and k not in ("behavior", "affinity", "resources"):
                yield from keys(v, prefix + k + ".")

    def schema_has(dotted):
        node = SCHEMA
        for part in dotted.split("."):
            props = node.get("properties", {})
            if part not in props:
                return False
            node = props[part]
        return True

    undocumented = [k for k in keys(DEFAULTS) if not schema_has(k)]
    assert not undocumented, f"values without a schema entry: {undocumented}"


BAD_VALUES = {
    "replicaCount as text": {"replicaCount": "three"},
    "unknown top-level key": {"replicas": 3},
    "unknown config key": {"config": {"maxTTL": 10}},
    "log format": {"config": {"logFormat": "xml"}},
    "negative drain": {"config": {"drainSeconds": -1}},
    "redis url scheme": {"redis": {"url": "http://redis:6379"}},
    "preStop method": {"termination": {"preStopMethod": "wait"}},
    "twin without account": {"twins": {"entries": [{"id": 1}]}},
    "twin id zero": {"twins": {"entries": [{"id": 0, "account": "0x00"}]}},
    "ingress path type": {"ingress": {"hosts": [{"host": "a", "paths": [{"path": "/", "pathType": "Any"}]}]}},
    "memory target as text": {"autoscaling": {"targetMemoryUtilizationPercentage": "75%"}},
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_schema_rejects_bad_values(case):
    with helm.Chart.load(str(CHART)) as chart:
        with pytest.raises(helm.HelmValuesError):
            chart.validate_schema(BAD_VALUES[case])
    # The independent validator agrees, so the schema (not Helm's coercion) refuses it.
    with pytest.raises(jsonschema.ValidationError):
        merged = copy.deepcopy(DEFAULTS)
        _merge(merged, BAD_VALUES[case])
        jsonschema.validate(merged, SCHEMA)


def _merge(base, override):
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v


def test_schema_rejects_bad_values_file(tmp_path):
    """A values file as an operator would write it, checked by Helm's own validation."""
    bad = tmp_path / "bad-values.yaml"
    bad.write_text("replicaCount: three\nredis:\n  url: redis://r:6379\n  pasword: x\n")
    values = yaml.safe_load(bad.read_text())
    with helm.Chart.load(str(CHART)) as chart:
        with pytest.raises(helm.HelmValuesError) as err:
            chart.validate_schema(values)
    text = str(err.value)
    assert "replicaCount" in text
    assert "pasword" in text


def test_schema_accepts_the_scenarios():
    with helm.Chart.load(str(CHART)) as chart:
        for values in SCENARIOS.values():
            chart.validate_schema(values)


@pytest.mark.parametrize("values,message", [
    ({"replicaCount": 2}, "needs Redis"),
    ({"autoscaling": {"enabled": True}}, "needs Redis"),
    ({"config": {"idleTimeout": 20, "pingInterval": 20}}, "idleTimeout"),
    ({"ingress": {"enabled": True, "timeoutSeconds": 30}}, "ingress.timeoutSeconds"),
])
def test_chart_refuses_broken_settings(values, message):
    with pytest.raises(helm.HelmError) as err:
        chart_render.render(values)
    assert message in str(err.value)


# ---- the Deployment ------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_pod_is_hardened(renderings, scenario):
    r = renderings[scenario]
    pod = r.one("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    sc = r.container()["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_probes_use_the_relay_endpoints_on_the_listen_port(renderings, scenario):
    r = renderings[scenario]
    c = r.container()
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    listen_port = int(r.relay_toml()["listen"].rsplit(":", 1)[1])
    assert ports == {"http": listen_port}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    svc = r.one("Service")["spec"]["ports"]
    assert [p["targetPort"] for p in svc] == ["http"]


def _pre_stop_seconds(container) -> int:
    hook = container.get("lifecycle", {}).get("preStop")
    if not hook:
        return 0
    if "sleep" in hook:
        return int(hook["sleep"]["seconds"])
    command = hook["exec"]["command"]
    assert command[0].endswith("sleep")
    return int(command[-1])


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_grace_period_covers_pre_stop_and_drain(renderings, scenario):
    r = renderings[scenario]
    pod = r.one("Deployment")["spec"]["template"]["spec"]
    grace = pod["terminationGracePeriodSeconds"]
    drain = r.relay_toml()["drain_seconds"]
    pre_stop = _pre_stop_seconds(r.container())
    needed = pre_stop + drain + DRAIN_FLUSH_SECONDS + DRAIN_CONNECTION_WAIT_SECONDS
    assert grace > needed, f"grace {grace}s does not exceed {needed}s"
    values = SCENARIOS[scenario]
    extra = values.get("termination", {}).get("extraGraceSeconds",
                                              DEFAULTS["termination"]["extraGraceSeconds"])
    assert grace == needed + extra


def test_grace_period_follows_drain_seconds():
    r = Rendering({"config": {"drainSeconds": 120}, "termination": {"preStopSleepSeconds": 7}})
    assert r.one("Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == (
        7 + 120 + DRAIN_FLUSH_SECONDS + DRAIN_CONNECTION_WAIT_SECONDS
        + DEFAULTS["termination"]["extraGraceSeconds"])


def test_pre_stop_methods(renderings):
    assert renderings["default"].container()["lifecycle"]["preStop"] == {"sleep": {"seconds": 5}}
    assert renderings["full"].container()["lifecycle"]["preStop"] == {
        "exec": {"command": ["/bin/sleep", "10"]}}
    assert "lifecycle" not in renderings["inline-secrets"].container()


def test_rolling_update_never_drops_capacity(renderings):
    for name, r in renderings.items():
        spec = r.one("Deployment")["spec"]
        assert spec["strategy"]["type"] == "RollingUpdate"
        assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0, name
        assert spec["strategy"]["rollingUpdate"]["maxSurge"] not in (0, "0%"), name


def test_topology_spread(renderings):
    spread = renderings["default"].one("Deployment")["spec"]["template"]["spec"][
        "topologySpreadConstraints"]
    assert [c["topologyKey"] for c in spread] == ["topology.kubernetes.io/zone",
                                                  "kubernetes.io/hostname"]
    selector = renderings["default"].one("Deployment")["spec"]["selector"]["matchLabels"]
    for c in spread:
        assert c["labelSelector"]["matchLabels"] == selector
    full = renderings["full"].one("Deployment")["spec"]["template"]["spec"]
    assert {c["whenUnsatisfiable"] for c in full["topologySpreadConstraints"]} == {"DoNotSchedule"}
    off = renderings["inline-secrets"].one("Deployment")["spec"]["template"]["spec"]
    assert "topologySpreadConstraints" not in off


def test_replicas_left_to_the_hpa(renderings):
    assert renderings["default"].one("Deployment")["spec"]["replicas"] == 1
    assert "replicas" not in renderings["full"].one("Deployment")["spec"]


# ---- config and secrets --------------------------------------------------------------------


def test_config_toml_mirrors_values(renderings):
    toml = renderings["full"].relay_toml()
    values = SCENARIOS["full"]
    assert toml["domains"] == values["config"]["domains"]
    assert toml["drain_seconds"] == values["config"]["drainSeconds"]
    assert toml["idle_timeout"] == values["config"]["idleTimeout"]
    assert toml["redis_wait_replicas"] == values["redis"]["waitReplicas"]
    assert toml["redis_timeout_ms"] == values["redis"]["timeoutMs"]
    assert toml["twins"] == "/etc/rmb/twins/twins.yaml"
    assert toml["otlp_endpoint"] == values["config"]["otlpEndpoint"]
    assert "redis" not in toml, "the Redis URL (credentials) must not be in the ConfigMap"
    default = renderings["default"].relay_toml()
    assert "otlp_endpoint" not in default, "tracing is off by default"
    for key in DEFAULTS["config"]:
        if key in ("port", "domains", "otlpEndpoint", "extra"):
            continue
        snake = "".join("_" + ch.lower() if ch.isupper() else ch for ch in key)
        assert default[snake] == DEFAULTS["config"][key], key


def _env(container):
    return {e["name"]: e for e in container.get("env", [])}


def test_redis_url_comes_from_a_secret(renderings):
    assert "RMB_REDIS" not in _env(renderings["default"].container())
    assert not renderings["default"].maybe("Secret")

    full = _env(renderings["full"].container())["RMB_REDIS"]
    assert full["valueFrom"]["secretKeyRef"] == {"name": "rmb-redis", "key": "url"}
    assert not renderings["full"].maybe("Secret"), "existing secrets: the chart creates none"

    r = renderings["inline-secrets"]
    secret = r.one("Secret")
    ref = _env(r.container())["RMB_REDIS"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == secret["metadata"]["name"]
    import base64
    assert base64.b64decode(secret["data"][ref["key"]]).decode() == \
        SCENARIOS["inline-secrets"]["redis"]["url"]
    for cm in r.maybe("ConfigMap"):
        assert "s3cret" not in json.dumps(cm)
    annotations = r.one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/secret" in annotations and "checksum/config" in annotations


def test_identity_key_mounted_read_only(renderings):
    for name in ("full", "inline-secrets"):
        r = renderings[name]
        pod = r.one("Deployment")["spec"]["template"]["spec"]
        vols = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["name"]: m for m in r.container()["volumeMounts"]}
        assert mounts["identity"]["readOnly"] is True
        assert mounts["identity"]["mountPath"] == "/etc/rmb/identity"
        assert vols["identity"]["secret"]["items"][0]["path"] == "relay-key"
    assert vols["identity"]["secret"]["secretName"] == r.one("Secret")["metadata"]["name"]
    full_vols = {v["name"]: v for v in
                 renderings["full"].one("Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert full_vols["identity"]["secret"]["secretName"] == "rmb-relay-identity"
    assert "identity" not in {m["name"] for m in renderings["default"].container()["volumeMounts"]}


def test_twins_file_from_configmap(renderings):
    full = renderings["full"]
    twins_cm = full.config_maps()["rmb-relay-twins"]
    twins = yaml.safe_load(twins_cm["data"]["twins.yaml"])
    assert twins == {"twins": SCENARIOS["full"]["twins"]["entries"]}
    mount = {m["name"]: m for m in full.container()["volumeMounts"]}["twins"]
    assert "subPath" not in mount, "a subPath mount would never see ConfigMap updates"
    assert mount["mountPath"] + "/twins.yaml" == full.relay_toml()["twins"]

    existing = renderings["inline-secrets"]
    assert "rmb-relay-twins" not in existing.config_maps()
    vol = {v["name"]: v for v in
           existing.one("Deployment")["spec"]["template"]["spec"]["volumes"]}["twins"]
    assert vol["configMap"]["name"] == "my-twins"
    assert vol["configMap"]["items"] == [{"key": "directory.yaml", "path": "twins.yaml"}]

    # Without a twins file the directory is tfchain mainnet, as the original relay.
    default = renderings["default"]
    assert "rmb-relay-twins" not in default.config_maps()
    assert "twins" not in {m["name"] for m in default.container()["volumeMounts"]}
    assert "twins" not in default.relay_toml()
    assert default.relay_toml()["substrate"] == ["wss://tfchain.grid.tf:443"]


# ---- exposure and scaling ------------------------------------------------------------------


def test_ingress_for_wss(renderings):
    ing = renderings["full"].one("Ingress")
    a = ing["metadata"]["annotations"]
    assert a["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "7200"
    assert a["nginx.ingress.kubernetes.io/proxy-send-timeout"] == "7200"
    assert a["cert-manager.io/cluster-issuer"] == "letsencrypt"
    assert ing["spec"]["ingressClassName"] == "nginx"
    assert ing["spec"]["tls"] == [{"secretName": "relay-example-com-tls",
                                   "hosts": ["relay.example.com"]}]
    paths = ing["spec"]["rules"][0]["http"]["paths"]
    backend = {"service": {"name": "rmb-relay", "port": {"name": "http"}}}
    # With domains, federation is on: remote relays need the key document and the signed
    # batch endpoint (the legacy POST / is "/").
    assert paths == [{"path": p, "pathType": "Exact", "backend": backend}
                     for p in ("/", "/.well-known/rmb/relay.json", "/federation/v1/envelopes")]
    notes = renderings["full"].templates["NOTES.txt"]
    assert "wss://relay.example.com/" in notes
    assert "curl" in notes and "/readyz" in notes and "rmbctl ping" in notes
    plain = renderings["inline-secrets"]
    assert "ingressClassName" not in plain.one("Ingress")["spec"]
    assert "ws://relay.example.com/" in plain.templates["NOTES.txt"]
    assert "no TLS" in plain.templates["NOTES.txt"]


def test_hpa(renderings):
    hpa = renderings["full"].one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "rmb-relay"}
    metrics = {m["resource"]["name"]: m["resource"]["target"]["averageUtilization"]
               for m in hpa["spec"]["metrics"]}
    assert metrics == {"cpu": 60, "memory": 75}
    assert hpa["spec"]["minReplicas"] == 3 and hpa["spec"]["maxReplicas"] == 12
    cpu_only = Rendering({"autoscaling": {"enabled": True}, "redis": {"url": "redis://r:6379"}})
    assert [m["resource"]["name"] for m in
            cpu_only.one("HorizontalPodAutoscaler")["spec"]["metrics"]] == ["cpu"]


def test_pdb(renderings):
    assert renderings["default"].one("PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    full = renderings["full"].one("PodDisruptionBudget")["spec"]
    assert full["minAvailable"] == 2 and "maxUnavailable" not in full
    assert full["selector"]["matchLabels"] == \
        renderings["full"].one("Deployment")["spec"]["selector"]["matchLabels"]
    assert not renderings["inline-secrets"].maybe("PodDisruptionBudget")


def test_monitoring_objects_off_by_default(renderings):
    for kind in ("ServiceMonitor", "PrometheusRule"):
        assert not renderings["default"].maybe(kind)
        assert len(renderings["full"].maybe(kind)) == 1


def test_service_monitor_scrapes_metrics(renderings):
    sm = renderings["full"].one("ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "prometheus"
    assert sm["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "scheme": "http",
                                        "interval": "15s", "scrapeTimeout": "5s"}]
    svc = renderings["full"].one("Service")
    for k, v in sm["spec"]["selector"]["matchLabels"].items():
        assert svc["metadata"]["labels"][k] == v
    assert [p["name"] for p in svc["spec"]["ports"]] == ["http"]


def test_prometheus_rule_selects_the_release(renderings):
    rule = renderings["full"].one("PrometheusRule")
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    for e in exprs:
        assert 'job="rmb-relay", namespace="rmb"' in e, e
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    for wanted in ("RmbRelayNoReadyPods", "RmbRelayInboxLagHigh", "RmbRelayMailboxGrowing",
                   "RmbRelayRedisErrors", "RmbRelayAuthFailureSpike"):
        assert wanted in alerts
    lag = next(r for g in rule["spec"]["groups"] for r in g["rules"]
               if r["alert"] == "RmbRelayInboxLagHigh")
    assert lag["expr"].strip().endswith("> 1"), "thresholds come from values"


def test_labels_on_every_object(renderings):
    for r in renderings.values():
        for o in r.objects:
            labels = o["metadata"]["labels"]
            assert labels["app.kubernetes.io/name"] == "rmb-relay"
            assert labels["app.kubernetes.io/managed-by"] == "Helm"
            assert labels["helm.sh/chart"].startswith("rmb-relay-")


def test_fullname_override():
    r = Rendering(copy.deepcopy({"fullnameOverride": "relay-eu"}), name="whatever")
    assert r.one("Deployment")["metadata"]["name"] == "relay-eu"
    assert r.one("Service")["metadata"]["name"] == "relay-eu"
    assert "relay-eu-config" in r.config_maps()


def test_notes_for_default_install(renderings):
    notes = renderings["default"].templates["NOTES.txt"]
    assert "ws://rmb-relay.rmb.svc:8080/" in notes
    assert "in-memory" in notes
    assert "Twins are read from tfchain" in notes
    assert "federation is off" in notes
    assert "40 s" in notes


def test_the_original_charts_values_still_work(relay_bin, tmp_path):
    """A values file written for the original rmb-relay chart renders, and the relay takes
    what it means: its domain, its chain, workers x users per worker, plain string paths."""
    original = {
        "global": {"redis": {"password": "redis-password"}},
        "config": {"RMB_DOMAIN": "relay.dev.grid.tf", "SUBSTRATE_URL": "wss://tfchain.dev.grid.tf:443",
                   "USER_PER_WORKER": 1000, "WORKERS": 500},
        "ingress": {"enabled": True, "hosts": [{"host": "relay.dev.grid.tf", "paths": ["/"]}],
                    "tls": [{"secretName": "relay-dev-grid-tf-tls", "hosts": ["relay.dev.grid.tf"]}]},
    }
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(original)
    r = Rendering(original)
    toml = r.relay_toml()
    assert toml["domains"] == ["relay.dev.grid.tf"]
    assert toml["substrate"] == ["wss://tfchain.dev.grid.tf:443"]
    paths = r.one("Ingress")["spec"]["rules"][0]["http"]["paths"]
    assert [(p["path"], p["pathType"]) for p in paths] == [
        ("/", "Prefix"), ("/.well-known/rmb/relay.json", "Exact"),
        ("/federation/v1/envelopes", "Exact")]
    config = tmp_path / "relay.toml"
    config.write_text(r.relay_toml_text())
    out = subprocess.run([str(relay_bin), "--config", str(config), "--check-config"],
                         capture_output=True, text=True, timeout=60, env=clean_env())
    assert out.returncode == 0, out.stderr
    effective = tomllib.loads(out.stdout)
    assert effective["max_connections"] == 500_000, "WORKERS x USER_PER_WORKER"
    assert effective["domains"] == ["relay.dev.grid.tf"]


def test_chart_metadata():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "rmb-relay" == Path(CHART).name
    cargo = (CHART.parents[1] / "Cargo.toml").read_text()
    assert f'version = "{chart["appVersion"]}"' in cargo, "appVersion follows the workspace version"


def test_extra_settings_reach_the_relay(relay_bin, tmp_path):
    """`config.extra` carries any relay setting without a value of its own, by its long flag
    name; the relay takes it, and refuses an unknown name, naming it."""
    values = {"config": {"extra": {"directory-lookup-rate": 500, "federation-max-inflight": 64,
                                   "substrate-insecure": True}}}
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(values)
    toml = Rendering(values).relay_toml()
    assert toml["directory_lookup_rate"] == 500
    config = tmp_path / "relay.toml"
    config.write_text(Rendering(values).relay_toml_text())
    out = subprocess.run([str(relay_bin), "--config", str(config), "--check-config"],
                         capture_output=True, text=True, timeout=60, env=clean_env())
    assert out.returncode == 0, out.stderr
    effective = tomllib.loads(out.stdout)
    assert effective["directory_lookup_rate"] == 500
    assert effective["federation_max_inflight"] == 64
    assert effective["substrate_insecure"] is True

    config.write_text(Rendering({"config": {"extra": {"no-such-setting": 1}}}).relay_toml_text())
    out = subprocess.run([str(relay_bin), "--config", str(config), "--check-config"],
                         capture_output=True, text=True, timeout=60, env=clean_env())
    assert out.returncode != 0
    assert "no_such_setting" in out.stderr
