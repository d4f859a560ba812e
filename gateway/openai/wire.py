"""OpenAI's JSON <-> gengate protobuf: its chat completions, completions, embeddings, images and model objects,
over the same RPCs as Ollama's API.

Like the rest of the gateway this only translates: an OpenAI request body becomes a ChatRequest, GenerateRequest or
EmbedRequest, and the replies become OpenAI's objects. Every semantic check (model lookup, option ranges,
capabilities, limits) is the service's, so its message text comes back unchanged, in OpenAI's error shape
(gateway.dialects), with the status from gateway/errors.py.

Streams are Server-Sent Events: `data: {chunk}\\n\\n` per reply, then `data: [DONE]\\n\\n`. As on
/api/*, the first reply (or error) is awaited before any header is sent, so an error before
generation gets its real status; after that it becomes one `data: {"error": ...}` event and
the stream ends without [DONE]. When the client goes away the handler is cancelled, and so is
the RPC.

Translations that are OpenAI's own rules rather than model logic: OpenAI's defaults
temperature 1 and top_p 1 (as Ollama's OpenAI layer sets them), `stream` false unless asked,
`max_completion_tokens` (or the older `max_tokens`) as num_predict, `stop` as a string or a
list, `response_format` as Ollama's `format`, `reasoning_effort` as `think`.
"""
from __future__ import annotations

import base64
import json
import logging
import re
import struct
import uuid
from typing import Any

from google.protobuf import struct_pb2

from common import enums, names
from gateway import fields, http, jsonbody, protojson
from gateway.dialects import OPENAI
from gateway.errors import BadRequest
from gengate.v1 import generate_pb2 as pb
from gengate.v1 import model_pb2 as mpb

log = logging.getLogger(__name__)

FINGERPRINT = "fp_gengate"
_EFFORTS = ("high", "medium", "low", "none")


# -- request fields --------------------------------------------------------------------------
body_object = fields.object_body
_get, _str, _bool, _float, _int, _dict, _list = (fields.get, fields.string, fields.boolean, fields.number,
                                                 fields.integer, fields.obj, fields.array)
_INT64 = fields.INT64


def _stops(body: dict[str, Any]) -> list[str]:
    value = body.get("stop")
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise BadRequest("'stop' must be a string or an array of strings", "stop")
    return stops


def _only_one(body: dict[str, Any], key: str) -> None:
    n = _int(body, key)
    if n is not None and n != 1:
        raise BadRequest(f"'{key}' other than 1 is not supported", key)


def _options(body: dict[str, Any], max_tokens_keys: tuple[str, ...]) -> pb.Options:
    """OpenAI's sampling parameters as Ollama options (ranges are the service's to check)."""
    options = pb.Options(temperature=1.0, top_p=1.0)          # OpenAI's defaults, as Ollama's layer sets
    for key in max_tokens_keys:                               # the first one given wins
        if (limit := _int(body, key)) is not None:
            options.num_predict = limit
            break
    for key in ("temperature", "top_p", "frequency_penalty", "presence_penalty"):
        if (value := _float(body, key)) is not None:
            setattr(options, key, value)
    if (seed := _int(body, "seed", _INT64)) is not None:
        options.seed = seed
    options.stop.extend(_stops(body))
    return options


def _stream_options(body: dict[str, Any]) -> tuple[bool, bool]:
    """(stream, include_usage)."""
    stream = bool(_bool(body, "stream"))
    opts = _dict(body, "stream_options") or {}
    return stream, bool(_bool(opts, "include_usage", "stream_options.include_usage"))


def _format(body: dict[str, Any]) -> pb.Format | None:
    spec = _dict(body, "response_format")
    if spec is None:
        return None
    kind = (_str(spec, "type", "response_format.type") or "").strip().lower()
    if kind in ("", "text"):
        return None
    if kind == "json_object":
        return pb.Format(json=True)
    if kind == "json_schema":
        schema = (_dict(spec, "json_schema", "response_format.json_schema") or {}).get("schema")
        if schema is None:                                    # OpenAI's schema is optional: any JSON then
            return pb.Format(json=True)
        # Passed on verbatim; the service accepts only a JSON Schema object.
        return pb.Format(json_schema=json.dumps(schema, separators=(",", ":"), ensure_ascii=False))
    raise BadRequest(f"invalid response_format type: '{kind}' (must be \"text\", \"json_object\" or \"json_schema\")",
                  "response_format.type")


