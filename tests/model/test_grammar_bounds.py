"""Sampling under a grammar is bounded per token and per request: a grammar that makes llama.cpp's matcher slow
ends its own request, in its own worker process, while other requests decode on."""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import time

import httpx
import pytest

from common import names
from service.engines import grammar_sampler
from service.engines.base import Finish, LoadOptions, Piece, RequestError, Sampling
from service.engines.batch import BatchEngine
from service.models.store import ModelStore
from tests.conftest import REAL

# A flat run of 100 optional parts: llama.cpp keeps ~100 parse stacks after the opening quote and compares them
# pairwise for each of the 49k candidates, seconds a token (hours for 1000). The schema check refuses it as a
# pattern; written as GBNF it reaches the sampler, as a grammar the check does not know would.
SLOW = 'root ::= "\\"" ' + " ".join(["x"] * 100) + ' "\\""\nx ::= "a"?\n'


def _path(real_models) -> str:
    return str(ModelStore(real_models).get(names.parse(REAL)).path)


async def _collect(runner, prompt: list[int], sampling: Sampling) -> tuple[str, Finish | BaseException]:
    text = []
    try:
        async for item in runner.generate(prompt, sampling):
            if isinstance(item, Piece):
                text.append(item.text)
            else:
                return "".join(text), item
    except RequestError as exc:
        return "".join(text), exc
    raise AssertionError("no Finish")


def test_a_grammar_over_its_token_budget_ends_its_request_and_no_other(real_models, monkeypatch):
    monkeypatch.setattr(grammar_sampler, "TOKEN_SECONDS", 0.5)

    async def main():
        runner = await BatchEngine(2).load(_path(real_models), LoadOptions(num_ctx=512))
        try:
            prompt = runner.tokenize("Say a word:", add_bos=True)
            slow = asyncio.ensure_future(_collect(runner, prompt, Sampling(seed=1, temperature=0, grammar=SLOW,
                                                                           num_predict=20)))
            await asyncio.sleep(0.3)
            start = time.monotonic()
            text, finish = await _collect(runner, prompt, Sampling(seed=1, temperature=0, num_predict=30))
            plain_seconds = time.monotonic() - start
            assert isinstance(finish, Finish) and finish.eval_count == 30       # decoded beside the slow one
            text, error = await slow
            assert isinstance(error, RequestError) and error.field == "format"
            assert "took longer than the limit of 0.5 s" in str(error)
            assert text == '"'                                                # the cheap first token came out
            assert plain_seconds < 10
            started = runner._samplers.started
            # Its worker was killed, its sequence is free; the next grammar request gets a fresh worker.
            assert runner.active == 0 and not runner._running
            text, finish = await _collect(runner, prompt, Sampling(seed=1, temperature=0, num_predict=8,
                                                                   grammar='root ::= "yes" | "no"'))
            assert text in ("yes", "no") and isinstance(finish, Finish)
            assert runner._samplers.started == started + 1
        finally:
            await runner.close()
    asyncio.run(main())


def test_a_grammar_sampler_that_dies_fails_its_request_only(real_models):
    async def main():
        runner = await BatchEngine(2).load(_path(real_models), LoadOptions(num_ctx=512))
        try:
            prompt = runner.tokenize("Count:", add_bos=True)
            stream = runner.generate(prompt, Sampling(seed=1, temperature=0, num_predict=200,
                                                      grammar='root ::= [0-9 ,]+'))
            first = await anext(stream)
            assert isinstance(first, Piece)
            (req,) = runner._running.values()
            os.kill(req.sampler.process.pid, 9)
            with pytest.raises(RequestError, match="its worker ran out of memory or died"):
                async for _ in stream:
                    pass
            assert runner.active == 0
            _, finish = await _collect(runner, prompt, Sampling(seed=1, temperature=0, num_predict=5))
            assert isinstance(finish, Finish)
        finally:
            await runner.close()
    asyncio.run(main())


def test_the_same_seed_gives_the_same_bytes_under_a_grammar(real_models):
    schema_grammar = 'root ::= "{\\"n\\": " [0-9]+ "}"'

    async def main():
        runner = await BatchEngine(2).load(_path(real_models), LoadOptions(num_ctx=512))
        try:
            prompt = runner.tokenize("A number:", add_bos=True)
            outs = [await _collect(runner, prompt, Sampling(seed=7, temperature=1.0, num_predict=12,
                                                            grammar=schema_grammar)) for _ in range(3)]
            assert outs[0][0] == outs[1][0] == outs[2][0] and outs[0][0].startswith('{"n": ')
        finally:
            await runner.close()
    asyncio.run(main())


def test_the_pattern_that_wedged_every_engine_is_a_400_while_others_generate(real):
    """The attack trial's request: refused before any sampling, and a plain request beside it completes."""
    bad = {"model": REAL, "prompt": "x", "stream": False,
           "format": {"type": "string", "pattern": "^(a?){1000}$"}, "options": {"num_predict": 50}}
    plain = {"model": REAL, "prompt": "Hi", "stream": False, "options": {"num_predict": 10, "temperature": 0}}
    with httpx.Client(base_url=real.url, timeout=60) as client, concurrent.futures.ThreadPoolExecutor(4) as pool:
        start = time.monotonic()
        bads = [pool.submit(client.post, "/api/generate", json=bad) for _ in range(3)]
        ok = pool.submit(client.post, "/api/generate", json=plain).result()
        for future in bads:
            reply = future.result()
            assert reply.status_code == 400
            assert reply.json()["error"] == "format: a pattern has 1000 optional parts in a row, over the limit of 16"
        assert ok.status_code == 200 and ok.json()["done"]
        assert time.monotonic() - start < 30
        reply = client.post("/api/generate", json={**bad, "format": {"type": "string",
                                                                      "pattern": "^(a*)*$"}})
        assert reply.status_code == 400 and "repeats without bound" in reply.json()["error"]


def test_structured_output_still_parses_through_the_worker(real):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                               "age": {"type": "integer"}}, "required": ["name", "age"]}
    with httpx.Client(base_url=real.url, timeout=60) as client:
        reply = client.post("/api/generate", json={"model": REAL, "prompt": "A person as JSON:", "stream": False,
                                                   "format": schema, "options": {"num_predict": 60, "seed": 3}})
    assert reply.status_code == 200, reply.text
    value = json.loads(reply.json()["response"])
    assert set(value) == {"name", "age"}
