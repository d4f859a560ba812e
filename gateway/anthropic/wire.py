"""Anthropic's Messages API (/v1/messages, as Ollama serves it since v0.14) over the Chat RPC.

Requests: `model`, `max_tokens` (required), `messages` (text, image, tool_use, tool_result and thinking blocks,
or a string), `system` (a string or text blocks), `temperature`, `top_p`, `top_k`, `stop_sequences`, `tools`,
`tool_choice` (auto, any, tool by name, none: enforced by the service), `thinking` (enabled or adaptive lets a
thinking model think, disabled stops it; a model that cannot think is not refused, as in Ollama),
`output_config` (`effort` as a think level; `format` json_schema constrains decoding), `metadata` (accepted).
Current SDKs send no `temperature`/`top_p`/`top_k`; older ones (and `extra_body`) may, and they are honoured.

Replies: a `message` object, or Anthropic's server-sent events: message_start, ping, content_block_start /
content_block_delta (text_delta, thinking_delta, input_json_delta) / content_block_stop per block,
message_delta (stop_reason, stop_sequence, usage), message_stop. Errors are Anthropic's
{"type": "error", "error": {"type", "message"}} with its statuses; after the first byte, an `error` event.
"""
from __future__ import annotations

import json
import secrets
from typing import Any

from common import enums
from gateway import fields, http, protojson
from gateway.dialects import ANTHROPIC
from gateway.errors import BadRequest
from gengate.v1 import generate_pb2 as pb
from gengate.v1 import model_pb2 as mpb

_EFFORTS = {"low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "max"}     # as Ollama maps


# -- requests ----------------------------------------------------------------------------------------------------
def _text_of(value: Any, param: str) -> str:
    """A string, or the text of text blocks (joined as Ollama joins them: without a separator)."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise BadRequest(f"'{param}' must be a string or an array of content blocks", param)
    texts: list[str] = []
    for block in value:
        if isinstance(block, dict) and block.get("type") == "text":
            if not isinstance(block.get("text"), str):
                raise BadRequest(f"'{param}': a text block's 'text' must be a string", param)
            texts.append(block["text"])
    return "".join(texts)


def _image(block: dict[str, Any], param: str) -> bytes:
    source = block.get("source")
    if not isinstance(source, dict):
        raise BadRequest("invalid image source", param)
    if source.get("type") != "base64":
        raise BadRequest(f"invalid image source type: {source.get('type')}. Only base64 images are supported.",
                         param)
    return fields.base64_bytes(source.get("data"), f"{param}.source.data")


def _messages(items: list[Any]) -> list[pb.Message]:
    """Anthropic messages as chat turns: tool results become tool turns (before the user's own text, as
    Ollama orders them), tool_use blocks the assistant's tool calls."""
    out: list[pb.Message] = []
    call_names: dict[str, str] = {}            # tool_use id → name, so a tool result names its function
    for i, item in enumerate(items):
        param = f"messages[{i}]"
        if not isinstance(item, dict):
            raise BadRequest(f"'{param}' must be an object", param)
        role = str(item.get("role", "")).lower()
        content = item.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(blocks, list):
            raise BadRequest(f"'{param}.content' must be a string or an array of content blocks", f"{param}.content")
        message, results = pb.Message(role=role), []
        for j, block in enumerate(blocks):
            where = f"{param}.content[{j}]"
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text":
                if not isinstance(block.get("text", ""), str):
                    raise BadRequest(f"'{where}.text' must be a string", where)
                message.content += block.get("text", "")
            elif kind == "image":
                message.images.append(_image(block, where))
            elif kind == "thinking":
                message.thinking = str(block.get("thinking", ""))
            elif kind == "tool_use":
                if not block.get("id"):
                    raise BadRequest("tool_use block missing required 'id' field", where)
                if not block.get("name"):
                    raise BadRequest("tool_use block missing required 'name' field", where)
                if not isinstance(block["name"], str):
                    raise BadRequest(f"'{where}.name' must be a string", where)
                arguments = block.get("input") or {}
                if not isinstance(arguments, dict):
                    raise BadRequest(f"'{where}.input' must be an object", where)
                call = pb.ToolCall(function=pb.ToolCallFunction(index=len(message.tool_calls), name=block["name"]))
                call.function.arguments.update(arguments)
                message.tool_calls.append(call)
                call_names[str(block["id"])] = block["name"]
            elif kind == "tool_result":
                call_id = str(block.get("tool_use_id", ""))
                result = pb.Message(role="tool", tool_call_id=call_id, tool_name=call_names.get(call_id, ""))
                inner = block.get("content", "")
                result.content = _text_of(inner, f"{where}.content")
                for k, part in enumerate(inner if isinstance(inner, list) else []):
                    if isinstance(part, dict) and part.get("type") == "image":
                        result.images.append(_image(part, f"{where}.content[{k}]"))
                results.append(result)
            # redacted_thinking, documents and other blocks carry nothing a local model can use: dropped.
        keep = bool(message.content or message.images or message.tool_calls or message.thinking)
        out += (results + [message] if keep else results) if role == "user" else ([message] if keep else []) + results
    return out


def _tools(items: list[Any] | None) -> list[pb.Tool]:
    tools = []
    for i, item in enumerate(items or []):
        if not isinstance(item, dict) or str(item.get("type", "custom")).startswith("web_search"):
            continue                                  # Anthropic's server tools (web search) are not local
        name = fields.string(item, "name", f"tools[{i}].name") or ""
        schema = fields.obj(item, "input_schema", f"tools[{i}].input_schema") or {}
        tool = pb.Tool(type="function", function=pb.ToolFunction(
            name=name, description=fields.string(item, "description", f"tools[{i}].description") or ""))
        tool.function.parameters.update(schema)
        tools.append(tool)
    return tools


def _tool_choice(value: Any) -> pb.ToolChoice | None:
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "auto":
        return pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_AUTO)
    if kind == "any":
        return pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_REQUIRED)
    if kind == "none":
        return pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_NONE)
    if kind == "tool" and isinstance(value.get("name"), str):
        return pb.ToolChoice(function=value["name"])
    raise BadRequest("tool_choice.type must be \"auto\", \"any\", \"tool\" (with a name) or \"none\"", "tool_choice")


