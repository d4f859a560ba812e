"""The gateway's framing, errors and cancellation, over a scripted engine (real gRPC, real HTTP)."""
from __future__ import annotations

import json
import re
import socket
import time

import grpc
import httpx
import ollama
import pytest

from gateway.errors import BadRequest, http_status
from gateway.ollama import wire
from gateway.state import DRAIN
from gengate.v1 import generate_pb2 as pb
from tests.fake_engine import Script

RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z")


def post(stack, body, path="/api/generate", **kw) -> httpx.Response:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(stack.url + path, content=data, timeout=30, **kw)


def lines(resp: httpx.Response) -> list[dict]:
    return [json.loads(line) for line in resp.text.splitlines()]


def test_root_says_ollama_is_running(fake):
    for method in ("GET", "HEAD"):
        resp = httpx.request(method, fake.url + "/")
        assert resp.status_code == 200
    assert httpx.get(fake.url + "/").text == "Ollama is running"


def test_streams_ndjson_one_object_per_piece(fake, engine):
    resp = post(fake, {"model": "tiny", "prompt": "hi"})
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/x-ndjson"
    assert resp.text.endswith("\n")
    objs = lines(resp)
    assert [o["done"] for o in objs] == [False] * 20 + [True]
    assert "".join(o["response"] for o in objs) == "".join(f"t{i} " for i in range(20))
    final = objs[-1]
    assert final["done_reason"] == "stop" and final["eval_count"] == 20
    for key in ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_duration"):
        assert isinstance(final[key], int) and final[key] > 0, key
    assert all(o["model"] == "tiny" and RFC3339.fullmatch(o["created_at"]) for o in objs)
    assert engine.active == 0 and engine.closed == engine.started


def test_stream_false_is_one_object_with_the_whole_text(fake, engine):
    resp = post(fake, {"model": "tiny", "prompt": "hi", "stream": False})
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json; charset=utf-8"
    obj = resp.json()
    assert obj["response"] == "".join(f"t{i} " for i in range(20)) and obj["done"] is True


def test_model_name_is_echoed_as_sent(fake, engine):
    obj = post(fake, {"model": "TINY:latest", "prompt": "hi", "stream": False}).json()
    assert obj["model"] == "TINY:latest"


def test_utf8_split_pieces_stay_valid(fake, engine):
    engine.script = Script(pieces=["a", "é", "🙂", "世界", "\n", "\u2028", "<&>"])
    resp = post(fake, {"model": "tiny", "prompt": "hi"})
    raw = resp.content.split(b"\n")
    assert all(json.loads(line) for line in raw if line)
    assert "".join(o["response"] for o in lines(resp)) == "aé🙂世界\n\u2028<&>"
    assert b"\\u003c\\u0026\\u003e" in resp.content          # Go's json.Marshal escaping
    assert post(fake, {"model": "tiny", "prompt": "hi", "stream": False}).json()["response"] == "aé🙂世界\n\u2028<&>"


def test_error_before_first_byte_gets_its_status(fake, engine):
    engine.script = Script(fail_after=0)
    resp = post(fake, {"model": "tiny", "prompt": "hi"})
    assert resp.status_code == 500
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.json() == {"error": "an error was encountered while running the model"}
    assert engine.active == 0


def test_error_after_first_byte_is_an_in_band_line(fake, engine):
    engine.script = Script(fail_after=3)
    resp = post(fake, {"model": "tiny", "prompt": "hi"})
    assert resp.status_code == 200
    objs = lines(resp)
    assert [o.get("response") for o in objs[:3]] == ["t0 ", "t1 ", "t2 "]
    assert objs[-1] == {"error": "an error was encountered while running the model"}
    assert not any(o.get("done") for o in objs)
    # The process keeps serving.
    engine.script = Script()
    assert post(fake, {"model": "tiny", "prompt": "hi", "stream": False}).status_code == 200


def test_error_with_stream_false_is_a_status(fake, engine):
    engine.script = Script(fail_after=3)
    resp = post(fake, {"model": "tiny", "prompt": "hi", "stream": False})
    assert resp.status_code == 500 and "error" in resp.json()


