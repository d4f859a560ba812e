"""Loaded models: loading, reloading on changed load options, keep-alive and unloading.

A request leases a model; while leases are out the model stays loaded. When the last
lease ends, the model's keep-alive starts: negative keeps it forever, zero unloads it at
once, otherwise a timer unloads it when idle for that long. A request that names
`keep_alive` updates the model's setting (it is sticky); one that does not leaves it.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

from service.engines.base import (
    Engine,
    ImageEngine,
    ImageRunner,
    LoadError,
    LoadOptions,
    LoadTimeout,
    OutOfMemory,
    Runner,
)
from service.models.store import ModelEntry

log = logging.getLogger(__name__)

# A keep-alive this long or longer is "forever" (Ollama shows forever as ~292 years ahead, Go's longest duration);
# anything longer would put expiry times outside what a timestamp can hold.
FOREVER_NS = 292 * 365 * 86400 * 1_000_000_000


def _clamped(keep_alive_ns: int) -> int:
    return -1 if keep_alive_ns >= FOREVER_NS else keep_alive_ns


@dataclasses.dataclass
class Loaded:
    """One loaded model."""

    entry: ModelEntry
    options: LoadOptions
    runner: Runner | ImageRunner
    keep_alive_ns: int
    leases: int = 0
    expires_at: float | None = None      # wall clock; None while in use or kept forever
    timer: asyncio.TimerHandle | None = None
    last_used: float = dataclasses.field(default_factory=time.monotonic)


@dataclasses.dataclass
class Lease:
    """A model held by one request."""

    runner: Runner | ImageRunner

    @property
    def text(self) -> Runner:
        """The runner of a text model (the pipeline checked the model's kind before it leased it)."""
        assert isinstance(self.runner, Runner)
        return self.runner

    @property
    def image(self) -> ImageRunner:
        assert isinstance(self.runner, ImageRunner)
        return self.runner


class ModelPool:
    def __init__(self, engine: Engine, default_keep_alive_ns: int, max_loaded: int = 3, load_timeout_s: float = 300,
                 image_engine: ImageEngine | None = None):
        self._engine = engine
        self.speculates = engine.speculates
        self._image_engine = image_engine
        self._closed = False
        self._load_timeout_s = load_timeout_s if load_timeout_s > 0 else None     # <= 0: wait as long as it takes
        self._default_keep_alive_ns = _clamped(default_keep_alive_ns)
        self._max_loaded = max(1, max_loaded)
        self._loaded: dict[str, Loaded] = {}
        self._pending: dict[str, asyncio.Future] = {}       # loads in progress
        self._changed = asyncio.Condition()
        self._loading: dict[str, asyncio.Lock] = {}

    def loaded(self) -> list[Loaded]:
        return list(self._loaded.values())

    def loaded_runner(self, entry: ModelEntry) -> Runner | ImageRunner | None:
        """The runner of `entry` as loaded now (the same files), or None."""
        model = self._loaded.get(entry.key)
        return model.runner if model is not None and model.entry.files == entry.files else None

    async def acquire(self, entry: ModelEntry, options: LoadOptions, keep_alive_ns: int | None) -> Loaded:
        """`entry` loaded with `options` (loading it if need be), held until `release`. Raises what the engine
        raised (OutOfMemory once idle models were unloaded and it still did not fit, LoadError), or
        LoadTimeout."""
        model = await self._acquire(entry, options)
        if keep_alive_ns is not None:
            model.keep_alive_ns = _clamped(keep_alive_ns)
        return model

    async def release(self, model: Loaded) -> None:
        await self._release(model)

    async def _acquire(self, entry: ModelEntry, options: LoadOptions) -> Loaded:
        lock = self._loading.setdefault(entry.key, asyncio.Lock())
        async with lock:
            while True:
                pending = self._pending.get(entry.key)
                if pending is not None:
                    await self._loaded_within_timeout(pending, entry)   # a load a departed requester started
                    continue
                model = self._loaded.get(entry.key)
                if model is None:
                    break
                if model.entry.files == entry.files and model.options == options:
                    model.leases += 1
                    self._cancel_timer(model)
                    return model
                if model.leases == 0:          # another file or other load options: reload once idle
                    await self._close(model)
                    break
                async with self._changed:
                    await self._changed.wait()
            await self._make_room(entry.key)
            # The load is a task of its own: a requester that leaves (client gone, deadline) does not
            # abandon it half-way; the model is then registered idle and follows its keep-alive.
            task = asyncio.ensure_future(self._load(entry, options))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            self._pending[entry.key] = task
            model = await self._loaded_within_timeout(task, entry)
            model.leases += 1
            self._cancel_timer(model)
            return model

    async def _loaded_within_timeout(self, load: asyncio.Future, entry: ModelEntry) -> Loaded:
        """Waits for a load, at most the load timeout. On timeout the load goes on (a thread in C code cannot
        be stopped); when it ends, the model is registered idle."""
        try:
            return await asyncio.wait_for(asyncio.shield(load), self._load_timeout_s)
        except TimeoutError:
            log.error("loading %s took over %ss", entry.name.short, self._load_timeout_s)
            raise LoadTimeout(f"timed out waiting for model {entry.name.short} to load") from None

    async def _load(self, entry: ModelEntry, options: LoadOptions) -> Loaded:
        log.info("loading %s (%s)", entry.name.short, options)
        try:
            try:
                runner = await self._engine_load(entry, options)
            except Exception as exc:
                idle = [m for m in self._loaded.values() if m.leases == 0 and m.entry.key != entry.key]
                if not (isinstance(exc, (OutOfMemory, MemoryError)) and idle):
                    raise
                # As Ollama does on a load that runs out of memory: free what idle models hold, try once more.
                log.warning("loading %s ran out of memory; unloading %d idle model(s) and retrying",
                            entry.name.short, len(idle))
                for model in idle:
                    await self._close(model)
                runner = await self._engine_load(entry, options)
        except Exception:
            log.exception("loading %s failed", entry.name.short)
            raise
        finally:
            self._pending.pop(entry.key, None)
        if self._closed:                   # the service stopped while it loaded: nothing is left running
            await runner.close()
            raise LoadError("the service is shutting down")
        model = Loaded(entry, options, runner, self._default_keep_alive_ns)
        self._loaded[entry.key] = model
        self._schedule_expiry(model)
        return model

    async def _engine_load(self, entry: ModelEntry, options: LoadOptions) -> Runner | ImageRunner:
        if entry.kind == "image":
            if self._image_engine is None:
                raise LoadError("this service has no image engine")
            return await self._image_engine.load(str(entry.path), {role: str(p) for role, p in entry.components},
                                                 options.num_thread)
        return await self._engine.load(str(entry.path), options, adapters=[str(p) for p in entry.adapters],
                                       projector=str(entry.projector) if entry.projector else None,
                                       draft=str(entry.draft) if entry.draft else None)

    async def _make_room(self, key: str) -> None:
        """Waits until fewer than max_loaded other models are loaded or loading, unloading the least
        recently used idle one when needed (requests for a full pool wait, as in Ollama)."""
        while len(({*self._loaded, *self._pending}) - {key}) >= self._max_loaded:
            idle = [m for m in self._loaded.values() if m.leases == 0 and m.entry.key != key]
            if idle:
                victim = min(idle, key=lambda m: m.last_used)
                log.info("unloading %s to make room (max %d loaded)", victim.entry.name.short, self._max_loaded)
                await self._close(victim)
            else:
                async with self._changed:
                    await self._changed.wait()

    async def _release(self, model: Loaded) -> None:
        model.leases -= 1
        model.last_used = time.monotonic()
        if model.leases == 0:
            self._schedule_expiry(model)
        async with self._changed:
            self._changed.notify_all()

    def _schedule_expiry(self, model: Loaded) -> None:
        self._cancel_timer(model)
        if model.keep_alive_ns < 0:
            return
        delay = model.keep_alive_ns / 1e9
        model.expires_at = time.time() + delay
        loop = asyncio.get_running_loop()
        model.timer = loop.call_later(delay, lambda: loop.create_task(self._expire(model)))

    @staticmethod
    def _cancel_timer(model: Loaded) -> None:
        if model.timer is not None:
            model.timer.cancel()
            model.timer = None
        model.expires_at = None

    async def _expire(self, model: Loaded) -> None:
        if model.leases == 0 and self._loaded.get(model.entry.key) is model:
            log.info("unloading %s (keep_alive expired)", model.entry.name.short)
            await self._close(model)

    async def _close(self, model: Loaded) -> None:
        self._cancel_timer(model)
        if self._loaded.get(model.entry.key) is model:
            del self._loaded[model.entry.key]
        await model.runner.close()

    async def unload(self, entry: ModelEntry) -> None:
        """Unloads `entry` now, or when its last lease ends."""
        model = self._loaded.get(entry.key)
        if model is None:
            return
        model.keep_alive_ns = 0
        if model.leases == 0:
            await self._close(model)


    async def close(self) -> None:
        """Unloads every model; a load still under way ends as soon as it can (an image model's worker at once)."""
        self._closed = True
        pending = list(self._pending.values())
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for model in list(self._loaded.values()):
            await self._close(model)
