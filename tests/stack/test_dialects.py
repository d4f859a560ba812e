"""Anthropic's Messages API (/v1/messages) and OpenAI's Responses API (/v1/responses) on the scripted engine,
with the official `anthropic` and `openai` clients: framing (blocks, items and their events in order), thinking,
tool calls both ways, stop sequences, errors before and after the first byte, and tool_choice checks."""
from __future__ import annotations

import json

import anthropic
import httpx
import openai
import pytest

from tests.fake_engine import FakeEngine, Script
from tests.harness import Stack

HI = [{"role": "user", "content": "Hi"}]
THOUGHT = ["Let me ", "think", "</think>", "\n\nThe answer", " is 4."]
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}\n</tool_call>'
WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                  "required": ["city"]}
CLAUDE_TOOL = {"name": "get_weather", "description": "The weather in a city", "input_schema": WEATHER_SCHEMA}
RESPONSES_TOOL = {"type": "function", "name": "get_weather", "description": "The weather in a city",
                  "parameters": WEATHER_SCHEMA}


@pytest.fixture(scope="module")
def claude(fake) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=fake.url, api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def oai(fake) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.url + "/v1", api_key="unused", max_retries=0, timeout=60)


# -- Anthropic -------------------------------------------------------------------------------------------------
def test_message_whole_and_streamed(claude, engine):
    engine.script = Script(pieces=["Hello", " there"])
    whole = claude.messages.create(model="test", max_tokens=16, messages=HI, system="Be brief.")
    assert whole.type == "message" and whole.role == "assistant" and whole.id.startswith("msg_")
    assert [(b.type, b.text) for b in whole.content] == [("text", "Hello there")]
    assert (whole.stop_reason, whole.stop_sequence, whole.model) == ("end_turn", None, "test")
    assert whole.usage.output_tokens == 2 and whole.usage.input_tokens == len(engine.prompts[-1])
    assert engine.prompts[-1] == "System: Be brief. User: Hi "
    events = list(claude.messages.create(model="test", max_tokens=16, messages=HI, stream=True))
    assert [e.type for e in events] == ["message_start", "content_block_start", "content_block_delta",
                                        "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    assert "".join(e.delta.text for e in events if e.type == "content_block_delta") == "Hello there"
    assert events[-2].delta.stop_reason == "end_turn" and events[-2].usage.output_tokens == 2
    with claude.messages.stream(model="test", max_tokens=16, messages=HI) as stream:
        final = stream.get_final_message()
    assert final.content[0].text == "Hello there" and final.stop_reason == "end_turn"


def test_ping_follows_message_start_on_the_wire(fake, engine):
    engine.script = Script(pieces=["x"])
    resp = httpx.post(fake.url + "/v1/messages", json={"model": "test", "max_tokens": 4, "messages": HI,
                                                       "stream": True})
    assert resp.headers["content-type"].startswith("text/event-stream")
    names = [block.split("\n")[0] for block in resp.text.strip().split("\n\n")]
    assert names[:3] == ["event: message_start", "event: ping", "event: content_block_start"]


def test_max_tokens_and_stop_sequences(claude, engine):
    engine.script = Script(pieces=["a", "b", "c"])
    cut = claude.messages.create(model="test", max_tokens=2, messages=HI)
    assert (cut.content[0].text, cut.stop_reason) == ("ab", "max_tokens")
    stopped = claude.messages.create(model="test", max_tokens=9, messages=HI, stop_sequences=["c"])
    assert (stopped.content[0].text, stopped.stop_reason, stopped.stop_sequence) == ("ab", "stop_sequence", "c")
    events = list(claude.messages.create(model="test", max_tokens=9, messages=HI, stop_sequences=["c"], stream=True))
    assert (events[-2].delta.stop_reason, events[-2].delta.stop_sequence) == ("stop_sequence", "c")


def test_thinking_blocks_come_first(claude, engine):
    engine.script = Script(pieces=THOUGHT)
    whole = claude.messages.create(model="tiny-think", max_tokens=64, messages=HI,
                                   thinking={"type": "enabled", "budget_tokens": 1024})
    assert [(b.type, getattr(b, "thinking", None) or getattr(b, "text", None)) for b in whole.content] == [
        ("thinking", "Let me think"), ("text", "The answer is 4.")]
    events = list(claude.messages.create(model="tiny-think", max_tokens=64, messages=HI, stream=True))
    starts = [(e.index, e.content_block.type) for e in events if e.type == "content_block_start"]
    stops = [e.index for e in events if e.type == "content_block_stop"]
    assert starts == [(0, "thinking"), (1, "text")] and stops == [0, 1]
    raw = httpx.post(str(claude.base_url).rstrip("/") + "/v1/messages", json={"model": "tiny-think", "max_tokens": 64,
                                                                  "messages": HI, "stream": True}).text
    first_block = json.loads(raw.split("event: content_block_start\ndata: ")[1].split("\n")[0])["content_block"]
    assert first_block == {"type": "thinking", "thinking": "", "signature": ""}        # as Anthropic streams it
    claude.messages.create(model="tiny-think", max_tokens=64, messages=HI, thinking={"type": "disabled"})
    assert engine.prompts[-1].endswith("<think></think>")
    # A model that cannot think is answered without thinking, not refused (as by Ollama).
    engine.script = Script(pieces=["ok"])
    assert claude.messages.create(model="test", max_tokens=8, messages=HI,
                                  thinking={"type": "enabled", "budget_tokens": 1024}).content[0].text == "ok"


def test_tool_use_and_its_result_round_trip(claude, engine):
    engine.script = Script(pieces=["Sure. ", CALL])
    whole = claude.messages.create(model="tiny-tools", max_tokens=64, messages=HI, tools=[CLAUDE_TOOL])
    assert whole.stop_reason == "tool_use"
    text, use = whole.content
    assert text.text == "Sure. " and (use.type, use.name, use.input) == ("tool_use", "get_weather",
                                                                          {"city": "Paris", "days": 2})
    events = list(claude.messages.create(model="tiny-tools", max_tokens=64, messages=HI, tools=[CLAUDE_TOOL],
                                         stream=True))
    starts = [e.content_block.type for e in events if e.type == "content_block_start"]
    assert starts == ["text", "tool_use"] and events[-2].delta.stop_reason == "tool_use"
    partial = "".join(e.delta.partial_json for e in events
                      if e.type == "content_block_delta" and e.delta.type == "input_json_delta")
    assert json.loads(partial) == {"city": "Paris", "days": 2}
    # The call and its result go back in the next request; the template names the function of the result.
    engine.script = Script(pieces=["18 degrees."])
    history = HI + [{"role": "assistant", "content": [{"type": "text", "text": "Sure. "}, use.model_dump()]},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                                  "content": [{"type": "text", "text": "18 degrees"}]},
                                                 {"type": "text", "text": "And so?"}]}]
    reply = claude.messages.create(model="test-tools", max_tokens=64, messages=history, tools=[CLAUDE_TOOL])
    assert reply.content[0].text == "18 degrees."
    assert engine.prompts[-1].endswith('<|tool|>18 degrees (get_weather)\n<|user|>And so?\n<|assistant|>'), \
        engine.prompts[-1]
    assert '"city":"Paris"' in engine.prompts[-1].replace(" ", "")