def chat_request(body: dict[str, Any], *, counting: bool = False) -> pb.ChatRequest:
    """A Messages body as a ChatRequest (`counting`: for count_tokens, which has no max_tokens)."""
    model = fields.string(body, "model")
    if not model:
        raise BadRequest("model is required", "model")
    max_tokens = fields.integer(body, "max_tokens")
    if not counting and (max_tokens is None or max_tokens <= 0):
        raise BadRequest("max_tokens is required and must be positive", "max_tokens")
    items = fields.array(body, "messages")
    if not items:
        raise BadRequest("messages is required", "messages")
    req = pb.ChatRequest(model=model, stream=bool(fields.boolean(body, "stream")) and not counting,
                         tools=_tools(fields.array(body, "tools")))
    system = body.get("system")
    if system:
        req.messages.append(pb.Message(role="system", content=_text_of(system, "system")))
    req.messages.extend(_messages(items))
    options = req.options
    options.num_predict = 0 if counting else max_tokens or 0      # counting: the prompt only, nothing decoded
    for key, attr in (("temperature", "temperature"), ("top_p", "top_p")):
        if (value := fields.number(body, key)) is not None:
            setattr(options, attr, value)
    if (top_k := fields.integer(body, "top_k")) is not None:
        options.top_k = top_k
    stops = fields.array(body, "stop_sequences") or []
    if not all(isinstance(s, str) for s in stops):
        raise BadRequest("'stop_sequences' must be an array of strings", "stop_sequences")
    options.stop.extend(stops)
    if (choice := _tool_choice(body.get("tool_choice"))) is not None:
        req.tool_choice.CopyFrom(choice)
    output = fields.obj(body, "output_config") or {}
    fmt = fields.obj(output, "format", "output_config.format")
    if fmt is not None:
        if fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
            raise BadRequest("output_config.format must be {\"type\": \"json_schema\", \"schema\": {...}}",
                             "output_config.format")
        req.format.json_schema = json.dumps(fmt["schema"], separators=(",", ":"), ensure_ascii=False)
    thinking = fields.obj(body, "thinking") or {}
    effort = fields.string(output, "effort", "output_config.effort")
    if thinking.get("type") == "disabled":
        req.think.enabled = False
    elif effort:
        if effort not in _EFFORTS:
            raise BadRequest(f"output_config.effort must be one of {', '.join(_EFFORTS)}", "output_config.effort")
        req.think.level = enums.THINK_LEVELS[_EFFORTS[effort]]
    # "enabled" or "adaptive": thinking models think by default; one that cannot is answered without thinking,
    # as by Ollama (not refused).
    return req


