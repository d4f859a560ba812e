"""Prometheus metrics and request ids, on both processes."""
from __future__ import annotations

import logging

import httpx
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.state import METRICS
from gengate.v1 import generate_pb2 as pb


def samples(registry) -> dict[tuple, float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(registry, name, **labels) -> float:
    """The sum of the samples of `name` whose labels include `labels` (labels not named are summed over)."""
    return sum(v for (n, have), v in samples(registry).items() if n == name and set(labels.items()) <= set(have))


def test_service_metrics_move_as_requests_pass(fake, engine):
    reg = fake.service.metrics.registry
    ok, missing = value(reg, "gengate_requests_total", method="Generate", code="OK"), value(reg, "gengate_requests_total", method="Generate", code="NOT_FOUND")
    tokens, ttft = value(reg, "gengate_generated_tokens_total"), value(reg, "gengate_time_to_first_token_seconds_count")
    waits = value(reg, "gengate_queue_wait_seconds_count")
    for _ in range(3):
        httpx.post(fake.url + "/api/generate", json={"model": "tiny", "prompt": "hi", "stream": False})
    httpx.post(fake.url + "/api/generate", json={"model": "nope", "prompt": "hi"})
    assert value(reg, "gengate_requests_total", method="Generate", code="OK") == ok + 3
    assert value(reg, "gengate_requests_total", method="Generate", code="NOT_FOUND") == missing + 1
    assert value(reg, "gengate_generated_tokens_total") == tokens + 60
    assert value(reg, "gengate_time_to_first_token_seconds_count") == ttft + 3
    assert value(reg, "gengate_inter_token_latency_seconds_count") > 0
    assert value(reg, "gengate_queue_wait_seconds_count") == waits + 3
    assert value(reg, "gengate_requests_running") == 0 and value(reg, "gengate_requests_waiting") == 0
    assert value(reg, "gengate_loaded_models") >= 1
    gateway = fake._runner.app[METRICS].registry
    assert value(gateway, "gengate_http_requests_total", route="/api/generate", status="200") >= 3
    assert value(gateway, "gengate_http_requests_total", route="/api/generate", status="404") >= 1


def test_metrics_endpoint_serves_the_registry(fake):
    server = fake.service.metrics.serve("127.0.0.1:0")
    try:
        text = httpx.get(f"http://127.0.0.1:{server.server_port}/metrics").text
        assert "gengate_requests_total" in text and "gengate_time_to_first_token_seconds_bucket" in text
    finally:
        server.shutdown()


def test_request_id_travels_from_http_to_grpc_and_back(fake, engine, caplog):
    with caplog.at_level(logging.INFO):
        resp = httpx.post(fake.url + "/api/generate", json={"model": "tiny", "prompt": "hi"},
                          headers={"X-Request-Id": "req-42"})
    assert resp.headers["x-request-id"] == "req-42"
    service_lines = [r for r in caplog.records if r.name == "service.access"]
    assert any(getattr(r, "request_id", None) == "req-42" for r in service_lines)
    made = httpx.post(fake.url + "/api/generate", json={"model": "tiny", "prompt": "hi", "stream": False})
    assert len(made.headers["x-request-id"]) == 32                      # made when the client sends none
    call = fake.stub().Generate(pb.GenerateRequest(model="tiny", prompt="hi"), metadata=[("x-request-id", "g-7")])
    list(call)
    assert ("x-request-id", "g-7") in tuple(call.initial_metadata())


def test_model_service_rpcs_are_counted_and_logged_like_generate(fake, engine, caplog):
    reg = fake.service.metrics.registry
    listed = value(reg, "gengate_requests_total", method="ListModels", code="OK")
    missing = value(reg, "gengate_requests_total", method="ShowModel", code="NOT_FOUND")
    with caplog.at_level(logging.INFO):
        assert httpx.get(fake.url + "/api/tags", headers={"X-Request-Id": "tags-1"}).status_code == 200
        assert httpx.post(fake.url + "/api/show", json={"model": "nope"},
                          headers={"X-Request-Id": "show-1"}).status_code == 404
    assert value(reg, "gengate_requests_total", method="ListModels", code="OK") == listed + 1
    assert value(reg, "gengate_requests_total", method="ShowModel", code="NOT_FOUND") == missing + 1
    access = {(r.request_id, r.getMessage().split()[0]) for r in caplog.records if r.name == "service.access"}
    assert {("tags-1", "ListModels"), ("show-1", "ShowModel")} <= access


def test_every_service_line_a_request_causes_carries_its_id(fake, engine, caplog):
    with caplog.at_level(logging.INFO):
        resp = httpx.post(fake.url + "/api/generate", headers={"X-Request-Id": "load-1"}, json={
            "model": "tiny", "prompt": "hi", "stream": False, "options": {"num_ctx": 96}})
    assert resp.status_code == 200
    caused = [r for r in caplog.records if r.name.startswith("service")]
    assert {r.name for r in caused} == {"service.engines.pool", "service.access"}    # the load (num_ctx changed), the access
    assert {r.request_id for r in caused} == {"load-1"}
