"""Prompt construction and thinking, per Ollama's own generate tests, on both transports.

The fake engine records the prompt the runner receives; the models are Ollama's test
models (`test`, `test-system`, `test-suffix`) over a tiny GGUF.
"""
from __future__ import annotations

import json

import grpc
import httpx
import pytest

from gengate.v1 import generate_pb2 as pb
from tests.fake_engine import Script


def generate(stack, **body) -> httpx.Response:
    return httpx.post(stack.url + "/api/generate", json={"stream": False, **body}, timeout=30)


@pytest.mark.parametrize("body,prompt", [
    ({"model": "test", "prompt": "Hello!"}, "User: Hello! "),
    ({"model": "test-system", "prompt": "Hello!"}, "System: You are a helpful assistant. User: Hello! "),
    ({"model": "test-system", "prompt": "Hello!", "system": "You can perform magic tricks."},
     "System: You can perform magic tricks. User: Hello! "),
    ({"model": "test-system", "prompt": "Help me write tests.", "system": "You can perform magic tricks.",
      "template": "{{- if .System }}{{ .System }} {{ end }}{{- if .Prompt }}### USER {{ .Prompt }} {{ end }}"
                  "{{- if .Response }}### ASSISTANT {{ .Response }} {{ end }}"},
     "You can perform magic tricks. ### USER Help me write tests. "),
    ({"model": "test-suffix", "prompt": "def add(", "suffix": "    return c"}, "<PRE> def add( <SUF>    return c <MID>"),
    ({"model": "test-suffix", "prompt": "def add("}, "def add("),
    ({"model": "test-system", "prompt": "Help me write tests.", "raw": True}, "Help me write tests."),
    ({"model": "tiny", "prompt": "plain prompt"}, "plain prompt"),
])
def test_runner_receives_ollamas_prompt(fake, engine, body, prompt):
    resp = generate(fake, **body)
    assert resp.status_code == 200, resp.text
    assert engine.prompts == [prompt]
    obj = resp.json()
    assert obj["response"] == "".join(f"t{i} " for i in range(20)) and obj["done_reason"] == "stop"
    assert ("context" in obj) != bool(body.get("raw"))
    if "context" in obj:        # Ollama's context: the tokens of the rendered prompt and the response text
        assert "".join(map(chr, obj["context"])) == prompt + obj["response"]


def test_context_sent_back_is_prefixed_as_text_and_streaming_returns_the_same(fake, engine):
    first = generate(fake, model="test", prompt="A").json()
    lines = [json.loads(line) for line in httpx.post(fake.url + "/api/generate", json={
        "model": "test", "prompt": "B", "context": first["context"]}).text.splitlines()]
    assert engine.prompts[-1] == "User: A " + first["response"] + "User: B "
    assert "".join(map(chr, lines[-1]["context"])) == engine.prompts[-1] + "".join(x["response"] for x in lines)


def test_debug_render_only_ignores_a_bad_format(fake, engine):
    obj = generate(fake, model="test", prompt="hi", format="yaml", _debug_render_only=True).json()
    assert obj["_debug_info"] == {"rendered_template": "User: hi "} and engine.prompts == []


@pytest.mark.parametrize("body,rendered", [
    ({"model": "test", "prompt": "Hello, world!", "template": "{{ .Prompt }}"}, "Hello, world!"),
    ({"model": "test", "prompt": "User question", "system": "sys", "template": "{{ .Prompt }}"}, "User question"),
    ({"model": "test", "prompt": "Hello", "template": "PROMPT: {{ .Prompt }}"}, "PROMPT: Hello"),
    ({"model": "test", "prompt": "Raw prompt text", "raw": True}, "Raw prompt text"),
    # A legacy template stops after .Response; a .Messages template sees system and user turns.
    ({"model": "test", "prompt": "hi", "template": "{{ .Prompt }}{{ .Response }}<|end|>"}, "hi"),
    ({"model": "test", "prompt": "hi", "system": "sys",
      "template": "{{- range .Messages }}<|{{ .Role }}|>{{ .Content }}{{ end }}<|assistant|>"},
     "<|system|>sys<|user|>hi<|assistant|>"),
])
@pytest.mark.parametrize("stream", [True, False])
def test_debug_render_only_returns_the_prompt_without_inference(fake, engine, body, rendered, stream):
    resp = generate(fake, **body, stream=stream, _debug_render_only=True)
    obj = resp.json()
    assert (resp.status_code, obj["done"], obj["_debug_info"]) == (200, False, {"rendered_template": rendered})
    assert obj["model"] == "test" and engine.started == 0


def test_bad_template_is_a_400_with_go_text(fake, engine):
    resp = generate(fake, model="test", prompt="x", template="{{ .Prompt ")
    assert resp.status_code == 400 and resp.json()["error"].startswith("template: ")
    assert engine.started == 0


