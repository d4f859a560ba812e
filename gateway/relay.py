"""The one relay between an HTTP request and an RPC, shared by every API dialect.

A dialect (Ollama's NDJSON API, OpenAI's, Anthropic's) differs only in how it parses a body, shapes an
error and frames a stream; the state machine is this module's, once:

1. the body is read and parsed (a parse error is the dialect's 400);
2. the RPC is called and its first message (or error) awaited before any header is sent, so an error
   before generation gets its real HTTP status (gateway.errors maps the gRPC code);
3. `stream: false`, or a reply the dialect always sends whole, becomes one JSON object;
4. otherwise the stream is prepared and each reply framed (NDJSON lines, SSE events);
5. an error after the first byte becomes the dialect's in-band error frame, the status stays 200;
6. when the HTTP client goes away aiohttp cancels the handler, which cancels the RPC: the service stops
   decoding. The drain (SIGTERM) ends the calls still running just before the grace period ends, and
   their streams get an in-band "server is shutting down" error instead of stopping silently.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, Protocol

import grpc
from aiohttp import web

from gateway import errors, http, security
from gateway.dialects import Dialect
from gateway.errors import BadRequest
from gateway.http import json_response
from gateway.state import BODIES, CLIENT_GONE, DRAIN, REQUEST_ID, SETTINGS

log = logging.getLogger(__name__)

SHUTTING_DOWN = "server is shutting down"


class Framer(Protocol):
    """One streamed reply's framing, in one dialect (it may keep state across messages)."""

    content_type: str

    def single(self, msg: Any) -> bool:
        """Whether this first reply is sent as one JSON object even when streaming."""

    def whole(self, msg: Any) -> Any:
        """The JSON object of a reply sent whole (`stream: false`, or `single`)."""

    def frames(self, msg: Any) -> Iterable[bytes]:
        """The bytes a streamed reply becomes."""

    def end(self) -> bytes:
        """What follows the last reply."""

    def error(self, status: int, message: str) -> bytes:
        """An error after the first byte: the stream's last frame."""


class Whole:
    """A framer for a streaming RPC whose one reply (its request asked for no stream) becomes one JSON object."""

    content_type = http.JSON

    def __init__(self, to_json: Callable[[Any], Any]):
        self.whole = to_json

    def single(self, msg: Any) -> bool:
        return True

    def frames(self, msg: Any) -> Iterable[bytes]:
        return []

    def end(self) -> bytes:
        return b""

    def error(self, status: int, message: str) -> bytes:
        return b""


def metadata(request: web.Request) -> list[tuple[str, str]]:
    """gRPC metadata for a call made on behalf of this HTTP request: its id and bearer token."""
    md = [("x-request-id", request[REQUEST_ID])]
    token = request.headers.get("Authorization")
    if token is None and "x-api-key" in request.headers:       # the Anthropic SDKs' way to send the key
        token = f"Bearer {request.headers['x-api-key']}"
    if token is not None:
        # gRPC metadata is ASCII: anything else cannot be a valid token, and the service refuses it.
        md.append(("authorization", token if token.isascii() else "invalid"))
    return md


def timeout(request: web.Request) -> float | None:
    return request.config_dict[SETTINGS].request_timeout or None


@contextlib.contextmanager
def tracked(request: web.Request, call: grpc.aio.Call) -> Iterator[grpc.aio.Call]:
    """A streaming RPC made for `request`: the drain can end it, and it ends with the handler."""
    calls = request.config_dict[DRAIN].calls
    calls.add(call)
    try:
        yield call
    finally:
        calls.discard(call)
        if not call.done():
            call.cancel()            # client gone (handler cancelled) or early return: stop the RPC


def ended_by_drain(request: web.Request) -> bool:
    """Whether a CancelledError in a handler came from the drain ending its RPC (not the client leaving,
    which cancels the handler's task itself)."""
    task = asyncio.current_task()
    return request.config_dict[DRAIN].draining and not (task is not None and task.cancelling())


