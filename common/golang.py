"""Go behaviours that Ollama's API exposes, in one place: strconv.Quote (%q), time.ParseDuration and
Duration.String, fmt's float formatting (%v, %g, %e, %f), %v/%#v of a decoded JSON value, and encoding/json's
string escaping.

Ollama is written in Go, so its error texts, duration strings, numbers and JSON follow Go's rules; matching them
keeps clients that branch on those strings working.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any

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


def format_duration(ns: int) -> str:
    """Go's time.Duration.String(): "1.234s", "12.5ms", "2m3.5s", "0s"."""
    if ns == 0:
        return "0s"
    sign, ns = ("-" if ns < 0 else ""), abs(ns)

    def fixed(value: int, unit: int) -> str:
        whole, frac = divmod(value, unit)
        digits = f"{frac:0{len(str(unit)) - 1}d}".rstrip("0")
        return f"{whole}.{digits}" if digits else str(whole)

    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{fixed(ns, 1_000)}µs"
    if ns < 1_000_000_000:
        return f"{sign}{fixed(ns, 1_000_000)}ms"
    hours, rest = divmod(ns, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    out = f"{hours}h" if hours else ""
    if hours or minutes:
        out += f"{minutes}m"
    return f"{sign}{out}{fixed(rest, 1_000_000_000)}s"


# -- fmt's floats --------------------------------------------------------------------------------------------------
def float_digits(f: float) -> tuple[str, int]:
    """Shortest round-trip decimal digits of |f| and the point position: |f| = 0.DIGITS × 10**dp."""
    r = repr(abs(f))
    mant, _, exp = r.partition("e")
    ip, _, fp = mant.partition(".")
    full = ip + fp
    stripped = full.lstrip("0")
    digits = stripped.rstrip("0")
    if not digits:
        return "0", 1
    dp = len(ip) + (int(exp) if exp else 0) - (len(full) - len(stripped))
    return digits, dp


def format_e_shortest(digits: str, dp: int, upper: bool = False) -> str:
    exp = dp - 1
    s = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    sign = "-" if exp < 0 else "+"
    return s + ("E" if upper else "e") + sign + f"{abs(exp):02d}"


def format_f_shortest(digits: str, dp: int) -> str:
    if dp <= 0:
        return "0." + "0" * (-dp) + digits
    if dp >= len(digits):
        return digits + "0" * (dp - len(digits))
    return digits[:dp] + "." + digits[dp:]


def format_float_body(f: float, verb: str, prec: int | None) -> str:
    """|f| formatted like strconv.FormatFloat for verb (g, G, e, E, f, F), no sign."""
    a = abs(f)
    if verb in "fF":
        return format(a, f".{6 if prec is None else prec}f")
    if verb in "eE":
        s = format(a, f".{6 if prec is None else prec}e")
        return s.upper() if verb == "E" else s
    # g / G
    if prec is not None:
        s = format(a, f".{prec}g")
        return s.upper() if verb == "G" else s
    if a == 0:
        return "0"
    # Shortest %g: strconv uses %e when the exponent is < -4 or >= 6 ("eprec = 6").
    digits, dp = float_digits(a)
    exp = dp - 1
    if exp < -4 or exp >= 6:
        return format_e_shortest(digits, dp, verb == "G")
    return format_f_shortest(digits, dp)


def format_float(f: float) -> str:
    """fmt's %v for a float64 (4096, 0.7, 1e+06, NaN): how Ollama prints a JSON number it decoded."""
    f = float(f)
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    body = format_float_body(f, "g", None)
    return ("-" if math.copysign(1.0, f) < 0 else "") + body


def format_value(value: Any, *, quoted: bool) -> str:
    """fmt's %#v (quoted) or %v of a value decoded from JSON (numbers are float64 there)."""
    if isinstance(value, str):
        return quote(value) if quoted else value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return format_float(value)
    return str(value)


# -- encoding/json -------------------------------------------------------------------------------------------------
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))     # one, not one per call (json.dumps)
_HTML = (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029"))
_SURROGATE = re.compile("[\ud800-\udfff]")


def marshal(value: Any) -> str:
    """JSON as Go's json.Marshal writes it: compact, <, >, & and U+2028/9 escaped, a lone surrogate as U+FFFD."""
    text = _ENCODER.encode(value)
    for ch, escaped in _HTML:
        if ch in text:
            text = text.replace(ch, escaped)
    if not text.isascii() and _SURROGATE.search(text):
        text = _SURROGATE.sub("\\ufffd", text)
    return text


def json_string(text: str) -> str:
    """A string as Go's json.Marshal writes it."""
    return marshal(text)
