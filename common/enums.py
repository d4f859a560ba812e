"""The contract's enums by the names the JSON APIs use, built from the proto descriptors (never copied by hand).

THINK_LEVELS["low"] is ThinkLevel.THINK_LEVEL_LOW, THINK_LEVEL_NAMES[THINK_LEVEL_LOW] is "low"; the same for
DoneReason. The UNSPECIFIED zero values have no name.
"""
from __future__ import annotations

from typing import Any

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from gengate.v1 import generate_pb2 as pb


def _names(enum: EnumTypeWrapper, prefix: str) -> dict[int, str]:
    return {v.number: v.name.removeprefix(prefix).lower() for v in enum.DESCRIPTOR.values if v.number}


THINK_LEVEL_NAMES: dict[int, str] = _names(pb.ThinkLevel, "THINK_LEVEL_")
THINK_LEVELS: dict[str, Any] = {name: number for number, name in THINK_LEVEL_NAMES.items()}   # name → ThinkLevel
DONE_REASON_NAMES: dict[int, str] = _names(pb.DoneReason, "DONE_REASON_")
DONE_REASONS: dict[str, Any] = {name: number for number, name in DONE_REASON_NAMES.items()}


def _option_kind(field: Any) -> str:
    if field.is_repeated:
        return "strings"
    if field.type == field.TYPE_BOOL:
        return "boolean"
    if field.type in (field.TYPE_FLOAT, field.TYPE_DOUBLE):
        return "number"
    return "integer"


# Each option's JSON type ("integer", "number", "boolean", "strings"), and the integer options' bounds.
OPTION_KINDS: dict[str, str] = {f.name: _option_kind(f) for f in pb.Options.DESCRIPTOR.fields}
OPTION_BOUNDS: dict[str, tuple[int, int]] = {
    f.name: ((-(2**63), 2**63 - 1) if f.type in (f.TYPE_INT64, f.TYPE_SINT64) else (-(2**31), 2**31 - 1))
    for f in pb.Options.DESCRIPTOR.fields if OPTION_KINDS[f.name] == "integer"}
