"""A pure-Python implementation of the subset of Go's ``text/template`` that Ollama uses.

Ollama renders a model's TEMPLATE (and the ``template`` request field) with Go's
``text/template`` (``template.New("").Option("missingkey=zero").Funcs(funcs)``); this
module reproduces that engine so that gengate renders those templates byte for byte
as Ollama does, and fails with Go's error texts.

Public API::

    parse(text) -> Template           # TemplateError on a syntax error
    Template.render(data) -> str      # TemplateError on an execution error
    Template.fields() -> set[str]     # field names the template references
    Template.cut_after_response()     # Ollama's legacy-path cut (see its docstring)

Supported (the semantics of the Go release Ollama is built with, 1.24): text and
actions, trim markers (``{{- `` / `` -}}``), comments, fields (``.A.B``), ``.``,
``$``, variables (``$x := p``, ``$x = p``), ``if``/``else if``/``else``, ``range``
(lists, maps, ints as in Go 1.22+, other iterables; one or two variables; ``else``;
``break`` and ``continue``), ``with``/``else with`` (Go 1.23+)/``else``, pipelines
and parenthesised pipelines, method calls on Python objects, string/raw-string/
char/number/bool/nil literals, the builtins (and, or, not, eq, ne, lt, le, gt, ge,
len, index, slice, print, printf, println, html, js, urlquery, call) and Ollama's
functions (json, currentDate, yesterdayDate, toTypeScriptType).  Syntax and
execution errors carry Go's messages ("template: :LINE: ..." and
"template: :LINE:COL: executing "" at <NODE>: ...").  ``define``, ``template`` and
``block`` raise a TemplateError saying they are not supported by gengate, as do
complex-number constants.

How Python values stand in for Go values:

* ``dict`` (any Mapping) is a Go map; ``.Key`` looks a key up.  A missing key yields
  ``None``.  Go (with missingkey=zero on ``map[string]any``) would print
  ``<no value>`` for it, but Ollama's data are Go structs, whose absent fields are
  zero values, so here ``None`` stands for "zero value": it prints as ``""`` (also
  through print/printf's %v and %s), is false, has ``len`` 0 and ranges zero times.
  As in Go, a field of ``None`` (``.Missing.Name``) is an error ("nil pointer
  evaluating interface {}.Name").
* Ranging over a dict visits keys in sorted order (Go's map order); a
  ``collections.OrderedDict`` is visited in insertion order (like Ollama's ordered
  ToolPropertiesMap).  Printing a dict gives Go's ``map[k:v ...]`` form.
* Any other object is a Go struct: ``.Name`` reads the attribute, calling it if it is
  a method (with the command's arguments); printing uses ``str(obj)`` (Go's
  Stringer), and ``json`` uses ``obj.__json__()`` if defined (Go's MarshalJSON),
  else a dataclass's fields, else its public attributes.
* ``str`` is a Go string (``len``, ``index`` and ``slice`` work on its UTF-8
  bytes), ``int`` is Go's int, ``float`` is float64, ``bool`` is bool, and
  lists/tuples are slices.
* ``json`` writes dict keys in insertion order (Ollama marshals structs and ordered
  maps); Go would sort the keys of a plain map.
"""
from __future__ import annotations

import base64
import bisect
import collections
import dataclasses
import datetime as _dt
import inspect
import math
import re
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from common import golang
from common.golang import quote

__all__ = ["TemplateError", "Template", "parse"]



# Limits on one execution: output characters, nodes walked, and fmt widths (Go's own 1e6 bound). Memory counts
# every string a function makes, not only the output: one string at most MAX_OUTPUT characters, all of them
# together at most ALLOCATION_FACTOR times that; a function call costs a step more for every STEP_CHARS characters
# it is given (comparing or copying long strings is work).
MAX_OUTPUT = 16 << 20
MAX_STEPS = 200_000
ALLOCATION_FACTOR = 4
STEP_CHARS = 16 << 10
_FMT_MAX = 1_000_000

class TemplateError(Exception):
    """A parse or execution error; ``str(e)`` is Go's message, starting "template: "."""


# --------------------------------------------------------------------------- lexer

(_ERROR, _BOOL, _CHAR, _CHAR_CONSTANT, _COMPLEX, _ASSIGN, _DECLARE, _EOF, _FIELD,
 _IDENTIFIER, _LEFT_DELIM, _LEFT_PAREN, _NUMBER, _PIPE, _RAW_STRING, _RIGHT_DELIM,
 _RIGHT_PAREN, _SPACE, _STRING, _TEXT, _VARIABLE, _KEYWORD, _BLOCK, _BREAK,
 _CONTINUE, _DOT, _DEFINE, _ELSE, _END, _IF, _NIL, _RANGE, _TEMPLATE, _WITH) = range(34)

_KEYWORDS = {".": _DOT, "block": _BLOCK, "break": _BREAK, "continue": _CONTINUE,
             "define": _DEFINE, "else": _ELSE, "end": _END, "if": _IF, "range": _RANGE,
             "nil": _NIL, "template": _TEMPLATE, "with": _WITH}

_LEFT, _RIGHT = "{{", "}}"
_SPACE_CHARS = " \t\r\n"
_EOF_CH = ""


class _Item:
    __slots__ = ("typ", "val", "pos", "line")

    def __init__(self, typ: int, val: str, pos: int, line: int) -> None:
        self.typ, self.val, self.pos, self.line = typ, val, pos, line

    def __str__(self) -> str:  # Go's item.String, used in "unexpected ..." messages
        if self.typ == _EOF:
            return "EOF"
        if self.typ == _ERROR:
            return self.val
        if self.typ > _KEYWORD:
            return f"<{self.val}>"
        if len(self.val) > 10:
            return quote(self.val[:10]) + "..."
        return quote(self.val)


def _is_space(ch: str) -> bool:
    return ch != "" and ch in _SPACE_CHARS


def _is_alnum(ch: str) -> bool:
    return ch == "_" or ch.isalpha() or ch.isdecimal()


def _has_left_trim(s: str, i: int) -> bool:
    return len(s) >= i + 2 and s[i] == "-" and s[i + 1] in _SPACE_CHARS


def _has_right_trim(s: str, i: int) -> bool:
    return len(s) >= i + 2 and s[i] in _SPACE_CHARS and s[i + 1] == "-"


def _rune_desc(ch: str) -> str:  # Go's %#U
    code = ord(ch) if ch else 0
    return f"U+{code:04X} '{ch}'" if ch and ch.isprintable() else f"U+{code:04X}"


