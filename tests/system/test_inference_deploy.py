"""deploy/inference: gengate as the model servers of a Gateway API Inference Extension pool.

The core objects are validated offline against Kubernetes' schemas; the custom resources (InferencePool,
HTTPRoute, the picker's config) are checked for what makes them work with gengate: the metric names and types
the picker reads are the ones the service exports, the pool reaches the gateway, retries meet the 503s."""
from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
INFERENCE = ROOT / "deploy" / "inference"
CORE_KINDS = {"Deployment", "Service", "ConfigMap", "ServiceAccount", "Role", "RoleBinding"}


def docs() -> list[dict]:
    kustomization = yaml.safe_load((INFERENCE / "kustomization.yaml").read_text())
    out = []
    for name in kustomization["resources"]:
        out += [d for d in yaml.safe_load_all((INFERENCE / name).read_text()) if d]
    return out


def one(kind: str, name: str) -> dict:
    (doc,) = [d for d in docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def test_the_kustomization_lists_every_file():
    listed = set(yaml.safe_load((INFERENCE / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in INFERENCE.glob("*.yaml")} - {"kustomization.yaml"}


@pytest.mark.parametrize("doc", [d for d in docs() if d["kind"] in CORE_KINDS],
                         ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_core_objects_are_valid_kubernetes(doc):
    kubernetes_validate.validate(doc, "1.29", strict=True)


def test_the_picker_reads_gauges_the_service_exports():
    config = yaml.safe_load(one("ConfigMap", "gengate-epp-config")["data"]["epp-config.yaml"])
    assert config["apiVersion"] == "llm-d.ai/v1alpha1" and config["kind"] == "EndpointPickerConfig"
    plugins = {p["type"]: p.get("parameters", {}) for p in config["plugins"]}
    (engine,) = plugins["core-metrics-extractor"]["engineConfigs"]
    assert plugins["core-metrics-extractor"]["defaultEngine"] == engine["name"] == "gengate"
    exported = {f.name: f.type for f in text_string_to_metric_families(generate_latest(Metrics().registry).decode())}
    for key in ("queuedRequestsSpec", "runningRequestsSpec", "kvUsageSpec"):
        assert exported.get(engine[key]) == "gauge", (key, engine[key])     # an untyped sample reads as 0
    assert plugins["metrics-data-source"]["port"] == 9464


def test_one_pod_holds_the_gateway_and_the_service_the_pool_selects_it():
    deployment = one("Deployment", "gengate-pool")
    pod = deployment["spec"]["template"]
    containers = {c["name"]: c for c in pod["spec"]["containers"]}
    assert set(containers) == {"gateway", "service"}
    gateway_env = {e["name"]: e.get("value") for e in containers["gateway"]["env"]}
    service_env = {e["name"]: e.get("value") for e in containers["service"]["env"]}
    assert gateway_env["GENGATE_SERVICE_ADDR"] == service_env["GENGATE_GRPC_ADDR"] == "127.0.0.1:50051"
    assert service_env["GENGATE_METRICS_ADDR"] == "0.0.0.0:9464"          # scraped on the pod's IP
    pool = one("InferencePool", "gengate")
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1"
    assert pool["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (port,) = pool["spec"]["targetPorts"]
    assert port["number"] == containers["gateway"]["ports"][0]["containerPort"] == 11434
    assert pod["metadata"]["labels"]["llm-d.ai/engine-type"] == "gengate"
    picker = one("Service", "gengate-epp")
    assert pool["spec"]["endpointPickerRef"]["name"] == picker["metadata"]["name"]
    assert pool["spec"]["endpointPickerRef"]["port"]["number"] in {p["port"] for p in picker["spec"]["ports"]}


def test_the_route_sends_both_apis_to_the_pool_and_retries_a_full_replica():
    (rule,) = one("HTTPRoute", "gengate")["spec"]["rules"]
    assert {m["path"]["value"] for m in rule["matches"]} == {"/v1/", "/api/"}
    (backend,) = rule["backendRefs"]
    assert (backend["kind"], backend["name"]) == ("InferencePool", "gengate")
    assert rule["retry"]["codes"] == [503]            # a full queue answers 503 + Retry-After, the picker's 429 stays
    assert rule["timeouts"]["request"] == "0s"        # streams outlive Envoy's default 15 s
