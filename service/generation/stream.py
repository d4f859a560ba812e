"""A generation's stream: the engine's pieces as Deltas (text split from thinking), then one Summary with the
counts and timings, metrics observed on the way. With stream = false, only the Summary, holding everything."""
from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import AsyncGenerator
from typing import Any

from google.protobuf import duration_pb2

from common import enums
from gengate.v1 import generate_pb2 as pb
from service.chat.thinking import ThinkingParser
from service.engines.base import Finish, Images, Piece, RequestError, Runner, Sampling, TokenLogprob
from service.errors import GenerateError, Kind, invalid
from service.metrics import Metrics


def duration(ns: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


def logprobs(entries: list[TokenLogprob]) -> list[pb.Logprob]:
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
        return dict(done=True, done_reason=enums.DONE_REASONS[f.reason], total_duration=duration(self.total_ns),
                    load_duration=duration(self.load_ns), prompt_eval_count=f.prompt_eval_count,
                    prompt_eval_duration=duration(f.prompt_eval_ns), eval_count=f.eval_count,
                    eval_duration=duration(f.eval_ns), logprobs=logprobs(self.logprobs),
                    truncated_prompt_tokens=self.dropped, stop_sequence=f.stop_sequence)


async def _request_errors(items: AsyncGenerator[Piece | Finish, None]) -> AsyncGenerator[Piece | Finish, None]:
    """The engine's stream, its RequestErrors (the request's own mistakes) as invalid arguments."""
    async with contextlib.aclosing(items):
        try:
            async for item in items:
                yield item
        except RequestError as exc:
            raise invalid(str(exc), exc.field) from None


@dataclasses.dataclass
class Timing:
    """When the request came and when its model was ready (Ollama's load_duration is the time between: queueing
    and loading), as perf_counter_ns."""

    start: int
    loaded: int


async def decode(runner: Runner, prompt: tuple[list[int], Images, int], sampling: Sampling, *, stream: bool,
                 tags: tuple[str, str] | None, starts_inside: bool, timing: Timing,
                 metrics: Metrics) -> AsyncGenerator[Delta | Summary, None]:
    """Streams the completion of `prompt` (tokens, images, tokens dropped to fit) as Deltas (split into thinking
    and text when `tags` are given; `starts_inside` when the prompt opened the thinking block), then one
    Summary."""
    tokens, placed, dropped = prompt
    parser = ThinkingParser(*tags, starts_inside=starts_inside) if tags else None
    texts: list[str] = []                # the whole response text, also when streaming (for `context`)
    thoughts: list[str] = []
    kept: list[TokenLogprob] = []
    finish: Finish | None = None
    last: int | None = None
    counted = 0                          # tokens counted in the metrics so far (a cancelled stream keeps them)
    items = _request_errors(runner.generate(tokens, sampling, placed))
    async with contextlib.aclosing(items):
        async for item in items:
            if isinstance(item, Finish):
                finish = item
                metrics.generated.inc(max(0, item.eval_count - counted))
                metrics.prompt.inc(item.prompt_eval_count)
                break
            counted += item.tokens
            metrics.generated.inc(item.tokens)
            now = time.perf_counter_ns()
            histogram = metrics.ttft if last is None else metrics.inter_token
            histogram.observe((now - (timing.start if last is None else last)) / 1e9)
            last = now
            thinking, piece = parser.feed(item.text) if parser is not None else ("", item.text)
            texts.append(piece)
            if stream:
                if piece or thinking or item.logprobs:
                    yield Delta(piece, thinking, item.logprobs)
            else:
                thoughts.append(thinking)
                kept.extend(item.logprobs)
    if finish is None:
        raise GenerateError(Kind.INTERNAL, "generation ended without a result")
    thinking, piece = parser.flush() if parser is not None else ("", "")
    response = "".join(texts) + piece
    yield Summary(piece if stream else response, "".join(thoughts) + thinking, kept + finish.logprobs, finish,
                  response, dropped, timing.loaded - timing.start, time.perf_counter_ns() - timing.start)
