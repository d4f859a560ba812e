"""service.generation.grammar: a `format` schema costs bounded time and memory, whatever a client sends."""
from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.errors import GenerateError, Kind
from service.generation import grammar

# One event loop for the module: a Grammars' worker belongs to the loop that started it.
LOOP = asyncio.new_event_loop()


def run(coro):
    return LOOP.run_until_complete(coro)


@pytest.fixture
def grammars():
    g = grammar.Grammars()
    yield g
    run(g.close())


def compile_(g: grammar.Grammars, schema) -> str:
    return run(g.compile(schema if isinstance(schema, str) else json.dumps(schema)))


def refused(g: grammar.Grammars, schema) -> str:
    with pytest.raises(GenerateError) as err:
        compile_(g, schema)
    assert err.value.kind is Kind.INVALID_ARGUMENT and err.value.field == "format"
    return err.value.message


def test_the_90_byte_request_that_took_the_service_down_is_a_400_at_once(grammars):
    start = time.monotonic()
    message = refused(grammars, {"type": "string", "minLength": 1000000000})
    assert message == 'format: "minLength" is 1000000000, over the limit of 1000 repetitions'
    assert time.monotonic() - start < 1 and grammars.conversions == 0       # refused before any conversion


@pytest.mark.parametrize("schema, words", [
    ({"type": "array", "items": {"type": "string"}, "maxItems": 5000}, '"maxItems" is 5000'),
    ({"type": "object", "properties": {"a": {"type": "string", "maxLength": 1001}}}, '"maxLength" is 1001'),
    ({"type": "string", "pattern": "^a{100000}$"}, "a pattern repeats more than the limit of 1000"),
    ({"type": "string", "pattern": "^a{2,5000}$"}, "a pattern repeats more than the limit of 1000"),
    ({"type": "object", "minProperties": 10**6}, '"minProperties" is 1000000'),
])
def test_repetition_counts_are_bounded(grammars, schema, words):
    assert words in refused(grammars, schema)


def test_schema_size_and_depth_are_bounded(grammars):
    deep: dict = {"type": "string"}
    for _ in range(40):
        deep = {"type": "array", "items": deep}
    assert refused(grammars, deep) == "format: the schema nests deeper than the limit of 32 levels"
    big = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(4000)}}
    assert "over the limit of 65536" in refused(grammars, big)


def test_grammar_size_is_bounded(grammars):
    # Each property within the limits, together a grammar of ~320 KB.
    many = {"type": "object", "properties": {f"p{i}": {"type": "string", "maxLength": 1000} for i in range(40)},
            "required": [f"p{i}" for i in range(40)]}
    assert "over the limit of 262144" in refused(grammars, many)


def test_a_valid_schema_compiles_in_the_worker_and_is_cached(grammars):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                               "age": {"type": "integer"}}, "required": ["name"]}
    text = compile_(grammars, schema)
    assert text.startswith("age ::=") or "root ::=" in text
    assert grammars.conversions == 1 and grammars.cached_bytes > len(text)
    assert compile_(grammars, schema) == text and grammars.conversions == 1      # from the cache
    assert compile_(grammars, "json").lstrip().startswith("root")                 # llama.cpp's JSON grammar


def test_not_a_schema_keeps_ollamas_message(grammars):
    assert refused(grammars, '"yaml"') == 'invalid format: "\\"yaml\\""; expected "json" or a valid JSON Schema object'


def test_a_conversion_over_the_time_limit_is_refused_and_its_worker_replaced():
    g = grammar.Grammars(timeout=0.000001)
    try:
        assert "took longer than the limit" in refused(g, {"type": "string", "maxLength": 10})
        g._workers.timeout = 30.0
        assert compile_(g, {"type": "string", "maxLength": 10})            # a new worker serves the next one
    finally:
        run(g.close())


# ~3 MB of grammar (optional properties make the converter's output quadratic): ~10 MiB to build, under 0.5 s.
BIG = {"type": "object", "properties": {f"p{i}": {"type": "string", "maxLength": 1000} for i in range(400)}}
SMALL = {"type": "string", "maxLength": 12}


def _proc(pid: int, file: str, field: str) -> int:
    """A number from /proc/PID/limits (the soft limit) or /proc/PID/status."""
    with open(f"/proc/{pid}/{file}") as f:
        line = next(x for x in f if x.startswith(field))
    return int(line[len(field):].split()[0])


