"""llama.cpp's grammar language (GBNF) for `format`: its JSON grammar, and a JSON Schema converted to GBNF and checked
by llama.cpp's own parser. The conversion runs in a worker process (service.generation.grammar bounds it); this
module is that worker.

What the grammar lets into a JSON string is what JSON allows there, as in llama.cpp's own converter: a character
that is not a quote, a backslash or a control character (U+0000-U+001F, U+007F), or an escape. llama-cpp-python's
converter lets control characters into its `char` rule (a reply then holds raw newlines that json.loads refuses),
and a `pattern` becomes character classes and literals that may hold any of the three: `json_safe` rewrites its
output so that every string rule is JSON's (classes lose the unsafe characters, literals write them escaped).
"""
from __future__ import annotations

import json
import re
import sys
from typing import Any

import llama_cpp  # loaded before the worker's address-space cap: the cap is the conversion's
from llama_cpp import llama_grammar
from llama_cpp.llama_grammar import JSON_GBNF

from service import workers

JSON_GRAMMAR = JSON_GBNF
# The converter writes a constant (an enum value, a property name) as a GBNF literal of its JSON text, escaping
# quotes and line breaks but not backslashes: "q\"u" became a grammar llama.cpp cannot parse, "a\nb" a raw
# newline. Backslashes are escaped too.
llama_grammar.GRAMMAR_LITERAL_ESCAPE_RE = re.compile(r'[\r\n"\\]')
llama_grammar.GRAMMAR_LITERAL_ESCAPES = {**llama_grammar.GRAMMAR_LITERAL_ESCAPES, "\\": "\\\\"}
MAX_GRAMMAR_BYTES = 256 << 10        # the GBNF text (llama.cpp parses ~2 MB/s, for every request using it)


# A string character as JSON has it (llama.cpp's json-schema-to-grammar).
_CHAR = r'char ::= [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])'
_UNSAFE = [(0x00, 0x1F), (0x22, 0x22), (0x5C, 0x5C), (0x7F, 0x7F)]       # control characters, '"', '\\'
_ESCAPES = {"n": 0x0A, "r": 0x0D, "t": 0x09, "\\": 0x5C, "]": 0x5D, "[": 0x5B, "-": 0x2D, "^": 0x5E, '"': 0x22}
_JSON_ESCAPES = {0x08: "b", 0x0C: "f", 0x0A: "n", 0x0D: "r", 0x09: "t", 0x22: '"', 0x5C: "\\"}


def _class_items(body: str) -> tuple[bool, list[tuple[int, int]]]:
    """A GBNF character class's inside: (negated, code point ranges)."""
    negated = body.startswith("^")
    i = 1 if negated else 0
    points: list[int | None] = []            # None: the dash of a range
    while i < len(body):
        c = body[i]
        if c == "\\":
            e = body[i + 1]
            width = {"x": 2, "u": 4, "U": 8}.get(e, 0)
            points.append(int(body[i + 2:i + 2 + width], 16) if width else _ESCAPES.get(e, ord(e)))
            i += 2 + width
        elif c == "-" and points and points[-1] is not None and i + 1 < len(body):
            points.append(None)
            i += 1
        else:
            points.append(ord(c))
            i += 1
    ranges, k = [], 0
    while k < len(points):
        low = points[k]
        if k + 2 < len(points) and points[k + 1] is None and low is not None and points[k + 2] is not None:
            ranges.append((low, points[k + 2]))
            k += 3
        else:
            ranges.append((ord("-") if low is None else low,) * 2)
            k += 1
    return negated, ranges  # type: ignore[return-value]


def _code(point: int) -> str:
    return f"\\x{point:02X}" if point < 0x100 else f"\\u{point:04X}" if point < 0x10000 else f"\\U{point:08X}"


