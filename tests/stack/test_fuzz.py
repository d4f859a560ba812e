"""Fuzzing the gateway: thousands of malformed bodies, zero 5xx, the server healthy after."""
from __future__ import annotations

import json

import httpx
import jsonschema
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.openapi import DOCUMENT

pytestmark = pytest.mark.fuzz

FIELDS = ["model", "prompt", "suffix", "system", "template", "context", "stream", "raw", "format", "images",
          "options", "keep_alive", "think", "truncate", "shift", "logprobs", "top_logprobs", "width", "height",
          "steps", "_debug_render_only", "Model", "PROMPT"]
OPTIONS = ["num_ctx", "num_predict", "temperature", "top_k", "top_p", "stop", "seed", "use_mmap", "num_thread",
           "mirostat", "repeat_last_n"]
MODELS = st.sampled_from(["tiny", "test", "test-system", "test-suffix", "tiny-think", "nope", "", "a b", "x:cloud"])
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(allow_nan=False, allow_infinity=False),
                    st.text(max_size=20))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=10)
bodies = st.fixed_dictionaries({"model": MODELS}, optional={
    **{f: values for f in FIELDS if f not in ("model", "options", "stream")},
    "stream": st.booleans(), "options": st.dictionaries(st.sampled_from(OPTIONS), values, max_size=4),
})
ALLOWED = {200, 400, 403, 404, 413, 503}


def check(resp: httpx.Response) -> None:
    assert resp.status_code in ALLOWED, (resp.status_code, resp.text)
    if resp.status_code != 200:
        assert set(resp.json()) == {"error"}
    else:
        for line in resp.text.splitlines():
            assert isinstance(json.loads(line), dict)


@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=bodies)
def test_structured_junk_never_5xx(fake, body):
    body["options"] = {**body.get("options", {}), "num_predict": 3}
    check(httpx.post(fake.url + "/api/generate", json=body, timeout=30))


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode),
                     values.map(lambda v: json.dumps(v).encode())))
def test_raw_junk_never_5xx(fake, raw):
    check(httpx.post(fake.url + "/api/generate", content=raw, timeout=30))


@pytest.fixture(scope="module")
def schema(fake):
    return schemathesis.openapi.from_url(fake.url + "/openapi.json")


# The Ollama operations of the document that neither change the store (shared by the whole session) nor install
# models; the other APIs' routes are fuzzed below.
OPERATIONS = [("/api/generate", "POST", 200), ("/api/chat", "POST", 150), ("/api/embed", "POST", 100),
              ("/api/embeddings", "POST", 60), ("/api/show", "POST", 60), ("/api/tags", "GET", 3),
              ("/api/ps", "GET", 3), ("/api/version", "GET", 3)]


@pytest.mark.parametrize("path,method,examples", OPERATIONS)
def test_schemathesis_finds_no_server_errors_and_replies_match_the_document(fake, schema, path, method, examples):
    """No 5xx; an error is {"error": ...}; every 200 reply (each NDJSON line) validates against the document."""
    documented = DOCUMENT["paths"][path][method.lower()]["responses"]["200"]["content"]["application/json"]["schema"]
    reply_schema = DOCUMENT["components"]["schemas"][documented["$ref"].rsplit("/", 1)[1]]

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(case=schema[path][method].as_strategy())
    def run(case):
        if isinstance(case.body, dict) and isinstance(case.body.get("model"), str) and len(case.body["model"]) % 2:
            case.body["model"] = "tiny"                  # half the cases reach a model (a random name is a 404)
        if path in ("/api/generate", "/api/chat") and isinstance(case.body, dict):
            case.body = {**case.body, "options": {**(case.body.get("options") or {}), "num_predict": 3}}
        response = case.call(base_url=fake.url)
        seen.add(response.status_code)
        assert response.status_code < 500, response.text
        if response.status_code != 200:
            assert set(response.json()) == {"error"}
            return
        for line in response.text.splitlines():
            jsonschema.validate(json.loads(line), reply_schema)
    seen: set[int] = set()
    run()
    assert 200 in seen                                   # replies were checked, not only errors


def test_server_is_healthy_after_the_fuzzing(fake):
    assert httpx.get(fake.url + "/readyz").status_code == 200
    assert fake.engine.active == 0
    assert fake.service.generation._admission.running == 0


# -- the other dialects: any junk in their fields is their 4xx error shape, never a 5xx ----------------------------
DIALECTS = {
    "/v1/chat/completions": (["messages", "tools", "tool_choice", "temperature", "max_tokens", "stop", "stream",
                              "response_format", "seed", "n", "stream_options", "reasoning_effort", "logprobs"],
                             lambda e: set(e) == {"error"} and set(e["error"]) >= {"message", "type"}),
    "/v1/responses": (["input", "instructions", "tools", "tool_choice", "temperature", "max_output_tokens", "text",
                       "reasoning", "stream", "previous_response_id", "top_p"],
                      lambda e: set(e) == {"error"} and set(e["error"]) >= {"message", "type"}),
    "/v1/messages": (["messages", "system", "max_tokens", "tools", "tool_choice", "thinking", "stop_sequences",
                      "stream", "temperature", "top_k", "output_config", "metadata"],
                     lambda e: e["type"] == "error" and set(e["error"]) == {"type", "message"}),
    "/v1/messages/count_tokens": (["messages", "system", "tools", "tool_choice", "thinking"],
                                  lambda e: e["type"] == "error" and set(e["error"]) == {"type", "message"}),
}
MESSAGE_LIKE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "tool", "x"])},
                                     optional={"content": values, "type": st.sampled_from(
                                         ["message", "function_call", "function_call_output", "reasoning", "x"]),
                                         "tool_calls": values, "arguments": values, "call_id": values})


@pytest.mark.parametrize("path", list(DIALECTS))
def test_dialect_junk_is_that_dialects_4xx(fake, path):
    fields, error_shape = DIALECTS[path]
    items = st.one_of(values, st.lists(MESSAGE_LIKE, max_size=3))
    dialect_bodies = st.fixed_dictionaries({"model": MODELS}, optional={
        f: items if f in ("messages", "input") else values for f in fields})

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(body=dialect_bodies)
    def run(body):
        if "max_tokens" in body or "max_output_tokens" in body:
            body = {**body, "max_tokens": 3, "max_output_tokens": 3}
        resp = httpx.post(fake.url + path, json=body, timeout=30)
        seen.add(resp.status_code)
        assert resp.status_code in ALLOWED, (resp.status_code, resp.text)
        if resp.status_code != 200:
            assert error_shape(resp.json()), resp.text
    seen: set[int] = set()
    run()
    assert 400 in seen
