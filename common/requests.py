"""Request defaults both processes apply the same way (the gateway to frame a reply, the service to produce it,
the CLI to ask): whether a request streams, and what its `keep_alive` says."""
from __future__ import annotations

import math
from typing import Any

from common import golang

# Longer than google.protobuf.Duration spans (±10 000 years): a keep_alive this long means "forever" anyway.
MAX_DURATION_NS = 315_576_000_000 * 1_000_000_000


def streams(request: Any) -> bool:
    """Whether a request's replies stream: its `stream`, true when it does not say (Ollama's default)."""
    return request.stream if request.HasField("stream") else True


def keep_alive_ns(value: Any, *, whole_seconds: bool = False) -> int | None:
    """A `keep_alive` as Ollama reads it, in nanoseconds (negative: forever): a number of seconds or a Go duration
    string ("5m", "-1s"), clamped to what a protobuf Duration holds; with `whole_seconds` (OLLAMA_KEEP_ALIVE's
    rule, for GENGATE_KEEP_ALIVE) a string of a whole number of seconds ("300") too. ValueError with Go's words
    for another string; TypeError for another type; None for None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(type(value).__name__)
    if isinstance(value, str):
        try:
            ns = golang.parse_duration(value)
        except ValueError:
            if not (whole_seconds and value.strip().lstrip("+-").isdigit()):
                raise
            ns = int(value) * 1_000_000_000
    elif math.isfinite(value * 1e9):
        ns = int(value * 1_000_000_000)
    else:
        ns = MAX_DURATION_NS if value > 0 else -MAX_DURATION_NS
    return int(max(-MAX_DURATION_NS, min(MAX_DURATION_NS, ns)))

