"""The gateway's OpenAPI 3.1 document (served at /openapi.json), for clients and fuzzers."""
from __future__ import annotations

from typing import Any

from common import enums

_STRINGS = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
_OPTIONS: dict[str, Any] = {name: _STRINGS if kind == "strings" else {"type": kind}
                            for name, kind in enums.OPTION_KINDS.items()}

_ERROR = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
_LOGPROB = {"type": "object", "properties": {
    "token": {"type": "string"}, "logprob": {"type": "number"},
    "bytes": {"type": "array", "items": {"type": "integer"}},
    "top_logprobs": {"type": "array", "items": {"type": "object"}}}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR}}}


_ERRORS = {"400": _error("Invalid request"), "401": _error("Missing or wrong bearer token"),
           "403": _error("Host or Origin not allowed"), "404": _error("Model not found"),
           "413": _error("Body too large"), "503": _error("Queue full, or shutting down"),
           "504": _error("Deadline exceeded")}
_KEEP_ALIVE = {"oneOf": [{"type": "number"}, {"type": "string"}]}
_THINK = {"oneOf": [{"type": "boolean"}, {"type": "string", "enum": list(enums.THINK_LEVELS)}]}
_FORMAT = {"oneOf": [{"type": "string", "enum": ["", "json"]}, {"type": "object"}]}
_SAMPLING = {"options": {"type": "object", "properties": _OPTIONS}, "keep_alive": _KEEP_ALIVE,
             "stream": {"type": "boolean"}, "format": _FORMAT, "think": _THINK, "truncate": {"type": "boolean"},
             "shift": {"type": "boolean"},
             "logprobs": {"type": "boolean"}, "top_logprobs": {"type": "integer", "minimum": 0, "maximum": 20}}
_METRICS = {k: {"type": "integer"} for k in ("total_duration", "load_duration", "prompt_eval_count",
                                              "prompt_eval_duration", "eval_count", "eval_duration")}
_DONE_REASON = {"type": "string", "enum": list(enums.DONE_REASONS)}
_TOOL_CALL = {"type": "object", "properties": {"function": {"type": "object", "properties": {
    "index": {"type": "integer"}, "name": {"type": "string"}, "arguments": {"type": "object"}}}}}
_MESSAGE = {"type": "object", "properties": {
    "role": {"type": "string"}, "content": {"type": "string"}, "thinking": {"type": "string"},
    "images": {"type": "array", "items": {"type": "string", "contentEncoding": "base64"}},
    "tool_calls": {"type": "array", "items": _TOOL_CALL}, "tool_name": {"type": "string"},
    "tool_call_id": {"type": "string"}}, "required": ["role"]}


def _body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "properties": properties, "required": required}}}}


