"""Splits a thinking model's output into `thinking` and `response`: what its template opens as a thinking block
(`<think>`) until the block closes is thinking, the rest the response.

A model can think when its template marks a thinking block with an opening and a
closing tag (e.g. <think>…</think>). Text inside the block is thinking; text after
the closing tag is the response. Tags split across pieces are held back until known.
"""
from __future__ import annotations

_TAG_PAIRS = (("<think>", "</think>"), ("<thinking>", "</thinking>"), ("<|think|>", "<|/think|>"))


def thinking_tags(template: str) -> tuple[str, str] | None:
    """The (open, close) tags a template declares, or None if the model cannot think."""
    for open_tag, close_tag in _TAG_PAIRS:
        if open_tag in template and close_tag in template:
            return open_tag, close_tag
    return None


class ThinkingParser:
    def __init__(self, open_tag: str, close_tag: str, *, starts_inside: bool = False):
        self._open, self._close = open_tag, close_tag
        # before: output may still open a block; inside: thinking; after: response.
        self._state = "inside" if starts_inside else "before"
        self._buffer = ""
        self._trim = False          # drop whitespace right after the closing tag

    def feed(self, text: str) -> tuple[str, str]:
        """Adds output text; returns (thinking, response) that can be emitted now."""
        self._buffer += text
        thinking, response = [], []
        while self._buffer:
            if self._state == "before":
                stripped = self._buffer.lstrip()
                if stripped.startswith(self._open):
                    self._buffer = stripped[len(self._open):].lstrip()
                    self._state = "inside"
                elif self._open.startswith(stripped):
                    break                               # could still become the opening tag
                else:
                    self._state = "after"
            elif self._state == "inside":
                end = self._buffer.find(self._close)
                if end >= 0:
                    thinking.append(self._buffer[:end])
                    self._buffer = self._buffer[end + len(self._close):]
                    self._state, self._trim = "after", True
                else:
                    keep = _partial_suffix(self._buffer, self._close)
                    thinking.append(self._buffer[:len(self._buffer) - keep])
                    self._buffer = self._buffer[len(self._buffer) - keep:]
                    break
            else:
                if self._trim:
                    self._buffer = self._buffer.lstrip()
                    self._trim = not self._buffer
                response.append(self._buffer)
                self._buffer = ""
        return "".join(thinking), "".join(response)

    def flush(self) -> tuple[str, str]:
        """What is held back at the end of generation."""
        rest, self._buffer = self._buffer, ""
        return (rest, "") if self._state == "inside" else ("", rest)


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0



