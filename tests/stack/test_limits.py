"""One request never takes the service down: the faults of the 2026-12-01 attack trial, each reproduced, on the
real service and gateway over the scripted engine."""
from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import socket
import time

import grpc
import httpx
import pytest

from gengate.v1 import generate_pb2 as pb
from gengate.v1 import model_pb2 as mpb
from gengate.v1 import model_pb2_grpc as mpb_grpc
from tests.fake_engine import FakeEngine, Script
from tests.harness import Stack
from tests.stack.test_observability import value


def post(stack, body, path="/api/generate", **kw) -> httpx.Response:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(stack.url + path, content=data, timeout=60, **kw)


# -- format: the request that froze the service for two minutes ---------------------------------------------
def test_a_huge_repetition_in_format_is_a_400_naming_the_limit_on_both_transports(fake, engine):
    body = {"model": "tiny", "prompt": "Hi", "stream": False,
            "format": {"type": "string", "minLength": 1000000000}}
    start = time.monotonic()
    resp = post(fake, body)
    assert (resp.status_code, resp.json()) == (400, {
        "error": 'format: "minLength" is 1000000000, over the limit of 1000 repetitions'})
    assert time.monotonic() - start < 10                          # catches a hang, not a speed
    with pytest.raises(grpc.RpcError) as err:
        list(fake.stub().Generate(pb.GenerateRequest(model="tiny", prompt="Hi", format=pb.Format(
            json_schema='{"type":"array","items":{},"maxItems":100000000}'))))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "maxItems" in err.value.details()
    assert engine.started == 0
    assert post(fake, {"model": "tiny", "prompt": "Hi", "stream": False}).status_code == 200   # still serving


def test_other_requests_are_served_while_a_schema_converts(fake, engine):
    engine.script = Script(count=3)
    schema = {"type": "object", "properties": {f"p{i}": {"type": "string", "maxLength": 900} for i in range(25)}}
    with cf.ThreadPoolExecutor(4) as pool:
        slow = pool.submit(post, fake, {"model": "tiny", "prompt": "Hi", "stream": False, "format": schema})
        quick = [pool.submit(post, fake, {"model": "tiny", "prompt": "Hi", "stream": False}) for _ in range(3)]
        assert all(f.result().status_code == 200 for f in quick)
        assert slow.result().status_code == 200


# -- keep_alive: one request made /api/ps a 500 for everyone -----------------------------------------------
def test_a_keep_alive_beyond_any_timestamp_is_forever_and_ps_keeps_working(fake, engine):
    assert post(fake, {"model": "tiny", "prompt": "Hi", "stream": False, "keep_alive": 1e300}).status_code == 200
    ps = httpx.get(fake.url + "/api/ps")
    assert ps.status_code == 200
    (tiny,) = [m for m in ps.json()["models"] if m["name"] == "tiny:latest"]
    assert tiny["expires_at"] > "2300"                              # Ollama's "forever": ~292 years ahead
    list(fake.stub().Generate(pb.GenerateRequest(model="tiny", prompt="Hi", keep_alive={"seconds": 2**62})))
    stub = mpb_grpc.ModelServiceStub(grpc.insecure_channel(fake.grpc_target))
    assert stub.ListRunningModels(mpb.ListRunningModelsRequest()).models


