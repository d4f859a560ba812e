"""Admission: at most `parallel` requests generate at once, at most `max_queue` wait.

It covers every request, for loaded models too (decisions.md §10; Ollama issue 7758):
a request that finds the queue full is refused at once with Ollama's text. A waiting
request that is cancelled (client gone, deadline) leaves the queue without running.
"""
from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator

from service.errors import GenerateError, Kind

QUEUE_FULL = "server busy, please try again.  maximum pending requests exceeded"


class Admission:
    def __init__(self, parallel: int, max_queue: int):
        self.parallel = max(1, parallel)
        self.max_queue = max(0, max_queue)
        self._slots = asyncio.Semaphore(self.parallel)
        self.running = 0
        self.waiting = 0

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Holds one generation slot for the block; raises QUEUE_FULL when the queue is full."""
        if self._slots.locked() and self.waiting >= self.max_queue:
            raise GenerateError(Kind.QUEUE_FULL, QUEUE_FULL)
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            self._slots.release()
