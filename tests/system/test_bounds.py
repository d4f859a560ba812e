"""Bounds that need real processes: SIGTERM ends a service whose engine is wedged, and a service killed during an
upload comes back with a clean store."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import grpc
import httpx

from gengate.v1 import generate_pb2 as pb
from gengate.v1 import generate_pb2_grpc as pb_grpc
from gengate.v1 import model_pb2 as mpb
from gengate.v1 import model_pb2_grpc as mpb_grpc
from service.models.store import UNUSED_BLOB_SECONDS, ModelStore
from tests.system.test_faults import ROOT, Pair
from tests.system.test_processes import free_port, wait_for


def _stub(pair: Pair) -> pb_grpc.GenerateServiceStub:
    return pb_grpc.GenerateServiceStub(grpc.insecure_channel(f"127.0.0.1:{pair.grpc_port}"))


def test_sigterm_ends_a_service_whose_engine_thread_is_stuck(models, tmp_path):
    """A generation stuck in C code (a thread nothing can stop) and an engine whose close never returns: the drain
    ends, and the process exits EXIT_GRACE_SECONDS later, saying what it abandoned."""
    pair = Pair(models, tmp_path, {"wedge": True}, GENGATE_DRAIN_SECONDS="1")
    try:
        call = _stub(pair).Generate(pb.GenerateRequest(model="tiny", prompt="hi"))
        time.sleep(1.0)                                  # the request is in the engine, stuck
        start = time.monotonic()
        pair.service.send_signal(signal.SIGTERM)
        code = pair.service.wait(timeout=30)
        took = time.monotonic() - start
        assert code == 1 and took < 1 + 5 + 3, (code, took)
        log = pair.log("service")
        assert "still running 6s after SIGTERM: exiting; abandoning threads:" in log, log[-2000:]
        call.cancel()
    finally:
        pair.stop()


def test_a_second_sigterm_exits_at_once(models, tmp_path):
    pair = Pair(models, tmp_path, {"wedge": True}, GENGATE_DRAIN_SECONDS="60")
    try:
        call = _stub(pair).Generate(pb.GenerateRequest(model="tiny", prompt="hi"))
        time.sleep(1.0)
        pair.service.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        start = time.monotonic()
        pair.service.send_signal(signal.SIGTERM)
        assert pair.service.wait(timeout=10) == 1 and time.monotonic() - start < 5
        assert "SIGTERM again while draining: exiting now" in pair.log("service")
        call.cancel()
    finally:
        pair.stop()


def test_a_service_killed_during_an_upload_restarts_with_no_partial_file(tmp_path):
    """SIGKILL in the middle of a blob upload leaves `.partial-*` behind; the next start removes it (and any
    quantizer's work folder), and prunes blobs no model has used for UNUSED_BLOB_SECONDS (a fresh upload waits for
    its create)."""
    store_dir = tmp_path / "store"
    port = free_port()
    env = {"GENGATE_MODELS": str(store_dir), "GENGATE_DEFAULT_MODEL": "", "GENGATE_GRPC_ADDR": f"127.0.0.1:{port}",
           "GENGATE_METRICS_ADDR": ""}

    def start() -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "tests.scripted_service"], cwd=ROOT,
                                env={**os.environ, **env})
        wait_for(lambda: grpc.channel_ready_future(grpc.insecure_channel(f"127.0.0.1:{port}")).result(1) is None)
        return proc

    proc = start()
    try:
        stub = mpb_grpc.ModelServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        gate = threading.Event()

        def chunks():
            yield mpb.CreateBlobRequest(digest="sha256:" + "ab" * 32, data=b"G" * (1 << 20))
            gate.wait(30)                                # the upload stalls half-way
        upload = stub.CreateBlob.future(chunks())
        blobs = store_dir / "blobs"
        wait_for(lambda: any(p.name.startswith(".partial-") for p in blobs.iterdir()), timeout=20)
        # Leftovers of other kinds: a quantizer's work folder, and a blob no manifest names.
        (store_dir / "quantize-dead").mkdir()
        (store_dir / "quantize-dead" / "model.gguf").write_bytes(b"x" * 100)
        orphan, fresh = ModelStore(store_dir).blob_path("cd" * 32), ModelStore(store_dir).blob_path("ef" * 32)
        orphan.write_bytes(b"orphan")
        fresh.write_bytes(b"waiting for its create")
        old = time.time() - UNUSED_BLOB_SECONDS - 60
        os.utime(orphan, (old, old))
        proc.kill()
        proc.wait()
        gate.set()
        upload.cancel()
        proc = start()
        assert not [p.name for p in blobs.iterdir() if p.name.startswith(".partial-")]
        assert not (store_dir / "quantize-dead").exists()
        assert not orphan.exists() and fresh.exists()
    finally:
        proc.kill()
        proc.wait()


def test_health_answers_while_a_crafted_gguf_is_refused(fake, tmp_path):
    """The 55-byte file whose one metadata array declares 2^23 elements: a 400 at create in well under a second,
    while health checks keep answering."""
    import struct

    import ollama
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    bomb = (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1) + b"a" + struct.pack("<I", 9)
            + struct.pack("<IQ", 0, 1 << 23) + b"\0" * 6)
    assert len(bomb) == 55
    path = tmp_path / "bomb.gguf"
    path.write_bytes(bomb)
    client = ollama.Client(host=fake.url)
    digest = client.create_blob(path)
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(fake.grpc_target))
    slowest = [0.0]
    done = threading.Event()

    def probe():
        while not done.is_set():
            start = time.monotonic()
            health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            slowest[0] = max(slowest[0], time.monotonic() - start)
    prober = threading.Thread(target=probe)
    prober.start()
    try:
        start = time.monotonic()
        reply = httpx.post(fake.url + "/api/create", json={"model": "bomb", "files": {"b.gguf": digest}, "stream": False},
                           timeout=30)
        took = time.monotonic() - start
    finally:
        done.set()
        prober.join()
    assert reply.status_code == 400 and reply.json()["error"] == "supplied file was not in GGUF format"
    assert took < 1 and slowest[0] < 0.5
