"""JSON request bodies read with Go's encoding/json rules, as Ollama reads them: only the first JSON value, object
keys matched exactly then case-insensitively (the last duplicate wins), Go's error texts (syntax errors quote the
offending byte as Go's quoteChar does; type errors name the Go struct field), integers of over 4300 digits read as
floats, lone surrogates as U+FFFD, and nesting bounded (MAX_DEPTH) before protobuf's own limit is reached. Every
dialect reads its body here."""
from __future__ import annotations

import json
import math
import re
from typing import Any

from common.golang import quote
from gateway.errors import BadRequest


# -- Go's JSON decoding -------------------------------------------------------------
def kind_of(value: Any) -> str:
    """Go's name for a JSON value's kind, as its unmarshal errors print it."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def type_error(value: Any, field: str, go_type: str, struct: str = "GenerateRequest") -> BadRequest:
    kind = kind_of(value)
    if kind == "number" and go_type.startswith("int"):
        kind = f"number {json.dumps(value)}"
    return BadRequest(f"json: cannot unmarshal {kind} into Go struct field {struct}.{field} of type {go_type}")


def _char(text: str, pos: int) -> str:
    """Go's encoding/json quoteChar: the offending byte (the first of a multi-byte character; an invalid byte,
    held as a surrogateescape code) as Go quotes it: strconv.Quote(string(rune(byte))), so 0xC3 is 'Ã'."""
    char = text[pos]
    byte = ord(char) - 0xDC00 if "\udc80" <= char <= "\udcff" else char.encode("utf-8", "surrogatepass")[0]
    if byte in b"'\"":
        return "'\\''" if byte == ord("'") else "'\"'"
    return "'" + quote(chr(byte))[1:-1] + "'"


def _syntax_error(exc: json.JSONDecodeError) -> BadRequest:
    text, pos = exc.doc, exc.pos
    if pos >= len(text) or exc.msg.startswith("Unterminated"):
        return BadRequest("unexpected EOF")
    context = {
        "Expecting value": "looking for beginning of value",
        "Expecting property name enclosed in double quotes": "looking for beginning of object key string",
        "Expecting ':' delimiter": "after object key",
        "Expecting ',' delimiter": "after object key:value pair" if _in_object(text, pos) else "after array element",
        "Invalid control character at": "in string literal",
    }.get(exc.msg, "looking for beginning of value")
    return BadRequest(f"invalid character {_char(text, pos)} {context}")


def _in_object(text: str, pos: int) -> bool:
    depth = []
    in_string = escaped = False
    for ch in text[:pos]:
        if in_string:
            escaped, in_string = (False, True) if escaped else (ch == "\\", ch != '"')
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth.append(ch)
        elif ch in "]}" and depth:
            depth.pop()
    return bool(depth) and depth[-1] == "{"


class _Pairs(list):
    """A JSON object as its key/value pairs, in order (duplicates kept)."""

_SURROGATE = re.compile("[\ud800-\udfff]")

def _float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise BadRequest(f"json: cannot unmarshal number {text} into Go value of type float64")
    return value


def _integer(text: str) -> int | float:
    """An integer literal. Python refuses to convert one of over 4300 digits; Go reads such a number as a
    float64, which overflows."""
    if len(text) > 4300:
        return _float(text)
    return int(text)


def _clean(value: Any) -> Any:
    """Lone UTF-16 surrogates (a JS string cut mid-emoji) become U+FFFD, as Go's decoder makes them."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, _Pairs):
        return _Pairs((_clean(k), _clean(v)) for k, v in value)
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value

MAX_DEPTH = 32            # objects and arrays nested in one JSON value (a body, or a JSON text inside one)

DEPTH_ERROR = "exceeded max depth"      # Go's decoder's words for it (its own limit is 10000)


def check_depth(value: Any) -> Any:
    """`value`, once known to nest objects and arrays at most MAX_DEPTH deep (BadRequest otherwise). Walked
    without recursion, before anything else (protobuf's Struct, or Python's own stack) meets it."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        items = node.values() if isinstance(node, dict) else (v for _, v in node) if isinstance(node, _Pairs) \
            else node if isinstance(node, list) else None
        if items is None:
            continue
        if depth > MAX_DEPTH:
            raise BadRequest(DEPTH_ERROR)
        stack.extend((item, depth + 1) for item in items if isinstance(item, (dict, list)))
    return value


def loads(text: str, param: str | None = None) -> Any:
    """A JSON text found inside a body (tool-call arguments), nested at most MAX_DEPTH deep (BadRequest naming
    `param` otherwise); ValueError if it is not JSON."""
    try:
        return check_depth(json.loads(text))
    except RecursionError:
        raise BadRequest(DEPTH_ERROR, param) from None
    except BadRequest:
        raise BadRequest(DEPTH_ERROR, param) from None


def _reject_constant(name: str) -> Any:
    raise json.JSONDecodeError("Expecting value", name, 0)


def decode_object(body: bytes, struct: str) -> list[tuple[str, Any]]:
    """The key/value pairs of the body's first JSON value (Go: Decoder.Decode into a struct)."""
    # An invalid byte stays itself (a surrogateescape code) until a string holding it is cleaned to U+FFFD, one
    # per byte, as Go's decoder does; an error names the byte.
    text = body.decode("utf-8", errors="surrogateescape")
    start = len(text) - len(text.lstrip(" \t\r\n"))
    if start == len(text):
        raise BadRequest("missing request body")
    decoder = json.JSONDecoder(object_pairs_hook=_Pairs, parse_constant=_reject_constant, parse_float=_float,
                               parse_int=_integer)
    try:
        value, _ = decoder.raw_decode(text, start)
        if value is None:
            return []
        value = _clean(check_depth(value))
    except RecursionError:
        # Nesting deeper than Python's stack allows (Go's decoder stops at 10000 levels, with these words).
        raise BadRequest(DEPTH_ERROR) from None
    except json.JSONDecodeError as exc:
        if exc.doc != text:  # NaN / Infinity: not JSON
            exc = json.JSONDecodeError("Expecting value", text, text.find(exc.doc, start))
        raise _syntax_error(exc) from None
    if not isinstance(value, _Pairs):
        raise BadRequest(f"json: cannot unmarshal {kind_of(plain(value))} into Go value of type api.{struct}")
    return value


def json_object(body: bytes, struct: str = "object") -> dict[str, Any]:
    """A body that must be one JSON object, as a dict (Go's decoding rules, as decode_object)."""
    try:
        return plain(_Pairs(decode_object(body, struct)))
    except RecursionError:
        raise BadRequest(DEPTH_ERROR) from None


def plain(value: Any) -> Any:
    """Undoes object_pairs_hook: pairs lists back into dicts (the last duplicate wins)."""
    if isinstance(value, _Pairs):
        return {k: plain(v) for k, v in value}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def match_fields(pairs: list[tuple[str, Any]], known: set[str]) -> dict[str, Any]:
    """Go's field matching: exact name first, else case-insensitive; unknown keys ignored."""
    lower = {k.lower(): k for k in known}
    out: dict[str, Any] = {}
    for key, value in pairs:
        name = key if key in known else lower.get(key.lower())
        if name is not None:
            try:
                out[name] = plain(value)
            except RecursionError:
                raise BadRequest(DEPTH_ERROR) from None
    return out
