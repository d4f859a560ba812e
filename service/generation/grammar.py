"""Output constraints as llama.cpp grammars (GBNF), built with bounded work.

Ollama's `format` is "json" or a JSON Schema, and any client can send one. llama-cpp-python's converter turns
a schema into GBNF, and its output grows with the schema's repetition counts (`maxLength: 10**8` is gigabytes),
so a 90-byte request could take the service down. Every schema therefore goes through, in order:

1. limits on the schema itself, checked without recursion: its size, its nesting depth, and every repetition
   count (minLength/maxLength, minItems/maxItems, minProperties/maxProperties, and `{m,n}` in patterns) → 400
   naming the limit;
2. conversion *and* llama.cpp's own parse of the result in a separate worker process, capped in time and in
   address space (1 GiB over what the worker's code takes once loaded): nothing a schema does there can stall
   the event loop, exhaust the service's memory or crash it (a worker that overruns is killed and replaced)
   → 400;
3. a cap on the grammar's size (llama.cpp parses it again for every request that uses it);
4. a cache of the grammars built, bounded in bytes (least recently used first out).

The limits are the README's ("Limits"). `compile("json")` is llama.cpp's JSON grammar, with no worker.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import re
from typing import Any

from service import workers
from service.cache import BoundedCache
from service.engines import schema_grammar
from service.errors import invalid

log = logging.getLogger(__name__)

MAX_SCHEMA_BYTES = 64 << 10          # the schema as JSON text
MAX_SCHEMA_DEPTH = 32                # nested objects and arrays in the schema
MAX_REPETITION = 1000                # any repetition count (llama.cpp's parser refuses deeper optional nesting)
MAX_GRAMMAR_BYTES = schema_grammar.MAX_GRAMMAR_BYTES  # the GBNF text (llama.cpp parses it again for each request)
CONVERT_SECONDS = 5.0                # conversion and parse, in the worker
WORKER_MEMORY_BYTES = 1 << 30        # the worker's address space for a conversion, over what its code takes
CACHE_BYTES = 16 << 20               # grammars kept, in bytes of schema and grammar text
MAX_OPTIONAL_RUN = 16                # optional parts in a row in a pattern (see pattern_problem)

_REPETITIONS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties",
                "minContains", "maxContains")
_QUANTIFIER = re.compile(r"\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")


def check_schema(text: str) -> Any:
    """The schema, parsed, after the limits on its size, depth and repetition counts (400 naming the limit)."""
    size = len(text.encode("utf-8"))
    if size > MAX_SCHEMA_BYTES:
        raise invalid(f"format: the schema is {size} bytes, over the limit of {MAX_SCHEMA_BYTES}", "format")
    try:
        schema = json.loads(text)
    except (ValueError, RecursionError):
        schema = None
    if not isinstance(schema, dict):
        from common.golang import quote
        raise invalid(f'invalid format: {quote(text)}; expected "json" or a valid JSON Schema object', "format")
    stack: list[tuple[Any, int]] = [(schema, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_SCHEMA_DEPTH:
            raise invalid(f"format: the schema nests deeper than the limit of {MAX_SCHEMA_DEPTH} levels", "format")
        if isinstance(node, dict):
            for key in _REPETITIONS:
                count = node.get(key)
                if isinstance(count, (int, float)) and not isinstance(count, bool) and count > MAX_REPETITION:
                    raise invalid(f'format: "{key}" is {count}, over the limit of {MAX_REPETITION} repetitions',
                                  "format")
            pattern = node.get("pattern")
            if isinstance(pattern, str):
                for low, high in _QUANTIFIER.findall(pattern):
                    if max(int(low), int(high or 0)) > MAX_REPETITION:
                        raise invalid(f"format: a pattern repeats more than the limit of {MAX_REPETITION} times",
                                      "format")
                problem = pattern_problem(pattern)
                if problem:
                    raise invalid(f"format: {problem}", "format")
            stack.extend((value, depth + 1) for value in node.values() if isinstance(value, (dict, list)))
        else:
            stack.extend((value, depth + 1) for value in node if isinstance(value, (dict, list)))
    return schema


# -- patterns whose grammar llama.cpp cannot sample in reasonable time ----------------------------------
@dataclasses.dataclass
class _Alternative:
    """One alternative of a regex group, read so far: its optional parts in a row, and the longest such run."""

    nullable: bool = True             # every part can match nothing
    weight: int = 0                   # optional parts, when every part is optional
    run: int = 0                      # optional parts in a row at its end
    longest: int = 0                  # the longest run of optional parts

    def add(self, nullable: bool, weight: int) -> None:
        if nullable:
            self.run += weight
            self.weight += weight
            self.longest = max(self.longest, self.run)
        else:
            self.nullable, self.run = False, 0


_QUANTIFIER_AT = re.compile(r"\{(\d+)(,(\d*))?\}")


def pattern_problem(pattern: str) -> str | None:
    """Why llama.cpp's grammar matcher would choke on this pattern, or None. It keeps one parse stack for each way
    to skip optional parts and compares them pairwise for every candidate token, so a token's cost grows with the
    cube of the optional parts in a row: `(a?){100}` takes seconds a token, `(a?){1000}` hours, and a part that can
    match nothing repeated without bound (`(a?)*`, `(a|)+`) never ends. The alternatives of a group that can match
    nothing count together, not the largest alone: each keeps stacks of its own, and alternatives that match the
    same text (`(a|[a-z]*){15}`) multiply them. Read without recursion (a pattern is client input)."""
    groups: list[list[_Alternative]] = [[_Alternative()]]
    last: tuple[bool, int] | None = None              # the last atom read (nullable, weight), until its quantifier
    i, n = 0, len(pattern)

    def flush() -> None:
        nonlocal last
        if last is not None:
            groups[-1][-1].add(*last)
            last = None

    while i < n:
        c = pattern[i]
        if c in "*+?{":
            low, high, end = _quantifier(pattern, i)
            if end == i:                               # a "{" that is no quantifier: a literal
                flush()
                last, i = (False, 1), i + 1
                continue
            if end < n and pattern[end] == "?":        # lazy: the same language
                end += 1
            if last is not None:
                nullable, weight = last
                if nullable and high is None:
                    return ("a pattern repeats without bound a part that can match nothing (near "
                            f"{pattern[max(0, i - 12):end]!r})")
                last = (nullable or low == 0, weight * max(high or 1, 1) if nullable else 1)
            i = end
            continue
        flush()
        if c == "\\":
            last, i = (False, 1), i + 2
        elif c == "[":
            j = i + 1 + (i + 1 < n and pattern[i + 1] == "^")
            j += j < n and pattern[j] == "]"
            while j < n and pattern[j] != "]":
                j += 2 if pattern[j] == "\\" else 1
            last, i = (False, 1), j + 1
        elif c == "(":
            groups.append([_Alternative()])
            i += 1
            if pattern.startswith("?:", i):
                i += 2
        elif c == "|":
            groups[-1].append(_Alternative())
            i += 1
        elif c == ")" and len(groups) > 1:
            alternatives = groups.pop()
            longest = max(a.longest for a in alternatives)
            if longest > MAX_OPTIONAL_RUN:
                return _too_many(longest)
            nullable = any(a.nullable for a in alternatives)
            weight = sum(a.weight if a.nullable else 1 for a in alternatives) if nullable else 1
            last, i = (nullable, weight), i + 1
        elif c in "^$":
            i += 1
        else:
            last, i = (False, 1), i + 1
    flush()
    longest = max(a.longest for group in groups for a in group)
    return _too_many(longest) if longest > MAX_OPTIONAL_RUN else None


def _too_many(run: int) -> str:
    return f"a pattern has {run} optional parts in a row, over the limit of {MAX_OPTIONAL_RUN}"


def _quantifier(pattern: str, i: int) -> tuple[int, int | None, int]:
    """(min, max or None for unbounded, end) of the quantifier at i; end == i when there is none."""
    c = pattern[i]
    if c == "*":
        return 0, None, i + 1
    if c == "+":
        return 1, None, i + 1
    if c == "?":
        return 0, 1, i + 1
    match = _QUANTIFIER_AT.match(pattern, i)
    if match is None:
        return 0, 0, i
    low = int(match.group(1))
    high = low if match.group(2) is None else (int(match.group(3)) if match.group(3) else None)
    return low, high, match.end()


# -- the worker process ---------------------------------------------------------------------------------



class Grammars:
    """Builds grammars for `format` values (see the module docstring); one per service."""

    def __init__(self, cache_bytes: int = CACHE_BYTES, timeout: float = CONVERT_SECONDS,
                 worker_memory: int = WORKER_MEMORY_BYTES):
        self._cache: BoundedCache[str, str] = BoundedCache(cache_bytes, lambda spec, grammar: len(spec) + len(grammar))
        # One conversion at a time: its time limit is its own.
        self._workers = workers.WorkerPool("service.engines.schema_grammar", size=1, timeout=timeout,
                                           memory_bytes=worker_memory, line_limit=4 * MAX_GRAMMAR_BYTES + (1 << 16))

    @property
    def conversions(self) -> int:
        """Schemas sent to the worker (cache misses)."""
        return self._workers.calls

    async def compile(self, spec: str) -> str:
        """The GBNF for "json" or a JSON Schema (as text); GenerateError INVALID_ARGUMENT when it cannot be."""
        if spec == "json":
            return schema_grammar.JSON_GRAMMAR
        cached = self._cache.get(spec)
        if cached is not None:
            return cached
        check_schema(spec)
        try:
            out = await self._workers.call({"schema": spec})
        except workers.WorkerTimeout:
            raise invalid(f"format: the schema took longer than the limit of {self._workers.timeout:g} s to "
                          "convert", "format") from None
        except workers.WorkerExhausted:
            raise invalid("format: the schema needs more memory to convert than the limit allows", "format") from None
        except workers.WorkerError:                       # the worker died (a crash, its memory cap)
            raise invalid("invalid JSON schema in format", "format") from None
        if "error" in out:
            raise invalid(out["error"], "format")
        grammar = out["grammar"]
        self._cache.put(spec, grammar)
        return grammar

    @property
    def cached_bytes(self) -> int:
        return self._cache.bytes

    @property
    def worker_pid(self) -> int | None:
        pids = self._workers.pids
        return pids[0] if pids else None

    async def close(self) -> None:
        await self._workers.close()


