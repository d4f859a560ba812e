"""Behaviour on the real SmolLM2-135M model, through the official ollama client and gRPC stubs."""
from __future__ import annotations

import json

import grpc
import httpx
import jsonschema
import ollama
import pytest

from gengate.v1 import generate_pb2 as pb
from tests.conftest import REAL

GREEDY = {"temperature": 0, "num_predict": 24}


@pytest.fixture(scope="module")
def client(real) -> ollama.Client:
    return ollama.Client(host=real.url)


def text_of(client, **kw) -> ollama.GenerateResponse:
    return client.generate(model=REAL, stream=False, **kw)


def test_official_client_streams_tokens_as_decoded(client):
    chunks = list(client.generate(model=REAL, prompt="Why is the sky blue?", stream=True, options=GREEDY))
    assert len(chunks) > 5 and all(not c.done for c in chunks[:-1]) and chunks[-1].done
    final = chunks[-1]
    assert final.done_reason in ("stop", "length") and final.eval_count >= len(chunks) - 1
    assert final.prompt_eval_count > 10 and final.context and final.total_duration >= final.eval_duration > 0
    assert final.load_duration > 0 and final.prompt_eval_duration > 0
    assert "".join(c.response for c in chunks).strip()


def test_stream_concatenation_equals_non_stream_for_the_same_seed(client):
    options = {"seed": 7, "temperature": 0.9, "num_predict": 32}
    streamed = "".join(c.response for c in client.generate(model=REAL, prompt="Tell me a story.", stream=True,
                                                            options=options))
    assert streamed == text_of(client, prompt="Tell me a story.", options=options).response


def test_seed_makes_sampling_reproducible(client):
    def run(seed):
        return text_of(client, prompt="Write a poem about the sea.",
                                   options={"seed": seed, "temperature": 1.0, "num_predict": 32}).response
    first = run(1)
    assert run(1) == first
    assert any(run(s) != first for s in (2, 3))


def test_num_predict_ends_with_length(client):
    reply = text_of(client, prompt="Count to one hundred.", options={"temperature": 0, "num_predict": 5})
    assert (reply.done_reason, reply.eval_count) == ("length", 5)