def _think(body: dict[str, Any]) -> pb.Think | None:
    reasoning = _dict(body, "reasoning")
    effort = _str(reasoning, "effort", "reasoning.effort") if reasoning else _str(body, "reasoning_effort")
    if not effort:
        return None
    if effort not in _EFFORTS:
        raise BadRequest(f"invalid reasoning value: '{effort}' (must be \"high\", \"medium\", \"low\", or \"none\")",
                      "reasoning_effort")
    return pb.Think(enabled=False) if effort == "none" else pb.Think(level=enums.THINK_LEVELS[effort])


# -- chat ------------------------------------------------------------------------------------
def _arguments(text: Any, param: str) -> struct_pb2.Struct:
    try:
        value = jsonbody.loads(text, param) if isinstance(text, str) else text
    except json.JSONDecodeError:
        value = None
    if value is None and text in ("", None):
        value = {}
    if not isinstance(value, dict):
        raise BadRequest("invalid tool call arguments", param)
    out = struct_pb2.Struct()
    out.update(value)
    return out


def _tool_calls(value: Any, param: str) -> list[pb.ToolCall]:
    if not isinstance(value, list):
        raise BadRequest(f"'{param}' must be an array", param)
    calls = []
    for i, call in enumerate(value):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            raise BadRequest(f"'{param}[{i}].function' must be an object", f"{param}[{i}].function")
        calls.append(pb.ToolCall(function=pb.ToolCallFunction(
            index=i, name=_str(function, "name", f"{param}[{i}].function.name") or "",
            arguments=_arguments(function.get("arguments"), f"{param}[{i}].function.arguments"))))
    return calls


def _image(part: dict[str, Any], param: str) -> bytes:
    image = part.get("image_url")
    return fields.data_url(image.get("url") if isinstance(image, dict) else image, param)


def _message(item: Any, i: int, call_names: dict[str, str]) -> pb.Message:
    param = f"messages[{i}]"
    if not isinstance(item, dict):
        raise BadRequest(f"'{param}' must be an object", param)
    msg = pb.Message(role=_str(item, "role", f"{param}.role") or "")
    content = item.get("content")
    if isinstance(content, str):
        msg.content = content
    elif isinstance(content, list):                           # content parts: text joined, images attached
        texts = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif kind == "image_url":
                msg.images.append(_image(part, f"{param}.content[{j}]"))
            else:
                raise BadRequest("invalid message format", f"{param}.content[{j}]")
        msg.content = "\n".join(texts)
    elif content is not None:
        raise BadRequest(f"'{param}.content' must be a string or an array of content parts", f"{param}.content")
    elif item.get("tool_calls") is None:
        raise BadRequest(f"'{param}.content' is required unless the message has tool_calls", f"{param}.content")
    if (thinking := item.get("reasoning") or item.get("reasoning_content")) is not None:
        if not isinstance(thinking, str):
            raise BadRequest(f"'{param}.reasoning' must be a string", f"{param}.reasoning")
        msg.thinking = thinking
    if item.get("tool_calls") is not None:
        msg.tool_calls.extend(_tool_calls(item["tool_calls"], f"{param}.tool_calls"))
        for call in item["tool_calls"]:
            if isinstance(call.get("id"), str):
                call_names[call["id"]] = call["function"].get("name") or ""
    if msg.role.lower() == "tool":
        msg.tool_call_id = _str(item, "tool_call_id", f"{param}.tool_call_id") or ""
        msg.tool_name = _str(item, "name", f"{param}.name") or call_names.get(msg.tool_call_id, "")
    return msg


def _tools(body: dict[str, Any]) -> list[pb.Tool]:
    tools = []
    for i, item in enumerate(_list(body, "tools") or []):
        function = item.get("function") if isinstance(item, dict) else None
        if not isinstance(function, dict):
            raise BadRequest(f"'tools[{i}].function' must be an object", f"tools[{i}].function")
        parameters = _dict(function, "parameters", f"tools[{i}].function.parameters") or {}
        out = struct_pb2.Struct()
        out.update(parameters)
        tools.append(pb.Tool(type=_str(item, "type", f"tools[{i}].type") or "function", function=pb.ToolFunction(
            name=_str(function, "name", f"tools[{i}].function.name") or "",
            description=_str(function, "description", f"tools[{i}].function.description") or "",
            parameters=out)))
    return tools


