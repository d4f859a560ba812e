"""OpenTelemetry: one trace per request across the gateway and the service (off unless configured)."""
from __future__ import annotations

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from common import tracing
from tests.fake_engine import FakeEngine
from tests.harness import Stack

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture
def traced(models):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.setup("gengate-test", "", provider=provider)
    stack = Stack(models, FakeEngine()).start()
    yield stack, exporter
    stack.stop()
    tracing.shutdown()


def test_a_request_is_one_trace_from_the_callers_traceparent_to_the_service(traced):
    stack, exporter = traced
    resp = httpx.post(stack.url + "/api/generate", json={"model": "tiny", "prompt": "Hi", "stream": False},
                      headers={"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01", "X-Request-Id": "trace-1"})
    assert resp.status_code == 200
    spans = exporter.get_finished_spans()
    kinds = {(s.name, s.kind.name) for s in spans}
    assert {("POST /api/generate", "SERVER"), ("/gengate.v1.GenerateService/Generate", "CLIENT"),
            ("/gengate.v1.GenerateService/Generate", "SERVER")} <= kinds
    assert {f"{s.context.trace_id:032x}" for s in spans} == {TRACE}
    gateway_span = next(s for s in spans if s.name == "POST /api/generate")
    assert gateway_span.parent.span_id == 0x00f067aa0ba902b7                 # the caller's span
    service_span = next(s for s in spans if s.kind.name == "SERVER" and s.name.startswith("/gengate"))
    client_span = next(s for s in spans if s.kind.name == "CLIENT")
    assert client_span.parent.span_id == gateway_span.context.span_id
    assert service_span.parent.span_id == client_span.context.span_id
    for span in (gateway_span, client_span, service_span):
        assert span.attributes["gengate.request_id"] == "trace-1", span.name
    assert gateway_span.attributes["http.response.status_code"] == 200


def test_tracing_is_off_by_default(fake, engine):
    assert not tracing.enabled() and tracing.client_interceptors() == [] and tracing.server_interceptors() == []
