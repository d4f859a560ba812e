"""Admission for model work that takes minutes, cores and gigabytes: quantizing, converting a checkpoint."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from service.errors import GenerateError, Kind

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


def waiting_status(ahead: int) -> str:
    """The progress status of model work waiting for its turn."""
    return f"waiting for {ahead} other model conversion{'s' if ahead > 1 else ''} to finish"