def test_count_tokens_is_the_prompt_the_model_would_read(claude, engine):
    counted = claude.messages.count_tokens(model="test", messages=HI, system="Be brief.")
    assert engine.started == 0 or engine.tokens_emitted == 0
    engine.script = Script(pieces=["x"])
    answered = claude.messages.create(model="test", max_tokens=4, messages=HI, system="Be brief.")
    assert counted.input_tokens == answered.usage.input_tokens == len("System: Be brief. User: Hi ")


def test_anthropic_errors(claude, fake, engine):
    with pytest.raises(anthropic.NotFoundError) as err:
        claude.messages.create(model="nope", max_tokens=4, messages=HI)
    assert err.value.body["error"] == {"type": "not_found_error", "message": "model 'nope' not found"}
    assert err.value.body["type"] == "error" and err.value.body["request_id"].startswith("req_")
    for body, message in (({"model": "test", "messages": HI}, "max_tokens"),
                          ({"model": "test", "max_tokens": 4}, "messages"),
                          ({"max_tokens": 4, "messages": HI}, "model"),
                          ({"model": "test", "max_tokens": 4, "messages": HI, "tool_choice": {"type": "maybe"}},
                           "tool_choice"),
                          ({"model": "test", "max_tokens": 4, "messages": HI, "tools": [CLAUDE_TOOL],
                            "tool_choice": {"type": "tool", "name": "other"}}, '"other"'),
                          ({"model": "test", "max_tokens": 4, "messages": [
                              {"role": "user", "content": [{"type": "image", "source": {"type": "url",
                                                                                        "url": "http://x"}}]}]},
                           "base64"),
                          ({"model": "test", "max_tokens": 4, "messages": HI,
                            "system": [{"type": "text", "text": None}]}, "must be a string"),
                          ({"model": "test", "max_tokens": 4, "messages": [{"role": "assistant", "content": [
                              {"type": "tool_use", "id": "t1", "name": 5, "input": {}}]}]}, "must be a string")):
        resp = httpx.post(fake.url + "/v1/messages", json=body)
        assert resp.status_code == 400, (body, resp.text)
        error = resp.json()["error"]
        assert error["type"] == "invalid_request_error" and message in error["message"], error
    resp = httpx.post(fake.url + "/v1/messages", content=b"{")
    assert resp.status_code == 400 and resp.json()["type"] == "error"
    # After the first byte: an `error` event, which the client raises.
    engine.script = Script(fail_after=2)
    with pytest.raises(anthropic.APIStatusError) as err:
        for _ in claude.messages.create(model="test", max_tokens=50, messages=HI, stream=True):
            pass
    assert err.value.body["error"]["type"] == "api_error"
    assert engine.started == 1


