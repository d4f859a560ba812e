"""The gateway's one error table: gRPC status code -> HTTP status (decisions.md §2)."""
from __future__ import annotations

import grpc

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
}


def http_status(code: grpc.StatusCode) -> int:
    """HTTP status for a gRPC code; anything unlisted (INTERNAL, UNKNOWN, …) is 500."""
    return HTTP_STATUS.get(code, 500)


def message(exc: grpc.aio.AioRpcError) -> str:
    """The error text for HTTP: the service's own message (Ollama's), or a plain one for a deadline
    (whose library text varies with where it struck)."""
    if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "deadline exceeded"
    if exc.code() == grpc.StatusCode.UNAVAILABLE:
        return "service unavailable"           # the transport's own text names internal addresses
    return exc.details() or exc.code().name.lower()


class BadRequest(Exception):
    """A request the gateway cannot translate (Ollama's JSON binding errors): HTTP 400."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message
