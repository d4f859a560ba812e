"""Tool calling on /api/chat: the parser on its own, then on both transports over the fake engine
(the two real models have no tool-calling template), with the official ollama and openai clients."""
from __future__ import annotations

import json

import httpx
import ollama
import openai
import pytest
from google.protobuf import json_format

from gengate.v1 import generate_pb2 as pb
from service.chat.tools import ToolCallParser, tool_tag
from tests.conftest import TOOLS_GO, TOOLS_JINJA

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                   "required": ["city"]}}}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}\n</tool_call>'
ASK = [{"role": "user", "content": "Weather in Paris?"}]


def parse(pieces, tag="<tool_call>", names=("get_weather",)):
    parser = ToolCallParser(tag, set(names))
    content, calls = "", []
    for piece in pieces:
        text, found = parser.feed(piece)
        content += text
        calls += found
    return content + parser.flush(), calls


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 1000])
def test_a_call_is_found_however_the_text_is_cut(size):
    text = "Let me look. " + CALL + "\n" + CALL
    content, calls = parse([text[i:i + size] for i in range(0, len(text), size)])
    assert content == "Let me look. "
    assert calls == [{"index": 0, "name": "get_weather", "arguments": {"city": "Paris", "days": 2}},
                     {"index": 1, "name": "get_weather", "arguments": {"city": "Paris", "days": 2}}]


@pytest.mark.parametrize("text", [
    "No tools needed: the sky is blue.",
    "A tag-like < sign and <tool_ but no call.",
    '<tool_call>{"name": "launch_rocket", "arguments": {}}</tool_call>',        # not an offered tool
    '<tool_call>{"name": "get_weather", "arguments": [1]}</tool_call>',          # arguments not an object
    '<tool_call>{"name": "get_weather", "arguments": {"city": "Par',             # never finished
    "<tool_call>this is prose, not JSON",
])
def test_text_that_is_no_call_is_content_verbatim(text):
    for size in (1, 4, len(text)):
        assert parse([text[i:i + size] for i in range(0, len(text), size)]) == (text, [])


@pytest.mark.parametrize("text", [
    "[" * 5000,                                                                  # a model stuck on one token
    '<tool_call>{"name": "get_weather", "arguments": {"n": NaN}}</tool_call>',
    '<tool_call>{"name": "get_weather", "arguments": {"n": 1e999}}</tool_call>',
    '<tool_call>{"name": "get_weather", "arguments": {"n": ' + "9" * 400 + '}}</tool_call>',
])
def test_json_no_struct_can_hold_is_content(text):
    assert parse([text[i:i + 7] for i in range(0, len(text), 7)]) == (text, [])


def test_a_long_call_written_a_few_characters_at_a_time_is_scanned_once():
    text = '<tool_call>{"name": "get_weather", "arguments": {"city": "' + "P" * 100_000 + '"}}</tool_call>'
    content, [call] = parse([text[i:i + 4] for i in range(0, len(text), 4)])
    assert content == "" and len(call["arguments"]["city"]) == 100_000


def test_without_a_tag_only_a_reply_that_starts_with_json_is_a_call():
    assert parse(["Options: [a", ", b]"], tag=None) == ("Options: [a, b]", [])
    prose = 'I would call {"name": "get_weather", "arguments": {}} maybe'
    assert parse([prose], tag=None) == (prose, [])
    # Llama 3.1's template names <|python_tag|> (built-in tools) but user tools come as bare JSON.
    content, calls = parse([' {"name": "get_weather", "parameters": {"city": "Oslo"}}'], tag="<|python_tag|>")
    assert content == "" and calls[0]["arguments"] == {"city": "Oslo"}


def test_bare_json_calls_lists_and_string_arguments():
    content, calls = parse(['[{"name": "get_weather", "parameters": {"city": "Oslo"}}, ',
                            '{"function": {"name": "get_weather", "arguments": "{\\"city\\": \\"Rome\\"}"}}]'], tag=None)
    assert content == "" and [c["arguments"]["city"] for c in calls] == ["Oslo", "Rome"]
    assert parse(['{"a": "}"} is JSON but no call'], tag=None) == ('{"a": "}"} is JSON but no call', [])


