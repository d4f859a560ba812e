"""Turns a stream of token bytes into text that is safe to emit.

Two things are held back until they resolve: bytes of a UTF-8 character split across
tokens (never emitted broken), and text that may be the start of a stop sequence (a
stop sequence never appears in the output).

Each stop sequence is matched by a Knuth-Morris-Pratt automaton fed one character at a
time, so a token costs its own characters times the number of stop sequences, however
long the sequences are (a quadratic search per token would let a request with long stop
sequences stall a decode step shared with other requests).
"""
from __future__ import annotations

import codecs
from collections.abc import Sequence


class _Matcher:
    """The longest prefix of `stop` that ends the text fed so far."""

    def __init__(self, stop: str):
        self.stop = stop
        self.state = 0
        # fail[i]: length of the longest proper prefix of stop[:i + 1] that is also its suffix.
        fail = [0] * len(stop)
        k = 0
        for i in range(1, len(stop)):
            while k and stop[i] != stop[k]:
                k = fail[k - 1]
            if stop[i] == stop[k]:
                k += 1
            fail[i] = k
        self.fail = fail

    def feed(self, ch: str) -> bool:
        """Advances by one character; True when the whole stop sequence was just completed."""
        stop, state = self.stop, self.state
        while state and stop[state] != ch:
            state = self.fail[state - 1]
        if stop[state] == ch:
            state += 1
        self.state = state
        return state == len(stop)


class Detokenizer:
    def __init__(self, stop: Sequence[str] = ()):
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._matchers = [_Matcher(s) for s in dict.fromkeys(stop) if s]
        self._pending = ""
        self.stopped = False
        self.matched = ""                 # the stop sequence that stopped it

    def feed(self, data: bytes) -> str:
        """Adds a token's bytes; returns the text that can be emitted now.

        When a stop sequence completes, returns the text before it and sets `stopped`.
        """
        if self.stopped:
            return ""
        text = self._utf8.decode(data)
        if not self._matchers:
            return text
        base = len(self._pending)
        self._pending += text
        for i, ch in enumerate(text):
            for matcher in self._matchers:
                if matcher.feed(ch):
                    start = base + i + 1 - len(matcher.stop)
                    out, self._pending, self.stopped, self.matched = self._pending[:start], "", True, matcher.stop
                    return out
        hold = max(m.state for m in self._matchers)
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
