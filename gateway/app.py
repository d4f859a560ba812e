"""The aiohttp app: Ollama's HTTP API in front of the gRPC service.

Status before the first byte: the first gRPC message (or error) is awaited before any
header is sent, so an error that happens before generation gets its real HTTP status.
After that, an error becomes one last NDJSON line {"error": ...}. When the HTTP client
goes away, aiohttp cancels the handler, which cancels the RPC: the service stops decoding.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from typing import AsyncIterator

import prometheus_client as prom

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway import openai, openapi, security, transcode
from gateway.errors import RETRY_AFTER, BadRequest, http_status, message
from gateway.settings import GatewaySettings
from gengate.v1 import generate_pb2 as pb
from gengate.v1 import generate_pb2_grpc as pb_grpc
from gengate.v1 import model_pb2 as mpb
from gengate.v1 import model_pb2_grpc as mpb_grpc

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", GatewaySettings)
class GatewayMetrics:
    """HTTP requests by route and status, and their duration."""

    def __init__(self) -> None:
        self.registry = prom.CollectorRegistry()
        self.requests = prom.Counter("gengate_http_requests", "HTTP requests by route and status",
                                     ["route", "status"], registry=self.registry)
        self.duration = prom.Histogram("gengate_http_request_duration_seconds", "HTTP request duration", ["route"],
                                       registry=self.registry)


METRICS = web.AppKey("metrics", GatewayMetrics)
DRAINING = web.AppKey("draining", dict)
CALLS = web.AppKey("calls", set)
REQUEST_ID = web.RequestKey("request_id", str)
STUB = web.AppKey("stub", pb_grpc.GenerateServiceStub)
MODELS = web.AppKey("models", mpb_grpc.ModelServiceStub)
HEALTH = web.AppKey("health", health_pb2_grpc.HealthStub)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GenerateService"].full_name
JSON = "application/json; charset=utf-8"
NDJSON = "application/x-ndjson"


def error_headers(status: int, content_type: str = JSON) -> dict[str, str]:
    """An error reply's headers: a 503 (full queue, draining, no service) asks the client to retry."""
    headers = {"Content-Type": content_type}
    if status == 503:
        headers["Retry-After"] = RETRY_AFTER
    return headers


def error_response(status: int, message: str, content_type: str = JSON) -> web.Response:
    return web.Response(status=status, body=transcode.dumps({"error": message}), content_type=None,
                        headers=error_headers(status, content_type))


def json_response(obj: dict) -> web.Response:
    return web.Response(body=transcode.dumps(obj), headers={"Content-Type": JSON})


async def root(request: web.Request) -> web.Response:
    return web.Response(text="Ollama is running")


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the gateway process answers."""
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: the service reports SERVING on gRPC health."""
    try:
        reply = await request.app[HEALTH].Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=2)
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    except grpc.aio.AioRpcError as exc:
        status = exc.code().name
    if status == "SERVING":
        return json_response({"status": "ready"})
    return error_response(503, f"service not ready: {status}")


async def openapi_document(request: web.Request) -> web.Response:
    return web.json_response(openapi.DOCUMENT)


def _single(msg: pb.GenerateResponse) -> bool:
    """Replies Ollama always sends as one JSON object: load, unload, debug render."""
    debug = isinstance(msg, pb.GenerateResponse) and msg.HasField("debug_info")
    return debug or msg.done_reason in (pb.DONE_REASON_LOAD, pb.DONE_REASON_UNLOAD)


def _streaming(parse, method, to_json):
    """A streaming route: one JSON body in, the RPC's replies out as NDJSON (or one JSON object)."""
    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            req = parse(await request.read())
        except BadRequest as exc:
            return error_response(400, exc.message)
        return await _stream(request, method(request.app), req, to_json)
    return handle


@contextlib.contextmanager
def tracked(request: web.Request, call):
    """A streaming RPC made for `request`: the drain can end it, and it ends with the handler."""
    request.app[CALLS].add(call)
    try:
        yield call
    finally:
        request.app[CALLS].discard(call)
        if not call.done():
            call.cancel()            # client gone (handler cancelled) or early return: stop the RPC


def ended_by_drain(request: web.Request) -> bool:
    """Whether a CancelledError in a handler came from the drain ending its RPC (not the client leaving,
    which cancels the handler's task itself)."""
    return request.app[DRAINING]["since"] is not None and not asyncio.current_task().cancelling()