def _post(summary: str, properties: dict[str, Any], required: list[str], reply: str | None,
          stream: bool = False) -> dict[str, Any]:
    content: dict[str, Any] = {} if reply is None else {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{reply}"}}}
    if stream:
        content["application/x-ndjson"] = content["application/json"]
    ok: dict[str, Any] = {"description": "A stream of chunks, or one object" if stream else "The reply"}
    if content:
        ok["content"] = content
    return {"post": {"summary": summary, "requestBody": _body(properties, required),
                     "responses": {"200": ok, **_ERRORS}}}


def _get(summary: str, reply: str) -> dict[str, Any]:
    return {"get": {"summary": summary, "responses": {"200": {"description": "The reply", "content": {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{reply}"}}}}}}}


_OBJECT = {"type": "object"}
_STRINGS = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}


def _foreign(summary: str) -> dict[str, Any]:
    """A route of another API (OpenAI's, Anthropic's): its body and replies are that API's, documented there."""
    return {"post": {"summary": summary, "externalDocs": {"url": "https://github.com/ollama/ollama/tree/main/docs"},
                     "requestBody": {"required": True, "content": {"application/json": {"schema": _OBJECT}}},
                     "responses": {"200": {"description": "That API's reply, or its server-sent events"}}}}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "gengate", "version": "0.1.0",
             "description": "Ollama's API (/api/generate, /api/chat, /api/embed, models), and the OpenAI and "
                            "Anthropic routes Ollama serves, over the gengate gRPC service."},
    "paths": {
        "/api/generate": _post("Generate a completion (NDJSON stream, or one object with stream:false)", {
            "model": {"type": "string"}, "prompt": {"type": "string"}, "suffix": {"type": "string"},
            "system": {"type": "string"}, "template": {"type": "string"},
            "context": {"type": "array", "items": {"type": "integer"}}, "raw": {"type": "boolean"},
            "images": {"type": "array", "items": {"type": "string", "contentEncoding": "base64"}},
            "width": {"type": "integer"}, "height": {"type": "integer"}, "steps": {"type": "integer"}, **_SAMPLING,
        }, ["model"], "GenerateResponse", stream=True),
        "/api/chat": _post("Chat (NDJSON stream, or one object with stream:false)", {
            "model": {"type": "string"}, "messages": {"type": "array", "items": _MESSAGE},
            "tools": {"type": "array", "items": {"type": "object", "properties": {
                "type": {"type": "string"}, "function": {"type": "object", "properties": {
                    "name": {"type": "string"}, "description": {"type": "string"}, "parameters": _OBJECT}}}}},
            **_SAMPLING,
        }, ["model"], "ChatResponse", stream=True),
        "/api/embed": _post("Embeddings of one or more inputs (L2-normalised)", {
            "model": {"type": "string"},
            "input": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
            "truncate": {"type": "boolean"}, "dimensions": {"type": "integer"}, "keep_alive": _KEEP_ALIVE,
            "options": {"type": "object", "properties": _OPTIONS},
        }, ["model"], "EmbedResponse"),
        "/api/embeddings": _post("Legacy: the embedding of one prompt", {
            "model": {"type": "string"}, "prompt": {"type": "string"}, "keep_alive": _KEEP_ALIVE,
            "options": {"type": "object", "properties": _OPTIONS},
        }, ["model"], "EmbeddingsResponse"),
        "/api/show": _post("A model's details, template, parameters and capabilities", {
            "model": {"type": "string"}, "verbose": {"type": "boolean"}}, ["model"], "ShowResponse"),
        "/api/copy": _post("Copy a model under another name", {
            "source": {"type": "string"}, "destination": {"type": "string"}}, ["source", "destination"], None),
        "/api/delete": {"delete": {**_post("Delete a model", {"model": {"type": "string"}}, ["model"], None)["post"]}},
        "/api/tags": _get("Installed models", "ModelList"),
        "/api/ps": _get("Loaded models", "ModelList"),
        "/api/version": _get("The Ollama API version served", "Version"),
        "/api/pull": _post("Install a model of gengate's catalog (NDJSON progress, or one object)", {
            "model": {"type": "string"}, "insecure": {"type": "boolean"}, "stream": {"type": "boolean"}},
            ["model"], "Progress", stream=True),
        "/api/push": _post("Not implemented: gengate has no registry (501)", {"model": {"type": "string"}},
                           ["model"], None),
        "/api/create": _post("Create a model from an installed one or uploaded files (NDJSON progress)", {
            "model": {"type": "string"}, "from": {"type": "string"},
            "files": {"type": "object", "additionalProperties": {"type": "string"}},
            "adapters": {"type": "object", "additionalProperties": {"type": "string"}},
            "template": {"type": "string"}, "system": {"type": "string"}, "license": _STRINGS,
            "parameters": _OBJECT, "messages": {"type": "array", "items": _MESSAGE},
            "quantize": {"type": "string"}, "stream": {"type": "boolean"}}, ["model"], "Progress", stream=True),
        "/api/blobs/{digest}": {
            "parameters": [{"name": "digest", "in": "path", "required": True,
                            "schema": {"type": "string", "pattern": "^sha256:[0-9a-f]{64}$"}}],
            "head": {"summary": "Whether the store has this blob", "responses": {
                "200": {"description": "It has"}, "404": {"description": "It has not"}}},
            "post": {"summary": "Upload a file, checked against its digest", "requestBody": {
                "required": True, "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                                      "format": "binary"}}}},
                "responses": {"201": {"description": "Stored"}, **_ERRORS}}},
        "/v1/chat/completions": _foreign("OpenAI's chat completions (SSE when streaming)"),
        "/v1/completions": _foreign("OpenAI's legacy completions (SSE when streaming)"),
        "/v1/embeddings": _foreign("OpenAI's embeddings"),
        "/v1/images/generations": _foreign("OpenAI's image generation (one image, b64_json)"),
        "/v1/responses": _foreign("OpenAI's Responses API, stateless (SSE when streaming)"),
        "/v1/messages": _foreign("Anthropic's Messages API (SSE when streaming)"),
        "/v1/messages/count_tokens": _foreign("Anthropic's token count of a Messages request"),
        "/v1/models": {"get": {"summary": "Models, in OpenAI's shape (Anthropic's with an anthropic-version header)",
                               "responses": {"200": {"description": "The list"}}}},
    },
    "components": {"schemas": {
        "GenerateResponse": {"type": "object", "properties": {
            "model": {"type": "string"}, "created_at": {"type": "string"}, "response": {"type": "string"},
            "thinking": {"type": "string"}, "done": {"type": "boolean"}, "done_reason": _DONE_REASON,
            "context": {"type": "array", "items": {"type": "integer"}}, **_METRICS,
            "logprobs": {"type": "array", "items": _LOGPROB},
            "image": {"type": "string", "contentEncoding": "base64"}, "completed": {"type": "integer"},
            "total": {"type": "integer"},
        }, "required": ["model", "created_at", "response", "done"]},
        "ChatResponse": {"type": "object", "properties": {
            "model": {"type": "string"}, "created_at": {"type": "string"}, "message": _MESSAGE,
            "done": {"type": "boolean"}, "done_reason": _DONE_REASON, **_METRICS,
            "logprobs": {"type": "array", "items": _LOGPROB},
        }, "required": ["model", "created_at", "message", "done"]},
        "EmbedResponse": {"type": "object", "properties": {
            "model": {"type": "string"}, "embeddings": {"type": "array", "items": {"type": "array", "items": {
                "type": "number"}}},
            "total_duration": {"type": "integer"}, "load_duration": {"type": "integer"},
            "prompt_eval_count": {"type": "integer"}}, "required": ["model", "embeddings"]},
        "EmbeddingsResponse": {"type": "object", "properties": {
            "embedding": {"type": "array", "items": {"type": "number"}}}, "required": ["embedding"]},
        "ShowResponse": {"type": "object", "properties": {
            "modelfile": {"type": "string"}, "template": {"type": "string"}, "details": _OBJECT,
            "model_info": _OBJECT, "capabilities": {"type": "array", "items": {"type": "string"}}}},
        "ModelList": {"type": "object", "properties": {"models": {"type": "array", "items": _OBJECT}},
                      "required": ["models"]},
        "Version": {"type": "object", "properties": {"version": {"type": "string"},
                                                     "gengate_version": {"type": "string"}},
                    "required": ["version"]},
        "Progress": {"type": "object", "properties": {
            "status": {"type": "string"}, "digest": {"type": "string"}, "total": {"type": "integer"},
            "completed": {"type": "integer"}}, "required": ["status"]},
    }},
}
