"""The Generate pipeline, in Ollama's processing order (spec §4.1).

check fields → parse the model name → look it up → unload? → raw/capability checks →
lease the model (load) → load-only reply? → render the prompt → debug reply? →
tokenize and fit the context → stream the engine's pieces as GenerateResponses.
Validation lives in request.py, prompts in prompt.py, decoding in the engine; this
module wires them together and frames the protobuf replies.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import numpy as np
from google.protobuf import duration_pb2, json_format, struct_pb2, timestamp_pb2

from common import enums
from gengate.v1 import generate_pb2 as pb
from service.chat import prompt as prompts
from service.chat import tools
from service.chat.jinja import ChatTemplates
from service.chat.thinking import ThinkingParser
from service.engines.base import Finish, ImageChunk, Images, Piece, RequestError, TokenLogprob, lay_out
from service.engines.pool import Lease, ModelPool
from service.errors import GenerateError, Kind, invalid
from service.generation import images
from service.generation import request as checks
from service.generation.admission import Admission
from service.generation.grammar import Grammars
from service.metrics import Metrics
from service.models.model import Model
from service.models.store import ModelStore
from service.settings import ServiceSettings

log = logging.getLogger(__name__)

CONTEXT_EXCEEDED = "the input length exceeds the context length"
PROMPT_TOO_LONG = ("the prompt is longer than the context length currently available to the model; shorten the "
                   "prompt, adjust the context length in settings, or use a model with a longer context length")


def _duration(ns: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


def _logprobs(entries: list[TokenLogprob]) -> list[pb.Logprob]:
    return [pb.Logprob(token=e.token, logprob=e.logprob, bytes=e.bytes,
                       top_logprobs=[pb.TopLogprob(token=t.token, logprob=t.logprob, bytes=t.bytes) for t in e.top])
            for e in entries]


@dataclasses.dataclass
class Delta:
    """Text (and thinking) decoded since the previous delta."""

    text: str
    thinking: str
    logprobs: list[TokenLogprob]


@dataclasses.dataclass
class Summary:
    """The end of a generation: the last delta (everything, when not streaming) and the metrics."""

    text: str
    thinking: str
    logprobs: list[TokenLogprob]
    finish: Finish
    response: str                  # the whole response text, also when streaming
    dropped: int
    load_ns: int
    total_ns: int

    def metrics(self) -> dict[str, Any]:
        f = self.finish
        return dict(done=True, done_reason=enums.DONE_REASONS[f.reason], total_duration=_duration(self.total_ns),
                    load_duration=_duration(self.load_ns), prompt_eval_count=f.prompt_eval_count,
                    prompt_eval_duration=_duration(f.prompt_eval_ns), eval_count=f.eval_count,
                    eval_duration=_duration(f.eval_ns), logprobs=_logprobs(self.logprobs),
                    truncated_prompt_tokens=self.dropped, stop_sequence=f.stop_sequence)


def _plain(value: Any) -> Any:
    """A protobuf Struct value as JSON would read it: whole numbers as ints, and object keys sorted (a Struct
    is a map and keeps no order; sorted, a prompt renders the same every time, as Go's json.Marshal of a map)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2 ** 53:
        return int(value)
    if isinstance(value, dict):
        return {k: _plain(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _messages(turns: Sequence[pb.Message]) -> list[dict[str, Any]]:
    """The request's turns as the templates see them, image tags placed (numbered across the conversation)."""
    out, first = [], 0
    for m in turns:
        out.append(_message(m, images.place(m.content, first, len(m.images))))
        first += len(m.images)
    return out


def _message(m: pb.Message, content: str) -> dict[str, Any]:
    """A conversation turn as the templates see it (JSON field names)."""
    out: dict[str, Any] = {"role": m.role.lower(), "content": content}
    if m.thinking:
        out["thinking"] = m.thinking
    if m.tool_calls:
        out["tool_calls"] = [{"type": "function", "function": {
            "name": c.function.name, "arguments": _plain(json_format.MessageToDict(c.function.arguments))}}
            for c in m.tool_calls]
    if m.tool_name:
        out["tool_name"] = m.tool_name
    if m.tool_call_id:
        out["tool_call_id"] = m.tool_call_id
    return out


@contextlib.contextmanager
def _model_template_errors(from_request: bool):
    """A template error is the client's (400) in a request's `template`, the server's (500) in the model's own
    (decisions.md §3 makes only the former a 400)."""
    try:
        yield
    except GenerateError as exc:
        if exc.field == "template" and not from_request:
            raise GenerateError(Kind.INTERNAL, exc.message) from exc
        raise


async def _request_errors(items: AsyncGenerator[Piece | Finish, None]) -> AsyncGenerator[Piece | Finish, None]:
    """The engine's stream, its RequestErrors (the request's own mistakes) as invalid arguments."""
    async with contextlib.aclosing(items):
        try:
            async for item in items:
                yield item
        except RequestError as exc:
            raise invalid(str(exc), exc.field) from None


def _tool_call(call: dict[str, Any]) -> pb.ToolCall:
    arguments = struct_pb2.Struct()
    arguments.update(call["arguments"])
    return pb.ToolCall(function=pb.ToolCallFunction(index=call["index"], name=call["name"], arguments=arguments))


def _now() -> timestamp_pb2.Timestamp:
    """The time now (every streamed reply has one): from time_ns, as Timestamp.GetCurrentTime goes through
    datetime and costs several times more."""
    ns = time.time_ns()
    return timestamp_pb2.Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


class Generation:
    """Runs Generate and Chat requests against the model store and the loaded-model pool."""

    def __init__(self, settings: ServiceSettings, store: ModelStore, pool: ModelPool, admission: Admission,
                 metrics: Metrics, grammars: Grammars, chat_templates: ChatTemplates):
        self._settings = settings
        self.grammars = grammars
        self.chat_templates = chat_templates
        self._store = store
        self._pool = pool
        self._admission = admission
        self._metrics = metrics

    async def lookup(self, model: str) -> Model:
        name = checks.parse_model(model)
        entry = self._store.get(name)
        if entry is None or not entry.path.exists():
            raise GenerateError(Kind.MODEL_NOT_FOUND, f"model '{model}' not found", "model")
        return Model(entry, await self._store.read_metadata(entry.path))

    def _think(self, req, model: Model, raw: bool = False) -> tuple[bool | None, str, tuple[str, str] | None]:
        """(think, level, tags): Ollama's thinking rules (spec §4.1 step 9)."""
        think, level = checks.think(req)
        tags = model.thinking_tags()
        if tags is None and think:
            raise GenerateError(Kind.UNSUPPORTED, f'"{req.model}" does not support thinking', "think")
        if tags is not None and think is None and not raw:
            think, level = True, "medium"
        return think, level, tags

    async def _sampling(self, req, model: Model):
        """The request's decoding settings, with its `format` built into a grammar (service.generation.grammar)."""
        spec = checks.json_format(req)
        return checks.sampling(req, model.entry.parameters, await self.grammars.compile(spec) if spec else None)

    def _load_options(self, req, model: Model):
        return checks.load_options(req, model.entry.parameters, default_ctx=self._settings.context_length,
                                   n_ctx_train=model.n_ctx_train, default_threads=self._settings.num_threads)

    @staticmethod
    def _special(model: Model, lease: Lease) -> tuple[str, str]:
        """The BOS and EOS texts templates may write."""
        runner = lease.runner
        return (runner.token_text(int(model.metadata.get("tokenizer.ggml.bos_token_id", 1))),
                runner.token_text(int(model.metadata.get("tokenizer.ggml.eos_token_id", 2))))

    # -- Generate -----------------------------------------------------------------------------------
    async def run(self, req: pb.GenerateRequest) -> AsyncGenerator[pb.GenerateResponse, None]:
        start = time.perf_counter_ns()
        checks.check_fields(req, self._settings.max_prompt_bytes,
                            {f: getattr(req, f) for f in ("prompt", "system", "suffix", "template")})
        model = await self.lookup(req.model)
        reply = lambda **fields: pb.GenerateResponse(model=req.model, created_at=_now(), **fields)
        keep_alive = checks.keep_alive_ns(req)
        if not req.prompt and keep_alive == 0:
            await self._pool.unload(model.entry)
            yield reply(done=True, done_reason=pb.DONE_REASON_UNLOAD)
            return
        if any(req.HasField(f) for f in ("width", "height", "steps")):
            raise GenerateError(Kind.UNSUPPORTED, f'"{req.model}" does not support image generation')
        if req.raw and (req.template or req.system or req.context):
            raise invalid("raw mode does not support template, system, or context", "raw")
        think, level, tags = self._think(req, model, req.raw)
        if not model.generative:
            raise GenerateError(Kind.UNSUPPORTED, f'"{req.model}" does not support generate')
        if req.suffix and "suffix" not in model.template_fields():
            raise GenerateError(Kind.UNSUPPORTED, f"{model.entry.name} does not support insert", "suffix")
        if req.images:
            self._check_images(req, model, list(req.images), "images")
        load = self._load_options(req, model)
        async with self._admission.slot(), self._pool.lease(model.entry, load, keep_alive) as lease:
            loaded = time.perf_counter_ns()
            if not req.prompt:
                yield reply(done=True, done_reason=pb.DONE_REASON_LOAD)
                return
            # Templates render off the event loop (Go in a thread, Jinja in a worker process).
            text = await self._render(req, model, lease, think, level)
            if req.debug_render_only:
                yield reply(debug_info=pb.DebugInfo(rendered_template=text, image_count=len(req.images)))
                return
            sampling = await self._sampling(req, model)     # format is checked after the load
            pictures = [(data, f"images[{i}]") for i, data in enumerate(req.images)]
            events = self._decode(req, lease, text, sampling, tags if think and not req.raw else None, start, loaded,
                                  pictures)
            async with contextlib.aclosing(events):
                async for event in events:
                    if isinstance(event, Delta):
                        yield reply(response=event.text, thinking=event.thinking, logprobs=_logprobs(event.logprobs))
                    else:
                        # Ollama's context: the tokens of the prompt as rendered and of the response text.
                        # Images cannot travel in a token list: their tags are left out of it (else the next
                        # turn would place its own images at this turn's tags).
                        said = images.TAG.sub("", text) if req.images else text
                        context = [] if req.raw else await asyncio.to_thread(self._tokens, lease, said + event.response)
                        yield reply(response=event.text, thinking=event.thinking, **event.metrics(), context=context)

    async def _render(self, req: pb.GenerateRequest, model: Model, lease: Lease, think: bool | None,
                      level: str) -> str:
        runner = lease.runner
        prompt = images.place(req.prompt, 0, len(req.images))
        if req.raw:
            return prompt
        inp = prompts.PromptInput(
            prompt=prompt, system=req.system or model.entry.system or "", suffix=req.suffix,
            template=req.template or model.entry.template, think=think, think_level=level,
            turns=() if req.context else model.entry.messages)     # Ollama: MESSAGEs only without context
        bos, eos = self._special(model, lease)
        with _model_template_errors(bool(req.template)):
            text = await prompts.render(inp, chat_template=model.chat_template, bos=bos, eos=eos,
                                        jinja=self.chat_templates)
        if req.context:
            if len(req.context) > 4 * runner.n_ctx_train or any(not 0 <= t < runner.n_vocab for t in req.context):
                raise invalid("invalid context: token id out of range", "context")
            text = await asyncio.to_thread(runner.detokenize, list(req.context)) + text
        return text

    # -- Chat ---------------------------------------------------------------------------------------
    async def chat(self, req: pb.ChatRequest) -> AsyncGenerator[pb.ChatResponse, None]:
        start = time.perf_counter_ns()
        checks.check_fields(req, self._settings.max_prompt_bytes,
                            {f"messages[{i}].content": m.content for i, m in enumerate(req.messages)})
        if not req.model.strip():
            raise invalid("model is required", "model")
        model = await self.lookup(req.model)
        reply = lambda message=None, **fields: pb.ChatResponse(
            model=req.model, created_at=_now(), message=message or pb.Message(role="assistant"), **fields)
        keep_alive = checks.keep_alive_ns(req)
        if not req.messages and keep_alive == 0:
            await self._pool.unload(model.entry)
            yield reply(done=True, done_reason=pb.DONE_REASON_UNLOAD)
            return
        think, level, tags = self._think(req, model)
        if not model.generative:
            raise GenerateError(Kind.UNSUPPORTED, f'"{req.model}" does not support chat')
        choice, function = checks.tool_choice(req)
        offered_tools = [] if choice == "none" else list(req.tools)
        # A required call is decoded under a grammar: it works whether or not the template can show tools.
        if offered_tools and choice != "required" and not model.supports_tools():
            raise GenerateError(Kind.UNSUPPORTED, f"{model.entry.name} does not support tools", "tools")
        if choice == "required":
            think, tags = False, None              # the reply is the call, from its first token
        pictures = [(data, f"messages[{i}].images[{j}]") for i, m in enumerate(req.messages)
                    for j, data in enumerate(m.images)]
        if pictures:
            self._check_images(req, model, [data for data, _ in pictures], "messages")
        load = self._load_options(req, model)
        async with self._admission.slot(), self._pool.lease(model.entry, load, keep_alive) as lease:
            loaded = time.perf_counter_ns()
            if not req.messages:
                yield reply(done=True, done_reason=pb.DONE_REASON_LOAD)
                return
            sampling = await self._sampling(req, model)
            offered = [_plain(json_format.MessageToDict(t, preserving_proto_field_name=True)) for t in offered_tools]
            if choice == "required":
                schema = json.dumps(tools.call_schema(offered, function))
                sampling = dataclasses.replace(sampling, grammar=await self.grammars.compile(schema))
            messages = [dict(m) for m in model.entry.messages] + _messages(req.messages)
            if model.entry.system and not any(m["role"] == "system" for m in messages):
                messages.insert(0, {"role": "system", "content": model.entry.system})
            if choice == "required" and not model.supports_tools():
                note = tools.tools_note(offered)
                if messages and messages[0]["role"] == "system":
                    messages[0] = {**messages[0], "content": messages[0]["content"] + "\n\n" + note}
                else:
                    messages.insert(0, {"role": "system", "content": note})
                offered = []
            bos, eos = self._special(model, lease)
            with _model_template_errors(False):
                text = await prompts.render_chat(
                    messages, tools=offered, go_template=model.entry.template, chat_template=model.chat_template,
                    bos=bos, eos=eos, think=think, think_level=level, jinja=self.chat_templates)
            tag = None if choice == "required" else tools.tool_tag(model.entry.template or model.chat_template or "")
            calls = tools.ToolCallParser(tag, {t.function.name for t in offered_tools}) if offered_tools else None
            events = self._decode(req, lease, text, sampling, tags if think else None, start, loaded, pictures)
            async with contextlib.aclosing(events):
                async for event in events:
                    content, found = calls.feed(event.text) if calls is not None else (event.text, [])
                    if calls is not None and isinstance(event, Summary):
                        content += calls.flush()
                    message = pb.Message(role="assistant", content=content, thinking=event.thinking,
                                         tool_calls=[_tool_call(c) for c in found])
                    if isinstance(event, Summary):
                        yield reply(message, **event.metrics())
                    elif content or event.thinking or found or event.logprobs:
                        yield reply(message, logprobs=_logprobs(event.logprobs))

    # -- Embed --------------------------------------------------------------------------------------
    async def embed(self, req: pb.EmbedRequest) -> pb.EmbedResponse:
        start = time.perf_counter_ns()
        checks.check_fields(req, self._settings.max_prompt_bytes,
                            {f"input[{i}]": text for i, text in enumerate(req.input)})
        if not req.model.strip():
            raise invalid("model is required", "model")
        model = await self.lookup(req.model)
        if req.dimensions < 0:
            raise invalid("dimensions must be at least 0", "dimensions")
        load = self._load_options(req, model)
        vectors, count = [], 0
        async with self._admission.slot(), self._pool.lease(model.entry, load, checks.keep_alive_ns(req)) as lease:
            loaded = time.perf_counter_ns()
            runner = lease.runner
            add_bos = bool(runner.metadata.get("tokenizer.ggml.add_bos_token", True))
            for text in req.input:
                tokens = runner.tokenize(text, add_bos=add_bos) or runner.tokenize("", add_bos=True)
                if len(tokens) > runner.n_ctx:
                    if req.HasField("truncate") and not req.truncate:
                        raise GenerateError(Kind.CONTEXT_TOO_LONG, CONTEXT_EXCEEDED, "input")
                    tokens = tokens[:runner.n_ctx]
                count += len(tokens)
                vector = np.asarray(await runner.embed(tokens), dtype=np.float64)
                if req.dimensions:
                    vector = vector[:req.dimensions]
                norm = 0.0 if req.unnormalized else float(np.linalg.norm(vector))
                vectors.append(pb.Embedding(values=(vector / norm if norm else vector).tolist()))
        return pb.EmbedResponse(model=req.model, embeddings=vectors, prompt_eval_count=count,
                                total_duration=_duration(time.perf_counter_ns() - start),
                                load_duration=_duration(loaded - start))

    # -- shared ------------------------------------------------------------------------------------
    def _check_images(self, req, model: Model, pictures: list[bytes], field: str) -> None:
        if not model.vision:
            raise GenerateError(Kind.UNSUPPORTED, f'"{req.model}" does not support images', field)
        images.check_count(pictures, self._settings.max_images, field)

    @staticmethod
    def _tokens(lease: Lease, text: str) -> list[int]:
        """The model's tokens for a prompt text, with one BOS where the model wants one."""
        runner = lease.runner
        add_bos = bool(runner.metadata.get("tokenizer.ggml.add_bos_token", True))
        tokens = runner.tokenize(text, add_bos=add_bos)
        if add_bos and len(tokens) > 1 and tokens[0] == tokens[1]:
            tokens = tokens[1:]          # the template already wrote the BOS text
        return tokens

    def _with_images(self, lease: Lease, text: str, pictures: list[tuple[bytes, str]]) -> tuple[list[int], Images]:
        """Tokenizes a prompt with image tags: each image decoded (one at a time) and put in its tag's place."""
        runner = lease.runner
        parts: list[int | ImageChunk] = []
        for i, part in enumerate(images.split(text, len(pictures))):
            if isinstance(part, str):
                if i == 0 or part:
                    parts += self._tokens(lease, part) if i == 0 else runner.tokenize(part, add_bos=False)
                continue
            data, field = pictures[part]
            bitmap = images.decode(data, field, self._settings.max_image_pixels)
            try:
                parts += runner.tokenize_image(bitmap)
            except ValueError as exc:
                raise invalid(f"invalid image data: {exc}", field) from None
        if parts and isinstance(parts[-1], ImageChunk):
            raise invalid("the prompt cannot end with an image: text must follow it", pictures[-1][1])
        return lay_out(parts)

    def _fit(self, req, lease: Lease, text: str, num_keep: int,
             pictures: list[tuple[bytes, str]]) -> tuple[list[int], Images, int]:
        """Tokenizes the prompt and fits it into the context window (decisions.md §7). A prompt with images is
        not truncated (as in Ollama): too long, it is refused."""
        runner = lease.runner
        n_ctx = runner.n_ctx
        if pictures:
            tokens, placed = self._with_images(lease, text, pictures)
            if len(tokens) >= n_ctx:
                raise GenerateError(Kind.CONTEXT_TOO_LONG, CONTEXT_EXCEEDED, "prompt")
            return tokens, placed, 0
        tokens = self._tokens(lease, text)
        if len(tokens) < n_ctx:
            return tokens, {}, 0
        if req.HasField("truncate") and not req.truncate:
            raise GenerateError(Kind.CONTEXT_TOO_LONG, CONTEXT_EXCEEDED, "prompt")
        if req.HasField("shift") and not req.shift:
            raise GenerateError(Kind.CONTEXT_TOO_LONG, PROMPT_TOO_LONG, "prompt")
        keep = min(max(num_keep, 0) if num_keep >= 0 else n_ctx // 2, n_ctx // 2)
        tail = (n_ctx - keep) // 2
        kept = tokens[:keep] + tokens[len(tokens) - tail:]
        log.info("truncating input prompt: %d tokens to %d (num_ctx %d)", len(tokens), len(kept), n_ctx)
        return kept, {}, len(tokens) - len(kept)

    async def _decode(self, req, lease: Lease, text: str, sampling, tags: tuple[str, str] | None,
                      start: int, loaded: int,
                      pictures: list[tuple[bytes, str]]) -> AsyncGenerator[Delta | Summary, None]:
        """Streams the engine's pieces as Deltas (split into thinking and text when `tags` are
        given), then one Summary. With stream = false, only the Summary, holding everything.
        `start` is when the request came, `loaded` when its model was ready (Ollama's load_duration
        is the time between: queueing and loading). `pictures`: the request's images, with their field names."""
        tokens, placed, dropped = await asyncio.to_thread(self._fit, req, lease, text, sampling.num_keep, pictures)
        parser = ThinkingParser(*tags, starts_inside=text.rstrip().endswith(tags[0])) if tags else None
        stream = req.stream if req.HasField("stream") else True
        texts: list[str] = []                # the whole response text, also when streaming (for `context`)
        thoughts: list[str] = []
        logprobs: list[TokenLogprob] = []
        finish: Finish | None = None
        last: int | None = None
        counted = 0                          # tokens counted in the metrics so far (a cancelled stream keeps them)
        items = _request_errors(lease.runner.generate(tokens, sampling, placed))
        async with contextlib.aclosing(items):
            async for item in items:
                if isinstance(item, Finish):
                    finish = item
                    self._metrics.generated.inc(max(0, item.eval_count - counted))
                    self._metrics.prompt.inc(item.prompt_eval_count)
                    break
                counted += item.tokens
                self._metrics.generated.inc(item.tokens)
                now = time.perf_counter_ns()
                histogram = self._metrics.ttft if last is None else self._metrics.inter_token
                histogram.observe((now - (start if last is None else last)) / 1e9)
                last = now
                thinking, piece = parser.feed(item.text) if parser is not None else ("", item.text)
                texts.append(piece)
                if stream:
                    if piece or thinking or item.logprobs:
                        yield Delta(piece, thinking, item.logprobs)
                else:
                    thoughts.append(thinking)
                    logprobs.extend(item.logprobs)
        if finish is None:
            raise GenerateError(Kind.INTERNAL, "generation ended without a result")
        thinking, piece = parser.flush() if parser is not None else ("", "")
        response = "".join(texts) + piece
        yield Summary(piece if stream else response, "".join(thoughts) + thinking, logprobs + finish.logprobs,
                      finish, response, dropped, loaded - start, time.perf_counter_ns() - start)
