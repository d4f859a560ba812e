"""Ollama JSON <-> gengate protobuf, with Go's JSON binding rules.

Ollama decodes requests with Go's encoding/json, so the gateway does the same: keys match
case-insensitively, the last duplicate wins, only the first JSON value is read, and type
errors use Go's messages. Values that need only translation are translated here (base64
images, duration strings, think levels); every semantic check is the service's.
"""
from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from google.protobuf import json_format, struct_pb2

from common import enums, requests
from common.golang import quote
from gateway.errors import BadRequest
from gengate.v1 import generate_pb2 as pb
from gengate.v1 import model_pb2 as mpb

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
_B64 = re.compile(r"[A-Za-z0-9+/]")
_THINK_VALUES = '"high", "medium", "low", "max", true, or false'


# -- Go's JSON decoding -------------------------------------------------------------
def _kind(value: Any) -> str:
    """Go's name for a JSON value's kind, as its unmarshal errors print it."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _type_error(value: Any, field: str, go_type: str, struct: str = "GenerateRequest") -> BadRequest:
    kind = _kind(value)
    if kind == "number" and go_type.startswith("int"):
        kind = f"number {json.dumps(value)}"
    return BadRequest(f"json: cannot unmarshal {kind} into Go struct field {struct}.{field} of type {go_type}")


def _char(text: str, pos: int) -> str:
    """Go's encoding/json quoteChar: the offending byte (the first of a multi-byte character; an invalid byte,
    held as a surrogateescape code) as Go quotes it: strconv.Quote(string(rune(byte))), so 0xC3 is 'Ã'."""
    char = text[pos]
    byte = ord(char) - 0xDC00 if "\udc80" <= char <= "\udcff" else char.encode("utf-8", "surrogatepass")[0]
    if byte in b"'\"":
        return "'\\''" if byte == ord("'") else "'\"'"
    return "'" + quote(chr(byte))[1:-1] + "'"


def _syntax_error(exc: json.JSONDecodeError) -> BadRequest:
    text, pos = exc.doc, exc.pos
    if pos >= len(text) or exc.msg.startswith("Unterminated"):
        return BadRequest("unexpected EOF")
    context = {
        "Expecting value": "looking for beginning of value",
        "Expecting property name enclosed in double quotes": "looking for beginning of object key string",
        "Expecting ':' delimiter": "after object key",
        "Expecting ',' delimiter": "after object key:value pair" if _in_object(text, pos) else "after array element",
        "Invalid control character at": "in string literal",
    }.get(exc.msg, "looking for beginning of value")
    return BadRequest(f"invalid character {_char(text, pos)} {context}")


def _in_object(text: str, pos: int) -> bool:
    depth = []
    in_string = escaped = False
    for ch in text[:pos]:
        if in_string:
            escaped, in_string = (False, True) if escaped else (ch == "\\", ch != '"')
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth.append(ch)
        elif ch in "]}" and depth:
            depth.pop()
    return bool(depth) and depth[-1] == "{"


class _Pairs(list):
    """A JSON object as its key/value pairs, in order (duplicates kept)."""


_SURROGATE = re.compile("[\ud800-\udfff]")


def _float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise BadRequest(f"json: cannot unmarshal number {text} into Go value of type float64")
    return value


def _integer(text: str) -> int | float:
    """An integer literal. Python refuses to convert one of over 4300 digits; Go reads such a number as a
    float64, which overflows."""
    if len(text) > 4300:
        return _float(text)
    return int(text)


def _clean(value: Any) -> Any:
    """Lone UTF-16 surrogates (a JS string cut mid-emoji) become U+FFFD, as Go's decoder makes them."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, _Pairs):
        return _Pairs((_clean(k), _clean(v)) for k, v in value)
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


MAX_DEPTH = 32            # objects and arrays nested in one JSON value (a body, or a JSON text inside one)
DEPTH_ERROR = "exceeded max depth"      # Go's decoder's words for it (its own limit is 10000)


