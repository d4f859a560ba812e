"""`python -m service` and `python -m gateway` as real processes (what `make run` starts), with real signals."""
from __future__ import annotations

import concurrent.futures as cf
import json
import os
import signal
import socket
import subprocess
import sys
import time

import grpc
import httpx
import ollama
import pytest

from gengate.v1 import generate_pb2 as pb
from gengate.v1 import generate_pb2_grpc as pb_grpc
from tests.conftest import REAL


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise TimeoutError("service did not come up")


class Processes:
    def __init__(self, models, **env):
        self.grpc_port, self.http_port = free_port(), free_port()
        self.env = {**os.environ, "GENGATE_MODELS": str(models), "GENGATE_GRPC_ADDR": f"127.0.0.1:{self.grpc_port}",
                    "GENGATE_DEFAULT_MODEL": REAL, "GENGATE_LOG_LEVEL": "WARNING",
                    "GENGATE_METRICS_ADDR": f"127.0.0.1:{free_port()}",
                    "GENGATE_GATEWAY_METRICS_ADDR": f"127.0.0.1:{free_port()}", **env}
        self.service = subprocess.Popen([sys.executable, "-m", "service"], env=self.env)
        # Flags win over the environment.
        self.gateway = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--http-addr", f"127.0.0.1:{self.http_port}",
             "--service-addr", f"127.0.0.1:{self.grpc_port}"], env={**self.env, "GENGATE_HTTP_ADDR": "x"})
        self.url = f"http://127.0.0.1:{self.http_port}"
        try:
            wait_for(lambda: httpx.get(self.url).text == "Ollama is running")
            wait_for(lambda: httpx.get(self.url + "/readyz").status_code == 200)   # the default model is loaded
        except BaseException:
            self.stop()                          # a start that failed leaves no process behind
            raise

    def stub(self) -> pb_grpc.GenerateServiceStub:
        return pb_grpc.GenerateServiceStub(grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}"))

    def stop(self) -> None:
        for proc in (self.gateway, self.service):
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@pytest.fixture
def procs(real_models, request):
    p = Processes(real_models, **getattr(request, "param", {}))
    yield p
    p.stop()


def test_make_run_processes_serve_the_default_model_and_stop_on_sigterm(procs):
    assert httpx.get(procs.url + "/healthz").json() == {"status": "ok"}
    reply = ollama.Client(host=procs.url).generate(model=REAL, prompt="Hello!", options={"num_predict": 8})
    assert reply.done and reply.response
    for proc in (procs.gateway, procs.service):
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def stream_http(url: str, num_predict: int) -> list[dict]:
    body = {"model": REAL, "prompt": "Tell me about the sea.", "options": {"num_predict": num_predict, "temperature": 0}}
    with httpx.stream("POST", url + "/api/generate", json=body, timeout=60) as resp:
        return [json.loads(line) for line in resp.iter_lines() if line]


@pytest.mark.parametrize("procs", [{"GENGATE_DRAIN_SECONDS": "120"}], indirect=True)   # room on a busy machine
def test_sigterm_drains_in_flight_streams_of_both_processes(procs):
    with cf.ThreadPoolExecutor(3) as pool:
        # Gateway: three HTTP streams in flight, then SIGTERM; they finish, new requests are refused.
        streams = [pool.submit(stream_http, procs.url, 40) for _ in range(3)]
        time.sleep(0.5)
        procs.gateway.send_signal(signal.SIGTERM)
        with pytest.raises(httpx.HTTPError):
            httpx.post(procs.url + "/api/generate", json={"model": REAL, "prompt": "x"}, timeout=5).raise_for_status()
        for future in streams:
            lines = future.result(timeout=60)
            assert lines[-1]["done"] is True and lines[-1]["eval_count"] == 40
        assert procs.gateway.wait(timeout=30) == 0
    # Service: three RPCs in flight, then SIGTERM: NOT_SERVING, new RPCs refused, the three complete.
    stub = procs.stub()
    calls = [stub.Generate(pb.GenerateRequest(model=REAL, prompt="Tell me about the sea.",
                                              options=pb.Options(num_predict=40, temperature=0))) for _ in range(3)]
    first = next(calls[0])
    procs.service.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Generate(pb.GenerateRequest(model=REAL, prompt="x")))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    replies = [[first, *calls[0]], *[list(c) for c in calls[1:]]]
    assert all(r[-1].done and r[-1].eval_count == 40 for r in replies)
    assert procs.service.wait(timeout=30) == 0


@pytest.mark.parametrize("procs", [{"GENGATE_DRAIN_SECONDS": "1"}], indirect=True)
def test_streams_longer_than_the_drain_are_ended_and_the_process_exits(procs):
    call = procs.stub().Generate(pb.GenerateRequest(model=REAL, prompt="1, 2, 3, 4, 5,", raw=True,
                                                    options=pb.Options(num_predict=3000, temperature=0)))
    next(call)
    procs.service.send_signal(signal.SIGTERM)
    with pytest.raises(grpc.RpcError):           # ended at the drain's end, never completed
        for reply in call:
            assert not reply.done
    assert procs.service.wait(timeout=30) == 0


@pytest.mark.parametrize("procs", [{"GENGATE_DRAIN_SECONDS": "2"}], indirect=True)
def test_http_streams_longer_than_the_gateway_drain_end_with_an_error_line(procs):
    """Both framings: Ollama's NDJSON ends with an error line, OpenAI's SSE with an error event."""
    ollama_body = {"model": REAL, "prompt": "1, 2, 3, 4, 5,", "raw": True,
                   "options": {"num_predict": 3000, "temperature": 0}}
    openai_body = {"model": REAL, "prompt": "1, 2, 3, 4, 5,", "max_tokens": 3000, "temperature": 0, "stream": True}
    with cf.ThreadPoolExecutor(1) as pool, \
            httpx.stream("POST", procs.url + "/api/generate", json=ollama_body, timeout=60) as ndjson, \
            httpx.stream("POST", procs.url + "/v1/completions", json=openai_body, timeout=60) as sse:
        lines, events = ndjson.iter_lines(), (e for e in sse.iter_lines() if e.startswith("data: "))
        assert json.loads(next(lines))["done"] is False
        assert json.loads(next(events)[6:])["object"] == "text_completion"
        # A third request, stream:false, has had no byte yet when the drain ends: it gets a real status.
        whole = pool.submit(httpx.post, procs.url + "/api/generate", json={**ollama_body, "stream": False}, timeout=60)
        time.sleep(0.3)
        procs.gateway.send_signal(signal.SIGTERM)
        rest = [json.loads(line) for line in lines if line]
        last = [e[6:] for e in events][-1]
        refused = whole.result()
    assert rest[-1] == {"error": "server is shutting down"} and not any(x.get("done") for x in rest)
    assert json.loads(last)["error"]["message"] == "server is shutting down"
    assert (refused.status_code, refused.json()) == (503, {"error": "server is shutting down"})
    assert refused.headers["Retry-After"] == "1"
    assert procs.gateway.wait(timeout=30) == 0
