"""The Generate pipeline, in Ollama's processing order (spec §4.1).

check fields → parse the model name → look it up → unload? → raw/capability checks →
lease the model (load) → load-only reply? → render the prompt → debug reply? →
tokenize and fit the context → stream the engine's pieces as GenerateResponses.
Validation lives in request.py, prompts in prompt.py, decoding in the engine; this
module wires them together and frames the protobuf replies.
"""
from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, AsyncIterator

from google.protobuf import duration_pb2, timestamp_pb2

from gengate.v1 import generate_pb2 as pb
from service import prompt as prompts
from service.admission import Admission
from service import request as checks
from service.engine import Finish, Piece, TokenLogprob
from service.errors import GenerateError, Kind, invalid
from service.metrics import Metrics
from service.pool import Lease, ModelPool
from service.settings import ServiceSettings
from service.store import ModelEntry, ModelStore
from service.model import Model
from service.thinking import ThinkingParser

log = logging.getLogger(__name__)

DONE_REASONS = {"stop": pb.DONE_REASON_STOP, "length": pb.DONE_REASON_LENGTH}
CONTEXT_EXCEEDED = "the input length exceeds the context length"
PROMPT_TOO_LONG = ("the prompt is longer than the context length currently available to the model; shorten the "
                   "prompt, adjust the context length in settings, or use a model with a longer context length")


