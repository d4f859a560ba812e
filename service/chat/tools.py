"""Tool calling (Ollama's /api/chat `tools`): what the templates see of tools and past calls,
and the parser that finds the calls in what the model writes.

A template that supports tools shows the model how to call one: usually a tag followed by a
JSON object such as ``<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}``.
The parser takes the tag from the model's template (as Ollama's tools.Parser does); with no
tag, a call is a bare JSON object (or a list of them) that the reply starts with. Text before
the tag is content; a call's JSON is held back until it is complete; JSON that is not a call
of one of the offered tools is given back as content, and the parser stops looking.
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


MAX_DEPTH = 64                  # JSON nested deeper than this is no tool call
MAX_CALL_CHARS = 1 << 20        # nor is one longer than this


class _Scanner:
    """Finds where a JSON object or array ends, each character looked at once however the text arrives."""

    def __init__(self) -> None:
        self.depth = 0
        self.in_string = self.escape = False

    def feed(self, piece: str) -> int | None:
        """Index in `piece` just past the end of the value; None while it goes on; -1: nested too deep."""
        depth, in_string, escape = self.depth, self.in_string, self.escape
        try:
            for i, c in enumerate(piece):
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
                    if depth > MAX_DEPTH:
                        return -1
                elif c in "}]":
                    depth -= 1
                    if depth == 0:
                        return i + 1
            return None
        finally:
            self.depth, self.in_string, self.escape = depth, in_string, escape


def _finite(text: str) -> float:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError("not a finite number")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _loads(text: str) -> Any:
    """Strict JSON (no NaN or Infinity, numbers a double holds), or ValueError."""
    try:
        return json.loads(text, object_pairs_hook=collections.OrderedDict, parse_float=_finite,
                          parse_int=lambda t: int(t) if len(t) < 16 else _finite(t), parse_constant=_no_constant)
    except (RecursionError, OverflowError) as exc:
        raise ValueError(str(exc)) from exc


class ToolCallParser:
    """Splits generated text into content and tool calls, piece by piece.

    A call opens with the template's tag anywhere in the text, or with a bracket as the first thing the model
    writes (the bare JSON that templates without a tag, and Llama 3.1 for user-defined tools, ask for)."""

    def __init__(self, tag: str | None, names: set[str]):
        self._tag = tag
        self._close = None if tag is None else _closing(tag)
        self._names = names
        self._buf = ""
        self._started = False             # something other than whitespace was written
        self._calling = False             # the tag (or leading JSON) was seen: calls are being written
        self._scan: _Scanner | None = None  # set while inside a call's JSON
        self._raw: list[str] = []         # the text since that call began, verbatim (content if it is none)
        self._parts: list[str] = []       # the call's JSON so far
        self._size = 0
        self._done = False                # the text is not (or no longer) tool calls
        self._index = 0

    def feed(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        """(content, calls) that `text` completes."""
        if self._done:
            return text, []
        if self._scan is not None:                        # inside a call's JSON
            self._raw.append(text)
            return self._scanned(text)
        self._buf += text                                 # between calls: a few characters at most
        content = ""
        if not self._calling:
            stripped = self._buf.lstrip()
            if not self._started and stripped[:1] in ("{", "["):
                self._calling = True                      # bare JSON first
            elif self._tag is None:
                return (self._give_up(), []) if stripped else ("", [])   # no tag, and not JSON first: content
            else:
                self._started = self._started or bool(stripped)
                i = self._buf.find(self._tag)
                if i < 0:
                    keep = self._partial(self._buf, self._tag)
                    content, self._buf = self._buf[:len(self._buf) - keep], self._buf[len(self._buf) - keep:]
                    return content, []
                content, self._buf = self._buf[:i], self._buf[i:]
                self._calling = True
        rest, calls = self._between()
        return content + rest, calls

    def flush(self) -> str:
        """What is left at the end of the generation (an unfinished call is content)."""
        rest = self._give_up()
        return "" if self._index and not rest.strip() else rest

    @staticmethod
    def _partial(text: str, tag: str) -> int:
        """Length of the longest end of `text` that begins `tag`."""
        for n in range(min(len(tag) - 1, len(text)), 0, -1):
            if tag.startswith(text[-n:]):
                return n
        return 0

    def _between(self) -> tuple[str, list[dict[str, Any]]]:
        """After the tag or a call: skips a closing tag, the next opening tag and spaces, then starts on
        the next call's JSON. Anything else ends the calls."""
        s = self._buf.lstrip()
        if self._close and self._index and s.startswith(self._close):
            self._buf = s = s[len(self._close):].lstrip()  # the end of a call already taken
        if self._tag and s.startswith(self._tag):
            s = s[len(self._tag):].lstrip()                # consumed with the call that follows it
        if not s:
            return "", []
        if s[0] not in "{[":
            if any(self._partial(s, t) == len(s) for t in (self._close, self._tag) if t):
                return "", []                              # a tag may be coming
            return self._give_up(), []
        self._scan, self._raw, self._parts, self._size = _Scanner(), [self._buf], [], 0
        self._buf = ""
        return self._scanned(s)

    def _scanned(self, piece: str) -> tuple[str, list[dict[str, Any]]]:
        """Scans the next piece of a call's JSON; at its end, takes the call and goes on after it."""
        assert self._scan is not None                      # called only inside a call's JSON
        end = self._scan.feed(piece)
        if end is None:
            self._parts.append(piece)
            self._size += len(piece)
            return (self._give_up(), []) if self._size > MAX_CALL_CHARS else ("", [])
        found = None if end < 0 else self._calls("".join(self._parts) + piece[:end])
        if found is None:
            return self._give_up(), []
        self._buf, self._scan, self._raw, self._parts = piece[end:], None, [], []
        rest, more = self._between()
        return rest, found + more

    def _give_up(self) -> str:
        rest = "".join(self._raw) if self._scan is not None else self._buf
        self._buf, self._raw, self._scan, self._done = "", [], None, True
        return rest

    def _calls(self, text: str) -> list[dict[str, Any]] | None:
        try:
            value = _loads(text)
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
                    args = _loads(args)
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