def test_x_api_key_is_the_bearer_token(models):
    stack = Stack(models, FakeEngine(), api_key="s3cret").start()
    try:
        with pytest.raises(anthropic.AuthenticationError) as err:
            anthropic.Anthropic(base_url=stack.url, api_key="wrong", max_retries=0).messages.create(
                model="test", max_tokens=4, messages=HI)
        assert err.value.body["error"]["type"] == "authentication_error"
        ok = anthropic.Anthropic(base_url=stack.url, api_key="s3cret", max_retries=0).messages.create(
            model="test", max_tokens=4, messages=HI)
        assert ok.stop_reason in ("max_tokens", "end_turn")
    finally:
        stack.stop()


def test_model_list_in_each_dialect(fake, claude, oai):
    claude_models = {m.id: m for m in claude.models.list()}
    tiny = claude_models["tiny:latest"]
    assert (tiny.type, tiny.display_name) == ("model", "tiny:latest") and tiny.created_at.year >= 2026
    assert claude.models.retrieve("tiny").id == "tiny"
    assert {m.id for m in oai.models.list()} == set(claude_models)
    assert oai.models.retrieve("tiny").object == "model"


# -- OpenAI Responses ------------------------------------------------------------------------------------------
def test_response_whole_and_streamed(oai, engine):
    engine.script = Script(pieces=["Hello", " there"])
    whole = oai.responses.create(model="test", input="Hi", instructions="Be brief.")
    assert whole.object == "response" and whole.status == "completed" and whole.id.startswith("resp_")
    assert whole.output_text == "Hello there" and whole.usage.output_tokens == 2
    assert engine.prompts[-1] == "System: Be brief. User: Hi "
    events = list(oai.responses.create(model="test", input="Hi", stream=True))
    assert [e.type for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].response.output_text == "Hello there"
    engine.script = Script(pieces=["a", "b", "c"])
    cut = oai.responses.create(model="test", input="Hi", max_output_tokens=2)
    assert (cut.status, cut.incomplete_details.reason, cut.output_text) == ("incomplete", "max_output_tokens", "ab")