def test_the_tag_comes_from_the_models_template():
    assert tool_tag(TOOLS_GO) == tool_tag(TOOLS_JINJA) == "<tool_call>"
    assert tool_tag("{{ range .ToolCalls }}[TOOL_CALLS] {{ json .Function }}{{ end }}") == "[TOOL_CALLS]"
    assert tool_tag("{{ if .ToolCalls }}{{ range .ToolCalls }}{{ json .Function }}{{ end }}{{ end }}") is None


@pytest.mark.parametrize("model", ["tiny-tools", "test-tools"])
def test_ollama_client_gets_tool_calls_streamed_and_whole(fake, engine, model):
    engine.script.pieces = ["Sure. ", "<tool", "_call>\n{\"name\": ", "\"get_weather\", \"arguments\": ",
                            "{\"city\": \"Paris\", \"days\": 2}}", "\n</tool_call>"]
    client = ollama.Client(host=fake.url)
    whole = client.chat(model=model, messages=ASK, tools=[WEATHER], stream=False)
    assert whole.message.content == "Sure. " and whole.done_reason == "stop"
    [call] = whole.message.tool_calls
    assert call.function.name == "get_weather" and call.function.arguments == {"city": "Paris", "days": 2}
    chunks = list(client.chat(model=model, messages=ASK, tools=[WEATHER], stream=True))
    assert "".join(c.message.content for c in chunks) == "Sure. "
    assert [c.function.name for ch in chunks for c in ch.message.tool_calls or []] == ["get_weather"]
    assert chunks[-1].done
    # The offered tools reached the prompt through the template, the same text every time.
    assert '"name":"get_weather"' in engine.prompts[-1].replace(" ", "")
    assert len(set(engine.prompts[-2:])) == 1


def test_without_tools_the_same_text_is_content(fake, engine):
    engine.script.pieces = [CALL]
    resp = httpx.post(fake.url + "/api/chat", json={"model": "tiny-tools", "messages": ASK, "stream": False}).json()
    assert resp["message"]["content"] == CALL and "tool_calls" not in resp["message"]


@pytest.mark.parametrize("model,expected", [
    ("test-tools", '<|assistant|><tool_call>{"name": "get_weather", "arguments": {"city":"Paris","days":2}}</tool_call>\n'
                   '<|tool|>18 degrees (get_weather)\n<|assistant|>'),
    ("tiny-tools", '<|assistant|><tool_call>{"arguments": {"city": "Paris", "days": 2}, "name": "get_weather"}'
                   '</tool_call><|tool|>18 degrees<|assistant|>'),          # Jinja: tojson sorts, trim_blocks
])
def test_a_past_call_and_its_result_render_in_the_next_prompt(fake, engine, model, expected):
    history = ASK + [{"role": "assistant", "content": "",           # arguments render with their keys sorted
                      "tool_calls": [{"function": {"name": "get_weather", "arguments": {"days": 2, "city": "Paris"}}}]},
                     {"role": "tool", "content": "18 degrees", "tool_name": "get_weather"}]
    resp = httpx.post(fake.url + "/api/chat", json={"model": model, "messages": history, "tools": [WEATHER],
                                                    "stream": False})
    assert resp.status_code == 200, resp.text
    assert engine.prompts[-1].endswith(expected), engine.prompts[-1]


def test_grpc_chat_returns_tool_calls(fake, engine):
    engine.script.pieces = [CALL]
    tool = pb.Tool()
    json_format.ParseDict(WEATHER, tool)
    replies = list(fake.stub().Chat(pb.ChatRequest(model="tiny-tools", messages=[pb.Message(role="user", content="?")],
                                                   tools=[tool]), timeout=30))
    calls = [c for r in replies for c in r.message.tool_calls]
    assert [c.function.name for c in calls] == ["get_weather"]
    assert json_format.MessageToDict(calls[0].function.arguments) == {"city": "Paris", "days": 2.0}
    assert "".join(r.message.content for r in replies) == "" and replies[-1].done


