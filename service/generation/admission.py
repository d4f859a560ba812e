"""Admission: at most `parallel` requests generate at once, at most `max_queue` wait.

It covers every request, for loaded models too (Ollama's issue 7758 lets those skip its queue):
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
        async with self.turn(self._slots):
            yield

    @contextlib.asynccontextmanager
    async def turn(self, lock: asyncio.Lock | asyncio.Semaphore) -> AsyncIterator[None]:
        """Holds `lock` for the block (the generation slots, or a resource of its own such as an image model's
        worker), counted among the waiting (QUEUE_FULL past max_queue) and then the running. Image jobs take
        their worker's lock, not a generation slot, so they never keep text requests waiting."""
        if lock.locked() and self.waiting >= self.max_queue:
            raise GenerateError(Kind.QUEUE_FULL, QUEUE_FULL)
        self.waiting += 1
        start = time.perf_counter()
        try:
            await lock.acquire()
        finally:
            self.waiting -= 1
        if self._metrics is not None:
            self._metrics.queue_wait.observe(time.perf_counter() - start)
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            lock.release()
