"""Worker processes for per-request work that a client's input can make unbounded (building a grammar from a
schema, rendering a model's Jinja chat template).

A worker is a Python process serving one JSON line at a time. It loads its code first, then caps its address
space at what that code takes plus its budget, and runs one thread. The parent bounds every call in time: a call
over its limit, or one whose caller went away (client gone, deadline), kills the worker, so nothing a request
started outlives it; a worker that died or ran out of memory is replaced by a fresh one for the next call. A pool
holds at most `size` workers, started on demand and kept while idle.

A worker module calls `serve(handler, memory_bytes)` from its `__main__`; the handler takes one request (a dict)
and returns the reply (a dict). A MemoryError in the handler is answered `{"exhausted": true}` and the worker is
not used again.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import resource
import sys
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

# A worker needs one thread and no accelerator.
ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


class WorkerError(Exception):
    """A call that did not complete: the worker ran over its time (WorkerTimeout), died (WorkerDied) or ran out of
    memory (WorkerExhausted). It has been replaced."""


class WorkerTimeout(WorkerError):
    pass


class WorkerDied(WorkerError):
    pass


class WorkerExhausted(WorkerError):
    pass


def address_space() -> int:
    """This process's address space now, in bytes (Linux; 0 where it cannot be read)."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) << 10 for line in status if line.startswith("VmSize:"))
    except (OSError, StopIteration, ValueError):
        return 0


def cap_memory(memory_bytes: int) -> None:
    """Caps this process's address space at what it maps now plus `memory_bytes`."""
    cap = address_space() + memory_bytes
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def serve(handler: Callable[[dict[str, Any]], dict[str, Any]], memory_bytes: int) -> None:
    """The worker's loop (see the module docstring). Call it once the worker's code is imported."""
    cap_memory(memory_bytes)
    for line in sys.stdin:
        out: dict[str, Any]
        try:
            out = handler(json.loads(line))
        except MemoryError:
            out = {"exhausted": True}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


class _Worker:
    def __init__(self, process: asyncio.subprocess.Process):
        self.process = process

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    async def kill(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        await self.process.wait()


class WorkerPool:
    """At most `size` workers running `python -m MODULE MEMORY_BYTES`; `call` sends one request to an idle one."""

    def __init__(self, module: str, *, size: int = 1, timeout: float, memory_bytes: int,
                 line_limit: int = 1 << 20):
        self.module = module
        self.timeout = timeout
        self.memory_bytes = memory_bytes
        self._line_limit = line_limit
        self._slots = asyncio.Semaphore(max(1, size))
        self._idle: list[_Worker] = []
        self._busy: set[_Worker] = set()
        self.calls = 0                   # observability: requests sent to workers

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in [*self._idle, *self._busy]]

    async def _start(self) -> _Worker:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", self.module, str(self.memory_bytes), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, limit=self._line_limit, env={**os.environ, **ENV})
        return _Worker(process)

    async def call(self, request: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """The worker's reply to `request`, within `timeout` (the pool's by default); WorkerError otherwise."""
        async with self._slots:
            worker = self._idle.pop() if self._idle else await self._start()
            self._busy.add(worker)
            keep = False
            try:
                out = await self._exchange(worker, request, self.timeout if timeout is None else timeout)
                keep = not out.get("exhausted")
                if not keep:
                    log.warning("%s: a request exhausted its worker's memory; the worker is replaced", self.module)
                    raise WorkerExhausted("the worker ran out of memory")
                return out
            finally:
                self._busy.discard(worker)
                if keep and worker.alive:
                    self._idle.append(worker)
                else:                      # over time, dead, exhausted, or its caller gone mid-call
                    await asyncio.shield(worker.kill())

    async def _exchange(self, worker: _Worker, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        stdin, stdout = worker.process.stdin, worker.process.stdout
        assert stdin is not None and stdout is not None
        self.calls += 1
        try:
            stdin.write(json.dumps(request).encode() + b"\n")
            await stdin.drain()
            line = await asyncio.wait_for(stdout.readline(), timeout)
        except TimeoutError:
            log.warning("%s: a request took over %ss; its worker is replaced", self.module, timeout)
            raise WorkerTimeout(f"over {timeout:g} s") from None
        except (OSError, ValueError) as exc:       # a broken pipe, a line over the limit
            raise WorkerDied(str(exc)) from None
        if not line:
            log.warning("%s: the worker died; it is replaced", self.module)
            raise WorkerDied("the worker exited")
        return json.loads(line)

    async def close(self) -> None:
        workers, self._idle = [*self._idle, *self._busy], []
        for worker in workers:
            await worker.kill()