def test_stop_sequences_end_generation_and_never_appear(client):
    base = text_of(client, prompt="Why is the sky blue?", options=GREEDY).response
    words = base.split()
    stop = words[len(words) // 2]
    reply = text_of(client, prompt="Why is the sky blue?", options={**GREEDY, "stop": [stop]})
    assert reply.done_reason == "stop" and stop not in reply.response
    assert base.startswith(reply.response) and len(reply.response) < len(base)


def test_format_json_output_parses(client):
    reply = text_of(client, prompt="Describe a cat as a JSON object with name and color.", format="json", options={"temperature": 0, "num_predict": 400})
    assert reply.done_reason == "stop" and isinstance(json.loads(reply.response), dict)


def test_format_schema_output_validates(client):
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"]}
    reply = text_of(client, prompt="Invent a person; answer in JSON.", format=schema,
                    options={"temperature": 0, "num_predict": 400})
    jsonschema.validate(json.loads(reply.response), schema)


def test_context_continues_the_conversation(client):
    first = text_of(client, prompt="My name is Ada.", options=GREEDY)
    assert first.context
    second = text_of(client, prompt="What is my name?", context=first.context, options=GREEDY)
    alone = text_of(client, prompt="What is my name?", options=GREEDY)
    assert second.prompt_eval_count >= len(first.context) + alone.prompt_eval_count - 2


def test_raw_sends_the_prompt_verbatim_and_returns_no_context(client, real):
    stub = real.stub()
    (reply,) = stub.Generate(pb.GenerateRequest(model=REAL, prompt="The capital of France is", raw=True,
                                                debug_render_only=True))
    assert reply.debug_info.rendered_template == "The capital of France is"
    raw = text_of(client, prompt="The capital of France is", raw=True, options=GREEDY)
    assert raw.response and not raw.context


def test_chat_template_and_system_are_applied(real):
    stub = real.stub()
    (reply,) = stub.Generate(pb.GenerateRequest(model=REAL, prompt="hello", debug_render_only=True))
    rendered = reply.debug_info.rendered_template
    assert rendered.endswith("<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n")
    assert "You are a helpful AI assistant named SmolLM" in rendered        # the template's default system
    (reply,) = stub.Generate(pb.GenerateRequest(model=REAL, prompt="hello", system="Be terse.",
                                                debug_render_only=True))
    assert reply.debug_info.rendered_template.startswith("<|im_start|>system\nBe terse.<|im_end|>")


def test_logprobs_over_grpc_and_raw_http_carry_bytes(real):
    request = pb.GenerateRequest(model=REAL, prompt="Hello", logprobs=True, top_logprobs=2,
                                 options=pb.Options(temperature=0, num_predict=6))
    replies = list(real.stub().Generate(request, timeout=60))
    entries = [e for r in replies for e in r.logprobs]
    assert len(entries) == replies[-1].eval_count == 6
    assert all(bytes(e.bytes).decode("utf-8", "replace") == e.token and len(e.top_logprobs) == 2 for e in entries)
    body = {"model": REAL, "prompt": "Hello", "logprobs": True, "top_logprobs": 2, "stream": False,
            "options": {"temperature": 0, "num_predict": 6}}
    over_http = httpx.post(real.url + "/api/generate", json=body, timeout=60).json()["logprobs"]
    assert [(e["token"], e["bytes"]) for e in over_http] == [(e.token, list(e.bytes)) for e in entries]


def test_logprobs_stream_and_non_stream_agree(client):
    kw = dict(model=REAL, prompt="Hello", options={"temperature": 0, "num_predict": 8}, logprobs=True, top_logprobs=3)
    streamed = [lp for c in client.generate(stream=True, **kw) for lp in (c.logprobs or [])]
    whole = client.generate(stream=False, **kw).logprobs
    assert len(whole) == 8 and [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in whole]
    for entry in whole:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[-1].logprob
        assert entry.token == entry.top_logprobs[0].token         # greedy: the best alternative was taken


def test_grpc_streams_with_counts_and_durations(real):
    replies = list(real.stub().Generate(pb.GenerateRequest(
        model=REAL, prompt="Why is the sky blue?", options=pb.Options(temperature=0, num_predict=16))))
    assert len(replies) >= 2 and all(not r.done for r in replies[:-1])
    final = replies[-1]
    assert final.done and final.done_reason in (pb.DONE_REASON_STOP, pb.DONE_REASON_LENGTH)
    assert final.eval_count > 0 and final.prompt_eval_count > 0 and final.context
    for field in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert getattr(final, field).ToNanoseconds() > 0, field
    assert final.created_at.seconds > 0


def test_grpc_stream_false_is_one_message(real):
    replies = list(real.stub().Generate(pb.GenerateRequest(
        model=REAL, prompt="Hi", stream=False, options=pb.Options(temperature=0, num_predict=8))))
    assert len(replies) == 1 and replies[0].done and replies[0].response


def test_grpc_errors_carry_codes_and_ollamas_messages(real):
    cases = [(pb.GenerateRequest(model="nope"), grpc.StatusCode.NOT_FOUND, "model 'nope' not found"),
             (pb.GenerateRequest(model="a b"), grpc.StatusCode.INVALID_ARGUMENT, "invalid model name"),
             (pb.GenerateRequest(model=REAL, top_logprobs=21), grpc.StatusCode.INVALID_ARGUMENT,
              "top_logprobs must be between 0 and 20"),
             (pb.GenerateRequest(model=REAL, prompt="x", format=pb.Format(json_schema="[1]")),
              grpc.StatusCode.INVALID_ARGUMENT, 'invalid format: "[1]"; expected "json" or a valid JSON Schema object')]
    for req, code, message in cases:
        with pytest.raises(grpc.RpcError) as err:
            list(real.stub().Generate(req))
        assert (err.value.code(), err.value.details()) == (code, message)


def test_unknown_model_is_a_404_response_error(client):
    with pytest.raises(ollama.ResponseError) as err:
        client.generate(model="missing:7b", prompt="hi")
    assert err.value.status_code == 404 and err.value.error == "model 'missing:7b' not found"


def test_keep_alive_load_and_unload(client, real):
    pool = real.service.pool
    assert client.generate(model=REAL, prompt="").done_reason == "load"
    assert any(m.entry.name.short == REAL for m in pool.loaded())
    assert client.generate(model=REAL, prompt="", keep_alive=0).done_reason == "unload"
    assert not any(m.entry.name.short == REAL for m in pool.loaded())
    text_of(client, prompt="hi", options={"num_predict": 2}, keep_alive=-1)
    (model,) = [m for m in pool.loaded() if m.entry.name.short == REAL]
    assert model.keep_alive_ns < 0 and model.expires_at is None


def test_truncate_false_refuses_an_over_long_prompt(real):
    body = {"model": REAL, "prompt": "word " * 300, "options": {"num_ctx": 128}, "truncate": False}
    resp = httpx.post(real.url + "/api/generate", json=body, timeout=60)
    assert (resp.status_code, resp.json()) == (400, {"error": "the input length exceeds the context length"})
    with pytest.raises(grpc.RpcError) as err:
        list(real.stub().Generate(pb.GenerateRequest(model=REAL, prompt="word " * 300, shift=False,
                                                     options=pb.Options(num_ctx=128))))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("the prompt is longer than the context length")


def test_truncate_keeps_head_and_tail_and_reports_it(real):
    (reply,) = real.stub().Generate(pb.GenerateRequest(
        model=REAL, prompt="word " * 300, stream=False, options=pb.Options(num_ctx=128, num_predict=4, temperature=0)))
    assert reply.done and reply.truncated_prompt_tokens > 0
    assert reply.prompt_eval_count <= 128