class _Lexer:
    """A port of text/template/parse/lex.go's state machine; returns the item list."""

    def __init__(self, text: str) -> None:
        self.input = text
        self.pos = 0
        self.start = 0
        self.paren_depth = 0
        self.items: list[_Item] = []
        self._newlines = [i for i, c in enumerate(text) if c == "\n"]

    def line_at(self, pos: int) -> int:
        return 1 + bisect.bisect_left(self._newlines, pos)

    def run(self) -> list[_Item]:
        state: Callable | None = self.lex_text
        while state is not None:
            state = state()
        return self.items

    # helpers
    def next(self) -> str:
        if self.pos >= len(self.input):
            self.pos = len(self.input) + 1  # so that backup() is symmetric
            return _EOF_CH
        ch = self.input[self.pos]
        self.pos += 1
        return ch

    def backup(self) -> None:
        self.pos -= 1

    def peek(self) -> str:
        return self.input[self.pos] if self.pos < len(self.input) else _EOF_CH

    def accept(self, valid: str) -> bool:
        ch = self.peek()
        if ch and ch in valid:
            self.pos += 1
            return True
        return False

    def accept_run(self, valid: str) -> None:
        while self.accept(valid):
            pass

    def emit(self, typ: int) -> None:
        end = min(self.pos, len(self.input))
        self.items.append(_Item(typ, self.input[self.start:end], self.start, self.line_at(self.start)))
        self.start = self.pos

    def ignore(self) -> None:
        self.start = self.pos

    def errorf(self, msg: str) -> None:
        self.items.append(_Item(_ERROR, msg, self.start, self.line_at(self.start)))
        return None

    def at_right_delim(self) -> tuple[bool, bool]:
        if _has_right_trim(self.input, self.pos) and self.input.startswith(_RIGHT, self.pos + 2):
            return True, True
        if self.input.startswith(_RIGHT, self.pos):
            return True, False
        return False, False

    def at_terminator(self) -> bool:
        ch = self.peek()
        if _is_space(ch) or ch in ("", ".", ",", "|", ":", ")", "("):
            return True
        return self.input.startswith(_RIGHT, self.pos)

    # states
    def lex_text(self):
        x = self.input.find(_LEFT, self.pos)
        if x >= 0:
            self.pos = x
            trim = 0
            if _has_left_trim(self.input, x + len(_LEFT)):
                segment = self.input[self.start:self.pos]
                trim = len(segment) - len(segment.rstrip(_SPACE_CHARS))
            self.pos -= trim
            if self.pos > self.start:
                self.emit(_TEXT)
            self.pos += trim
            self.ignore()
            return self.lex_left_delim
        self.pos = len(self.input)
        if self.pos > self.start:
            self.emit(_TEXT)
        self.emit(_EOF)
        return None

    def lex_left_delim(self):
        self.pos += len(_LEFT)
        trim = _has_left_trim(self.input, self.pos)
        after = 2 if trim else 0
        if self.input.startswith("/*", self.pos + after):
            self.pos += after
            self.ignore()
            return self.lex_comment
        self.emit(_LEFT_DELIM)
        self.pos += after
        self.ignore()
        self.paren_depth = 0
        return self.lex_inside_action

    def lex_comment(self):
        self.pos += 2
        i = self.input.find("*/", self.pos)
        if i < 0:
            return self.errorf("unclosed comment")
        self.pos = i + 2
        delim, trim = self.at_right_delim()
        if not delim:
            return self.errorf("comment ends before closing delimiter")
        if trim:
            self.pos += 2
        self.pos += len(_RIGHT)
        if trim:
            rest = self.input[self.pos:]
            self.pos += len(rest) - len(rest.lstrip(_SPACE_CHARS))
        self.ignore()
        return self.lex_text

    def lex_right_delim(self):
        trim = _has_right_trim(self.input, self.pos)
        if trim:
            self.pos += 2
            self.ignore()
        self.pos += len(_RIGHT)
        self.emit(_RIGHT_DELIM)
        if trim:
            rest = self.input[self.pos:]
            self.pos += len(rest) - len(rest.lstrip(_SPACE_CHARS))
            self.ignore()
        return self.lex_text

    def lex_inside_action(self):
        delim, _ = self.at_right_delim()
        if delim:
            if self.paren_depth == 0:
                return self.lex_right_delim
            return self.errorf("unclosed left paren")
        ch = self.next()
        if ch == _EOF_CH:
            return self.errorf("unclosed action")
        if _is_space(ch):
            self.backup()
            return self.lex_space
        if ch == "=":
            self.emit(_ASSIGN)
        elif ch == ":":
            if self.next() != "=":
                return self.errorf("expected :=")
            self.emit(_DECLARE)
        elif ch == "|":
            self.emit(_PIPE)
        elif ch == '"':
            return self.lex_quote
        elif ch == "`":
            return self.lex_raw_quote
        elif ch == "$":
            return self.lex_variable
        elif ch == "'":
            return self.lex_char
        elif ch == "." and self.peek() != "" and not "0" <= self.peek() <= "9":
            return self.lex_field
        elif ch in "+-." or "0" <= ch <= "9":
            self.backup()
            return self.lex_number
        elif _is_alnum(ch):
            self.backup()
            return self.lex_identifier
        elif ch == "(":
            self.emit(_LEFT_PAREN)
            self.paren_depth += 1
        elif ch == ")":
            self.emit(_RIGHT_PAREN)
            self.paren_depth -= 1
            if self.paren_depth < 0:
                return self.errorf(f"unexpected right paren {_rune_desc(ch)}")
        elif ord(ch) < 0x80 and ch.isprintable():
            self.emit(_CHAR)
        else:
            return self.errorf(f"unrecognized character in action: {_rune_desc(ch)}")
        return self.lex_inside_action

    def lex_space(self):
        n = 0
        while _is_space(self.peek()):
            self.pos += 1
            n += 1
        if _has_right_trim(self.input, self.pos - 1) and self.input.startswith(_RIGHT, self.pos + 1):
            self.backup()
            if n == 1:
                return self.lex_right_delim
        self.emit(_SPACE)
        return self.lex_inside_action

    def lex_identifier(self):
        while True:
            ch = self.next()
            if not _is_alnum(ch):
                self.backup()
                word = self.input[self.start:self.pos]
                if not self.at_terminator():
                    return self.errorf(f"bad character {_rune_desc(ch)}")
                if word in _KEYWORDS and _KEYWORDS[word] > _KEYWORD:
                    self.emit(_KEYWORDS[word])
                elif word in ("true", "false"):
                    self.emit(_BOOL)
                else:
                    self.emit(_IDENTIFIER)
                return self.lex_inside_action

    def lex_field(self):
        return self._field_or_variable(_FIELD)

    def lex_variable(self):
        if self.at_terminator():
            self.emit(_VARIABLE)
            return self.lex_inside_action
        return self._field_or_variable(_VARIABLE)

    def _field_or_variable(self, typ: int):
        if self.at_terminator():
            self.emit(_VARIABLE if typ == _VARIABLE else _DOT)
            return self.lex_inside_action
        while True:
            ch = self.next()
            if not _is_alnum(ch):
                self.backup()
                break
        if not self.at_terminator():
            return self.errorf(f"bad character {_rune_desc(ch)}")
        self.emit(typ)
        return self.lex_inside_action

    def lex_char(self):
        while True:
            ch = self.next()
            if ch == "\\":
                ch = self.next()
                if ch not in (_EOF_CH, "\n"):
                    continue
            if ch in (_EOF_CH, "\n"):
                return self.errorf("unterminated character constant")
            if ch == "'":
                break
        self.emit(_CHAR_CONSTANT)
        return self.lex_inside_action

    def lex_number(self):
        if not self._scan_number():
            return self.errorf(f"bad number syntax: {quote(self.input[self.start:self.pos])}")
        if self.peek() in ("+", "-"):
            if not self._scan_number() or self.input[self.pos - 1] != "i":
                return self.errorf(f"bad number syntax: {quote(self.input[self.start:self.pos])}")
            self.emit(_COMPLEX)
        else:
            self.emit(_NUMBER)
        return self.lex_inside_action

    def _scan_number(self) -> bool:
        self.accept("+-")
        digits = "0123456789_"
        if self.accept("0"):
            if self.accept("xX"):
                digits = "0123456789abcdefABCDEF_"
            elif self.accept("oO"):
                digits = "01234567_"
            elif self.accept("bB"):
                digits = "01_"
        self.accept_run(digits)
        if self.accept("."):
            self.accept_run(digits)
        if len(digits) == 11 and self.accept("eE"):
            self.accept("+-")
            self.accept_run("0123456789_")
        if len(digits) == 23 and self.accept("pP"):
            self.accept("+-")
            self.accept_run("0123456789_")
        self.accept("i")
        if _is_alnum(self.peek()):
            self.pos += 1
            return False
        return True

    def lex_quote(self):
        while True:
            ch = self.next()
            if ch == "\\":
                ch = self.next()
                if ch not in (_EOF_CH, "\n"):
                    continue
            if ch in (_EOF_CH, "\n"):
                return self.errorf("unterminated quoted string")
            if ch == '"':
                break
        self.emit(_STRING)
        return self.lex_inside_action

    def lex_raw_quote(self):
        i = self.input.find("`", self.pos)
        if i < 0:
            self.pos = len(self.input)
            return self.errorf("unterminated raw quoted string")
        self.pos = i + 1
        self.emit(_RAW_STRING)
        return self.lex_inside_action


# --------------------------------------------------------------------------- Go literals

_SIMPLE_ESCAPES = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "\\": 92}


def _unquote_char(s: str, i: int, quote: str) -> tuple[int, bool, int]:
    """Go's strconv.UnquoteChar at s[i]: (value, is_byte, next index); ValueError if bad."""
    ch = s[i]
    if ch == quote and quote in "'\"":
        raise ValueError("invalid syntax")
    if ch != "\\":
        return ord(ch), False, i + 1
    if i + 1 >= len(s):
        raise ValueError("invalid syntax")
    c = s[i + 1]
    i += 2
    if c in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[c], False, i
    if c in "xuU":
        n = {"x": 2, "u": 4, "U": 8}[c]
        digits = s[i:i + n]
        if len(digits) != n or any(d not in "0123456789abcdefABCDEF" for d in digits):
            raise ValueError("invalid syntax")
        value = int(digits, 16)
        if c == "x":
            return value, True, i + n
        if value > 0x10FFFF or 0xD800 <= value <= 0xDFFF:
            raise ValueError("invalid syntax")
        return value, False, i + n
    if c in "01234567":
        digits = s[i - 1:i + 2]
        if len(digits) != 3 or any(d not in "01234567" for d in digits):
            raise ValueError("invalid syntax")
        value = int(digits, 8)
        if value > 255:
            raise ValueError("invalid syntax")
        return value, True, i + 2
    if c in "'\"":
        if c != quote:
            raise ValueError("invalid syntax")
        return ord(c), False, i
    raise ValueError("invalid syntax")


def _go_unquote(token: str) -> str:
    """Go's strconv.Unquote for a "..." or `...` literal."""
    if token.startswith("`"):
        if len(token) < 2 or not token.endswith("`"):
            raise ValueError("invalid syntax")
        return token[1:-1].replace("\r", "")
    if len(token) < 2 or token[0] != '"' or token[-1] != '"':
        raise ValueError("invalid syntax")
    body = token[1:-1]
    if "\\" not in body and '"' not in body:
        return body
    out = bytearray()
    i = 0
    while i < len(body):
        value, is_byte, i = _unquote_char(body, i, '"')
        if is_byte:
            out.append(value)
        else:
            out += chr(value).encode("utf-8", "surrogatepass")
    return out.decode("utf-8", "replace")


def _parse_go_int(text: str) -> int | None:
    """strconv.ParseInt(text, 0, 64)'s syntax (without the range check)."""
    s = text
    neg = False
    if s[:1] in ("+", "-"):
        neg = s[0] == "-"
        s = s[1:]
    low = s.lower()
    try:
        if low[:2] in ("0x", "0o", "0b"):
            body = s[3:] if s[2:3] == "_" else s[2:]
            value = int(body, {"x": 16, "o": 8, "b": 2}[low[1]])
        elif len(s) > 1 and s[0] == "0":
            body = s[2:] if s[1] == "_" else s[1:]
            value = int(body, 8)
        else:
            if not s or not s[0].isdigit():
                return None
            value = int(s, 10)
    except ValueError:
        return None
    return -value if neg else value


_INT64_MIN, _INT64_MAX, _UINT64_MAX = -(1 << 63), (1 << 63) - 1, (1 << 64) - 1


# --------------------------------------------------------------------------- nodes

class _Node:
    __slots__ = ("pos",)
    pos: int

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self}>"


class _ListNode(_Node):
    __slots__ = ("nodes",)

    def __init__(self, pos: int, nodes: list | None = None) -> None:
        self.pos, self.nodes = pos, nodes if nodes is not None else []

    def __str__(self) -> str:
        return "".join(str(n) for n in self.nodes)


class _TextNode(_Node):
    __slots__ = ("text",)

    def __init__(self, pos: int, text: str) -> None:
        self.pos, self.text = pos, text

    def __str__(self) -> str:
        return self.text


class _PipeNode(_Node):
    __slots__ = ("line", "is_assign", "decl", "cmds")

    def __init__(self, pos: int, line: int) -> None:
        self.decl: list[Any] = []
        self.cmds: list[Any] = []
        self.pos, self.line, self.is_assign = pos, line, False

    def __str__(self) -> str:
        s = ""
        if self.decl:
            s = ", ".join(str(v) for v in self.decl) + (" = " if self.is_assign else " := ")
        return s + " | ".join(str(c) for c in self.cmds)


class _ActionNode(_Node):
    __slots__ = ("line", "pipe")

    def __init__(self, pos: int, line: int, pipe: _PipeNode) -> None:
        self.pos, self.line, self.pipe = pos, line, pipe

    def __str__(self) -> str:
        return "{{" + str(self.pipe) + "}}"


