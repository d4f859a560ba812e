"""Ollama JSON <-> gengate protobuf, with Go's JSON binding rules.

Ollama decodes requests with Go's encoding/json, so the gateway does the same: keys match
case-insensitively, the last duplicate wins, only the first JSON value is read, and type
errors use Go's messages. Values that need only translation are translated here (base64
images, duration strings, think levels); every semantic check is the service's.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from google.protobuf import struct_pb2

from common import enums, requests
from gateway import fields, http, jsonbody, protojson
from gateway.errors import BadRequest
from gengate.v1 import generate_pb2 as pb
from gengate.v1 import model_pb2 as mpb

INT32 = (-(2**31), 2**31 - 1)

INT64 = (-(2**63), 2**63 - 1)

_B64 = re.compile(r"[A-Za-z0-9+/]")

_THINK_VALUES = '"high", "medium", "low", "max", true, or false'

# -- field converters -----------------------------------------------------------------
def _string(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise jsonbody.type_error(value, field, "string")
    return value


def _bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise jsonbody.type_error(value, field, "bool")
    return value


def _int(value: Any, field: str, go_type: str = "int") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise jsonbody.type_error(value, field, go_type)
    return max(INT32[0], min(INT32[1], int(value)))


def _unset_if_zero(value: Any, field: str) -> int | None:
    """An int32 that Ollama tags omitempty: 0 is as if it were absent."""
    return _int(value, field, "int32") or None


def _images(value: Any, field: str) -> list[bytes]:
    if not isinstance(value, list):
        raise jsonbody.type_error(value, field, "[]api.ImageData")
    out = []
    for item in value:
        if not isinstance(item, str):
            raise jsonbody.type_error(item, field, "api.ImageData")
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
        go = {"bool": "bool", "array": "[]interface {}", "object": "map[string]interface {}"}[jsonbody.kind_of(value)]
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
        raise jsonbody.type_error(value, field, "[]int")
    return [_int(v, field) for v in value]

# -- options (Ollama's api.Options.FromMap) ---------------------------------------------
_INT_OPTIONS = {"num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread", "draft_num_predict", "num_keep",
                "num_predict", "top_k", "repeat_last_n", "seed"}

_FLOAT_OPTIONS = {"top_p", "min_p", "typical_p", "temperature", "repeat_penalty", "presence_penalty",
                  "frequency_penalty"}


def _options(value: Any, field: str) -> pb.Options:
    if not isinstance(value, dict):
        raise jsonbody.type_error(value, field, "map[string]interface {}")
    options = pb.Options()
    for key, item in value.items():
        if item is None:
            continue
        kind = enums.OPTION_KINDS.get(key)
        if kind == "integer":
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                raise BadRequest(f'option "{key}" must be of type integer')
            low, high = enums.OPTION_BOUNDS[key]
            setattr(options, key, max(low, min(high, int(item))))
        elif kind == "number":
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                raise BadRequest(f'option "{key}" must be of type float32')
            setattr(options, key, float(item))
        elif kind == "boolean":
            if not isinstance(item, bool):
                raise BadRequest(f'option "{key}" must be of type boolean')
            setattr(options, key, item)
        elif kind == "strings":
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
    "width": ("width", _unset_if_zero), "height": ("height", _unset_if_zero), "steps": ("steps", _unset_if_zero),
    "_debug_render_only": ("debug_render_only", _bool),
}


def _bind(body: bytes, message, struct: str, fields: Fields):
    """Fills `message` from a JSON body, Go-style (see decode_object and fields)."""
    try:
        return _bind_values(jsonbody.match_fields(jsonbody.decode_object(body, struct), set(fields)), message, fields)
    except RecursionError:
        raise BadRequest(jsonbody.DEPTH_ERROR) from None

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
        raise jsonbody.type_error(value, field, "map[string]interface {}", "ChatRequest")
    out = struct_pb2.Struct()
    out.update(value)
    return out


def _tool_calls(value: Any, field: str) -> list[pb.ToolCall]:
    if not isinstance(value, list):
        raise jsonbody.type_error(value, field, "[]api.ToolCall", "Message")
    calls = []
    for item in value:
        function = item.get("function") if isinstance(item, dict) else None
        if not isinstance(function, dict):
            raise jsonbody.type_error(item, field, "api.ToolCall", "Message")
        calls.append(pb.ToolCall(function=pb.ToolCallFunction(
            index=_int(function.get("index", 0), "index"), name=_string(function.get("name", ""), "name"),
            arguments=_struct(function.get("arguments") or {}, "arguments"))))
    return calls

_MESSAGE_FIELDS = {"role": ("role", _string), "content": ("content", _string), "thinking": ("thinking", _string),
                   "images": ("images", _images), "tool_calls": ("tool_calls", _tool_calls),
                   "tool_name": ("tool_name", _string), "tool_call_id": ("tool_call_id", _string)}


def _messages(value: Any, field: str) -> list[pb.Message]:
    if not isinstance(value, list):
        raise jsonbody.type_error(value, field, "[]api.Message", "ChatRequest")
    out = []
    for item in value:
        if not isinstance(item, dict):
            raise jsonbody.type_error(item, field, "api.Message", "ChatRequest")
        out.append(_bind_values(item, pb.Message(), _MESSAGE_FIELDS))
    return out


def _tools(value: Any, field: str) -> list[pb.Tool]:
    if not isinstance(value, list):
        raise jsonbody.type_error(value, field, "api.Tools", "ChatRequest")
    tools = []
    for item in value:
        function = item.get("function") if isinstance(item, dict) else None
        if not isinstance(function, dict):
            raise jsonbody.type_error(item, field, "api.Tool", "ChatRequest")
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


def _tool_choice(value: Any, field: str) -> pb.ToolChoice | None:
    """Not in Ollama's API (it ignores the field): gengate honours OpenAI's forms ("auto", "none", "required",
    or a function by name), as its Chat RPC does."""
    return fields.tool_choice(value, field)


_CHAT_FIELDS = {**_COMMON, "messages": ("messages", _messages), "tools": ("tools", _tools),
                "tool_choice": ("tool_choice", _tool_choice)}

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
    pairs = jsonbody.decode_object(body, "ShowRequest")
    req = _bind_values(jsonbody.match_fields(pairs, {"model", "verbose"}), mpb.ShowModelRequest(),
                       {"model": ("model", _string), "verbose": ("verbose", _bool)})
    return _model_or_name(req, jsonbody.match_fields(pairs, {"name"}))


def copy_request(body: bytes) -> mpb.CopyModelRequest:
    return _bind(body, mpb.CopyModelRequest(), "CopyRequest",
                 {"source": ("source", _string), "destination": ("destination", _string)})


def delete_request(body: bytes) -> mpb.DeleteModelRequest:
    pairs = jsonbody.decode_object(body, "DeleteRequest")
    req = _bind_values(jsonbody.match_fields(pairs, {"model"}), mpb.DeleteModelRequest(), {"model": ("model", _string)})
    return _model_or_name(req, jsonbody.match_fields(pairs, {"name"}))


def _string_map(value: Any, field: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise jsonbody.type_error(value, field, "map[string]string", "CreateRequest")
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
    pairs = jsonbody.decode_object(body, "PullRequest")
    req = _bind_values(jsonbody.match_fields(pairs, set(_PROGRESS_FIELDS)), mpb.PullModelRequest(), _PROGRESS_FIELDS)
    return _model_or_name(req, jsonbody.match_fields(pairs, {"name"}))


def push_request(body: bytes) -> mpb.PushModelRequest:
    pairs = jsonbody.decode_object(body, "PushRequest")
    req = _bind_values(jsonbody.match_fields(pairs, set(_PROGRESS_FIELDS)), mpb.PushModelRequest(), _PROGRESS_FIELDS)
    return _model_or_name(req, jsonbody.match_fields(pairs, {"name"}))

_CREATE_FIELDS: Fields = {
    "model": ("model", _string), "from": ("from", _string), "files": ("files", _string_map),
    "adapters": ("adapters", _string_map), "template": ("template", _string), "system": ("system", _string),
    "license": ("license", _licenses), "parameters": ("parameters", _parameters),
    "messages": ("messages", _messages), "quantize": ("quantize", _string), "stream": ("stream", _bool),
    "draft_files": ("draft_files", _string_map), "draft_quantize": ("draft_quantize", _string)}


def create_request(body: bytes) -> mpb.CreateModelRequest:
    """Ollama's current api.CreateRequest (`name` and `quantization` are its deprecated spellings)."""
    pairs = jsonbody.decode_object(body, "CreateRequest")
    req = _bind_values(jsonbody.match_fields(pairs, set(_CREATE_FIELDS)), mpb.CreateModelRequest(), _CREATE_FIELDS)
    old = jsonbody.match_fields(pairs, {"name", "quantization"})
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
    out["created_at"] = protojson.timestamp(msg.created_at)
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
    if msg.image:                            # image generation: the PNG, base64; the steps done and in all
        out["image"] = base64.b64encode(msg.image).decode("ascii")
    if msg.completed:
        out["completed"] = msg.completed
    if msg.total:
        out["total"] = msg.total
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
        value = value if isinstance(value, int) else protojson.ns(value)
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
                                                "arguments": protojson.struct_dict(c.function.arguments)}}
                                 for c in msg.message.tool_calls]
    out: dict[str, Any] = {"model": msg.model, "created_at": protojson.timestamp(msg.created_at), "message": message,
                           "done": msg.done}
    _final(msg, out)
    return out


