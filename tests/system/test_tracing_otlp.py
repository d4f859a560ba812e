"""Tracing into a real OTLP/gRPC collector: both processes, started as `make run` starts them, export their spans
of one request as one trace that carries the request id."""
from __future__ import annotations

import signal
import threading
from concurrent import futures

import grpc
import httpx
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from tests.conftest import REAL
from tests.system.test_processes import Processes

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace receiver: keeps (service.name, span) for every span exported to it."""

    def __init__(self):
        self.spans: list[tuple[str, object]] = []
        self.lock = threading.Lock()

    def Export(self, request, context):
        with self.lock:
            for resource_spans in request.resource_spans:
                name = next((a.value.string_value for a in resource_spans.resource.attributes
                             if a.key == "service.name"), "")
                for scope in resource_spans.scope_spans:
                    self.spans.extend((name, span) for span in scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


def test_both_processes_export_one_trace_per_request_to_an_otlp_collector(real_models):
    collector = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    procs = Processes(real_models, GENGATE_OTLP_ENDPOINT=f"http://127.0.0.1:{port}")
    try:
        resp = httpx.post(procs.url + "/api/generate", timeout=60,
                          json={"model": REAL, "prompt": "Hi", "stream": False, "options": {"num_predict": 4}},
                          headers={"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01", "X-Request-Id": "otlp-1"})
        assert resp.status_code == 200
        for proc in (procs.gateway, procs.service):                    # a clean exit sends what is buffered
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
    finally:
        procs.stop()
        server.stop(None)
    ours = [(name, span) for name, span in collector.spans if span.trace_id.hex() == TRACE]
    names = {(name, span.name) for name, span in ours}
    assert {("gengate-gateway", "POST /api/generate"),
            ("gengate-gateway", "/gengate.v1.GenerateService/Generate"),
            ("gengate-service", "/gengate.v1.GenerateService/Generate")} <= names, names
    kinds = {(name, span.name): span for name, span in ours}
    http = kinds[("gengate-gateway", "POST /api/generate")]
    client = kinds[("gengate-gateway", "/gengate.v1.GenerateService/Generate")]
    server = kinds[("gengate-service", "/gengate.v1.GenerateService/Generate")]
    assert (http.kind, client.kind, server.kind) == (http.SPAN_KIND_SERVER, http.SPAN_KIND_CLIENT,
                                                     http.SPAN_KIND_SERVER)
    # One chain: the caller's span → the gateway's HTTP span → its RPC → the service's handling of it.
    assert http.parent_span_id.hex() == "00f067aa0ba902b7"
    assert client.parent_span_id == http.span_id and server.parent_span_id == client.span_id
    for span in (http, client, server):
        ids = {a.value.string_value for a in span.attributes if a.key == "gengate.request_id"}
        assert ids == {"otlp-1"}, span.name
