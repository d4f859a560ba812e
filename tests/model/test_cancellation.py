"""Client disconnects and gRPC cancellation stop decoding in the real engine."""
from __future__ import annotations

import json
import socket
import time

import grpc

from gengate.v1 import generate_pb2 as pb
from tests.conftest import REAL
from tests.stack.test_observability import value

# Greedy SmolLM2 keeps counting for thousands of tokens (about 100 a second here).
COUNT = {"model": REAL, "prompt": "1, 2, 3, 4, 5, 6,", "raw": True}
LONG = {"temperature": 0, "num_predict": 3000}


def runner_of(stack, name: str):
    (model,) = [m for m in stack.service.pool.loaded() if m.entry.name.short == name]
    return model.runner


def wait_idle(runner, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while runner.active and time.monotonic() < deadline:
        time.sleep(0.005)


def test_http_disconnect_mid_stream_stops_decoding(real):
    body = json.dumps({**COUNT, "options": LONG}).encode()
    with socket.create_connection(("127.0.0.1", real.http_port)) as sock:
        sock.sendall(b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body)
        received = b""
        while received.count(b"\n{") < 3:
            received += sock.recv(4096)
        runner = runner_of(real, REAL)
        assert runner.active == 1
        at_close = runner.stats.sampled
    wait_idle(runner)
    assert runner.active == 0
    assert runner.stats.sampled - at_close < 20                   # stopped within a few tokens of the disconnect
    # The model is free at once for the next request.
    (reply,) = real.stub().Generate(pb.GenerateRequest(model=REAL, prompt="hi", stream=False,
                                                       options=pb.Options(num_predict=3)))
    assert reply.eval_count == 3


def test_grpc_cancel_and_deadline_stop_decoding(real):
    stub = real.stub()
    call = stub.Generate(pb.GenerateRequest(**COUNT, options=pb.Options(**LONG)))
    next(call), next(call)
    runner = runner_of(real, REAL)
    before = runner.stats.sampled
    registry = real.service.metrics.registry
    def counted(code):
        return value(registry, "gengate_requests_total", method="Generate", code=code)
    cancelled, expired = counted("CANCELLED"), counted("DEADLINE_EXCEEDED")
    call.cancel()
    wait_idle(runner)
    assert runner.active == 0 and runner.stats.sampled - before < 20
    try:
        for _ in stub.Generate(pb.GenerateRequest(**COUNT, options=pb.Options(**LONG)), timeout=1.0):
            pass
        raise AssertionError("the deadline did not end the stream")
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_idle(runner)
    assert runner.active == 0
    deadline = time.monotonic() + 5                       # the handler's last bookkeeping runs after the reply
    while counted("DEADLINE_EXCEEDED") == expired and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (counted("CANCELLED"), counted("DEADLINE_EXCEEDED")) == (cancelled + 1, expired + 1)


def test_cancel_during_a_long_prefill_stops_before_any_token(real):
    # ~3000 prompt tokens in batches of 16: seconds of prefill, checked for cancellation between batches.
    prompt = "The quick brown fox jumps over the lazy dog. " * 300
    call = real.stub().Generate(pb.GenerateRequest(model=REAL, prompt=prompt, raw=True,
                                                   options=pb.Options(num_batch=16, num_predict=5)))
    runner = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        model = {m.entry.name.short: m for m in real.service.pool.loaded()}.get(REAL)
        if model is not None and model.options.num_batch == 16 and model.runner.active:
            runner = model.runner
            break
        time.sleep(0.002)
    assert runner is not None
    before = runner.stats.sampled
    time.sleep(0.05)
    call.cancel()
    wait_idle(runner)
    assert runner.active == 0 and runner.stats.sampled == before                # no token was ever sampled


def test_the_kv_cache_gauge_follows_the_tokens_held(real):
    """gengate_kv_cache_usage_ratio (the Inference Extension's KV utilisation, 0-1) is the share of the loaded
    runners' cells that running sequences hold: above 0 while two streams decode, growing with their tokens,
    and back to 0 when they are cancelled."""
    registry = real.service.metrics.registry
    def usage():
        return value(registry, "gengate_kv_cache_usage_ratio")
    stub = real.stub()
    calls = [stub.Generate(pb.GenerateRequest(**COUNT, options=pb.Options(**LONG))) for _ in range(2)]
    for call in calls:
        next(call), next(call)
    runner = runner_of(real, REAL)
    _, total = runner.kv_cells()
    first = usage()
    assert 0 < first < 1 and total == runner.n_seq * runner.n_ctx
    for call in calls:
        for _ in range(20):
            next(call)
    assert first < usage() < 1                              # 40 more tokens held
    for call in calls:
        call.cancel()
    wait_idle(runner)
    deadline = time.monotonic() + 5
    while usage() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert usage() == 0
