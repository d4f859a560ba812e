"""Admission: bounded parallelism and queue, for loaded models too (unlike Ollama, whose issue 7758
lets requests for a loaded model skip its queue)."""
from __future__ import annotations

import asyncio
import concurrent.futures as cf
import time

import grpc
import httpx
import pytest

from gengate.v1 import generate_pb2 as pb
from service.engines.base import OutOfMemory
from tests.fake_engine import FakeEngine, Script
from tests.harness import Stack

BUSY = "server busy, please try again.  maximum pending requests exceeded"


@pytest.fixture(scope="module")
def narrow(models):
    stack = Stack(models, FakeEngine(), num_parallel=1, max_queue=2).start()
    yield stack
    stack.stop()


def wait_until(predicate, timeout=10):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert predicate()


def test_queue_full_is_503_then_recovers(narrow):
    engine, admission = narrow.engine, narrow.service.generation._admission
    engine.reset()
    engine.script = Script(count=30, delay=0.01)
    def post(i):
        return httpx.post(narrow.url + "/api/generate", timeout=30,
                                    json={"model": "tiny", "prompt": f"p{i}", "stream": False})
    with cf.ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(post, 0)]
        wait_until(lambda: admission.running == 1)
        for i in (1, 2):
            futures.append(pool.submit(post, i))
            wait_until(lambda i=i: admission.waiting == i)
        rejected = post(3)                                    # a loaded model, still bounded
        assert (rejected.status_code, rejected.json()) == (503, {"error": BUSY})
        assert rejected.headers["Retry-After"] == "1"
        with pytest.raises(grpc.RpcError) as err:
            list(narrow.stub().Generate(pb.GenerateRequest(model="tiny", prompt="x")))
        assert (err.value.code(), err.value.details()) == (grpc.StatusCode.RESOURCE_EXHAUSTED, BUSY)
        assert [f.result().status_code for f in futures] == [200, 200, 200]
    assert engine.prompts == ["p0", "p1", "p2"]                # served in arrival order
    assert (admission.running, admission.waiting, engine.active) == (0, 0, 0)
    assert post(4).status_code == 200                          # recovered


def test_cancelled_waiters_leave_without_running(narrow):
    engine, admission = narrow.engine, narrow.service.generation._admission
    engine.reset()
    engine.script = Script(count=100, delay=0.01)
    stub = narrow.stub()
    running = stub.Generate(pb.GenerateRequest(model="tiny", prompt="first"))
    next(running)
    waiters = [stub.Generate(pb.GenerateRequest(model="tiny", prompt=f"w{i}")) for i in range(2)]
    wait_until(lambda: admission.waiting == 2)
    for call in waiters:
        call.cancel()
    wait_until(lambda: admission.waiting == 0)
    running.cancel()
    wait_until(lambda: admission.running == 0 and engine.active == 0)
    assert engine.started == 1 and engine.prompts == ["first"]


def test_loaded_models_are_bounded_and_the_least_recently_used_idle_one_leaves(models):
    stack = Stack(models, FakeEngine(), max_loaded_models=2).start()
    try:
        def loaded():
            return sorted(m.entry.name.short for m in stack.service.pool.loaded())
        for name in ("tiny", "test", "tiny"):
            assert httpx.post(stack.url + "/api/generate", json={"model": name, "prompt": "x", "stream": False}).is_success
        assert loaded() == ["test:latest", "tiny:latest"]
        httpx.post(stack.url + "/api/generate", json={"model": "test-suffix", "prompt": "x", "stream": False})
        assert loaded() == ["test-suffix:latest", "tiny:latest"]            # "test" was used least recently
        assert stack.engine.unloaded == 1
    finally:
        stack.stop()


