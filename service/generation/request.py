"""Validation of a GenerateRequest, in Ollama's processing order, and option resolution.

Everything here is pure: it checks fields and turns them into engine settings. Each
failure is a GenerateError with Ollama's message (and the offending field).
"""
from __future__ import annotations

import math
import os
import random
from typing import Any

from common import enums, golang
from gengate.v1 import generate_pb2 as pb
from service.engines.base import LoadOptions, Sampling
from service.errors import invalid
from service.generation import grammar

_LOAD_FIELDS = ("num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread")
_SAMPLING_FIELDS = ("temperature", "top_k", "top_p", "min_p", "typical_p", "repeat_last_n", "repeat_penalty",
                    "presence_penalty", "frequency_penalty", "num_predict", "draft_num_predict")


# The requests the pipeline takes: all of them, and those that generate (sample) text.
Request = pb.GenerateRequest | pb.ChatRequest | pb.EmbedRequest
Sampled = pb.GenerateRequest | pb.ChatRequest

MAX_STOP_SEQUENCES = 32
MAX_STOP_LENGTH = 1024
# Option ranges (Ollama does not check them; a clear 400 naming the option beats undefined sampling).
_RANGES = {"temperature": (0, None), "top_p": (0, 1), "min_p": (0, 1), "typical_p": (0, 1), "top_k": (0, None),
           "repeat_last_n": (-1, None), "repeat_penalty": (0, None), "num_thread": (0, None), "num_gpu": (-1, None),
           "main_gpu": (0, None), "draft_num_predict": (0, None)}


def check_fields(req: Request, max_text_bytes: int, texts: dict[str, str]) -> None:
    """Checks that need no model (Ollama checks top_logprobs before the model name).

    `texts` are the request's free-text fields by name, each capped at max_text_bytes."""
    if not isinstance(req, pb.EmbedRequest) and not 0 <= req.top_logprobs <= 20:
        raise invalid("top_logprobs must be between 0 and 20", "top_logprobs")
    for name, text in texts.items():
        size = len(text.encode("utf-8"))
        if size > max_text_bytes:
            raise invalid(f"{name} is too long: {size} bytes (the limit is {max_text_bytes})", name)
    for descriptor, value in req.options.ListFields():
        if descriptor.type in (descriptor.TYPE_FLOAT, descriptor.TYPE_DOUBLE) and not math.isfinite(value):
            raise invalid(f'option "{descriptor.name}" must be a finite number', f"options.{descriptor.name}")
    for field, (low, high) in _RANGES.items():
        if req.options.HasField(field):
            value = getattr(req.options, field)
            if value < low or (high is not None and value > high):
                bound = f"between {low} and {high}" if high is not None else f"at least {low}"
                raise invalid(f'option "{field}" must be {bound}', f"options.{field}")
    if len(req.options.stop) > MAX_STOP_SEQUENCES:
        raise invalid(f'option "stop" allows at most {MAX_STOP_SEQUENCES} sequences', "options.stop")
    if any(len(s) > MAX_STOP_LENGTH for s in req.options.stop):
        raise invalid(f'option "stop" allows sequences of at most {MAX_STOP_LENGTH} characters', "options.stop")
    if isinstance(req, pb.GenerateRequest):
        for field in ("width", "height"):
            if req.HasField(field) and getattr(req, field) > 4096:
                raise invalid("width and height must be <= 4096", field)      # Ollama's words
            if req.HasField(field) and getattr(req, field) < 0:
                raise invalid(f"{field} must be between 0 and 4096 (0: the model's default)", field)
        if req.HasField("steps") and req.steps < 0:
            raise invalid("steps must be at least 0 (0: the model's default)", "steps")
    if not isinstance(req, pb.EmbedRequest) and req.HasField("think") and req.think.WhichOneof("value") == "level" \
            and req.think.level not in enums.THINK_LEVEL_NAMES:
        level = req.think.level
        shown = pb.ThinkLevel.Name(level) if level in pb.ThinkLevel.values() else level
        raise invalid(f'invalid think value: "{shown}" (must be "high", "medium", "low", "max", true, or false)',
                      "think")


