"""Tool calling (Ollama's /api/chat `tools`): what the templates see of tools and past calls,
and the parser that finds the calls in what the model writes.

A template that supports tools shows the model how to call one: usually a tag followed by a
JSON object such as ``<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}``.
The parser takes the tag from the model's template (as Ollama's tools.Parser does); with no
tag, a call is a bare JSON object (or a list of them). Text before the tag is content; a
call's JSON is held back until it is complete; JSON that is not a call of one of the offered
tools is given back as content, and the parser stops looking.
"""
from __future__ import annotations

import collections
import json
import re
from typing import Any

# Tags that open a tool call, in the templates of the model families that have one.
KNOWN_TAGS = ("<tool_call>", "[TOOL_CALLS]", "<|python_tag|>", "<|tool_call_start|>", "<function_call>",
              "<tool_calls>", "<|tool▁calls▁begin|>", "<|tool_call|>")
# The literal text just before `{{ range .ToolCalls }}` in a Go template.
_GO_TAG = re.compile(r"(\S+)\s*\{\{-?\s*range\s+(?:\$\w+\s*(?:,\s*\$\w+\s*)?:?=\s*)?\$?\.ToolCalls")


def tool_tag(template: str) -> str | None:
    """The text that opens a tool call in `template`'s output; None: a bare JSON object."""
    found = _GO_TAG.search(template)
    if found and found.group(1)[0] in "<[" and not found.group(1).startswith("{{"):
        tag = found.group(1).split("}}")[-1]
        if len(tag) > 1:
            return tag
    for tag in KNOWN_TAGS:
        if tag in template:
            return tag
    return None


def _closing(tag: str) -> str | None:
    if tag.startswith("<") and tag.endswith(">") and not tag.startswith("</"):
        return "</" + tag[1:]
    return None


def _json_end(s: str) -> int | None:
    """Index just past the JSON object or array that `s` starts with; None while it is incomplete."""
    depth, in_string, escape = 0, False, False
    for i, c in enumerate(s):
        if in_string:
            if escape:
                escape = False
            elif c == "\\":
                escape = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


class ToolCallParser:
    """Splits generated text into content and tool calls, piece by piece."""

    def __init__(self, tag: str | None, names: set[str]):
        self._tag = tag or "{"
        self._bare = tag is None          # the tag is the JSON's own first character
        self._close = None if tag is None else _closing(tag)
        self._names = names
        self._buf = ""
        self._calling = False             # the tag was seen: the buffer holds calls being written
        self._done = False                # the text is not (or no longer) tool calls
        self._index = 0

    def feed(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        """(content, calls) that `text` completes."""
        if self._done:
            return text, []
        self._buf += text
        content = ""
        if not self._calling:
            i = self._find(self._buf)
            if i < 0:
                keep = self._partial(self._buf, self._tag)
                content, self._buf = self._buf[:len(self._buf) - keep], self._buf[len(self._buf) - keep:]
                return content, []
            content, self._buf = self._buf[:i], self._buf[i:]
            self._calling = True
        calls, rest = self._parse()
        return content + rest, calls

    def flush(self) -> str:
        """What is left at the end of the generation (an unfinished call is content)."""
        rest, self._buf = self._buf, ""
        self._done = True
        return "" if self._index and not rest.strip() else rest

    def _find(self, text: str) -> int:
        if not self._bare:
            return text.find(self._tag)
        starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
        return min(starts, default=-1)

    @staticmethod
    def _partial(text: str, tag: str) -> int:
        """Length of the longest end of `text` that begins `tag`."""
        for n in range(min(len(tag) - 1, len(text)), 0, -1):
            if tag.startswith(text[-n:]):
                return n
        return 0

    def _parse(self) -> tuple[list[dict[str, Any]], str]:
        calls: list[dict[str, Any]] = []
        while True:
            s = self._buf.lstrip()
            if self._close and self._index and s.startswith(self._close):
                self._buf = s[len(self._close):]          # the end of a call already taken
                continue
            if not self._bare and s.startswith(self._tag):
                s = s[len(self._tag):].lstrip()           # consumed with the call that follows it
            if not s:
                return calls, ""
            if s[0] not in "{[":
                if any(self._partial(s, t) == len(s) for t in (self._close, self._tag) if t):
                    return calls, ""          # a tag may be coming
                return calls, self._give_up()
            end = _json_end(s)
            if end is None:
                return calls, ""
            found = self._calls(s[:end])
            if found is None:
                return calls, self._give_up()
            calls += found
            self._buf = s[end:]

    def _give_up(self) -> str:
        self._done = True
        rest, self._buf = self._buf, ""
        return rest

    def _calls(self, text: str) -> list[dict[str, Any]] | None:
        try:
            value = json.loads(text, object_pairs_hook=collections.OrderedDict)
        except ValueError:
            return None
        calls = []
        for item in value if isinstance(value, list) else [value]:
            if not isinstance(item, dict):
                return None
            if isinstance(item.get("function"), dict):
                item = item["function"]
            name = item.get("name")
            args = item.get("arguments", item.get("parameters", {}))
            if isinstance(args, str):
                try:
                    args = json.loads(args, object_pairs_hook=collections.OrderedDict)
                except ValueError:
                    return None
            if not isinstance(name, str) or not isinstance(args, dict) or (self._names and name not in self._names):
                return None
            calls.append({"index": self._index, "name": name, "arguments": args})
            self._index += 1
        return calls


# -- what Go templates see -------------------------------------------------------------------------
_GO_KEYS = {"Defs": "$defs", "AnyOf": "anyOf"}
_STRUCTS = {"function", "parameters"}      # struct fields: their zero value is an empty struct, not nil
_MAPS = {"properties", "$defs"}            # map fields: ranged in insertion order


class GoStruct:
    """A JSON object as the Go struct Ollama's templates read (api.Tool, api.ToolCall, …):
    `.Function.Name` reads the key "name" of "function"; `json` writes the JSON object."""

    __slots__ = ("_value",)

    def __init__(self, value: dict[str, Any]):
        self._value = value

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        key = _GO_KEYS.get(name, name[:1].lower() + name[1:])
        if key not in self._value:              # a Go struct's absent field is its zero value
            return GoStruct({}) if key in _STRUCTS else None
        return _go(key, self._value[key])

    def __json__(self) -> dict[str, Any]:
        return self._value

    def __str__(self) -> str:
        return json.dumps(self._value, separators=(",", ":"), ensure_ascii=False)


class Arguments(GoStruct):
    """A tool call's arguments: printed as JSON (Ollama's ToolCallFunctionArguments.String)."""

    __slots__ = ()


def _go(key: str, value: Any) -> Any:
    if key == "arguments" and isinstance(value, dict):
        return Arguments(value)
    if key in _MAPS and isinstance(value, dict):
        return collections.OrderedDict((k, GoStruct(v) if isinstance(v, dict) else v) for k, v in value.items())
    if isinstance(value, dict):
        return GoStruct(value)
    if isinstance(value, list):
        return [GoStruct(v) if isinstance(v, dict) else v for v in value]
    return value


def go_values(items: list[dict[str, Any]]) -> list[GoStruct]:
    """Tools or tool calls (JSON objects) as the structs a Go template ranges over."""
    return [GoStruct(item) for item in items]