def test_openai_client_gets_tool_calls(fake, engine):
    engine.script.pieces = [CALL]
    client = openai.OpenAI(base_url=fake.url + "/v1", api_key="unused")
    whole = client.chat.completions.create(model="tiny-tools", messages=ASK, tools=[WEATHER])
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls[0].function.name == "get_weather"
    assert json.loads(choice.message.tool_calls[0].function.arguments) == {"city": "Paris", "days": 2}
    stream = list(client.chat.completions.create(model="tiny-tools", messages=ASK, tools=[WEATHER], stream=True))
    assert stream[-1].choices[0].finish_reason == "tool_calls"
    assert [t.function.name for c in stream for t in c.choices[0].delta.tool_calls or []] == ["get_weather"]


# -- tools on a model whose template has no tool syntax: gengate's generic format ------------------------------
GENERIC_CALL = '{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}'


@pytest.mark.parametrize("model", ["test", "tiny"])          # a Go template without tools; no template at all
def test_a_model_without_tool_syntax_gets_the_tools_in_the_generic_format(fake, engine, model):
    engine.script.pieces = ["  ", GENERIC_CALL[:20], GENERIC_CALL[20:]]
    client = ollama.Client(host=fake.url)
    reply = client.chat(model=model, messages=ASK, tools=[WEATHER])
    [call] = reply.message.tool_calls
    assert (call.function.name, call.function.arguments) == ("get_weather", {"city": "Paris", "days": 2})
    assert reply.message.content == "" and reply.done_reason == "stop"
    prompt = engine.prompts[-1]
    assert 'answer with only a JSON object {"name": ..., "arguments": {...}}' in prompt and '"name": "get_weather"' in prompt
    grammar = engine.grammars[-1]           # a call of get_weather, or text that does not start with "{"
    assert "gengate-call" in grammar and "gengate-text ::= [^{" in grammar and '"\\"get_weather\\""' in grammar
    engine.script.pieces = ["It is ", "sunny."]
    reply = client.chat(model=model, messages=ASK, tools=[WEATHER])
    assert reply.message.content == "It is sunny." and not reply.message.tool_calls
    chunks = list(client.chat(model=model, messages=ASK, tools=[WEATHER], stream=True))
    assert "".join(c.message.content for c in chunks) == "It is sunny."            # text streams as it comes