def call_schema(tools: list[dict[str, Any]], name: str | None = None) -> dict[str, Any]:
    """A JSON Schema only a call of one of `tools` (of `name`, if given) matches, arguments valid for its
    parameters: what decoding is constrained to when a call is required. The reply is then a bare JSON object,
    {"name": ..., "arguments": {...}}, which the parser takes as a call without a tag."""
    variants = [{"type": "object",
                 "properties": {"name": {"const": f["name"]},
                                "arguments": f.get("parameters") or {"type": "object"}},
                 "required": ["name", "arguments"]}
                for f in (t["function"] for t in tools) if name is None or f["name"] == name]
    return variants[0] if len(variants) == 1 else {"anyOf": variants}


# -- tools on a model whose template has no tool syntax (the generic format) ---------------------------------
def generic_note(tools: list[dict[str, Any]], required: bool) -> str:
    """The system message's note of the tools, in gengate's generic format: a call is the whole reply, one JSON
    object {"name": ..., "arguments": {...}}."""
    functions = json.dumps([t["function"] for t in tools], ensure_ascii=False, sort_keys=True)
    if required:
        return ("Answer with a call of one of these functions, as a JSON object {\"name\": ..., \"arguments\": "
                "{...}}:\n" + functions)
    return ("You can call these functions. To call one, answer with only a JSON object {\"name\": ..., "
            "\"arguments\": {...}} and nothing else; otherwise answer in text.\n" + functions)


def generic_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A conversation's tool calls and results as the generic format writes them: an assistant's call is its
    reply, the call's JSON object; a tool's result is a user turn, `Result of NAME: CONTENT`."""
    out = []
    for m in messages:
        if m["role"] == "assistant" and m.get("tool_calls"):
            calls = [json.dumps({"name": c["function"]["name"], "arguments": c["function"]["arguments"]},
                                ensure_ascii=False) for c in m["tool_calls"]]
            content = "\n".join(filter(None, [m.get("content", "")] + calls))
            out.append({k: v for k, v in m.items() if k != "tool_calls"} | {"content": content})
        elif m["role"] == "tool":
            name = m.get("tool_name") or "the function"
            out.append({"role": "user", "content": f"Result of {name}: {m.get('content', '')}"})
        else:
            out.append(m)
    return out


class CallOrText:
    """A reply decoded under the tools grammar (a required call, or the generic format): when it starts with
    `{` it is one call, held until the end; otherwise it is text, streamed as it comes. A call that the token
    limit cut off is an incomplete call (ToolCallFunction.incomplete), never text."""

    def __init__(self, names: set[str]):
        self._names = names
        self._start = ""                 # the reply's leading whitespace, until its first character
        self._call: list[str] | None = None

    def feed(self, text: str) -> str:
        """The content `text` adds (nothing while the reply is a call)."""
        if self._call is not None:
            self._call.append(text)
            return ""
        if not self._start.strip():
            self._start += text
            stripped = self._start.lstrip()
            if not stripped:
                return ""
            if stripped[0] == "{":
                self._call = [stripped]
                return ""
            text, self._start = self._start, "x"
        return text

    def finish(self, cut: bool) -> tuple[str, list[dict[str, Any]]]:
        """(content left, calls) at the end of the reply; `cut`: it ended at the token limit."""
        if self._call is None:
            return ("" if self._start.strip() else self._start), []
        text = "".join(self._call)
        try:
            value = _loads(text)
        except ValueError:
            value = None
        if isinstance(value, dict) and isinstance(value.get("name"), str) and isinstance(value.get("arguments"), dict):
            return "", [{"index": 0, "name": value["name"], "arguments": value["arguments"]}]
        if not cut:                       # the grammar held, so this does not happen; the text is not lost
            return text, []
        partial = parse_partial(text) or {}
        name = partial.get("name") if isinstance(partial.get("name"), str) else ""
        arguments = partial.get("arguments") if isinstance(partial.get("arguments"), dict) else {}
        at = text.find('"arguments"')
        written = text[text.index(":", at) + 1:].lstrip() if at >= 0 and ":" in text[at:] else ""
        return "", [{"index": 0, "name": name, "arguments": arguments, "incomplete": True,
                     "arguments_json": written}]


def parse_partial(text: str) -> Any:
    """The longest beginning of a JSON text that parses once its open arrays and objects are closed, cut after
    its last complete value (a string cut off is not one); None if none does."""
    stack: list[str] = []
    in_string = escaped = False
    cuts: list[tuple[int, str]] = []          # (end of a prefix, what closes it)
    for i, c in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
                cuts.append((i + 1, "".join("}" if s == "{" else "]" for s in reversed(stack))))
            continue
        if c == '"':
            in_string = True
        elif c in "{[":
            stack.append(c)
            cuts.append((i + 1, "".join("}" if s == "{" else "]" for s in reversed(stack))))
        elif c in "}]":
            if stack:
                stack.pop()
            cuts.append((i + 1, "".join("}" if s == "{" else "]" for s in reversed(stack))))
        elif c not in " \t\r\n,:":
            cuts.append((i + 1, "".join("}" if s == "{" else "]" for s in reversed(stack))))
    for end, closers in reversed(cuts):
        try:
            return _loads(text[:end] + closers)
        except ValueError:
            continue
    return None
