"""/api/chat and /api/embed (+ legacy /api/embeddings) on both transports."""
from __future__ import annotations

import math

import grpc
import httpx
import ollama
import pytest

from gengate.v1 import generate_pb2 as pb
from tests.conftest import REAL

GREEDY = {"temperature": 0, "num_predict": 20}


@pytest.fixture(scope="module")
def client(real) -> ollama.Client:
    return ollama.Client(host=real.url)


def test_chat_streams_an_assistant_message(client):
    messages = [{"role": "user", "content": "Why is the sky blue?"}]
    chunks = list(client.chat(model=REAL, messages=messages, stream=True, options=GREEDY))
    assert all(c.message.role == "assistant" for c in chunks) and chunks[-1].done
    assert chunks[-1].done_reason in ("stop", "length") and chunks[-1].eval_count > 0
    whole = client.chat(model=REAL, messages=messages, stream=False, options=GREEDY)
    assert "".join(c.message.content for c in chunks) == whole.message.content != ""


def test_one_user_message_is_the_same_prompt_as_generate(client):
    chat = client.chat(model=REAL, messages=[{"role": "USER", "content": "hello"}], options=GREEDY)   # roles lower-cased
    generate = client.generate(model=REAL, prompt="hello", options=GREEDY)
    assert chat.message.content == generate.response and chat.prompt_eval_count == generate.prompt_eval_count


def test_chat_turns_render_through_the_models_template(fake, engine):
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "A"},
                {"role": "assistant", "content": "B"}, {"role": "user", "content": "C"}]
    resp = httpx.post(fake.url + "/api/chat", json={"model": "test", "messages": messages, "stream": False})
    assert resp.status_code == 200 and resp.json()["message"]["content"] == "".join(f"t{i} " for i in range(20))
    assert engine.prompts == ["System: S User: A Assistant: B User: C "]
    httpx.post(fake.url + "/api/chat", json={"model": "test-system", "messages": messages[1:2], "stream": False})
    assert engine.prompts[-1] == "System: You are a helpful assistant. User: A "


@pytest.mark.parametrize("body,status,error", [
    ({"messages": []}, 400, "model is required"),
    ({"model": "nope", "messages": []}, 404, "model 'nope' not found"),
    ({"model": REAL, "messages": [{"role": "user", "content": "x"}], "tool_choice": "sometimes"}, 400,
     'invalid tool_choice: \'sometimes\' (must be "auto", "none", "required" or a function)'),
    ({"model": REAL, "messages": [{"role": "user", "content": "x", "images": ["AAAA"]}]}, 400,
     '"smollm2:135m" does not support images'),
    ({"model": REAL, "messages": [{"role": "user", "content": "x"}], "think": True}, 400,
     '"smollm2:135m" does not support thinking'),
    ({"model": "bert", "messages": [{"role": "user", "content": "x"}]}, 400, '"bert" does not support chat'),
    ({"model": REAL, "messages": "hi"}, 400,
     "json: cannot unmarshal string into Go struct field ChatRequest.messages of type []api.Message"),
])
def test_chat_errors(real, body, status, error):
    resp = httpx.post(real.url + "/api/chat", json=body)
    assert (resp.status_code, resp.json()) == (status, {"error": error})


def test_chat_load_unload_and_grpc(real):
    load = httpx.post(real.url + "/api/chat", json={"model": REAL, "messages": []}).json()
    assert (load["done"], load["done_reason"], load["message"]) == (True, "load", {"role": "assistant", "content": ""})
    unload = httpx.post(real.url + "/api/chat", json={"model": "tiny", "messages": [], "keep_alive": 0}).json()
    assert unload["done_reason"] == "unload"
    replies = list(real.stub().Chat(pb.ChatRequest(model=REAL, messages=[pb.Message(role="user", content="hi")],
                                                   options=pb.Options(temperature=0, num_predict=8))))
    assert len(replies) >= 2 and replies[-1].done and replies[-1].eval_count > 0
    assert "".join(r.message.content for r in replies)


def norm(vector) -> float:
    return math.sqrt(sum(x * x for x in vector))


