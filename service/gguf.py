"""Reads GGUF files without loading weights: their metadata, and a check that their tensor table is sound.

llama.cpp trusts a GGUF's tensor table; a crafted file with offsets or sizes past its end reads out of bounds
(the CVE-2026-7482 class). Files that come from clients (blob uploads, create) are checked here first.
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, BinaryIO

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
# Arrays longer than this (token lists, merges) are summarised by their length.
_MAX_ARRAY = 64
# The full licence text a converted checkpoint carries (GGUF's general.license is only an SPDX id): the blob holds
# its own licence, so a catalog pull finds it whatever else the store holds. Shown as /api/show's `license`.
LICENSE_TEXT = "gengate.license.text"


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


def _f32(value: float) -> float:
    """A float32 as the shortest decimal that reads back as it (Go prints it so: 1e-05, not 9.99999974e-06)."""
    packed = struct.pack("<f", value)
    for digits in range(1, 10):
        short = float(f"{value:.{digits}g}")
        if struct.pack("<f", short) == packed:
            return short
    return value


def _value(f: BinaryIO, kind: int) -> Any:
    if kind == 6:
        return _f32(_read(f, "<f"))
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


MAX_TENSORS = 1 << 20


def check_tensors(path: str | Path) -> None:
    """Raises GGUFError unless every tensor of the file has a known type, 1 to 4 positive dimensions, and data
    that lies inside the file."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    size = Path(path).stat().st_size
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise GGUFError("not a GGUF file")
        if _read(f, "<I") < 2:
            raise GGUFError("unsupported GGUF version")
        n_tensors, n_kv = _read(f, "<Q"), _read(f, "<Q")
        if n_tensors > MAX_TENSORS:
            raise GGUFError("too many tensors")
        alignment = 32
        for _ in range(n_kv):
            key, kind = _string(f), _read(f, "<I")
            value = _value(f, kind)
            if key == "general.alignment":
                alignment = value
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise GGUFError("bad alignment")
        tensors = []
        for _ in range(n_tensors):
            name, n_dims = _string(f), _read(f, "<I")
            if not 1 <= n_dims <= 4:
                raise GGUFError(f"tensor {name}: {n_dims} dimensions")
            dims = [_read(f, "<Q") for _ in range(n_dims)]
            kind, offset = _read(f, "<I"), _read(f, "<Q")
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


def kind_of(metadata: dict[str, Any]) -> str:
    """What a GGUF holds: "model", "adapter" (LoRA) or "projector" (a vision encoder)."""
    general = str(metadata.get("general.type", "model")).lower()
    if general in ("projector", "mmproj") or metadata.get("general.architecture") == "clip":
        return "projector"
    return "adapter" if general == "adapter" else "model"