def _subtract(ranges: list[tuple[int, int]], cut: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out = []
    for low, high in ranges:
        pieces = [(low, high)]
        for a, b in cut:
            pieces = [p for lo, hi in pieces for p in ((lo, min(hi, a - 1)), (max(lo, b + 1), hi)) if p[0] <= p[1]]
        out += pieces
    return out


def _safe_class(match: re.Match) -> str:
    negated, ranges = _class_items(match.group(1))
    if negated == (_subtract(_UNSAFE, ranges) == []) if negated else _subtract(ranges, _UNSAFE) == ranges:
        return match.group(0)                                    # already safe
    if negated:
        ranges = ranges + _UNSAFE
        return "[^" + "".join(_code(a) if a == b else f"{_code(a)}-{_code(b)}" for a, b in ranges) + "]"
    ranges = _subtract(ranges, _UNSAFE)
    if not ranges:
        return "[^\\x00-\\U0010FFFF]"                          # nothing: a class no character matches
    return "[" + "".join(_code(a) if a == b else f"{_code(a)}-{_code(b)}" for a, b in ranges) + "]"


def _safe_literal(match: re.Match) -> str:
    """A literal inside a string: its control characters, quotes and backslashes written as JSON escapes."""
    text, out, i = match.group(1), [], 0
    while i < len(text):
        if text[i] == "\\":
            e = text[i + 1]
            width = {"x": 2, "u": 4, "U": 8}.get(e, 0)
            point = int(text[i + 2:i + 2 + width], 16) if width else _ESCAPES.get(e, ord(e))
            i += 2 + width
        else:
            point = ord(text[i])
            i += 1
        if point in _JSON_ESCAPES:
            escaped = "\\" + _JSON_ESCAPES[point]
        elif point < 0x20 or point == 0x7F:
            escaped = f"\\u{point:04x}"
        else:
            escaped = chr(point)
        out.append(escaped.replace("\\", "\\\\").replace('"', '\\"'))      # as a GBNF literal writes it
    return '"' + "".join(out) + '"'


def _pieces(body: str) -> list[tuple[str, str]]:
    """A rule's body as ("literal" | "class" | "other", text) pieces, each literal and class whole (a quote inside
    a class, a bracket inside a literal, an escaped one inside either)."""
    out: list[tuple[str, str]] = []
    i, start = 0, 0
    while i < len(body):
        c = body[i]
        if c in "\"[":
            if start < i:
                out.append(("other", body[start:i]))
            close = '"' if c == '"' else "]"
            j = i + 1
            while j < len(body) and body[j] != close:
                j += 2 if body[j] == "\\" else 1
            out.append(("literal" if c == '"' else "class", body[i:j + 1]))
            i = start = j + 1
        else:
            i += 1
    if start < len(body):
        out.append(("other", body[start:]))
    return out


def _rewrite(body: str, literals: bool) -> str:
    """Classes made safe; with `literals`, literals too."""
    out = []
    for kind, text in _pieces(body):
        if kind == "class":
            text = _safe_class(_CLASS.fullmatch(text))                 # type: ignore[arg-type]
        elif kind == "literal" and literals:
            text = _safe_literal(_LITERAL.fullmatch(text))             # type: ignore[arg-type]
        out.append(text)
    return "".join(out)


_CLASS = re.compile(r"\[((?:\\.|[^\]\\])*)\]")
_LITERAL = re.compile(r'"((?:\\.|[^"\\])*)"')


def json_safe(grammar: str) -> str:
    """The grammar with every JSON string rule JSON's own (see the module docstring). The `char` and `dot` rules
    are replaced; every character class loses the unsafe characters (the classes of numbers and the other
    structural rules hold none); the rules a `pattern` became (a rule between the quote literals of a string,
    and its numbered sub-rules) write unsafe characters of their literals as JSON escapes."""
    rules = [line.partition(" ::= ") for line in grammar.splitlines()]
    patterns = {name for name, sep, body in rules if sep and name != "string" and body.startswith('"\\"" ')
                and body.rstrip().endswith('"\\"" space')}
    lines = []
    for name, sep, body in rules:
        if name == "char":
            lines.append(_CHAR)
        elif name == "dot":
            lines.append(r'dot ::= [^"\\\x7F\x00-\x1F]')
        elif not sep:
            lines.append(name)
        elif name in patterns:
            start, end = len('"\\"" '), body.rstrip().rindex('"\\""')
            lines.append(f"{name} ::= {body[:start]}{_rewrite(body[start:end], True)}{body[end:]}")
        else:
            family = name.rsplit("-", 1)[0] if name.rsplit("-", 1)[-1].isdigit() else name
            lines.append(f"{name} ::= {_rewrite(body, family in patterns)}")
    return "\n".join(lines) + ("\n" if grammar.endswith("\n") else "")


def call_or_text(call_grammar: str) -> str:
    """A grammar for a reply that is either a call (what `call_grammar` matches, its leading whitespace allowed)
    or text that does not start with `{` (the generic tool format: a call is the whole reply)."""
    renamed = re.sub(r"(?m)^root ::=", "gengate-call ::=", call_grammar)
    renamed = re.sub(r"(?<![\w-])root(?![\w-])", "gengate-call", renamed.replace("gengate-call ::=", "\0"))
    renamed = renamed.replace("\0", "gengate-call ::=")
    return (renamed.rstrip("\n") + "\n" + r'root ::= [ \t\n]* (gengate-call | gengate-text)' + "\n"
            + r'gengate-text ::= [^{ \t\n] [^\x00]*' + "\n")


_SHORTHANDS = {"d": "0-9", "w": "A-Za-z0-9_", "s": " \\t\\n\\r"}


def expand_shorthands(pattern: str) -> str:
    """`\\d`, `\\w`, `\\s` (and `\\D`, `\\W`, `\\S`) as the character classes they stand for: llama-cpp-python's
    converter reads them as the letters."""
    out, i, in_class = [], 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            e = pattern[i + 1]
            if e.lower() in _SHORTHANDS:
                inner = _SHORTHANDS[e.lower()]
                out.append(inner if in_class and e.islower() else f"[{'^' if e.isupper() else ''}{inner}]")
            else:
                out.append(pattern[i:i + 2])
            i += 2
            continue
        if c == "[" and not in_class:
            in_class = True
        elif c == "]" and in_class:
            in_class = False
        out.append(c)
        i += 1
    return "".join(out)


def _with_expanded_patterns(schema: Any) -> Any:
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if isinstance(node.get("pattern"), str):
                node["pattern"] = expand_shorthands(node["pattern"])
            stack.extend(v for v in node.values() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend(v for v in node if isinstance(v, (dict, list)))
    return schema


# -- integer ranges (llama-cpp-python's converter ignores minimum and maximum) ---------------------------------
MAX_DIGITS = 16                      # as the converter's integral-part


def _same_length(low: str, high: str) -> list[str]:
    """GBNF sequences for the numbers from `low` to `high`, two digit strings of one length."""
    if low == high:
        return [f'"{low}"']
    if len(low) == 1:
        return [f"[{low}-{high}]"]
    rest = len(low) - 1
    if low[0] == high[0]:
        return [f'"{low[0]}" {tail}' for tail in _same_length(low[1:], high[1:])]
    if low[1:] == "0" * rest and high[1:] == "9" * rest:
        return [f"[{low[0]}-{high[0]}]" + " [0-9]" * rest]
    out = [f'"{low[0]}" {tail}' for tail in _same_length(low[1:], "9" * rest)]
    if int(high[0]) - int(low[0]) > 1:
        out.append(f"[{int(low[0]) + 1}-{int(high[0]) - 1}]" + " [0-9]" * rest)
    out += [f'"{high[0]}" {tail}' for tail in _same_length("0" * rest, high[1:])]
    return out


def _range(low: int, high: int) -> list[str]:
    """GBNF sequences for the whole numbers from `low` to `high` (0 <= low), without leading zeros."""
    out: list[str] = []
    while low <= high:
        top = min(high, 10 ** len(str(low)) - 1)
        out += _same_length(str(low), str(top))
        low = top + 1
    return out


def _at_least(low: int) -> list[str]:
    """GBNF sequences for the whole numbers from `low` (>= 0) up, at most MAX_DIGITS digits."""
    digits = len(str(low))
    optional = ""
    for _ in range(MAX_DIGITS - digits - 1):        # nested, one stack each (see grammar.pattern_problem)
        optional = f" ([0-9]{optional})?"
    longer = [f"[1-9]{' [0-9]' * digits}{optional}"] if digits < MAX_DIGITS else []
    return _range(low, 10 ** digits - 1) + longer


def integer_rule(schema: dict[str, Any]) -> str | None:
    """A GBNF rule body for an integer schema's range (minimum, maximum and their exclusive forms), or None
    when it has none."""
    low, high = schema.get("minimum"), schema.get("maximum")
    if isinstance(schema.get("exclusiveMinimum"), (int, float)) and not isinstance(schema["exclusiveMinimum"], bool):
        low = max(low, schema["exclusiveMinimum"] + 1) if low is not None else schema["exclusiveMinimum"] + 1
    if isinstance(schema.get("exclusiveMaximum"), (int, float)) and not isinstance(schema["exclusiveMaximum"], bool):
        high = min(high, schema["exclusiveMaximum"] - 1) if high is not None else schema["exclusiveMaximum"] - 1
    if low is None and high is None:
        return None
    import math
    low = None if low is None else math.ceil(low)
    high = None if high is None else math.floor(high)
    limit = 10 ** MAX_DIGITS - 1
    alternatives: list[str] = []
    if low is None or low < 0:                         # negative numbers: "-" and their absolute values
        top = limit if low is None else -low
        bottom = 1 if high is None or high >= 0 else -high
        alternatives += [f'"-" {x}' for x in _range(bottom, top)] if bottom <= top else []
    if high is None or high >= 0:
        start = 0 if low is None or low < 0 else low
        alternatives += _at_least(start) if high is None else _range(start, high)
    return "(" + " | ".join(alternatives or ['"0" "x"']) + ") space"     # an empty range matches nothing


class _Converter(llama_grammar.SchemaConverter):
    def visit(self, schema, name):
        if isinstance(schema, dict) and schema.get("type") == "integer" and "$ref" not in schema:
            body = integer_rule(schema)
            if body is not None:
                rule_name = name + "-" if name in llama_grammar.RESERVED_NAMES else name or "root"
                self._add_rule("space", llama_grammar.SPACE_RULE)
                return self._add_rule(rule_name, body)
        return super().visit(schema, name)


def _schema_to_gbnf(schema: Any) -> str:
    """llama-cpp-python's json_schema_to_gbnf, with integer ranges."""
    converter = _Converter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    schema = converter.resolve_refs(schema, "stdin")
    converter.visit(schema, "")
    return converter.format_grammar()


def _convert(schema_text: str) -> str:
    """In the worker: the schema's GBNF, checked by llama.cpp's parser (ValueError if it cannot be)."""
    try:
        grammar = json_safe(_schema_to_gbnf(_with_expanded_patterns(json.loads(schema_text))))
    except MemoryError:
        raise
    except Exception as exc:   # noqa: BLE001   (the converter raises assorted errors on schemas it cannot express)
        raise ValueError(f"invalid JSON schema in format: {exc}") from None
    if len(grammar) > MAX_GRAMMAR_BYTES:
        raise ValueError(f"format: the schema makes a grammar of {len(grammar)} bytes, over the limit of "
                         f"{MAX_GRAMMAR_BYTES}")
    sampler = llama_cpp.llama_sampler_init_grammar(None, grammar.encode("utf-8"), b"root")
    if not sampler:
        raise ValueError("invalid JSON schema in format")
    llama_cpp.llama_sampler_free(sampler)
    return grammar


def _handle(request: dict[str, Any]) -> dict[str, Any]:
    try:
        return {"grammar": _convert(request["schema"])}
    except ValueError as exc:
        return {"error": str(exc)}


def main() -> None:
    """`python -m service.engines.schema_grammar MEMORY_BYTES`: converts schemas ({"schema": ...} → {"grammar": ...}
    or {"error": ...}), with MEMORY_BYTES of address space over what its code takes (service.workers)."""
    workers.serve(_handle, int(sys.argv[1]))


if __name__ == "__main__":
    main()
