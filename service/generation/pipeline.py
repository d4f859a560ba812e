"""The Generate, Chat and Embed pipelines, in Ollama's processing order.

Each request is prepared once (its fields checked, its model resolved, what the model is loaded with and how
long it stays), then runs its own checks (capabilities, thinking, tools, images), takes a generation slot and a
lease on its model, renders its prompt (service.chat), tokenizes and fits it (tokens), and streams the engine's
pieces (stream) as protobuf replies. Field validation lives in request.py; this module wires the steps together
and frames the replies.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import Any

import numpy as np
from google.protobuf import json_format, struct_pb2, timestamp_pb2

from common import requests
from gengate.v1 import generate_pb2 as pb
from service.chat import prompt as prompts
from service.chat import tools
from service.chat.jinja import ChatTemplates
from service.engines import schema_grammar
from service.engines.base import ImageStep, LoadOptions, Runner
from service.engines.pool import Lease
from service.errors import GenerateError, Kind, invalid
from service.generation import images, stream, tokens
from service.generation import request as checks
from service.generation.admission import Admission
from service.generation.grammar import Grammars
from service.generation.models import Models
from service.generation.stream import Delta, Summary, Timing
from service.metrics import CAPABILITY, Metrics
from service.models.model import Model
from service.settings import ServiceSettings


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
    """A template error is the client's (400) in a request's `template`, the server's (500) in the model's own."""
    try:
        yield
    except GenerateError as exc:
        if exc.field == "template" and not from_request:
            raise GenerateError(Kind.INTERNAL, exc.message) from exc
        raise


def _tool_call(call: dict[str, Any]) -> pb.ToolCall:
    arguments = struct_pb2.Struct()
    arguments.update(call["arguments"])
    return pb.ToolCall(function=pb.ToolCallFunction(index=call["index"], name=call["name"], arguments=arguments,
                                                    incomplete=call.get("incomplete", False),
                                                    arguments_json=call.get("arguments_json", "")))


def _now() -> timestamp_pb2.Timestamp:
    """The time now (every streamed reply has one): from time_ns, as Timestamp.GetCurrentTime goes through
    datetime and costs several times more."""
    ns = time.time_ns()
    return timestamp_pb2.Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)



@dataclasses.dataclass
class Prepared:
    """A request with its model resolved, once, before anything runs."""

    model: Model
    load: LoadOptions                # what the model is loaded with for it
    keep_alive: int | None           # ns; None: the model's own
    start: int                       # when it came (perf_counter_ns)


class Generation:
    """Runs Generate, Chat and Embed requests against the installed and loaded models."""

    def __init__(self, settings: ServiceSettings, models: Models, admission: Admission, metrics: Metrics,
                 grammars: Grammars, chat_templates: ChatTemplates):
        self._settings = settings
        self.models = models
        self.grammars = grammars
        self.chat_templates = chat_templates
        self._admission = admission
        self._metrics = metrics

    # -- the steps every request shares ------------------------------------------------------------------------
    async def _prepare(self, req: checks.Request, texts: dict[str, str], *, blank: str | None) -> Prepared:
        """Checks the fields that need no model, then resolves the model (`blank`: the 400 for an empty name;
        None: an empty name is not found, as Generate answers)."""
        start = time.perf_counter_ns()
        checks.check_fields(req, self._settings.max_prompt_bytes, texts)
        model = await self.models.get(req.model, blank=blank, remote=True)
        CAPABILITY.set("embedding" if isinstance(req, pb.EmbedRequest) else "image" if model.image else "completion")
        return Prepared(model, self.models.load_options(model, req.options), checks.keep_alive_ns(req), start)

    @contextlib.asynccontextmanager
    async def _running(self, prep: Prepared) -> AsyncIterator[tuple[Lease, Timing]]:
        """A generation slot and the model, loaded and leased, for the block."""
        async with self._admission.slot(), self.models.lease(prep.model, prep.load, prep.keep_alive) as lease:
            yield lease, Timing(prep.start, time.perf_counter_ns())

    @staticmethod
    def _think(req: checks.Sampled, model: Model, raw: bool = False) -> tuple[bool | None, str,
                                                                               tuple[str, str] | None]:
        """(think, level, tags): a model that cannot think refuses `think`; one that can thinks unless told not
        to (or raw)."""
        think, level = checks.think(req)
        tags = model.thinking_tags()
        if tags is None and think:
            raise GenerateError(Kind.UNSUPPORTED, f'"{req.model}" does not support thinking', "think")
        if tags is not None and think is None and not raw:
            think, level = True, "medium"
        return think, level, tags

    @staticmethod
    def _generative(req: checks.Sampled, model: Model, what: str) -> None:
        if not model.generative:
            raise GenerateError(Kind.UNSUPPORTED, f'"{req.model}" does not support {what}')

    def _check_images(self, req: checks.Sampled, model: Model, pictures: list[bytes], field: str) -> None:
        if not model.vision:
            raise GenerateError(Kind.UNSUPPORTED, f'"{req.model}" does not support images', field)
        images.check_count(pictures, self._settings.max_images, field)

    async def _sampling(self, req: checks.Sampled, model: Model):
        """The request's decoding settings, with its `format` built into a grammar (service.generation.grammar)."""
        spec = checks.json_format(req)
        return checks.sampling(req, model.entry.parameters, await self.grammars.compile(spec) if spec else None)

    @staticmethod
    def _special(model: Model, runner: Runner) -> tuple[str, str]:
        """The BOS and EOS texts templates may write."""
        return (runner.token_text(int(model.metadata.get("tokenizer.ggml.bos_token_id", 1))),
                runner.token_text(int(model.metadata.get("tokenizer.ggml.eos_token_id", 2))))

    async def _decode(self, req: checks.Sampled, runner: Runner, text: str, sampling, timing: Timing,
                      tags: tuple[str, str] | None, pictures: tokens.Pictures) -> AsyncGenerator[Delta | Summary, None]:
        """The prompt text tokenized and fitted (off the event loop), then decoded (service.generation.stream)."""
        prompt = await asyncio.to_thread(
            tokens.fit, runner, text, num_keep=sampling.num_keep, pictures=pictures,
            truncate=req.truncate if req.HasField("truncate") else True,
            shift=req.shift if req.HasField("shift") else True, max_pixels=self._settings.max_image_pixels)
        return stream.decode(runner, prompt, sampling, stream=requests.streams(req), tags=tags,
                             starts_inside=bool(tags) and text.rstrip().endswith(tags[0] if tags else ""),
                             timing=timing, metrics=self._metrics)

    # -- Generate ------------------------------------------------------------------------------------------------
    async def run(self, req: pb.GenerateRequest) -> AsyncGenerator[pb.GenerateResponse, None]:
        prep = await self._prepare(req, {f: getattr(req, f) for f in ("prompt", "system", "suffix", "template")},
                                   blank=None)
        model = prep.model

        def reply(**fields: Any) -> pb.GenerateResponse:
            return pb.GenerateResponse(model=req.model, created_at=_now(), **fields)
        if not req.prompt and prep.keep_alive == 0:
            await self.models.unload(model)
            yield reply(done=True, done_reason=pb.DONE_REASON_UNLOAD)
            return
        if model.image:
            async with contextlib.aclosing(self._image(req, prep, reply)) as made:
                async for out in made:
                    yield out
            return
        if any(req.HasField(f) for f in ("width", "height", "steps")):
            raise GenerateError(Kind.UNSUPPORTED, f'"{req.model}" does not support image generation')
        if req.raw and (req.template or req.system or req.context):
            raise invalid("raw mode does not support template, system, or context", "raw")
        think, level, tags = self._think(req, model, req.raw)
        self._generative(req, model, "generate")
        if req.suffix and "suffix" not in model.template_fields():
            raise GenerateError(Kind.UNSUPPORTED, f"{model.entry.name} does not support insert", "suffix")
        if req.images:
            self._check_images(req, model, list(req.images), "images")
        async with self._running(prep) as (lease, timing):
            runner = lease.text
            if not req.prompt:
                yield reply(done=True, done_reason=pb.DONE_REASON_LOAD)
                return
            text = await self._render(req, model, runner, think, level)
            if req.debug_render_only:
                yield reply(debug_info=pb.DebugInfo(rendered_template=text, image_count=len(req.images)))
                return
            sampling = await self._sampling(req, model)     # format is checked after the load
            pictures = [(data, f"images[{i}]") for i, data in enumerate(req.images)]
            events = await self._decode(req, runner, text, sampling, timing,
                                        tags if think and not req.raw else None, pictures)
            async with contextlib.aclosing(events):
                async for event in events:
                    if isinstance(event, Delta):
                        yield reply(response=event.text, thinking=event.thinking,
                                    logprobs=stream.logprobs(event.logprobs))
                    else:
                        # Ollama's context: the tokens of the prompt as rendered and of the response text.
                        # Images cannot travel in a token list: their tags are left out of it (else the next
                        # turn would place its own images at this turn's tags).
                        said = images.TAG.sub("", text) if req.images else text
                        context = [] if req.raw else await asyncio.to_thread(tokens.of_text, runner,
                                                                             said + event.response)
                        yield reply(response=event.text, thinking=event.thinking, **event.metrics(), context=context)

    async def _image(self, req: pb.GenerateRequest, prep: Prepared,
                     reply: Callable[..., pb.GenerateResponse]) -> AsyncGenerator[pb.GenerateResponse, None]:
        """Generate on an image model (Ollama's image generation): one reply a diffusion step (`completed` of
        `total`; only the last when not streaming), then the PNG in `image` with `done`. The job waits for the
        model's worker in the admission queue, without a generation slot (text requests do not wait for it)."""
        model = prep.model
        for field, given in (("images", bool(req.images)), ("suffix", bool(req.suffix)),
                             ("format", req.HasField("format")), ("think", req.HasField("think")),
                             ("context", bool(req.context)), ("template", bool(req.template)),
                             ("system", bool(req.system)), ("logprobs", req.logprobs or req.top_logprobs > 0),
                             ("debug_render_only", req.debug_render_only)):
            if given:
                raise GenerateError(Kind.UNSUPPORTED, f'"{req.model}" generates images: it takes no {field}', field)
        images.check_image_prompt(req.prompt)
        job = images.image_job(req, model.entry.architecture, max_pixels=self._settings.max_generated_pixels,
                               max_steps=self._settings.max_image_steps,
                               max_message_bytes=self._settings.max_message_bytes)
        async with self.models.lease(prep.model, prep.load, prep.keep_alive) as lease:
            loaded = time.perf_counter_ns()
            if not req.prompt:
                yield reply(done=True, done_reason=pb.DONE_REASON_LOAD)
                return
            streaming = requests.streams(req)
            async with self._admission.turn(lease.image.turn):
                items = lease.image.generate_image(job)
                async with contextlib.aclosing(items):
                    try:
                        async for item in items:
                            if isinstance(item, ImageStep):
                                self._metrics.image_steps.inc()
                                if streaming:
                                    yield reply(completed=item.completed, total=item.total)
                                continue
                            now = time.perf_counter_ns()
                            self._metrics.images.inc()
                            yield reply(image=item.png, completed=job.steps, total=job.steps, done=True,
                                        done_reason=pb.DONE_REASON_STOP,
                                        total_duration=stream.duration(now - prep.start),
                                        load_duration=stream.duration(loaded - prep.start),
                                        eval_duration=stream.duration(int(item.seconds * 1e9)))
                    except RuntimeError as exc:          # the worker failed the job, or died, or would not load
                        raise GenerateError(Kind.INTERNAL, str(exc)) from None

    async def _render(self, req: pb.GenerateRequest, model: Model, runner: Runner, think: bool | None,
                      level: str) -> str:
        """The prompt text (templates render off the event loop: Go in a thread, Jinja in a worker process)."""
        prompt = images.place(req.prompt, 0, len(req.images))
        if req.raw:
            return prompt
        inp = prompts.PromptInput(
            prompt=prompt, system=req.system or model.entry.system or "", suffix=req.suffix,
            template=req.template or model.entry.template, think=think, think_level=level,
            turns=() if req.context else model.entry.messages)     # Ollama: MESSAGEs only without context
        bos, eos = self._special(model, runner)
        with _model_template_errors(bool(req.template)):
            text = await prompts.render(inp, chat_template=model.chat_template, bos=bos, eos=eos,
                                        jinja=self.chat_templates)
        if req.context:
            if len(req.context) > 4 * runner.n_ctx_train or any(not 0 <= t < runner.n_vocab for t in req.context):
                raise invalid("invalid context: token id out of range", "context")
            text = await asyncio.to_thread(runner.detokenize, list(req.context)) + text
        return text

    # -- Chat ----------------------------------------------------------------------------------------------------
    async def chat(self, req: pb.ChatRequest) -> AsyncGenerator[pb.ChatResponse, None]:
        prep = await self._prepare(req, {f"messages[{i}].content": m.content for i, m in enumerate(req.messages)},
                                   blank="model is required")
        model = prep.model

        def reply(message: pb.Message | None = None, **fields: Any) -> pb.ChatResponse:
            return pb.ChatResponse(model=req.model, created_at=_now(),
                                   message=message or pb.Message(role="assistant"), **fields)
        if not req.messages and prep.keep_alive == 0:
            await self.models.unload(model)
            yield reply(done=True, done_reason=pb.DONE_REASON_UNLOAD)
            return
        think, level, tags = self._think(req, model)
        self._generative(req, model, "chat")
        choice, function = checks.tool_choice(req)
        offered_tools = [] if choice == "none" else list(req.tools)
        # A template without tool syntax gets the tools in gengate's generic format (service.chat.tools): a call is
        # the whole reply, one JSON object. Such a reply, and any required call, is decoded under a grammar that
        # allows only a call of an offered tool (or, unless one is required, text that does not start with `{`).
        generic = bool(offered_tools) and not model.native_tools()
        constrained = choice == "required" or (generic and not req.HasField("format"))
        if choice == "required":
            think, tags = False, None              # the reply is the call, from its first token
        pictures = [(data, f"messages[{i}].images[{j}]") for i, m in enumerate(req.messages)
                    for j, data in enumerate(m.images)]
        if pictures:
            self._check_images(req, model, [data for data, _ in pictures], "messages")
        async with self._running(prep) as (lease, timing):
            runner = lease.text
            if not req.messages:
                yield reply(done=True, done_reason=pb.DONE_REASON_LOAD)
                return
            sampling = await self._sampling(req, model)
            offered = [_plain(json_format.MessageToDict(t, preserving_proto_field_name=True)) for t in offered_tools]
            if constrained:
                call = await self.grammars.compile(json.dumps(tools.call_schema(offered, function)))
                grammar = call if choice == "required" else schema_grammar.call_or_text(call)
                sampling = dataclasses.replace(sampling, grammar=grammar, grammar_until_text=choice != "required")
            messages = [dict(m) for m in model.entry.messages] + _messages(req.messages)
            if model.entry.system and not any(m["role"] == "system" for m in messages):
                messages.insert(0, {"role": "system", "content": model.entry.system})
            if generic:
                messages = tools.generic_messages(messages)
                note = tools.generic_note(offered, required=choice == "required")
                if messages and messages[0]["role"] == "system":
                    messages[0] = {**messages[0], "content": messages[0]["content"] + "\n\n" + note}
                else:
                    messages.insert(0, {"role": "system", "content": note})
                offered = []
            bos, eos = self._special(model, runner)
            with _model_template_errors(False):
                text = await prompts.render_chat(
                    messages, tools=offered, go_template=model.entry.template, chat_template=model.chat_template,
                    bos=bos, eos=eos, think=think, think_level=level, jinja=self.chat_templates)
            names = {t.function.name for t in offered_tools}
            shaped = tools.CallOrText(names) if constrained else None
            calls = None if constrained or not offered_tools else \
                tools.ToolCallParser(tools.tool_tag(model.entry.template or model.chat_template or ""), names)
            events = await self._decode(req, runner, text, sampling, timing, tags if think else None, pictures)
            async with contextlib.aclosing(events):
                async for event in events:
                    found: list[dict[str, Any]] = []
                    if shaped is not None:
                        content = shaped.feed(event.text)
                        if isinstance(event, Summary):
                            rest, found = shaped.finish(cut=event.finish.reason == "length")
                            content += rest
                    elif calls is not None:
                        content, found = calls.feed(event.text)
                        if isinstance(event, Summary):
                            content += calls.flush()
                    else:
                        content = event.text
                    message = pb.Message(role="assistant", content=content, thinking=event.thinking,
                                         tool_calls=[_tool_call(c) for c in found])
                    if isinstance(event, Summary):
                        yield reply(message, **event.metrics())
                    elif content or event.thinking or found or event.logprobs:
                        yield reply(message, logprobs=stream.logprobs(event.logprobs))

    # -- Embed ---------------------------------------------------------------------------------------------------
    async def embed(self, req: pb.EmbedRequest) -> pb.EmbedResponse:
        prep = await self._prepare(req, {f"input[{i}]": text for i, text in enumerate(req.input)},
                                   blank="model is required")
        if req.dimensions < 0:
            raise invalid("dimensions must be at least 0", "dimensions")
        if prep.model.image:
            raise GenerateError(Kind.UNSUPPORTED, f'"{req.model}" does not support embeddings')
        vectors, count = [], 0
        async with self._running(prep) as (lease, timing):
            runner = lease.text
            for text in req.input:
                ids = await asyncio.to_thread(_embed_tokens, runner, text)
                if len(ids) > runner.n_ctx:
                    if req.HasField("truncate") and not req.truncate:
                        raise GenerateError(Kind.CONTEXT_TOO_LONG, tokens.CONTEXT_EXCEEDED, "input")
                    ids = ids[:runner.n_ctx]
                count += len(ids)
                vector = np.asarray(await runner.embed(ids), dtype=np.float64)
                if req.dimensions:
                    vector = vector[:req.dimensions]
                norm = 0.0 if req.unnormalized else float(np.linalg.norm(vector))
                vectors.append(pb.Embedding(values=(vector / norm if norm else vector).tolist()))
        return pb.EmbedResponse(model=req.model, embeddings=vectors, prompt_eval_count=count,
                                total_duration=stream.duration(time.perf_counter_ns() - prep.start),
                                load_duration=stream.duration(timing.loaded - prep.start))


def _embed_tokens(runner: Runner, text: str) -> list[int]:
    add_bos = bool(runner.metadata.get("tokenizer.ggml.add_bos_token", True))
    return runner.tokenize(text, add_bos=add_bos) or runner.tokenize("", add_bos=True)