async def _stream(request: web.Request, method, req, to_json) -> web.StreamResponse:
    call = method(req, metadata=_metadata(request), timeout=request.app[SETTINGS].request_timeout or None)
    with tracked(request, call):
        try:
            first = await call.read()
        except grpc.aio.AioRpcError as exc:
            return _rpc_error(exc)
        except asyncio.CancelledError:
            if not ended_by_drain(request):
                raise
            return error_response(503, "server is shutting down")
        if first is grpc.aio.EOF:
            return error_response(500, "generation ended without a result")
        stream = req.stream if req.HasField("stream") else True
        if not stream or _single(first):
            return json_response(to_json(first))
        response = web.StreamResponse(headers={"Content-Type": NDJSON, "X-Request-Id": request[REQUEST_ID]})
        security.add_cors(request, response)
        await response.prepare(request)
        await response.write(transcode.dumps(to_json(first)) + b"\n")
        try:
            async for msg in _rest(call):
                await response.write(transcode.dumps(to_json(msg)) + b"\n")
        except grpc.aio.AioRpcError as exc:
            log.warning("error after the first byte: %s %s", exc.code().name, exc.details(),
                        extra={"request_id": request[REQUEST_ID]})
            await response.write(transcode.dumps({"error": message(exc)}) + b"\n")
        except asyncio.CancelledError:
            if not ended_by_drain(request):
                raise
            await response.write(transcode.dumps({"error": "server is shutting down"}) + b"\n")
        await response.write_eof()
        return response


generate = _streaming(transcode.generate_request, lambda app: app[STUB].Generate, transcode.generate_response)
chat = _streaming(transcode.chat_request, lambda app: app[STUB].Chat, transcode.chat_response)


def _metadata(request: web.Request) -> list[tuple[str, str]]:
    """gRPC metadata for a call made on behalf of this HTTP request: its id and bearer token."""
    metadata = [("x-request-id", request[REQUEST_ID])]
    if "Authorization" in request.headers:
        # gRPC metadata is ASCII: anything else cannot be a valid token, and the service refuses it.
        token = request.headers["Authorization"]
        metadata.append(("authorization", token if token.isascii() else "invalid"))
    return metadata


async def _unary(request: web.Request, method, req, to_json) -> web.Response:
    """One unary RPC: its reply as JSON (to_json=None: an empty 200), or its error."""
    try:
        reply = await method(req, metadata=_metadata(request), timeout=request.app[SETTINGS].request_timeout or None)
    except grpc.aio.AioRpcError as exc:
        return _rpc_error(exc)
    return json_response(to_json(reply)) if to_json else web.Response(status=200)


async def tags(request: web.Request) -> web.Response:
    return await _unary(request, request.app[MODELS].ListModels, mpb.ListModelsRequest(), transcode.tags_response)


async def ps(request: web.Request) -> web.Response:
    return await _unary(request, request.app[MODELS].ListRunningModels, mpb.ListRunningModelsRequest(),
                        transcode.ps_response)


async def version(request: web.Request) -> web.Response:
    return await _unary(request, request.app[MODELS].GetVersion, mpb.GetVersionRequest(),
                        lambda reply: {"version": reply.version})


def _parsed(parse):
    """A handler taking a JSON body: parse errors are Ollama's 400s."""
    def wrap(handler):
        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                req = parse(await request.read())
            except BadRequest as exc:
                return error_response(400, exc.message)
            return await handler(request, req)
        return handle
    return wrap


@_parsed(transcode.show_request)
async def show(request: web.Request, req) -> web.Response:
    return await _unary(request, request.app[MODELS].ShowModel, req, transcode.show_response)


@_parsed(transcode.copy_request)
async def copy(request: web.Request, req) -> web.Response:
    return await _unary(request, request.app[MODELS].CopyModel, req, None)


@_parsed(transcode.delete_request)
async def delete(request: web.Request, req) -> web.Response:
    return await _unary(request, request.app[MODELS].DeleteModel, req, None)


@_parsed(transcode.embed_request)
async def embed(request: web.Request, req) -> web.Response:
    return await _unary(request, request.app[STUB].Embed, req, transcode.embed_response)


@_parsed(transcode.embeddings_request)
async def embeddings(request: web.Request, req) -> web.Response:
    return await _unary(request, request.app[STUB].Embed, req,
                        lambda reply: {"embedding": list(reply.embeddings[0].values) if reply.embeddings else []})


async def _rest(call) -> AsyncIterator[pb.GenerateResponse]:
    while (msg := await call.read()) is not grpc.aio.EOF:
        yield msg


def _rpc_error(exc: grpc.aio.AioRpcError) -> web.Response:
    status = http_status(exc)
    if status >= 500:
        log.warning("generate: %s %s", exc.code().name, exc.details())
    return error_response(status, message(exc))


@web.middleware
async def observe(request: web.Request, handler) -> web.StreamResponse:
    """Request id (X-Request-Id, or a new one; passed to the service), metrics, one log line."""
    given = request.headers.get("X-Request-Id", "")
    valid = 0 < len(given) <= 128 and given.isascii() and given.isprintable()
    request[REQUEST_ID] = given if valid else uuid.uuid4().hex
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    start, status = time.perf_counter(), 499           # unless a response is made
    try:
        response = await handler(request)
        status = response.status
        if not response.prepared:
            response.headers["X-Request-Id"] = request[REQUEST_ID]
        return response
    finally:
        metrics = request.app[METRICS]
        metrics.requests.labels(route, str(status)).inc()
        metrics.duration.labels(route).observe(time.perf_counter() - start)
        log.info("%s %s %d", request.method, request.path, status, extra={"request_id": request[REQUEST_ID]})


