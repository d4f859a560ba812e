"""Protobuf values as the JSON APIs write them, for every dialect: Struct values (tool arguments, GGUF metadata) as
the objects they stand for, timestamps as Go's RFC 3339, durations in nanoseconds."""
from __future__ import annotations

import datetime as dt
from typing import Any

from google.protobuf import json_format, struct_pb2


# -- responses ----------------------------------------------------------------------------
def whole(value: Any) -> Any:
    """A protobuf Struct's numbers are doubles: the whole ones back to integers, as they were sent (and as Go
    prints a JSON number that has no fraction)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2 ** 53:
        return int(value)
    if isinstance(value, dict):
        return {k: whole(v) for k, v in value.items()}
    if isinstance(value, list):
        return [whole(v) for v in value]
    return value


def struct_dict(value: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct (tool arguments, GGUF metadata) as the JSON object it stands for."""
    return whole(json_format.MessageToDict(value))

_second: list = [None, ""]               # the last second formatted, and its text: every streamed reply has one

def timestamp(ts) -> str:
    """RFC 3339 with nanoseconds, UTC, trailing zeros trimmed (Go's time.RFC3339Nano)."""
    if _second[0] != ts.seconds:
        _second[:] = ts.seconds, dt.datetime.fromtimestamp(ts.seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    base = _second[1]
    frac = f"{ts.nanos:09d}".rstrip("0")
    return f"{base}.{frac}Z" if frac else f"{base}Z"


def ns(duration) -> int:
    return duration.seconds * 1_000_000_000 + duration.nanos