def embed_response(msg: pb.EmbedResponse) -> dict[str, Any]:
    out: dict[str, Any] = {"model": msg.model, "embeddings": [list(e.values) for e in msg.embeddings]}
    for key in ("total_duration", "load_duration", "prompt_eval_count"):
        value = getattr(msg, key)
        out[key] = value if isinstance(value, int) else protojson.ns(value)
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
    return {"models": [{"name": m.name, "model": m.model, "modified_at": protojson.timestamp(m.modified_at),
                        "size": m.size, "digest": m.digest, "details": _details(m.details),
                        "capabilities": list(m.capabilities)} for m in msg.models]}


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
    out["model_info"] = protojson.struct_dict(msg.model_info)
    if msg.HasField("projector_info"):
        out["projector_info"] = protojson.struct_dict(msg.projector_info)
    if msg.HasField("draft"):
        out["draft"] = _details(msg.draft)
    out.update(capabilities=list(msg.capabilities), modified_at=protojson.timestamp(msg.modified_at))
    if msg.speculative_decoding:
        out["speculative_decoding"] = _speculation(msg.speculative_decoding)
    return out


def _speculation(value: int) -> str:
    """gengate's field: "off", "prompt_lookup" or "draft_model"."""
    return mpb.SpeculativeDecoding.Name(value).removeprefix("SPECULATIVE_DECODING_").lower()


