"""Speculative decoding (prompt lookup) in the batch engine, on the real SmolLM2 and Gemma 3.

Greedy requests draft from their own tokens and verify the drafts in the step's llama_decode. What is checked: a
copy-heavy text drafts and has its drafts accepted, and gives the text plain decoding gives; free writing gives
the same text, or parts from it only where two tokens were nearly tied (the verified tokens' KV comes from ggml's
multi-row kernels, which round differently from the one-row ones: docs/benchmarks.md, "Speculative decoding");
the same request gives the same text alone and beside others; a request cancelled mid-draft frees its sequence and
its KV; the option draft_num_predict 0 turns it off; the invariant layout never drafts. Speed: `make bench`.
"""
from __future__ import annotations

import asyncio

import httpx
import pytest

from service.engines.base import Finish, LoadOptions, Piece, Sampling
from service.engines.batch import BatchEngine
from service.models.store import ModelStore
from tests.conftest import GEMMA, REAL
from tests.harness import Stack
from tests.stack.test_observability import value

PASSAGE = ("The river town kept a ledger of every boat that passed its lock: the name, the cargo, the hour, and the "
           "number painted on the bow. The lock keeper wrote the numbers in a long column, one after another, and "
           "every evening he added them up and wrote the sum at the bottom of the page.")
COPY = f"Repeat this paragraph exactly, word for word:\n\n{PASSAGE}"
FREE = "Write a short story about a dragon who learns to bake bread."
TIE = 0.25                       # nats between the two tokens where the texts may part


def chat_prompt(model: str, text: str) -> str:
    if model == GEMMA:
        return f"<start_of_turn>user\n{text}<end_of_turn>\n<start_of_turn>model\n"
    return f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"


async def decode(runner, prompt: str, draft: int, n: int = 160):
    """(tokens, each token's log-probability entry) of a greedy decode."""
    s = Sampling(seed=1, temperature=0, num_predict=n, draft_num_predict=draft, logprobs=True, top_logprobs=2)
    entries = []
    async for item in runner.generate(runner.tokenize(prompt, add_bos=False), s):
        if isinstance(item, (Piece, Finish)):
            entries.extend(item.logprobs)
    return entries


@pytest.fixture(scope="module")
def engines(real_models, gemma):
    """SmolLM2 and Gemma in the default layout, one sequence each, loaded directly (no gRPC: only the engine)."""
    store = ModelStore(real_models)
    engine = BatchEngine(num_parallel=2)
    loop = asyncio.new_event_loop()
    from common import names
    runners = {m: loop.run_until_complete(engine.load(str(store.get(names.parse(m)).path),
                                                     LoadOptions(num_ctx=2048, num_thread=2)))
               for m in (REAL, GEMMA)}
    yield engine, runners, loop
    for runner in runners.values():
        loop.run_until_complete(runner.close())
    loop.close()


@pytest.mark.parametrize("model", [REAL, GEMMA])
@pytest.mark.parametrize("task", ["copy", "free"])
def test_greedy_text_with_drafts_is_the_text_without(engines, model, task):
    engine, runners, loop = engines
    prompt = chat_prompt(model, COPY if task == "copy" else FREE)
    drafted, accepted = engine.stats.drafted, engine.stats.accepted
    plain = loop.run_until_complete(decode(runners[model], prompt, draft=0))
    assert engine.stats.drafted == drafted                    # draft_num_predict 0: no drafts
    spec = loop.run_until_complete(decode(runners[model], prompt, draft=8))
    if task == "copy":
        assert engine.stats.drafted - drafted >= 16 and engine.stats.accepted - accepted >= 8
    same_text(plain, spec)


def same_text(plain, spec) -> None:
    """The same tokens, or parting only where plain decoding's two best tokens were nearly tied, the speculative
    choice among them."""
    a, b = [e.token for e in plain], [e.token for e in spec]
    part = next((i for i in range(min(len(a), len(b))) if a[i] != b[i]), None)
    if part is None:
        assert a == b
        return
    top = plain[part].top
    assert len(top) == 2 and top[1].token == b[part], (a[part], b[part], top)
    assert top[0].logprob - top[1].logprob < TIE, (part, top)


def same_text_alone_and_beside_others(runner, loop) -> None:
    """The copy and the free-writing request give the same tokens and logprobs alone as side by side."""
    copy, free = chat_prompt(REAL, COPY), chat_prompt(REAL, FREE)

    async def both():
        return await asyncio.gather(decode(runner, copy, 8), decode(runner, free, 8))
    alone = [loop.run_until_complete(decode(runner, p, 8)) for p in (copy, free)]
    together = loop.run_until_complete(both())
    for x, y in zip(alone, together, strict=True):
        assert [(e.token, e.logprob) for e in x] == [(e.token, e.logprob) for e in y]