class _CommandNode(_Node):
    __slots__ = ("args",)

    def __init__(self, pos: int) -> None:
        self.args: list[Any] = []
        self.pos = pos

    def __str__(self) -> str:
        return " ".join(f"({a})" if isinstance(a, _PipeNode) else str(a) for a in self.args)


class _IdentifierNode(_Node):
    __slots__ = ("ident",)

    def __init__(self, pos: int, ident: str) -> None:
        self.pos, self.ident = pos, ident

    def __str__(self) -> str:
        return self.ident


class _VariableNode(_Node):
    __slots__ = ("ident",)

    def __init__(self, pos: int, ident: str) -> None:
        self.pos, self.ident = pos, ident.split(".")

    def __str__(self) -> str:
        return ".".join(self.ident)


class _DotNode(_Node):
    __slots__ = ()

    def __init__(self, pos: int) -> None:
        self.pos = pos

    def __str__(self) -> str:
        return "."


class _NilNode(_Node):
    __slots__ = ()

    def __init__(self, pos: int) -> None:
        self.pos = pos

    def __str__(self) -> str:
        return "nil"


class _FieldNode(_Node):
    __slots__ = ("ident",)

    def __init__(self, pos: int, ident: str) -> None:
        self.pos, self.ident = pos, ident[1:].split(".")

    def __str__(self) -> str:
        return "".join("." + f for f in self.ident)


class _ChainNode(_Node):
    __slots__ = ("node", "field")

    def __init__(self, pos: int, node: _Node) -> None:
        self.field: list[str] = []
        self.pos, self.node = pos, node

    def __str__(self) -> str:
        s = f"({self.node})" if isinstance(self.node, _PipeNode) else str(self.node)
        return s + "".join("." + f for f in self.field)


class _BoolNode(_Node):
    __slots__ = ("value",)

    def __init__(self, pos: int, value: bool) -> None:
        self.pos, self.value = pos, value

    def __str__(self) -> str:
        return "true" if self.value else "false"


class _NumberNode(_Node):
    __slots__ = ("text", "value", "overflow")

    def __init__(self, pos: int, text: str, value: int | float, overflow: bool = False) -> None:
        self.pos, self.text, self.value, self.overflow = pos, text, value, overflow

    def __str__(self) -> str:
        return self.text


class _StringNode(_Node):
    __slots__ = ("quoted", "text")

    def __init__(self, pos: int, quoted: str, text: str) -> None:
        self.pos, self.quoted, self.text = pos, quoted, text

    def __str__(self) -> str:
        return self.quoted


class _BranchNode(_Node):
    __slots__ = ("line", "pipe", "list", "else_list")
    keyword = ""

    def __init__(self, pos: int, line: int, pipe: _PipeNode, lst: _ListNode, else_list: _ListNode | None) -> None:
        self.pos, self.line, self.pipe, self.list, self.else_list = pos, line, pipe, lst, else_list

    def __str__(self) -> str:
        s = "{{" + self.keyword + " " + str(self.pipe) + "}}" + str(self.list)
        if self.else_list is not None:
            s += "{{else}}" + str(self.else_list)
        return s + "{{end}}"


class _IfNode(_BranchNode):
    __slots__ = ()
    keyword = "if"


class _RangeNode(_BranchNode):
    __slots__ = ()
    keyword = "range"


class _WithNode(_BranchNode):
    __slots__ = ()
    keyword = "with"


class _BreakNode(_Node):
    __slots__ = ("line",)

    def __init__(self, pos: int, line: int) -> None:
        self.pos, self.line = pos, line

    def __str__(self) -> str:
        return "{{break}}"


class _ContinueNode(_BreakNode):
    __slots__ = ()

    def __str__(self) -> str:
        return "{{continue}}"


class _ElseNode(_Node):  # parser-internal
    __slots__ = ("line",)

    def __init__(self, pos: int, line: int) -> None:
        self.pos, self.line = pos, line

    def __str__(self) -> str:
        return "{{else}}"


class _EndNode(_Node):  # parser-internal
    __slots__ = ()

    def __init__(self, pos: int) -> None:
        self.pos = pos

    def __str__(self) -> str:
        return "{{end}}"


# --------------------------------------------------------------------------- parser

class _ParseError(Exception):
    pass


class _Parser:
    """A port of text/template/parse/parse.go (single tree, Ollama's function set)."""

    def __init__(self, text: str, funcs: Mapping[str, Any]) -> None:
        self.text = text
        self.funcs = funcs
        self.tokens = _Lexer(text).run()
        self.i = 0
        self.furthest = 0
        self.vars = ["$"]
        self.range_depth = 0
        self.action_line = 0

    # token access (Go's next/backup/peek with its 3-token lookahead)
    def next(self) -> _Item:
        i = min(self.i, len(self.tokens) - 1)
        self.i += 1
        self.furthest = max(self.furthest, i)
        return self.tokens[i]

    def backup(self) -> None:
        self.i -= 1

    def peek(self) -> _Item:
        tok = self.next()
        self.backup()
        return tok

    def next_non_space(self) -> _Item:
        while True:
            tok = self.next()
            if tok.typ != _SPACE:
                return tok

    def peek_non_space(self) -> _Item:
        tok = self.next_non_space()
        self.backup()
        return tok

    def errorf(self, msg: str) -> NoReturn:
        line = self.tokens[min(self.furthest, len(self.tokens) - 1)].line
        raise _ParseError(f"template: :{line}: {msg}")

    def unexpected(self, tok: _Item, context: str) -> None:
        if tok.typ == _ERROR:
            extra = ""
            if self.action_line and self.action_line != tok.line:
                extra = f" in action started at :{self.action_line}"
                if tok.val.endswith(" action"):
                    extra = extra[len(" in action"):]
            self.errorf(f"{tok}{extra}")
        self.errorf(f"unexpected {tok} in {context}")

    def expect(self, typ: int, context: str) -> _Item:
        tok = self.next_non_space()
        if tok.typ != typ:
            self.unexpected(tok, context)
        return tok

    def unsupported(self, tok: _Item) -> None:
        self.errorf(f"{{{{{tok.val}}}}} is not supported by gengate")

    # grammar
    def parse(self) -> _ListNode:
        root = _ListNode(self.peek().pos)
        while self.peek().typ != _EOF:
            if self.peek().typ == _LEFT_DELIM:
                mark = self.i
                self.next()
                tok = self.next_non_space()
                if tok.typ == _DEFINE:
                    self.unsupported(tok)
                self.i = mark
            node = self.text_or_action()
            if isinstance(node, (_EndNode, _ElseNode)):
                self.errorf(f"unexpected {node}")
            root.nodes.append(node)
        return root

    def text_or_action(self) -> _Node:
        tok = self.next_non_space()
        if tok.typ == _TEXT:
            return _TextNode(tok.pos, tok.val)
        if tok.typ == _LEFT_DELIM:
            self.action_line = tok.line
            try:
                return self.action()
            finally:
                self.action_line = 0
        self.unexpected(tok, "input")
        raise AssertionError  # unreachable

    def action(self) -> _Node:
        tok = self.next_non_space()
        typ = tok.typ
        if typ in (_BLOCK, _DEFINE, _TEMPLATE):
            self.unsupported(tok)
        if typ in (_BREAK, _CONTINUE):
            name = tok.val
            nxt = self.next_non_space()
            if nxt.typ != _RIGHT_DELIM:
                self.unexpected(nxt, "{{" + name + "}}")
            if self.range_depth == 0:
                self.errorf("{{" + name + "}} outside {{range}}")
            return (_BreakNode if typ == _BREAK else _ContinueNode)(tok.pos, tok.line)
        if typ == _ELSE:
            peek = self.peek_non_space()
            if peek.typ in (_IF, _WITH):
                return _ElseNode(peek.pos, peek.line)
            tok = self.expect(_RIGHT_DELIM, "else")
            return _ElseNode(tok.pos, tok.line)
        if typ == _END:
            return _EndNode(self.expect(_RIGHT_DELIM, "end").pos)
        if typ == _IF:
            return self.if_control()
        if typ == _RANGE:
            return _RangeNode(*self.parse_control("range"))
        if typ == _WITH:
            return self.with_control()
        self.backup()
        tok = self.peek()
        return _ActionNode(tok.pos, tok.line, self.pipeline("command", _RIGHT_DELIM))

    def if_control(self) -> _IfNode:
        return _IfNode(*self.parse_control("if"))

    def with_control(self) -> _WithNode:
        return _WithNode(*self.parse_control("with"))

    def parse_control(self, context: str):
        nvars = len(self.vars)
        try:
            pipe = self.pipeline(context, _RIGHT_DELIM)
            if context == "range":
                self.range_depth += 1
            lst, nxt = self.item_list()
            if context == "range":
                self.range_depth -= 1
            else_list = None
            if isinstance(nxt, _ElseNode):
                if context == "if" and self.peek().typ == _IF:
                    self.next()
                    else_list = _ListNode(nxt.pos, [self.if_control()])
                elif context == "with" and self.peek().typ == _WITH:
                    self.next()
                    else_list = _ListNode(nxt.pos, [self.with_control()])
                else:
                    else_list, nxt = self.item_list()
                    if not isinstance(nxt, _EndNode):
                        self.errorf(f"expected end; found {nxt}")
            return pipe.pos, pipe.line, pipe, lst, else_list
        finally:
            del self.vars[nvars:]

    def item_list(self) -> tuple[_ListNode, _Node]:
        lst = _ListNode(self.peek_non_space().pos)
        while self.peek_non_space().typ != _EOF:
            node = self.text_or_action()
            if isinstance(node, (_EndNode, _ElseNode)):
                return lst, node
            lst.nodes.append(node)
        self.errorf("unexpected EOF")
        raise AssertionError  # unreachable

    def pipeline(self, context: str, end: int) -> _PipeNode:
        tok = self.peek_non_space()
        pipe = _PipeNode(tok.pos, tok.line)
        while True:  # declarations
            v = self.peek_non_space()
            if v.typ != _VARIABLE:
                break
            mark = self.i
            self.next()
            self.peek()  # Go's lookahead: the token after the variable, then the next non-space
            nxt = self.peek_non_space()
            if nxt.typ in (_ASSIGN, _DECLARE):
                pipe.is_assign = nxt.typ == _ASSIGN
                self.next_non_space()
                pipe.decl.append(_VariableNode(v.pos, v.val))
                self.vars.append(v.val)
            elif nxt.typ == _CHAR and nxt.val == ",":
                self.next_non_space()
                pipe.decl.append(_VariableNode(v.pos, v.val))
                self.vars.append(v.val)
                if context == "range" and len(pipe.decl) < 2:
                    if self.peek_non_space().typ in (_VARIABLE, _RIGHT_DELIM, _RIGHT_PAREN):
                        continue
                    self.errorf("range can only initialize variables")
                self.errorf(f"too many declarations in {context}")
            else:  # an operand, not a declaration: push the variable back
                self.i = mark
            break
        while True:
            tok = self.next_non_space()
            if tok.typ == end:
                self.check_pipeline(pipe, context)
                return pipe
            if tok.typ in (_BOOL, _CHAR_CONSTANT, _COMPLEX, _DOT, _FIELD, _IDENTIFIER, _NUMBER,
                           _NIL, _RAW_STRING, _STRING, _VARIABLE, _LEFT_PAREN):
                self.backup()
                pipe.cmds.append(self.command())
            else:
                self.unexpected(tok, context)

    def check_pipeline(self, pipe: _PipeNode, context: str) -> None:
        if not pipe.cmds:
            self.errorf(f"missing value for {context}")
        for i, cmd in enumerate(pipe.cmds[1:]):
            if isinstance(cmd.args[0], (_BoolNode, _DotNode, _NilNode, _NumberNode, _StringNode)):
                self.errorf(f"non executable command in pipeline stage {i + 2}")

    def command(self) -> _CommandNode:
        cmd = _CommandNode(self.peek_non_space().pos)
        while True:
            self.peek_non_space()
            operand = self.operand()
            if operand is not None:
                cmd.args.append(operand)
            tok = self.next()
            if tok.typ == _SPACE:
                continue
            if tok.typ in (_RIGHT_DELIM, _RIGHT_PAREN):
                self.backup()
            elif tok.typ != _PIPE:
                self.unexpected(tok, "operand")
            break
        if not cmd.args:
            self.errorf("empty command")
        return cmd

    def operand(self) -> _Node | None:
        node = self.term()
        if node is None:
            return None
        if self.peek().typ == _FIELD:
            chain = _ChainNode(self.peek().pos, node)
            while self.peek().typ == _FIELD:
                chain.field.append(self.next().val[1:])
            if isinstance(node, _FieldNode):
                return _FieldNode(chain.pos, str(chain))
            if isinstance(node, _VariableNode):
                return _VariableNode(chain.pos, str(chain))
            if isinstance(node, (_BoolNode, _StringNode, _NumberNode, _NilNode, _DotNode)):
                self.errorf(f"unexpected . after term {quote(str(node))}")
            return chain
        return node

    def term(self) -> _Node | None:
        tok = self.next_non_space()
        typ = tok.typ
        if typ == _IDENTIFIER:
            if tok.val not in self.funcs:
                self.errorf(f"function {quote(tok.val)} not defined")
            return _IdentifierNode(tok.pos, tok.val)
        if typ == _DOT:
            return _DotNode(tok.pos)
        if typ == _NIL:
            return _NilNode(tok.pos)
        if typ == _VARIABLE:
            name = tok.val.split(".")[0]
            if name not in self.vars:
                self.errorf(f"undefined variable {quote(name)}")
            return _VariableNode(tok.pos, tok.val)
        if typ == _FIELD:
            return _FieldNode(tok.pos, tok.val)
        if typ == _BOOL:
            return _BoolNode(tok.pos, tok.val == "true")
        if typ in (_CHAR_CONSTANT, _COMPLEX, _NUMBER):
            return self.number(tok)
        if typ == _LEFT_PAREN:
            return self.pipeline("parenthesized pipeline", _RIGHT_PAREN)
        if typ in (_STRING, _RAW_STRING):
            try:
                return _StringNode(tok.pos, tok.val, _go_unquote(tok.val))
            except ValueError:
                self.errorf("invalid syntax")
        self.backup()
        return None

    def number(self, tok: _Item) -> _NumberNode:
        text = tok.val
        if tok.typ == _COMPLEX or text.endswith("i"):
            self.errorf(f"complex number constant {text} is not supported by gengate")
        if tok.typ == _CHAR_CONSTANT:
            try:
                value, _, end = _unquote_char(text, 1, "'")
            except (ValueError, IndexError):
                self.errorf("invalid syntax")
            if text[end:] != "'":
                self.errorf(f"malformed character constant: {text}")
            return _NumberNode(tok.pos, text, value)
        as_int = _parse_go_int(text)
        if as_int is not None and _INT64_MIN <= as_int <= _UINT64_MAX:
            low = text.lower()
            is_hex_int = low.lstrip("+-").startswith("0x") and "p" not in low
            if not is_hex_int and any(c in text for c in ".eEpP"):
                return _NumberNode(tok.pos, text, float(as_int))
            return _NumberNode(tok.pos, text, as_int, overflow=as_int > _INT64_MAX)
        try:
            low = text.lower().lstrip("+-")
            if low.startswith("0x"):
                if "p" not in low:  # Go's hex floats need the binary exponent
                    raise ValueError(text)
                number = float.fromhex(text.replace("_", ""))
            else:
                number = float(text)  # Python's underscore rules are Go's
        except ValueError:
            self.errorf(f"illegal number syntax: {quote(text)}")
        if not any(c in text for c in ".eEpP"):
            self.errorf(f"integer overflow: {quote(text)}")
        return _NumberNode(tok.pos, text, number)


