"""A prompt's tokens: the text tokenized as its model wants it, images decoded and put in their tags' places, and
the whole fitted into the context window (Ollama's truncation: the first `num_keep` tokens and the tail)."""
from __future__ import annotations

import logging

from service.engines.base import ImageChunk, Images, Runner, lay_out
from service.errors import GenerateError, Kind, invalid
from service.generation import images

log = logging.getLogger(__name__)

CONTEXT_EXCEEDED = "the input length exceeds the context length"
PROMPT_TOO_LONG = ("the prompt is longer than the context length currently available to the model; shorten the "
                   "prompt, adjust the context length in settings, or use a model with a longer context length")

# A request's images, each with the field it came in (for error messages): `images[0]`, `messages[1].images[0]`.
Pictures = list[tuple[bytes, str]]


def of_text(runner: Runner, text: str) -> list[int]:
    """The model's tokens for a prompt text, with one BOS where the model wants one."""
    add_bos = bool(runner.metadata.get("tokenizer.ggml.add_bos_token", True))
    tokens = runner.tokenize(text, add_bos=add_bos)
    if add_bos and len(tokens) > 1 and tokens[0] == tokens[1]:
        tokens = tokens[1:]          # the template already wrote the BOS text
    return tokens


def with_images(runner: Runner, text: str, pictures: Pictures, max_pixels: int) -> tuple[list[int], Images]:
    """A prompt with image tags: each image decoded (one at a time) and put in its tag's place."""
    parts: list[int | ImageChunk] = []
    for i, part in enumerate(images.split(text, len(pictures))):
        if isinstance(part, str):
            if i == 0 or part:
                parts += of_text(runner, part) if i == 0 else runner.tokenize(part, add_bos=False)
            continue
        data, field = pictures[part]
        bitmap = images.decode(data, field, max_pixels)
        try:
            parts += runner.tokenize_image(bitmap)
        except ValueError as exc:
            raise invalid(f"invalid image data: {exc}", field) from None
    if parts and isinstance(parts[-1], ImageChunk):
        raise invalid("the prompt cannot end with an image: text must follow it", pictures[-1][1])
    return lay_out(parts)


def fit(runner: Runner, text: str, *, num_keep: int, truncate: bool, shift: bool, pictures: Pictures,
        max_pixels: int) -> tuple[list[int], Images, int]:
    """(tokens, images, tokens dropped): the prompt fitted into the context window. Too long, it keeps its first
    `num_keep` tokens and its tail, unless `truncate` is off (400) or `shift` is (400: generation could not go
    on). A prompt with images is never truncated (as in Ollama): too long, it is refused."""
    n_ctx = runner.n_ctx
    if pictures:
        tokens, placed = with_images(runner, text, pictures, max_pixels)
        if len(tokens) >= n_ctx:
            raise GenerateError(Kind.CONTEXT_TOO_LONG, CONTEXT_EXCEEDED, "prompt")
        return tokens, placed, 0
    tokens = of_text(runner, text)
    if len(tokens) < n_ctx:
        return tokens, {}, 0
    if not truncate:
        raise GenerateError(Kind.CONTEXT_TOO_LONG, CONTEXT_EXCEEDED, "prompt")
    if not shift:
        raise GenerateError(Kind.CONTEXT_TOO_LONG, PROMPT_TOO_LONG, "prompt")
    keep = min(max(num_keep, 0) if num_keep >= 0 else n_ctx // 2, n_ctx // 2)
    tail = (n_ctx - keep) // 2
    kept = tokens[:keep] + tokens[len(tokens) - tail:]
    log.info("truncating input prompt: %d tokens to %d (num_ctx %d)", len(tokens), len(kept), n_ctx)
    return kept, {}, len(tokens) - len(kept)