@web.middleware
async def ollama_errors(request: web.Request, handler) -> web.StreamResponse:
    """Host/Origin guard and CORS; Ollama's (gin's) texts for routing errors; JSON errors for
    oversize bodies and draining."""
    settings = request.app[SETTINGS]
    refused = security.guard(request, loopback=security.is_loopback(settings.http_addr), origins=settings.origins)
    if refused is not None:
        return refused
    if request.app[DRAINING]["since"] is not None and request.path.startswith("/api/"):
        return error_response(503, "server is shutting down")
    try:
        response = await handler(request)
        security.add_cors(request, response)
        return response
    except web.HTTPNotFound:
        return web.Response(status=404, text="404 page not found")
    except web.HTTPMethodNotAllowed:
        return web.Response(status=405, text="405 method not allowed")
    except web.HTTPRequestEntityTooLarge:
        return error_response(413, f"request body too large (limit {request.app[SETTINGS].max_body_bytes} bytes)")
    except web.HTTPException:
        raise
    except Exception:
        # Never aiohttp's plain-text 500: a JSON error, and the details in the log.
        log.exception("unexpected error", extra={"request_id": request.get(REQUEST_ID, "-")})
        return error_response(500, "internal error")


# Round-robin over every address the target resolves to (several replicas behind DNS or an
# ipv4:a,b list); UNAVAILABLE retried, which gRPC does only before the first reply arrives,
# so a stream is never replayed after tokens were sent.
SERVICE_CONFIG = json.dumps({
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [{"name": [{"service": SERVICE_NAME}], "retryPolicy": {
        "maxAttempts": 3, "initialBackoff": "0.1s", "maxBackoff": "1s", "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"]}}],
})


async def _drain(app: web.Application) -> None:
    """Shutdown started (SIGTERM): refuse new API requests; in-flight streams may finish."""
    loop = asyncio.get_running_loop()
    app[DRAINING]["since"] = loop.time()
    log.info("draining for up to %ss", app[SETTINGS].drain_seconds)

    def end_the_rest() -> None:
        # Just before aiohttp cancels the handlers, end the RPCs still running, so every
        # stream gets its in-band error line instead of stopping silently.
        for call in list(app[CALLS]):
            call.cancel()
    loop.call_later(max(0.0, app[SETTINGS].drain_seconds - 1.0), end_the_rest)


async def _channel(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    options = [("grpc.max_receive_message_length", settings.max_body_bytes),
               ("grpc.max_send_message_length", settings.max_body_bytes),
               ("grpc.service_config", SERVICE_CONFIG),
               ("grpc.keepalive_time_ms", 60_000), ("grpc.keepalive_timeout_ms", 20_000)]
    if settings.service_tls_ca:
        read = lambda path: open(path, "rb").read() if path else None
        credentials = grpc.ssl_channel_credentials(read(settings.service_tls_ca), read(settings.service_tls_key),
                                                   read(settings.service_tls_cert))
        channel = grpc.aio.secure_channel(settings.service_addr, credentials, options=options)
    else:
        channel = grpc.aio.insecure_channel(settings.service_addr, options=options)
    app[STUB] = pb_grpc.GenerateServiceStub(channel)
    app[MODELS] = mpb_grpc.ModelServiceStub(channel)
    app[HEALTH] = health_pb2_grpc.HealthStub(channel)
    yield
    await channel.close()


def create_app(settings: GatewaySettings) -> web.Application:
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[observe, ollama_errors],
                          handler_args={"handler_cancellation": True})
    app[SETTINGS] = settings
    app[METRICS] = GatewayMetrics()
    app[DRAINING] = {"since": None}
    app[CALLS] = set()
    app.on_shutdown.append(_drain)
    app.cleanup_ctx.append(_channel)
    app.router.add_get("/", root)
    app.router.add_route("POST", "/api/generate", generate)
    app.router.add_post("/api/chat", chat)
    app.router.add_post("/api/embed", embed)
    app.router.add_post("/api/embeddings", embeddings)
    app.router.add_get("/api/tags", tags)
    app.router.add_get("/api/ps", ps)
    app.router.add_get("/api/version", version)
    app.router.add_post("/api/show", show)
    app.router.add_post("/api/copy", copy)
    app.router.add_delete("/api/delete", delete)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/openapi.json", openapi_document)
    app.router.add_get("/readyz", readyz)
    openai.add_routes(app)
    return app
