"""OpenAI's Responses API (/v1/responses, as Ollama serves it since v0.13.3: stateless) over the Chat RPC.

Requests: `model`, `input` (a string, or items: messages with input_text/output_text/input_image parts,
function_call, function_call_output, reasoning), `instructions`, `max_output_tokens`, `temperature` (1 unless
given, as Ollama), `top_p`, `tools` (function tools), `tool_choice` (enforced by the service), `text.format`
(json_schema constrains decoding; json_object gives any JSON), `reasoning.effort` (as `think`), `stream`.
`previous_response_id` is refused: nothing is stored, so the whole conversation goes in `input`.

Replies: a `response` object, or its server-sent events: response.created, response.in_progress; per output
item (reasoning, message, function_call) output_item.added ... output_item.done with the deltas between
(reasoning_summary_text, content_part and output_text, function_call_arguments); response.completed. A
message item is closed before function calls start. An error after the first byte is response.failed.
"""
from __future__ import annotations

import json
import secrets
from typing import Any

from common import enums
from gateway import fields, http, jsonbody, protojson
from gateway.errors import BadRequest
from gengate.v1 import generate_pb2 as pb

_EFFORTS = {"none": None, "minimal": "low", "low": "low", "medium": "medium", "high": "high", "max": "max",
            "xhigh": "max", "ultra": "max"}
STATELESS = ("previous_response_id is not supported: gengate's Responses API is stateless (nothing is stored); "
             "send the whole conversation in `input`")


# -- requests ----------------------------------------------------------------------------------------------------
def _content(value: Any, param: str, message: pb.Message) -> None:
    if isinstance(value, str):
        message.content += value
        return
    if not isinstance(value, list):
        raise BadRequest(f"'{param}' must be a string or an array of content parts", param)
    for j, part in enumerate(value):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text"):
            message.content += str(part.get("text", ""))
        elif kind == "input_image":
            url = part.get("image_url")
            if isinstance(url, str) and url.startswith(("http://", "https://")):
                raise BadRequest("image URLs are not supported, please use base64 encoded data instead",
                                 f"{param}[{j}]")
            if url is not None:
                message.images.append(fields.data_url(url, f"{param}[{j}]"))
        elif kind == "input_file":
            raise BadRequest("file inputs are not supported", f"{param}[{j}]")
        else:
            raise BadRequest(f"{param}[{j}]: unknown content type: {kind}", f"{param}[{j}]")


def _input(value: Any) -> list[pb.Message]:
    if isinstance(value, str):
        return [pb.Message(role="user", content=value)]
    if not isinstance(value, list):
        raise BadRequest("input must be a string or an array of items", "input")
    out: list[pb.Message] = []
    thinking = ""
    call_names: dict[str, str] = {}            # call_id → name, so a function's output names its function
    for i, item in enumerate(value):
        param = f"input[{i}]"
        if not isinstance(item, dict):
            raise BadRequest(f"'{param}' must be an object", param)
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            message = pb.Message(role=str(item.get("role", "user")))
            _content(item.get("content", ""), f"{param}.content", message)
            if message.role == "assistant" and thinking:
                message.thinking, thinking = thinking, ""
            out.append(message)
        elif kind == "function_call":
            try:
                arguments = jsonbody.loads(item.get("arguments") or "{}", f"{param}.arguments")
            except (TypeError, ValueError) as exc:
                raise BadRequest(f"failed to parse function call arguments: {exc}", f"{param}.arguments") from None
            if not isinstance(arguments, dict):
                raise BadRequest("function call arguments must be a JSON object", f"{param}.arguments")
            if not out or out[-1].role != "assistant":
                out.append(pb.Message(role="assistant"))
            if thinking:                     # the reasoning that led to the call
                out[-1].thinking, thinking = thinking, ""
            call = pb.ToolCall(function=pb.ToolCallFunction(index=len(out[-1].tool_calls),
                                                            name=str(item.get("name", ""))))
            call.function.arguments.update(arguments)
            out[-1].tool_calls.append(call)
            call_names[str(item.get("call_id", ""))] = call.function.name
        elif kind == "function_call_output":
            call_id = str(item.get("call_id", ""))
            message = pb.Message(role="tool", tool_call_id=call_id, tool_name=call_names.get(call_id, ""))
            _content(item.get("output", ""), f"{param}.output", message)
            out.append(message)
        elif kind == "reasoning":
            summary = item.get("summary") or []
            thinking += str(item.get("encrypted_content") or "".join(
                str(s.get("text") or "") for s in summary if isinstance(s, dict)))
        elif kind is None:
            raise BadRequest("input item missing required 'type' field", param)
        else:
            raise BadRequest(f'{param}: unknown input item type: "{kind}"', param)
    if thinking:
        out.append(pb.Message(role="assistant", thinking=thinking))
    return out


