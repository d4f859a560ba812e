"""Each API dialect's error shape, in one place: Ollama's {"error": message}, OpenAI's (its Responses API too) and
Anthropic's. A route is marked with its dialect (gateway.relay.route), so the app's middleware shapes the errors
it makes itself (a drain, a body too large) as the route's own."""
from __future__ import annotations

import logging
import secrets
from typing import Any

import grpc
from aiohttp import web

from gateway import errors
from gateway.http import dumps, error_headers

log = logging.getLogger(__name__)

_OPENAI_TYPES = {400: "invalid_request_error", 404: "not_found_error"}
_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error",
                504: "timeout_error", 529: "overloaded_error"}


class Dialect:
    """How an API shapes its errors. Ollama's: {"error": message}."""

    name = "ollama"

    def error_body(self, status: int, message: str, param: str | None = None) -> Any:
        return {"error": message}

    def error_response(self, status: int, message: str, param: str | None = None) -> web.Response:
        return web.Response(status=status, body=dumps(self.error_body(status, message, param)),
                            headers=error_headers(status))

    def rpc_error(self, exc: grpc.aio.AioRpcError) -> web.Response:
        """A failed RPC (before any byte was sent) as this dialect's error reply."""
        status = errors.http_status(exc)
        if status >= 500:
            log.warning("%s: %s %s", self.name, exc.code().name, exc.details())
        return self.error_response(status, errors.message(exc))


OLLAMA = Dialect()


class _OpenAI(Dialect):
    """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""

    name = "openai"

    def error_body(self, status: int, message: str, param: str | None = None) -> dict[str, Any]:
        return {"error": {"message": message, "type": _OPENAI_TYPES.get(status, "api_error"), "param": param,
                          "code": None}}


OPENAI = _OpenAI()


class _Anthropic(Dialect):
    """Anthropic's error shape."""

    name = "anthropic"

    def error_body(self, status: int, message: str, param: str | None = None) -> dict[str, Any]:
        return {"type": "error", "error": {"type": _ANTHROPIC_TYPES.get(status, "api_error"), "message": message},
                "request_id": f"req_{secrets.token_hex(12)}"}


ANTHROPIC = _Anthropic()


def dialect_of(request: web.Request) -> Dialect | None:
    """The dialect of the route that matched (None for probes and unmatched paths)."""
    return getattr(request.match_info.handler, "dialect", None)