def test_the_workers_cap_is_its_budget_over_what_its_code_takes():
    """llama.cpp and its libraries are loaded before the cap (a CUDA build maps gigabytes): the budget is the
    conversion's own. The worker runs one thread."""
    g = grammar.Grammars()
    try:
        assert compile_(g, SMALL)
        pid = g.worker_pid
        cap, size = _proc(pid, "limits", "Max address space"), _proc(pid, "status", "VmSize:") << 10
        assert size > 64 << 20                                  # llama_cpp and numpy are in it
        assert grammar.WORKER_MEMORY_BYTES - (32 << 20) < cap - size <= grammar.WORKER_MEMORY_BYTES
        assert _proc(pid, "status", "Threads:") == 1
    finally:
        run(g.close())


def test_a_schema_that_exhausts_the_workers_memory_is_a_400_and_the_worker_is_replaced():
    g = grammar.Grammars(worker_memory=4 << 20)
    try:
        assert compile_(g, SMALL)                               # the budget is enough for a small schema
        first = g.worker_pid
        assert refused(g, BIG) == "format: the schema needs more memory to convert than the limit allows"
        assert g.worker_pid is None                             # a worker that ran out of memory is not kept
        assert compile_(g, {"type": "string", "maxLength": 13})
        assert g.worker_pid not in (None, first)
    finally:
        run(g.close())
    g = grammar.Grammars()                                      # within the default budget: the size limit
    try:
        assert "makes a grammar of" in refused(g, BIG)
    finally:
        run(g.close())


def test_a_worker_that_dies_is_a_400_and_is_replaced():
    g = grammar.Grammars()
    try:
        assert compile_(g, SMALL)
        first = g.worker_pid
        os.kill(first, signal.SIGKILL)                          # as the kernel does past a hard limit
        assert refused(g, {"type": "string", "maxLength": 13}) == "invalid JSON schema in format"
        assert compile_(g, {"type": "string", "maxLength": 14})
        assert g.worker_pid not in (None, first)
    finally:
        run(g.close())


def test_the_cache_is_bounded_in_bytes():
    g = grammar.Grammars(cache_bytes=20_000)
    try:
        for i in range(12):
            compile_(g, {"type": "string", "maxLength": 200 + i})            # ~1.6 KB of grammar each
        assert 0 < g.cached_bytes <= 20_000
        assert len(g._cache) < 12
    finally:
        run(g.close())


# -- fuzzing: any schema, bounded time and memory ---------------------------------------------------------------
_counts = st.one_of(st.integers(0, 2000), st.integers(0, 10**12))
_leaf = st.fixed_dictionaries({"type": st.sampled_from(["string", "integer", "number", "boolean", "null"])},
                              optional={"minLength": _counts, "maxLength": _counts,
                                        "pattern": st.sampled_from(["^a{2,3}$", f"^[a-z]{{1,{10**6}}}$", "^x+$"]),
                                        "enum": st.lists(st.text(max_size=5), min_size=1, max_size=4)})


def _node(children):
    return st.one_of(
        st.fixed_dictionaries({"type": st.just("array"), "items": children},
                              optional={"minItems": _counts, "maxItems": _counts}),
        st.fixed_dictionaries({"type": st.just("object"),
                               "properties": st.dictionaries(st.from_regex(r"[a-z]{1,6}", fullmatch=True), children,
                                                             max_size=6)},
                              optional={"required": st.lists(st.from_regex(r"[a-z]{1,6}", fullmatch=True),
                                                             max_size=3)}),
        st.fixed_dictionaries({"anyOf": st.lists(children, min_size=1, max_size=3)}))


SCHEMAS = st.recursive(_leaf, _node, max_leaves=25)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schema=SCHEMAS)
def test_any_schema_costs_bounded_time_and_memory(shared_grammars, schema):
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.monotonic()
    try:
        text = compile_(shared_grammars, schema)
        assert len(text) <= grammar.MAX_GRAMMAR_BYTES
    except GenerateError as exc:
        assert exc.kind is Kind.INVALID_ARGUMENT
    assert time.monotonic() - start < grammar.CONVERT_SECONDS + 3          # catches a hang, not a speed
    # The service's own memory never grows with a schema: conversion happens in the worker.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 50_000     # KiB
    assert shared_grammars.cached_bytes <= grammar.CACHE_BYTES


@pytest.fixture(scope="module")
def shared_grammars():
    g = grammar.Grammars()
    yield g
    run(g.close())


def test_the_worker_is_another_process(grammars):
    compile_(grammars, {"type": "string", "maxLength": 3})
    assert grammars.worker_pid is not None and grammars.worker_pid != os.getpid()
