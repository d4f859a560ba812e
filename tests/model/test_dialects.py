"""Anthropic's Messages API and OpenAI's Responses API over the real SmolLM2, with the official clients; and
tool_choice, enforced by the service on every transport: a required call is decoded under a grammar, so even a
135M model with no tool template answers with a call whose arguments satisfy the tool's schema."""
from __future__ import annotations

import json

import anthropic
import jsonschema
import openai
import pytest
from google.protobuf import json_format

from gengate.v1 import generate_pb2 as pb
from tests.conftest import REAL

ASK = "What is the weather in Paris for the next 3 days?"
SCHEMA = {"type": "object", "additionalProperties": False,
          "properties": {"city": {"type": "string", "maxLength": 40}, "days": {"type": "integer", "minimum": 1,
                                                                               "maximum": 14}},
          "required": ["city", "days"]}
OTHER = {"type": "object", "properties": {"sign": {"type": "string", "enum": ["aries", "leo"]}}, "required": ["sign"]}
GREEDY = {"temperature": 0}


@pytest.fixture(scope="module")
def claude(real) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=real.url, api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def oai(real) -> openai.OpenAI:
    return openai.OpenAI(base_url=real.url + "/v1", api_key="unused", max_retries=0, timeout=300)


def test_message_matches_its_stream_and_count(claude):
    ask = [{"role": "user", "content": "Why is the sky blue?"}]
    whole = claude.messages.create(model=REAL, max_tokens=12, messages=ask, extra_body=GREEDY)
    assert whole.stop_reason == "max_tokens" and whole.usage.output_tokens == 12
    with claude.messages.stream(model=REAL, max_tokens=12, messages=ask, extra_body=GREEDY) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == whole.content[0].text == final.content[0].text
    assert final.usage.input_tokens == whole.usage.input_tokens
    counted = claude.messages.count_tokens(model=REAL, messages=ask)
    assert counted.input_tokens == whole.usage.input_tokens > 5


def test_anthropic_tool_choice_any_and_named(claude):
    tools = [{"name": "get_weather", "description": "Weather forecast for a city", "input_schema": SCHEMA},
             {"name": "horoscope", "description": "Today's horoscope", "input_schema": OTHER}]
    ask = [{"role": "user", "content": ASK}]
    for choice, names in (({"type": "any"}, {"get_weather", "horoscope"}),
                          ({"type": "tool", "name": "horoscope"}, {"horoscope"})):
        reply = claude.messages.create(model=REAL, max_tokens=80, messages=ask, tools=tools, tool_choice=choice,
                                       extra_body=GREEDY)
        assert reply.stop_reason == "tool_use", reply
        [use] = [b for b in reply.content if b.type == "tool_use"]
        assert use.name in names
        jsonschema.validate(use.input, SCHEMA if use.name == "get_weather" else OTHER)
    none = claude.messages.create(model=REAL, max_tokens=20, messages=ask, tools=tools,
                                  tool_choice={"type": "none"}, extra_body=GREEDY)
    assert [b.type for b in none.content] == ["text"] and none.stop_reason != "tool_use"


def test_anthropic_structured_output(claude):
    schema = {"type": "object", "properties": {"color": {"type": "string", "maxLength": 20},
                                               "count": {"type": "integer"}},
              "required": ["color", "count"], "additionalProperties": False}
    reply = claude.messages.create(model=REAL, max_tokens=60, extra_body=GREEDY,
                                   messages=[{"role": "user", "content": "Name a color and a number."}],
                                   output_config={"format": {"type": "json_schema", "schema": schema}})
    jsonschema.validate(json.loads(reply.content[0].text), schema)


def test_response_text_format_and_function_call(oai):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 30},
                                               "age": {"type": "integer", "minimum": 0}},
              "required": ["name", "age"], "additionalProperties": False}
    reply = oai.responses.create(model=REAL, input="Invent a person.", temperature=0, max_output_tokens=60,
                                 text={"format": {"type": "json_schema", "name": "person", "schema": schema}})
    assert reply.status == "completed"
    jsonschema.validate(json.loads(reply.output_text), schema)
    with oai.responses.stream(model=REAL, input="Invent a person.", temperature=0, max_output_tokens=60,
                              text={"format": {"type": "json_schema", "name": "person", "schema": schema}}) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == reply.output_text and final.status == "completed"

    tool = {"type": "function", "name": "get_weather", "description": "Weather forecast", "parameters": SCHEMA}
    call = oai.responses.create(model=REAL, input=ASK, tools=[tool], tool_choice="required", temperature=0,
                                max_output_tokens=80)
    [item] = call.output
    assert item.type == "function_call" and item.name == "get_weather"
    jsonschema.validate(json.loads(item.arguments), SCHEMA)


def test_chat_completions_and_grpc_tool_choice(oai, real):
    tool = {"type": "function", "function": {"name": "get_weather", "description": "Weather forecast",
                                             "parameters": SCHEMA}}
    reply = oai.chat.completions.create(model=REAL, messages=[{"role": "user", "content": ASK}], tools=[tool],
                                        tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                        temperature=0, max_tokens=80)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    jsonschema.validate(json.loads(choice.message.tool_calls[0].function.arguments), SCHEMA)

    grpc_tool = pb.Tool()
    json_format.ParseDict(tool, grpc_tool)
    replies = list(real.stub().Chat(pb.ChatRequest(
        model=REAL, messages=[pb.Message(role="user", content=ASK)], tools=[grpc_tool], stream=False,
        tool_choice=pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_REQUIRED), options=pb.Options(temperature=0,
                                                                                         num_predict=80)),
        timeout=300))
    [call] = replies[-1].message.tool_calls
    assert call.function.name == "get_weather"
    jsonschema.validate(json_format.MessageToDict(call.function.arguments), {**SCHEMA, "properties": {
        "city": SCHEMA["properties"]["city"], "days": {"type": "number"}}})      # a Struct's numbers are doubles
