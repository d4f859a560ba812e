"""OpenTelemetry tracing, off unless an OTLP endpoint is set (GENGATE_OTLP_ENDPOINT).

When on, a request is one trace across both processes: the gateway's SERVER span (W3C `traceparent` taken
from the HTTP request, so a caller's trace continues), its gRPC CLIENT span, and the service's SERVER span;
each carries the request id (`gengate.request_id`). Spans go to the OTLP collector over gRPC, in batches; the
SDK's own OTEL_* variables (service name, headers, sampler) apply. With tracing off nothing here is imported
beyond this module, and the interceptor lists are empty.
"""
from __future__ import annotations

import logging
from typing import Any

from common import logs

log = logging.getLogger(__name__)

_provider: Any = None


def setup(service_name: str, endpoint: str, provider: Any = None) -> Any:
    """Turns tracing on for this process (`provider`: a ready TracerProvider, for tests); returns the provider,
    or None when `endpoint` is empty and no provider is given."""
    global _provider
    if provider is None and not endpoint:
        return None
    if provider is None:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        log.info("tracing: spans go to %s", endpoint)
    _provider = provider
    return provider


def enabled() -> bool:
    return _provider is not None


def server_interceptors() -> list[Any]:
    """For the gRPC server: continues the caller's trace in a SERVER span per RPC (health checks left out)."""
    if _provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters
    return [aio_server_interceptor(tracer_provider=_provider, filter_=filters.negate(filters.health_check()))]


def client_interceptors() -> list[Any]:
    """For the gateway's channel: a CLIENT span per RPC, its context sent as `traceparent` metadata, tagged with
    the id of the request it is made for (common.logs.request_id, set per HTTP request)."""
    if _provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors, filters

    def tag(span: Any, _request: Any) -> None:
        if (rid := logs.request_id.get()) != "-":
            span.set_attribute("gengate.request_id", rid)
    return list(aio_client_interceptors(tracer_provider=_provider, filter_=filters.negate(filters.health_check()),
                                        request_hook=tag))


def tag_request(request_id: str) -> None:
    """Puts the request id on the current span."""
    if _provider is None:
        return
    from opentelemetry import trace
    trace.get_current_span().set_attribute("gengate.request_id", request_id)


def http_span(method: str, route: str, headers: Any, request_id: str) -> Any:
    """A context manager: the gateway's SERVER span for one HTTP request, continuing the caller's trace."""
    from opentelemetry import propagate, trace
    tracer = _provider.get_tracer("gengate.gateway")
    return tracer.start_as_current_span(f"{method} {route}", context=propagate.extract(dict(headers)),
                                        kind=trace.SpanKind.SERVER,
                                        attributes={"http.request.method": method, "http.route": route,
                                                    "gengate.request_id": request_id})


def shutdown() -> None:
    """Sends the spans still buffered (at exit)."""
    global _provider
    if _provider is not None and hasattr(_provider, "shutdown"):
        _provider.shutdown()
    _provider = None
