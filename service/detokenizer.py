"""Turns a stream of token bytes into text that is safe to emit.

Two things are held back until they resolve: bytes of a UTF-8 character split across
tokens (never emitted broken), and text that may be the start of a stop sequence (a
stop sequence never appears in the output).
"""
from __future__ import annotations

import codecs
from typing import Sequence


class Detokenizer:
    def __init__(self, stop: Sequence[str] = ()):
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = [s for s in stop if s]
        self._pending = ""
        self.stopped = False

    def feed(self, data: bytes) -> str:
        """Adds a token's bytes; returns the text that can be emitted now.

        When a stop sequence completes, returns the text before it and sets `stopped`.
        """
        self._pending += self._utf8.decode(data)
        hits = [i for i in (self._pending.find(s) for s in self._stop) if i >= 0]
        if hits:
            out, self._pending, self.stopped = self._pending[:min(hits)], "", True
            return out
        hold = 0
        for stop in self._stop:
            for n in range(min(len(stop) - 1, len(self._pending)), hold, -1):
                if self._pending.endswith(stop[:n]):
                    hold = n
                    break
        cut = len(self._pending) - hold
        out, self._pending = self._pending[:cut], self._pending[cut:]
        return out

    def flush(self) -> str:
        """The text still held back, at the end of generation."""
        if self.stopped:
            return ""
        out = self._pending + self._utf8.decode(b"", final=True)
        self._pending = ""
        return out