def _tools(items: list[Any] | None) -> list[pb.Tool]:
    tools = []
    for i, item in enumerate(items or []):
        if not isinstance(item, dict) or item.get("type") != "function":
            continue                                   # built-in tools (web search, ...) are not local
        tool = pb.Tool(type="function", function=pb.ToolFunction(
            name=fields.string(item, "name", f"tools[{i}].name") or "",
            description=fields.string(item, "description", f"tools[{i}].description") or ""))
        tool.function.parameters.update(fields.obj(item, "parameters", f"tools[{i}].parameters") or {})
        tools.append(tool)
    return tools


def chat_request(body: dict[str, Any]) -> pb.ChatRequest:
    if body.get("previous_response_id"):
        raise BadRequest(STATELESS, "previous_response_id")
    req = pb.ChatRequest(model=fields.string(body, "model") or "", stream=bool(fields.boolean(body, "stream")),
                         tools=_tools(fields.array(body, "tools")))
    if instructions := fields.string(body, "instructions"):
        req.messages.append(pb.Message(role="system", content=instructions))
    req.messages.extend(_input(body.get("input", "")))
    req.options.temperature = 1.0                      # OpenAI's default, as Ollama sets it
    if (temperature := fields.number(body, "temperature")) is not None:
        req.options.temperature = temperature
    if (top_p := fields.number(body, "top_p")) is not None:
        req.options.top_p = top_p
    if (limit := fields.integer(body, "max_output_tokens")) is not None:
        req.options.num_predict = limit
    text = fields.obj(body, "text") or {}
    fmt = fields.obj(text, "format", "text.format") or {}
    if fmt.get("type") == "json_schema":
        schema = fmt.get("schema")
        req.format.json_schema = json.dumps(schema if schema is not None else {"type": "object"},
                                            separators=(",", ":"), ensure_ascii=False)
    elif fmt.get("type") == "json_object":
        req.format.json = True
    reasoning = fields.obj(body, "reasoning") or {}
    effort = fields.string(reasoning, "effort", "reasoning.effort")
    if effort:
        if effort not in _EFFORTS:
            raise BadRequest(f'invalid reasoning value: "{effort}" (must be "minimal", "low", "medium", "high", '
                             '"xhigh", "ultra", "max", or "none")', "reasoning.effort")
        level = _EFFORTS[effort]
        if level is None:
            req.think.enabled = False
        else:
            req.think.level = enums.THINK_LEVELS[level]
    if (choice := fields.tool_choice(body.get("tool_choice"), "tool_choice")) is not None:
        req.tool_choice.CopyFrom(choice)
    return req


