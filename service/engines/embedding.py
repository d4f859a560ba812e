"""Embedding models (BERT and its kin): encoders with no KV memory, no generation, one input at a time.

The context pools the encoder's outputs as the model says (mean pooling for all-MiniLM-L6-v2); `embed` returns
that pooled vector, not normalised (the Embed pipeline normalises). Inputs run one after another on the model's
own thread, off the event loop.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
from collections.abc import AsyncGenerator

import llama_cpp
import numpy as np
from llama_cpp import _internals as internals

from service.engines import llama
from service.engines.base import Finish, Images, LoadOptions, Piece, Sampling


class EmbeddingRunner(llama.LlamaRunner):
    def __init__(self, model: internals.LlamaModel, options: LoadOptions, threads: int, metadata: dict):
        self._model = model
        self.vocab = llama.Vocab(model)
        self.n_ctx_train = model.n_ctx_train()
        self.n_ctx = min(options.num_ctx, self.n_ctx_train) if self.n_ctx_train > 0 else options.num_ctx
        self.n_vocab = self.vocab.n_vocab
        self.metadata = metadata
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = params.n_batch = params.n_ubatch = self.n_ctx       # an input is encoded in one batch
        params.n_seq_max = 1
        params.n_threads = params.n_threads_batch = threads
        params.embeddings = True
        params.no_perf = True
        self._ctx = internals.LlamaContext(model=model, params=params, verbose=False)
        self._n_embd = llama_cpp.llama_model_n_embd(model.model)
        self._batch = llama_cpp.llama_batch_init(self.n_ctx, 0, 1)
        self._thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")
        self._turn = asyncio.Lock()

    async def generate(self, prompt: list[int], sampling: Sampling,
                       images: Images | None = None) -> AsyncGenerator[Piece | Finish, None]:
        raise RuntimeError("an embedding model does not generate")
        yield  # pragma: no cover   (an async generator)

    async def embed(self, tokens: list[int]) -> list[float]:
        async with self._turn:
            return await asyncio.get_running_loop().run_in_executor(self._thread, self._embed, tokens[:self.n_ctx])

    def _embed(self, tokens: list[int]) -> list[float]:
        batch, n = self._batch, len(tokens)
        batch.n_tokens = n
        for i, token in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, i, 1, True
            batch.seq_id[i][0] = 0
        if llama_cpp.llama_encode(self._ctx.ctx, batch) != 0:
            raise RuntimeError("llama_encode failed")
        vector = llama_cpp.llama_get_embeddings_seq(self._ctx.ctx, 0)      # pooled
        if not vector:                                                     # no pooling: the last token's output
            vector = llama_cpp.llama_get_embeddings_ith(self._ctx.ctx, n - 1)
        out = np.ctypeslib.as_array(ctypes.cast(vector, ctypes.POINTER(ctypes.c_float)), shape=(self._n_embd,))
        return out.tolist()

    async def close(self) -> None:
        async with self._turn:
            def free() -> None:
                llama_cpp.llama_batch_free(self._batch)
                self._ctx.close()
                self._model.close()
            await asyncio.get_running_loop().run_in_executor(self._thread, free)
        self._thread.shutdown(wait=False)