def check_depth(value: Any) -> Any:
    """`value`, once known to nest objects and arrays at most MAX_DEPTH deep (BadRequest otherwise). Walked
    without recursion, before anything else (protobuf's Struct, or Python's own stack) meets it."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        items = node.values() if isinstance(node, dict) else (v for _, v in node) if isinstance(node, _Pairs) \
            else node if isinstance(node, list) else None
        if items is None:
            continue
        if depth > MAX_DEPTH:
            raise BadRequest(DEPTH_ERROR)
        stack.extend((item, depth + 1) for item in items if isinstance(item, (dict, list)))
    return value


def loads(text: str, param: str | None = None) -> Any:
    """A JSON text found inside a body (tool-call arguments), nested at most MAX_DEPTH deep (BadRequest naming
    `param` otherwise); ValueError if it is not JSON."""
    try:
        return check_depth(json.loads(text))
    except RecursionError:
        raise BadRequest(DEPTH_ERROR, param) from None
    except BadRequest:
        raise BadRequest(DEPTH_ERROR, param) from None


def _reject_constant(name: str) -> Any:
    raise json.JSONDecodeError("Expecting value", name, 0)


def decode_object(body: bytes, struct: str) -> list[tuple[str, Any]]:
    """The key/value pairs of the body's first JSON value (Go: Decoder.Decode into a struct)."""
    # An invalid byte stays itself (a surrogateescape code) until a string holding it is cleaned to U+FFFD, one
    # per byte, as Go's decoder does; an error names the byte.
    text = body.decode("utf-8", errors="surrogateescape")
    start = len(text) - len(text.lstrip(" \t\r\n"))
    if start == len(text):
        raise BadRequest("missing request body")
    decoder = json.JSONDecoder(object_pairs_hook=_Pairs, parse_constant=_reject_constant, parse_float=_float,
                               parse_int=_integer)
    try:
        value, _ = decoder.raw_decode(text, start)
        if value is None:
            return []
        value = _clean(check_depth(value))
    except RecursionError:
        # Nesting deeper than Python's stack allows (Go's decoder stops at 10000 levels, with these words).
        raise BadRequest(DEPTH_ERROR) from None
    except json.JSONDecodeError as exc:
        if exc.doc != text:  # NaN / Infinity: not JSON
            exc = json.JSONDecodeError("Expecting value", text, text.find(exc.doc, start))
        raise _syntax_error(exc) from None
    if not isinstance(value, _Pairs):
        raise BadRequest(f"json: cannot unmarshal {_kind(_plain(value))} into Go value of type api.{struct}")
    return value


def json_object(body: bytes, struct: str = "object") -> dict[str, Any]:
    """A body that must be one JSON object, as a dict (Go's decoding rules, as decode_object)."""
    try:
        return _plain(_Pairs(decode_object(body, struct)))
    except RecursionError:
        raise BadRequest(DEPTH_ERROR) from None


def _plain(value: Any) -> Any:
    """Undoes object_pairs_hook: pairs lists back into dicts (the last duplicate wins)."""
    if isinstance(value, _Pairs):
        return {k: _plain(v) for k, v in value}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _fields(pairs: list[tuple[str, Any]], known: set[str]) -> dict[str, Any]:
    """Go's field matching: exact name first, else case-insensitive; unknown keys ignored."""
    lower = {k.lower(): k for k in known}
    out: dict[str, Any] = {}
    for key, value in pairs:
        name = key if key in known else lower.get(key.lower())
        if name is not None:
            try:
                out[name] = _plain(value)
            except RecursionError:
                raise BadRequest(DEPTH_ERROR) from None
    return out


