"""Faults users meet, with real processes: the gateway (`python -m gateway`) in front of the real service process
over the scripted engine (`python -m tests.scripted_service`): an outage and recovery, an idle minute on a stream,
a soak with cancellations, a drain."""
from __future__ import annotations

import concurrent.futures as cf
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.channel import options as channel_options
from gengate.v1 import generate_pb2 as pb
from gengate.v1 import generate_pb2_grpc as pb_grpc
from tests.system.test_processes import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]


class Pair:
    """The scripted service and the real gateway, as processes; their logs go to files."""

    def __init__(self, models: Path, logs: Path, script: dict | None = None, **env: str):
        self.grpc_port, self.http_port, self.metrics_port = free_port(), free_port(), free_port()
        self.logs = logs
        self.env = {**os.environ, "GENGATE_MODELS": str(models), "GENGATE_DEFAULT_MODEL": "tiny",
                    "GENGATE_GRPC_ADDR": f"127.0.0.1:{self.grpc_port}", "GENGATE_HTTP_ADDR": f"127.0.0.1:{self.http_port}",
                    "GENGATE_SERVICE_ADDR": f"127.0.0.1:{self.grpc_port}", "GENGATE_LOG_LEVEL": "INFO",
                    "GENGATE_METRICS_ADDR": f"127.0.0.1:{self.metrics_port}",
                    "GENGATE_GATEWAY_METRICS_ADDR": f"127.0.0.1:{free_port()}",
                    "GENGATE_TEST_SCRIPT": json.dumps(script or {}), **env}
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.service = self._start("service", [sys.executable, "-m", "tests.scripted_service"])
        self.gateway = self._start("gateway", [sys.executable, "-m", "gateway"])
        wait_for(lambda: httpx.get(self.url + "/readyz").status_code == 200)

    def _start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")
        return subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def restart_service(self) -> None:
        self.service = self._start("service", [sys.executable, "-m", "tests.scripted_service"])

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def metrics(self) -> dict[tuple, float]:
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics").text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(text) for s in f.samples}

    def stop(self) -> None:
        for proc in (self.gateway, self.service):
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def requests_by_code(metrics: dict[tuple, float]) -> dict[str, float]:
    """gengate_requests_total of the API's RPCs, summed by code."""
    out: dict[str, float] = {}
    for (name, labels), value in metrics.items():
        labels = dict(labels)
        if name == "gengate_requests_total" and labels.get("method") in {"Generate", "Chat", "Embed"}:
            out[labels["code"]] = out.get(labels["code"], 0) + value
    return out


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@pytest.fixture
def pair(models, tmp_path, request):
    p = Pair(models, tmp_path, **getattr(request, "param", {}))
    yield p
    p.stop()


@pytest.mark.slow
@pytest.mark.parametrize("pair", [{"script": {"count": 5}}], indirect=True)
def test_the_gateway_recovers_within_seconds_of_a_long_outage(pair):
    pair.service.kill()
    pair.service.wait()
    start = time.monotonic()
    assert httpx.get(pair.url + "/readyz", timeout=10).status_code == 503      # at once, not after a timeout
    assert time.monotonic() - start < 5
    reply = httpx.post(pair.url + "/api/generate", json={"model": "tiny", "prompt": "Hi"}, timeout=20)
    assert reply.status_code == 503 and reply.headers["retry-after"] == "1"
    time.sleep(30)                                    # gRPC's default backoff would have grown to ~20 s by now
    pair.restart_service()
    back = time.monotonic()
    wait_for(lambda: httpx.get(pair.url + "/readyz").status_code == 200, timeout=60)
    recovered = time.monotonic() - back
    assert recovered < 8, recovered                   # the service's own start-up plus at most the 2 s backoff cap
    assert httpx.post(pair.url + "/api/generate", json={"model": "tiny", "prompt": "Hi", "stream": False},
                      timeout=20).json()["done"]


@pytest.mark.slow
@pytest.mark.parametrize("pair", [{"script": {"pieces": ["first ", "second ", "third"], "delays": [0, 62, 0]},
                                   "GRPC_VERBOSITY": "DEBUG", "GRPC_TRACE": "http_keepalive"}], indirect=True)
def test_a_stream_idle_for_a_minute_survives_gateway_and_service(pair):
    start = time.monotonic()
    with httpx.stream("POST", pair.url + "/api/generate", json={"model": "tiny", "prompt": "Hi"},
                      timeout=120) as resp:
        lines = [json.loads(line) for line in resp.iter_lines() if line]
    assert time.monotonic() - start > 60
    assert "".join(x.get("response", "") for x in lines) == "first second third"
    assert lines[-1]["done"] is True and not any("error" in x for x in lines)
    logs = pair.log("service") + pair.log("gateway")
    assert "ping" in logs.lower()                              # the keepalive pings were sent (gRPC's trace) ...
    assert "too_many_pings" not in logs                        # ... and the service accepted them: no GOAWAY
    assert pair.gateway.poll() is None and pair.service.poll() is None


@pytest.mark.slow
@pytest.mark.parametrize("pair", [{"script": {"count": 12, "delay": 0.002}, "GENGATE_NUM_PARALLEL": "8",
                                   "GENGATE_LOG_LEVEL": "WARNING"}], indirect=True)
