"""Reads the metadata (key/value) section of a GGUF file without loading weights."""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, BinaryIO

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
# Arrays longer than this (token lists, merges) are summarised by their length.
_MAX_ARRAY = 64


class GGUFError(ValueError):
    """The file is not a readable GGUF file."""


def _read(f: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise GGUFError("truncated GGUF metadata")
    return struct.unpack(fmt, data)[0]


def _string(f: BinaryIO) -> str:
    length = _read(f, "<Q")
    if length > 1 << 26:
        raise GGUFError("GGUF string too long")
    data = f.read(length)
    if len(data) != length:
        raise GGUFError("truncated GGUF metadata")
    return data.decode("utf-8", errors="replace")


def _value(f: BinaryIO, kind: int) -> Any:
    if kind in _SCALARS:
        return _read(f, _SCALARS[kind])
    if kind == _STRING:
        return _string(f)
    if kind == _ARRAY:
        item_kind, count = _read(f, "<I"), _read(f, "<Q")
        if count > 1 << 32:
            raise GGUFError("GGUF array too long")
        if count > _MAX_ARRAY:
            for _ in range(count):
                _skip(f, item_kind)
            return {"array_length": count}
        return [_value(f, item_kind) for _ in range(count)]
    raise GGUFError(f"unknown GGUF value type {kind}")


def _skip(f: BinaryIO, kind: int) -> None:
    if kind in _SCALARS:
        f.seek(struct.calcsize(_SCALARS[kind]), 1)
    elif kind == _STRING:
        f.seek(_read(f, "<Q"), 1)
    else:
        _value(f, kind)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The GGUF key/value pairs; long arrays become {"array_length": n}."""
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise GGUFError("not a GGUF file")
        version = _read(f, "<I")
        if version < 2:
            raise GGUFError(f"unsupported GGUF version {version}")
        _read(f, "<Q")  # tensor count
        count = _read(f, "<Q")
        return {_string(f): _value(f, _read(f, "<I")) for _ in range(count)}
