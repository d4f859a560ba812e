"""The gateway's one error table: gRPC status code -> HTTP status (docs/differences.md lists where it differs
from Ollama's)."""
from __future__ import annotations

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 503,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.UNIMPLEMENTED: 501,
}

# RESOURCE_EXHAUSTED by the service's ErrorInfo reason: a full queue, a full disk, an upload over its limit.
RESOURCE_STATUS = {"QUEUE_FULL": 503, "STORE_FULL": 507, "TOO_LARGE": 413}


# Seconds a client is asked to wait (Retry-After) after a 503: a full queue or a drain.
RETRY_AFTER = "1"


def reason(exc: grpc.aio.AioRpcError) -> str:
    """The google.rpc.ErrorInfo reason the service attached (QUEUE_FULL, MODEL_NOT_FOUND, …), or ""."""
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            try:
                status = status_pb2.Status.FromString(value)
            except DecodeError:
                return ""
            for detail in status.details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    return info.reason
    return ""


def _oversize(exc: grpc.aio.AioRpcError) -> str | None:
    """For gRPC's own RESOURCE_EXHAUSTED (a message over a size limit, not the service's full queue): whose
    message it was. The service's handler sends its initial metadata first; if it did, the request was taken
    and the reply was too large."""
    if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or reason(exc) in RESOURCE_STATUS:
        return None
    started = any(key == "x-request-id" for key, _ in exc.initial_metadata() or ())
    return "reply" if started else "request"


def http_status(exc: grpc.aio.AioRpcError) -> int:
    """HTTP status for a failed RPC; anything unlisted (INTERNAL, UNKNOWN, …) is 500.
    RESOURCE_EXHAUSTED is a full queue (503) when the service says so; from gRPC itself it is a
    request over the size limit (413), or a reply over it (500)."""
    if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
        oversize = _oversize(exc)
        if oversize is not None:
            return 413 if oversize == "request" else 500
        return RESOURCE_STATUS[reason(exc)]
    return HTTP_STATUS.get(exc.code(), 500)


def message(exc: grpc.aio.AioRpcError) -> str:
    """The error text for HTTP: the service's own message (Ollama's), or a plain one where gRPC's text
    would name internals (a deadline's varies with where it struck; transport errors name addresses)."""
    if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "deadline exceeded"
    if exc.code() == grpc.StatusCode.UNAVAILABLE:
        return "service unavailable"
    oversize = _oversize(exc)
    if oversize is not None:
        return f"{oversize} too large"
    return exc.details() or exc.code().name.lower()


class BadRequest(Exception):
    """A request the gateway cannot translate (a body that does not parse or bind): HTTP 400 in the route's
    dialect, naming the parameter where the dialect reports one (OpenAI's `param`)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
