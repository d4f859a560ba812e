"""What every gengate RPC passes through, once: request id, errors, metrics and the access log.

One server interceptor wraps the handlers of GenerateService and ModelService (health and reflection are left
alone):

- the request id comes from `x-request-id` metadata (or is made), is set in the logging context for every line
  the request logs, and is sent back as initial metadata before anything else (the gateway reads its
  presence as "the request was taken");
- a request whose bytes do not parse is INVALID_ARGUMENT (gRPC's own answer would be UNKNOWN);
- a GenerateError becomes its status (service.errors has the one table), with google.rpc details; anything
  else is INTERNAL with a generic text (the cause goes to the log: it may name files);
- `gengate_requests_total{method, code, capability}`, the request duration, and one access log line.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from common import tracing
from common.logs import request_id
from service.errors import GenerateError, Kind
from service.metrics import CAPABILITY, Metrics

log = logging.getLogger("service.access")
DOMAIN = "gengate.v1"
DEADLINE_SLACK_S = 0.1
_UNPARSED = object()


def rich_status(exc: GenerateError) -> grpc.Status:
    """The error as google.rpc.Status: ErrorInfo(reason) always, BadRequest when a field is to blame."""
    status = status_pb2.Status(code=exc.kind.code.value[0], message=exc.message)
    status.details.add().Pack(error_details_pb2.ErrorInfo(reason=exc.kind.name, domain=DOMAIN))
    if exc.field:
        violation = error_details_pb2.BadRequest.FieldViolation(field=exc.field, description=exc.message)
        status.details.add().Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    return rpc_status.to_status(status)


async def abort(context: grpc.aio.ServicerContext, exc: GenerateError) -> None:
    status = rich_status(exc)
    await context.abort(status.code, status.details, trailing_metadata=status.trailing_metadata)


def _lenient(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except (DecodeError, RecursionError, ValueError):
            return _UNPARSED
    return parse


class _Call:
    """One RPC being observed."""

    def __init__(self, method: str, internal: str, metrics: Metrics, context: grpc.aio.ServicerContext):
        self.method, self.internal, self.metrics, self.context = method, internal, metrics, context
        self.start = time.perf_counter()
        self.code = grpc.StatusCode.CANCELLED          # unless it ends otherwise
        self.model = ""
        self.tokens = 0

    async def begin(self, request: Any) -> None:
        given = dict(self.context.invocation_metadata() or ()).get("x-request-id", "")
        rid = given if 0 < len(given) <= 128 and given.isascii() and given.isprintable() else uuid.uuid4().hex
        request_id.set(rid)
        CAPABILITY.set("")
        tracing.tag_request(rid)
        await self.context.send_initial_metadata((("x-request-id", rid),))
        if request is _UNPARSED:
            raise GenerateError(Kind.INVALID_ARGUMENT, "invalid request: the message could not be parsed")
        self.model = getattr(request, "model", "")

    def saw(self, reply: Any) -> None:
        if getattr(reply, "done", False):
            self.tokens = getattr(reply, "eval_count", 0)

    async def failed(self, exc: BaseException) -> None:
        """Turns an exception into the call's status (re-raises what is not an error of the request)."""
        if isinstance(exc, GenerateError):
            self.code = exc.kind.code
            await abort(self.context, exc)
        if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):      # the client left, or its deadline
            # The client's deadline, not the client leaving: its cancel may arrive just before the server's own
            # timer fires, so "all but passed" counts too.
            remaining = self.context.time_remaining()
            if remaining is not None and remaining < DEADLINE_SLACK_S:
                self.code = grpc.StatusCode.DEADLINE_EXCEEDED
            raise exc
        if isinstance(exc, grpc.aio.AbortError):
            self.code = self.context.code() or grpc.StatusCode.UNKNOWN       # aborted further in
            raise exc
        self.code = grpc.StatusCode.INTERNAL
        log.error("%s failed", self.method, exc_info=exc)
        await abort(self.context, GenerateError(Kind.INTERNAL, self.internal))

    def end(self) -> None:
        elapsed = time.perf_counter() - self.start
        capability = CAPABILITY.get()
        self.metrics.requests.labels(self.method, self.code.name, capability).inc()
        self.metrics.e2e.labels(self.method, capability).observe(elapsed)
        log.info("%s model=%s code=%s tokens=%d seconds=%.3f", self.method, self.model, self.code.name,
                 self.tokens, elapsed)


class Observe(grpc.aio.ServerInterceptor):
    """Wraps the handlers of the services given, each with the text its unexpected errors get."""

    def __init__(self, services: dict[str, str], metrics: Metrics):
        self._internal = {f"/{name}/": text for name, text in services.items()}
        self._metrics = metrics

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        service, _, method = details.method.rpartition("/")
        internal = self._internal.get(service + "/")
        if handler is None or internal is None:
            return handler
        metrics = self._metrics
        deserialize = _lenient(handler.request_deserializer)
        if handler.unary_stream is not None:
            stream = handler.unary_stream

            async def unary_stream(request, context):
                call = _Call(method, internal, metrics, context)
                try:
                    await call.begin(request)
                    # aclosing: a cancelled RPC (client gone, deadline) closes the pipeline at once, which stops
                    # decoding before this handler returns.
                    async with contextlib.aclosing(stream(request, context)) as replies:
                        async for reply in replies:
                            call.saw(reply)
                            yield reply
                    call.code = grpc.StatusCode.OK
                except BaseException as exc:
                    await call.failed(exc)
                finally:
                    call.end()
            return grpc.unary_stream_rpc_method_handler(unary_stream, deserialize, handler.response_serializer)
        if handler.unary_unary is None and handler.stream_unary is None:
            return handler
        # One reply: to one request, or to a stream of them (an upload).
        uploads = handler.stream_unary is not None
        behaviour = handler.stream_unary if uploads else handler.unary_unary

        async def one_reply(request, context):
            call = _Call(method, internal, metrics, context)
            try:
                await call.begin(None if uploads else request)
                reply = await behaviour(_checked(request) if uploads else request, context)
                call.code = grpc.StatusCode.OK
                return reply
            except BaseException as exc:
                await call.failed(exc)
            finally:
                call.end()
        make = grpc.stream_unary_rpc_method_handler if uploads else grpc.unary_unary_rpc_method_handler
        return make(one_reply, deserialize, handler.response_serializer)


async def _checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """A request stream whose messages that do not parse are INVALID_ARGUMENT."""
    async for request in requests:
        if request is _UNPARSED:
            raise GenerateError(Kind.INVALID_ARGUMENT, "invalid request: the message could not be parsed")
        yield request