def chat_request(body: dict[str, Any]) -> tuple[pb.ChatRequest, bool]:
    """An OpenAI chat.completions body as a ChatRequest, and whether usage is streamed."""
    _only_one(body, "n")
    stream, include_usage = _stream_options(body)
    call_names: dict[str, str] = {}
    req = pb.ChatRequest(model=_str(body, "model") or "", stream=stream,
                         options=_options(body, ("max_completion_tokens", "max_tokens")),
                         messages=[_message(m, i, call_names) for i, m in enumerate(_list(body, "messages") or [])],
                         tools=_tools(body))
    if (fmt := _format(body)) is not None:
        req.format.CopyFrom(fmt)
    if (think := _think(body)) is not None:
        req.think.CopyFrom(think)
    req.logprobs = bool(_bool(body, "logprobs"))
    if (top := _int(body, "top_logprobs")) is not None:
        req.top_logprobs = top
    if (choice := fields.tool_choice(body.get("tool_choice"), "tool_choice")) is not None:
        req.tool_choice.CopyFrom(choice)
    return req, include_usage


def _usage(msg) -> dict[str, int]:
    return {"prompt_tokens": msg.prompt_eval_count, "completion_tokens": msg.eval_count,
            "total_tokens": msg.prompt_eval_count + msg.eval_count}


def _token(entry) -> dict[str, Any]:
    return {"token": entry.token, "logprob": entry.logprob, "bytes": list(entry.bytes) if entry.bytes else None}


def _chat_logprobs(entries) -> dict[str, Any] | None:
    if not entries:
        return None
    return {"content": [{**_token(e), "top_logprobs": [_token(t) for t in e.top_logprobs]} for e in entries],
            "refusal": None}


def arguments_text(call: pb.ToolCall) -> str:
    """A call's arguments as the JSON text OpenAI's APIs send: as far as they were written, for a call the token
    limit cut off."""
    if call.function.incomplete:
        return call.function.arguments_json
    return json.dumps(protojson.struct_dict(call.function.arguments), ensure_ascii=False)


def _openai_tool_calls(calls) -> list[dict[str, Any]]:
    return [{"index": c.function.index, "id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
             "function": {"name": c.function.name, "arguments": arguments_text(c)}} for c in calls]


def _struct_dict(value: struct_pb2.Struct) -> dict[str, Any]:
    return protojson.struct_dict(value)


def _finish(msg, tool_calls: bool) -> str | None:
    if not msg.done:
        return None
    if tool_calls and msg.done_reason != pb.DONE_REASON_LENGTH:      # a call the limit cut off: "length"
        return "tool_calls"
    return enums.DONE_REASON_NAMES.get(msg.done_reason, "stop")


class ChatShape:
    """ChatResponses as chat.completion / chat.completion.chunk objects."""

    def __init__(self, include_usage: bool):
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.include_usage = include_usage
        self.created: int | None = None
        self.role_sent = self.tool_calls_sent = False

    def _head(self, msg, obj: str) -> dict[str, Any]:
        if self.created is None:
            self.created = msg.created_at.seconds
        return {"id": self.id, "object": obj, "created": self.created, "model": msg.model,
                "system_fingerprint": FINGERPRINT}

    def whole(self, msg: pb.ChatResponse) -> dict[str, Any]:
        message: dict[str, Any] = {"role": msg.message.role or "assistant", "content": msg.message.content}
        if msg.message.thinking:
            message["reasoning"] = msg.message.thinking
        if msg.message.tool_calls:
            message["tool_calls"] = _openai_tool_calls(msg.message.tool_calls)
        return {**self._head(msg, "chat.completion"),
                "choices": [{"index": 0, "message": message, "logprobs": _chat_logprobs(msg.logprobs),
                             "finish_reason": _finish(msg, bool(msg.message.tool_calls))}],
                "usage": _usage(msg)}

    def chunks(self, msg: pb.ChatResponse) -> list[dict[str, Any]]:
        delta: dict[str, Any] = {}
        if not self.role_sent:
            delta["role"], self.role_sent = "assistant", True
        if msg.message.content or not msg.done:
            delta["content"] = msg.message.content
        if msg.message.thinking:
            delta["reasoning"] = msg.message.thinking
        if msg.message.tool_calls:
            delta["tool_calls"] = _openai_tool_calls(msg.message.tool_calls)
            self.tool_calls_sent = True
        chunk = {**self._head(msg, "chat.completion.chunk"),
                 "choices": [{"index": 0, "delta": delta, "logprobs": _chat_logprobs(msg.logprobs),
                              "finish_reason": _finish(msg, self.tool_calls_sent)}]}
        return _with_usage(chunk, msg, self.include_usage)


