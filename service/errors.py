"""The service's errors and its one table: error kind -> gRPC status code.

Every failure the service reports is a GenerateError carrying a Kind. The message is
Ollama's text (the gateway sends the same string over HTTP); the kind's name travels
as the reason of a google.rpc.ErrorInfo-style trailer so callers can branch on it.
"""
from __future__ import annotations

import enum

import grpc


class Kind(enum.Enum):
    """What went wrong. The name is the stable machine-readable reason."""

    INVALID_ARGUMENT = enum.auto()    # malformed or contradictory request
    CONTEXT_TOO_LONG = enum.auto()    # prompt does not fit the context window (truncate:false)
    UNSUPPORTED = enum.auto()         # the model lacks a capability (insert, thinking, images)
    MODEL_NOT_FOUND = enum.auto()
    CLOUD_DISABLED = enum.auto()      # :cloud models: gengate serves local models only
    QUEUE_FULL = enum.auto()
    SHUTTING_DOWN = enum.auto()
    MODEL_LOAD_FAILED = enum.auto()
    OUT_OF_MEMORY = enum.auto()       # a model does not fit, even with idle ones unloaded
    STORE_READ_ONLY = enum.auto()     # copy/delete on a store that cannot be written
    STORE_FULL = enum.auto()          # no space left for a blob
    TOO_LARGE = enum.auto()           # an upload over the limit
    NO_REGISTRY = enum.auto()         # push: gengate has no registry to push to
    INTERNAL = enum.auto()

    @property
    def code(self) -> grpc.StatusCode:
        return GRPC_CODE[self]


# The service boundary's one table: error kind -> gRPC status code.
GRPC_CODE: dict[Kind, grpc.StatusCode] = {
    Kind.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    Kind.CONTEXT_TOO_LONG: grpc.StatusCode.INVALID_ARGUMENT,
    Kind.UNSUPPORTED: grpc.StatusCode.INVALID_ARGUMENT,
    Kind.MODEL_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Kind.CLOUD_DISABLED: grpc.StatusCode.PERMISSION_DENIED,
    Kind.QUEUE_FULL: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Kind.SHUTTING_DOWN: grpc.StatusCode.UNAVAILABLE,
    Kind.MODEL_LOAD_FAILED: grpc.StatusCode.INTERNAL,
    Kind.OUT_OF_MEMORY: grpc.StatusCode.INTERNAL,       # Ollama: 500; the reason tells it apart
    Kind.STORE_READ_ONLY: grpc.StatusCode.FAILED_PRECONDITION,
    Kind.STORE_FULL: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Kind.TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Kind.NO_REGISTRY: grpc.StatusCode.UNIMPLEMENTED,
    Kind.INTERNAL: grpc.StatusCode.INTERNAL,
}


class GenerateError(Exception):
    """A failure reported to the caller with a gRPC status and Ollama's message."""

    def __init__(self, kind: Kind, message: str, field: str | None = None):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.field = field


def invalid(message: str, field: str | None = None) -> GenerateError:
    return GenerateError(Kind.INVALID_ARGUMENT, message, field)
