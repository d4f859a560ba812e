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
