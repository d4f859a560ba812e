"""The engine interface: what the serving layer needs from an inference backend.

An Engine loads models into Runners. A Runner tokenizes and generates: `generate`
is an async stream of Pieces (text with its token log-probabilities) ending with one
Finish. Closing the stream early (client gone, deadline) cancels decoding: the runner
stops within one token and frees what the request held. Everything model-agnostic
(validation, prompts, framing, keep-alive) lives above this line, so engines are
interchangeable and tests can script a fake one.
"""
from __future__ import annotations

import abc
import asyncio
import dataclasses
from collections.abc import AsyncGenerator, Iterable, Mapping, Sequence
from typing import Any, Literal


@dataclasses.dataclass(frozen=True)
class LoadOptions:
    """Options fixed when a model is loaded; a change means a reload."""

    num_ctx: int
    num_batch: int = 512
    num_gpu: int = -1
    main_gpu: int = 0
    use_mmap: bool = True
    num_thread: int = 0


@dataclasses.dataclass(frozen=True)
class Sampling:
    """Per-request decoding settings (Ollama's runtime options)."""

    seed: int
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    typical_p: float = 1.0
    repeat_last_n: int = 64
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    num_predict: int = -1
    stop: tuple[str, ...] = ()
    grammar: str | None = None           # a GBNF grammar the output must match (service.generation.grammar builds it)
    # The grammar binds only a reply that starts with "{" (after whitespace): one that starts with anything else is
    # free from then on (gengate's generic tool format: a call, or text).
    grammar_until_text: bool = False
    logprobs: bool = False
    top_logprobs: int = 0
    num_keep: int = 4                    # tokens kept at the start when the context shifts
    shift: bool = True                   # shift the context when it fills (else stop with "length")
    draft_num_predict: int = 8           # most tokens drafted a step (speculative decoding; 0: none)


@dataclasses.dataclass(frozen=True)
class TokenLogprob:
    """The log-probability of one token, with its alternatives."""

    token: str
    logprob: float
    bytes: bytes
    top: tuple[TokenLogprob, ...] = ()


@dataclasses.dataclass
class Piece:
    """Text decoded since the previous piece (never a broken UTF-8 character)."""

    text: str
    logprobs: list[TokenLogprob] = dataclasses.field(default_factory=list)
    tokens: int = 1                      # tokens decoded since the previous piece (this piece's share)


@dataclasses.dataclass
class Finish:
    """The end of a generation, with its counts and timings."""

    reason: Literal["stop", "length"]
    prompt_eval_count: int
    prompt_eval_ns: int
    eval_count: int
    eval_ns: int
    logprobs: list[TokenLogprob] = dataclasses.field(default_factory=list)
    stop_sequence: str = ""              # the stop sequence that ended it, if one did


def coalesce(first: Piece, queue: asyncio.Queue) -> tuple[Piece, object]:
    """`first` and the pieces already queued behind it, as one piece, and the item after them if one is queued
    (else None). A reader that fell behind gets one message for what it missed (vLLM's stream interval, adaptive):
    nothing is ever held back, a first piece included; what is merged was already late."""
    if queue.empty():
        return first, None
    texts, logprobs, tokens, after = [first.text], list(first.logprobs), first.tokens, None
    while not queue.empty():
        item = queue.get_nowait()
        if not isinstance(item, Piece):
            after = item
            break
        texts.append(item.text)
        logprobs += item.logprobs
        tokens += item.tokens
    return Piece("".join(texts), logprobs, tokens), after


class LoadError(RuntimeError):
    """A model that cannot be loaded, for a reason its message states for clients (it names no files)."""


class LoadTimeout(LoadError):
    """A load that took longer than the pool waits (it goes on, and the model is registered idle when it ends)."""


class OutOfMemory(LoadError):
    """A model that does not fit in the memory left (the pool unloads idle models and tries once more)."""


