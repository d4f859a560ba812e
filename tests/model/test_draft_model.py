"""Speculative decoding from a draft model, on the real SmolLM2: the engine loads a draft beside the model and
verifies its drafts in the model's step.

Two drafts: SmolLM2 itself (its drafts are what the model writes: acceptance near 1) and a tiny random-weight
model with SmolLM2's tokenizer (tests/tiny_draft.py: acceptance near 0). Either way the text is the text plain
decoding gives (or parts from it only where two tokens were nearly tied, as with prompt lookup:
tests/model/test_speculation.py), alone or beside others; a request cancelled mid-draft frees its sequence and
its KV. Through the service: create with draft_files (over HTTP, and through the official ollama npm client, which
sends the field as given), show and ps say the model drafts from its draft model, a draft whose tokenizer differs
is a 400, and a model created `from` a drafted one keeps its draft (the official Python client's create).
"""
from __future__ import annotations

import asyncio
import hashlib

import httpx
import ollama
import pytest

from common import names
from service.engines.base import LoadOptions
from service.engines.batch import BatchEngine
from service.models.store import ModelStore
from tests.conftest import REAL
from tests.model.test_speculation import (
    COPY,
    FREE,
    cancel_mid_draft_frees_the_sequence,
    chat_prompt,
    decode,
    same_text,
    same_text_alone_and_beside_others,
)
from tests.stack.test_observability import value
from tests.tiny_draft import write_tiny_draft


@pytest.fixture(scope="module")
def tiny_draft(real_models, tmp_path_factory):
    store = ModelStore(real_models)
    return write_tiny_draft(store.get(names.parse(REAL)).path, tmp_path_factory.mktemp("draft") / "draft.gguf")


@pytest.fixture(scope="module")
def drafted(real_models, tiny_draft):
    """SmolLM2 three times over: without a draft, with itself as its draft, with the tiny random draft."""
    path = str(ModelStore(real_models).get(names.parse(REAL)).path)
    engine = BatchEngine(num_parallel=2)
    loop = asyncio.new_event_loop()
    options = LoadOptions(num_ctx=2048, num_thread=2)
    runners = {name: loop.run_until_complete(engine.load(path, options, draft=draft))
               for name, draft in (("plain", None), ("self", path), ("random", str(tiny_draft)))}
    yield engine, runners, loop
    for runner in runners.values():
        loop.run_until_complete(runner.close())
    loop.close()


@pytest.fixture
def free_drafts(drafted):
    """The self-draft with its cost set aside: a draft as large as the model never pays (it costs a step a
    token), so the engine would not ask it; here it is asked, to see its drafts verified."""
    drafter = drafted[1]["self"]._drafter
    cost, drafter.cost = drafter.cost, 0.0
    yield
    drafter.cost = cost


def test_a_draft_is_asked_only_where_it_pays(drafted):
    """The cost of a drafted token is the draft's share of the model's parameters: the model itself, 1, so it never
    drafts; the tiny random model, a small fraction, so it drafts (and, its drafts refused, seldom)."""
    engine, runners, loop = drafted
    assert runners["self"]._drafter.cost == 1.0 and runners["random"]._drafter.cost < 0.05
    before = engine.stats.drafted
    loop.run_until_complete(decode(runners["self"], chat_prompt(REAL, COPY), draft=8, n=48))
    assert engine.stats.drafted == before
    assert runners["self"].speculation == runners["random"].speculation == "draft_model"
    assert runners["plain"].speculation == "prompt_lookup"


@pytest.mark.usefixtures("free_drafts")
@pytest.mark.parametrize("draft", ["self", "random"])
@pytest.mark.parametrize("task", ["copy", "free"])
def test_greedy_text_with_a_draft_model_is_the_text_without(drafted, draft, task):
    engine, runners, loop = drafted
    prompt = chat_prompt(REAL, COPY if task == "copy" else FREE)
    plain = loop.run_until_complete(decode(runners["plain"], prompt, draft=0))
    before = engine.stats.drafted, engine.stats.accepted
    off = loop.run_until_complete(decode(runners[draft], prompt, draft=0))
    assert (engine.stats.drafted, engine.stats.accepted) == before            # draft_num_predict 0: no drafts
    spec = loop.run_until_complete(decode(runners[draft], prompt, draft=8))
    n, taken = engine.stats.drafted - before[0], engine.stats.accepted - before[1]
    assert n >= 1
    if draft == "self":
        assert n >= 32 and taken >= 0.8 * n, (n, taken)      # its own drafts: near all taken (ties part)
    else:
        assert taken <= 0.2 * n, (n, taken)                  # random drafts: near none
    assert [(e.token, e.logprob) for e in off] == [(e.token, e.logprob) for e in plain]
    same_text(plain, spec)


@pytest.mark.usefixtures("free_drafts")
def test_a_request_gives_the_same_text_alone_and_beside_others(drafted):
    _, runners, loop = drafted
    same_text_alone_and_beside_others(runners["self"], loop)


@pytest.mark.usefixtures("free_drafts")
def test_cancelling_mid_draft_frees_the_sequence_and_its_kv(drafted):
    engine, runners, loop = drafted
    cancel_mid_draft_frees_the_sequence(engine, runners["self"], loop)


# -- through the service -------------------------------------------------------------------------------------------
def _upload(url: str, path) -> str:
    data = path.read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert httpx.post(f"{url}/api/blobs/{digest}", content=data, timeout=120).status_code in (200, 201)
    return digest