def test_response_reasoning_item_comes_first(oai, engine):
    engine.script = Script(pieces=THOUGHT)
    whole = oai.responses.create(model="tiny-think", input="2+2?", reasoning={"effort": "low"})
    assert [item.type for item in whole.output] == ["reasoning", "message"]
    assert whole.output[0].summary[0].text == "Let me think" and whole.output_text == "The answer is 4."
    events = list(oai.responses.create(model="tiny-think", input="2+2?", stream=True))
    added = [(e.output_index, e.item.type) for e in events if e.type == "response.output_item.added"]
    assert added == [(0, "reasoning"), (1, "message")]
    oai.responses.create(model="tiny-think", input="2+2?", reasoning={"effort": "none"})
    assert engine.prompts[-1].endswith("<think></think>")


def test_function_call_and_its_output_round_trip(oai, engine):
    engine.script = Script(pieces=[CALL])
    whole = oai.responses.create(model="tiny-tools", input="Weather in Paris?", tools=[RESPONSES_TOOL])
    [call] = whole.output
    assert (call.type, call.name, json.loads(call.arguments)) == ("function_call", "get_weather",
                                                                  {"city": "Paris", "days": 2})
    events = list(oai.responses.create(model="tiny-tools", input="Weather?", tools=[RESPONSES_TOOL], stream=True))
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert len(done) == 1 and json.loads(done[0].arguments) == {"city": "Paris", "days": 2}
    engine.script = Script(pieces=["18 degrees."])
    follow = oai.responses.create(model="test-tools", tools=[RESPONSES_TOOL], input=[
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "Call it."}]},
        call.model_dump(exclude_none=True),
        {"type": "function_call_output", "call_id": call.call_id, "output": "18 degrees"}])
    assert follow.output_text == "18 degrees."
    assert engine.prompts[-1].endswith("<|tool|>18 degrees (get_weather)\n<|assistant|>"), engine.prompts[-1]


def test_responses_errors(oai, fake, engine):
    with pytest.raises(openai.NotFoundError) as err:
        oai.responses.create(model="nope", input="Hi")
    assert err.value.body["message"] == "model 'nope' not found"
    with pytest.raises(openai.BadRequestError) as err:
        oai.responses.create(model="test", input="Hi", previous_response_id="resp_123")
    assert "stateless" in err.value.body["message"] and err.value.body["param"] == "previous_response_id"
    with pytest.raises(openai.BadRequestError) as err:
        oai.responses.create(model="test", input="Hi", tools=[RESPONSES_TOOL],
                             tool_choice={"type": "function", "name": "other"})
    assert '"other"' in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        oai.responses.create(model="test", input="Hi", tool_choice="required")
    assert "no tools" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        oai.responses.create(model="test", input=[{"type": "mystery"}])
    assert "mystery" in err.value.body["message"]
    # After the first byte: response.failed carries the error.
    engine.script = Script(fail_after=2)
    events = list(oai.responses.create(model="test", input="Hi", stream=True))
    assert events[-1].type == "response.failed"
    assert events[-1].response.error.message == "an error was encountered while running the model"


def test_a_response_with_text_and_a_call_has_both_items(oai, engine):
    engine.script = Script(pieces=["Sure. ", CALL])
    whole = oai.responses.create(model="tiny-tools", input="Weather in Paris?", tools=[RESPONSES_TOOL])
    assert [item.type for item in whole.output] == ["message", "function_call"]
    assert whole.output_text == "Sure. "


def test_only_a_requested_stop_sequence_is_named():
    from gateway.anthropic.wire import _stop_reason, _stop_sequence
    from gengate.v1 import generate_pb2 as pb
    msg = pb.ChatResponse(done=True, done_reason=pb.DONE_REASON_STOP, stop_sequence="<|end|>")
    assert (_stop_sequence(msg, ("<|end|>",)), _stop_reason(msg, False, ("<|end|>",))) == ("<|end|>", "stop_sequence")
    assert (_stop_sequence(msg, ()), _stop_reason(msg, False, ())) == (None, "end_turn")    # the model's own stop
