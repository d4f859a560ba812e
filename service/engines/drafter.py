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

from collections.abc import Callable, Sequence

import llama_cpp
import numpy as np
from llama_cpp import _internals as internals

from service.engines.llama import Batch


class Drafter:
    """The draft model's context: per sequence, the tokens its KV holds, and greedy drafts from them.

    `cost` is what a drafted token costs, as a share of a step of the model (the draft decodes one row a round,
    in sequence): the ratio of their parameter counts, which is what a memory-bound decode step costs. A step
    levels at most one decode's worth of tokens (n_batch) into the draft KV: a sequence further behind (its
    prompt) catches up over several steps and drafts nothing until it has, so a long prompt never stalls the
    other streams."""

    def __init__(self, model: internals.LlamaModel, ctx: internals.LlamaContext, n_seq: int, n_vocab: int,
                 cost: float, is_eog: Callable[[int], bool]):
        self._model = model
        self._ctx = ctx
        self._mem = llama_cpp.llama_get_memory(ctx.ctx)
        self._n_vocab = llama_cpp.llama_vocab_n_tokens(model.vocab)     # its own logits' width
        self._usable = n_vocab                                          # the ids the model has
        self.cost = cost
        self._is_eog = is_eog
        self._held: list[list[int]] = [[] for _ in range(n_seq)]
        self._source: list[tuple[list[int] | None, int]] = [(None, 0)] * n_seq   # tokens last leveled with
        self._cap = llama_cpp.llama_n_batch(ctx.ctx)
        self._b = Batch(self._cap)

    def draft(self, wants: Sequence[tuple[int, list[int], int]]) -> list[list[int]]:
        """For each (sequence, its tokens so far, k): up to k of the draft model's greedy next tokens (none while
        its KV is catching up). The last of the tokens is the one the target decodes next (not in its KV yet).
        A failed decode forgets the sequences."""
        try:
            return self._draft(wants)
        except BaseException:
            for seq, _, _ in wants:
                llama_cpp.llama_memory_seq_rm(self._mem, seq, -1, -1)
                self._held[seq] = []
                self._source[seq] = (None, 0)
            raise

    def _draft(self, wants: Sequence[tuple[int, list[int], int]]) -> list[list[int]]:
        drafts: list[list[int]] = [[] for _ in wants]
        # Level each sequence's draft KV with its tokens, then decode the tokens it lacks (within one decode's
        # worth, shared); each sequence's last row gives its first draft token.
        rows: list[tuple[int, int, int, bool]] = []       # (sequence, token, position, logits)
        ends: list[tuple[int, int]] = []                  # (want index, its logits row)
        for i, (seq, tokens, _) in enumerate(wants):
            n = self._level(seq, tokens)
            take = min(len(tokens) - n, self._cap - len(rows))
            for pos in range(n, n + take):
                rows.append((seq, tokens[pos], pos, pos == len(tokens) - 1))
            self._held[seq].extend(tokens[n:n + take])
            self._source[seq] = (tokens, n + take)        # (the list only grows: these stay the same)
            if n + take == len(tokens):
                ends.append((i, len(rows) - 1))
        if rows:
            self._fill(rows)
            self._decode(len(rows))
        for i, row in ends:
            drafts[i].append(self._argmax(row))
        # Then one token a round for the sequences that want more, until a draft ends the text or leaves the ids
        # the model has.
        for _ in range(1, max((k for _, _, k in wants), default=0)):
            going = [i for i, (_, _, k) in enumerate(wants) if 0 < len(drafts[i]) < k and self._goes_on(drafts[i])]
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
        for draft in drafts:                              # a token the model does not have ends the draft
            if any(t >= self._usable for t in draft):
                del draft[next(j for j, t in enumerate(draft) if t >= self._usable):]
        return drafts

    def _goes_on(self, draft: list[int]) -> bool:
        return draft[-1] < self._usable and not self._is_eog(draft[-1])

    def clear(self) -> None:
        """Forgets every sequence (after the target's memory was cleared)."""
        llama_cpp.llama_memory_clear(self._mem, True)
        self._held = [[] for _ in self._held]
        self._source = [(None, 0)] * len(self._held)

    def close(self) -> None:
        self._ctx.close()
        self._model.close()

    def _level(self, seq: int, tokens: list[int]) -> int:
        """Removes the sequence's draft KV past its common prefix with `tokens` (and the last token, which must be
        decoded again to give logits); returns the prefix's length. `tokens` only grows while its request runs:
        what was leveled with the same list last time is known to agree, and is not compared again."""
        held = self._held[seq]
        n = min(len(held), len(tokens) - 1)
        source, agreed = self._source[seq]
        sure = min(agreed, n) if source is tokens else 0
        while sure < n and held[sure] == tokens[sure]:
            sure += 1
        self._source[seq] = (tokens, sure)
        if sure < len(held):
            if not llama_cpp.llama_memory_seq_rm(self._mem, seq, sure, -1):
                llama_cpp.llama_memory_seq_rm(self._mem, seq, -1, -1)
                sure = 0
            del held[sure:]
        return sure

    def _fill(self, rows: Sequence[tuple[int, int, int, bool]]) -> None:
        n = len(rows)
        self._b.seq[:n] = [r[0] for r in rows]
        self._b.token[:n] = [r[1] for r in rows]
        self._b.pos[:n] = [r[2] for r in rows]
        self._b.logits[:n] = [r[3] for r in rows]

    def _decode(self, n: int) -> None:
        self._b.decode(self._ctx.ctx, n)

    def _argmax(self, row: int) -> int:
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self._ctx.ctx, row), shape=(self._n_vocab,))
        return int(np.argmax(logits))
