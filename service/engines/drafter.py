"""A draft model: a small model with the target's tokenizer that runs ahead of it to propose its next tokens
(speculative decoding's other draft source, beside prompt lookup: service.engines.speculation).

It has its own llama context beside the target's, with a KV sequence for each of the target's. A sequence's draft
KV holds a prefix of the sequence's tokens; before drafting, it is brought level with them: the cells past their
common prefix (drafted tokens the target did not take, an earlier request's output) are removed, and the tokens
it lacks are decoded (the prompt once, then the one or two a step adds). Then it decodes greedily, all drafting
sequences in one llama_decode a token: its argmax is the next draft token. What the draft KV holds stays when a
request ends, so a later request that shares a prefix drafts from it at once.

The draft decides nothing about the text: the target verifies every drafted token, and keeps its own choice.
"""
from __future__ import annotations

import ctypes
from collections.abc import Sequence

import llama_cpp
import numpy as np
from llama_cpp import _internals as internals

SETTLE = 24                     # tokens at the end of a sequence's draft KV that are compared one by one


class Drafter:
    """The draft model's context: per sequence, the tokens its KV holds, and greedy drafts from them."""

    def __init__(self, model: internals.LlamaModel, ctx: internals.LlamaContext, n_seq: int, n_vocab: int):
        self._model = model
        self._ctx = ctx
        self._mem = llama_cpp.llama_get_memory(ctx.ctx)
        self._n_vocab = n_vocab
        self._held: list[list[int]] = [[] for _ in range(n_seq)]
        cap = self._cap = llama_cpp.llama_n_batch(ctx.ctx)
        self._b_token = np.zeros(cap, np.int32)
        self._b_pos = np.zeros(cap, np.int32)
        self._b_nseq = np.ones(cap, np.int32)
        self._b_seq = np.zeros(cap, np.int32)
        self._b_logits = np.zeros(cap, np.int8)
        int_p = ctypes.POINTER(ctypes.c_int32)
        self._b_seq_ptrs = (int_p * cap)(*[ctypes.cast(self._b_seq.ctypes.data + 4 * i, int_p) for i in range(cap)])
        self._batch = llama_cpp.llama_batch(
            n_tokens=0, token=self._b_token.ctypes.data_as(int_p), embd=None,
            pos=self._b_pos.ctypes.data_as(int_p), n_seq_id=self._b_nseq.ctypes.data_as(int_p),
            seq_id=self._b_seq_ptrs, logits=self._b_logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8)))

    def draft(self, wants: Sequence[tuple[int, Sequence[int], int]]) -> list[list[int]]:
        """For each (sequence, its tokens so far, k): the draft model's k greedy next tokens. The last of the
        tokens is the one the target decodes next (not in its KV yet). A failed decode forgets the sequences."""
        try:
            return self._draft(wants)
        except BaseException:
            for seq, _, _ in wants:
                llama_cpp.llama_memory_seq_rm(self._mem, seq, -1, -1)
                self._held[seq] = []
            raise

    def _draft(self, wants: Sequence[tuple[int, Sequence[int], int]]) -> list[list[int]]:
        drafts: list[list[int]] = [[] for _ in wants]
        # Level each sequence's draft KV with its tokens, then decode the tokens it lacks; each sequence's last
        # row gives its first draft token.
        rows: list[tuple[int, int, int, bool]] = []       # (want index, token, position, logits)
        for i, (seq, tokens, _) in enumerate(wants):
            n = self._level(seq, tokens)
            for pos in range(n, len(tokens)):
                rows.append((i, tokens[pos], pos, pos == len(tokens) - 1))
            self._held[seq].extend(tokens[n:])
        for start in range(0, len(rows), self._cap):
            part = rows[start:start + self._cap]
            self._fill([(wants[i][0], token, pos, logits) for i, token, pos, logits in part])
            self._decode(len(part))
            for row, (i, _, _, logits) in enumerate(part):
                if logits:
                    drafts[i].append(self._argmax(row))
        # Then one token a round for the sequences that want more.
        for _ in range(1, max((k for _, _, k in wants), default=0)):
            going = [i for i, (_, _, k) in enumerate(wants) if len(drafts[i]) < k]
            if not going:
                break
            batch = []
            for i in going:
                seq = wants[i][0]
                batch.append((seq, drafts[i][-1], len(self._held[seq]), True))
                self._held[seq].append(drafts[i][-1])
            self._fill(batch)
            self._decode(len(batch))
            for row, i in enumerate(going):
                drafts[i].append(self._argmax(row))
        return drafts

    def clear(self) -> None:
        """Forgets every sequence (after the target's memory was cleared)."""
        llama_cpp.llama_memory_clear(self._mem, True)
        self._held = [[] for _ in self._held]

    def close(self) -> None:
        self._ctx.close()
        self._model.close()

    def _level(self, seq: int, tokens: Sequence[int]) -> int:
        """Removes the sequence's draft KV past its common prefix with `tokens` (and the last token, which must be
        decoded again to give logits); returns the prefix's length."""
        held = self._held[seq]
        n = min(len(held), len(tokens) - 1)
        sure = max(0, n - SETTLE)
        if held[:sure] != list(tokens[:sure]):
            sure = 0
        while sure < n and held[sure] == tokens[sure]:
            sure += 1
        if sure < len(held):
            if not llama_cpp.llama_memory_seq_rm(self._mem, seq, sure, -1):
                llama_cpp.llama_memory_seq_rm(self._mem, seq, -1, -1)
                sure = 0
            del held[sure:]
        return sure

    def _fill(self, rows: Sequence[tuple[int, int, int, bool]]) -> None:
        n = len(rows)
        self._b_seq[:n] = [r[0] for r in rows]
        self._b_token[:n] = [r[1] for r in rows]
        self._b_pos[:n] = [r[2] for r in rows]
        self._b_logits[:n] = [r[3] for r in rows]

    def _decode(self, n: int) -> None:
        self._batch.n_tokens = n
        rc = llama_cpp.llama_decode(self._ctx.ctx, self._batch)
        if rc != 0:
            raise RuntimeError(f"the draft model's llama_decode failed ({rc})")

    def _argmax(self, row: int) -> int:
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self._ctx.ctx, row), shape=(self._n_vocab,))
        return int(np.argmax(logits))
