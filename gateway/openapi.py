"""The gateway's OpenAPI 3.1 document (served at /openapi.json), for clients and fuzzers."""
from __future__ import annotations

from typing import Any

_OPTIONS = {name: {"type": "integer"} for name in (
    "num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread", "draft_num_predict", "num_keep", "seed",
    "num_predict", "top_k", "repeat_last_n")}
_OPTIONS.update({name: {"type": "number"} for name in (
    "top_p", "min_p", "typical_p", "temperature", "repeat_penalty", "presence_penalty", "frequency_penalty")})
_OPTIONS.update({"use_mmap": {"type": "boolean"},
                 "stop": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}})

_ERROR = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
_LOGPROB = {"type": "object", "properties": {
    "token": {"type": "string"}, "logprob": {"type": "number"}, "bytes": {"type": "array", "items": {"type": "integer"}},
    "top_logprobs": {"type": "array", "items": {"type": "object"}}}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR}}}


DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "gengate", "version": "0.1.0",
             "description": "Ollama's /api/generate, served by the gengate gRPC service."},
    "paths": {"/api/generate": {"post": {
        "summary": "Generate a completion (NDJSON stream, or one object with stream:false)",
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object",
            "properties": {
                "model": {"type": "string"}, "prompt": {"type": "string"}, "suffix": {"type": "string"},
                "system": {"type": "string"}, "template": {"type": "string"},
                "context": {"type": "array", "items": {"type": "integer"}},
                "stream": {"type": "boolean"}, "raw": {"type": "boolean"},
                "format": {"oneOf": [{"type": "string", "enum": ["", "json"]}, {"type": "object"}]},
                "images": {"type": "array", "items": {"type": "string", "contentEncoding": "base64"}},
                "options": {"type": "object", "properties": _OPTIONS},
                "keep_alive": {"oneOf": [{"type": "number"}, {"type": "string"}]},
                "think": {"oneOf": [{"type": "boolean"}, {"type": "string", "enum": ["low", "medium", "high", "max"]}]},
                "truncate": {"type": "boolean"}, "shift": {"type": "boolean"},
                "logprobs": {"type": "boolean"}, "top_logprobs": {"type": "integer", "minimum": 0, "maximum": 20},
                "width": {"type": "integer"}, "height": {"type": "integer"}, "steps": {"type": "integer"},
            },
            "required": ["model"],
        }}}},
        "responses": {
            "200": {"description": "A stream of chunks, or one object",
                    "content": {"application/x-ndjson": {"schema": {"$ref": "#/components/schemas/GenerateResponse"}},
                                "application/json": {"schema": {"$ref": "#/components/schemas/GenerateResponse"}}}},
            "400": _error("Invalid request"), "401": _error("Missing or wrong bearer token"),
            "403": _error("Host or Origin not allowed"), "404": _error("Model not found"),
            "413": _error("Body too large"), "503": _error("Queue full, or shutting down"),
            "504": _error("Deadline exceeded"),
        },
    }}},
    "components": {"schemas": {"GenerateResponse": {"type": "object", "properties": {
        "model": {"type": "string"}, "created_at": {"type": "string"}, "response": {"type": "string"},
        "thinking": {"type": "string"}, "done": {"type": "boolean"},
        "done_reason": {"type": "string", "enum": ["stop", "length", "load", "unload"]},
        "context": {"type": "array", "items": {"type": "integer"}},
        **{k: {"type": "integer"} for k in ("total_duration", "load_duration", "prompt_eval_count",
                                             "prompt_eval_duration", "eval_count", "eval_duration")},
        "logprobs": {"type": "array", "items": _LOGPROB},
    }, "required": ["model", "created_at", "response", "done"]}}},
}
