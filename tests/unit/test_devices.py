"""The compute devices the service finds at start-up, and the warning when a build carries a GPU backend that
finds no GPU here (the CUDA image on a host without a driver or device runs on the CPU)."""
from __future__ import annotations

import logging

from service.engines import llama


def test_this_build_finds_the_cpu():
    found = llama.devices()
    assert found and found[0][0] == "CPU"
    assert llama.gpu_backends_unused() == []              # the CPU wheel carries no GPU backend


def test_a_carried_gpu_backend_without_a_device_is_named(tmp_path, monkeypatch):
    for name in ("libggml-base.so", "libggml-cpu-haswell.so", "libggml-cuda.so"):
        (tmp_path / name).touch()
    monkeypatch.setattr(llama, "_lib_dir", lambda: tmp_path)
    monkeypatch.setattr(llama, "devices", lambda: [("CPU", "CPU (test)")])
    assert llama.gpu_backends_unused() == ["cuda"]
    monkeypatch.setattr(llama, "devices", lambda: [("CPU", "CPU (test)"), ("GPU", "CUDA0 (NVIDIA H100)")])
    assert llama.gpu_backends_unused() == []


async def test_the_service_logs_its_devices(tmp_path, monkeypatch, caplog):
    from service import server
    from service.settings import ServiceSettings
    monkeypatch.setattr(llama, "gpu_backends_unused", lambda: ["cuda"])
    with caplog.at_level(logging.INFO):
        service = server.build(ServiceSettings(models=tmp_path))
    await service.close()
    assert "compute devices: CPU" in caplog.text
    assert "carries GPU backends (cuda) but no GPU is usable here" in caplog.text


def test_the_ggml_read_is_the_one_libllama_loaded():
    """A wheel holds libggml.so and libggml.so.0 as copies: opening the other one would load a second ggml with
    a registry of its own (a backend-loading build then has no backend, and no model loads)."""
    llama.devices()
    with open("/proc/self/maps") as maps:
        paths = {line.split()[-1] for line in maps if line.split()[-1].rsplit("/", 1)[-1].startswith("libggml.so")}
    assert len(paths) == 1, paths
