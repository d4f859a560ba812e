"""A scripted engine for framing, error and cancellation tests (never for model behaviour).

Tokens are characters; generation emits the pieces "t0 ", "t1 ", … (or a given script)
with an optional delay, and can fail after N pieces. Counters show what it did. A model with a
projector "sees": an image is IMAGE_TOKENS positions, shown in recorded prompts as <image:digest>.
"""
from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import AsyncGenerator, Sequence

from service.engines.base import Bitmap, Engine, Finish, ImageChunk, Images, LoadOptions, Piece, Runner, Sampling

IMAGE_TOKENS = 4


@dataclasses.dataclass
class Script:
    pieces: Sequence[str] | None = None      # default: "t0 ", "t1 ", …
    count: int = 20
    delay: float = 0.0
    delays: Sequence[float] | None = None    # per piece, instead of `delay`
    fail_after: int | None = None            # raise after this many pieces
    error: Exception = dataclasses.field(default_factory=lambda: RuntimeError("engine exploded"))
    wedge: bool = False                      # generate and close wait on a thread that never returns (stuck C code)


# What a wedged engine waits for: never set.
_NEVER = threading.Event()


class FakeRunner(Runner):
    def __init__(self, engine: FakeEngine, vision: bool = False):
        self._engine = engine
        self.vision = vision
        self.n_ctx = 2048
        self.n_ctx_train = 2048
        self.n_vocab = 0x110000
        self.metadata = {}

    def tokenize(self, text: str, *, add_bos: bool) -> list[int]:
        return [ord(c) for c in text]

    def detokenize(self, tokens: Sequence[int]) -> str:
        return "".join(map(chr, tokens))

    def token_text(self, token: int) -> str:
        return chr(token)

    def tokenize_image(self, image: Bitmap) -> list[int | ImageChunk]:
        assert self.vision
        return [ImageChunk(IMAGE_TOKENS, image.digest)]

    def _shown(self, prompt: list[int], images: Images) -> str:
        text, i = "", 0
        while i < len(prompt):
            if i in images:
                text += f"<image:{images[i].digest.hex()[:8]}>"
                i += images[i].n_tokens
            else:
                text += chr(prompt[i])
                i += 1
        return text

    async def generate(self, prompt: list[int], sampling: Sampling,
                       images: Images | None = None) -> AsyncGenerator[Piece | Finish, None]:
        engine, script = self._engine, self._engine.script
        engine.started += 1
        engine.active += 1
        engine.prompts.append(self._shown(prompt, images or {}))
        engine.grammars.append(sampling.grammar)
        pieces = list(script.pieces) if script.pieces is not None else [f"t{i} " for i in range(script.count)]
        if sampling.num_predict >= 0:
            pieces = pieces[:sampling.num_predict]
        try:
            if script.wedge:
                engine.wedged = True
                await asyncio.to_thread(_NEVER.wait)
            for i, text in enumerate(pieces):
                if script.fail_after is not None and i == script.fail_after:
                    raise script.error
                if text in sampling.stop:         # a piece that is a whole stop sequence ends the reply
                    yield Finish("stop", len(prompt), 1, i, 1, stop_sequence=text)
                    return
                pause = script.delays[i] if script.delays is not None else script.delay
                if pause:
                    await asyncio.sleep(pause)
                engine.tokens_emitted += 1
                yield Piece(text)
            reason = "length" if len(pieces) == sampling.num_predict else "stop"
            yield Finish(reason, len(prompt), 1, len(pieces), 1)
        finally:
            engine.active -= 1
            engine.closed += 1

    async def embed(self, tokens: list[int]) -> list[float]:
        return [float(len(tokens)), float(sum(tokens) % 97), 1.0]

    async def close(self) -> None:
        if self._engine.wedged:
            await asyncio.to_thread(_NEVER.wait)
        self._engine.unloaded += 1


class FakeEngine(Engine):
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """A fresh default script and zeroed counters."""
        self.script = Script()
        self.started = self.closed = self.active = self.tokens_emitted = 0
        self.loads = self.unloaded = 0
        self.wedged = False
        self.prompts: list[str] = []
        self.grammars: list[str | None] = []            # each request's grammar (None: none)
        self.load_gate: asyncio.Event | None = None   # when set, loads wait for it
        self.load_errors: list[BaseException] = []     # raised by the next loads, one each

    async def load(self, path: str, options: LoadOptions, **files) -> Runner:
        if self.load_gate is not None:
            await self.load_gate.wait()
        if self.load_errors:
            raise self.load_errors.pop(0)
        self.loads += 1
        return FakeRunner(self, vision=bool(files.get("projector")))