# --------------------------------------------------------------------------- Go formatting

def _go_type(v: Any) -> str:
    if v is None:
        return "interface {}"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float64"
    if isinstance(v, complex):
        return "complex128"
    if isinstance(v, str):
        return "string"
    if isinstance(v, (list, tuple)):
        return "[]interface {}"
    if isinstance(v, Mapping):
        return "map[string]interface {}"
    return type(v).__name__


def _sorted_items(m: Mapping) -> list[tuple[Any, Any]]:
    if isinstance(m, collections.OrderedDict):
        return list(m.items())
    try:
        return sorted(m.items(), key=lambda kv: kv[0])
    except TypeError:
        return list(m.items())


def _fmt_v(v: Any, top: bool = True) -> str:
    """fmt's %v.  A top-level None prints as "" (see the module docstring)."""
    if v is None:
        return "" if top else "<nil>"
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return golang.format_float(v)
    if isinstance(v, (list, tuple)):
        return "[" + " ".join(_fmt_v(x, False) for x in v) + "]"
    if isinstance(v, Mapping):
        return "map[" + " ".join(f"{_fmt_v(k, False)}:{_fmt_v(x, False)}" for k, x in _sorted_items(v)) + "]"
    if isinstance(v, (bytes, bytearray)):
        return "[" + " ".join(str(b) for b in v) + "]"
    return str(v)


def _pad(s: str, width: int | None, minus: bool, zero: bool) -> str:
    if width is None or len(s) >= width:
        return s
    fill = width - len(s)
    if minus:
        return s + " " * fill
    return ("0" if zero else " ") * fill + s


class _Flags:
    __slots__ = ("plus", "minus", "sharp", "space", "zero", "width", "prec")

    def __init__(self) -> None:
        self.plus = self.minus = self.sharp = self.space = self.zero = False
        self.width: int | None = None
        self.prec: int | None = None


def _bad_verb(verb: str, arg: Any, fl: _Flags | None = None) -> str:
    """fmt's "%!verb(type=value)"; the value is printed with %v under the same flags."""
    if arg is None:
        return f"%!{verb}(<nil>)"
    value = _fmt_v(arg) if fl is None else _fmt_arg(arg, "v", fl)
    return f"%!{verb}({_go_type(arg)}={value})"


def _fmt_int(v: int, verb: str, fl: _Flags) -> str:
    if verb == "c":
        return _pad(chr(v) if 0 <= v <= 0x10FFFF else "\ufffd", fl.width, fl.minus, False)
    if verb == "q":
        ch = chr(v) if 0 <= v <= 0x10FFFF else "\ufffd"
        q = quote(ch, fl.plus)[1:-1].replace("\\\"", '"')
        return _pad("'" + (q if ch != "'" else "\\'") + "'", fl.width, fl.minus, False)
    if verb == "U":
        s = f"U+{v:04X}"
        if fl.sharp and 0 <= v <= 0x10FFFF and chr(v).isprintable():
            s += f" '{chr(v)}'"
        return _pad(s, fl.width, fl.minus, False)
    base = {"v": 10, "d": 10, "b": 2, "o": 8, "O": 8, "x": 16, "X": 16}.get(verb)
    if base is None:
        return _bad_verb(verb, v, fl)
    digits = format(abs(v), {10: "d", 2: "b", 8: "o", 16: "x"}[base])
    if verb == "X":
        digits = digits.upper()
    if fl.prec is not None:
        digits = "" if fl.prec == 0 and v == 0 else digits.zfill(fl.prec)
    sign = "-" if v < 0 else "+" if fl.plus else " " if fl.space else ""
    if fl.zero and fl.width is not None and not fl.minus and fl.prec is None:
        digits = digits.zfill(fl.width - len(sign))
    prefix = ""
    if verb == "O":
        prefix = "0o"
    elif fl.sharp:
        prefix = {2: "0b", 8: "0" if not digits.startswith("0") else "",
                  16: "0x" if verb == "x" else "0X"}.get(base, "")
    return _pad(sign + prefix + digits, fl.width, fl.minus, False)


def _hex_float(a: float, prec: int | None) -> str:
    """strconv.FormatFloat(a, 'x', prec, 64) for a finite a >= 0."""
    if a == 0:
        mant, exp = 0, 0
    else:
        m, e = math.frexp(a)  # a = m * 2**e, 0.5 <= m < 1
        mant, exp = int(m * (1 << 53)), e - 1  # 53-bit mantissa with the leading 1
    frac = mant & ((1 << 52) - 1)
    lead = mant >> 52
    digits = f"{frac:013x}"
    if prec is None:
        digits = digits.rstrip("0")
    elif prec < 13:
        q = int(digits, 16) if digits else 0
        shift = 4 * (13 - prec)
        q_r = q >> shift
        rem = q - (q_r << shift)
        half = 1 << (shift - 1)
        if rem > half or (rem == half and q_r & 1):
            q_r += 1
        if q_r >> (4 * prec):
            q_r &= (1 << (4 * prec)) - 1 if prec else 0
            lead += 1
            if lead == 2:
                lead, exp = 1, exp + 1
        digits = f"{q_r:0{prec}x}" if prec else ""
    else:
        digits = digits + "0" * (prec - 13)
    s = f"0x{lead}" + ("." + digits if digits else "")
    return s + "p" + ("-" if exp < 0 else "+") + f"{abs(exp):02d}"


