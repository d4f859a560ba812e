"""The OpenAI-compatible routes (/v1/...) with the official `openai` client, over the real model."""
from __future__ import annotations

import json
import math
import time

import httpx
import openai
import pytest

from tests.conftest import REAL
from tests.fake_engine import Script

QUESTION = [{"role": "user", "content": "Why is the sky blue?"}]
GREEDY = {"temperature": 0, "max_tokens": 8}


@pytest.fixture(scope="module")
def client(real) -> openai.OpenAI:
    return openai.OpenAI(base_url=real.url + "/v1", api_key="unused", max_retries=0, timeout=300)


def test_chat_completion_whole_and_streamed(client):
    whole = client.chat.completions.create(model=REAL, messages=QUESTION, **GREEDY)
    assert whole.id.startswith("chatcmpl-") and whole.object == "chat.completion" and whole.created > 0
    assert (whole.model, whole.system_fingerprint) == (REAL, "fp_gengate")
    choice = whole.choices[0]
    assert (choice.index, choice.message.role, choice.finish_reason) == (0, "assistant", "length")
    assert choice.message.content and choice.logprobs is None
    usage = whole.usage
    assert usage.prompt_tokens > 0 and usage.completion_tokens == 8
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

    chunks = list(client.chat.completions.create(model=REAL, messages=QUESTION, stream=True,
                                                 stream_options={"include_usage": True}, **GREEDY))
    assert {c.object for c in chunks} == {"chat.completion.chunk"} and len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    *pieces, last, tally = chunks
    assert "".join(c.choices[0].delta.content or "" for c in pieces + [last]) == choice.message.content
    assert [c.choices[0].finish_reason for c in pieces] == [None] * len(pieces)
    assert last.choices[0].finish_reason == "length" and last.usage is None
    assert tally.choices == [] and tally.usage == usage


def test_chat_stream_without_usage_is_sse(real):
    body = {"model": REAL, "messages": QUESTION, "stream": True, "max_tokens": 2}
    resp = httpx.post(real.url + "/v1/chat/completions", json=body, timeout=300)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    events = resp.text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""] and all(e.startswith("data: ") for e in events[:-1])
    chunks = [json.loads(e[len("data: "):]) for e in events[:-2]]
    assert all("usage" not in c for c in chunks) and chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_json_object_and_logprobs(client):
    reply = client.chat.completions.create(
        model=REAL, messages=[{"role": "user", "content": "Give a JSON object with the key \"ok\" set to true."}],
        response_format={"type": "json_object"}, temperature=0, max_tokens=40)
    assert reply.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(reply.choices[0].message.content), dict)

    reply = client.chat.completions.create(model=REAL, messages=QUESTION, temperature=0, max_completion_tokens=3,
                                           logprobs=True, top_logprobs=2, seed=42, stop=["\n\n"])
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens == 3
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)
    assert "".join(t.token for t in content) == reply.choices[0].message.content


def test_completions_whole_and_streamed(client):
    whole = client.completions.create(model=REAL, prompt="The sky is", **GREEDY)
    assert whole.id.startswith("cmpl-") and whole.object == "text_completion" and whole.model == REAL
    assert whole.choices[0].text and whole.choices[0].finish_reason == "length"
    assert whole.usage.completion_tokens == 8 and whole.usage.prompt_tokens > 0
    chunks = list(client.completions.create(model=REAL, prompt="The sky is", stream=True, **GREEDY))
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=REAL, prompt="x", echo=True, max_tokens=1)
    assert err.value.body == {"message": "'echo' is not supported", "type": "invalid_request_error",
                              "param": "echo", "code": None}


def norm(vector) -> float:
    return math.sqrt(sum(x * x for x in vector))


def test_embeddings(client):
    reply = client.embeddings.create(model=REAL, input=["The sky is blue.", "Cats purr."])   # base64 on the wire
    assert reply.object == "list" and reply.model == REAL and [d.index for d in reply.data] == [0, 1]
    a, b = (d.embedding for d in reply.data)
    assert len(a) == len(b) == 576 and abs(norm(a) - 1) < 1e-5 and abs(norm(b) - 1) < 1e-5 and a != b
    assert reply.usage.prompt_tokens > 0 and reply.usage.total_tokens == reply.usage.prompt_tokens
    floats = client.embeddings.create(model=REAL, input="The sky is blue.", encoding_format="float")
    assert floats.data[0].embedding == a
    short = client.embeddings.create(model=REAL, input="The sky is blue.", dimensions=64, encoding_format="float")
    assert len(short.data[0].embedding) == 64 and abs(norm(short.data[0].embedding) - 1) < 1e-5


def test_models(client):
    models = {m.id: m for m in client.models.list()}
    assert REAL in models and models[REAL].object == "model" and models[REAL].owned_by == "library"
    one = client.models.retrieve(REAL)
    assert (one.id, one.owned_by, one.created) == (REAL, "library", models[REAL].created)
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("nope")
    assert err.value.body["message"] == "model 'nope' not found" and err.value.type == "not_found_error"


def test_errors_are_openai_shaped(client, real):
    for stream in (False, True):          # before the first SSE byte: the real status
        with pytest.raises(openai.NotFoundError) as err:
            client.chat.completions.create(model="nope", messages=QUESTION, stream=stream, max_tokens=1)
        assert err.value.body == {"message": "model 'nope' not found", "type": "not_found_error",
                                  "param": None, "code": None}
    with pytest.raises(openai.BadRequestError) as err:          # the service's check and message
        client.chat.completions.create(model=REAL, messages=QUESTION, temperature=-1, max_tokens=1)
    assert err.value.type == "invalid_request_error" and "temperature" in err.value.body["message"]
    resp = httpx.post(real.url + "/v1/embeddings", json={"model": REAL, "input": [1, 2]})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "input"
    resp = httpx.post(real.url + "/v1/chat/completions", content=b"{")
    assert resp.status_code == 400 and resp.json()["error"]["type"] == "invalid_request_error"


def test_stream_error_after_the_first_byte_and_disconnect(fake, engine):
    client = openai.OpenAI(base_url=fake.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    engine.script = Script(fail_after=2)
    pieces = []
    with pytest.raises(openai.APIError) as err:
        for chunk in client.chat.completions.create(model="test", messages=QUESTION, stream=True):
            pieces.append(chunk.choices[0].delta.content)
    assert "".join(pieces) == "t0 t1 "                     # the pieces before the error, then the error event
    assert err.value.body == {"message": "an error was encountered while running the model", "type": "api_error",
                              "param": None, "code": None}

    engine.reset()
    engine.script = Script(count=10_000, delay=0.01)
    body = {"model": "test", "prompt": "x", "stream": True}
    with httpx.stream("POST", fake.url + "/v1/completions", json=body, timeout=60) as resp:
        lines = resp.iter_lines()
        assert [next(lines) for _ in range(4)][0].startswith("data: {")
    deadline = time.monotonic() + 10
    while engine.active and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.active == 0 and engine.closed == 1 and engine.tokens_emitted < 1000
