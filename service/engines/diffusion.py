"""The image engine: diffusion models through stable-diffusion.cpp, each loaded model in a worker process of its own
(service.engines.diffusion_worker).

A runner holds one worker and runs one job at a time: its `turn` lock, which the caller holds around a job (the
pipeline's admission queues image requests on it). Each diffusion step the worker reports becomes an ImageStep;
the PNG it sends last, the ImageResult. A job whose request goes away, or a worker that dies, ends the process:
stable-diffusion-cpp-python 0.4.7 has no way to cancel a job, and a process can always be stopped. The next job
starts a fresh worker (loading the model again). A worker being started or loaded is killed as surely, whatever
interrupts it (a timeout, a cancellation), so a worker's replies always answer the job its runner sent last.
`problem` loads a file in a throwaway worker: what create runs before it accepts a diffusion checkpoint.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import sys
from collections.abc import AsyncGenerator, Mapping
from pathlib import Path

from service.engines.base import ImageEngine, ImageJob, ImageResult, ImageRunner, ImageStep, LoadError

log = logging.getLogger(__name__)

PROBE_SECONDS = 300.0                # loading a file to see whether stable-diffusion.cpp takes it


async def _spawn(config: dict, line_limit: int) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service.engines.diffusion_worker", json.dumps(config), stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, limit=line_limit)


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
    await process.wait()


async def _started(config: dict, line_limit: int, timeout: float | None) -> asyncio.subprocess.Process:
    """A worker with its model loaded: LoadError with its reason unless its first line is {"ready": true}. A
    worker that does not get there (an error, the timeout, a cancellation) is killed."""
    process = await _spawn(config, line_limit)
    try:
        assert process.stdout is not None
        try:
            line = await asyncio.wait_for(process.stdout.readline(), timeout)
        except TimeoutError:
            raise LoadError(f"stable-diffusion.cpp took longer than {timeout:g} s to load the model") from None
        try:
            message = json.loads(line) if line else {"error": "the image worker exited while loading the model"}
        except ValueError:
            message = {"error": "the image worker said something unexpected"}
        if message.get("ready") is not True:
            raise LoadError(str(message.get("error", "the model did not load")))
    except BaseException:
        await asyncio.shield(_stop(process))
        raise
    return process


def rss_bytes(pid: int) -> int:
    """A process's resident memory (Linux; 0 where it cannot be read)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return next(int(line.split()[1]) << 10 for line in status if line.startswith("VmRSS:"))
    except (OSError, StopIteration, ValueError):
        return 0


class DiffusionRunner(ImageRunner):
    def __init__(self, config: dict, process: asyncio.subprocess.Process, *, line_limit: int,
                 load_timeout: float | None):
        self._config = config
        self._process: asyncio.subprocess.Process | None = process
        self._line_limit = line_limit
        self._load_timeout = load_timeout
        self.turn = asyncio.Lock()

    @property
    def worker_pid(self) -> int | None:
        return self._process.pid if self._process is not None and self._process.returncode is None else None

    @property
    def memory_bytes(self) -> int:
        pid = self.worker_pid
        return rss_bytes(pid) if pid else 0

    async def generate_image(self, job: ImageJob) -> AsyncGenerator[ImageStep | ImageResult, None]:
        assert self.turn.locked(), "a job runs in its turn"
        if self._process is None or self._process.returncode is not None:
            self._process = None
            self._process = await _started(self._config, self._line_limit, self._load_timeout)
        process = self._process
        assert process.stdin is not None and process.stdout is not None
        done, shown = False, 0
        try:
            process.stdin.write(json.dumps({
                "prompt": job.prompt, "width": job.width, "height": job.height, "steps": job.steps,
                "seed": job.seed, "cfg_scale": job.cfg_scale, "sampler": job.sampler}).encode() + b"\n")
            await process.stdin.drain()
            while True:
                line = await process.stdout.readline()
                if not line:
                    raise RuntimeError("the image worker died during the job")
                message = json.loads(line)
                if "step" in message:
                    step, steps = int(message["step"]), int(message["steps"])
                    if shown < step <= steps:        # the library also reports a step 0 before sampling
                        shown = step
                        yield ImageStep(step, steps)
                elif "png" in message:
                    done = True
                    yield ImageResult(base64.b64decode(message["png"]), float(message["seconds"]))
                    return
                else:
                    done = True                      # the worker is fine: the job failed (said why)
                    raise RuntimeError(str(message.get("error", "image generation failed")))
        finally:
            if not done:                             # cancelled, or the worker is gone: end it
                self._process = None
                await asyncio.shield(_stop(process))

    async def close(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            if process.stdin is not None:
                process.stdin.close()
            await _stop(process)


class DiffusionEngine(ImageEngine):
    """Loads diffusion models into runners, each with its worker process. `max_message_bytes` bounds a reply (the
    pipeline keeps a PNG within it), so a worker's line (its base64) is bounded too; `load_timeout` bounds each
    (re)load of a worker (None: none)."""

    def __init__(self, max_message_bytes: int = 16 << 20, load_timeout: float | None = None):
        self._line_limit = max(max_message_bytes, 1 << 20) * 4 // 3 + (1 << 20)
        self._load_timeout = load_timeout

    async def load(self, path: str, components: Mapping[str, str], threads: int) -> ImageRunner:
        config = {"model": path, "components": dict(components), "threads": threads or os.cpu_count() or 1}
        process = await _started(config, self._line_limit, self._load_timeout)
        return DiffusionRunner(config, process, line_limit=self._line_limit, load_timeout=self._load_timeout)


async def problem(path: Path, components: Mapping[str, Path], timeout: float = PROBE_SECONDS) -> str | None:
    """Why stable-diffusion.cpp cannot load this checkpoint (with its components), or None if it can."""
    config = {"model": str(path), "components": {role: str(p) for role, p in components.items()}, "threads": 1,
              "probe": True}
    try:
        process = await _started(config, 1 << 20, timeout)
    except LoadError as exc:
        return str(exc)
    await _stop(process)
    return None