def ps_response(msg: mpb.ListRunningModelsResponse) -> dict[str, Any]:
    return {"models": [{"name": m.name, "model": m.model, "size": m.size, "digest": m.digest,
                        "details": _details(m.details), "expires_at": protojson.timestamp(m.expires_at),
                        "size_vram": m.size_vram, "context_length": m.context_length,
                        **({"speculative_decoding": _speculation(m.speculative_decoding)}
                           if m.speculative_decoding else {})} for m in msg.models]}


# -- framing ------------------------------------------------------------------------------
NDJSON = "application/x-ndjson"


class NdjsonFramer:
    """Each reply one JSON line; replies Ollama always sends whole (load, unload, debug render) as one object."""

    content_type = NDJSON

    def __init__(self, to_json: Callable[[Any], dict[str, Any]]):
        self.to_json = to_json

    def single(self, msg: Any) -> bool:
        debug = isinstance(msg, pb.GenerateResponse) and msg.HasField("debug_info")
        return debug or getattr(msg, "done_reason", 0) in (pb.DONE_REASON_LOAD, pb.DONE_REASON_UNLOAD)

    def whole(self, msg: Any) -> dict[str, Any]:
        return self.to_json(msg)

    def frames(self, msg: Any) -> list[bytes]:
        return [http.dumps(self.to_json(msg)) + b"\n"]

    def end(self) -> bytes:
        return b""

    def error(self, status: int, message: str) -> bytes:
        return http.dumps({"error": message}) + b"\n"