# -- replies -------------------------------------------------------------------------------------------------------
class ResponsesFramer:
    """ChatResponses as a response object or as the Responses API's events."""

    content_type = http.EVENT_STREAM

    def __init__(self, body: dict[str, Any]):
        self.id = f"resp_{secrets.token_hex(12)}"
        self.body = body
        self.sequence = 0
        self.output: list[dict[str, Any]] = []
        self.reasoning: dict[str, Any] | None = None          # the open items
        self.message: dict[str, Any] | None = None
        self.created_at = 0
        self.model = ""

    # -- the response object --
    def _response(self, status: str, msg: pb.ChatResponse | None = None, **extra: Any) -> dict[str, Any]:
        tools = [{"type": "function", "name": t.get("name"), "description": t.get("description"),
                  "parameters": t.get("parameters"), "strict": t.get("strict")}
                 for t in self.body.get("tools") or [] if isinstance(t, dict) and t.get("type") == "function"]
        fmt = ((self.body.get("text") or {}).get("format") or {"type": "text"})
        incomplete = msg is not None and msg.done_reason == pb.DONE_REASON_LENGTH and status == "completed"
        out = {"id": self.id, "object": "response", "created_at": self.created_at,
               "status": "incomplete" if incomplete else status,
               "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
               "model": self.model, "previous_response_id": None,
               "instructions": self.body.get("instructions"), "output": self.output if msg is not None else [],
               "error": None, "tools": tools, "tool_choice": self.body.get("tool_choice", "auto"),
               "truncation": "disabled", "parallel_tool_calls": True, "text": {"format": fmt},
               "temperature": self.body.get("temperature", 1.0), "top_p": self.body.get("top_p", 1.0),
               "max_output_tokens": self.body.get("max_output_tokens"), "reasoning": self.body.get("reasoning"),
               "store": False, "background": False, "metadata": self.body.get("metadata") or {},
               "usage": None, **extra}
        if msg is not None and msg.done:
            out["usage"] = {"input_tokens": msg.prompt_eval_count, "input_tokens_details": {"cached_tokens": 0},
                            "output_tokens": msg.eval_count, "output_tokens_details": {"reasoning_tokens": 0},
                            "total_tokens": msg.prompt_eval_count + msg.eval_count}
        return out

    def _start(self, msg: pb.ChatResponse) -> None:
        self.created_at, self.model = msg.created_at.seconds, msg.model

    @staticmethod
    def _call(call: pb.ToolCall, item_id: str) -> dict[str, Any]:
        """A function_call item; one the token limit cut off is incomplete, its arguments as far as written."""
        return {"id": item_id, "type": "function_call",
                "status": "incomplete" if call.function.incomplete else "completed",
                "call_id": f"call_{secrets.token_hex(4)}", "name": call.function.name,
                "arguments": call.function.arguments_json if call.function.incomplete
                else json.dumps(protojson.struct_dict(call.function.arguments), ensure_ascii=False)}

    def single(self, msg: pb.ChatResponse) -> bool:
        return False

    def whole(self, msg: pb.ChatResponse) -> dict[str, Any]:
        self._start(msg)
        if msg.message.thinking:
            self.output.append({"id": f"rs_{self.id}", "type": "reasoning", "summary": [
                {"type": "summary_text", "text": msg.message.thinking}], "encrypted_content": msg.message.thinking})
        if msg.message.content or not msg.message.tool_calls:      # the text first, as the stream sends it
            self.output.append({"id": f"msg_{secrets.token_hex(12)}", "type": "message", "status": "completed",
                                "role": "assistant", "content": [{"type": "output_text", "text": msg.message.content,
                                                                  "annotations": [], "logprobs": []}]})
        for i, call in enumerate(msg.message.tool_calls):
            self.output.append(self._call(call, f"fc_{self.id}_{i}"))
        return self._response("completed", msg, completed_at=msg.created_at.seconds)

    # -- events --
    def _event(self, kind: str, **data: Any) -> bytes:
        data = {"type": kind, "sequence_number": self.sequence, **data}
        self.sequence += 1
        return http.sse_event(kind, data)

    def _close_reasoning(self) -> list[bytes]:
        item, self.reasoning = self.reasoning, None
        if item is None:
            return []
        index, text = self.output.index(item), item["summary"][0]["text"]
        return [self._event("response.reasoning_summary_text.done", item_id=item["id"], output_index=index,
                            summary_index=0, text=text),
                self._event("response.output_item.done", item=item, output_index=index)]

    def _close_message(self) -> list[bytes]:
        item, self.message = self.message, None
        if item is None:
            return []
        index, part = self.output.index(item), item["content"][0]
        item["status"] = "completed"
        return [self._event("response.output_text.done", item_id=item["id"], output_index=index, content_index=0,
                            text=part["text"], logprobs=[]),
                self._event("response.content_part.done", item_id=item["id"], output_index=index, content_index=0,
                            part=part),
                self._event("response.output_item.done", item=item, output_index=index)]

    def frames(self, msg: pb.ChatResponse) -> list[bytes]:
        out: list[bytes] = []
        if self.sequence == 0:
            self._start(msg)
            out.append(self._event("response.created", response=self._response("in_progress")))
            out.append(self._event("response.in_progress", response=self._response("in_progress")))
        if msg.message.thinking:
            if self.reasoning is None:
                self.reasoning = {"id": f"rs_{secrets.token_hex(12)}", "type": "reasoning",
                                  "summary": [{"type": "summary_text", "text": ""}], "encrypted_content": ""}
                self.output.append(self.reasoning)
                out.append(self._event("response.output_item.added", item={**self.reasoning, "summary": []},
                                       output_index=len(self.output) - 1))
            self.reasoning["summary"][0]["text"] += msg.message.thinking
            self.reasoning["encrypted_content"] += msg.message.thinking
            out.append(self._event("response.reasoning_summary_text.delta", item_id=self.reasoning["id"],
                                   output_index=self.output.index(self.reasoning), summary_index=0,
                                   delta=msg.message.thinking))
        if msg.message.content:
            out += self._close_reasoning()
            if self.message is None:
                self.message = {"id": f"msg_{secrets.token_hex(12)}", "type": "message", "status": "in_progress",
                                "role": "assistant", "content": [{"type": "output_text", "text": "",
                                                                  "annotations": [], "logprobs": []}]}
                self.output.append(self.message)
                index = len(self.output) - 1
                out.append(self._event("response.output_item.added", item={**self.message, "content": []},
                                       output_index=index))
                out.append(self._event("response.content_part.added", item_id=self.message["id"],
                                       output_index=index, content_index=0,
                                       part={"type": "output_text", "text": "", "annotations": [], "logprobs": []}))
            self.message["content"][0]["text"] += msg.message.content
            out.append(self._event("response.output_text.delta", item_id=self.message["id"],
                                   output_index=self.output.index(self.message), content_index=0,
                                   delta=msg.message.content, logprobs=[]))
        if msg.message.tool_calls:
            out += self._close_reasoning() + self._close_message()
            for call in msg.message.tool_calls:
                item = self._call(call, f"fc_{secrets.token_hex(12)}")
                self.output.append(item)
                index = len(self.output) - 1
                out.append(self._event("response.output_item.added", output_index=index,
                                       item={**item, "status": "in_progress", "arguments": ""}))
                out.append(self._event("response.function_call_arguments.delta", item_id=item["id"],
                                       output_index=index, delta=item["arguments"]))
                out.append(self._event("response.function_call_arguments.done", item_id=item["id"],
                                       output_index=index, name=item["name"], arguments=item["arguments"]))
                out.append(self._event("response.output_item.done", item=item, output_index=index))
        if msg.done:
            out += self._close_reasoning() + self._close_message()
            out.append(self._event("response.completed",
                                   response=self._response("completed", msg, completed_at=msg.created_at.seconds)))
        return out

    def end(self) -> bytes:
        return b""

    def error(self, status: int, message: str) -> bytes:
        code = "rate_limit_exceeded" if status == 429 else "server_error" if status >= 500 else "invalid_request"
        return self._event("response.failed", response={**self._response("failed"), "output": self.output,
                                                        "error": {"code": code, "message": message}})


def parse(raw: bytes) -> tuple[pb.ChatRequest, dict[str, Any]]:
    """A Responses body: the request, and the body (the response object echoes its fields)."""
    body = fields.object_body(raw)
    return chat_request(body), body