class RequestError(ValueError):
    """A request the engine cannot run as asked, for a reason its message states for clients (the request's
    mistake: the service answers it as an invalid argument, naming `field`)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


@dataclasses.dataclass(frozen=True)
class Bitmap:
    """A decoded image: RGB pixels, row by row, and the digest that identifies it."""

    width: int
    height: int
    rgb: bytes
    digest: bytes


@dataclasses.dataclass(eq=False)
class ImageChunk:
    """An image's place in a prompt: `n_tokens` positions whose embeddings the model's projector computes
    when the prompt is evaluated. In a prompt's token list each of its positions holds `placeholder`, a
    negative id derived from the image's digest, so a prompt cache that compares token lists tells images
    apart (and reuses the KV of the same image)."""

    n_tokens: int
    digest: bytes
    handle: Any = None                   # the engine's own (an mtmd chunk)

    @property
    def placeholder(self) -> int:
        return -1 - (int.from_bytes(self.digest[:8], "big") >> 2)


Images = Mapping[int, ImageChunk]        # a prompt's images, by the position of their first token


def lay_out(parts: Iterable[int | ImageChunk]) -> tuple[list[int], dict[int, ImageChunk]]:
    """A prompt of tokens and images as its token list (placeholders at the images' positions) and images."""
    tokens: list[int] = []
    images: dict[int, ImageChunk] = {}
    for part in parts:
        if isinstance(part, ImageChunk):
            images[len(tokens)] = part
            tokens.extend([part.placeholder] * part.n_tokens)
        else:
            tokens.append(part)
    return tokens, images


class Runner(abc.ABC):
    """A loaded model."""

    n_ctx: int                           # context window in tokens
    n_ctx_train: int                     # the model's training context
    n_vocab: int                         # vocabulary size
    metadata: dict[str, Any]             # GGUF metadata
    vision: bool = False                 # loaded with a projector: prompts may hold images

    @abc.abstractmethod
    def tokenize(self, text: str, *, add_bos: bool) -> list[int]:
        """Tokens of `text`; special-token text (e.g. <|im_start|>) maps to special tokens."""

    @abc.abstractmethod
    def detokenize(self, tokens: Sequence[int]) -> str:
        """Text of `tokens`, special tokens written out (so it tokenizes back to them)."""

    @abc.abstractmethod
    def token_text(self, token: int) -> str:
        """Text of one token, special tokens included (e.g. BOS as "<s>")."""

    def tokenize_image(self, image: Bitmap) -> list[int | ImageChunk]:
        """An image's part of a prompt: its chunks (and any text the projector wraps it in, as tokens).
        ValueError if the projector cannot take it. Only for a runner with `vision`."""
        raise NotImplementedError("this model cannot see")

    @abc.abstractmethod
    def generate(self, prompt: list[int], sampling: Sampling,
                 images: Images | None = None) -> AsyncGenerator[Piece | Finish, None]:
        """Streams the completion of `prompt` (with `images` at their positions, see `lay_out`): Pieces, then
        one Finish. Closing it cancels decoding."""

    @abc.abstractmethod
    async def embed(self, tokens: list[int]) -> list[float]:
        """The embedding of `tokens` (not normalised): an embedding model's pooled output, else the model's
        output vector at the last token."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Frees the model once no generation uses it."""

    def kv_cells(self) -> tuple[int, int]:
        """(KV cells held by requests in flight, KV cells in all): the cache's load, for metrics."""
        return 0, 0


@dataclasses.dataclass(frozen=True)
class ImageJob:
    """One image to generate (a diffusion model's request)."""

    prompt: str
    width: int
    height: int
    steps: int
    seed: int
    cfg_scale: float | None = None       # None: the architecture's own
    sampler: str = ""                    # stable-diffusion.cpp's sample method; "": the architecture's own


@dataclasses.dataclass(frozen=True)
class ImageStep:
    """A diffusion step done."""

    completed: int
    total: int


@dataclasses.dataclass(frozen=True)
class ImageResult:
    """The image, as PNG bytes, with how long encoding the prompt and sampling took."""

    png: bytes
    seconds: float


class ImageRunner(abc.ABC):
    """A loaded image-generation (diffusion) model: one job at a time, each run while its caller holds `turn`."""

    n_ctx: int = 0                       # none: a loaded image model holds no context (for /api/ps)
    turn: asyncio.Lock

    @abc.abstractmethod
    def generate_image(self, job: ImageJob) -> AsyncGenerator[ImageStep | ImageResult, None]:
        """Streams one ImageStep per diffusion step, then the ImageResult. Closing it stops the job within a step
        (or at once, by ending the process that runs it); the runner serves the next one."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Frees the model."""

    def kv_cells(self) -> tuple[int, int]:
        return 0, 0


@dataclasses.dataclass
class DecodeStats:
    """What an engine's runners have done, all models together (metrics; tests compare them before and after)."""

    sampled: int = 0                     # tokens sampled
    steps: int = 0                       # decode steps (one llama_decode for every running sequence)
    prefill_chunks: int = 0              # prompt chunks (and images) evaluated
    cached_tokens: int = 0               # prompt tokens whose KV a sequence still held (not evaluated again)
    drafted: int = 0                     # draft tokens verified (speculative decoding)
    accepted: int = 0                    # draft tokens the model agreed with


class ImageEngine(abc.ABC):
    """Loads image-generation models."""

    @abc.abstractmethod
    async def load(self, path: str, components: Mapping[str, str], threads: int) -> ImageRunner:
        """Loads the checkpoint at `path` with its separate `components` (role → file: "vae", "llm", "clip_l",
        "clip_g", "t5xxl", "taesd"), in a process of its own. LoadError when the engine cannot load it."""


class Engine(abc.ABC):
    """Loads models."""

    layout: str = ""                     # how it lays out batches ("fast", "invariant"), for the operator
    speculates: bool = False             # it drafts and verifies tokens (speculative decoding)
    stats: DecodeStats | None = None     # counts, where the engine keeps them

    @abc.abstractmethod
    async def load(self, path: str, options: LoadOptions, *, adapters: Sequence[str] = (),
                   projector: str | None = None, draft: str | None = None) -> Runner:
        """Loads the GGUF at `path` (without blocking the event loop), with LoRA `adapters` applied and, for a
        model that can see, its vision `projector`; with its `draft` model, where it speculates. OutOfMemory when
        it does not fit; LoadError when it cannot load for a reason clients may read."""