def _fmt_float(v: float, verb: str, fl: _Flags) -> str:
    if verb == "v":
        verb = "g"
    if verb not in "eEfFgGxX":
        return _bad_verb(verb, v, fl)
    if math.isnan(v) or math.isinf(v):
        if math.isnan(v):
            s = "+NaN" if fl.plus else " NaN" if fl.space else "NaN"
        else:
            s = "+Inf" if v > 0 else "-Inf"
            if v > 0 and fl.space and not fl.plus:
                s = " Inf"
        return _pad(s, fl.width, fl.minus, False)
    if verb in "xX":
        body = _hex_float(abs(v), fl.prec)
        body = body.upper() if verb == "X" else body
    else:
        body = golang.format_float_body(v, verb, fl.prec)
    neg = math.copysign(1.0, v) < 0
    sign = "-" if neg else "+" if fl.plus else " " if fl.space else ""
    if fl.zero and fl.width is not None and not fl.minus:
        body = body.rjust(fl.width - len(sign), "0")
    return _pad(sign + body, fl.width, fl.minus, False)


def _fmt_str(s: str, verb: str, fl: _Flags) -> str:
    if verb in "vs":
        if fl.prec is not None:
            s = s[:fl.prec]
        return _pad(s, fl.width, fl.minus, fl.zero)
    if verb == "q":
        if fl.prec is not None:
            s = s[:fl.prec]
        if fl.sharp and "`" not in s and all(c == "\t" or (c.isprintable() and c != "\ufeff") for c in s):
            return _pad("`" + s + "`", fl.width, fl.minus, fl.zero)
        return _pad(quote(s, fl.plus), fl.width, fl.minus, fl.zero)
    if verb in "xX":
        data = s.encode("utf-8", "replace")
        if fl.prec is not None:
            data = data[:fl.prec]
        h = data.hex()
        if fl.space:
            h = " ".join((("0x" if fl.sharp else "") + data[i:i + 1].hex()) for i in range(len(data)))
        elif fl.sharp and h:
            h = "0x" + h
        if verb == "X":
            h = h.upper()
        return _pad(h, fl.width, fl.minus, fl.zero)
    return _bad_verb(verb, s, fl)


def _fmt_arg(arg: Any, verb: str, fl: _Flags, top: bool = True) -> str:
    if verb == "T":
        return _pad("<nil>" if arg is None else _go_type(arg), fl.width, fl.minus, False)
    if arg is None:
        if verb in "vs":  # None is the zero value: "" (Go would print <nil> or %!s(<nil>))
            return _pad("" if top else "<nil>", fl.width, fl.minus, False)
        return _bad_verb(verb, None)
    if isinstance(arg, bool):
        if verb in "tv":
            return _pad("true" if arg else "false", fl.width, fl.minus, False)
        return _bad_verb(verb, arg, fl)
    if isinstance(arg, int):
        return _fmt_int(arg, verb, fl)
    if isinstance(arg, float):
        return _fmt_float(arg, verb, fl)
    if isinstance(arg, str):
        if verb == "v" and fl.sharp:
            return _pad(quote(arg), fl.width, fl.minus, False)
        return _fmt_str(arg, verb, fl)
    if isinstance(arg, (list, tuple)):
        return "[" + " ".join(_fmt_arg(x, verb, fl, False) for x in arg) + "]"
    if isinstance(arg, Mapping):
        return "map[" + " ".join(f"{_fmt_arg(k, verb, fl, False)}:{_fmt_arg(x, verb, fl, False)}"
                                 for k, x in _sorted_items(arg)) + "]"
    if verb in "vs":
        return _pad(str(arg), fl.width, fl.minus, False)
    return _bad_verb(verb, arg, fl)


def _sprintf(fmt: str, args: list[Any]) -> str:
    """fmt.Sprintf for the verbs templates use (v s d q f F e E g G x X o O b c t T U %)."""
    out: list[str] = []
    n = len(fmt)
    i = 0
    argnum = 0
    reordered = False

    def arg_index(i: int, argnum: int) -> tuple[int, int, bool]:
        # "[n]" explicit argument index
        if i < n and fmt[i] == "[":
            close = fmt.find("]", i)
            if close > i + 1 and fmt[i + 1:close].isdigit():
                return close + 1, int(fmt[i + 1:close]) - 1, True
        return i, argnum, False

    def int_arg(argnum: int) -> tuple[int | None, int]:
        if argnum < len(args) and isinstance(args[argnum], int) and not isinstance(args[argnum], bool) \
                and abs(args[argnum]) <= _FMT_MAX:                # Go: tooLarge → not an int
            return args[argnum], argnum + 1
        return None, argnum + 1

    while i < n:
        j = fmt.find("%", i)
        if j < 0:
            out.append(fmt[i:])
            break
        out.append(fmt[i:j])
        i = j + 1
        fl = _Flags()
        while i < n and fmt[i] in "+-# 0":
            c = fmt[i]
            if c == "+":
                fl.plus = True
            elif c == "-":
                fl.minus = True
            elif c == "#":
                fl.sharp = True
            elif c == " ":
                fl.space = True
            else:
                fl.zero = True
            i += 1
        if fl.minus:
            fl.zero = False
        i, argnum, moved = arg_index(i, argnum)
        reordered = reordered or moved
        if i < n and fmt[i] == "*":
            i += 1
            w, argnum = int_arg(argnum)
            if w is None:
                out.append("%!(BADWIDTH)")
            else:
                if w < 0:
                    fl.minus, fl.zero, w = True, False, -w
                fl.width = w
        else:
            start = i
            while i < n and fmt[i].isdigit():
                i += 1
            if i > start:
                if int(fmt[start:i]) > _FMT_MAX:     # Go's parsenum gives up on the rest of the format
                    i = n
                else:
                    fl.width = int(fmt[start:i])
        if i < n and fmt[i] == ".":
            i += 1
            i, argnum, moved = arg_index(i, argnum)
            reordered = reordered or moved
            if i < n and fmt[i] == "*":
                i += 1
                p, argnum = int_arg(argnum)
                if p is None:
                    out.append("%!(BADPREC)")
                elif p >= 0:
                    fl.prec = p
            else:
                start = i
                while i < n and fmt[i].isdigit():
                    i += 1
                if i > start and int(fmt[start:i]) > _FMT_MAX:
                    i = n
                else:
                    fl.prec = int(fmt[start:i]) if i > start else 0
        i, argnum, moved = arg_index(i, argnum)
        reordered = reordered or moved
        if i >= n:
            out.append("%!(NOVERB)")
            break
        verb = fmt[i]
        i += 1
        if verb == "%":
            out.append("%")
            continue
        if argnum >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        out.append(_fmt_arg(args[argnum], verb, fl))
        argnum += 1
    if not reordered and argnum < len(args):
        extra = ", ".join("<nil>" if a is None else f"{_go_type(a)}={_fmt_v(a)}" for a in args[argnum:])
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)


def _sprint(args: list[Any]) -> str:
    out = []
    for k, a in enumerate(args):
        if k > 0 and not isinstance(a, str) and not isinstance(args[k - 1], str):
            out.append(" ")
        out.append(_fmt_v(a))
    return "".join(out)


def _sprintln(args: list[Any]) -> str:
    return " ".join(_fmt_v(a) for a in args) + "\n"


# --------------------------------------------------------------------------- JSON (Go's encoding/json)

class _JSONError(Exception):
    pass


def _json_float(f: float) -> str:
    if math.isnan(f) or math.isinf(f):
        raise _JSONError(f"json: unsupported value: {golang.format_float(f)}")
    if f == 0:
        return "-0" if math.copysign(1.0, f) < 0 else "0"
    digits, dp = golang.float_digits(f)
    sign = "-" if f < 0 else ""
    if abs(f) < 1e-6 or abs(f) >= 1e21:
        s = golang.format_e_shortest(digits, dp)
        if s[-4:-1] == "e-0":  # e-07 -> e-7
            s = s[:-2] + s[-1]
        return sign + s
    return sign + golang.format_f_shortest(digits, dp)


def _json(v: Any, depth: int = 0) -> str:
    if depth > 200:
        raise _JSONError("json: nesting too deep")
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return _json_float(v)
    if isinstance(v, str):
        return golang.json_string(v)
    hook = getattr(type(v), "__json__", None)
    if hook is not None:
        return _json(hook(v), depth + 1)
    if isinstance(v, Mapping):
        return "{" + ",".join(golang.json_string(k if isinstance(k, str) else _fmt_v(k)) + ":" + _json(x, depth + 1)
                              for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_json(x, depth + 1) for x in v) + "]"
    if isinstance(v, (bytes, bytearray)):
        return '"' + base64.b64encode(bytes(v)).decode("ascii") + '"'
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return _json({f.name: getattr(v, f.name) for f in dataclasses.fields(v)}, depth + 1)
    if hasattr(v, "__dict__"):
        return _json({k: x for k, x in vars(v).items() if not k.startswith("_")}, depth + 1)
    raise _JSONError(f"json: unsupported type: {type(v).__name__}")


# --------------------------------------------------------------------------- builtin functions

class _FuncError(Exception):
    """An error a template function returns; reported as "error calling NAME: ..."."""


def _truth(v: Any) -> bool:
    if v is None:
        return False
    if isinstance(v, (bool, int, float, complex, str, bytes, list, tuple, Mapping)):
        return bool(v)
    if hasattr(v, "__len__"):
        try:
            return len(v) > 0
        except TypeError:
            return True
    return True


def _basic_kind(v: Any) -> str:
    if v is None:
        return "nil"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, complex):
        return "complex"
    if isinstance(v, str):
        return "string"
    return "other"


