"""Whether one model can draft for another (speculative decoding): they must read and write the same tokens.

The rule is llama.cpp's (common/speculative.cpp, common_speculative_are_compatible): the same kind of tokenizer,
the same BOS and EOS ids and whether they are added, token lists of sizes at most 128 apart (a vocabulary padded
to a round size), and the same text for every token both have from id 5 on (the first ids are special tokens,
named differently by some converters).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from service.models.gguf import read_metadata

MAX_SIZE_DIFFERENCE = 128
FIRST_CHECKED = 5
_TOKENS = "tokenizer.ggml.tokens"


@dataclasses.dataclass(frozen=True)
class Tokenizer:
    kind: str                       # tokenizer.ggml.model: "llama", "gpt2", …
    bos: int | None
    eos: int | None
    add_bos: bool | None
    add_eos: bool | None
    tokens: tuple[str, ...]


def read(path: str | Path) -> Tokenizer:
    """The GGUF file's tokenizer (reads the file, bounded as every GGUF read: call it off the event loop)."""
    meta = read_metadata(path, whole=frozenset({_TOKENS}))
    tokens = meta.get(_TOKENS)
    return Tokenizer(str(meta.get("tokenizer.ggml.model", "")), meta.get("tokenizer.ggml.bos_token_id"),
                     meta.get("tokenizer.ggml.eos_token_id"), meta.get("tokenizer.ggml.add_bos_token"),
                     meta.get("tokenizer.ggml.add_eos_token"),
                     tuple(str(t) for t in tokens) if isinstance(tokens, list) else ())


def difference(model: Tokenizer, draft: Tokenizer) -> str | None:
    """Why `draft` cannot draft for `model` (a client's words), or None when it can."""
    prefix = "the draft model's vocabulary differs from the model's"
    if not model.tokens or not draft.tokens:
        return f"{prefix}: a draft must use the same tokenizer (one of them has no token list)"
    if model.kind != draft.kind:
        return f"{prefix}: a {draft.kind or 'unknown'} tokenizer, not {model.kind or 'unknown'}"
    for what, a, b in (("BOS", model.bos, draft.bos), ("EOS", model.eos, draft.eos),
                       ("adds BOS", model.add_bos, draft.add_bos), ("adds EOS", model.add_eos, draft.add_eos)):
        if a != b:
            return f"{prefix}: {what} {b} against {a}"
    if abs(len(model.tokens) - len(draft.tokens)) > MAX_SIZE_DIFFERENCE:
        return f"{prefix}: {len(draft.tokens)} tokens against {len(model.tokens)}"
    for i in range(FIRST_CHECKED, min(len(model.tokens), len(draft.tokens))):
        if model.tokens[i] != draft.tokens[i]:
            return f"{prefix}: token {i} is {draft.tokens[i]!r}, not {model.tokens[i]!r}"
    return None