def cancel_mid_draft_frees_the_sequence(engine, runner, loop) -> None:
    """A request closed once it has drafted leaves no request and no KV; its sequence kept only its prompt (a
    cache), and a new request reuses it and gives the whole text again."""
    prompt = runner.tokenize(chat_prompt(REAL, COPY), add_bos=False)

    async def cancel_after_drafts():
        drafted = engine.stats.drafted
        stream = runner.generate(prompt, Sampling(seed=1, temperature=0, num_predict=200))
        async for _ in stream:
            if engine.stats.drafted > drafted:
                break
        await stream.aclose()
    loop.run_until_complete(cancel_after_drafts())
    assert runner.active == 0 and runner.kv_cells()[0] == 0
    again = loop.run_until_complete(decode(runner, chat_prompt(REAL, COPY), 8))
    assert "".join(e.token for e in again).strip().startswith("The river town")


def test_the_same_request_gives_the_same_text_alone_and_beside_others(engines):
    """A sequence's drafts depend on its own tokens only: with another drafting beside it, the same rows."""
    _, runners, loop = engines
    same_text_alone_and_beside_others(runners[REAL], loop)


def test_cancelling_mid_draft_frees_the_sequence_and_its_kv(engines):
    engine, runners, loop = engines
    cancel_mid_draft_frees_the_sequence(engine, runners[REAL], loop)


def test_speculation_through_the_service(real_models):
    """On the stack: the option, the counters as metrics, and no drafts in the invariant layout."""
    body = {"model": REAL, "prompt": COPY, "stream": False, "options": {"temperature": 0, "num_predict": 80}}
    for invariant in (False, True):
        stack = Stack(real_models, BatchEngine(num_parallel=2, invariant=invariant)).start()
        try:
            reg = stack.service.metrics.registry
            drafted = value(reg, "gengate_engine_draft_tokens_total")
            on = httpx.post(stack.url + "/api/generate", json=body, timeout=300).json()
            off = httpx.post(stack.url + "/api/generate", timeout=300,
                             json={**body, "options": {**body["options"], "draft_num_predict": 0}}).json()
            if invariant:
                assert value(reg, "gengate_engine_draft_tokens_total") == drafted
            else:
                assert value(reg, "gengate_engine_draft_tokens_total") > drafted
                assert value(reg, "gengate_engine_draft_tokens_accepted_total") > 0
            assert on["eval_count"] == off["eval_count"] and on["response"] == off["response"]
            bad = httpx.post(stack.url + "/api/generate", timeout=60,
                             json={**body, "options": {"draft_num_predict": -1}})
            assert bad.status_code == 400 and "draft_num_predict" in bad.json()["error"]
        finally:
            stack.stop()


def test_sampled_text_follows_the_models_distribution(engines):
    """At temperature 1 a drafted token is kept only when the request's own draw picks it: how often a sampled
    reply copies the passage's opening is the same with drafts as without (disjoint seeds, a two-proportion test
    at four standard errors; drafts kept regardless would copy every time), and a seed gives the same text twice."""
    engine, runners, loop = engines
    runner = runners[REAL]
    prompt = runner.tokenize(chat_prompt(REAL, COPY), add_bos=False)
    opening = "The river town kept a ledger of every boat"

    async def text(seed: int, draft: int) -> str:
        s = Sampling(seed=seed, temperature=1.0, num_predict=12, draft_num_predict=draft)
        return "".join([p.text async for p in runner.generate(prompt, s) if isinstance(p, Piece)])
    n = 60
    drafted = engine.stats.drafted
    plain = [loop.run_until_complete(text(seed, 0)) for seed in range(n)]
    spec = [loop.run_until_complete(text(seed, 8)) for seed in range(1000, 1000 + n)]
    assert engine.stats.drafted > drafted
    p1, p2 = (sum(t.strip().startswith(opening) for t in texts) / n for texts in (plain, spec))
    pooled = (p1 + p2) / 2
    assert 0 < pooled < 1, "the prompt must leave room for both outcomes"
    assert abs(p1 - p2) < 4 * (pooled * (1 - pooled) * 2 / n) ** 0.5, (p1, p2)
    assert loop.run_until_complete(text(7, 8)) == loop.run_until_complete(text(7, 8))