def test_empty_prompt_with_suffix_checks_capability_then_loads(fake, engine):
    assert generate(fake, model="test-suffix", suffix="x").json()["done_reason"] == "load"
    resp = generate(fake, model="test", prompt="def add(", suffix="    return c")
    assert resp.json() == {"error": "registry.ollama.ai/library/test:latest does not support insert"}


def test_same_prompt_over_grpc(fake, engine):
    stub = fake.stub()
    replies = list(stub.Generate(pb.GenerateRequest(model="test-system", prompt="Hello!")))
    assert engine.prompts == ["System: You are a helpful assistant. User: Hello! "]
    assert replies[-1].done and len(replies) == 21
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Generate(pb.GenerateRequest(model="test", prompt="x", raw=True, context=[1, 2])))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "raw mode does not support template, system, or context"


# -- thinking (tiny-think declares <think>…</think> in its chat template) -----------------------------
THOUGHT = ["Let me ", "think", "</th", "ink>", "\n\nThe answer", " is 4."]


def test_thinking_is_split_from_the_response(fake, engine):
    engine.script = Script(pieces=THOUGHT)
    obj = generate(fake, model="tiny-think", prompt="2+2?").json()
    assert (obj["thinking"], obj["response"]) == ("Let me think", "The answer is 4.")
    assert engine.prompts[-1].endswith("<|assistant|><think>")      # think unset → on for a thinking model
    lines = [json.loads(x) for x in httpx.post(fake.url + "/api/generate", timeout=30, json={
        "model": "tiny-think", "prompt": "2+2?", "think": "high"}).text.splitlines()]
    assert "".join(x.get("thinking", "") for x in lines) == "Let me think"
    assert "".join(x["response"] for x in lines) == "The answer is 4."


def test_think_false_renders_no_thinking_and_keeps_all_text_in_response(fake, engine):
    engine.script = Script(pieces=["The answer", " is 4."])
    obj = generate(fake, model="tiny-think", prompt="2+2?", think=False).json()
    assert engine.prompts[-1].endswith("<think></think>")
    assert obj["response"] == "The answer is 4." and "thinking" not in obj


def test_thinking_over_grpc(fake, engine):
    engine.script = Script(pieces=THOUGHT)
    (reply,) = fake.stub().Generate(pb.GenerateRequest(model="tiny-think", prompt="2+2?", stream=False,
                                                       think=pb.Think(level=pb.THINK_LEVEL_LOW)))
    assert (reply.thinking, reply.response) == ("Let me think", "The answer is 4.")
    with pytest.raises(grpc.RpcError) as err:
        list(fake.stub().Generate(pb.GenerateRequest(model="test", prompt="x", think=pb.Think(enabled=True))))
    assert err.value.details() == '"test" does not support thinking'
    # think:false is accepted by a model that cannot think.
    assert list(fake.stub().Generate(pb.GenerateRequest(model="test", prompt="x", think=pb.Think(enabled=False))))


def test_a_broken_model_template_is_the_servers_error_a_broken_request_template_the_clients(fake, engine):
    """A broken template: 400 for the request's `template`; the model's own is a 500, as in Ollama."""
    broken = {"error": "template: :1: unclosed action"}
    for body, status in (({"model": "test-broken", "prompt": "x"}, 500),
                         ({"model": "test", "prompt": "x", "template": "{{ .Prompt"}, 400)):
        resp = generate(fake, **body)
        assert (resp.status_code, resp.json()) == (status, broken)
    resp = httpx.post(fake.url + "/api/chat", json={"model": "test-broken", "stream": False,
                                                    "messages": [{"role": "user", "content": "x"}]})
    assert (resp.status_code, resp.json()) == (500, broken)
    with pytest.raises(grpc.RpcError) as err:
        list(fake.stub().Generate(pb.GenerateRequest(model="test-broken", prompt="x")))
    assert (err.value.code(), err.value.details()) == (grpc.StatusCode.INTERNAL, broken["error"])
    assert engine.prompts == []


def test_modelfile_messages_start_every_conversation(fake, engine):
    """The prompt is [system] + the model's MESSAGEs (unless `context` is sent) + the prompt; /api/chat likewise."""
    assert generate(fake, model="test-messages", prompt="Bye").status_code == 200
    assert engine.prompts[-1] == "System: Be brief. User: Hi Assistant: Hello! User: Bye "
    generate(fake, model="test-messages", prompt="Bye", context=[ord(c) for c in "before "])
    assert engine.prompts[-1] == "before System: Be brief. User: Bye "
    httpx.post(fake.url + "/api/chat", json={"model": "test-messages", "stream": False,
                                             "messages": [{"role": "user", "content": "Bye"}]})
    assert engine.prompts[-1] == "System: Be brief. User: Hi Assistant: Hello! User: Bye "
    shown = httpx.post(fake.url + "/api/show", json={"model": "test-messages"}).json()
    assert shown["messages"] == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    assert "MESSAGE assistant Hello!" in shown["modelfile"]          # Ollama quotes only what needs it