def _with_usage(chunk: dict[str, Any], msg, include_usage: bool) -> list[dict[str, Any]]:
    """OpenAI's stream_options.include_usage: usage null on every chunk, then one chunk with
    no choices holding the usage, after the last."""
    if not include_usage:
        return [chunk]
    chunk["usage"] = None
    if not msg.done:
        return [chunk]
    return [chunk, {**{k: chunk[k] for k in ("id", "object", "created", "model", "system_fingerprint")},
                    "choices": [], "usage": _usage(msg)}]


# -- completions -----------------------------------------------------------------------------
def completion_request(body: dict[str, Any]) -> tuple[pb.GenerateRequest, bool]:
    """An OpenAI completions body as a GenerateRequest, and whether usage is streamed."""
    if _bool(body, "echo"):
        raise BadRequest("'echo' is not supported", "echo")
    _only_one(body, "n")
    _only_one(body, "best_of")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if prompt is not None and not isinstance(prompt, str):
        raise BadRequest("'prompt' must be a string (lists of several prompts and token arrays are not supported)",
                      "prompt")
    stream, include_usage = _stream_options(body)
    req = pb.GenerateRequest(model=_str(body, "model") or "", prompt=prompt or "", suffix=_str(body, "suffix") or "",
                             stream=stream, options=_options(body, ("max_tokens",)))
    if (top := _int(body, "logprobs")) is not None:      # the legacy API's integer: alternatives per token
        req.logprobs, req.top_logprobs = True, top
    return req, include_usage


class CompletionShape:
    """GenerateResponses as text_completion objects (whole or streamed)."""

    def __init__(self, include_usage: bool):
        self.id = f"cmpl-{uuid.uuid4().hex[:24]}"
        self.include_usage = include_usage
        self.created: int | None = None
        self.offset = 0                                   # text_offset of the next token

    def _logprobs(self, entries) -> dict[str, Any] | None:
        if not entries:
            return None
        out: dict[str, Any] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for e in entries:
            out["tokens"].append(e.token)
            out["token_logprobs"].append(e.logprob)
            out["top_logprobs"].append({t.token: t.logprob for t in e.top_logprobs})
            out["text_offset"].append(self.offset)
            self.offset += len(e.token)
        return out

    def _object(self, msg: pb.GenerateResponse) -> dict[str, Any]:
        if self.created is None:
            self.created = msg.created_at.seconds
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": msg.model,
                "system_fingerprint": FINGERPRINT,
                "choices": [{"text": msg.response, "index": 0, "logprobs": self._logprobs(msg.logprobs),
                             "finish_reason": _finish(msg, False)}]}

    def whole(self, msg: pb.GenerateResponse) -> dict[str, Any]:
        return {**self._object(msg), "usage": _usage(msg)}

    def chunks(self, msg: pb.GenerateResponse) -> list[dict[str, Any]]:
        return _with_usage(self._object(msg), msg, self.include_usage)


# -- streaming -------------------------------------------------------------------------------
def _sse(obj: Any) -> bytes:
    return b"data: " + (obj if isinstance(obj, bytes) else http.dumps(obj)) + b"\n\n"


class SseFramer:
    """OpenAI's Server-Sent Events: `data: {chunk}` per chunk, then `data: [DONE]`; an error after the first
    byte is a last `data: {"error": ...}` event, without [DONE]."""

    content_type = http.EVENT_STREAM

    def __init__(self, shape: ChatShape | CompletionShape):
        self.shape = shape

    def single(self, msg: Any) -> bool:
        return False

    def whole(self, msg: Any) -> dict[str, Any]:
        return self.shape.whole(msg)

    def frames(self, msg: Any) -> list[bytes]:
        return [_sse(chunk) for chunk in self.shape.chunks(msg)]

    def end(self) -> bytes:
        return _sse(b"[DONE]")

    def error(self, status: int, message: str) -> bytes:
        return _sse(OPENAI.error_body(status, message))


