"""Admission: at most `parallel` requests generate at once, at most `max_queue` wait.

It covers every request, for loaded models too (decisions.md §10; Ollama issue 7758):
a request that finds the queue full is refused at once with Ollama's text. A waiting
request that is cancelled (client gone, deadline) leaves the queue without running.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from service.errors import GenerateError, Kind
from service.metrics import Metrics

QUEUE_FULL = "server busy, please try again.  maximum pending requests exceeded"


class Admission:
    def __init__(self, parallel: int, max_queue: int, metrics: Metrics | None = None):
        self.parallel = max(1, parallel)
        self.max_queue = max(0, max_queue)
        self._slots = asyncio.Semaphore(self.parallel)
        self.running = 0
        self.waiting = 0
        self._metrics = metrics
        if metrics is not None:
            metrics.running.set_function(lambda: self.running)
            metrics.waiting.set_function(lambda: self.waiting)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Holds one generation slot for the block; raises QUEUE_FULL when the queue is full."""
        if self._slots.locked() and self.waiting >= self.max_queue:
            raise GenerateError(Kind.QUEUE_FULL, QUEUE_FULL)
        self.waiting += 1
        start = time.perf_counter()
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        if self._metrics is not None:
            self._metrics.queue_wait.observe(time.perf_counter() - start)
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            self._slots.release()


JOBS_FULL = "server busy, please try again.  maximum pending model conversions exceeded"


class ModelJobs:
    """Admission for model work that takes minutes, cores and gigabytes (quantizing, converting a checkpoint): at
    most `parallel` run at once, at most `max_queue` wait in arrival order, and one more is refused at once
    (QUEUE_FULL, with JOBS_FULL). A job cancelled while it waits leaves the queue."""

    def __init__(self, parallel: int = 1, max_queue: int = 16):
        self.parallel = max(1, parallel)
        self.max_queue = max(0, max_queue)
        self.running = 0
        self._queue: list[object] = []
        self._changed = asyncio.Event()

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def _change(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def turn(self) -> AsyncIterator[int]:
        """Waits for this job's turn, yielding how many jobs are ahead of it (when it must wait, and whenever
        that changes). When the iteration ends the job runs, and must call `done()` when it ends."""
        if len(self._queue) >= self.max_queue and self.running + len(self._queue) >= self.parallel:
            raise GenerateError(Kind.QUEUE_FULL, JOBS_FULL)
        ticket = object()
        self._queue.append(ticket)
        try:
            shown = -1
            while (ahead := self._queue.index(ticket) + self.running - self.parallel + 1) > 0:
                changed = self._changed
                if ahead != shown:
                    shown = ahead
                    yield ahead
                await changed.wait()
            self.running += 1
        finally:
            self._queue.remove(ticket)
            self._change()

    def done(self) -> None:
        self.running -= 1
        self._change()
