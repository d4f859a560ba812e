"""HTTP replies as every dialect sends them: JSON written as Go's json.Marshal writes it (Ollama's bytes), error
headers (a 503 asks the client to retry), and server-sent events."""
from __future__ import annotations

from typing import Any

from aiohttp import web

from common import golang
from gateway import errors

JSON = "application/json; charset=utf-8"


def dumps(obj: Any) -> bytes:
    """JSON as Go's json.Marshal writes it, as Ollama sends it (common.golang.marshal)."""
    return golang.marshal(obj).encode("utf-8", errors="replace")


def sse_event(event: str, data: Any) -> bytes:
    """One named server-sent event (the Anthropic and Responses dialects name theirs; OpenAI's chat does not)."""
    return b"event: " + event.encode() + b"\ndata: " + dumps(data) + b"\n\n"


def error_headers(status: int, content_type: str = JSON) -> dict[str, str]:
    """An error reply's headers: a 503 (full queue, draining, no service) asks the client to retry."""
    headers = {"Content-Type": content_type}
    if status == 503:
        headers["Retry-After"] = errors.RETRY_AFTER
    return headers


def json_response(obj: Any) -> web.Response:
    return web.Response(body=dumps(obj), headers={"Content-Type": JSON})


EVENT_STREAM = "text/event-stream"
