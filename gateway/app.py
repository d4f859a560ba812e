"""The gateway's aiohttp app: Ollama's HTTP API (and the OpenAI-compatible one) in front of the gRPC service.

The app holds no model logic: route modules (gateway.ollama, gateway.openai) translate bodies and call the
RPCs through one relay (gateway.relay). This module builds the app: its state, the channel to the service,
the middlewares every request passes (request id, metrics and the access log; the Host/Origin guard, CORS,
the drain and the errors aiohttp raises), and the probes.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator

import grpc
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common import channel, logs, tracing
from common.logs import request_id as request_id_var
from gateway import model_list, openapi, security
from gateway.anthropic import routes as anthropic
from gateway.dialects import OLLAMA, dialect_of
from gateway.http import json_response
from gateway.ollama import routes as ollama
from gateway.openai import routes as openai
from gateway.relay import SHUTTING_DOWN
from gateway.responses import routes as responses
from gateway.settings import GatewaySettings
from gateway.state import (
    BODIES,
    CLIENT_GONE,
    DRAIN,
    METRICS,
    REQUEST_ID,
    SERVICE,
    SETTINGS,
    BodySlots,
    Drain,
    GatewayMetrics,
    Service,
)
from gengate.v1 import generate_pb2_grpc as pb_grpc
from gengate.v1 import model_pb2_grpc as mpb_grpc

log = logging.getLogger(__name__)
access_log = logging.getLogger("gateway.access")


class ClientErrors(logging.Filter):
    """aiohttp logs a request it cannot parse (a duplicate or missing Host, a bad Content-Length) as an ERROR
    with a traceback, though the mistake is the client's and the client got its 400: one WARNING line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and (exc.code or 400) < 500:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg, record.args, record.exc_info, record.exc_text = (
                "bad request from a client: %s %s", (exc.code, (exc.message or "").strip().splitlines()[0]
                                                     if exc.message else ""), None, None)
        return True


_CLIENT_ERRORS = ClientErrors()


async def root(request: web.Request) -> web.Response:
    return web.Response(text="Ollama is running")


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the gateway process answers."""
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: the channel is not failing and the service reports SERVING on gRPC health."""
    service = request.config_dict[SERVICE]
    state = service.channel.get_state(try_to_connect=True)
    if state == grpc.ChannelConnectivity.TRANSIENT_FAILURE:
        status = "UNAVAILABLE"
    else:
        try:
            reply = await service.health.Check(health_pb2.HealthCheckRequest(service=channel.GENERATE_SERVICE),
                                               timeout=2)
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        except grpc.aio.AioRpcError as exc:
            status = exc.code().name
    if status == "SERVING":
        return json_response({"status": "ready"})
    return OLLAMA.error_response(503, f"service not ready: {status}")


async def openapi_document(request: web.Request) -> web.Response:
    return web.json_response(openapi.DOCUMENT)


@web.middleware
async def observe(request: web.Request, handler) -> web.StreamResponse:
    """Request id (X-Request-Id, or a new one; passed to the service and set for every log line), metrics,
    one access log line."""
    given = request.headers.get("X-Request-Id", "")
    valid = 0 < len(given) <= 128 and given.isascii() and given.isprintable()
    request[REQUEST_ID] = given if valid else uuid.uuid4().hex
    token = request_id_var.set(request[REQUEST_ID])
    resource = request.match_info.route.resource
    route = resource.canonical if resource else "unmatched"
    start, status = time.perf_counter(), 499           # unless a response is made
    drain = request.app[DRAIN]
    drain.active += 1
    try:
        if tracing.enabled():
            with tracing.http_span(request.method, route, request.headers, request[REQUEST_ID]) as span:
                response = await handler(request)
                span.set_attribute("http.response.status_code", response.status)
        else:
            response = await handler(request)
        status = 499 if request.get(CLIENT_GONE) else response.status
        if not response.prepared:
            response.headers["X-Request-Id"] = request[REQUEST_ID]
        return response
    finally:
        metrics = request.app[METRICS]
        metrics.requests.labels(route, str(status)).inc()
        metrics.duration.labels(route).observe(time.perf_counter() - start)
        access_log.info("%s %s %d", request.method, request.path, status)
        drain.active -= 1
        request_id_var.reset(token)


@web.middleware
async def errors(request: web.Request, handler) -> web.StreamResponse:
    """Host/Origin guard and CORS; the drain (API routes answer 503 with Retry-After and close the
    connection); errors aiohttp raises, in the route's dialect: gin's texts for unknown routes and methods,
    413 for a body over the limit, and a JSON 500 (details in the log) for anything unexpected."""
    settings = request.app[SETTINGS]
    refused = security.guard(request, loopback=security.is_loopback(settings.http_addr), origins=settings.origins)
    if refused is not None:
        return refused
    dialect = dialect_of(request)
    if dialect is not None and request.app[DRAIN].draining:
        response = dialect.error_response(503, SHUTTING_DOWN)
        response.force_close()
        return response
    try:
        response = await handler(request)
        security.add_cors(request, response)
        return response
    except web.HTTPNotFound:
        return web.Response(status=404, text="404 page not found")
    except web.HTTPMethodNotAllowed:
        return web.Response(status=405, text="405 method not allowed")
    except web.HTTPRequestEntityTooLarge:
        limit = settings.max_body_bytes
        return (dialect or OLLAMA).error_response(413, f"request body too large (limit {limit} bytes)")
    except web.HTTPException:
        raise
    except Exception:
        log.exception("unexpected error")
        return (dialect or OLLAMA).error_response(500, "internal error")


async def start_drain(app: web.Application) -> None:
    """Shutdown began (SIGTERM): API requests get 503; in-flight streams may finish until, one second
    before the grace period ends, the RPCs still running are ended (their streams get an error line)."""
    loop = asyncio.get_running_loop()
    drain = app[DRAIN]
    if drain.draining:
        return
    drain.since = loop.time()
    log.info("draining for up to %ss", app[SETTINGS].drain_seconds)

    def end_the_rest() -> None:
        for call in list(drain.calls):
            call.cancel()
    loop.call_later(max(0.0, app[SETTINGS].drain_seconds - 1.0), end_the_rest)


async def _channel(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    tls = channel.Tls(settings.service_tls_ca, settings.service_tls_cert, settings.service_tls_key)
    chan = channel.aio_channel(settings.service_addr, tls, channel.options(settings.max_body_bytes),
                               tracing.client_interceptors())
    app[SERVICE] = Service(chan, pb_grpc.GenerateServiceStub(chan), mpb_grpc.ModelServiceStub(chan),
                           health_pb2_grpc.HealthStub(chan))
    yield
    await chan.close()


def create_app(settings: GatewaySettings) -> web.Application:
    logs.tag_records()
    server_log = logging.getLogger("aiohttp.server")
    if _CLIENT_ERRORS not in server_log.filters:
        server_log.addFilter(_CLIENT_ERRORS)
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[observe, errors],
                          handler_args={"handler_cancellation": True, "keepalive_timeout": settings.idle_timeout})
    app[SETTINGS] = settings
    app[METRICS] = GatewayMetrics()
    app[DRAIN] = Drain()
    app[BODIES] = BodySlots(settings.max_large_bodies)
    app.on_shutdown.append(start_drain)
    app.cleanup_ctx.append(_channel)
    app.router.add_get("/", root)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/openapi.json", openapi_document)
    ollama.add_routes(app)
    openai.add_routes(app)
    model_list.add_routes(app)
    anthropic.add_routes(app)
    responses.add_routes(app)
    return app
