"""Reads GGUF files without loading weights: their metadata, and a check that their tensor table is sound.

llama.cpp trusts a GGUF's tensor table; a crafted file with offsets or sizes past its end reads out of bounds
(the CVE-2026-7482 class). Files that come from clients (blob uploads, create) are checked here first.

Reading is bounded by the file itself: every string and array length is checked against the bytes that remain
before anything is read or walked (an array of fixed-size values is skipped in one seek), arrays nest at most
MAX_NESTING deep, and at most MAX_WALKED variable-size values (strings, arrays) are walked in all. A file whose
metadata cannot fit in its size is a GGUFError at once, whatever it declares.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any, BinaryIO

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_SIZES = {kind: struct.calcsize(fmt) for kind, fmt in _SCALARS.items()}
_STRING, _ARRAY = 8, 9
# The fewest bytes one value of a kind takes (a string: its length; an array: its type and count).
_MIN_SIZE = {**_SIZES, _STRING: 8, _ARRAY: 12}
# Arrays longer than this (token lists, merges) are summarised by their length.
_MAX_ARRAY = 64
MAX_STRING = 1 << 26                 # one metadata string
MAX_NESTING = 4                      # arrays of arrays
MAX_WALKED = 1 << 22                 # strings and arrays walked in one file (a 256k vocabulary and its merges fit)
MAX_KEYS = 1 << 16                   # metadata keys
# The full licence text a converted checkpoint carries (GGUF's general.license is only an SPDX id): the blob holds
# its own licence, so a catalog pull finds it whatever else the store holds. Shown as /api/show's `license`.
LICENSE_TEXT = "gengate.license.text"


class GGUFError(ValueError):
    """The file is not a readable GGUF file."""


class _Reader:
    """A GGUF file read front to back, every length checked against the bytes left."""

    def __init__(self, f: BinaryIO, size: int):
        self.f = f
        self.size = size
        self.walked = 0

    def left(self) -> int:
        return self.size - self.f.tell()

    def need(self, n: int, what: str) -> None:
        if n > self.left():
            raise GGUFError(f"GGUF {what} runs past the end of the file")

    def read(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        data = self.f.read(size)
        if len(data) != size:
            raise GGUFError("truncated GGUF metadata")
        return struct.unpack(fmt, data)[0]

    def string(self, limit: int = MAX_STRING) -> str:
        length = self.read("<Q")
        if length > limit:
            raise GGUFError("GGUF string too long")
        self.need(length, "string")
        return self.f.read(length).decode("utf-8", errors="replace")

    def _walk(self) -> None:
        self.walked += 1
        if self.walked > MAX_WALKED:
            raise GGUFError("GGUF metadata has too many values")

    def value(self, kind: int, depth: int = 0) -> Any:
        if kind == 6:
            return _f32(self.read("<f"))
        if kind in _SCALARS:
            return self.read(_SCALARS[kind])
        if kind == _STRING:
            self._walk()
            return self.string()
        if kind == _ARRAY:
            self._walk()
            if depth >= MAX_NESTING:
                raise GGUFError("GGUF arrays nested too deep")
            item_kind, count = self.read("<I"), self.read("<Q")
            if item_kind not in _MIN_SIZE:
                raise GGUFError(f"unknown GGUF value type {item_kind}")
            if count > self.left() // _MIN_SIZE[item_kind]:
                raise GGUFError("GGUF array runs past the end of the file")
            if count <= _MAX_ARRAY:
                return [self.value(item_kind, depth + 1) for _ in range(count)]
            if item_kind in _SIZES:
                self.f.seek(count * _SIZES[item_kind], os.SEEK_CUR)
            else:
                for _ in range(count):
                    self.skip(item_kind, depth + 1)
            return {"array_length": count}
        raise GGUFError(f"unknown GGUF value type {kind}")

    def skip(self, kind: int, depth: int) -> None:
        if kind == _STRING:
            self._walk()
            length = self.read("<Q")
            self.need(length, "string")
            self.f.seek(length, os.SEEK_CUR)
        else:
            self.value(kind, depth)

    def header(self) -> tuple[int, int]:
        """(tensor count, metadata key count), after the magic and version."""
        if self.f.read(4) != b"GGUF":
            raise GGUFError("not a GGUF file")
        version = self.read("<I")
        if version < 2:
            raise GGUFError(f"unsupported GGUF version {version}")
        n_tensors, n_kv = self.read("<Q"), self.read("<Q")
        if n_kv > MAX_KEYS or n_kv > self.left() // (8 + 4):
            raise GGUFError("GGUF metadata runs past the end of the file")
        return n_tensors, n_kv

    def metadata(self, n_kv: int, whole: frozenset[str] = frozenset()) -> dict[str, Any]:
        """The key/value pairs; the arrays of the keys in `whole` are read whole, however long."""
        out: dict[str, Any] = {}
        for _ in range(n_kv):
            key = self.string()
            kind = self.read("<I")
            out[key] = self.array() if key in whole and kind == _ARRAY else self.value(kind)
        return out

    def array(self) -> list[Any]:
        """An array of scalars or strings, every value (each walked, so MAX_WALKED bounds it)."""
        self._walk()
        item_kind, count = self.read("<I"), self.read("<Q")
        if item_kind not in _MIN_SIZE or item_kind == _ARRAY:
            raise GGUFError(f"unexpected GGUF array of type {item_kind}")
        if count > self.left() // _MIN_SIZE[item_kind]:
            raise GGUFError("GGUF array runs past the end of the file")
        return [self.value(item_kind, 1) for _ in range(count)]


def _f32(value: float) -> float:
    """A float32 as the shortest decimal that reads back as it (Go prints it so: 1e-05, not 9.99999974e-06)."""
    packed = struct.pack("<f", value)
    for digits in range(1, 10):
        short = float(f"{value:.{digits}g}")
        if struct.pack("<f", short) == packed:
            return short
    return value


def read_metadata(path: str | Path, whole: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The GGUF key/value pairs; long arrays become {"array_length": n}, but for the keys in `whole`. Reads the
    file (slow for a crafted one: call it off the event loop)."""
    with open(path, "rb") as f:
        reader = _Reader(f, os.fstat(f.fileno()).st_size)
        _, n_kv = reader.header()
        return reader.metadata(n_kv, whole)


