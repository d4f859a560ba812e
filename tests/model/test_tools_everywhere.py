"""Tools on every chat model, with the official clients unchanged, on SmolLM2 and Gemma 3: neither model's
template has a tool syntax, so gengate offers the tools in its generic format and decodes under a grammar that
allows a call of an offered tool or text. Every reply is either well-formed text or a well-formed call; a tool loop
(call → tool result → answer) runs to its end."""
from __future__ import annotations

import json

import anthropic
import httpx
import jsonschema
import ollama
import openai
import pytest

from tests.conftest import GEMMA, REAL

PARAMETERS = {"type": "object", "properties": {"city": {"type": "string", "description": "the city"}},
              "required": ["city"]}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a city",
                                            "parameters": PARAMETERS}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
OPTIONS = {"temperature": 0, "num_predict": 40}


def well_formed(content: str, calls) -> None:
    """A reply in the generic format: text that does not start with "{", or calls of get_weather with valid
    arguments, never both."""
    if calls:
        assert not content.strip()
        for name, arguments in calls:
            assert name == "get_weather"
            jsonschema.validate(arguments, PARAMETERS)
    else:
        assert not content.lstrip().startswith("{")


@pytest.fixture(scope="module")
def both(real, gemma):
    """The real stack, serving SmolLM2 and Gemma 3."""
    return real


@pytest.mark.parametrize("model", [REAL, GEMMA])
def test_ollama_client_tool_loop(both, model):
    client = ollama.Client(host=both.url)
    assert "tools" in client.show(model).capabilities
    reply = client.chat(model=model, messages=ASK, tools=[WEATHER], options=OPTIONS)
    well_formed(reply.message.content, [(c.function.name, c.function.arguments) for c in reply.message.tool_calls or []])
    # A forced call (gengate honours tool_choice on /api/chat, as its Chat RPC does), its result, the answer.
    forced = httpx.post(both.url + "/api/chat", json={"model": model, "messages": ASK, "tools": [WEATHER],
                                                        "tool_choice": "required", "stream": False,
                                                        "options": OPTIONS}, timeout=120).json()
    [call] = forced["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    jsonschema.validate(call["function"]["arguments"], PARAMETERS)
    history = ASK + [forced["message"], {"role": "tool", "tool_name": "get_weather", "content": "18 degrees, sunny"}]
    answer = client.chat(model=model, messages=history, tools=[WEATHER], options=OPTIONS)
    assert answer.done
    well_formed(answer.message.content,
                [(c.function.name, c.function.arguments) for c in answer.message.tool_calls or []])


@pytest.mark.parametrize("model", [REAL, GEMMA])
def test_langchain_bind_tools_and_a_tool_loop(both, model):
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_ollama import ChatOllama

    @tool
    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        return f"18 degrees and sunny in {city}"

    llm = ChatOllama(model=model, base_url=both.url, temperature=0, num_predict=40).bind_tools([get_weather])
    reply = llm.invoke([HumanMessage("What is the weather in Paris?")])
    assert isinstance(reply, AIMessage)
    well_formed(reply.content, [(c["name"], c["args"]) for c in reply.tool_calls])
    # The turn after a call: the call and its result go back; the loop runs until the model answers (or 3 turns).
    messages = [HumanMessage("What is the weather in Paris?"),
                AIMessage("", tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "call_1"}]),
                ToolMessage(get_weather.invoke({"city": "Paris"}), tool_call_id="call_1")]
    for _ in range(3):
        reply = llm.invoke(messages)
        well_formed(reply.content, [(c["name"], c["args"]) for c in reply.tool_calls])
        messages.append(reply)
        if not reply.tool_calls:
            break
        for call in reply.tool_calls:
            messages.append(ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"]))
    assert isinstance(messages[-1], (AIMessage, ToolMessage))


@pytest.mark.parametrize("model", [REAL, GEMMA])
def test_litellm_ollama_chat_with_tools(both, model):
    import litellm

    messages = list(ASK)
    for _ in range(3):
        response = litellm.completion(model=f"ollama_chat/{model}", api_base=both.url, messages=messages,
                                      tools=[WEATHER], temperature=0, max_tokens=40)
        message = response.choices[0].message
        calls = message.tool_calls or []
        well_formed(message.content or "", [(c.function.name, json.loads(c.function.arguments)) for c in calls])
        if not calls:
            break
        messages.append(message.model_dump())
        messages += [{"role": "tool", "tool_call_id": c.id, "content": "18 degrees"} for c in calls]


@pytest.mark.parametrize("model", [REAL, GEMMA])
def test_openai_tool_choice_auto_and_required(both, model):
    client = openai.OpenAI(base_url=both.url + "/v1", api_key="unused")
    auto = client.chat.completions.create(model=model, messages=ASK, tools=[WEATHER], tool_choice="auto",
                                          temperature=0, max_tokens=40)
    message = auto.choices[0].message
    well_formed(message.content or "",
                [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or []])
    forced = client.chat.completions.create(model=model, messages=ASK, tools=[WEATHER], tool_choice="required",
                                            temperature=0, max_tokens=40)
    choice = forced.choices[0]
    assert choice.finish_reason == "tool_calls"
    jsonschema.validate(json.loads(choice.message.tool_calls[0].function.arguments), PARAMETERS)


@pytest.mark.parametrize("model", [REAL, GEMMA])
def test_anthropic_tools_without_tool_choice(both, model):
    client = anthropic.Anthropic(base_url=both.url, api_key="unused")
    tool = {"name": "get_weather", "description": "Get the current weather in a city", "input_schema": PARAMETERS}
    message = client.messages.create(model=model, max_tokens=40, tools=[tool], messages=ASK,
                                     extra_body={"temperature": 0})
    text = "".join(b.text for b in message.content if b.type == "text")
    calls = [(b.name, b.input) for b in message.content if b.type == "tool_use"]
    well_formed(text, calls)
    assert message.stop_reason == ("tool_use" if calls else message.stop_reason)
    assert all(b.id.startswith("toolu_") for b in message.content if b.type == "tool_use")


def test_a_forced_call_cut_by_max_output_tokens_is_an_incomplete_function_call(real):
    """The reply the issue saw: /v1/responses, tool_choice required, 20 tokens: never the envelope as text."""
    client = openai.OpenAI(base_url=real.url + "/v1", api_key="unused")
    tool = {"type": "function", **WEATHER["function"]}
    long = {"type": "function", "name": "get_weather", "description": "Get the weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                            "report": {"type": "string", "minLength": 200}},
                           "required": ["city", "report"]}}
    response = client.responses.create(model=REAL, input="Weather in Paris?", tools=[long], tool_choice="required",
                                       max_output_tokens=20)
    assert response.status == "incomplete"
    assert [item.type for item in response.output] == ["function_call"]
    assert response.output[0].status == "incomplete" and response.output[0].name == "get_weather"
    assert not any(item.type == "message" for item in response.output)
    done = client.responses.create(model=REAL, input="Weather in Paris?", tools=[tool], tool_choice="required",
                                   max_output_tokens=40)
    assert done.output[0].type == "function_call" and done.output[0].status == "completed"
    jsonschema.validate(json.loads(done.output[0].arguments), PARAMETERS)
