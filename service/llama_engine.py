"""The engine over llama-cpp-python: one Llama per loaded model, one generation at a time.

Decoding runs on the runner's own thread, never on the event loop; each token is handed
to the loop as soon as it is sampled. A cancelled stream sets a flag the decode loop
checks before every token, and the thread finishes (freeing the model for the next
request) before the stream's close returns, so nothing keeps decoding for nobody.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import ctypes
import functools
import os
import threading
import time
from typing import AsyncIterator, Callable, Sequence

import llama_cpp
import numpy as np
from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from service.detokenizer import Detokenizer
from service.engine import Engine, Finish, LoadOptions, Piece, Runner, Sampling, TokenLogprob
from service.errors import invalid
from service.gguf import read_metadata

_DONE = object()


@functools.lru_cache(maxsize=32)
def grammar_for(json_format: str) -> str:
    """GBNF text for Ollama's `format`: "json" or a JSON Schema (as text)."""
    if json_format == "json":
        return JSON_GBNF
    try:
        return json_schema_to_gbnf(json_format)
    except Exception as exc:  # the converter raises assorted errors on schemas it cannot express
        raise invalid(f"invalid JSON schema in format: {exc}", "format") from exc


class LlamaRunner(Runner):
    def __init__(self, llm: llama_cpp.Llama, metadata: dict):
        self._llm = llm
        self._vocab = llm._model.vocab
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode")
        self._turn = asyncio.Lock()          # requests take turns, in arrival order
        self._pieces: dict[tuple[int, bool], bytes] = {}
        self._checked_grammars: set[str] = set()
        # llama.cpp may round the context up; llama-cpp-python's buffers keep the size asked for.
        self.n_ctx = min(llm.n_ctx(), len(llm.input_ids))
        self.n_ctx_train = llm._model.n_ctx_train()
        self.metadata = metadata
        self.n_vocab = llm.n_vocab()
        # Observability (written by the decode thread only): decodes running, tokens sampled in all.
        self.active = 0
        self.decoded = 0

    # -- tokens ------------------------------------------------------------------
    def tokenize(self, text: str, *, add_bos: bool) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self._piece(t, True) for t in tokens).decode("utf-8", errors="replace")

    def token_text(self, token: int) -> str:
        return self._piece(token, True).decode("utf-8", errors="replace")

    def _piece(self, token: int, special: bool) -> bytes:
        key = (token, special)
        piece = self._pieces.get(key)
        if piece is None:
            buf = ctypes.create_string_buffer(256)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
            piece = self._pieces[key] = buf.raw[:max(n, 0)]
        return piece

    # -- generation ----------------------------------------------------------------
    async def generate(self, prompt: list[int], sampling: Sampling) -> AsyncIterator[Piece | Finish]:
        grammar = self._grammar(sampling.json_format)
        async with self._turn:
            loop = asyncio.get_running_loop()
            queue: asyncio.Queue = asyncio.Queue()
            cancel = threading.Event()

            def emit(item: object) -> None:
                loop.call_soon_threadsafe(queue.put_nowait, item)

            worker = loop.run_in_executor(self._executor, self._decode, prompt, sampling, grammar, cancel, emit)
            try:
                while (item := await queue.get()) is not _DONE:
                    if isinstance(item, BaseException):
                        raise item
                    yield item
            finally:
                cancel.set()
                # Wait for the decode thread: the next request must find the model idle.
                await asyncio.shield(worker)

    def _grammar(self, json_format: str | None) -> llama_cpp.LlamaGrammar | None:
        if json_format is None:
            return None
        text = grammar_for(json_format)
        if text not in self._checked_grammars:
            # llama.cpp returns NULL for a grammar it cannot parse; check before sampling with it.
            sampler = llama_cpp.llama_sampler_init_grammar(self._vocab, text.encode(), b"root")
            if not sampler:
                raise invalid("invalid JSON schema in format", "format")
            llama_cpp.llama_sampler_free(sampler)
            self._checked_grammars.add(text)
        return llama_cpp.LlamaGrammar.from_string(text)

    def _logprob(self, logits: np.ndarray, token: int, top: int) -> TokenLogprob:
        shifted = logits - logits.max()
        logprobs = shifted - np.log(np.exp(shifted).sum())
        alternatives = ()
        if top:
            best = np.argpartition(-logprobs, top)[:top]
            best = best[np.argsort(-logprobs[best])]
            alternatives = tuple(self._entry(int(t), float(logprobs[t])) for t in best)
        return dataclasses.replace(self._entry(token, float(logprobs[token])), top=alternatives)

    def _entry(self, token: int, logprob: float) -> TokenLogprob:
        data = self._piece(token, False)
        return TokenLogprob(data.decode("utf-8", errors="replace"), logprob, data)

    def _decode(self, prompt: list[int], s: Sampling, grammar, cancel: threading.Event,
                emit: Callable[[object], None]) -> None:
        self.active += 1
        try:
            if not cancel.is_set():
                emit(self._run(prompt, s, grammar, cancel, emit))
        except BaseException as exc:  # delivered to the stream, which raises it
            emit(exc)
        finally:
            self.active -= 1
            emit(_DONE)

    def _run(self, prompt: list[int], s: Sampling, grammar, cancel: threading.Event,
             emit: Callable[[object], None]) -> Finish | None:
        llm, n_ctx = self._llm, self.n_ctx
        llm.set_seed(s.seed)
        llm.last_n_tokens_size = n_ctx if s.repeat_last_n < 0 else s.repeat_last_n
        limit = s.num_predict if s.num_predict >= 0 else 10 * n_ctx
        start = time.perf_counter_ns()
        if limit == 0:
            return Finish("length", len(prompt), 0, 0, 0, [])
        sampler = llm._init_sampler(top_k=s.top_k, top_p=s.top_p, min_p=s.min_p, typical_p=s.typical_p,
                                    temp=s.temperature, repeat_penalty=s.repeat_penalty,
                                    frequency_penalty=s.frequency_penalty, presence_penalty=s.presence_penalty,
                                    grammar=grammar)
        # Prefill one batch at a time, so a cancel lands in between. The whole prompt is
        # evaluated every time: reusing a cached prefix changes batch shapes, and llama.cpp's
        # CPU kernels then round differently, so the same seed could give another text.
        llm.reset()
        for i in range(0, len(prompt), llm.n_batch):
            if cancel.is_set():
                return None
            llm.eval(prompt[i:i + llm.n_batch])
        first = time.perf_counter_ns()
        detok = Detokenizer(s.stop)
        tokens: list[int] = []
        pending: list[TokenLogprob] = []
        reason = "length"
        while not cancel.is_set():
            token = sampler.sample(llm._ctx, -1)
            self.decoded += 1
            if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                reason = "stop"
                break
            tokens.append(token)
            if s.logprobs:
                logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1),
                                               shape=(self.n_vocab,))
                pending.append(self._logprob(logits, token, s.top_logprobs))
            text = detok.feed(self._piece(token, False))
            if text:
                emit(Piece(text, pending))
                pending = []
            if detok.stopped:
                reason = "stop"
                break
            if len(tokens) >= limit:
                break
            if llm.n_tokens >= n_ctx and not (s.shift and self._shift(s.num_keep)):
                break
            llm.eval([token])
        else:
            return None
        end = time.perf_counter_ns()
        rest = detok.flush()
        if rest:
            emit(Piece(rest, pending))
            pending = []
        return Finish(reason, len(prompt), first - start, len(tokens), end - first, tokens, pending)

    def _shift(self, num_keep: int) -> bool:
        """Frees half the context after the first num_keep tokens (Ollama's context shift)."""
        llm = self._llm
        n = llm.n_tokens
        memory = llama_cpp.llama_get_memory(llm._ctx.ctx)
        if not memory or not llama_cpp.llama_memory_can_shift(memory):
            return False
        keep = min(max(num_keep, 0), n // 2)
        discard = (n - keep) // 2
        llama_cpp.llama_memory_seq_rm(memory, 0, keep, keep + discard)
        llama_cpp.llama_memory_seq_add(memory, 0, keep + discard, n, -discard)
        llm.input_ids[keep:n - discard] = llm.input_ids[keep + discard:n].copy()
        llm.n_tokens = n - discard
        return True

    async def embed(self, tokens: list[int]) -> list[float]:
        async with self._turn:
            return await asyncio.get_running_loop().run_in_executor(self._executor, self._embed, tokens)

    def _embed(self, tokens: list[int]) -> list[float]:
        llm = self._llm
        llama_cpp.llama_set_embeddings(llm._ctx.ctx, True)
        try:
            llm.reset()
            for i in range(0, len(tokens), llm.n_batch):
                llm.eval(tokens[i:i + llm.n_batch])
            vector = llama_cpp.llama_get_embeddings_ith(llm._ctx.ctx, -1)
            return np.ctypeslib.as_array(vector, shape=(llm.n_embd(),)).tolist()
        finally:
            llama_cpp.llama_set_embeddings(llm._ctx.ctx, False)
            llm.reset()

    async def close(self) -> None:
        async with self._turn:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._llm.close)
        self._executor.shutdown(wait=False)


class LlamaEngine(Engine):
    async def load(self, path: str, options: LoadOptions) -> Runner:
        threads = options.num_thread or os.cpu_count() or 1

        def build() -> LlamaRunner:
            llm = llama_cpp.Llama(
                model_path=path, n_ctx=options.num_ctx, n_batch=options.num_batch, n_ubatch=options.num_batch,
                n_threads=threads, n_threads_batch=threads, n_gpu_layers=options.num_gpu,
                main_gpu=options.main_gpu, use_mmap=options.use_mmap, logits_all=False, verbose=False,
            )
            return LlamaRunner(llm, read_metadata(path))

        return await asyncio.to_thread(build)
