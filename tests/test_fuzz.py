"""Fuzzing the gateway: thousands of malformed bodies, zero 5xx, the server healthy after."""
from __future__ import annotations

import json

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


def test_schemathesis_finds_no_server_errors(fake, schema):
    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(case=schema["/api/generate"]["POST"].as_strategy())
    def run(case):
        case.body = {**case.body, "options": {**(case.body.get("options") or {}), "num_predict": 3}} \
            if isinstance(case.body, dict) else case.body
        response = case.call(base_url=fake.url)
        assert response.status_code < 500, response.text
        if response.status_code != 200:
            assert set(response.json()) == {"error"}
    run()


def test_server_is_healthy_after_the_fuzzing(fake):
    assert httpx.get(fake.url + "/readyz").status_code == 200
    assert fake.engine.active == 0
    assert fake.service.generation._admission.running == 0
