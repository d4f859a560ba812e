"""Typed fields of the JSON bodies of the OpenAI, Responses and Anthropic dialects (their parameters, each error
naming its `param`), and the pieces they share: images as data URLs, OpenAI's `tool_choice`. Ollama's own bodies
follow Go's binding rules instead (gateway.ollama.wire)."""
from __future__ import annotations

import base64
import binascii
from typing import Any

from gateway import jsonbody
from gateway.errors import BadRequest
from gengate.v1 import generate_pb2 as pb

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
IMAGE_PREFIXES = ("data:;base64,",) + tuple(f"data:image/{t};base64," for t in ("jpeg", "jpg", "png", "webp", "gif"))


def object_body(raw: bytes) -> dict[str, Any]:
    """A JSON object body (nesting and number sizes bounded as for Ollama's routes)."""
    return jsonbody.json_object(raw)


def get(body: dict[str, Any], key: str, kinds: tuple[type, ...], what: str, param: str | None = None) -> Any:
    """body[key] when present and not null; it must be one of kinds (bool is never a number)."""
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        raise BadRequest(f"'{param or key}' must be {what}", param or key)
    return value


def string(body: dict[str, Any], key: str, param: str | None = None) -> str | None:
    return get(body, key, (str,), "a string", param)


def boolean(body: dict[str, Any], key: str, param: str | None = None) -> bool | None:
    return get(body, key, (bool,), "a boolean", param)


def number(body: dict[str, Any], key: str, param: str | None = None) -> float | None:
    value = get(body, key, (int, float), "a number", param)
    return None if value is None else float(value)


def integer(body: dict[str, Any], key: str, bounds: tuple[int, int] = INT32, param: str | None = None) -> int | None:
    value = get(body, key, (int, float), "an integer", param)
    if value is None:
        return None
    if value != int(value):
        raise BadRequest(f"'{param or key}' must be an integer", param or key)
    return max(bounds[0], min(bounds[1], int(value)))


def obj(body: dict[str, Any], key: str, param: str | None = None) -> dict | None:
    return get(body, key, (dict,), "an object", param)


def array(body: dict[str, Any], key: str, param: str | None = None) -> list | None:
    return get(body, key, (list,), "an array", param)


def data_url(url: Any, param: str) -> bytes:
    """An image sent as a base64 data URL (`data:image/png;base64,...`); http(s) URLs are not fetched."""
    if not isinstance(url, str):
        raise BadRequest("invalid message format", param)
    prefix = next((p for p in IMAGE_PREFIXES if url.startswith(p)), None)
    if prefix is None:
        raise BadRequest("invalid image input: only base64 data URLs are supported", param)
    return base64_bytes(url[len(prefix):], param)


def base64_bytes(text: Any, param: str) -> bytes:
    if not isinstance(text, str):
        raise BadRequest(f"'{param}' must be base64 data", param)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"'{param}' is not valid base64 data", param) from None


_MODES = {"auto": pb.TOOL_CHOICE_MODE_AUTO, "none": pb.TOOL_CHOICE_MODE_NONE,
          "required": pb.TOOL_CHOICE_MODE_REQUIRED}


def tool_choice(value: Any, param: str) -> pb.ToolChoice | None:
    """OpenAI's tool_choice: "auto", "none", "required", or a function by name ({"type": "function", "function":
    {"name": ...}} in chat completions, {"type": "function", "name": ...} in Responses). gengate enforces it."""
    if value is None:
        return None
    if isinstance(value, str):
        if value not in _MODES:
            raise BadRequest(f"invalid tool_choice: '{value}' (must be \"auto\", \"none\", \"required\" or a "
                             "function)", param)
        return pb.ToolChoice(mode=_MODES[value])
    if isinstance(value, dict) and value.get("type") == "function":
        function = value.get("function")
        name = function.get("name") if isinstance(function, dict) else value.get("name")
        if isinstance(name, str) and name:
            return pb.ToolChoice(function=name)
    raise BadRequest("invalid tool_choice: expected \"auto\", \"none\", \"required\" or "
                     "{\"type\": \"function\", \"function\": {\"name\": ...}}", param)
