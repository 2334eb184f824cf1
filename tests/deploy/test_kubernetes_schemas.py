"""Every rendered manifest against the Kubernetes API schemas (kubernetes-validate, strict:
unknown fields are errors), for the newest Kubernetes the package knows and the chart's oldest
supported version. prometheus-operator objects are not built-in types: they are checked
against a schema of the fields the chart uses, and their PromQL is parsed."""

from __future__ import annotations

import re

import jsonschema
import kubernetes_validate
import promql_parser
import pytest
import yaml

from conftest import CHART, ROOT, SCENARIOS

CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}


def _floor_version() -> str:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    m = re.match(r">=\s*(\d+\.\d+)", chart["kubeVersion"])
    assert m, chart["kubeVersion"]
    return m.group(1) + ".0"


VERSIONS = [kubernetes_validate.latest_version(), _floor_version()]


def test_validating_against_a_current_kubernetes():
    latest = tuple(int(x) for x in kubernetes_validate.latest_version().split(".")[:2])
    assert latest >= (1, 34), f"kubernetes-validate only knows {latest}: update the pin"


def _objects(rendering):
    return [o for o in rendering.objects if o["kind"] not in CRD_KINDS]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_rendered_manifests_validate(renderings, scenario, version):
    objects = _objects(renderings[scenario])
    assert objects
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} (k8s {version}): {e.message} "
                        f"at {list(e.absolute_path)}")


@pytest.mark.parametrize("version", VERSIONS)
def test_committed_manifests_validate(version):
    kustomization = yaml.safe_load((ROOT / "deploy/kubernetes/kustomization.yaml").read_text())
    files = kustomization["resources"]
    assert "deployment.yaml" in files
    for name in files:
        for obj in yaml.safe_load_all((ROOT / "deploy/kubernetes" / name).read_text()):
            if obj:
                kubernetes_validate.validate(obj, version, strict=True)


# The subset of monitoring.coreos.com/v1 the chart emits, with the CRDs' types; additional
# properties are refused so a misspelt field fails here instead of being dropped by the API.
_META = {"type": "object", "required": ["name"], "additionalProperties": False,
         "properties": {"name": {"type": "string"}, "namespace": {"type": "string"},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "annotations": {"type": "object",
                                        "additionalProperties": {"type": "string"}}}}
_DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?"
                                          r"(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
_LABEL_SELECTOR = {"type": "object", "additionalProperties": False,
                   "properties": {"matchLabels": {"type": "object",
                                                  "additionalProperties": {"type": "string"}}}}
SERVICE_MONITOR = {
    "type": "object", "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "ServiceMonitor"},
        "metadata": _META,
        "spec": {"type": "object", "additionalProperties": False, "required": ["selector", "endpoints"],
                 "properties": {
                     "selector": _LABEL_SELECTOR,
                     "namespaceSelector": {"type": "object", "additionalProperties": False,
                                           "properties": {"matchNames": {"type": "array",
                                                                         "items": {"type": "string"}}}},
                     "endpoints": {"type": "array", "minItems": 1, "items": {
                         "type": "object", "additionalProperties": False,
                         "properties": {"port": {"type": "string"}, "path": {"type": "string"},
                                        "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                                        "interval": _DURATION, "scrapeTimeout": _DURATION}}}}},
    },
}
PROMETHEUS_RULE = {
    "type": "object", "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "PrometheusRule"},
        "metadata": _META,
        "spec": {"type": "object", "additionalProperties": False, "required": ["groups"],
                 "properties": {"groups": {"type": "array", "minItems": 1, "items": {
                     "type": "object", "additionalProperties": False, "required": ["name", "rules"],
                     "properties": {
                         "name": {"type": "string", "minLength": 1},
                         "interval": _DURATION,
                         "rules": {"type": "array", "minItems": 1, "items": {
                             "type": "object", "additionalProperties": False,
                             "required": ["alert", "expr"],
                             "properties": {
                                 "alert": {"type": "string", "pattern": "^[A-Za-z][A-Za-z0-9_]*$"},
                                 "expr": {"type": "string", "minLength": 1},
                                 "for": _DURATION,
                                 "labels": {"type": "object",
                                            "additionalProperties": {"type": "string"}},
                                 "annotations": {"type": "object",
                                                 "additionalProperties": {"type": "string"}},
                             }}}}}}}},
    },
}


def test_prometheus_operator_objects(renderings):
    full = renderings["full"]
    jsonschema.validate(full.one("ServiceMonitor"), SERVICE_MONITOR)
    rule = full.one("PrometheusRule")
    jsonschema.validate(rule, PROMETHEUS_RULE)
    names = set()
    for group in rule["spec"]["groups"]:
        assert group["name"] not in names, "group names must be unique"
        names.add(group["name"])
        for r in group["rules"]:
            promql_parser.parse(r["expr"])
            promql_parser.parse_duration(r["for"])
            assert r["labels"]["severity"] in ("critical", "warning")
            assert r["annotations"]["summary"] and r["annotations"]["description"]
