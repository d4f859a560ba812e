"""`python -m service` and `python -m gateway` as real processes (what `make run` starts)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import ollama
import pytest

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


@pytest.fixture
def processes(models):
    grpc_port, http_port = free_port(), free_port()
    env = {**os.environ, "GENGATE_MODELS": str(models), "GENGATE_GRPC_ADDR": f"127.0.0.1:{grpc_port}",
           "GENGATE_DEFAULT_MODEL": REAL, "GENGATE_LOG_LEVEL": "WARNING"}
    service = subprocess.Popen([sys.executable, "-m", "service"], env=env)
    # Flags win over the environment.
    gateway = subprocess.Popen([sys.executable, "-m", "gateway", "--http-addr", f"127.0.0.1:{http_port}",
                                "--service-addr", f"127.0.0.1:{grpc_port}"], env={**env, "GENGATE_HTTP_ADDR": "x"})
    url = f"http://127.0.0.1:{http_port}"
    try:
        wait_for(lambda: httpx.get(url).text == "Ollama is running")
        wait_for(lambda: httpx.get(url + "/readyz").status_code == 200)   # the default model is loaded
        yield url, service, gateway
    finally:
        for proc in (gateway, service):
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def test_make_run_processes_serve_the_default_model_and_stop_on_sigterm(processes):
    url, service, gateway = processes
    assert httpx.get(url + "/healthz").json() == {"status": "ok"}
    reply = ollama.Client(host=url).generate(model=REAL, prompt="Hello!", options={"num_predict": 8})
    assert reply.done and reply.response
    for proc in (gateway, service):
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
