"""Speculative decoding's two halves that need no model: where drafts come from, and how long a sequence's draft is.

Drafts come from the sequence's own tokens (prompt lookup, as llama.cpp's n-gram speculation and vLLM's): the
tokens that followed the latest earlier occurrence of its last few tokens. Text that copies (a rewrite, code
edited in place, a quoted passage, a list that repeats its shape) drafts well; free writing rarely matches.

Whether a sequence drafts in a step is a function of its own history only, never of timing or of the other
sequences, so that the same request gives the same text every time: ggml computes a one-row step with other
kernels than a multi-row one, and they round differently, while multi-row steps agree whatever their rows. So
`draft_length` decides, for the sequence alone, whether a draft is worth verifying: the tokens expected from it
(from the sequence's acceptance so far) against its cost, each row of a step costing `row_cost` times what a step
costs whatever its rows (about 1 on a CPU, where a step's time grows with its rows; about 0.05 on a GPU). How
many drafted tokens are verified is then the step's choice (`step_length`): it sees every drafting sequence and
the plain ones, and its choice changes no sequence's arithmetic. The drafting sequences are verified in one
llama_decode with the same rows for each (llama.cpp splits a batch over per-sequence KV caches into micro-batches
of equal rows per sequence): shorter drafts are padded.
"""
from __future__ import annotations

from collections.abc import Sequence

NGRAMS = (4, 3)                      # the lengths of suffix looked up, longest first
DECAY = 0.95                         # how much of its past acceptance a sequence keeps at each draft
ROW_COST_CPU = 0.9                   # a step's cost per row over its fixed cost (measured: docs/benchmarks.md)
ROW_COST_GPU = 0.05


class PromptLookup:
    """Drafts for one sequence from its tokens so far (prompt and output), and how well its drafts have done:
    decayed counts of drafts whose first token the model took and of those whose first token it did not, over a
    uniform prior."""

    def __init__(self, tokens: Sequence[int], n_vocab: int):
        self.tokens = list(tokens)
        self._n_vocab = n_vocab
        self._index: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in NGRAMS}
        self._indexed = 0               # n-grams ending before this position are in the index
        self._taken = 0.0
        self._missed = 0.0

    @property
    def acceptance(self) -> float:
        """The estimated chance that a drafted token is the model's own, given the ones before it were."""
        return (self._taken + 1) / (self._taken + self._missed + 2)

    def extend(self, tokens: Sequence[int]) -> None:
        self.tokens.extend(tokens)

    def draft(self, limit: int) -> list[int]:
        """Up to `limit` tokens that followed the latest earlier occurrence of the longest suffix seen before."""
        tokens, end = self.tokens, len(self.tokens)
        if limit <= 0 or end < 2:
            return []
        for stop in range(max(self._indexed, 1), end):       # n-grams ending at stop (exclusive), not the suffix
            for n, index in self._index.items():
                if stop >= n:
                    index[tuple(tokens[stop - n:stop])] = stop
        self._indexed = end
        for n in NGRAMS:
            if end >= n:
                found = self._index[n].get(tuple(tokens[end - n:]))
                if found is not None:
                    out = []
                    for token in tokens[found:found + limit]:
                        if not 0 <= token < self._n_vocab:        # an image's placeholder: not a token
                            break
                        out.append(token)
                    return out
        return []

    def verified(self, drafted: int, accepted: int) -> None:
        """Counts a verified draft by its first token, taken or not: how many drafted tokens a step verifies
        depends on the other sequences (step_length), the first is always verified, so the record (and whether the
        sequence drafts next) depends on the sequence alone."""
        self._taken = DECAY * self._taken + (accepted > 0)
        self._missed = DECAY * self._missed + (accepted == 0)

    def unused(self) -> None:
        """A draft was there but not tried: the estimate drifts back towards the prior, so a sequence whose
        drafts failed tries again later (its text may have begun to copy)."""
        self._taken *= DECAY
        self._missed *= DECAY


def expected_run(acceptance: float, length: int) -> float:
    """Tokens expected to be accepted from a draft of `length`, each accepted with `acceptance` after the ones
    before it were: a + a² + … + a^length."""
    return sum(acceptance ** i for i in range(1, length + 1))


def draft_length(acceptance: float, available: int, row_cost: float, draft_cost: float = 0.0) -> int:
    """How many of `available` drafted tokens to verify: 0, or the power of two with the most tokens expected per
    unit of step time, if that beats decoding one token alone. `draft_cost` is what making a drafted token costs
    in the same unit (0 for prompt lookup; a draft model's decode step otherwise)."""
    best, best_rate = 0, 1 / (1 + row_cost)
    k = 1
    while k <= available:
        rate = (1 + expected_run(acceptance, k)) / (1 + row_cost * (k + 1) + draft_cost * k)
        if rate > best_rate:
            best, best_rate = k, rate
        k *= 2
    return best


def step_length(drafts: Sequence[tuple[float, int]], n_plain: int, row_cost: float) -> int:
    """How many drafted tokens each drafting sequence verifies this step (at least 1; a power of two): the most
    tokens per unit of time for the whole step. `drafts` are the drafting sequences' (acceptance, draft length);
    `n_plain` the sequences decoded without a draft, in a call of their own."""
    longest = max((d for _, d in drafts), default=0)
    plain_time = (1 + row_cost * n_plain) if n_plain else 0.0
    best, best_rate, k = 1, -1.0, 1
    while k <= max(longest, 1):
        tokens = n_plain + sum(1 + expected_run(a, min(k, d)) for a, d in drafts)
        rate = tokens / (plain_time + 1 + row_cost * len(drafts) * (1 + k))
        if rate > best_rate:
            best, best_rate = k, rate
        k *= 2
    return best