def test_embed_returns_normalised_vectors(client):
    reply = client.embed(model=REAL, input=["The sky is blue.", "Cats purr."])
    a, b = reply.embeddings
    assert len(a) == len(b) == 576 and abs(norm(a) - 1) < 1e-5 and abs(norm(b) - 1) < 1e-5 and a != b
    assert client.embed(model=REAL, input="The sky is blue.").embeddings[0] == a          # a string works too
    assert reply.prompt_eval_count > 0 and reply.total_duration > 0
    short = client.embed(model=REAL, input="The sky is blue.", dimensions=64).embeddings[0]
    assert len(short) == 64 and abs(norm(short) - 1) < 1e-5
    assert client.embed(model=REAL, input=[]).embeddings == []                           # loads only


def test_legacy_embeddings_and_embed_errors(real):
    legacy = httpx.post(real.url + "/api/embeddings", json={"model": REAL, "prompt": "hello"}).json()
    assert len(legacy["embedding"]) == 576
    # Ollama's legacy handler returns the raw vector; /api/embed normalises the same one.
    norm = math.sqrt(sum(x * x for x in legacy["embedding"]))
    assert abs(norm - 1) > 0.01
    normalised = httpx.post(real.url + "/api/embed", json={"model": REAL, "input": "hello"}).json()["embeddings"][0]
    assert max(abs(a / norm - b) for a, b in zip(legacy["embedding"], normalised, strict=True)) < 1e-6
    assert httpx.post(real.url + "/api/embeddings", json={"model": REAL, "prompt": ""}).json() == {"embedding": []}
    cases = [("/api/embed", {"model": REAL, "input": [1]}, 400, "invalid input type"),
             ("/api/embed", {"input": "x"}, 400, "model is required"),
             ("/api/embeddings", {"prompt": "x"}, 400, "model is required"),
             ("/api/embed", {"model": "nope", "input": "x"}, 404, "model 'nope' not found"),
             ("/api/embed", {"model": REAL, "input": "word " * 300, "truncate": False, "options": {"num_ctx": 64}},
              400, "the input length exceeds the context length")]
    for path, body, status, error in cases:
        resp = httpx.post(real.url + path, json=body)
        assert (resp.status_code, resp.json()) == (status, {"error": error}), body
    with pytest.raises(grpc.RpcError) as err:
        real.stub().Embed(pb.EmbedRequest(model="nope", input=["x"]))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    reply = real.stub().Embed(pb.EmbedRequest(model=REAL, input=["x"]))
    assert len(reply.embeddings[0].values) == 576


def test_chat_thinking_with_the_official_client_streamed_and_merged(fake, engine):
    from tests.stack.test_prompts import THOUGHT
    engine.script.pieces = THOUGHT
    client = ollama.Client(host=fake.url)
    ask = [{"role": "user", "content": "2+2?"}]
    whole = client.chat(model="tiny-think", messages=ask, think=True)
    assert (whole.message.thinking, whole.message.content) == ("Let me think", "The answer is 4.")
    chunks = list(client.chat(model="tiny-think", messages=ask, think="high", stream=True))
    assert "".join(c.message.thinking or "" for c in chunks) == "Let me think"
    assert "".join(c.message.content for c in chunks) == "The answer is 4."
    # An earlier assistant turn's thinking reaches the template as a message field.
    client.chat(model="tiny-think", messages=ask + [
        {"role": "assistant", "content": "4", "thinking": "easy"}, {"role": "user", "content": "3+3?"}], think=False)
    assert engine.prompts[-1].endswith("<|user|>3+3?\n<|assistant|><think></think>")


def test_chat_format_and_logprobs_on_the_real_model(client):
    ask = [{"role": "user", "content": "Describe a cat as a JSON object with name and color."}]
    reply = client.chat(model=REAL, messages=ask, format="json", options={"temperature": 0, "num_predict": 60})
    assert isinstance(__import__("json").loads(reply.message.content), dict)
    chunks = list(client.chat(model=REAL, messages=[{"role": "user", "content": "Name a planet."}], stream=True,
                              logprobs=True, top_logprobs=2, options={"temperature": 0, "num_predict": 8}))
    entries = [e for c in chunks for e in (c.logprobs or [])]
    assert len(entries) == chunks[-1].eval_count and all(len(e.top_logprobs) == 2 for e in entries)
    assert "".join(e.token for e in entries) == "".join(c.message.content for c in chunks)