def _f_eq(arg1: Any, *rest: Any) -> bool:
    if not rest:
        raise _FuncError("missing argument for comparison")
    k1 = _basic_kind(arg1)
    for arg in rest:
        k2 = _basic_kind(arg)
        if k1 != k2:
            if k1 != "nil" and k2 != "nil":
                raise _FuncError("incompatible types for comparison")
            truth = False
        elif k1 == "nil":
            truth = True
        else:
            if isinstance(arg, (list, tuple, Mapping)) or isinstance(arg1, (list, tuple, Mapping)):
                fl = _Flags()
                if _go_type(arg1) != _go_type(arg):
                    raise _FuncError(f"non-comparable types {_fmt_arg(arg1, 's', fl)}: {_go_type(arg1)}, "
                                     f"{_go_type(arg)}: {_fmt_v(arg)}")
                raise _FuncError(f"non-comparable type {_fmt_arg(arg, 's', fl)}: {_go_type(arg)}")
            try:
                truth = bool(arg1 == arg)
            except Exception:  # noqa: BLE001 - an uncomparable object
                raise _FuncError(f"non-comparable type {_fmt_v(arg)}: {_go_type(arg)}") from None
        if truth:
            return True
    return False


def _f_ne(a: Any, b: Any) -> bool:
    return not _f_eq(a, b)


def _f_lt(a: Any, b: Any) -> bool:
    k1, k2 = _basic_kind(a), _basic_kind(b)
    if k1 in ("nil", "other") or k2 in ("nil", "other"):
        raise _FuncError("invalid type for comparison")
    if k1 != k2:
        raise _FuncError("incompatible types for comparison")
    if k1 in ("bool", "complex"):
        raise _FuncError("invalid type for comparison")
    return a < b


def _f_le(a: Any, b: Any) -> bool:
    return _f_lt(a, b) or _f_eq(a, b)


def _f_gt(a: Any, b: Any) -> bool:
    return not _f_le(a, b)


def _f_ge(a: Any, b: Any) -> bool:
    return not _f_lt(a, b)


def _f_not(a: Any) -> bool:
    return not _truth(a)


def _f_len(item: Any) -> int:
    if item is None:  # a nil slice/map/zero string: 0 (see the module docstring)
        return 0
    if isinstance(item, str):
        return len(item.encode("utf-8", "surrogatepass"))
    if isinstance(item, (list, tuple, Mapping, bytes, bytearray)):
        return len(item)
    if not isinstance(item, (bool, int, float, complex)) and hasattr(item, "__len__"):
        return len(item)
    raise _FuncError(f"len of type {_go_type(item)}")


def _index_arg(index: Any, cap: int) -> int:
    if index is None:
        raise _FuncError("cannot index slice/array with nil")
    if isinstance(index, bool) or not isinstance(index, int):
        raise _FuncError(f"cannot index slice/array with type {_go_type(index)}")
    if index < 0 or index > cap:
        raise _FuncError(f"index out of range: {index}")
    return index


def _f_index(item: Any, *indexes: Any) -> Any:
    if item is None:
        raise _FuncError("index of untyped nil")
    for index in indexes:
        if item is None:
            raise _FuncError("index of nil pointer")
        if isinstance(item, (list, tuple, str, bytes, bytearray)):
            seq = item.encode("utf-8", "surrogatepass") if isinstance(item, str) else item
            x = _index_arg(index, len(seq))
            if x >= len(seq):  # reflect's panic, which Go reports as the error
                raise _FuncError(f"reflect: {'string' if isinstance(item, str) else 'slice'} index out of range")
            item = seq[x]
        elif isinstance(item, Mapping):
            if not isinstance(index, str) and all(isinstance(k, str) for k in item):
                if index is None:
                    raise _FuncError("value is nil; should be of type string")
                raise _FuncError(f"value has type {_go_type(index)}; should be string")
            try:
                item = item.get(index)
            except TypeError:
                raise _FuncError(f"value has type {_go_type(index)}; should be string") from None
        else:
            raise _FuncError(f"can't index item of type {_go_type(item)}")
    return item


def _f_slice(item: Any, *indexes: Any) -> Any:
    if item is None:
        raise _FuncError("slice of untyped nil")
    if len(indexes) > 3:
        raise _FuncError(f"too many slice indexes: {len(indexes)}")
    if isinstance(item, str):
        if len(indexes) == 3:
            raise _FuncError("cannot 3-index slice a string")
        seq: Any = item.encode("utf-8", "surrogatepass") if not item.isascii() else item
    elif isinstance(item, (list, tuple, bytes, bytearray)):
        seq = item
    else:
        raise _FuncError(f"can't slice item of type {_go_type(item)}")
    idx = [0, len(seq), len(seq)]
    for k, index in enumerate(indexes):
        idx[k] = _index_arg(index, len(seq))
    if idx[0] > idx[1]:
        raise _FuncError(f"invalid slice index: {idx[0]} > {idx[1]}")
    if len(indexes) == 3 and idx[1] > idx[2]:
        raise _FuncError(f"invalid slice index: {idx[1]} > {idx[2]}")
    out = seq[idx[0]:idx[1]]
    if isinstance(item, str) and isinstance(out, bytes):
        return out.decode("utf-8", "replace")
    return out


def _eval_args_text(args: tuple) -> str:
    if len(args) == 1 and isinstance(args[0], str):
        return args[0]
    return _sprint(list(args))


_HTML_ESCAPES = {"\0": "\ufffd", '"': "&#34;", "'": "&#39;", "&": "&amp;", "<": "&lt;", ">": "&gt;"}
_HTML_SPECIAL = re.compile("[\0\"'&<>]")


def _f_html(*args: Any) -> str:
    return _HTML_SPECIAL.sub(lambda m: _HTML_ESCAPES[m.group()], _eval_args_text(args))


_JS_ESCAPES = {"\\": "\\\\", "'": "\\'", '"': '\\"', "<": "\\u003C", ">": "\\u003E", "&": "\\u0026", "=": "\\u003D"}


def _f_js(*args: Any) -> str:
    out = []
    for ch in _eval_args_text(args):
        if ch in _JS_ESCAPES:
            out.append(_JS_ESCAPES[ch])
        elif ch < " ":
            out.append(f"\\u00{ord(ch):02X}")
        elif ord(ch) >= 0x80 and not ch.isprintable():
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return "".join(out)


def _f_urlquery(*args: Any) -> str:
    return urllib.parse.quote_plus(_eval_args_text(args), safe="")


def _f_print(*args: Any) -> str:
    return _sprint(list(args))


def _f_printf(fmt: str, *args: Any) -> str:
    return _sprintf(fmt, list(args))


def _f_println(*args: Any) -> str:
    return _sprintln(list(args))


def _f_call(fn: Any, *args: Any) -> Any:
    if fn is None:
        raise _FuncError("call of nil")
    if not callable(fn):
        raise _FuncError(f"non-function of type {_go_type(fn)}")
    try:
        return fn(*args)
    except TemplateError:
        raise
    except Exception as exc:  # noqa: BLE001 - reported like Go's error return
        raise _FuncError(str(exc)) from exc


def _f_json(v: Any) -> str:
    # Ollama: b, _ := json.Marshal(v); return string(b) -- an error gives "".
    try:
        return _json(v)
    except (_JSONError, RecursionError):
        return ""


def _f_current_date(*_args: str) -> str:
    return _dt.date.today().strftime("%Y-%m-%d")


def _f_yesterday_date(*_args: str) -> str:
    return (_dt.date.today() - _dt.timedelta(days=1)).strftime("%Y-%m-%d")


_TS_TYPES = {"string": "string", "number": "number", "integer": "number", "boolean": "boolean",
             "array": "any[]", "object": "Record<string, any>", "null": "null"}


def _prop_get(prop: Any, *names: str) -> Any:
    for name in names:
        if isinstance(prop, Mapping):
            if name in prop:
                return prop[name]
        elif hasattr(prop, name):
            return getattr(prop, name)
    return None


def _ts_type(prop: Any) -> str:
    """api.ToolProperty.ToTypeScriptType on a dict (JSON or Go field names) or object."""
    any_of = _prop_get(prop, "anyOf", "AnyOf", "any_of")
    if isinstance(any_of, (list, tuple)) and any_of:
        return " | ".join(_ts_type(p) for p in any_of)
    typ = _prop_get(prop, "type", "Type")
    if isinstance(typ, str):
        typ = [typ]
    if not isinstance(typ, (list, tuple)) or not typ:
        return "any"
    return " | ".join(_TS_TYPES.get(t, "any") if isinstance(t, str) else "any" for t in typ)


def _f_to_typescript_type(v: Any) -> str:
    # Ollama: a ToolProperty (or non-nil *ToolProperty) -> its TypeScript type, else "any".
    if v is None or isinstance(v, (str, bytes, bool, int, float, complex, list, tuple)):
        return "any"
    return _ts_type(v)


class _Func:
    __slots__ = ("fn", "fixed", "variadic", "kinds", "var_kind")

    def __init__(self, fn: Callable, kinds: tuple[str, ...], var_kind: str | None = None) -> None:
        self.fn, self.kinds, self.var_kind = fn, kinds, var_kind
        self.fixed = len(kinds)
        self.variadic = var_kind is not None

    def kind(self, i: int) -> str:
        return self.kinds[i] if i < self.fixed else (self.var_kind or "any")


# The functions whose result is a string at least as long as their string arguments.
_MAKES_STRINGS = frozenset({"print", "printf", "println", "html", "js", "urlquery", "json"})

# kinds: "value" (reflect.Value: nil literal rejected), "any" (interface{}), "string"
_FUNCS: dict[str, _Func] = {
    "and": _Func(lambda *a: a, ("value",), "value"),
    "or": _Func(lambda *a: a, ("value",), "value"),
    "not": _Func(_f_not, ("value",)),
    "len": _Func(_f_len, ("value",)),
    "index": _Func(_f_index, ("value",), "value"),
    "slice": _Func(_f_slice, ("value",), "value"),
    "call": _Func(_f_call, ("value",), "value"),
    "eq": _Func(_f_eq, ("value",), "value"),
    "ne": _Func(_f_ne, ("value", "value")),
    "lt": _Func(_f_lt, ("value", "value")),
    "le": _Func(_f_le, ("value", "value")),
    "gt": _Func(_f_gt, ("value", "value")),
    "ge": _Func(_f_ge, ("value", "value")),
    "print": _Func(_f_print, (), "any"),
    "printf": _Func(_f_printf, ("string",), "any"),
    "println": _Func(_f_println, (), "any"),
    "html": _Func(_f_html, (), "any"),
    "js": _Func(_f_js, (), "any"),
    "urlquery": _Func(_f_urlquery, (), "any"),
    # Ollama's template.funcs
    "json": _Func(_f_json, ("any",)),
    "currentDate": _Func(_f_current_date, (), "string"),
    "yesterdayDate": _Func(_f_yesterday_date, (), "string"),
    "toTypeScriptType": _Func(_f_to_typescript_type, ("any",)),
}