# -- JSON the decoder cannot hold: 400 with Go's words, never a 500 ------------------------------------------
@pytest.mark.parametrize("depth", [600, 5000, 100_000])
def test_deeply_nested_json_is_a_400(fake, engine, depth):
    body = '{"model":"tiny","prompt":"Hi","options":{"stop":' + "[" * depth + "]" * depth + "}}"
    resp = post(fake, body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"] in ("exceeded max depth", 'option "stop" must be of an array of strings')
    if depth > 1000:                                                # deeper than the decoder goes: every dialect
        resp = post(fake, body, path="/v1/chat/completions")
        assert resp.status_code == 400 and resp.json()["error"]["message"] == "exceeded max depth"


def test_an_integer_of_more_digits_than_python_converts_is_a_400(fake, engine):
    digits = "9" * 5000
    resp = post(fake, '{"model":"tiny","prompt":"Hi","options":{"seed":' + digits + "}}")
    assert resp.status_code == 400
    assert resp.json()["error"] == f"json: cannot unmarshal number {digits} into Go value of type float64"
    assert post(fake, '{"model":"tiny","prompt":"Hi","top_logprobs":' + digits + "}").status_code == 400


# -- gRPC: values JSON cannot send ---------------------------------------------------------------------------
@pytest.mark.parametrize("field", ["temperature", "top_p", "repeat_penalty", "presence_penalty"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_infinite_options_are_invalid_arguments_naming_the_field(fake, engine, field, bad):
    with pytest.raises(grpc.RpcError) as err:
        list(fake.stub().Generate(pb.GenerateRequest(model="tiny", prompt="Hi", options=pb.Options(**{field: bad}))))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == f'option "{field}" must be a finite number'
    assert engine.started == 0


def test_a_float_that_overflows_float32_over_http_is_a_400(fake, engine):
    resp = post(fake, {"model": "tiny", "prompt": "Hi", "options": {"temperature": 1e39}})
    assert (resp.status_code, resp.json()) == (400, {"error": 'option "temperature" must be a finite number'})


@pytest.mark.parametrize("method", ["/gengate.v1.GenerateService/Generate", "/gengate.v1.ModelService/ShowModel"])
def test_bytes_that_are_no_protobuf_are_invalid_argument(fake, method):
    channel = grpc.insecure_channel(fake.grpc_target)
    call = (channel.unary_stream if method.endswith("Generate") else channel.unary_unary)(
        method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    with pytest.raises(grpc.RpcError) as err:
        reply = call(b"\xff\xff\xff\xff\x0f", timeout=10)
        list(reply) if method.endswith("Generate") else reply
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "could not be parsed" in err.value.details()


# -- the other per-request costs of the README's Limits table --------------------------------------------------
@pytest.mark.parametrize("context", [[-1], [0x110000], [1] * (4 * 2048 + 1)], ids=["negative", "past-vocab", "too-long"])
def test_a_context_out_of_range_or_too_long_is_a_400(fake, context):
    resp = post(fake, {"model": "tiny", "prompt": "Hi", "stream": False, "context": context})
    assert (resp.status_code, resp.json()) == (400, {"error": "invalid context: token id out of range"})
    assert post(fake, {"model": "tiny", "prompt": "Hi", "stream": False, "context": [72, 105]}).status_code == 200


def test_a_stop_sequence_over_1024_characters_is_a_400_on_both_transports(fake):
    resp = post(fake, {"model": "tiny", "prompt": "Hi", "stream": False, "options": {"stop": ["x" * 1025]}})
    assert (resp.status_code, resp.json()) == (
        400, {"error": 'option "stop" allows sequences of at most 1024 characters'})
    with pytest.raises(grpc.RpcError) as err:
        list(fake.stub().Generate(pb.GenerateRequest(model="tiny", prompt="Hi",
                                                     options=pb.Options(stop=["y" * 1025]))))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert post(fake, {"model": "tiny", "prompt": "Hi", "stream": False,
                       "options": {"stop": ["x" * 1024]}}).status_code == 200


# -- request bodies: a stalled upload held gateway memory forever ----------------------------------------------
@pytest.fixture(scope="module")
def strict(models):
    stack = Stack(models, FakeEngine(), gateway={"body_timeout": 1.0, "max_large_bodies": 1, "idle_timeout": 1.0}).start()
    yield stack
    stack.stop()


def _start_upload(stack, size: int, sent: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", stack.http_port))
    sock.sendall(b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(size).encode() + b"\r\n\r\n" + b" " * sent)
    return sock


def _reply(sock: socket.socket) -> bytes:
    """The response: its head and its (JSON) body, or what came before the connection closed."""
    sock.settimeout(10)
    data = b""
    while not (b"\r\n\r\n" in data and data.rstrip().endswith((b"}", b"found.", b"request."))):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_a_body_that_stalls_gets_408_and_the_connection_is_closed(strict):
    sock = _start_upload(strict, 15 << 20, (15 << 20) - 1)        # all but the last byte, then nothing
    start = time.monotonic()
    reply = _reply(sock)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 408") and b"request body not received within 1 s" in reply
    assert b"Connection: close" in reply
    assert time.monotonic() - start < 8


def test_large_bodies_arriving_at_once_are_capped(strict):
    first = _start_upload(strict, 2 << 20, 1000)                    # holds the one slot for a second
    time.sleep(0.2)
    second = _start_upload(strict, 2 << 20, 1000)
    reply = _reply(second)
    assert reply.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in reply and b"too many large" in reply
    first.close()
    second.close()
    time.sleep(1.5)                                                 # the first one's slot is given back
    padded = json.dumps({"model": "tiny", "prompt": "Hi", "stream": False}) + " " * (1 << 20)     # over 1 MiB
    assert post(strict, padded).status_code == 200


# -- metrics: what the soak found ----------------------------------------------------------------------------------
def test_stream_false_requests_are_counted_ok_under_concurrency(fake, engine):
    reg = fake.service.metrics.registry
    ok, cancelled = (value(reg, "gengate_requests_total", method="Generate", code=c) for c in ("OK", "CANCELLED"))
    with cf.ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda _: post(fake, {"model": "tiny", "prompt": "Hi", "stream": False}), range(40)))
    assert all(r.status_code == 200 for r in replies)
    time.sleep(0.2)                                                 # the handlers' last bookkeeping
    assert value(reg, "gengate_requests_total", method="Generate", code="OK") == ok + 40
    assert value(reg, "gengate_requests_total", method="Generate", code="CANCELLED") == cancelled


def test_tokens_of_a_cancelled_stream_are_counted(fake, engine):
    engine.script = Script(count=10_000, delay=0.005)
    reg = fake.service.metrics.registry
    before = value(reg, "gengate_generated_tokens_total")
    with httpx.stream("POST", fake.url + "/api/generate", json={"model": "tiny", "prompt": "Hi"}) as resp:
        for i, _ in enumerate(resp.iter_lines()):
            if i == 20:
                break
    deadline = time.monotonic() + 10
    while engine.active and time.monotonic() < deadline:
        time.sleep(0.01)
    assert value(reg, "gengate_generated_tokens_total") - before >= 20


# -- logs: a client's malformed request is one line, not an ERROR with a traceback ------------------------------
@pytest.mark.parametrize("request_bytes", [
    b"GET /api/tags HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET /api/tags HTTP/1.1\r\n\r\n",
    b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"])
def test_malformed_http_is_logged_as_one_warning(fake, caplog, request_bytes):
    with caplog.at_level(logging.INFO, logger="aiohttp.server"):
        with socket.create_connection(("127.0.0.1", fake.http_port)) as sock:
            sock.sendall(request_bytes)
            assert b" 400 " in _reply(sock).split(b"\r\n")[0]
        time.sleep(0.2)
    records = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert records and all(r.levelno == logging.WARNING and not r.exc_info for r in records)
    assert "bad request from a client: 400" in records[0].getMessage()


def test_a_blob_upload_that_stalls_gets_408_and_leaves_no_blob(strict):
    digest = "sha256:" + "ab" * 32
    sock = socket.create_connection(("127.0.0.1", strict.http_port))
    sock.sendall(b"POST /api/blobs/" + digest.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Content-Length: " + str(3 << 20).encode() + b"\r\n\r\n" + b"x" * (2 << 20))    # then nothing
    start = time.monotonic()
    reply = _reply(sock)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 408") and b"request body not received within 1 s" in reply, reply[:300]
    assert b"Connection: close" in reply
    assert time.monotonic() - start < 8
    assert httpx.head(f"{strict.url}/api/blobs/{digest}").status_code == 404
    time.sleep(0.2)                                           # the service's handler ends after the cancel
    assert not [p.name for p in strict.settings.models.rglob("*") if "ab" * 8 in p.name or ".partial" in p.name]


def test_an_idle_connection_is_closed_after_the_idle_timeout(strict):
    body = json.dumps({"model": "tiny", "prompt": "Hi", "stream": False}).encode()
    sock = socket.create_connection(("127.0.0.1", strict.http_port))
    sock.sendall(b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    assert _reply(sock).startswith(b"HTTP/1.1 200")
    start = time.monotonic()
    sock.settimeout(10)
    assert sock.recv(1) == b""                               # the gateway closed the kept-alive connection
    assert 0.5 < time.monotonic() - start < 8
    sock.close()


@pytest.mark.parametrize("depth", [2000, 20000])
def test_a_template_nested_too_deeply_is_a_400(fake, depth):
    template = "{{if .Prompt}}" * depth + "x" + "{{end}}" * depth
    resp = post(fake, {"model": "tiny", "prompt": "Hi", "stream": False, "template": template})
    assert resp.status_code == 400 and "template" in resp.json()["error"] and "deep" in resp.json()["error"]
    assert post(fake, {"model": "tiny", "prompt": "Hi", "stream": False}).status_code == 200
