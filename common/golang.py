"""Go behaviours that Ollama's API exposes: time.ParseDuration and strconv.Quote (%q).

Ollama is written in Go, so its error texts and duration strings follow Go's rules;
matching them keeps clients that branch on those strings working.
"""
from __future__ import annotations

import re

_UNITS_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000,
             "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000}
_PART = re.compile(r"([0-9]*(?:\.[0-9]*)?)([^0-9.]*)")


def quote(text: str, ascii_only: bool = False) -> str:
    """Go's strconv.Quote (or, with ascii_only, QuoteToASCII): a double-quoted literal with Go's escapes."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch == '"' or ch == "\\":
            out.append("\\" + ch)
        elif ch.isprintable() and (code < 0x80 or not ascii_only):
            out.append(ch)
        elif ch in "\a\b\f\n\r\t\v":
            out.append("\\" + "abfnrtv"["\a\b\f\n\r\t\v".index(ch)])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append("\\ufffd")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def parse_duration(text: str) -> int:
    """Go's time.ParseDuration, in nanoseconds; raises ValueError with Go's message."""
    orig = text
    invalid = ValueError(f"time: invalid duration {quote(orig)}")
    sign = 1
    if text[:1] in "+-" and text:
        sign = -1 if text[0] == "-" else 1
        text = text[1:]
    if text == "0":
        return 0
    if not text:
        raise invalid
    total = 0.0
    while text:
        match = _PART.match(text)
        assert match is not None          # the pattern matches any text (both groups may be empty)
        number, unit = match.group(1), match.group(2)
        if number in ("", "."):
            raise invalid
        if not unit:
            raise ValueError(f"time: missing unit in duration {quote(orig)}")
        # The unit runs up to the next digit or dot.
        if unit not in _UNITS_NS:
            raise ValueError(f"time: unknown unit {quote(unit)} in duration {quote(orig)}")
        total += float(number) * _UNITS_NS[unit]
        text = text[match.end():]
    if total > 2**63 - 1:
        raise invalid
    return sign * int(round(total))
