"""Schema-constrained output that always parses: a string under a schema holds control characters only escaped, on
every path that builds a grammar from a schema (format, OpenAI's response_format, Responses' text.format,
Anthropic's structured output, a forced call's arguments); and for generated schemas and seeds, every reply that
completed parses with json.loads and validates against its schema."""
from __future__ import annotations

import json

import anthropic
import httpx
import jsonschema
import openai
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.engines.schema_grammar import json_safe
from tests.conftest import REAL

POEM = {"type": "object", "properties": {"poem": {"type": "string"}}, "required": ["poem"]}
# The reproducer: the raw prompt primes multi-line strings; the old grammar let real newlines through.
PRIMED = ('{"poem": "Roses are red,\nViolets are blue,\nSugar is sweet,\nAnd so are you."}\n'
          '{"poem": "Twinkle twinkle little star,\nHow I wonder what you are,\nUp above the world so high,\n'
          'Like a diamond in the sky."}\n')


def test_the_reproducer_parses_as_json(real):
    reply = httpx.post(real.url + "/api/generate", timeout=120, json={
        "model": REAL, "raw": True, "prompt": PRIMED, "format": POEM, "stream": False,
        "options": {"num_predict": 60, "temperature": 0}}).json()
    text = reply["response"]
    assert text.startswith('{"poem": "The sun is shining bright,')     # where the raw newline came before
    assert not any(c in text for c in "\n\t\r")                 # control characters only escaped
    if reply["done_reason"] == "stop":
        jsonschema.validate(json.loads(text), POEM)


def test_every_schema_path_gives_json(real):
    options = {"temperature": 0}
    oai = openai.OpenAI(base_url=real.url + "/v1", api_key="unused")
    chat = oai.chat.completions.create(
        model=REAL, messages=[{"role": "user", "content": PRIMED + "Another poem as JSON:"}], max_tokens=80,
        response_format={"type": "json_schema", "json_schema": {"name": "poem", "schema": POEM}}, temperature=0)
    texts = [(chat.choices[0].message.content, chat.choices[0].finish_reason == "stop")]
    response = oai.responses.create(model=REAL, input=PRIMED + "Another poem as JSON:", max_output_tokens=80,
                                    text={"format": {"type": "json_schema", "name": "poem", "schema": POEM}},
                                    temperature=0)
    texts.append((response.output_text, response.status == "completed"))
    claude = anthropic.Anthropic(base_url=real.url, api_key="unused")
    message = claude.messages.create(model=REAL, max_tokens=80,
                                     messages=[{"role": "user", "content": PRIMED + "Another poem as JSON:"}],
                                     extra_body={"output_config": {"format": {"type": "json_schema", "schema": POEM}},
                                                 **options})
    texts.append(("".join(b.text for b in message.content if b.type == "text"), message.stop_reason == "end_turn"))
    tool = {"type": "function", "function": {"name": "write", "description": "Write a poem", "parameters": POEM}}
    forced = oai.chat.completions.create(model=REAL, messages=[{"role": "user", "content": PRIMED}], tools=[tool],
                                         tool_choice="required", max_tokens=80, temperature=0)
    call = forced.choices[0].message.tool_calls[0]
    texts.append((call.function.arguments, forced.choices[0].finish_reason == "tool_calls"))
    for text, completed in texts:
        assert not any(c in text for c in "\n\t\r"), text
        if completed:
            jsonschema.validate(json.loads(text), POEM)


def test_the_grammar_rewrite_keeps_strings_json(tmp_path):
    """Without a model: the char rule, `.` and pattern classes lose raw control characters, quotes and
    backslashes; pattern literals write them as JSON escapes."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf
    gbnf = json_safe(json_schema_to_gbnf(json.dumps({"type": "object", "properties": {
        "a": {"type": "string"}, "b": {"type": "string", "pattern": "^[a-z\\t]+.x\\n$"}}})))
    rules = dict(line.split(" ::= ", 1) for line in gbnf.splitlines())
    assert rules["char"].startswith(r'[^"\\\x7F\x00-\x1F]')
    assert rules["dot"] == r'[^"\\\x7F\x00-\x1F]'
    assert r"\t" not in rules["b"] and r'"x\\n"' in rules["b"]


# -- the property: any schema, any seed -----------------------------------------------------------------------
_LEAVES = st.one_of(
    st.just({"type": "string"}),
    st.just({"type": "string", "maxLength": 12}),
    st.just({"type": "integer"}),
    st.just({"type": "integer", "minimum": 0, "maximum": 99}),
    st.just({"type": "boolean"}),
    st.just({"type": "number"}),
    st.just({"type": "null"}),
    st.lists(st.sampled_from(["red", "green", "blue", "a\nb", 'q"uote']), min_size=1, max_size=3, unique=True)
      .map(lambda values: {"enum": values}),
    st.sampled_from([r"^[a-z]{1,8}$", r"^\d{3}-\d{2}$", r"^(yes|no)$", r"^[A-Z][a-z]+( [A-Z][a-z]+)?$"])
      .map(lambda pattern: {"type": "string", "pattern": pattern}),
)


def _composite(children):
    names = st.sampled_from(["title", "name", "count", "tags", "ok", "note", "city"])
    return st.one_of(
        st.dictionaries(names, children, min_size=1, max_size=3).map(
            lambda properties: {"type": "object", "properties": properties, "required": sorted(properties)[:1]}),
        children.map(lambda item: {"type": "array", "items": item, "maxItems": 3}),
    )


SCHEMAS = st.recursive(_LEAVES, _composite, max_leaves=5).filter(lambda s: s.get("type") in ("object", "array"))


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(schema=SCHEMAS, seed=st.integers(0, 2**31 - 1))
def test_any_schema_and_seed_give_json_that_validates(real, schema, seed):
    reply = httpx.post(real.url + "/api/generate", timeout=120, json={
        "model": REAL, "prompt": "Answer in JSON.", "format": schema, "stream": False,
        "options": {"num_predict": 120, "temperature": 1.0, "seed": seed}})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert not any(c in body["response"] for c in "\n\t\r\x00")
    if body["done_reason"] == "stop":                           # completed: it parses and validates
        jsonschema.validate(json.loads(body["response"]), schema)