def test_create_show_ps_and_generate_with_a_draft_model(real, tiny_draft, models):
    url = real.url
    other = _upload(url, models / "tiny.gguf")              # the tiny llama: another tokenizer
    bad = httpx.post(f"{url}/api/create", timeout=120, json={
        "model": "smol-bad-draft", "from": REAL, "draft_files": {"draft.gguf": other}, "stream": False})
    assert bad.status_code == 400
    assert bad.json()["error"].startswith("the draft model's vocabulary differs from the model's: ")
    created = httpx.post(f"{url}/api/create", timeout=300, json={
        "model": "smol-drafted", "from": REAL, "draft_files": {"draft.gguf": _upload(url, tiny_draft)},
        "stream": False})
    assert created.status_code == 200 and created.json()["status"] == "success", created.text
    try:
        show = httpx.post(f"{url}/api/show", json={"model": "smol-drafted"}, timeout=60).json()
        assert show["speculative_decoding"] == "draft_model"
        assert show["draft"]["family"] == "llama" and show["draft"]["format"] == "gguf"
        plain_show = httpx.post(f"{url}/api/show", json={"model": REAL}, timeout=60).json()
        assert "draft" not in plain_show and plain_show["speculative_decoding"] == "prompt_lookup"
        reg = real.service.metrics.registry
        drafted = value(reg, "gengate_engine_draft_tokens_total")
        body = {"model": "smol-drafted", "prompt": FREE, "stream": False,
                "options": {"temperature": 0, "num_predict": 24}}
        spec = httpx.post(f"{url}/api/generate", json=body, timeout=300).json()
        assert value(reg, "gengate_engine_draft_tokens_total") > drafted          # its first draft, at least
        plain = httpx.post(f"{url}/api/generate", timeout=300,
                           json={**body, "options": {**body["options"], "draft_num_predict": 0}}).json()
        assert spec["response"] == plain["response"] and spec["eval_count"] == plain["eval_count"]
        ps = {m["name"]: m for m in httpx.get(f"{url}/api/ps", timeout=60).json()["models"]}
        assert ps["smol-drafted:latest"]["speculative_decoding"] == "draft_model"
        # The official Python client creates from it: the draft comes along.
        client = ollama.Client(host=url)
        assert client.create(model="smol-drafted-2", from_="smol-drafted").status == "success"
        try:
            again = httpx.post(f"{url}/api/show", json={"model": "smol-drafted-2"}, timeout=60).json()
            assert again["speculative_decoding"] == "draft_model" and again["draft"] == show["draft"]
        finally:
            client.delete("smol-drafted-2")
    finally:
        httpx.request("DELETE", f"{url}/api/delete", json={"model": "smol-drafted"}, timeout=60)


def test_a_long_prompt_reaches_the_draft_model_one_decode_a_step(tiny_draft, real_models):
    """A step levels at most one decode's worth (n_batch) of a sequence's tokens into the draft KV: a long prompt
    drafts nothing until it has caught up, over several steps, and the KV always holds exactly what `_held` says;
    a draft that was not taken is removed, and another request on the sequence reuses the prefix it shares."""
    import llama_cpp
    from llama_cpp import _internals as internals

    from service.engines import llama
    from service.engines.drafter import Drafter

    model = llama.load_model(str(tiny_draft), LoadOptions(num_ctx=2048, num_thread=2))
    cp = llama_cpp.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max, cp.kv_unified = 2048, 64, 64, 2, False
    ctx = internals.LlamaContext(model=model, params=cp, verbose=False)
    drafter = Drafter(model, ctx, 2, llama_cpp.llama_vocab_n_tokens(model.vocab), 0.01, lambda t: False)
    mem = llama_cpp.llama_get_memory(ctx.ctx)
    try:
        prompt = list(range(1000, 1200))                   # 200 tokens: four decodes of 64
        steps = 0
        while not (draft := drafter.draft([(0, prompt, 4)])[0]):
            steps += 1
            assert llama_cpp.llama_memory_seq_pos_max(mem, 0) == len(drafter._held[0]) - 1 == 64 * steps - 1
        assert steps == 3 and len(draft) == 4
        assert llama_cpp.llama_memory_seq_pos_max(mem, 0) == len(drafter._held[0]) - 1 == 200 + 3 - 1
        # The model took the first drafted token and chose another: the draft KV keeps the prompt and that token.
        grown = prompt + [draft[0], 7]
        again = drafter.draft([(0, grown, 2)])[0]
        assert len(again) == 2 and drafter._held[0][:202] == grown[:202]
        assert llama_cpp.llama_memory_seq_pos_max(mem, 0) == len(drafter._held[0]) - 1 == 202
        # Another request on the sequence: the shared prefix stays, the rest goes.
        other = prompt[:150] + [5, 6]
        assert drafter.draft([(0, other, 1)])[0] and drafter._held[0] == other
        assert llama_cpp.llama_memory_seq_pos_max(mem, 0) == 151
    finally:
        drafter.close()


def test_a_draft_that_cannot_be_used_leaves_prompt_lookup(real_models, models, caplog):
    """A draft the engine cannot use (here an encoder, which create refuses; or one that does not fit) does not
    fail the model: it loads without it, drafts by prompt lookup, and says so in the log."""
    path = str(ModelStore(real_models).get(names.parse(REAL)).path)
    loop = asyncio.new_event_loop()
    try:
        runner = loop.run_until_complete(BatchEngine(num_parallel=1).load(
            path, LoadOptions(num_ctx=512, num_thread=2), draft=str(models / "bert.gguf")))
        assert runner.speculation == "prompt_lookup"
        assert "the model drafts by prompt lookup" in caplog.text
        loop.run_until_complete(runner.close())
    finally:
        loop.close()