def test_a_soak_of_mixed_requests_with_cancellations_leaves_nothing_behind(pair):
    rng = random.Random(7)
    bodies = [
        ("/api/generate", {"model": "tiny", "prompt": "Hi"}),
        ("/api/generate", {"model": "tiny", "prompt": "Hi", "stream": False}),
        ("/api/chat", {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}]}),
        ("/api/embed", {"model": "tiny", "input": ["a", "b"]}),
        ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "stream": True}),
        ("/api/generate", {"model": "nope", "prompt": "Hi"}),
    ]

    def one(i: int) -> str:
        path, body = bodies[rng.randrange(len(bodies))] if i % 10 else bodies[0]
        with httpx.Client(base_url=pair.url, timeout=30) as client:
            if i % 10 == 0:                                 # every tenth: the client leaves mid-stream
                with client.stream("POST", path, json=body) as resp:
                    next(resp.iter_lines())
                return "cancelled"
            resp = client.post(path, json=body)
            assert resp.status_code < 500, resp.text
            return str(resp.status_code)

    def run(n: int) -> list[str]:
        with cf.ThreadPoolExecutor(16) as pool:
            return list(pool.map(one, range(n)))

    run(60)                                                  # warm: allocations that stay
    # The warm-up's cancelled streams may still be ending in the service: count from when none is running.
    wait_for(lambda: pair.metrics()[("gengate_requests_running", ())] == 0, timeout=20)
    rss = {name: rss_kib(proc.pid) for name, proc in (("service", pair.service), ("gateway", pair.gateway))}
    before = requests_by_code(pair.metrics())
    outcomes = run(300)
    assert outcomes.count("cancelled") == 30 and set(outcomes) <= {"200", "404", "cancelled"}
    wait_for(lambda: pair.metrics()[("gengate_requests_running", ())] == 0, timeout=20)
    m = pair.metrics()
    after = requests_by_code(m)
    delta = {code: after.get(code, 0) - before.get(code, 0) for code in after}
    assert sum(delta.values()) == 300, delta                 # every request counted once, by its outcome
    assert delta.get("NOT_FOUND", 0) == outcomes.count("404")
    assert delta.get("OK", 0) + delta.get("CANCELLED", 0) == outcomes.count("200") + 30, delta   # (a stream may end first)
    assert m[("gengate_requests_waiting", ())] == 0 and m[("gengate_kv_cache_usage_ratio", ())] == 0
    for name, proc in (("service", pair.service), ("gateway", pair.gateway)):
        grown = rss_kib(proc.pid) - rss[name]
        assert grown < 30_000, (name, grown)                 # KiB: flat, allowing for the allocator's slack
    errors = [line for line in pair.log("service").splitlines() + pair.log("gateway").splitlines()
              if " ERROR " in line or "Traceback" in line]
    assert not errors, errors[:5]


@pytest.mark.parametrize("pair", [{"script": {"count": 200, "delay": 0.02}, "GENGATE_DRAIN_SECONDS": "30"}],
                         indirect=True)
def test_while_draining_the_gateway_answers_503_with_retry_after_and_lets_streams_finish(pair):
    with cf.ThreadPoolExecutor(1) as pool:
        def stream() -> list[dict]:
            with httpx.stream("POST", pair.url + "/api/generate", json={"model": "tiny", "prompt": "Hi"},
                              timeout=60) as resp:
                return [json.loads(line) for line in resp.iter_lines() if line]
        in_flight = pool.submit(stream)
        time.sleep(0.5)
        pair.gateway.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        refused = httpx.post(pair.url + "/api/generate", json={"model": "tiny", "prompt": "Hi"}, timeout=10)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"     # not a refused connection
        assert refused.json() == {"error": "server is shutting down"}
        assert refused.headers["connection"] == "close"
        lines = in_flight.result(timeout=60)
    assert lines[-1]["done"] is True and lines[-1]["eval_count"] == 200
    assert pair.gateway.wait(timeout=30) == 0


@pytest.mark.slow
@pytest.mark.parametrize("pair", [{"script": {"pieces": ["late"], "delays": [135]}}], indirect=True)
def test_a_call_silent_for_minutes_is_not_cut_by_keepalive_pings(pair):
    """A stream:false generation sends nothing until it ends; a client's keepalive pings meanwhile (here every
    31 s without limit, as the gateway's channel and grpc-go clients do, so four of them) must not count as abuse
    (gRPC's default allows one per 5 minutes: GOAWAY too_many_pings after the third strike, the call lost)."""
    options = dict(channel_options())
    options["grpc.keepalive_time_ms"] = 31_000
    assert options["grpc.http2.max_pings_without_data"] == 0
    channel = grpc.insecure_channel(f"127.0.0.1:{pair.grpc_port}", options=list(options.items()))
    stub = pb_grpc.GenerateServiceStub(channel)
    (reply,) = list(stub.Generate(pb.GenerateRequest(model="tiny", prompt="Hi", stream=False), timeout=200))
    assert reply.done and reply.response == "late"
    assert "too_many_pings" not in pair.log("service")