def keep_alive_ns(req: Request) -> int | None:
    if not req.HasField("keep_alive"):
        return None
    return req.keep_alive.seconds * 1_000_000_000 + req.keep_alive.nanos


def think(req: Sampled) -> tuple[bool | None, str]:
    """(enabled, level): enabled is None when the request does not say."""
    if not req.HasField("think"):
        return None, ""
    if req.think.WhichOneof("value") == "level":
        return True, enums.THINK_LEVEL_NAMES[req.think.level]
    return req.think.enabled, ("medium" if req.think.enabled else "")


def _merged(options: pb.Options | None, parameters: dict[str, Any]) -> dict[str, Any]:
    """Model defaults (Modelfile PARAMETERs) overridden by a request's options."""
    values = dict(parameters)
    for field, value in options.ListFields() if options is not None else ():
        values[field.name] = list(value) if field.name == "stop" else value
    return values


def load_options(options: pb.Options | None, parameters: dict[str, Any], *, default_ctx: int, n_ctx_train: int,
                 default_threads: int) -> LoadOptions:
    """What a model is loaded with for a request's `options` (None: its defaults)."""
    values = _merged(options, parameters)
    num_ctx = max(4, int(values.get("num_ctx", default_ctx)))
    if n_ctx_train > 0:
        num_ctx = min(num_ctx, n_ctx_train)
    return LoadOptions(
        num_ctx=num_ctx,
        num_batch=max(1, min(int(values.get("num_batch", 512)), num_ctx)),
        num_gpu=int(values.get("num_gpu", -1)),
        main_gpu=int(values.get("main_gpu", 0)),
        use_mmap=bool(values.get("use_mmap", True)),
        num_thread=min(int(values.get("num_thread", 0)) or default_threads, os.cpu_count() or 1),
    )


def json_format(req: Sampled) -> str | None:
    """The output constraint: None, "json", or a JSON Schema object as text."""
    if not req.HasField("format"):
        return None
    kind = req.format.WhichOneof("kind")
    if kind == "json":
        return "json" if req.format.json else None
    if kind == "json_schema":
        grammar.check_schema(req.format.json_schema)      # a JSON object within the limits, or a 400
        return req.format.json_schema
    return None


def sampling(req: Sampled, parameters: dict[str, Any], grammar_text: str | None = None) -> Sampling:
    values = _merged(req.options, parameters)
    seed = int(values.get("seed", -1))
    if seed < 0:
        seed = random.randrange(2**31)
    stop = values.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    kwargs = {k: values[k] for k in _SAMPLING_FIELDS if k in values}
    return Sampling(seed=seed, stop=tuple(stop), grammar=grammar_text, logprobs=req.logprobs,
                    top_logprobs=req.top_logprobs if req.logprobs else 0, num_keep=int(values.get("num_keep", 4)),
                    shift=req.shift if req.HasField("shift") else True, **kwargs)


def tool_choice(req: pb.ChatRequest) -> tuple[str, str | None]:
    """("auto" | "none" | "required", the one function a call must be of, if named); checked against the tools."""
    if not req.HasField("tool_choice"):
        return "auto", None
    names_offered = {t.function.name for t in req.tools}
    name: str | None = None
    if req.tool_choice.WhichOneof("choice") == "function":
        name = req.tool_choice.function
        if name not in names_offered:
            raise invalid(f"tool_choice names {golang.quote(name)}, which is not one of the tools", "tool_choice")
        mode = "required"
    else:
        mode = {pb.TOOL_CHOICE_MODE_NONE: "none",
                pb.TOOL_CHOICE_MODE_REQUIRED: "required"}.get(req.tool_choice.mode, "auto")
    if mode == "required" and not req.tools:
        raise invalid("tool_choice requires a tool call, but no tools were given", "tool_choice")
    if mode == "required" and req.HasField("format"):
        raise invalid("format cannot be combined with a required tool call: the reply is the call", "tool_choice")
    return mode, name