# --------------------------------------------------------------------------- execution

class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Any = _Missing()


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


class _ExecError(Exception):
    pass


class _Output(list):
    """The rendered pieces, refusing to grow past a limit (a template is client input)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.size, self.limit = 0, limit

    def append(self, piece: str) -> None:
        self.size += len(piece)
        if self.size > self.limit:
            raise _ExecError(f"template: output exceeds {self.limit} characters")
        super().append(piece)


class _State:
    """A port of text/template/exec.go's state over Python values."""

    def __init__(self, text: str, data: Any, max_output: int = MAX_OUTPUT, max_steps: int = MAX_STEPS) -> None:
        self.text = text
        self.out: list[str] = _Output(max_output)
        self.steps, self.max_steps = 0, max_steps
        self.max_value, self.allocated, self.max_allocated = max_output, 0, ALLOCATION_FACTOR * max_output
        # [name, value, iface]: iface tells whether Go would hold the value in an interface{}
        # (an element of a map or slice of any) rather than as its concrete type; it only
        # matters for the type named in "can't evaluate field X in type T".
        self.vars: list[list[Any]] = [["$", data, False]]
        self.node: _Node | None = None
        self.dot_iface = False

    # errors
    def at(self, node: _Node) -> None:
        self.node = node

    def errorf(self, msg: str) -> NoReturn:
        if self.node is None:
            raise _ExecError(f"template: : {msg}")
        before = self.text[:self.node.pos]
        nl = before.rfind("\n")
        line = before.count("\n") + 1
        col = len(before[nl + 1:].encode("utf-8", "surrogatepass"))
        raise _ExecError(f'template: :{line}:{col}: executing "" at <{self.node}>: {msg}')

    # variables
    def push(self, name: str, value: Any) -> None:
        self.vars.append([name, value, False])

    def set_var(self, name: str, value: Any, iface: bool = False) -> None:
        for entry in reversed(self.vars):
            if entry[0] == name:
                entry[1], entry[2] = value, iface
                return
        self.errorf(f"undefined variable: {name}")

    def var_entry(self, name: str) -> list[Any]:
        for entry in reversed(self.vars):
            if entry[0] == name:
                return entry
        self.errorf(f"undefined variable: {name}")
        raise AssertionError  # unreachable

    # walking
    def walk(self, dot: Any, node: _Node) -> None:
        self.steps += 1
        if self.steps > self.max_steps:
            raise _ExecError(f"template: execution exceeds {self.max_steps} steps")
        self.at(node)
        if isinstance(node, _TextNode):
            self.out.append(node.text)
        elif isinstance(node, _ActionNode):
            value = self.eval_pipeline(dot, node.pipe)
            if not node.pipe.decl:
                self.at(node)
                try:
                    self.out.append(_fmt_v(value))
                except Exception as exc:  # noqa: BLE001 - an object's __str__ failed
                    self.errorf(f"can't print {node.pipe} of type {_go_type(value)}: {exc}")
        elif isinstance(node, _ListNode):
            for child in node.nodes:
                self.walk(dot, child)
        elif isinstance(node, (_IfNode, _WithNode)):
            self.walk_if_or_with(dot, node)
        elif isinstance(node, _RangeNode):
            self.walk_range(dot, node)
        elif isinstance(node, _ContinueNode):
            raise _Continue
        elif isinstance(node, _BreakNode):
            raise _Break
        else:
            self.errorf(f"unknown node: {node}")

    def walk_if_or_with(self, dot: Any, node: _BranchNode) -> None:
        mark = len(self.vars)
        try:
            value = self.eval_pipeline(dot, node.pipe)
            if _truth(value):
                if isinstance(node, _WithNode):
                    saved, self.dot_iface = self.dot_iface, False
                    try:
                        self.walk(value, node.list)
                    finally:
                        self.dot_iface = saved
                else:
                    self.walk(dot, node.list)
            elif node.else_list is not None:
                self.walk(dot, node.else_list)
        finally:
            del self.vars[mark:]

    def walk_range(self, dot: Any, node: _RangeNode) -> None:
        self.at(node)
        outer = len(self.vars)
        saved_iface = self.dot_iface
        try:
            value = self.eval_pipeline(dot, node.pipe)
            mark = len(self.vars)
            decl = node.pipe.decl
            iface = not isinstance(value, int)  # elements of []any / map[string]any

            def one(index: Any, elem: Any) -> None:
                if decl:
                    if node.pipe.is_assign:
                        if len(decl) > 1:
                            self.set_var(decl[0].ident[0], index)
                        else:
                            self.set_var(decl[0].ident[0], elem, iface)
                    else:
                        self.vars[mark - 1][1:] = [elem, iface]
                if len(decl) > 1:
                    if node.pipe.is_assign:
                        self.set_var(decl[1].ident[0], elem, iface)
                    else:
                        self.vars[mark - 2][1:] = [index, False]
                self.dot_iface = iface
                try:
                    self.walk(elem, node.list)
                except _Continue:
                    pass
                finally:
                    self.dot_iface = saved_iface
                    del self.vars[mark:]

            ran = False
            try:
                if value is None:
                    pass
                elif isinstance(value, (list, tuple, bytes, bytearray)):
                    for i, elem in enumerate(value):
                        ran = True
                        one(i, elem)
                elif isinstance(value, Mapping):
                    for key, elem in _sorted_items(value):
                        ran = True
                        one(key, elem)
                elif isinstance(value, int) and not isinstance(value, bool):
                    if len(decl) > 1:
                        self.errorf(f"can't use {value} to iterate over more than one variable")
                    for i in range(value):
                        ran = True
                        one(None, i)
                elif isinstance(value, (str, bool, float, complex)) or not hasattr(value, "__iter__"):
                    self.errorf(f"range can't iterate over {_fmt_v(value)}")
                else:
                    for i, elem in enumerate(value):
                        ran = True
                        one(i, elem)
            except _Break:
                return
            if not ran and node.else_list is not None:
                self.walk(dot, node.else_list)
        finally:
            self.dot_iface = saved_iface
            del self.vars[outer:]

    # evaluation
    def eval_pipeline(self, dot: Any, pipe: _PipeNode | None) -> Any:
        if pipe is None:
            return None
        self.at(pipe)
        value = _MISSING
        for cmd in pipe.cmds:
            value = self.eval_command(dot, cmd, value)
        for var in pipe.decl:
            if pipe.is_assign:
                self.set_var(var.ident[0], value)
            else:
                self.push(var.ident[0], value)
        return value

    def not_a_function(self, args: list[_Node], final: Any) -> None:
        if len(args) > 1 or final is not _MISSING:
            self.errorf(f"can't give argument to non-function {args[0]}")

    def eval_command(self, dot: Any, cmd: _CommandNode, final: Any) -> Any:
        first = cmd.args[0]
        if isinstance(first, _FieldNode):
            return self.eval_field_node(dot, first, cmd.args, final)
        if isinstance(first, _ChainNode):
            return self.eval_chain_node(dot, first, cmd.args, final)
        if isinstance(first, _IdentifierNode):
            return self.eval_function(dot, first, cmd, cmd.args, final)
        if isinstance(first, _PipeNode):
            self.not_a_function(cmd.args, final)
            return self.eval_pipeline(dot, first)
        if isinstance(first, _VariableNode):
            return self.eval_variable_node(dot, first, cmd.args, final)
        self.at(first)
        self.not_a_function(cmd.args, final)
        if isinstance(first, _BoolNode):
            return first.value
        if isinstance(first, _DotNode):
            return dot
        if isinstance(first, _NilNode):
            self.errorf("nil is not a command")
        if isinstance(first, _NumberNode):
            return self.ideal_constant(first)
        if isinstance(first, _StringNode):
            return first.text
        self.errorf(f"can't evaluate command {quote(str(first))}")

    def ideal_constant(self, node: _NumberNode) -> Any:
        self.at(node)
        if node.overflow:
            self.errorf(f"{node.text} overflows int")
        return node.value

    def eval_field_node(self, dot: Any, field: _FieldNode, args: list[_Node], final: Any) -> Any:
        self.at(field)
        return self.eval_field_chain(dot, dot, field, field.ident, args, final, self.dot_iface)

    def eval_chain_node(self, dot: Any, chain: _ChainNode, args: list[_Node] | None, final: Any) -> Any:
        self.at(chain)
        if isinstance(chain.node, _NilNode):
            self.errorf(f"indirection through explicit nil in {chain}")
        pipe = self.eval_arg(dot, "any", chain.node)
        return self.eval_field_chain(dot, pipe, chain, chain.field, args, final, False)

    def eval_variable_node(self, dot: Any, var: _VariableNode, args: list[_Node] | None, final: Any) -> Any:
        self.at(var)
        _, value, iface = self.var_entry(var.ident[0])
        if len(var.ident) == 1:
            self.not_a_function(args or [var], final)
            return value
        return self.eval_field_chain(dot, value, var, var.ident[1:], args, final, iface)

    def eval_field_chain(self, dot: Any, receiver: Any, node: _Node, ident: list[str],
                         args: list[_Node] | None, final: Any, iface: bool) -> Any:
        for name in ident[:-1]:
            nxt = self.eval_field(dot, name, node, None, _MISSING, receiver, iface)
            receiver, iface = nxt, isinstance(receiver, Mapping)
        return self.eval_field(dot, ident[-1], node, args, final, receiver, iface)

    def eval_field(self, dot: Any, name: str, node: _Node, args: list[_Node] | None,
                   final: Any, receiver: Any, iface: bool = False) -> Any:
        has_args = (args is not None and len(args) > 1) or final is not _MISSING
        if receiver is None:  # Go: a nil interface (e.g. a missing map key) has no fields
            self.errorf(f"nil pointer evaluating interface {{}}.{name}")
        if isinstance(receiver, Mapping):
            if has_args:
                self.errorf(f"{name} is not a method but has arguments")
            try:
                return receiver.get(name)
            except TypeError:
                self.errorf(f"can't evaluate field {name} in type {_go_type(receiver)}")
        if isinstance(receiver, (str, bytes, bool, int, float, complex, list, tuple)):
            self.errorf(f"can't evaluate field {name} in type {'interface {}' if iface else _go_type(receiver)}")
        if name.startswith("_"):
            self.errorf(f"can't evaluate field {name} in type {_go_type(receiver)}")
        try:
            attr = getattr(receiver, name)
        except AttributeError:
            self.errorf(f"can't evaluate field {name} in type {_go_type(receiver)}")
        if inspect.ismethod(attr) or inspect.isbuiltin(attr):
            return self.eval_call(dot, attr, None, node, name, args, final)
        if has_args:
            self.errorf(f"{name} has arguments but cannot be invoked as function")
        return attr

    def eval_function(self, dot: Any, node: _IdentifierNode, cmd: _Node,
                      args: list[_Node] | None, final: Any) -> Any:
        self.at(node)
        spec = _FUNCS.get(node.ident)
        if spec is None:
            self.errorf(f"{quote(node.ident)} is not a defined function")
        assert spec is not None
        return self.eval_call(dot, spec.fn, spec, cmd, node.ident, args, final)

    def eval_call(self, dot: Any, fn: Callable, spec: _Func | None, node: _Node, name: str,
                  args: list[_Node] | None, final: Any) -> Any:
        argn = list(args[1:]) if args is not None else []
        num_in = len(argn) + (0 if final is _MISSING else 1)
        if spec is not None:
            if spec.variadic:
                if num_in < spec.fixed:
                    self.errorf(f"wrong number of args for {name}: want at least {spec.fixed} got {len(argn)}")
            elif num_in != spec.fixed:
                self.errorf(f"wrong number of args for {name}: want {spec.fixed} got {num_in}")
        kind = spec.kind if spec is not None else (lambda i: "any")
        if spec is not None and name in ("and", "or"):  # short-circuit
            value = None
            for arg in argn:
                value = self.eval_arg(dot, "value", arg)
                if _truth(value) == (name == "or"):
                    return value
            if final is not _MISSING:
                value = final
            return value
        argv = [self.eval_arg(dot, kind(k), arg) for k, arg in enumerate(argn)]
        if final is not _MISSING:
            argv.append(self.validate(final, kind(len(argn))))
        given = sum(len(a) for a in argv if isinstance(a, (str, bytes)))
        self.steps += given // STEP_CHARS
        if self.steps > self.max_steps:
            raise _ExecError(f"template: execution exceeds {self.max_steps} steps")
        if given > self.max_value and name in _MAKES_STRINGS:
            self.at(node)
            self.errorf(f"error calling {name}: a value would exceed {self.max_value} characters")
        try:
            value = fn(*argv)
        except _FuncError as exc:
            self.at(node)
            self.errorf(f"error calling {name}: {exc}")
        except (TemplateError, _ExecError, _Break, _Continue):
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. a method or __str__ of the caller's object failed
            self.at(node)
            self.errorf(f"error calling {name}: {exc}")
        if isinstance(value, (str, bytes)):
            self.allocated += len(value)
            if len(value) > self.max_value or self.allocated > self.max_allocated:
                self.at(node)
                self.errorf(f"error calling {name}: the template's values exceed "
                            f"{self.max_value if len(value) > self.max_value else self.max_allocated} characters")
        return value

    def validate(self, value: Any, kind: str) -> Any:
        if kind == "string" and not isinstance(value, str):
            if value is None:
                self.errorf("invalid value; expected string")
            self.errorf(f"wrong type for value; expected string; got {_go_type(value)}")
        return value

    def eval_arg(self, dot: Any, kind: str, node: _Node) -> Any:
        self.at(node)
        if isinstance(node, _DotNode):
            return self.validate(dot, kind)
        if isinstance(node, _NilNode):
            if kind != "string":
                return None
            self.errorf("cannot assign nil to string")
        if isinstance(node, _FieldNode):
            return self.validate(self.eval_field_node(dot, node, [node], _MISSING), kind)
        if isinstance(node, _VariableNode):
            return self.validate(self.eval_variable_node(dot, node, None, _MISSING), kind)
        if isinstance(node, _PipeNode):
            return self.validate(self.eval_pipeline(dot, node), kind)
        if isinstance(node, _IdentifierNode):
            return self.validate(self.eval_function(dot, node, node, None, _MISSING), kind)
        if isinstance(node, _ChainNode):
            return self.validate(self.eval_chain_node(dot, node, None, _MISSING), kind)
        if kind == "string":
            if isinstance(node, _StringNode):
                return node.text
            self.errorf(f"expected string; found {node}")
        if isinstance(node, _BoolNode):
            return node.value
        if isinstance(node, _NumberNode):
            return self.ideal_constant(node)
        if isinstance(node, _StringNode):
            return node.text
        self.errorf(f"can't handle {node} for arg of type interface {{}}")