def test_the_generic_format_renders_past_calls_and_results_for_the_next_turn(fake, engine):
    history = ASK + [{"role": "assistant", "content": "",
                      "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
                     {"role": "tool", "content": "18 degrees", "tool_name": "get_weather"}]
    resp = httpx.post(fake.url + "/api/chat", json={"model": "test", "messages": history, "tools": [WEATHER],
                                                    "stream": False})
    assert resp.status_code == 200, resp.text
    prompt = engine.prompts[-1]
    assert 'Assistant: {"name": "get_weather", "arguments": {"city": "Paris"}}' in prompt
    assert "User: Result of get_weather: 18 degrees" in prompt


def test_api_chat_honours_tool_choice(fake, engine):
    engine.script.pieces = [GENERIC_CALL]
    body = {"model": "tiny-tools", "messages": ASK, "tools": [WEATHER], "stream": False}
    forced = httpx.post(fake.url + "/api/chat", json={**body, "tool_choice": "required"}).json()
    assert forced["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert engine.grammars[-1] is not None and "gengate-text" not in engine.grammars[-1]     # a call, nothing else
    named = httpx.post(fake.url + "/api/chat", json={**body, "tool_choice": {"type": "function",
                                                                           "function": {"name": "get_weather"}}})
    assert named.status_code == 200 and engine.grammars[-1] is not None
    engine.script.pieces = ["Fine."]
    none = httpx.post(fake.url + "/api/chat", json={**body, "tool_choice": "none"}).json()
    assert none["message"]["content"] == "Fine." and "get_weather" not in engine.prompts[-1]
    assert engine.grammars[-1] is None


# -- a forced call that the token limit cuts off ----------------------------------------------------------------
CUT = ['{"name": "get_weather", ', '"arguments": {"city": "Paris", ', '"days": 2']      # then the limit


def test_a_cut_off_call_on_api_chat_and_grpc_is_an_incomplete_call(fake, engine):
    engine.script.pieces = CUT
    body = {"model": "tiny-tools", "messages": ASK, "tools": [WEATHER], "tool_choice": "required", "stream": False,
            "options": {"num_predict": 3}}
    reply = httpx.post(fake.url + "/api/chat", json=body).json()
    assert reply["done_reason"] == "length" and reply["message"]["content"] == ""
    assert reply["message"]["tool_calls"] == [{"function": {"index": 0, "name": "get_weather",
                                                            "arguments": {"city": "Paris", "days": 2}}}]
    tool = pb.Tool()
    json_format.ParseDict(WEATHER, tool)
    replies = list(fake.stub().Chat(pb.ChatRequest(
        model="tiny-tools", messages=[pb.Message(role="user", content="?")], tools=[tool],
        tool_choice=pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_REQUIRED), options=pb.Options(num_predict=3))))
    [call] = [c for r in replies for c in r.message.tool_calls]
    assert call.function.incomplete and call.function.arguments_json == '{"city": "Paris", "days": 2'
    assert replies[-1].done_reason == pb.DONE_REASON_LENGTH


def test_a_cut_off_call_in_openai_chat_is_length_with_the_partial_call(fake, engine):
    engine.script.pieces = CUT
    client = openai.OpenAI(base_url=fake.url + "/v1", api_key="unused")
    whole = client.chat.completions.create(model="tiny-tools", messages=ASK, tools=[WEATHER],
                                           tool_choice="required", max_tokens=3)
    choice = whole.choices[0]
    assert choice.finish_reason == "length" and not choice.message.content
    assert choice.message.tool_calls[0].function.arguments == '{"city": "Paris", "days": 2'
    stream = list(client.chat.completions.create(model="tiny-tools", messages=ASK, tools=[WEATHER],
                                                 tool_choice="required", max_tokens=3, stream=True))
    assert stream[-1].choices[0].finish_reason == "length"
    assert "".join(c.choices[0].delta.content or "" for c in stream) == ""


def test_a_cut_off_call_in_responses_is_an_incomplete_function_call(fake, engine):
    engine.script.pieces = CUT
    client = openai.OpenAI(base_url=fake.url + "/v1", api_key="unused")
    tool = {"type": "function", **WEATHER["function"]}
    response = client.responses.create(model="tiny-tools", input="Weather in Paris?", tools=[tool],
                                       tool_choice="required", max_output_tokens=3)
    assert response.status == "incomplete"
    [item] = response.output                                     # no message item holding the envelope
    assert item.type == "function_call" and item.status == "incomplete" and item.name == "get_weather"
    assert item.arguments == '{"city": "Paris", "days": 2'


def test_a_cut_off_call_in_anthropic_is_max_tokens_with_the_input_as_far_as_it_parses(fake, engine):
    import anthropic
    engine.script.pieces = ['{"name": "get_weather", ', '"arguments": {"city": "Paris", ', '"days": 2']
    client = anthropic.Anthropic(base_url=fake.url, api_key="unused")
    tool = {"name": "get_weather", "description": "d", "input_schema": WEATHER["function"]["parameters"]}
    message = client.messages.create(model="tiny-tools", max_tokens=3, tools=[tool], tool_choice={"type": "any"},
                                     messages=ASK)
    assert message.stop_reason == "max_tokens"
    [block] = message.content
    assert block.type == "tool_use" and block.input == {"city": "Paris", "days": 2} and block.id.startswith("toolu_")
    engine.script.pieces = ['{"name": "get_weather", ', '"arguments": {"cit']
    message = client.messages.create(model="tiny-tools", max_tokens=2, tools=[tool], tool_choice={"type": "any"},
                                     messages=ASK)
    assert message.stop_reason == "max_tokens" and message.content[0].input == {}