def _estimate(body: dict[str, Any]) -> int:
    """Ollama's estimate of input tokens for message_start (the real count comes in message_delta)."""
    return max(1, len(json.dumps(body.get("messages", ""))) // 4)


# -- replies -------------------------------------------------------------------------------------------------------
def _stop_sequence(msg: pb.ChatResponse, asked: tuple[str, ...]) -> str | None:
    """The stop sequence that ended the reply, if the request asked for it (a model's own stop is its end)."""
    return msg.stop_sequence if msg.stop_sequence and msg.stop_sequence in asked else None


def _stop_reason(msg: pb.ChatResponse, tool_calls: bool, asked: tuple[str, ...]) -> str | None:
    if tool_calls and msg.done_reason != pb.DONE_REASON_LENGTH:      # a call the limit cut off: max_tokens
        return "tool_use"
    if _stop_sequence(msg, asked):
        return "stop_sequence"
    return {pb.DONE_REASON_STOP: "end_turn", pb.DONE_REASON_LENGTH: "max_tokens"}.get(msg.done_reason)


def _call_id() -> str:
    """A tool_use block's id, in Anthropic's form (clients log and sometimes check it)."""
    return f"toolu_{secrets.token_hex(12)}"


class MessagesFramer:
    """ChatResponses as a message object or as Anthropic's events (blocks opened and closed in order)."""

    content_type = http.EVENT_STREAM

    def __init__(self, input_estimate: int, stops: tuple[str, ...] = ()):
        self.id = f"msg_{secrets.token_hex(12)}"
        self.input_estimate = input_estimate
        self.stops = stops                        # the request's stop_sequences
        self.started = False
        self.index = 0
        self.open: str | None = None              # "thinking" or "text": the block being written
        self.tool_calls = False

    def single(self, msg: pb.ChatResponse) -> bool:
        return False

    def whole(self, msg: pb.ChatResponse) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if msg.message.thinking:
            content.append({"type": "thinking", "thinking": msg.message.thinking, "signature": ""})
        if msg.message.content:
            content.append({"type": "text", "text": msg.message.content})
        for call in msg.message.tool_calls:
            content.append({"type": "tool_use", "id": _call_id(), "name": call.function.name,
                            "input": protojson.struct_dict(call.function.arguments)})
        return {"id": self.id, "type": "message", "role": "assistant", "model": msg.model, "content": content,
                "stop_reason": _stop_reason(msg, bool(msg.message.tool_calls), self.stops),
                "stop_sequence": _stop_sequence(msg, self.stops),
                "usage": {"input_tokens": msg.prompt_eval_count, "output_tokens": msg.eval_count}}

    def _close(self) -> list[bytes]:
        if self.open is None:
            return []
        self.open = None
        self.index += 1
        return [http.sse_event("content_block_stop", {"type": "content_block_stop", "index": self.index - 1})]

    def _write(self, kind: str, text: str) -> list[bytes]:
        out = []
        if self.open != kind:
            out += self._close()
            self.open = kind
            block = {"type": kind, kind: ""} if kind == "text" else {"type": kind, kind: "", "signature": ""}
            out.append(http.sse_event("content_block_start", {"type": "content_block_start", "index": self.index,
                                                    "content_block": block}))
        out.append(http.sse_event("content_block_delta", {"type": "content_block_delta", "index": self.index,
                                                "delta": {"type": f"{kind}_delta", kind: text}}))
        return out

    def frames(self, msg: pb.ChatResponse) -> list[bytes]:
        out: list[bytes] = []
        if not self.started:
            self.started = True
            out.append(http.sse_event("message_start", {"type": "message_start", "message": {
                "id": self.id, "type": "message", "role": "assistant", "model": msg.model, "content": [],
                "stop_reason": None, "stop_sequence": None,
                "usage": {"input_tokens": self.input_estimate, "output_tokens": 0}}}))
            out.append(http.sse_event("ping", {"type": "ping"}))
        if msg.message.thinking:
            out += self._write("thinking", msg.message.thinking)
        if msg.message.content:
            out += self._write("text", msg.message.content)
        for call in msg.message.tool_calls:
            out += self._close()
            self.tool_calls = True
            out.append(http.sse_event("content_block_start", {"type": "content_block_start", "index": self.index,
                                                    "content_block": {"type": "tool_use", "id": _call_id(),
                                                                      "name": call.function.name, "input": {}}}))
            arguments = json.dumps(protojson.struct_dict(call.function.arguments), ensure_ascii=False)
            out.append(http.sse_event("content_block_delta", {"type": "content_block_delta", "index": self.index,
                                                    "delta": {"type": "input_json_delta", "partial_json": arguments}}))
            out.append(http.sse_event("content_block_stop", {"type": "content_block_stop", "index": self.index}))
            self.index += 1
        if msg.done:
            out += self._close()
            out.append(http.sse_event("message_delta", {"type": "message_delta", "delta": {
                "stop_reason": _stop_reason(msg, self.tool_calls, self.stops),
                "stop_sequence": _stop_sequence(msg, self.stops)},
                "usage": {"input_tokens": msg.prompt_eval_count, "output_tokens": msg.eval_count}}))
            out.append(http.sse_event("message_stop", {"type": "message_stop"}))
        return out

    def end(self) -> bytes:
        return b""

    def error(self, status: int, message: str) -> bytes:
        body = ANTHROPIC.error_body(status, message)
        body.pop("request_id")
        return http.sse_event("error", body)


def parse_messages(raw: bytes) -> tuple[pb.ChatRequest, int]:
    """A Messages body: the request, and the input tokens as estimated before the model counts them."""
    body = fields.object_body(raw)
    return chat_request(body), _estimate(body)


def parse_count(raw: bytes) -> pb.ChatRequest:
    return chat_request(fields.object_body(raw), counting=True)


def model_list(reply: mpb.ListModelsResponse) -> dict[str, Any]:
    """Anthropic's model list (for a client that sends anthropic-version)."""
    data = [model_info(m.name, m.modified_at) for m in reply.models]
    return {"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None}


def model_info(name: str, modified_at) -> dict[str, Any]:
    return {"type": "model", "id": name, "display_name": name, "created_at": protojson.timestamp(modified_at)}
