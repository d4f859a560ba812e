"""Options, context shift, keep-alive and template safety: an over-long prompt keeps its head and tail, chat
templates render sandboxed."""
from __future__ import annotations

import os
import time

import httpx
import ollama
import pytest

from gengate.v1 import generate_pb2 as pb
from tests.conftest import REAL

PROMPT = "Write one sentence about the moon."
GREEDY = {"temperature": 0, "num_predict": 24}


@pytest.fixture(scope="module")
def client(real) -> ollama.Client:
    return ollama.Client(host=real.url)


def run(client, model=REAL, **options) -> ollama.GenerateResponse:
    return client.generate(model=model, prompt=PROMPT, stream=False, options=options)


@pytest.fixture(scope="module")
def greedy(client) -> str:
    return run(client, **GREEDY).response


@pytest.mark.parametrize("options", [
    {"temperature": 1.5, "top_k": 1},          # only the best token survives top_k
    {"temperature": 1.5, "top_p": 1e-6},       # … or top_p
    {"temperature": 1.5, "min_p": 1.0},        # … or min_p
    {"temperature": 0, "num_thread": 1},       # load-time option: reload with one thread
    {"temperature": 0, "repeat_penalty": 1.5, "repeat_last_n": 0},   # a window of 0 disables the penalty
    {"temperature": 0, "mirostat": 2, "tfs_z": 0.5, "penalize_newline": True, "think": True},  # ignored keys
])
def test_options_that_keep_greedy_output(client, greedy, options):
    assert run(client, num_predict=24, **options).response == greedy


@pytest.mark.parametrize("options", [
    {"temperature": 0, "repeat_penalty": 2.0},
    {"temperature": 0, "presence_penalty": 2.0},
    {"temperature": 0, "frequency_penalty": 2.0},
    {"temperature": 1.5, "seed": 3},
])
def test_options_that_change_output(client, greedy, options):
    assert run(client, num_predict=24, **options).response != greedy


def loaded(stack, name):
    return {m.entry.name.short: m for m in stack.service.pool.loaded()}.get(name)


def test_load_time_options_reload_the_model(client, real):
    run(client, "tiny", num_predict=1, num_ctx=128)
    first = loaded(real, "tiny:latest").runner
    assert first.n_ctx == 128
    run(client, "tiny", num_predict=1, num_ctx=128)
    assert loaded(real, "tiny:latest").runner is first                 # same options: reused
    run(client, "tiny", num_predict=1, num_ctx=256)
    assert loaded(real, "tiny:latest").runner.n_ctx == 256              # changed: reloaded
    run(client, "tiny", num_predict=1)
    assert loaded(real, "tiny:latest").runner.n_ctx == 512              # default 4096, capped at training ctx


def test_context_shift_continues_past_the_window(client):
    shifted = run(client, "tiny", num_ctx=64, num_predict=200, temperature=0)
    assert (shifted.done_reason, shifted.eval_count) == ("length", 200)
    body = {"model": "tiny", "prompt": PROMPT, "stream": False, "shift": False,
            "options": {"num_ctx": 64, "num_predict": 200}}
    stopped = httpx.post(client._client.base_url.join("/api/generate"), json=body, timeout=60).json()
    # The window fills up (the last token sampled needs no room in it), then generation stops.
    assert stopped["done_reason"] == "length" and stopped["eval_count"] + stopped["prompt_eval_count"] == 64 + 1


def test_keep_alive_expires_idle_models_and_is_sticky(client, real):
    run(client, "tiny", num_predict=1)
    client.generate(model="tiny", prompt="x", options={"num_predict": 1}, keep_alive="10m")
    run(client, "tiny", num_predict=1)                                   # no keep_alive: left as it was
    model = loaded(real, "tiny:latest")
    assert model.keep_alive_ns == 600 * 10**9 and model.expires_at > time.time() + 590
    client.generate(model="tiny", prompt="x", options={"num_predict": 1}, keep_alive=0.3)
    deadline = time.monotonic() + 10
    while loaded(real, "tiny:latest") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert loaded(real, "tiny:latest") is None