def test_a_message_over_the_services_limit_is_413_not_503(models):
    """gRPC's own RESOURCE_EXHAUSTED (message size) and the queue's are told apart by ErrorInfo."""
    stack = Stack(models, FakeEngine(), max_message_bytes=4096).start()
    try:
        resp = httpx.post(stack.url + "/api/generate", timeout=30,
                          json={"model": "tiny", "prompt": "x" * 8192, "stream": False})
        assert (resp.status_code, resp.json()) == (413, {"error": "request too large"})
        assert httpx.post(stack.url + "/api/generate", timeout=30,
                          json={"model": "tiny", "prompt": "x", "stream": False}).status_code == 200
    finally:
        stack.stop()


def test_a_load_that_stalls_past_the_timeout_fails_and_then_completes(models):
    """Reliability #22 (Ollama's OLLAMA_LOAD_TIMEOUT): the request gets a clear error, nothing hangs, and the
    load, which cannot be stopped half-way, finishes and serves the next request."""
    engine = FakeEngine()
    engine.load_gate = asyncio.Event()
    stack = Stack(models, engine, load_timeout=0.3).start()
    try:
        def post():
            return httpx.post(stack.url + "/api/generate", timeout=30,
                                          json={"model": "tiny", "prompt": "x", "stream": False})
        resp = post()
        assert (resp.status_code, resp.json()) == (500, {"error": "timed out waiting for model tiny:latest to load"})
        assert stack.service.generation._admission.running == 0           # its slot was given back
        stack._loop.call_soon_threadsafe(engine.load_gate.set)
        assert post().status_code == 200 and engine.loads == 1             # the same load, finished
    finally:
        stack.stop()


def test_every_request_waiting_on_a_stalled_load_times_out(models):
    engine = FakeEngine()
    engine.load_gate = asyncio.Event()
    stack = Stack(models, engine, load_timeout=0.5).start()
    try:
        def post(_):
            return httpx.post(stack.url + "/api/generate", timeout=30,
                                            json={"model": "tiny", "prompt": "x", "stream": False}).status_code
        with cf.ThreadPoolExecutor(3) as pool:
            assert list(pool.map(post, range(3))) == [500, 500, 500]      # the first and those behind it
    finally:
        stack._loop.call_soon_threadsafe(engine.load_gate.set)
        stack.stop()


def test_a_load_out_of_memory_unloads_idle_models_and_retries_once(models):
    """Reliability #23: memory freed by idle models is used; when that is not enough, a clear error with a
    stable reason, and the service goes on serving."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status
    engine = FakeEngine()
    stack = Stack(models, engine).start()
    try:
        def post(model):
            return httpx.post(stack.url + "/api/generate", timeout=30,
                                                json={"model": model, "prompt": "x", "stream": False})
        assert post("tiny").status_code == 200
        engine.load_errors = [MemoryError()]
        assert post("test").status_code == 200                               # tiny made room, then test loaded
        assert [m.entry.name.short for m in stack.service.pool.loaded()] == ["test:latest"]
        engine.load_errors = [OutOfMemory("ggml: failed to allocate buffer")] * 2
        resp = post("test-system")                                           # test unloaded, still no room
        assert (resp.status_code, resp.json()) == (500, {"error": "model test-system:latest requires more memory "
                                                                  "than is available"})
        with pytest.raises(grpc.RpcError) as err:
            engine.load_errors = [MemoryError()]
            list(stack.stub().Generate(pb.GenerateRequest(model="test-system", prompt="x")))
        info = error_details_pb2.ErrorInfo()
        rpc_status.from_call(err.value).details[0].Unpack(info)
        assert info.reason == "OUT_OF_MEMORY"
        assert post("tiny").status_code == 200                               # still serving
    finally:
        stack.stop()


def test_a_reply_over_the_gateways_limit_is_500_not_413(models):
    engine = FakeEngine()
    engine.script = Script(pieces=["x" * 100] * 50)                 # 5,000 characters in one stream:false reply
    stack = Stack(models, engine, gateway={"max_body_bytes": 2048}).start()
    try:
        resp = httpx.post(stack.url + "/api/generate", timeout=30, json={"model": "tiny", "prompt": "x", "stream": False})
        assert (resp.status_code, resp.json()) == (500, {"error": "reply too large"})
    finally:
        stack.stop()
