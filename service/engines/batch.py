"""The batched engine: continuous batching over llama-cpp-python's low-level API.

Every active request is a sequence of one shared llama context. One decode thread per
loaded model owns the context and loops:

1. take new requests and cancellations (they join between steps);
2. decode one token for every running sequence, all in one llama_decode batch, and
   sample each with the request's own sampler chain (seed, penalties, grammar);
3. prefill one chunk of the oldest waiting prompt (so running streams keep flowing
   while long prompts come in).

A finished or cancelled sequence leaves the batch at once: its generated tokens'
KV cells are removed (llama_memory_seq_rm) before the stream's close returns. What
stays is the prompt's KV, a cache: a later request whose prompt starts with the
same tokens (a shared system prompt, a conversation's context) takes that sequence
and skips recomputing the common prefix.

Two layouts. The default is the fastest measured (docs/benchmarks.md, "Layouts"): a KV cache
per sequence, and flash attention where the model runs on a GPU (`auto`, as llama-server) but not
on the CPU, where it was slower. llama-server's own layout (flash attention `auto`, one unified KV
cache) measured 9-12% slower than that on this project's CPU. With GENGATE_BATCH_INVARIANT the
engine guarantees batch invariance (docs/benchmarks.md, "Determinism"): a request gives the same
logits, bit for bit, alone or beside others, with or without a reused prefix; on a GPU that means
flash attention off. llama.cpp's CPU kernels round differently for some batch shapes, so that
layout is chosen so that no token's arithmetic depends on what else is in the batch (on the CPU
the default layout is the same, so the guarantee holds there by default too):

- the KV cache is split per sequence (`kv_unified = false`): each sequence has its own
  cells, starting at cell 0, so attention sums the same values in the same order
  whoever else is decoding, and attention runs per sequence (one query row per step);
- flash attention is off: its CPU kernel switches between three code paths
  (reference, tiled, split-KV) on the number of query rows and sequences in a batch;
- prompt chunks and decode steps are separate llama_decode calls, and a prompt is
  never split so that a chunk holds one token: attention over a 1-row chunk uses a
  different kernel (vec_dot) from a multi-row one (llamafile sgemm), and the two
  round differently; multi-row chunks agree with each other whatever their size;
- only prompt KV is reused as a cache: generated tokens were decoded one row at a
  time, so their KV differs (in the last bits) from what a prompt chunk would compute,
  and at least two prompt tokens are always evaluated after a reused prefix.

Norms, RoPE and soft-max compute each row on their own, and so do the matrix products
for the default model's weights (Q4_1, and Q8_0, whose sgemm and vec_dot kernels do the
same arithmetic). K-quant and Q4_0 weights go through batch-dependent kernels on x86
(tiled and repacked matrix products): for such models the guarantee does not hold
beyond a few concurrent sequences (measured in docs/benchmarks.md).

Sequence ids of a decode step must be consecutive for llama.cpp to decode them as one
micro-batch, so a request takes the lowest free sequence.

Speculative decoding (service/engines/speculation.py): a request that samples here (no grammar worker) drafts tokens
from its own prompt and output, or from the model's draft model where it has one (service/engines/drafter.py: all
drafting sequences in one draft decode a token), and verifies them in the step: its next token and its draft of k
tokens are k + 1 rows of the step's batch; it keeps the drafted tokens the model itself chooses, and the KV of the
others is removed at once. The drafting sequences share a llama_decode (shorter drafts padded), plain ones another
(llama.cpp splits a batch over per-sequence KV caches into micro-batches of equal rows per sequence). Whether a
request drafts depends on its own history only, so it gives the same text every time, alone or beside others (how
many of its drafted tokens a step verifies is the step's choice: multi-row steps agree whatever their rows). With a
draft model that holds for what the request asks of it; what the draft proposes, and when a long prompt has reached
it, depend on the batch (README, "Speculative decoding"). Not in the invariant layout: a verified token's KV comes
from multi-row kernels, which round differently from the one-row decode step (docs/benchmarks.md, "Speculative
decoding").

Images (a model loaded with a vision projector, service/engines/vision.py): a prompt's image chunk is one
prefill step of its own, evaluated by libmtmd into the request's sequence, so running streams decode between
an image and the next chunk and a cancellation is seen between them. Its positions hold a placeholder id
derived from the image (engine.ImageChunk), so the prompt cache reuses an image's KV only for the same image,
and a reused prefix never ends inside an image.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import logging
import os
import select
import threading
import time
from collections.abc import AsyncGenerator, Sequence

import llama_cpp
import numpy as np
from llama_cpp import _internals as internals

from service.engines import grammar_sampler, llama, speculation, vision
from service.engines.base import (
    Bitmap,
    DecodeStats,
    Engine,
    Finish,
    ImageChunk,
    Images,
    LoadError,
    LoadOptions,
    OutOfMemory,
    Piece,
    RequestError,
    Runner,
    Sampling,
    coalesce,
)
from service.engines.drafter import Drafter
from service.engines.embedding import EmbeddingRunner
from service.engines.grammar_sampler import GrammarSampler, GrammarSamplers
from service.models import tokenizer
from service.models.gguf import read_metadata

log = logging.getLogger(__name__)

PREFILL_CHUNK = 128          # prompt tokens per llama_decode call (running streams wait at most one chunk)
VISION_UBATCH = 512          # a vision model's micro-batch: a non-causal projector's image must fit in one
MIN_REUSE = 16               # shortest cached prefix worth taking another sequence than the lowest free one
MAX_DRAFT = 16               # most draft tokens a sequence verifies in a step (draft_num_predict is capped at it)
_DONE = object()             # end of a stream
_RELEASED = object()         # the request's sequence is free again


def speculates(invariant: bool, model: internals.LlamaModel) -> bool:
    """Whether a model's requests draft: not in the invariant layout, nor where the memory is recurrent or hybrid
    (it cannot drop the KV of rejected drafts)."""
    m = model.model
    return not (invariant or llama_cpp.llama_model_is_recurrent(m) or llama_cpp.llama_model_is_hybrid(m))


def chunk_end(start: int, end: int, size: int) -> int:
    """End of the prompt chunk that starts at `start`: at most `size` (>= 3) tokens, and
    never leaving a single token for the next chunk, so no chunk has one token unless
    the whole prompt has."""
    stop = min(end, start + size)
    if end - stop == 1 and stop - start > 2:
        stop -= 1                         # leave two tokens rather than one
    return stop


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    if n == 0 or a[0] != b[0]:
        return 0
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class _Request:
    """One generation: set up on the event loop, run by the decode thread."""

    def __init__(self, prompt: list[int], sampling: Sampling, loop: asyncio.AbstractEventLoop, images: Images,
                 sampler: GrammarSampler | None = None):
        self.prompt = prompt
        self.images = images              # position → image chunk
        self.s = sampling
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.released = loop.create_future()
        self.cancelled = False            # set by the stream, read by the decode thread
        # Decode-thread state.
        self.seq = -1                     # sequence id while it holds one
        self.n_past = 0                   # tokens in its KV cells
        self.reused = 0                   # prompt tokens taken from the cache
        self.shifted = False              # the context shifted: the prompt KV is no longer a clean cache
        self.decoding: llama.Decoding | None = None
        self.next_token = -1              # sampled, to be decoded in the next step
        self.sampler = sampler            # its grammar's worker (service.engines.grammar_sampler)
        self.awaiting = False             # its next token is being sampled there
        self.lookup: speculation.PromptLookup | None = None      # its drafts, when it speculates


class _Embed:
    """One embedding: the hidden state at the last of `tokens`."""

    def __init__(self, tokens: list[int], loop: asyncio.AbstractEventLoop):
        self.tokens = tokens
        self.loop = loop
        self.result = loop.create_future()


class BatchRunner(llama.LlamaRunner):
    """A loaded model whose requests share one context, decoded together."""

    def __init__(self, model: internals.LlamaModel, ctx: internals.LlamaContext, *, n_seq: int, n_ctx: int,
                 chunk: int, metadata: dict, reuse: bool, projector: vision.Projector | None = None,
                 path: str = "", stats: DecodeStats | None = None,
                 invariant: bool = False, on_gpu: bool = False, drafter: Drafter | None = None):
        self._model = model
        self._invariant = invariant
        self._ctx = ctx
        self._projector = projector
        self.vision = projector is not None
        n_batch = llama_cpp.llama_n_batch(ctx.ctx)
        # libmtmd's helper batches an image's embeddings by this; a non-causal one must fit one micro-batch.
        self._image_batch = min(n_batch, llama_cpp.llama_n_ubatch(ctx.ctx)) if projector and projector.non_causal \
            else n_batch
        if projector is not None and projector.non_causal:
            projector.max_image_tokens = self._image_batch
        self.vocab = llama.Vocab(model)
        self._mem = llama_cpp.llama_get_memory(ctx.ctx)
        self.n_seq = n_seq
        self.n_ctx = n_ctx
        self.n_ctx_train = model.n_ctx_train()
        self.n_vocab = self.vocab.n_vocab
        self.metadata = metadata
        self._chunk = chunk
        # Prompt KV may be kept and reused (not for sliding-window or recurrent memory).
        self._reuse = reuse
        self._can_shift = bool(self._mem) and bool(llama_cpp.llama_memory_can_shift(self._mem))
        # Speculative decoding (service.engines.speculation): greedy requests verify drafts of their own tokens,
        # not in the invariant layout (a sequence's rows would depend on the others' drafts).
        # Nor for recurrent or hybrid memory, which cannot drop the KV of rejected drafts.
        self._speculate = speculates(invariant, model)
        self._drafter = drafter                   # the model's draft model (service.engines.drafter), if it has one
        self.speculation = "off" if not self._speculate else "draft_model" if drafter else "prompt_lookup"
        self._row_cost = speculation.ROW_COST_GPU if on_gpu else speculation.ROW_COST_CPU
        cap = self._cap = max(chunk, n_seq)
        self._b = llama.Batch(cap)
        # Requests with a grammar sample in worker processes of their own.
        self._samplers = GrammarSamplers(path, self.n_vocab, idle=n_seq)
        # Shared with the event loop (under _cond); the pipe wakes the decode thread while it waits on samplers.
        self._cond = threading.Condition()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._inbox: list[_Request] = []
        self._embeds: collections.deque[_Embed] = collections.deque()
        self._closing = False
        # Decode-thread state.
        self._waiting: collections.deque[_Request] = collections.deque()      # no sequence yet
        self._prefilling: collections.deque[_Request] = collections.deque()   # prompt being evaluated
        self._running: dict[int, _Request] = {}                               # seq id → request
        self._free = set(range(n_seq))
        self._cached: list[list[int]] = [[] for _ in range(n_seq)]             # prompt tokens each sequence keeps
        self._out: list[tuple[_Request, object]] = []
        self._held = 0
        # Observability, written by the decode thread only (DecodeStats: shared by the engine's runners).
        self.stats = stats if stats is not None else DecodeStats()
        self._kv_used = 0
        self._thread = threading.Thread(target=self._main, name="batch-decode", daemon=True)
        self._thread.start()

    @property
    def active(self) -> int:
        """Generations in progress (queued, prefilling or decoding)."""
        return self._held + len(self._inbox)

    # -- the event-loop side -------------------------------------------------------
    def tokenize_image(self, image: Bitmap) -> list[int | ImageChunk]:
        if self._projector is None:
            raise NotImplementedError("this model cannot see")
        return self._projector.chunks(image)

    async def generate(self, prompt: list[int], sampling: Sampling,
                       images: Images | None = None) -> AsyncGenerator[Piece | Finish, None]:
        if images and (self._projector is None or any(
                prompt[i:i + c.n_tokens] != [c.placeholder] * c.n_tokens for i, c in images.items())):
            raise ValueError("images need a vision model and their placeholders in the prompt")
        sampler = await self._open_sampler(sampling) if sampling.grammar else None
        req = _Request(list(prompt), sampling, asyncio.get_running_loop(), dict(images or {}), sampler)
        with self._cond:
            if self._closing:
                if sampler is not None:
                    self._samplers.release(sampler)
                raise RuntimeError("the model is being unloaded")
            self._inbox.append(req)
            self._notify()
        done = False
        after: object = None
        try:
            while True:
                item, after = (after, None) if after is not None else (await req.queue.get(), None)
                if item is _DONE:
                    done = True
                    return
                if isinstance(item, BaseException):
                    done = True
                    raise item
                if isinstance(item, Piece):
                    item, after = coalesce(item, req.queue)
                assert isinstance(item, (Piece, Finish))
                yield item
        finally:
            if not done:
                req.cancelled = True
                with self._cond:
                    self._notify()
            # The sequence is free (and its KV removed) before the stream's close returns.
            await asyncio.shield(req.released)

    async def _open_sampler(self, sampling: Sampling) -> GrammarSampler:
        """The request's grammar worker (opened off the event loop, in bounded time); one the request no longer
        waits for goes back once it is open."""
        opening = asyncio.ensure_future(asyncio.to_thread(self._samplers.open, sampling, self.n_ctx))
        try:
            return await asyncio.shield(opening)
        except asyncio.CancelledError:
            def give_back(f: asyncio.Future) -> None:
                if not f.cancelled() and f.exception() is None:
                    self._samplers.release(f.result())
            opening.add_done_callback(give_back)
            raise

    async def embed(self, tokens: list[int]) -> list[float]:
        job = _Embed(list(tokens), asyncio.get_running_loop())
        with self._cond:
            if self._closing:
                raise RuntimeError("the model is being unloaded")
            self._embeds.append(job)
            self._notify()
        return await job.result

    async def close(self) -> None:
        with self._cond:
            self._closing = True
            self._notify()
        await asyncio.to_thread(self._thread.join)

    def _notify(self) -> None:
        """Wakes the decode thread (holding _cond), whether it waits on _cond or on samplers."""
        self._cond.notify()
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass

    # -- the decode thread -----------------------------------------------------------
    def _main(self) -> None:
        try:
            while True:
                with self._cond:
                    while not (self._inbox or self._embeds or self._closing or self._busy()):
                        self._cond.wait()
                    incoming, self._inbox = self._inbox, []
                    embeds: list[_Embed] = []
                    if self._free:                # an embedding borrows a free sequence
                        embeds, self._embeds = list(self._embeds), collections.deque()
                    self._held += len(incoming)
                    closing = self._closing
                self._waiting.extend(incoming)
                if closing:
                    for job in embeds:
                        self._resolve(job, RuntimeError("the model was unloaded"))
                    break
                try:
                    for job in embeds:
                        self._embed(job)
                    if not self._iterate():
                        self._await_samplers()
                except Exception as exc:          # a bug or a failed decode: fail what is in flight, keep serving
                    log.exception("batch decode failed")
                    self._abort_all(exc)
                    llama_cpp.llama_memory_clear(self._mem, True)
                    self._cached = [[] for _ in range(self.n_seq)]
                    if self._drafter is not None:
                        self._drafter.clear()
                self._flush()
        finally:
            # Whatever ended the loop, no stream is left waiting for a thread that is gone.
            with self._cond:
                self._closing = True
                self._waiting.extend(self._inbox)
                self._held += len(self._inbox)
                self._inbox = []
                embeds, self._embeds = list(self._embeds), collections.deque()
            gone = RuntimeError("the model was unloaded")
            self._abort_all(gone)
            for job in embeds:
                self._resolve(job, gone)
            self._flush()
            self._samplers.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
            if self._projector is not None:
                self._projector.close()
            if self._drafter is not None:
                self._drafter.close()
            self._ctx.close()
            self._model.close()

    def _embed(self, job: _Embed) -> None:
        """Evaluates `job.tokens` on a free sequence with embeddings on, between two steps."""
        seq = min(self._free)
        ctx = self._ctx.ctx
        llama_cpp.llama_memory_seq_rm(self._mem, seq, -1, -1)
        self._cached[seq] = []
        llama_cpp.llama_set_embeddings(ctx, True)
        try:
            tokens, start, vector = job.tokens, 0, None
            while start < len(tokens):
                stop = chunk_end(start, len(tokens), self._chunk)
                n = stop - start
                self._b.token[:n] = tokens[start:stop]
                self._b.pos[:n] = np.arange(start, stop, dtype=np.int32)
                self._b.seq[:n] = seq
                self._b.logits[:n] = 0
                self._b.logits[n - 1] = stop == len(tokens)
                self._decode(n)
                start = stop
            n_embd = llama_cpp.llama_model_n_embd(self._model.model)
            vector = np.ctypeslib.as_array(llama_cpp.llama_get_embeddings_ith(ctx, n - 1), shape=(n_embd,)).tolist()
            self._resolve(job, vector)
        except Exception as exc:
            self._resolve(job, exc)
        finally:
            llama_cpp.llama_set_embeddings(ctx, False)
            llama_cpp.llama_memory_seq_rm(self._mem, seq, -1, -1)

    @staticmethod
    def _resolve(job: _Embed, value: object) -> None:
        def settle() -> None:
            if job.result.done():
                return
            if isinstance(value, BaseException):
                job.result.set_exception(value)
            else:
                job.result.set_result(value)
        try:
            job.loop.call_soon_threadsafe(settle)
        except RuntimeError:
            pass

    def _busy(self) -> bool:
        return bool(self._waiting or self._prefilling or self._running)

    def _iterate(self) -> bool:
        """One round of work; False when nothing could be done but wait for samplers."""
        self._reap()
        self._collect()
        self._admit()
        stepped = self._step() if self._running else False
        prefilled = bool(self._prefilling)
        if prefilled:
            self._prefill()
        self._kv_used = sum(r.n_past for r in self._running.values()) + sum(r.n_past for r in self._prefilling)
        return stepped or prefilled or not self._running

    def _collect(self) -> None:
        """Takes the tokens that grammar samplers have sampled; ends a request whose token is overdue."""
        now = time.monotonic()
        for req in [r for r in self._running.values() if r.awaiting]:
            assert req.sampler is not None
            try:
                token = req.sampler.poll()
                if token is None and req.sampler.overdue(now):
                    raise RequestError("format: sampling one token under the grammar took longer than the limit of "
                                       f"{grammar_sampler.TOKEN_SECONDS:g} s", "format")
            except RequestError as exc:
                log.warning("a request's grammar sampler failed: %s", exc)
                self._fail(req, exc)
                continue
            if token is not None:
                req.awaiting = False
                self._accept(req, token, req.sampler.logits)

    def _await_samplers(self) -> None:
        """Waits (without spinning) until a sampler answers, a request arrives or is cancelled, or a token is
        overdue."""
        waiting = [r.sampler for r in self._running.values() if r.awaiting and r.sampler is not None]
        if not waiting:
            return
        timeout = max(0.0, min(s.sent_at for s in waiting) + grammar_sampler.TOKEN_SECONDS - time.monotonic())
        select.select([self._wake_r, *(s.fileno() for s in waiting)], [], [], timeout + 0.01)
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_r, 4096)

    def kv_cells(self) -> tuple[int, int]:
        return (self._kv_used if self._busy() else 0), self.n_seq * self.n_ctx

    def _reap(self) -> None:
        """Frees the sequences of cancelled requests."""
        for queue in (self._waiting, self._prefilling):
            for req in [r for r in queue if r.cancelled]:
                queue.remove(req)
                self._release(req)
        for req in [r for r in self._running.values() if r.cancelled]:
            self._release(req)

    def _admit(self) -> None:
        """Gives waiting requests a sequence, in arrival order."""
        while self._waiting and self._free:
            req = self._waiting.popleft()
            try:
                req.decoding = llama.Decoding(req.s, self.vocab, self.n_ctx, len(req.prompt),
                                              local=req.sampler is None)
            except Exception as exc:              # a grammar llama.cpp refuses
                self._fail(req, exc)
                continue
            if req.decoding.limit == 0 or not req.prompt:
                self._finish(req, "length")
                continue
            if self._speculate and req.sampler is None and req.s.draft_num_predict > 0:
                req.lookup = speculation.PromptLookup(req.prompt, self.n_vocab)
            seq, reuse = self._pick(req.prompt)
            for start, image in req.images.items():       # a reused prefix never ends inside an image
                if start < reuse < start + image.n_tokens:
                    reuse = start if start >= MIN_REUSE else 0
            self._free.discard(seq)
            req.seq = seq
            if not llama_cpp.llama_memory_seq_rm(self._mem, seq, reuse, -1):
                llama_cpp.llama_memory_seq_rm(self._mem, seq, -1, -1)
                reuse = 0
            self._cached[seq] = []
            req.n_past = req.reused = reuse
            self.stats.cached_tokens += reuse
            self._prefilling.append(req)

    def _pick(self, prompt: list[int]) -> tuple[int, int]:
        """The free sequence to use and how many prompt tokens its cache supplies."""
        best, best_len = min(self._free), 0
        if not self._reuse:
            return best, 0
        for seq in sorted(self._free):
            n = common_prefix(self._cached[seq], prompt)
            if n > best_len:
                best, best_len = seq, n
        # At least two prompt tokens are evaluated again (see the module docstring).
        reuse = max(0, min(best_len, len(prompt) - 2))
        if reuse < MIN_REUSE:
            return min(self._free), 0
        return best, reuse

    def _decode(self, n: int) -> None:
        self._b.decode(self._ctx.ctx, n)

    def _step(self) -> bool:
        """Decodes one token for every running sequence whose token is ready and samples each. A sequence with a
        draft verifies it in the same step: sequences with drafts of one length share a llama_decode (each with
        1 + k rows: its token, its draft), plain ones another (module docstring of service.engines.speculation)."""
        ready = [self._running[seq] for seq in sorted(self._running) if not self._running[seq].awaiting]
        if not ready:
            return False
        plain: list[_Request] = []
        drafting: list[tuple[_Request, list[int]]] = []
        asking: list[tuple[_Request, int]] = []          # what each asks of the draft model
        for req in ready:
            draft = self._draft(req, len(ready))
            if isinstance(draft, int):
                asking.append((req, draft))
            elif draft:
                drafting.append((req, draft))
            else:
                plain.append(req)
        if asking:
            assert self._drafter is not None
            try:
                drafts = self._drafter.draft([(r.seq, r.lookup.tokens, k) for r, k in asking if r.lookup is not None])
            except Exception:
                log.exception("the draft model failed: this step decodes without drafts")
                drafts = [[] for _ in asking]
            for (req, _), draft in zip(asking, drafts, strict=True):
                (drafting.append((req, draft)) if draft else plain.append(req))
            plain.sort(key=lambda r: r.seq)          # a batch's sequences in order: one micro-batch
            drafting.sort(key=lambda d: d[0].seq)
        if plain:
            n = len(plain)
            self._b.token[:n] = [r.next_token for r in plain]
            self._b.pos[:n] = [r.n_past for r in plain]
            self._b.seq[:n] = [r.seq for r in plain]
            self._b.logits[:n] = 1
            self._decode(n)
            for i, req in enumerate(plain):
                req.n_past += 1
                self._sample(req, i)
        if drafting:
            k = speculation.step_length([(r.lookup.acceptance, len(d)) for r, d in drafting if r.lookup is not None],
                                        len(plain), self._row_cost)
            k = min(k, *(self.n_ctx - r.n_past - 2 for r, _ in drafting))    # padding within every context
            drafting = [(r, d[:k]) for r, d in drafting]
            k = max(len(d) for _, d in drafting)     # shorter drafts padded: multi-row kernels agree whatever the rows
            for i, (req, draft) in enumerate(drafting):
                a = i * (1 + k)
                self._b.token[a:a + 1 + k] = [req.next_token, *draft, *[req.next_token] * (k - len(draft))]
                self._b.pos[a:a + 1 + k] = np.arange(req.n_past, req.n_past + 1 + k, dtype=np.int32)
                self._b.seq[a:a + 1 + k] = req.seq
                self._b.logits[a:a + 1 + k] = 0
                self._b.logits[a:a + 1 + len(draft)] = 1
            self._decode(len(drafting) * (1 + k))
            for i, (req, draft) in enumerate(drafting):
                self._verify(req, i * (1 + k), draft)
        self.stats.steps += 1
        return True

    def _draft(self, req: _Request, n_ready: int) -> list[int] | int:
        """The request's draft for this step: none unless it speculates, its lookup finds one, and its own record
        says it is worth verifying (speculation.draft_length); within its context, its token limit and the batch.
        The step then decides how much of it to verify. Where the model has a draft model (and the request no
        images, and its context never shifted), how many tokens to ask the draft model for instead."""
        if req.lookup is None or req.decoding is None:
            return []
        left = req.decoding.limit - len(req.decoding.tokens) - 1             # tokens it may still make, less one
        room = min(self.n_ctx - req.n_past - 2, req.s.draft_num_predict, left, MAX_DRAFT,
                   self._cap // n_ready - 1)
        if self._drafter is not None and not req.images and not req.shifted:
            k = speculation.draft_length(req.lookup.acceptance, room, self._row_cost,
                                         self._drafter.cost * (1 + self._row_cost))
            if k == 0 and room > 0:
                req.lookup.unused()
            return k or []
        draft = req.lookup.draft(room)
        if draft and not speculation.draft_length(req.lookup.acceptance, len(draft), self._row_cost):
            req.lookup.unused()
            return []
        return draft

    def _verify(self, req: _Request, row: int, draft: list[int]) -> None:
        """Takes the tokens the model agrees with: row `row` holds the sequence's token, the next rows its draft.
        After each row the request chooses its next token as it always does (greedy, or its sampler chain with
        its seed), and goes on while that is the draft's next token; the first that differs (or the one after a
        draft taken whole) is its next token. Every token is the model's own choice from the rows before it, so
        the output follows the model's distribution: for a draft of known tokens this is the speculative-sampling
        rule (a drafted token is kept with the probability the model gives it; in its place, a token drawn from
        the model's distribution without it), and each token still costs one draw of the request's generator."""
        assert req.lookup is not None
        req.n_past += 1
        accepted = 0
        for i in range(len(draft) + 1):
            logits = self._row_logits(row + i)
            self._accept(req, self._choose(req, row + i, logits), logits)
            if req.seq < 0 or i == len(draft) or req.next_token != draft[i]:
                break                             # ended, drafted no further, or the model chose otherwise
            req.n_past += 1                       # the drafted token is the model's: its KV stays
            accepted += 1
        self.stats.drafted += len(draft)
        self.stats.accepted += accepted
        req.lookup.verified(len(draft), accepted)
        if req.seq >= 0 and not llama_cpp.llama_memory_seq_rm(self._mem, req.seq, req.n_past, -1):
            raise RuntimeError("the KV of rejected drafts could not be removed")

    def _row_logits(self, index: int):
        def logits() -> np.ndarray:
            return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self._ctx.ctx, index), shape=(self.n_vocab,))
        return logits

    def _prefill(self) -> None:
        """Evaluates one chunk of the oldest prompt (text, or one image); its last chunk gives the first token."""
        req = self._prefilling[0]
        end = len(req.prompt)
        a = req.n_past
        image = req.images.get(a)
        if image is not None:
            self._prefill_image(req, image)
            return
        following = [start for start in req.images if start > a]
        b = chunk_end(a, min(following, default=end), self._chunk)
        n = b - a
        self._b.token[:n] = req.prompt[a:b]
        self._b.pos[:n] = np.arange(a, b, dtype=np.int32)
        self._b.seq[:n] = req.seq
        self._b.logits[:n] = 0
        self._b.logits[n - 1] = b == end
        try:
            self._decode(n)
        except Exception as exc:
            self._prefilling.popleft()
            self._fail(req, exc)
            return
        self.stats.prefill_chunks += 1
        req.n_past = b
        if b == end:
            self._prefilling.popleft()
            assert req.decoding is not None
            req.decoding.prompt_done()
            self._running[req.seq] = req
            self._sample(req, n - 1)

    def _prefill_image(self, req: _Request, image: ImageChunk) -> None:
        assert self._projector is not None
        try:
            if req.n_past + image.n_tokens >= len(req.prompt):
                raise ValueError("a prompt cannot end with an image: nothing would give the first token")
            self._projector.evaluate(self._ctx.ctx, image, req.n_past, req.seq, self._image_batch)
        except Exception as exc:
            self._prefilling.popleft()
            self._fail(req, exc)
            return
        self.stats.prefill_chunks += 1
        req.n_past += image.n_tokens

    def _sample(self, req: _Request, index: int) -> None:
        """Samples the request's next token from batch row `index` and streams what it completes."""
        decoding = req.decoding
        assert decoding is not None
        if req.sampler is not None:           # the request's grammar worker samples it; _collect takes it
            req.sampler.submit(ctypes.cast(llama_cpp.llama_get_logits_ith(self._ctx.ctx, index), ctypes.c_void_p))
            req.awaiting = True
            return
        logits = self._row_logits(index)
        self._accept(req, self._choose(req, index, logits), logits)

    def _choose(self, req: _Request, index: int, logits) -> int:
        """The request's token from batch row `index`, by its own sampler chain (which takes it into its history:
        penalties), or for plain greedy decoding the largest logit (the first of equals, as llama.cpp's greedy)."""
        assert req.decoding is not None
        if req.decoding.greedy:
            return int(np.argmax(logits()))
        return llama.sample_holding_gil(req.decoding.sampler, self._ctx.ctx, index)

    def _accept(self, req: _Request, token: int, logits) -> None:
        """Takes the request's sampled token: streams what it completes, and ends the request or queues the token
        for the next step."""
        decoding = req.decoding
        assert decoding is not None
        self.stats.sampled += 1
        piece, reason = decoding.on_token(token, logits)
        if piece is not None:
            self._out.append((req, piece))
        if reason is None and req.n_past >= self.n_ctx and not (req.s.shift and self._shift(req)):
            reason = "length"
        if reason is not None:
            self._finish(req, reason)
        else:
            req.next_token = token
            if req.lookup is not None:
                req.lookup.extend((token,))

    def _shift(self, req: _Request) -> bool:
        """Frees half the sequence's context after its first num_keep tokens (Ollama's context shift)."""
        if not self._can_shift:
            return False
        req.n_past = llama.shift(self._mem, req.seq, req.n_past, req.s.num_keep)
        req.shifted = True
        return True

    def _finish(self, req: _Request, reason: llama.Reason) -> None:
        self._release(req, close=False)
        assert req.decoding is not None
        for item in req.decoding.finish(reason):
            self._out.append((req, item))
        req.decoding.close()
        self._out.append((req, _DONE))

    def _fail(self, req: _Request, exc: BaseException) -> None:
        self._release(req)
        self._out.append((req, exc))

    def _abort_all(self, exc: BaseException) -> None:
        for req in list(self._waiting) + list(self._prefilling) + list(self._running.values()):
            self._fail(req, exc)
        self._waiting.clear()
        self._prefilling.clear()

    def _release(self, req: _Request, close: bool = True) -> None:
        """Takes the request out of the batch: its generated tokens' KV is removed, its prompt's stays cached."""
        seq = req.seq
        if seq >= 0:
            if self._running.get(seq) is req:
                del self._running[seq]
            keep = 0 if req.shifted or not self._reuse else min(req.n_past, len(req.prompt))
            if keep < 2 or not llama_cpp.llama_memory_seq_rm(self._mem, seq, keep, -1):
                keep = 0
                llama_cpp.llama_memory_seq_rm(self._mem, seq, -1, -1)
            self._cached[seq] = req.prompt[:keep]
            self._free.add(seq)
            req.seq = -1
        if req.sampler is not None:
            self._samplers.release(req.sampler)
            req.sampler, req.awaiting = None, False
        if close and req.decoding is not None:
            req.decoding.close()
        self._held -= 1
        self._out.append((req, _RELEASED))

    def _flush(self) -> None:
        """Hands this step's pieces to the event loops, one call per loop."""
        if not self._out:
            return
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for req, item in self._out:
            by_loop.setdefault(req.loop, []).append((req, item))
        self._out = []
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:                  # the loop is closed: nobody is listening
                pass


def _deliver(items: list[tuple[_Request, object]]) -> None:
    for req, item in items:
        if item is _RELEASED:
            if not req.released.done():
                req.released.set_result(None)
        else:
            req.queue.put_nowait(item)


class BatchEngine(Engine):
    """Loads models into BatchRunners with `num_parallel` sequences of `num_ctx` tokens each (embedding
    models, which keep no KV memory to batch over, into EmbeddingRunners)."""

    def __init__(self, num_parallel: int = 4, chunk: int = PREFILL_CHUNK, *, invariant: bool = False,
                 repack: str = "auto"):
        self.num_parallel = max(1, num_parallel)
        self.chunk = max(3, chunk)
        self.invariant = invariant
        self.layout = "invariant" if invariant else "fast"
        self.speculates = not invariant
        self.repack, self.repack_reason = llama.repack_weights(repack)
        self.stats = DecodeStats()

    async def load(self, path: str, options: LoadOptions, *, adapters: Sequence[str] = (),
                   projector: str | None = None, draft: str | None = None) -> Runner:
        threads = options.num_thread or os.cpu_count() or 1
        n_seq = self.num_parallel
        chunk = max(3, min(self.chunk, options.num_batch))
        # The layout (module docstring): a KV cache per sequence; flash attention on a GPU only, and not in the
        # invariant layout.
        on_gpu = options.num_gpu != 0 and bool(llama_cpp.llama_supports_gpu_offload())

        def context(model: internals.LlamaModel, n_batch: int) -> internals.LlamaContext:
            cp = llama_cpp.llama_context_default_params()
            cp.n_ctx = options.num_ctx * n_seq
            cp.n_batch = cp.n_ubatch = n_batch
            cp.n_seq_max = n_seq
            cp.n_threads = cp.n_threads_batch = threads
            cp.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO if on_gpu and not self.invariant \
                else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
            cp.kv_unified = False
            cp.embeddings = False
            cp.no_perf = True
            return internals.LlamaContext(model=model, params=cp, verbose=False)

        def drafter(target: internals.LlamaModel) -> Drafter | None:
            """The draft model, in a context like the model's (a KV sequence for each of the model's); None, and
            the model drafts by prompt lookup, when it cannot be used (logged)."""
            assert draft is not None
            model: internals.LlamaModel | None = None
            ctx: internals.LlamaContext | None = None
            try:
                model = llama.load_model(draft, options, repack=self.repack)
                vocab = llama_cpp.llama_vocab_n_tokens(target.vocab)
                if abs(llama_cpp.llama_vocab_n_tokens(model.vocab) - vocab) > tokenizer.MAX_SIZE_DIFFERENCE:
                    raise ValueError("its vocabulary differs from the model's")
                if not speculates(False, model):
                    raise ValueError("its memory is recurrent")
                ctx = context(model, max(chunk, n_seq * 4))
                if not llama_cpp.llama_get_memory(ctx.ctx):
                    raise ValueError("it writes no text")
                n_params = llama_cpp.llama_model_n_params
                cost = n_params(model.model) / max(1, n_params(target.model))
                return Drafter(model, ctx, n_seq, vocab, cost, llama.Vocab(target).is_eog)
            except Exception as exc:
                if ctx is not None:
                    ctx.close()
                if model is not None:
                    model.close()
                log.warning("the draft model %s is not used (%s): the model drafts by prompt lookup", draft, exc)
                return None

        def build() -> Runner:
            if projector:           # before anything is loaded here: a projector that would abort the process
                stat = os.stat(projector)
                vision.probe(path, projector, (stat.st_size, stat.st_mtime_ns))
            model = llama.load_model(path, options, repack=self.repack)
            sight: vision.Projector | None = None
            ctx: internals.LlamaContext | None = None
            helper: Drafter | None = None
            try:
                if projector:
                    sight = vision.Projector(model.model, projector, threads, use_gpu=options.num_gpu != 0)
                ctx = context(model, max(chunk, n_seq, VISION_UBATCH if sight else 0))
                if not llama_cpp.llama_get_memory(ctx.ctx):         # an encoder (BERT): nothing to batch over
                    ctx.close()
                    ctx = None
                    if sight is not None:
                        raise vision.ProjectorError("an embedding model takes no vision projector")
                    return EmbeddingRunner(model, options, threads, read_metadata(path))
                llama.apply_adapters(model, ctx, adapters)
                # Where the model does not speculate, its draft model is not loaded.
                if draft and speculates(self.invariant, model):
                    helper = drafter(model)
                n_ctx = min(options.num_ctx, llama_cpp.llama_n_ctx_seq(ctx.ctx))
                m = model.model
                reuse = not (llama_cpp.llama_model_n_swa(m) or llama_cpp.llama_model_is_recurrent(m)
                             or llama_cpp.llama_model_is_hybrid(m))
                return BatchRunner(model, ctx, n_seq=n_seq, n_ctx=n_ctx, chunk=chunk,
                                   metadata=read_metadata(path), reuse=reuse, projector=sight,
                                   invariant=self.invariant, path=path, stats=self.stats, on_gpu=on_gpu,
                                   drafter=helper)
            except BaseException:
                if helper is not None:
                    helper.close()
                if ctx is not None:
                    ctx.close()
                if sight is not None:
                    sight.close()
                model.close()
                raise

        try:
            return await asyncio.to_thread(build)
        except LoadError:
            raise
        except Exception as exc:
            if llama.out_of_memory(exc):
                raise OutOfMemory(str(exc)) from exc
            raise