@pytest.mark.parametrize("keep_alive,ns", [
    ("1h30m", 5400 * 10**9), ("90s", 90 * 10**9), ("250ms", 250 * 10**6), (120, 120 * 10**9), (2.5, 2_500_000_000),
    ("-1m", -1), (-1, -1), ("-0.5s", -1),
])
def test_every_keep_alive_form_is_kept_on_the_model(fake, engine, keep_alive, ns):
    """Numbers are seconds, strings Go durations, anything negative keeps the model forever."""
    resp = httpx.post(fake.url + "/api/generate", json={"model": "tiny", "prompt": "", "keep_alive": keep_alive})
    assert resp.json()["done_reason"] == "load"
    [model] = [m for m in fake.service.pool.loaded() if m.entry.name.short == "tiny:latest"]
    assert model.keep_alive_ns == ns if ns >= 0 else (model.keep_alive_ns < 0 and model.expires_at is None)


@pytest.mark.parametrize("keep_alive", ["0s", 0, 0.0, "0m"])
def test_every_zero_keep_alive_form_unloads(fake, engine, keep_alive):
    httpx.post(fake.url + "/api/generate", json={"model": "tiny", "prompt": ""})
    resp = httpx.post(fake.url + "/api/generate", json={"model": "tiny", "prompt": "", "keep_alive": keep_alive})
    assert resp.json()["done_reason"] == "unload"
    assert not [m for m in fake.service.pool.loaded() if m.entry.name.short == "tiny:latest"]


def test_modelfile_parameters_are_defaults_that_requests_override(client):
    by_model = client.generate(model="test-params", prompt="x", raw=True, stream=False)
    assert (by_model.eval_count, by_model.done_reason) == (3, "length")         # num_predict 3 from the model
    greedy = client.generate(model="tiny", prompt="x", raw=True, stream=False, options={"temperature": 0, "num_predict": 3})
    assert by_model.response == greedy.response                                  # temperature 0 from the model
    overridden = client.generate(model="test-params", prompt="x", raw=True, stream=False, options={"num_predict": 5})
    assert overridden.eval_count == 5


def test_chat_templates_are_sandboxed(real):
    resp = httpx.post(real.url + "/api/generate", json={"model": "tiny-evil", "prompt": "hi", "stream": False})
    assert resp.status_code == 500 and "sandbox" in resp.json()["error"]
    assert not os.path.exists("/tmp/gengate-pwned")


def test_grpc_options_reach_the_engine(real):
    stub = real.stub()
    a = list(stub.Generate(pb.GenerateRequest(model=REAL, prompt=PROMPT, stream=False,
                                              options=pb.Options(temperature=0, num_predict=24))))[0]
    b = list(stub.Generate(pb.GenerateRequest(model=REAL, prompt=PROMPT, stream=False,
                                              options=pb.Options(temperature=1.5, top_k=1, num_predict=24))))[0]
    assert a.response == b.response and a.eval_count == 24


def test_options_at_their_extremes_cost_bounded_memory(real):
    """Values a client may send that would have sized buffers by themselves: the penalty ring (repeat_last_n),
    the batch (num_batch), the context (num_ctx) and top_k are capped where they take effect."""
    huge = {"repeat_last_n": 2**31 - 1, "num_batch": 2**31 - 1, "num_ctx": 2**31 - 1, "top_k": 2**31 - 1,
            "num_predict": 3, "temperature": 0.5, "seed": 1}
    reply = httpx.post(real.url + "/api/generate", json={"model": REAL, "prompt": "Hi", "stream": False,
                                                       "options": huge}, timeout=120)
    assert reply.status_code == 200 and reply.json()["eval_count"] == 3