# -- field converters -----------------------------------------------------------------
def _string(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise _type_error(value, field, "string")
    return value


def _bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise _type_error(value, field, "bool")
    return value


def _int(value: Any, field: str, go_type: str = "int") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise _type_error(value, field, go_type)
    return max(INT32[0], min(INT32[1], int(value)))


def _images(value: Any, field: str) -> list[bytes]:
    if not isinstance(value, list):
        raise _type_error(value, field, "[]api.ImageData")
    out = []
    for item in value:
        if not isinstance(item, str):
            raise _type_error(item, field, "api.ImageData")
        out.append(_base64(item))
    return out


def _base64(text: str) -> bytes:
    """Go's base64.StdEncoding: padded standard alphabet; newlines ignored."""
    clean = text.replace("\r", "").replace("\n", "")
    try:
        return base64.b64decode(clean, validate=True)
    except (binascii.Error, ValueError):
        body = clean.rstrip("=")
        bad = next((i for i, ch in enumerate(body) if not _B64.match(ch)), len(body))
        raise BadRequest(f"illegal base64 data at input byte {bad}") from None


def _keep_alive(value: Any, field: str):
    from google.protobuf import duration_pb2
    try:
        ns = requests.keep_alive_ns(value)
    except TypeError:
        go = {"bool": "bool", "array": "[]interface {}", "object": "map[string]interface {}"}[_kind(value)]
        raise BadRequest(f"Unsupported type: '{go}'") from None
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(ns or 0)        # seconds and nanos of one sign, as the Duration spec demands
    return duration


def _think(value: Any, field: str) -> pb.Think:
    if isinstance(value, bool):
        return pb.Think(enabled=value)
    if isinstance(value, str):
        if value in enums.THINK_LEVELS:
            return pb.Think(level=enums.THINK_LEVELS[value])
        raise BadRequest(f'invalid think value: "{value}" (must be {_THINK_VALUES})')
    raise BadRequest(f"think must be a boolean or string ({_THINK_VALUES})")


def _format(value: Any, field: str) -> pb.Format | None:
    if value == "":
        return None
    if value == "json":
        return pb.Format(json=True)
    # Anything else goes to the service verbatim; it accepts only a JSON Schema object.
    return pb.Format(json_schema=json.dumps(value, separators=(",", ":"), ensure_ascii=False))


def _context(value: Any, field: str) -> list[int]:
    if not isinstance(value, list):
        raise _type_error(value, field, "[]int")
    return [_int(v, field) for v in value]


# -- options (Ollama's api.Options.FromMap) ---------------------------------------------
_INT_OPTIONS = {"num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread", "draft_num_predict", "num_keep",
                "num_predict", "top_k", "repeat_last_n", "seed"}
_FLOAT_OPTIONS = {"top_p", "min_p", "typical_p", "temperature", "repeat_penalty", "presence_penalty",
                  "frequency_penalty"}


def _options(value: Any, field: str) -> pb.Options:
    if not isinstance(value, dict):
        raise _type_error(value, field, "map[string]interface {}")
    options = pb.Options()
    for key, item in value.items():
        if item is None:
            continue
        if key in _INT_OPTIONS:
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                raise BadRequest(f'option "{key}" must be of type integer')
            bounds = INT64 if key == "seed" else INT32
            setattr(options, key, max(bounds[0], min(bounds[1], int(item))))
        elif key in _FLOAT_OPTIONS:
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                raise BadRequest(f'option "{key}" must be of type float32')
            setattr(options, key, float(item))
        elif key == "use_mmap":
            if not isinstance(item, bool):
                raise BadRequest(f'option "{key}" must be of type boolean')
            options.use_mmap = item
        elif key == "stop":
            stops = [item] if isinstance(item, str) else item   # a string, or a list of them
            if not isinstance(stops, list):
                raise BadRequest(f'option "{key}" must be of type array')
            if not all(isinstance(s, str) for s in stops):
                raise BadRequest(f'option "{key}" must be of an array of strings')
            options.stop.extend(stops)
        # Unknown and legacy keys (mirostat, tfs_z, numa, …) are ignored, as Ollama does.
    return options


_GENERATE_FIELDS: Fields = {
    "model": ("model", _string), "prompt": ("prompt", _string), "suffix": ("suffix", _string),
    "system": ("system", _string), "template": ("template", _string), "context": ("context", _context),
    "stream": ("stream", _bool), "raw": ("raw", _bool), "format": ("format", _format),
    "images": ("images", _images), "options": ("options", _options), "keep_alive": ("keep_alive", _keep_alive),
    "think": ("think", _think), "truncate": ("truncate", _bool), "shift": ("shift", _bool),
    "logprobs": ("logprobs", _bool), "top_logprobs": ("top_logprobs", _int),
    "width": ("width", _int), "height": ("height", _int), "steps": ("steps", _int),
    "_debug_render_only": ("debug_render_only", _bool),
}


def _bind(body: bytes, message, struct: str, fields: Fields):
    """Fills `message` from a JSON body, Go-style (see decode_object and _fields)."""
    try:
        return _bind_values(_fields(decode_object(body, struct), set(fields)), message, fields)
    except RecursionError:
        raise BadRequest(DEPTH_ERROR) from None


Fields = Mapping[str, tuple[str, Callable[[Any, str], Any]]]


def _bind_values(values: dict[str, Any], message, fields: Fields):
    lower = {k.lower(): k for k in fields}
    for given, value in values.items():
        key = given if given in fields else lower.get(given.lower())
        if key is None:
            continue
        if value is None:
            continue
        attr, convert = fields[key]
        converted = convert(value, key)
        if converted is None:
            continue
        if isinstance(converted, list):
            getattr(message, attr).extend(converted)
        elif isinstance(converted, dict):
            getattr(message, attr).update(converted)
        elif hasattr(converted, "DESCRIPTOR"):
            getattr(message, attr).CopyFrom(converted)
        else:
            setattr(message, attr, converted)
    return message


def generate_request(body: bytes) -> pb.GenerateRequest:
    """An Ollama /api/generate body as a GenerateRequest; BadRequest with Go's message if it cannot be."""
    return _bind(body, pb.GenerateRequest(), "GenerateRequest", _GENERATE_FIELDS)


def _struct(value: Any, field: str) -> struct_pb2.Struct:
    if not isinstance(value, dict):
        raise _type_error(value, field, "map[string]interface {}", "ChatRequest")
    out = struct_pb2.Struct()
    out.update(value)
    return out


def _tool_calls(value: Any, field: str) -> list[pb.ToolCall]:
    if not isinstance(value, list):
        raise _type_error(value, field, "[]api.ToolCall", "Message")
    calls = []
    for item in value:
        function = item.get("function") if isinstance(item, dict) else None
        if not isinstance(function, dict):
            raise _type_error(item, field, "api.ToolCall", "Message")
        calls.append(pb.ToolCall(function=pb.ToolCallFunction(
            index=_int(function.get("index", 0), "index"), name=_string(function.get("name", ""), "name"),
            arguments=_struct(function.get("arguments") or {}, "arguments"))))
    return calls


_MESSAGE_FIELDS = {"role": ("role", _string), "content": ("content", _string), "thinking": ("thinking", _string),
                   "images": ("images", _images), "tool_calls": ("tool_calls", _tool_calls),
                   "tool_name": ("tool_name", _string), "tool_call_id": ("tool_call_id", _string)}


def _messages(value: Any, field: str) -> list[pb.Message]:
    if not isinstance(value, list):
        raise _type_error(value, field, "[]api.Message", "ChatRequest")
    out = []
    for item in value:
        if not isinstance(item, dict):
            raise _type_error(item, field, "api.Message", "ChatRequest")
        out.append(_bind_values(item, pb.Message(), _MESSAGE_FIELDS))
    return out


def _tools(value: Any, field: str) -> list[pb.Tool]:
    if not isinstance(value, list):
        raise _type_error(value, field, "api.Tools", "ChatRequest")
    tools = []
    for item in value:
        function = item.get("function") if isinstance(item, dict) else None
        if not isinstance(function, dict):
            raise _type_error(item, field, "api.Tool", "ChatRequest")
        tools.append(pb.Tool(type=str(item.get("type", "function")), function=pb.ToolFunction(
            name=_string(function.get("name", ""), "name"),
            description=_string(function.get("description", ""), "description"),
            parameters=_struct(function.get("parameters") or {}, "parameters"))))
    return tools


def _inputs(value: Any, field: str) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise BadRequest("invalid input type")
    return items


_COMMON = {k: _GENERATE_FIELDS[k] for k in ("model", "stream", "format", "options", "keep_alive", "think",
                                            "truncate", "shift", "logprobs", "top_logprobs")}
_CHAT_FIELDS = {**_COMMON, "messages": ("messages", _messages), "tools": ("tools", _tools)}
_EMBED_FIELDS = {**{k: _GENERATE_FIELDS[k] for k in ("model", "options", "keep_alive", "truncate")},
                 "input": ("input", _inputs), "dimensions": ("dimensions", _int)}


def chat_request(body: bytes) -> pb.ChatRequest:
    return _bind(body, pb.ChatRequest(), "ChatRequest", _CHAT_FIELDS)


def embed_request(body: bytes) -> pb.EmbedRequest:
    return _bind(body, pb.EmbedRequest(), "EmbedRequest", _EMBED_FIELDS)


def embeddings_request(body: bytes) -> pb.EmbedRequest:
    """Legacy /api/embeddings: {model, prompt} → one input (none when the prompt is empty)."""
    req = _bind(body, pb.EmbedRequest(), "EmbeddingRequest",
                {**{k: _GENERATE_FIELDS[k] for k in ("model", "options", "keep_alive")},
                 "prompt": ("input", lambda v, f: [s] if (s := _string(v, f)) else [])})
    req.unnormalized = True               # Ollama's legacy handler returns the raw vector
    return req


def _model_or_name(req, values: dict[str, Any]):
    """Ollama's cmp.Or(model, name): the deprecated `name` counts only when `model` is empty."""
    if not req.model and values.get("name"):
        req.model = _string(values["name"], "name")
    return req


def show_request(body: bytes) -> mpb.ShowModelRequest:
    pairs = decode_object(body, "ShowRequest")
    req = _bind_values(_fields(pairs, {"model", "verbose"}), mpb.ShowModelRequest(),
                       {"model": ("model", _string), "verbose": ("verbose", _bool)})
    return _model_or_name(req, _fields(pairs, {"name"}))


def copy_request(body: bytes) -> mpb.CopyModelRequest:
    return _bind(body, mpb.CopyModelRequest(), "CopyRequest",
                 {"source": ("source", _string), "destination": ("destination", _string)})


def delete_request(body: bytes) -> mpb.DeleteModelRequest:
    pairs = decode_object(body, "DeleteRequest")
    req = _bind_values(_fields(pairs, {"model"}), mpb.DeleteModelRequest(), {"model": ("model", _string)})
    return _model_or_name(req, _fields(pairs, {"name"}))


def _string_map(value: Any, field: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise _type_error(value, field, "map[string]string", "CreateRequest")
    return value


def _licenses(value: Any, field: str) -> list[str]:
    """Ollama's license: a string or a list of strings."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise BadRequest("license must be a string or an array of strings")
    return items


def _parameters(value: Any, field: str) -> struct_pb2.Struct:
    return _struct(value, field)


_PROGRESS_FIELDS: Fields = {"model": ("model", _string), "insecure": ("insecure", _bool), "stream": ("stream", _bool)}


def pull_request(body: bytes) -> mpb.PullModelRequest:
    pairs = decode_object(body, "PullRequest")
    req = _bind_values(_fields(pairs, set(_PROGRESS_FIELDS)), mpb.PullModelRequest(), _PROGRESS_FIELDS)
    return _model_or_name(req, _fields(pairs, {"name"}))


def push_request(body: bytes) -> mpb.PushModelRequest:
    pairs = decode_object(body, "PushRequest")
    req = _bind_values(_fields(pairs, set(_PROGRESS_FIELDS)), mpb.PushModelRequest(), _PROGRESS_FIELDS)
    return _model_or_name(req, _fields(pairs, {"name"}))


_CREATE_FIELDS: Fields = {
    "model": ("model", _string), "from": ("from", _string), "files": ("files", _string_map),
    "adapters": ("adapters", _string_map), "template": ("template", _string), "system": ("system", _string),
    "license": ("license", _licenses), "parameters": ("parameters", _parameters),
    "messages": ("messages", _messages), "quantize": ("quantize", _string), "stream": ("stream", _bool)}


def create_request(body: bytes) -> mpb.CreateModelRequest:
    """Ollama's current api.CreateRequest (`name` and `quantization` are its deprecated spellings)."""
    pairs = decode_object(body, "CreateRequest")
    req = _bind_values(_fields(pairs, set(_CREATE_FIELDS)), mpb.CreateModelRequest(), _CREATE_FIELDS)
    old = _fields(pairs, {"name", "quantization"})
    if not req.quantize and old.get("quantization"):
        req.quantize = _string(old["quantization"], "quantization")
    return _model_or_name(req, old)


def progress_response(msg) -> dict[str, Any]:
    """A pull or create step as Ollama's ProgressResponse: empty fields left out."""
    out: dict[str, Any] = {"status": msg.status}
    if msg.digest:
        out["digest"] = msg.digest
    if msg.total:
        out["total"] = msg.total
    if msg.completed:
        out["completed"] = msg.completed
    return out


# -- responses ----------------------------------------------------------------------------
def _whole(value: Any) -> Any:
    """A protobuf Struct's numbers are doubles: the whole ones back to integers, as they were sent (and as Go
    prints a JSON number that has no fraction)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2 ** 53:
        return int(value)
    if isinstance(value, dict):
        return {k: _whole(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole(v) for v in value]
    return value


def struct_dict(value: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct (tool arguments, GGUF metadata) as the JSON object it stands for."""
    return _whole(json_format.MessageToDict(value))


_second: list = [None, ""]               # the last second formatted, and its text: every streamed reply has one


def timestamp(ts) -> str:
    """RFC 3339 with nanoseconds, UTC, trailing zeros trimmed (Go's time.RFC3339Nano)."""
    if _second[0] != ts.seconds:
        _second[:] = ts.seconds, dt.datetime.fromtimestamp(ts.seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    base = _second[1]
    frac = f"{ts.nanos:09d}".rstrip("0")
    return f"{base}.{frac}Z" if frac else f"{base}Z"


def _ns(duration) -> int:
    return duration.seconds * 1_000_000_000 + duration.nanos


def _logprob(entry) -> dict[str, Any]:
    out: dict[str, Any] = {"token": entry.token, "logprob": entry.logprob}
    if entry.bytes:
        out["bytes"] = list(entry.bytes)
    return out


def generate_response(msg: pb.GenerateResponse) -> dict[str, Any]:
    """A GenerateResponse as Ollama's JSON object (its field order; empty fields omitted)."""
    out: dict[str, Any] = {"model": msg.model}
    if msg.remote_model:
        out["remote_model"] = msg.remote_model
    if msg.remote_host:
        out["remote_host"] = msg.remote_host
    out["created_at"] = timestamp(msg.created_at)
    out["response"] = msg.response
    if msg.thinking:
        out["thinking"] = msg.thinking
    out["done"] = msg.done
    _final(msg, out, context=list(msg.context))
    if msg.HasField("debug_info"):
        info: dict[str, Any] = {"rendered_template": msg.debug_info.rendered_template}
        if msg.debug_info.image_count:
            info["image_count"] = msg.debug_info.image_count
        out["_debug_info"] = info
    if msg.logprobs:
        out["logprobs"] = _logprobs(msg.logprobs)
    return out


def _logprobs(entries) -> list[dict[str, Any]]:
    return [{**_logprob(e), **({"top_logprobs": [_logprob(t) for t in e.top_logprobs]} if e.top_logprobs else {})}
            for e in entries]


def _final(msg, out: dict[str, Any], context: list[int] | None = None) -> None:
    """done_reason, context and the metrics, each omitted when empty (Go's omitempty)."""
    if msg.done_reason:
        out["done_reason"] = enums.DONE_REASON_NAMES[msg.done_reason]
    if context:
        out["context"] = context
    for key in ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration",
                "eval_count", "eval_duration"):
        value = getattr(msg, key)
        value = value if isinstance(value, int) else _ns(value)
        if value:
            out[key] = value
    if not isinstance(msg, pb.GenerateResponse) and msg.logprobs:
        out["logprobs"] = _logprobs(msg.logprobs)


def chat_response(msg: pb.ChatResponse) -> dict[str, Any]:
    """A ChatResponse as Ollama's JSON object."""
    message: dict[str, Any] = {"role": msg.message.role or "assistant", "content": msg.message.content}
    if msg.message.thinking:
        message["thinking"] = msg.message.thinking
    if msg.message.tool_calls:
        message["tool_calls"] = [{"function": {"index": c.function.index, "name": c.function.name,
                                                "arguments": struct_dict(c.function.arguments)}}
                                 for c in msg.message.tool_calls]
    out: dict[str, Any] = {"model": msg.model, "created_at": timestamp(msg.created_at), "message": message,
                           "done": msg.done}
    _final(msg, out)
    return out


def embed_response(msg: pb.EmbedResponse) -> dict[str, Any]:
    out: dict[str, Any] = {"model": msg.model, "embeddings": [list(e.values) for e in msg.embeddings]}
    for key in ("total_duration", "load_duration", "prompt_eval_count"):
        value = getattr(msg, key)
        out[key] = value if isinstance(value, int) else _ns(value)
    return out


def _details(d) -> dict[str, Any]:
    out = {"parent_model": d.parent_model, "format": d.format, "family": d.family, "families": list(d.families),
           "parameter_size": d.parameter_size, "quantization_level": d.quantization_level}
    if d.context_length:
        out["context_length"] = d.context_length
    if d.embedding_length:
        out["embedding_length"] = d.embedding_length
    return out


def tags_response(msg: mpb.ListModelsResponse) -> dict[str, Any]:
    return {"models": [{"name": m.name, "model": m.model, "modified_at": timestamp(m.modified_at), "size": m.size,
                        "digest": m.digest, "details": _details(m.details), "capabilities": list(m.capabilities)}
                       for m in msg.models]}


def show_response(msg: mpb.ShowModelResponse) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if msg.license:
        out["license"] = msg.license
    out["modelfile"] = msg.modelfile
    if msg.parameters:
        out["parameters"] = msg.parameters
    if msg.template:
        out["template"] = msg.template
    if msg.system:
        out["system"] = msg.system
    out["details"] = _details(msg.details)
    if msg.messages:
        out["messages"] = [{"role": m.role, "content": m.content} for m in msg.messages]
    out["model_info"] = struct_dict(msg.model_info)
    if msg.HasField("projector_info"):
        out["projector_info"] = struct_dict(msg.projector_info)
    out.update(capabilities=list(msg.capabilities), modified_at=timestamp(msg.modified_at))
    return out


def ps_response(msg: mpb.ListRunningModelsResponse) -> dict[str, Any]:
    return {"models": [{"name": m.name, "model": m.model, "size": m.size, "digest": m.digest,
                        "details": _details(m.details), "expires_at": timestamp(m.expires_at),
                        "size_vram": m.size_vram, "context_length": m.context_length} for m in msg.models]}