MAX_TENSORS = 1 << 20
MAX_TENSOR_NAME = 256                # bytes (ggml's own limit is 64)


def check_tensors(path: str | Path) -> list[str]:
    """The names of the file's tensors; GGUFError unless every tensor has a known type, 1 to 4 positive
    dimensions, and data that lies inside the file."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        reader = _Reader(f, size)
        n_tensors, n_kv = reader.header()
        if n_tensors > MAX_TENSORS or n_tensors > reader.left() // (8 + 4 + 8 + 4 + 8):
            raise GGUFError("too many tensors")
        alignment = reader.metadata(n_kv).get("general.alignment", 32)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise GGUFError("bad alignment")
        tensors = []
        for _ in range(n_tensors):
            name, n_dims = reader.string(MAX_TENSOR_NAME), reader.read("<I")
            if not 1 <= n_dims <= 4:
                raise GGUFError(f"tensor {name}: {n_dims} dimensions")
            dims = [reader.read("<Q") for _ in range(n_dims)]
            kind, offset = reader.read("<I"), reader.read("<Q")
            try:
                block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
            except (ValueError, KeyError):
                raise GGUFError(f"tensor {name}: unknown type {kind}") from None
            count = 1
            for d in dims:
                if d <= 0 or d > 1 << 40:
                    raise GGUFError(f"tensor {name}: bad dimension {d}")
                count *= d
            if dims[0] % block:
                raise GGUFError(f"tensor {name}: rows not a whole number of blocks")
            tensors.append((name, offset, count // block * type_size))
        data = f.tell()
        data += -data % alignment
        for name, offset, nbytes in tensors:
            if offset % alignment or data + offset + nbytes > size:
                raise GGUFError(f"tensor {name}: data outside the file")
        return [name for name, _, _ in tensors]


def kind_of(metadata: dict[str, Any]) -> str:
    """What a GGUF holds: "model", "adapter" (LoRA) or "projector" (a vision encoder)."""
    general = str(metadata.get("general.type", "model")).lower()
    if general in ("projector", "mmproj") or metadata.get("general.architecture") == "clip":
        return "projector"
    return "adapter" if general == "adapter" else "model"
