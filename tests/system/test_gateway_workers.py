"""GENGATE_GATEWAY_WORKERS: the gateway as several processes on one address (SO_REUSEPORT), under a supervisor that
serves their metrics together, starts a worker again when one dies, and drains them all on SIGTERM."""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
import signal
import time

import httpx
import ollama
import pytest

from tests.conftest import REAL
from tests.system.test_processes import Processes, wait_for


def workers(supervisor: int) -> list[int]:
    """The supervisor's live child processes."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == supervisor and fields[0] != "Z":
                found.append(int(entry))
    return found


def listening(pid: int, port: int) -> bool:
    """Whether process `pid` holds a listening TCP socket on `port`."""
    inodes = set()
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return True
    return False


@pytest.fixture
def two(real_models):
    p = Processes(real_models, GENGATE_GATEWAY_WORKERS="2")
    wait_for(lambda: len(workers(p.gateway.pid)) == 2)
    yield p
    left = workers(p.gateway.pid)
    p.stop()
    for pid in left:                              # SIGKILLed with the supervisor; gone in any case
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_workers_share_the_address_and_their_metrics_add_up(two):
    pids = workers(two.gateway.pid)
    assert len(pids) == 2 and all(listening(pid, two.http_port) for pid in pids)
    client = ollama.Client(host=two.url)
    with cf.ThreadPoolExecutor(8) as pool:       # new connections each: the kernel spreads them
        replies = list(pool.map(lambda i: client.generate(model=REAL, prompt=f"Count to {i}",
                                                          options={"num_predict": 4, "temperature": 0}), range(16)))
    assert all(r.done for r in replies)
    text = httpx.get(f"http://{two.env['GENGATE_GATEWAY_METRICS_ADDR']}/metrics").text
    line = next(x for x in text.splitlines()
                if x.startswith('gengate_http_requests_total{route="/api/generate",status="200"}'))
    assert float(line.split()[-1]) == 16


def test_a_worker_that_dies_is_replaced_and_the_address_keeps_serving(two):
    victim = workers(two.gateway.pid)[0]
    os.kill(victim, signal.SIGKILL)
    for _ in range(10):                           # the other worker answers meanwhile
        assert httpx.get(two.url, timeout=5).text == "Ollama is running"
    def replaced() -> bool:
        now = workers(two.gateway.pid)
        return len(now) == 2 and victim not in now and all(listening(pid, two.http_port) for pid in now)
    wait_for(replaced, timeout=30)


def test_sigterm_drains_every_worker_then_the_supervisor_exits(two):
    client = ollama.Client(host=two.url)
    with cf.ThreadPoolExecutor(1) as pool:
        stream = pool.submit(lambda: list(client.generate(
            model=REAL, prompt="1, 2, 3,", raw=True, stream=True, options={"num_predict": 60, "temperature": 0})))
        time.sleep(0.5)
        two.gateway.send_signal(signal.SIGTERM)
        parts = stream.result(60)
    assert parts[-1].done and parts[-1].done_reason == "length"
    assert two.gateway.wait(30) == 0
    assert workers(two.gateway.pid) == []


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_supervisor_killed_outright_takes_its_workers_with_it(two):
    pids = workers(two.gateway.pid)
    two.gateway.kill()
    two.gateway.wait()
    wait_for(lambda: not any(alive(pid) for pid in pids), timeout=30)    # no orphan keeps the port


def test_workers_that_cannot_start_end_the_gateway_with_status_1():
    """A port held by a socket without SO_REUSEPORT: every worker fails to bind; the supervisor gives up (as one
    gateway process would exit) instead of starting them again for ever."""
    import socket
    import subprocess
    import sys
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    env = {**os.environ, "GENGATE_GATEWAY_WORKERS": "2", "GENGATE_HTTP_ADDR": f"127.0.0.1:{held.getsockname()[1]}",
           "GENGATE_SERVICE_ADDR": "127.0.0.1:1", "GENGATE_GATEWAY_METRICS_ADDR": ""}
    try:
        gateway = subprocess.Popen([sys.executable, "-m", "gateway"], env=env, stderr=subprocess.PIPE)
        try:
            assert gateway.wait(timeout=90) == 1
        finally:
            gateway.kill()
        assert b"times in a row at start" in gateway.stderr.read()
        assert workers(gateway.pid) == []
    finally:
        held.close()