# -- embeddings ------------------------------------------------------------------------------
def embedding_request(body: dict[str, Any]) -> tuple[pb.EmbedRequest, str]:
    inputs = body.get("input")
    inputs = [inputs] if isinstance(inputs, str) else inputs
    if not isinstance(inputs, list) or not all(isinstance(s, str) for s in inputs):
        raise BadRequest("'input' must be a string or an array of strings (token arrays are not supported)", "input")
    encoding = _str(body, "encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise BadRequest(f"invalid encoding_format: '{encoding}' (must be \"float\" or \"base64\")", "encoding_format")
    req = pb.EmbedRequest(model=_str(body, "model") or "", input=inputs)
    if (dimensions := _int(body, "dimensions")) is not None:
        req.dimensions = dimensions
    return req, encoding


def _embedding(values, encoding: str) -> list[float] | str:
    if encoding == "base64":                              # little-endian float32, as OpenAI sends it
        return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode("ascii")
    return list(values)


def embeddings_response(reply: pb.EmbedResponse, encoding: str) -> dict[str, Any]:
    return {"object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": _embedding(e.values, encoding)}
                     for i, e in enumerate(reply.embeddings)],
            "model": reply.model,
            "usage": {"prompt_tokens": reply.prompt_eval_count, "total_tokens": reply.prompt_eval_count}}


# -- images ----------------------------------------------------------------------------------
_SIZE = re.compile(r"([0-9]{1,5})x([0-9]{1,5})")


def image_request(body: dict[str, Any]) -> pb.GenerateRequest:
    """An OpenAI images body (Ollama's /v1/images/generations: model, prompt, size "WxH", n, response_format,
    seed) as a GenerateRequest for one image, not streamed. Only base64 answers: there is nowhere to host a URL."""
    prompt, model = _str(body, "prompt"), _str(body, "model")
    if not prompt:
        raise BadRequest("prompt is required", "prompt")
    if not model:
        raise BadRequest("model is required", "model")
    if (n := _int(body, "n")) is not None and n != 1:
        raise BadRequest("'n' must be 1: one image a request", "n")
    if (form := _str(body, "response_format")) not in (None, "b64_json"):
        raise BadRequest(f"response_format '{form}' is not supported: images come back as b64_json", "response_format")
    if (kind := _str(body, "output_format")) not in (None, "png"):
        raise BadRequest(f"output_format '{kind}' is not supported: images are PNG", "output_format")
    # An image is asked for: width and height present (0: the model's default size), so a text model refuses it.
    req = pb.GenerateRequest(model=model, prompt=prompt, stream=False, width=0, height=0)
    if (size := _str(body, "size")) not in (None, "auto"):
        match = _SIZE.fullmatch(size)
        if match is None or not int(match[1]) or not int(match[2]):
            raise BadRequest(f"invalid size '{size}': expected WIDTHxHEIGHT, such as 1024x1024", "size")
        req.width, req.height = int(match[1]), int(match[2])
    if (seed := _int(body, "seed")) is not None:
        req.options.seed = seed
    return req


def image_response(reply: pb.GenerateResponse) -> dict[str, Any]:
    return {"created": reply.created_at.seconds,
            "data": [{"b64_json": base64.b64encode(reply.image).decode("ascii")}] if reply.image else [],
            "output_format": "png", "size": _png_size(reply.image)}


def _png_size(png: bytes) -> str:
    """A PNG's "WxH", from its header."""
    if len(png) < 24:
        return ""
    return f"{int.from_bytes(png[16:20], 'big')}x{int.from_bytes(png[20:24], 'big')}"


def parse(translate):
    """A body parser for gateway.relay.route: the JSON object, then its translation by `translate`."""
    return lambda raw: translate(body_object(raw))


# -- models ----------------------------------------------------------------------------------
def _owner(name: str) -> str:
    """The namespace of the name, as Ollama's OpenAI layer reports it ("library" by default)."""
    try:
        return names.parse(name).namespace
    except names.InvalidName:
        return names.DEFAULT_NAMESPACE


def model_object(name: str, modified_at) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": modified_at.seconds, "owned_by": _owner(name)}


def model_list(reply: mpb.ListModelsResponse) -> dict[str, Any]:
    return {"object": "list", "data": [model_object(m.name, m.modified_at) for m in reply.models]}
