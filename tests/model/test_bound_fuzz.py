"""Fuzzing the bounds with generated hostile input: regex patterns with nested repetitions, sampled under the
real vocabulary; Go and Jinja templates with loops and growing values. Every case ends in bounded time, with the
service's memory flat: refused, stopped at a limit, or done."""
from __future__ import annotations

import asyncio
import json
import resource
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common import names
from service.chat import gotemplate
from service.chat.jinja import ChatTemplates
from service.engines import grammar_sampler
from service.engines.base import RequestError, Sampling
from service.errors import GenerateError
from service.generation import grammar
from service.models.store import ModelStore
from tests.conftest import REAL

pytestmark = pytest.mark.fuzz
LOOP = asyncio.new_event_loop()

# -- patterns ---------------------------------------------------------------------------------------------------
_ATOMS = st.sampled_from(["a", "b", "[a-z]", "\\d", ".", "[^x]", "ab"])
_QUANTIFIERS = st.sampled_from(["", "", "?", "*", "+", "{2}", "{0,3}", "{1,5}", "{3,}", "??", "{0,40}", "{12}"])


def _pattern(children):
    return st.one_of(
        st.tuples(st.lists(children, min_size=1, max_size=4), _QUANTIFIERS).map(
            lambda t: "(" + "".join(t[0]) + ")" + t[1]),
        st.tuples(st.lists(children, min_size=2, max_size=3), _QUANTIFIERS).map(
            lambda t: "(" + "|".join(t[0]) + ")" + t[1]),
        st.lists(children, min_size=2, max_size=6).map("".join))


PATTERNS = st.recursive(st.tuples(_ATOMS, _QUANTIFIERS).map("".join), _pattern, max_leaves=30)


@pytest.fixture(scope="module")
def samplers(real_models):
    import llama_cpp
    from llama_cpp import _internals as internals
    path = str(ModelStore(real_models).get(names.parse(REAL)).path)
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    n_vocab = llama_cpp.llama_vocab_n_tokens(internals.LlamaModel(path_model=path, params=params,
                                                                  verbose=False).vocab)
    pool = grammar_sampler.GrammarSamplers(path, n_vocab, idle=1)
    compiler = grammar.Grammars()
    yield pool, compiler, n_vocab
    pool.close()
    LOOP.run_until_complete(compiler.close())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(pattern=PATTERNS, seed=st.integers(0, 2**31 - 1))
def test_any_pattern_is_refused_or_each_token_ends_within_the_bound(samplers, pattern, seed):
    """Whatever pattern the schema check lets through, each token is sampled within the per-token bound or, as the
    engine does with an overdue token, its worker is killed and the request ends: a request under any grammar ends
    in bounded time. (The check refuses what it knows llama.cpp's matcher chokes on; it is a heuristic, the bound
    is the guarantee.)"""
    pool, compiler, n_vocab = samplers
    schema = json.dumps({"type": "string", "pattern": "^" + pattern + "$"})
    start = time.monotonic()
    try:
        text = LOOP.run_until_complete(compiler.compile(schema))
    except GenerateError:
        return                                                         # refused: a 400
    logits = np.random.default_rng(seed).standard_normal(n_vocab).astype(np.float32)
    try:
        sampler = pool.open(Sampling(seed=seed, grammar=text), 512)
    except RequestError:
        return
    reusable = True
    try:
        for _ in range(6):
            sampler.submit(logits.ctypes.data)
            while sampler.poll() is None:
                if sampler.overdue(time.monotonic()):                  # the engine's rule: the request ends
                    killed, reusable = time.monotonic(), False
                    pool.release(sampler, reusable=False)
                    assert sampler.process.poll() is not None and time.monotonic() - killed < 2, pattern
                    return
                time.sleep(0.001)
    except RequestError:
        reusable = False                                               # the worker died: the request's error
    finally:
        pool.release(sampler, reusable)
        assert time.monotonic() - start < grammar.CONVERT_SECONDS + 6 * grammar_sampler.TOKEN_SECONDS + 5


@pytest.mark.parametrize("pattern", [
    "((a|[a-z]*){0,3}|a|(a|a*){0,3}){1,5}",       # found by the fuzzer: seconds a token
    "(a|[a-z]*){15}", "((a|[a-z]*){0,3}){1,5}", "([a-z]?){30}",
])
def test_patterns_whose_alternatives_multiply_the_stacks_are_refused(pattern):
    assert grammar.pattern_problem(pattern) is not None


# -- Go templates -----------------------------------------------------------------------------------------------
_GO_BODIES = st.sampled_from([
    '{{ $a = printf "%s%s" $a $a }}', "{{ $a }}", '{{ $a = print $a "x" }}', "{{ len $a }}",
    '{{ if eq $a $a }}y{{ end }}', "{{ $a = json $a }}", "{{ $a = html $a }}", '{{ $a = slice $a 1 }}',
])


def _go(children):
    return st.one_of(
        st.tuples(st.sampled_from(["3", "50", "1000", "100000"]), st.lists(children, min_size=1, max_size=3)).map(
            lambda t: "{{ range " + t[0] + " }}" + "".join(t[1]) + "{{ end }}"),
        st.lists(children, min_size=1, max_size=4).map("".join))


GO_TEMPLATES = st.recursive(_GO_BODIES, _go, max_leaves=12).map(lambda body: '{{ $a := "abcdefgh" }}' + body)


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source=GO_TEMPLATES)
def test_any_go_template_with_loops_renders_in_bounded_time_and_memory(source):
    before, start = _rss_kib(), time.monotonic()
    try:
        out = gotemplate.parse(source).render({})
        assert len(out) <= gotemplate.MAX_OUTPUT
    except gotemplate.TemplateError:
        pass
    assert time.monotonic() - start < 20
    assert _rss_kib() - before < 600_000                       # the value and allocation caps, with slack
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss < 3_000_000


# -- Jinja templates --------------------------------------------------------------------------------------------
_JINJA_BODIES = st.sampled_from([
    "{{ x }}", "{% set x = x ~ x %}", "{{ messages[0]['content'] }}", "{{ '{:>100}'.format('a') }}",
    "{{ x * 1000 }}", "{{ range(10) | list | length }}",
])


def _jinja(children):
    return st.one_of(
        st.tuples(st.sampled_from(["2", "40", "100000"]), st.lists(children, min_size=1, max_size=3)).map(
            lambda t: "{% for i in range(" + t[0] + ") %}" + "".join(t[1]) + "{% endfor %}"),
        st.lists(children, min_size=1, max_size=4).map("".join))


JINJA_TEMPLATES = st.recursive(_JINJA_BODIES, _jinja, max_leaves=10).map(lambda body: "{% set x = 'ab' %}" + body)


@pytest.fixture(scope="module")
def renderer():
    templates = ChatTemplates(size=1, timeout=1.0, memory_bytes=256 << 20)
    yield templates
    LOOP.run_until_complete(templates.close())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source=JINJA_TEMPLATES)
def test_any_jinja_template_with_loops_renders_in_bounded_time_with_the_service_memory_flat(renderer, source):
    before, start = _rss_kib(), time.monotonic()
    try:
        LOOP.run_until_complete(renderer.render(source, [{"role": "user", "content": "hi"}], bos="", eos=""))
    except GenerateError:
        pass
    assert time.monotonic() - start < 1.0 + 3
    assert _rss_kib() - before < 50_000
