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

import asyncio
import json
import logging
import os
import re
import resource
import sys
from typing import Any

from service.cache import BoundedCache
from service.errors import invalid

log = logging.getLogger(__name__)

MAX_SCHEMA_BYTES = 64 << 10          # the schema as JSON text
MAX_SCHEMA_DEPTH = 32                # nested objects and arrays in the schema
MAX_REPETITION = 1000                # any repetition count (llama.cpp's parser refuses deeper optional nesting)
MAX_GRAMMAR_BYTES = 256 << 10        # the GBNF text (llama.cpp parses ~2 MB/s, for every request using it)
CONVERT_SECONDS = 5.0                # conversion and parse, in the worker
WORKER_MEMORY_BYTES = 1 << 30        # the worker's address space for a conversion, over what its code takes
CACHE_BYTES = 16 << 20               # grammars kept, in bytes of schema and grammar text
# The worker needs one thread and no accelerator (a GBNF parse touches no model).
_WORKER_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}

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
            stack.extend((value, depth + 1) for value in node.values() if isinstance(value, (dict, list)))
        else:
            stack.extend((value, depth + 1) for value in node if isinstance(value, (dict, list)))
    return schema


# -- the worker process ---------------------------------------------------------------------------------
_OUT_OF_MEMORY = "format: the schema needs more memory to convert than the limit allows"


def _convert(schema_text: str) -> str:
    """In the worker: the schema's GBNF, checked by llama.cpp's parser (ValueError if it cannot be)."""
    import llama_cpp
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        grammar = json_schema_to_gbnf(schema_text)
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


def _address_space() -> int:
    """This process's address space now, in bytes (Linux; 0 where it cannot be read)."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) << 10 for line in status if line.startswith("VmSize:"))
    except (OSError, StopIteration, ValueError):
        return 0


def worker(memory_bytes: int = WORKER_MEMORY_BYTES) -> None:
    """`python -m service.grammar [MEMORY_BYTES]`: converts schemas, one JSON line in ({"schema": ...}), one out
    ({"grammar": ...}, {"error": ...}, or {"error": ..., "exhausted": true} after a MemoryError, when the parent
    replaces it), with MEMORY_BYTES of address space over what its code takes."""
    import llama_cpp  # noqa: F401   loaded before the cap: the cap is the conversion's, whatever the build loads
    from llama_cpp.llama_grammar import json_schema_to_gbnf  # noqa: F401

    cap = _address_space() + memory_bytes
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    for line in sys.stdin:
        out: dict[str, Any]
        try:
            out = {"grammar": _convert(json.loads(line)["schema"])}
        except ValueError as exc:
            out = {"error": str(exc)}
        except MemoryError:
            out = {"error": _OUT_OF_MEMORY, "exhausted": True}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


class Grammars:
    """Builds grammars for `format` values (see the module docstring); one per service."""

    def __init__(self, cache_bytes: int = CACHE_BYTES, timeout: float = CONVERT_SECONDS,
                 worker_memory: int = WORKER_MEMORY_BYTES):
        self._cache: BoundedCache[str, str] = BoundedCache(cache_bytes, lambda spec, grammar: len(spec) + len(grammar))
        self._timeout = timeout
        self._worker_memory = worker_memory
        self._worker: asyncio.subprocess.Process | None = None
        self._turn = asyncio.Lock()          # one conversion at a time: its time limit is its own
        self.conversions = 0                 # observability: schemas converted (cache misses)

    async def compile(self, spec: str) -> str:
        """The GBNF for "json" or a JSON Schema (as text); GenerateError INVALID_ARGUMENT when it cannot be."""
        if spec == "json":
            from llama_cpp.llama_grammar import JSON_GBNF
            return JSON_GBNF
        cached = self._cache.get(spec)
        if cached is not None:
            return cached
        check_schema(spec)
        # The conversion is a task of its own that holds the worker until it ends or times out: a request that
        # goes away does not leave the next one waiting on (and timed out by) its conversion.
        grammar = await asyncio.shield(asyncio.ensure_future(self._convert(spec)))
        self._cache.put(spec, grammar)
        return grammar

    async def _convert(self, spec: str) -> str:
        async with self._turn:
            if self._worker is None or self._worker.returncode is not None:
                self._worker = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "service.grammar", str(self._worker_memory), stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE, limit=4 * MAX_GRAMMAR_BYTES + (1 << 16),
                    env={**os.environ, **_WORKER_ENV})
            worker = self._worker
            assert worker.stdin is not None and worker.stdout is not None
            self.conversions += 1
            try:
                worker.stdin.write(json.dumps({"schema": spec}).encode() + b"\n")
                await worker.stdin.drain()
                line = await asyncio.wait_for(worker.stdout.readline(), self._timeout)
                if not line:
                    raise EOFError("the worker exited")
                out = json.loads(line)
            except TimeoutError:
                log.warning("format: converting a schema took over %ss; its worker is replaced", self._timeout)
                await self._restart()
                raise invalid(f"format: the schema took longer than the limit of {self._timeout:g} s to convert",
                              "format") from None
            except (OSError, EOFError, ValueError) as exc:     # the worker died (a crash, its memory cap)
                log.warning("format: the grammar worker failed (%s); it is replaced", exc)
                await self._restart()
                raise invalid("invalid JSON schema in format", "format") from None
            if out.get("exhausted"):          # a process that ran out of memory is not trusted again
                log.warning("format: a schema exhausted the grammar worker's memory; it is replaced")
                await self._restart()
            if "error" in out:
                raise invalid(out["error"], "format")
            return out["grammar"]

    async def _restart(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None and worker.returncode is None:
            worker.kill()
            await worker.wait()

    @property
    def cached_bytes(self) -> int:
        return self._cache.bytes

    @property
    def worker_pid(self) -> int | None:
        return self._worker.pid if self._worker is not None else None

    async def close(self) -> None:
        await self._restart()


if __name__ == "__main__":
    worker(int(sys.argv[1]) if len(sys.argv) > 1 else WORKER_MEMORY_BYTES)