def test_client_disconnect_stops_the_engine(fake, engine):
    engine.script = Script(count=10_000, delay=0.01)
    with socket.create_connection(("127.0.0.1", fake.http_port)) as sock:
        body = json.dumps({"model": "tiny", "prompt": "hi"}).encode()
        sock.sendall(b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        received = b""
        while received.count(b"\n{") < 3:
            received += sock.recv(4096)
        emitted_at_close = engine.tokens_emitted
    deadline = time.monotonic() + 10
    while engine.active and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.active == 0 and engine.closed == engine.started
    assert engine.tokens_emitted - emitted_at_close < 10       # stopped within a few tokens, not 10 000


@pytest.mark.parametrize("body,status,error", [
    (b"", 400, "missing request body"),
    (b"   ", 400, "missing request body"),
    (b"{", 400, "unexpected EOF"),
    (b"x", 400, "invalid character 'x' looking for beginning of value"),
    (b'{"a":\x07}', 400, "invalid character '\\a' looking for beginning of value"),   # Go's quoteChar escapes
    (b"\xc3\xa9", 400, "invalid character '\u00c3' looking for beginning of value"),    # Go: string(rune(0xc3))
    (b"\xef\xbb\xbf{}", 400, "invalid character '\u00ef' looking for beginning of value"),     # a BOM
    (b"\xff", 400, "invalid character '\u00ff' looking for beginning of value"),     # not UTF-8 at all
    (b"\x80", 400, "invalid character '\\u0080' looking for beginning of value"),   # not printable: escaped
    (b"\xa0", 400, "invalid character '\\u00a0' looking for beginning of value"),
    (b'{"a" \xe2\x82}', 400, "invalid character '\u00e2' after object key"),
    (b"'", 400, "invalid character '\\'' looking for beginning of value"),
    (b'{"model": "tiny" "prompt": 1}', 400, "invalid character '\"' after object key:value pair"),
    (b'{"model":"tiny","prompt":1}', 400,
     "json: cannot unmarshal number into Go struct field GenerateRequest.prompt of type string"),
    (b'{"model":"tiny","stream":"yes"}', 400,
     "json: cannot unmarshal string into Go struct field GenerateRequest.stream of type bool"),
    (b"[]", 400, "json: cannot unmarshal array into Go value of type api.GenerateRequest"),
    (b"null", 404, "model '' not found"),
    (b"{}", 404, "model '' not found"),
    (b'{"model":"  "}', 404, "model '  ' not found"),
    (b'{"model":"nope"}', 404, "model 'nope' not found"),
    (b'{"model":"a b"}', 400, "invalid model name"),
    (b'{"model":"x:local:cloud"}', 400, 'use either :local or :cloud, not both: "x:local:cloud"'),
    (b'{"model":"x:cloud"}', 403, "ollama cloud is disabled: remote model is unavailable"),
    (b'{"model":"tiny","top_logprobs":21}', 400, "top_logprobs must be between 0 and 20"),
    (b'{"model":"nope","top_logprobs":-1}', 400, "top_logprobs must be between 0 and 20"),
    (b'{"model":"tiny","keep_alive":"abc"}', 400, 'time: invalid duration "abc"'),
    (b'{"model":"tiny","keep_alive":"10"}', 400, 'time: missing unit in duration "10"'),
    (b'{"model":"tiny","keep_alive":true}', 400, "Unsupported type: 'bool'"),
    (b'{"model":"tiny","think":"x"}', 400,
     'invalid think value: "x" (must be "high", "medium", "low", "max", true, or false)'),
    (b'{"model":"tiny","think":1}', 400,
     'think must be a boolean or string ("high", "medium", "low", "max", true, or false)'),
    (b'{"model":"tiny","images":["data:image/png;base64,AAAA"]}', 400, "illegal base64 data at input byte 4"),
    (b'{"model":"tiny","options":{"temperature":"hot"}}', 400, 'option "temperature" must be of type float32'),
    (b'{"model":"tiny","options":{"num_ctx":"big"}}', 400, 'option "num_ctx" must be of type integer'),
    (b'{"model":"tiny","options":{"use_mmap":1}}', 400, 'option "use_mmap" must be of type boolean'),
    (b'{"model":"tiny","options":{"stop":[1]}}', 400, 'option "stop" must be of an array of strings'),
    (b'{"model":"tiny","prompt":"x","format":"xml"}', 400,
     'invalid format: "\\"xml\\""; expected "json" or a valid JSON Schema object'),
    (b'{"model":"tiny","prompt":"x","raw":true,"system":"s"}', 400,
     "raw mode does not support template, system, or context"),
    (b'{"model":"tiny","prompt":"x","think":true}', 400, '"tiny" does not support thinking'),
    (b'{"model":"tiny","prompt":"x","suffix":"y"}', 400,
     "registry.ollama.ai/library/tiny:latest does not support insert"),
    (b'{"model":"tiny","prompt":"x","images":["AAAA"]}', 400, '"tiny" does not support images'),
    (b'{"model":"tiny","prompt":"x","width":-1}', 400, "width must be between 0 and 4096 (0: the model's default)"),
    (b'{"model":"tiny","prompt":"x","width":512}', 400, '"tiny" does not support image generation'),
    (b'{"model":"bert"}', 400, '"bert" does not support generate'),
    (b'{"model":"tiny","options":{"temperature":-1}}', 400, 'option "temperature" must be at least 0'),
    (b'{"model":"tiny","options":{"top_p":2}}', 400, 'option "top_p" must be between 0 and 1'),
    (b'{"model":"tiny","options":{"top_k":-3}}', 400, 'option "top_k" must be at least 0'),
    (json.dumps({"model": "tiny", "options": {"stop": ["s"] * 100}}).encode(), 400,
     'option "stop" allows at most 32 sequences'),
    (json.dumps({"model": "tiny", "prompt": "x" * (1 << 20 | 1)}).encode(), 400,
     f"prompt is too long: {1 << 20 | 1} bytes (the limit is {1 << 20})"),
    (b'{"model":"test","prompt":"x","template":"{{ .Prompt"}', 400, 'template: :1: unclosed action'),
])
def test_bad_requests_get_ollamas_errors(fake, engine, body, status, error):
    resp = post(fake, body)
    assert (resp.status_code, resp.json()) == (status, {"error": error})
    assert resp.headers["content-type"].startswith("application/json")
    assert engine.started == 0
    # Errors the service raises (not JSON binding ones) are the same over gRPC: code and message.
    try:
        req = wire.generate_request(body)
    except BadRequest:
        return
    with pytest.raises(grpc.RpcError) as err:
        list(fake.stub().Generate(req))
    assert (http_status(err.value), err.value.details()) == (status, error)


def test_format_is_checked_after_the_load_reply(fake, engine):
    obj = post(fake, {"model": "tiny", "format": "xml"}).json()               # no prompt: Ollama loads first
    assert obj["done_reason"] == "load"


def test_keys_match_case_insensitively_and_last_duplicate_wins(fake, engine):
    obj = post(fake, b'{"Model":"tiny","PROMPT":"a","prompt":"hi","Stream":false}').json()
    assert obj["done"] is True and engine.prompts == ["hi"]


def test_routing_errors_use_gins_texts(fake):
    assert (httpx.get(fake.url + "/api/generate").status_code, httpx.get(fake.url + "/api/generate").text) == \
        (405, "405 method not allowed")
    assert (httpx.get(fake.url + "/nope").status_code, httpx.get(fake.url + "/nope").text) == \
        (404, "404 page not found")


def test_oversize_body_is_413(fake, engine):
    resp = post(fake, b'{"model":"tiny","prompt":"' + b"x" * (17 << 20) + b'"}')
    assert resp.status_code == 413 and "error" in resp.json()
    assert engine.started == 0


# Each dialect's whole error body for (status, message): Ollama's own; its OpenAI layer's (openai.NewError: 400
# invalid_request_error, 404 not_found_error, anything else api_error); Anthropic's, with its request id.
SHAPES = {
    "/api/generate": lambda status, msg, body: body == {"error": msg},
    "/v1/chat/completions": lambda status, msg, body: body == {"error": {"message": msg, "type": "api_error",
                                                                         "param": None, "code": None}},
    "/v1/responses": lambda status, msg, body: body == {"error": {"message": msg, "type": "api_error",
                                                                  "param": None, "code": None}},
    "/v1/messages": lambda status, msg, body: body == {
        "type": "error", "request_id": body.get("request_id"),
        "error": {"type": {413: "request_too_large", 503: "overloaded_error"}[status], "message": msg}}
        and body["request_id"].startswith("req_"),
}


@pytest.mark.parametrize("path", SHAPES)
def test_oversize_bodies_and_the_drain_answer_in_each_dialects_shape(fake, engine, path):
    resp = post(fake, b'{"model":"tiny","prompt":"' + b"x" * (17 << 20) + b'"}', path=path)
    assert resp.status_code == 413, resp.text
    assert SHAPES[path](413, f"request body too large (limit {16 << 20} bytes)", resp.json()), resp.text
    drain = fake._runner.app[DRAIN]
    drain.since = 1.0
    try:
        resp = post(fake, {"model": "tiny", "prompt": "hi", "max_tokens": 5,
                           "messages": [{"role": "user", "content": "hi"}]}, path=path)
    finally:
        drain.since = None
    assert (resp.status_code, resp.headers.get("retry-after")) == (503, "1")
    assert SHAPES[path](503, "server is shutting down", resp.json()), resp.text
    assert engine.started == 0


def test_official_client_streams_and_raises_response_error(fake, engine):
    client = ollama.Client(host=fake.url)
    chunks = list(client.generate(model="tiny", prompt="hi", stream=True))
    assert "".join(c.response for c in chunks) == "".join(f"t{i} " for i in range(20))
    assert chunks[-1].done and chunks[-1].done_reason == "stop"
    with pytest.raises(ollama.ResponseError) as err:
        client.generate(model="nope", prompt="hi")
    assert err.value.status_code == 404 and err.value.error == "model 'nope' not found"


def test_load_and_unload_replies(fake, engine):
    load = post(fake, {"model": "tiny"})
    assert load.headers["content-type"] == "application/json; charset=utf-8"
    obj = load.json()
    assert (obj["done"], obj["done_reason"], obj["response"]) == (True, "load", "")
    obj = post(fake, {"model": "tiny", "keep_alive": 0}).json()
    assert (obj["done"], obj["done_reason"]) == (True, "unload")
    assert engine.started == 0


def test_grpc_errors_carry_google_rpc_status_details(fake, engine):
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status
    cases = [(pb.GenerateRequest(model="tiny", options=pb.Options(top_p=2)), "INVALID_ARGUMENT", "options.top_p"),
             (pb.GenerateRequest(model="nope"), "MODEL_NOT_FOUND", "model")]
    for req, reason, field in cases:
        with pytest.raises(grpc.RpcError) as err:
            list(fake.stub().Generate(req))
        status = rpc_status.from_call(err.value)
        assert status.message == err.value.details()
        info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
        assert status.details[0].Unpack(info) and (info.reason, info.domain) == (reason, "gengate.v1")
        assert status.details[1].Unpack(bad) and bad.field_violations[0].field == field


@pytest.fixture(scope="module")
def deadline(models):
    from tests.fake_engine import FakeEngine
    from tests.harness import Stack
    stack = Stack(models, FakeEngine(), gateway={"request_timeout": 0.5}).start()
    yield stack
    stack.stop()


def test_gateway_deadline_is_504_before_the_first_byte_and_an_error_line_after(deadline):
    engine = deadline.engine
    engine.reset()
    engine.script = Script(pieces=["late"], delay=2.0)
    resp = post(deadline, {"model": "tiny", "prompt": "hi"})
    assert (resp.status_code, resp.json()) == (504, {"error": "deadline exceeded"})
    engine.script = Script(count=100, delay=0.05)
    resp = post(deadline, {"model": "tiny", "prompt": "hi"})
    objs = lines(resp)
    assert resp.status_code == 200 and objs[0]["response"] == "t0 " and objs[-1] == {"error": "deadline exceeded"}
    deadline_wait = time.monotonic() + 10
    while engine.active and time.monotonic() < deadline_wait:
        time.sleep(0.01)
    assert engine.active == 0 and engine.tokens_emitted < 100          # the engine was stopped


# -- found in review ------------------------------------------------------------------------------------
def test_a_runaway_template_is_refused_and_the_server_keeps_serving(fake, engine):
    for template in ("{{range 1000000000}}{{range 1000000000}}x{{end}}{{end}}", '{{printf "%2000000000d" 1}}x'):
        resp = post(fake, {"model": "test", "prompt": "x", "template": template, "_debug_render_only": True})
        assert resp.status_code in (200, 400)
        if resp.status_code == 200:                       # Go's fmt prints %!(NOVERB) for an absurd width
            assert len(resp.json()["_debug_info"]["rendered_template"]) < 100
        else:
            assert resp.json() == {"error": "template: execution exceeds 200000 steps"}
    assert post(fake, {"model": "tiny", "prompt": "hi", "stream": False}).status_code == 200


def test_bytes_that_are_not_utf8_inside_a_string_become_one_replacement_character_each(fake, engine):
    """Go's decoder replaces each invalid byte with U+FFFD (Python's "replace" would give one for a cut sequence)."""
    body = b'{"model":"test","prompt":"a\xff\xe2\x82b","template":"{{ .Prompt }}","_debug_render_only":true}'
    assert post(fake, body).json()["_debug_info"]["rendered_template"] == "a\ufffd\ufffd\ufffdb"


@pytest.mark.parametrize("body,status", [
    (b'{"model":"tiny","prompt":"\\ud83d cut","stream":false}', 200),          # lone surrogate → U+FFFD
    (b'{"model":"tiny","options":{"num_ctx":1e400}}', 400),
    (b'{"model":"tiny","keep_alive":1e300}', 200),
    (b'{"model":"tiny","context":' + b"[" * 5000 + b"]" * 5000 + b"}", 400),
    (b'{"model":"my-cloud"}', 404), (b'{"model":"m:v1-cloud"}', 403), (b'{"model":"a b:cloud"}', 400),
])
def test_odd_json_and_names_never_500(fake, engine, body, status):
    resp = post(fake, body)
    assert resp.status_code == status and "error" in resp.json() if status != 200 else resp.status_code == 200


def test_request_ids_must_be_printable_ascii(fake, engine):
    resp = httpx.post(fake.url + "/api/generate", json={"model": "tiny", "prompt": "hi", "stream": False},
                      headers={"X-Request-Id": "bad\u00e9id".encode("latin-1")})
    assert resp.status_code == 200 and len(resp.headers["x-request-id"]) == 32