def _duration(ns: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


def _logprobs(entries: list[TokenLogprob]) -> list[pb.Logprob]:
    return [pb.Logprob(token=e.token, logprob=e.logprob, bytes=e.bytes,
                       top_logprobs=[pb.TopLogprob(token=t.token, logprob=t.logprob, bytes=t.bytes) for t in e.top])
            for e in entries]


class Generation:
    """Runs Generate requests against the model store and the loaded-model pool."""

    def __init__(self, settings: ServiceSettings, store: ModelStore, pool: ModelPool, admission: Admission,
                 metrics: Metrics):
        self._settings = settings
        self._store = store
        self._pool = pool
        self._admission = admission
        self._metrics = metrics

    def _reply(self, req: pb.GenerateRequest, **fields: Any) -> pb.GenerateResponse:
        created = timestamp_pb2.Timestamp()
        created.GetCurrentTime()
        return pb.GenerateResponse(model=req.model, created_at=created, **fields)

    def lookup(self, model: str) -> Model:
        name = checks.parse_model(model)
        entry = self._store.get(name)
        if entry is None or not entry.path.exists():
            raise GenerateError(Kind.MODEL_NOT_FOUND, f"model '{model}' not found", "model")
        return Model(entry, self._store.metadata(entry))

    async def run(self, req: pb.GenerateRequest) -> AsyncIterator[pb.GenerateResponse]:
        start = time.perf_counter_ns()
        checks.check_fields(req, self._settings.max_prompt_bytes)
        model = self.lookup(req.model)
        keep_alive = checks.keep_alive_ns(req)
        if not req.prompt and keep_alive == 0:
            await self._pool.unload(model.entry)
            yield self._reply(req, done=True, done_reason=pb.DONE_REASON_UNLOAD)
            return
        if any(req.HasField(f) for f in ("width", "height", "steps")):
            raise GenerateError(Kind.UNSUPPORTED, f'"{req.model}" does not support image generation')
        if req.raw and (req.template or req.system or req.context):
            raise invalid("raw mode does not support template, system, or context", "raw")
        think, think_level = checks.think(req)
        tags = model.thinking_tags()
        if tags is None and think:
            raise GenerateError(Kind.UNSUPPORTED, f'"{req.model}" does not support thinking', "think")
        if tags is not None and think is None and not req.raw:
            think, think_level = True, "medium"
        if not model.generative:
            raise GenerateError(Kind.UNSUPPORTED, f'"{req.model}" does not support generate')
        if req.suffix and "suffix" not in model.template_fields():
            raise GenerateError(Kind.UNSUPPORTED, f"{model.entry.name} does not support insert", "suffix")
        if req.images:
            raise GenerateError(Kind.UNSUPPORTED, f'"{req.model}" does not support images', "images")
        parameters = model.entry.parameters
        load = checks.load_options(req, parameters, default_ctx=self._settings.context_length,
                                   n_ctx_train=model.n_ctx_train, default_threads=self._settings.num_threads)
        sampling = checks.sampling(req, parameters)
        async with self._admission.slot(), self._pool.lease(model.entry, load, keep_alive) as lease:
            if not req.prompt:
                yield self._reply(req, done=True, done_reason=pb.DONE_REASON_LOAD)
                return
            text = self._render(req, model, lease, think, think_level)
            if req.debug_render_only:
                yield self._reply(req, debug_info=pb.DebugInfo(rendered_template=text, image_count=len(req.images)))
                return
            tokens, dropped = self._fit(req, lease, text, sampling.num_keep)
            parser = ThinkingParser(*tags, starts_inside=text.rstrip().endswith(tags[0])) \
                if tags and think and not req.raw else None
            stream = req.stream if req.HasField("stream") else True
            replies = self._stream(req, lease, tokens, sampling, parser, stream, start, dropped)
            async with contextlib.aclosing(replies):
                async for reply in replies:
                    yield reply

    def _render(self, req: pb.GenerateRequest, model: Model, lease: Lease, think: bool | None, level: str) -> str:
        runner = lease.runner
        if req.raw:
            return req.prompt
        inp = prompts.PromptInput(
            prompt=req.prompt, system=req.system or model.entry.system or "", suffix=req.suffix,
            template=req.template or model.entry.template,
            think=think, think_level=level, image_count=len(req.images))
        bos = runner.token_text(int(model.metadata.get("tokenizer.ggml.bos_token_id", 1)))
        eos = runner.token_text(int(model.metadata.get("tokenizer.ggml.eos_token_id", 2)))
        text = prompts.render(inp, chat_template=model.chat_template, bos=bos, eos=eos)
        if req.context:
            if any(not 0 <= t < runner.n_vocab for t in req.context):
                raise invalid("invalid context: token id out of range", "context")
            text = runner.detokenize(list(req.context)) + text
        return text

    def _fit(self, req: pb.GenerateRequest, lease: Lease, text: str, num_keep: int) -> tuple[list[int], int]:
        """Tokenizes the prompt and fits it into the context window (decisions.md §7)."""
        runner = lease.runner
        add_bos = bool(runner.metadata.get("tokenizer.ggml.add_bos_token", True))
        tokens = runner.tokenize(text, add_bos=add_bos)
        if add_bos and len(tokens) > 1 and tokens[0] == tokens[1]:
            tokens = tokens[1:]          # the template already wrote the BOS text
        n_ctx = runner.n_ctx
        if len(tokens) < n_ctx:
            return tokens, 0
        if req.HasField("truncate") and not req.truncate:
            raise GenerateError(Kind.CONTEXT_TOO_LONG, CONTEXT_EXCEEDED, "prompt")
        if req.HasField("shift") and not req.shift:
            raise GenerateError(Kind.CONTEXT_TOO_LONG, PROMPT_TOO_LONG, "prompt")
        keep = min(max(num_keep, 0) if num_keep >= 0 else n_ctx // 2, n_ctx // 2)
        tail = (n_ctx - keep) // 2
        kept = tokens[:keep] + tokens[len(tokens) - tail:]
        log.info("truncating input prompt: %d tokens to %d (num_ctx %d)", len(tokens), len(kept), n_ctx)
        return kept, len(tokens) - len(kept)

    async def _stream(self, req, lease, tokens, sampling, parser, stream, start, dropped):
        texts: list[str] = []
        thoughts: list[str] = []
        logprobs: list[TokenLogprob] = []
        finish: Finish | None = None
        last: int | None = None
        items = lease.runner.generate(tokens, sampling)
        async with contextlib.aclosing(items):
            async for item in items:
                if isinstance(item, Finish):
                    finish = item
                    break
                now = time.perf_counter_ns()
                histogram = self._metrics.ttft if last is None else self._metrics.inter_token
                histogram.observe((now - (start if last is None else last)) / 1e9)
                last = now
                text, thinking = item.text, ""
                if parser is not None:
                    thinking, text = parser.feed(item.text)
                if stream:
                    if text or thinking or item.logprobs:
                        yield self._reply(req, response=text, thinking=thinking, logprobs=_logprobs(item.logprobs))
                else:
                    texts.append(text)
                    thoughts.append(thinking)
                    logprobs.extend(item.logprobs)
        if finish is None:
            raise GenerateError(Kind.INTERNAL, "generation ended without a result")
        text = thinking = ""
        if parser is not None:
            thinking, text = parser.flush()
        if not stream:
            text, thinking = "".join(texts) + text, "".join(thoughts) + thinking
            finish.logprobs = logprobs + finish.logprobs
        context = [] if req.raw else tokens + finish.tokens
        yield self._reply(
            req, response=text, thinking=thinking, done=True, done_reason=DONE_REASONS[finish.reason],
            context=context, total_duration=_duration(time.perf_counter_ns() - start),
            load_duration=_duration(lease.load_ns), prompt_eval_count=finish.prompt_eval_count,
            prompt_eval_duration=_duration(finish.prompt_eval_ns), eval_count=finish.eval_count,
            eval_duration=_duration(finish.eval_ns), logprobs=_logprobs(finish.logprobs),
            truncated_prompt_tokens=dropped)