# --------------------------------------------------------------------------- public API

class Template:
    """A parsed template; immutable, so one instance may be rendered concurrently."""

    __slots__ = ("_text", "_root")

    def __init__(self, text: str, root: _ListNode) -> None:
        self._text = text
        self._root = root

    @property
    def source(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return f"<gotemplate.Template {self._text[:40]!r}>"

    def render(self, data: Any, *, max_output: int = MAX_OUTPUT, max_steps: int = MAX_STEPS) -> str:
        """Executes the template with ``data`` as ``.`` and ``$``; TemplateError on failure, and when
        the output or the number of steps exceeds its limit (templates can come from clients)."""
        state = _State(self._text, data, max_output, max_steps)
        try:
            state.walk(data, self._root)
        except _ExecError as exc:
            raise TemplateError(str(exc)) from None
        except RecursionError:
            raise TemplateError('template: : executing "": exceeded maximum template depth') from None
        return "".join(state.out)

    def fields(self) -> set[str]:
        """Names of the fields the template references, as Ollama's Template.Vars sees them.

        Like Ollama's ``Identifiers`` walk: every segment of every field (``.A.B`` gives
        A and B) and of every variable chain (``$.Messages`` gives Messages), in actions
        and in if/range/with pipelines and bodies, with the case kept; variable names
        themselves are left out.  Ollama compares these lower-cased (e.g. "tools",
        "suffix", "messages", "think"), so compare case-insensitively for parity.
        """
        names: set[str] = set()
        _identifiers(self._root, names)
        return {n for n in names if not n.startswith("$")}

    def cut_after_response(self) -> Template:
        """Ollama's legacy-path tree cut (template.Execute's ``deleteNode``).

        For templates without ``.Messages`` Ollama renders the last turn with every
        node after the first ``.Response`` field removed (the field itself is kept;
        if/range/with pipelines are not searched).  Returns that template; raises
        TemplateError where Ollama's own cut would fail (an else branch after the
        cut point).
        """
        root = _copy_tree(self._root)
        state = {"cut": False}

        def pred(n: _Node) -> bool:
            if isinstance(n, _FieldNode) and "Response" in n.ident:
                state["cut"] = True
                return False
            return state["cut"]

        new_root = _delete_nodes(root, pred)
        return Template(self._text, new_root if isinstance(new_root, _ListNode) else _ListNode(0))


def _identifiers(node: _Node, out: set[str]) -> None:
    if isinstance(node, _ListNode):
        for child in node.nodes:
            _identifiers(child, out)
    elif isinstance(node, _ActionNode):
        _identifiers(node.pipe, out)
    elif isinstance(node, _BranchNode):
        _identifiers(node.pipe, out)
        _identifiers(node.list, out)
        if node.else_list is not None:
            _identifiers(node.else_list, out)
    elif isinstance(node, _PipeNode):
        for cmd in node.cmds:
            for arg in cmd.args:
                _identifiers(arg, out)
    elif isinstance(node, (_FieldNode, _VariableNode)):
        out.update(node.ident)


def _copy_tree(node: Any) -> Any:
    if isinstance(node, list):
        return [_copy_tree(n) for n in node]
    if not isinstance(node, _Node):
        return node
    clone = object.__new__(type(node))
    for cls in type(node).__mro__:
        for slot in getattr(cls, "__slots__", ()):
            if hasattr(node, slot):
                setattr(clone, slot, _copy_tree(getattr(node, slot)))
    return clone


def _delete_nodes(node: _Node, pred: Callable[[_Node], bool]) -> _Node | None:
    """Ollama's deleteNode walk, node for node."""
    if pred(node):
        return None
    if isinstance(node, _ListNode):
        node.nodes = [n for n in (_delete_nodes(c, pred) for c in node.nodes) if n is not None]
        return node
    if isinstance(node, _BranchNode):
        node.list = _delete_nodes(node.list, pred)  # type: ignore[assignment]
        if node.else_list is not None:
            else_list = _delete_nodes(node.else_list, pred)
            if else_list is None:  # Ollama's type assertion on nil panics here
                raise TemplateError("template: cannot cut the template after .Response: "
                                    "an else branch follows it")
            node.else_list = else_list  # type: ignore[assignment]
        return node
    if isinstance(node, _ActionNode):
        pipe = _delete_nodes(node.pipe, pred)
        if pipe is None:
            return None
        node.pipe = pipe  # type: ignore[assignment]
        return node
    if isinstance(node, _PipeNode):
        cmds = []
        for cmd in node.cmds:
            args = [a for a in (_delete_nodes(x, pred) for x in cmd.args) if a is not None]
            if not args:
                return None
            cmd.args = args
            cmds.append(cmd)
        if not cmds:
            return None
        node.cmds = cmds
    return node


def parse(text: str) -> Template:
    """Parses a Go template; raises TemplateError (Go's message) on a syntax error."""
    if not isinstance(text, str):
        raise TypeError("template text must be str")
    try:
        root = _Parser(text, _FUNCS).parse()
    except _ParseError as exc:
        raise TemplateError(str(exc)) from None
    except RecursionError:
        raise TemplateError("template: : template nested too deeply") from None
    return Template(text, root)