async def stream(request: web.Request, method: Callable[..., Any], req: Any, framer: Framer, dialect: Dialect,
                 *, streaming: bool) -> web.StreamResponse:
    """Calls a server-streaming RPC and relays its replies (see the module docstring)."""
    call = method(req, metadata=metadata(request), timeout=timeout(request))
    with tracked(request, call):
        try:
            first = await call.read()
        except grpc.aio.AioRpcError as exc:
            return dialect.rpc_error(exc)
        except asyncio.CancelledError:
            if not ended_by_drain(request):
                raise
            return dialect.error_response(503, SHUTTING_DOWN)
        if first is grpc.aio.EOF:
            return dialect.error_response(500, "generation ended without a result")
        if not streaming or framer.single(first):
            # Read to the end, so the call finishes with OK (it is not cancelled as a departed client).
            while await call.read() is not grpc.aio.EOF:
                pass
            return json_response(framer.whole(first))
        response = web.StreamResponse(headers={"Content-Type": framer.content_type, "Cache-Control": "no-cache",
                                               "X-Request-Id": request[REQUEST_ID]})
        security.add_cors(request, response)
        await response.prepare(request)
        msg = first
        try:
            while msg is not grpc.aio.EOF:
                for frame in framer.frames(msg):
                    await response.write(frame)
                msg = await call.read()
            tail = framer.end()
        except grpc.aio.AioRpcError as exc:
            log.warning("%s: error after the first byte: %s %s", dialect.name, exc.code().name, exc.details())
            tail = framer.error(errors.http_status(exc), errors.message(exc))
        except asyncio.CancelledError:
            if not ended_by_drain(request):
                raise
            tail = framer.error(503, SHUTTING_DOWN)
        except ConnectionResetError:                 # the client left while a frame was being written
            request[CLIENT_GONE] = True
            return response                          # (leaving `tracked` cancels the RPC)
        try:
            if tail:
                await response.write(tail)
            await response.write_eof()
        except ConnectionResetError:
            request[CLIENT_GONE] = True
        return response


async def unary(request: web.Request, method: Callable[..., Awaitable[Any]], req: Any,
                to_json: Callable[[Any], Any] | None, dialect: Dialect) -> web.Response:
    """Calls a unary RPC: its reply as JSON (to_json None: an empty 200), or its error in the dialect's shape."""
    try:
        reply = await method(req, metadata=metadata(request), timeout=timeout(request))
    except grpc.aio.AioRpcError as exc:
        return dialect.rpc_error(exc)
    return json_response(to_json(reply)) if to_json is not None else web.Response(status=200)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
LARGE_BODY = 1 << 20


class BodyRefused(Exception):
    """A body the gateway will not wait for: too slow (408), or too many large ones arriving at once (503)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


async def read_body(request: web.Request) -> bytes:
    """The request body, read within GENGATE_BODY_TIMEOUT; a large one (over 1 MiB, or of unknown length) only
    while fewer than GENGATE_MAX_LARGE_BODIES are being received."""
    if not request.body_exists:
        return b""
    settings = request.config_dict[SETTINGS]
    slots = request.config_dict[BODIES]
    large = request.content_length is None or request.content_length > LARGE_BODY
    if large and slots.taken >= slots.limit:
        raise BodyRefused(503, "too many large request bodies being received; try again")
    slots.taken += large
    try:
        return await asyncio.wait_for(request.read(), settings.body_timeout)
    except TimeoutError:
        raise BodyRefused(408, f"request body not received within {settings.body_timeout:g} s") from None
    finally:
        slots.taken -= large


def route(dialect: Dialect, parse: Callable[[bytes], Any] | None = None) -> Callable[..., Handler]:
    """Marks a handler with its dialect (the app's middleware shapes drain, size and internal errors with it);
    with `parse`, the handler gets the parsed body as its second argument, and a BadRequest is the dialect's
    400."""
    def wrap(handler: Callable[..., Awaitable[web.StreamResponse]]) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            if parse is None:
                return await handler(request)
            try:
                parsed = parse(await read_body(request))
            except BadRequest as exc:
                return dialect.error_response(400, exc.message, exc.param)
            except BodyRefused as exc:
                response = dialect.error_response(exc.status, exc.message)
                response.force_close()
                return response
            return await handler(request, parsed)
        handle.dialect = dialect           # type: ignore[attr-defined]
        handle.__name__ = handler.__name__
        return handle
    return wrap
