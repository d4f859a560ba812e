"""The models as requests see them: installed ones (the store) and loaded ones (the pool), by Ollama's names.

The one place a model name in a request is resolved (with the words Ollama answers on each route), the listings
of `/api/tags` and `/api/ps` (expiry times included), and the store's work (create, pull, blobs, copy, delete)
behind the ModelService servicer.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

from common import golang, names
from gengate.v1 import model_pb2 as mpb
from service.engines.base import LoadError, LoadOptions, LoadTimeout, OutOfMemory
from service.engines.pool import FOREVER_NS, Lease, ModelPool
from service.errors import GenerateError, Kind, invalid
from service.generation import request as checks
from service.models import catalog
from service.models.catalog import Progress
from service.models.creation import Creation, Probes
from service.models.jobs import ModelJobs
from service.models.model import Model
from service.models.store import DigestMismatch, ModelEntry, ModelStore, parse_digest
from service.settings import ServiceSettings

CLOUD_DISABLED = "ollama cloud is disabled: remote model is unavailable"


def parse_name(text: str, *, malformed: str = "invalid model name", field: str = "model",
               remote: bool = False) -> names.ModelName:
    """A model name as Ollama's grammar reads it (400 `malformed` otherwise). With `remote`, as a generation reads
    it: a `:local` suffix is dropped, and `:cloud` models are refused (gengate serves local models only)."""
    text = text.strip()
    cloud = False
    if remote:
        lower = text.lower()
        if lower.endswith(":local:cloud") or lower.endswith(":cloud:local"):
            raise invalid(f"use either :local or :cloud, not both: {golang.quote(text)}", field)
        cloud = lower.endswith(":cloud")
        if cloud or lower.endswith(":local"):
            text = text.rsplit(":", 1)[0]
    try:
        name = names.parse(text)
    except names.InvalidName:
        raise invalid(malformed, field) from None
    if remote and (cloud or name.tag.lower().endswith("-cloud")):
        raise GenerateError(Kind.CLOUD_DISABLED, CLOUD_DISABLED, field)
    return name


@dataclasses.dataclass
class Running:
    """A loaded model, for /api/ps."""

    model: Model
    size: int                        # its blobs and its KV cache
    context_length: int
    expires_at: float                # wall clock


class Models:
    """Installed and loaded models (see the module docstring)."""

    def __init__(self, settings: ServiceSettings, store: ModelStore, pool: ModelPool, jobs: ModelJobs,
                 probes: Probes):
        self._settings = settings
        self.store = store
        self.pool = pool
        self.jobs = jobs
        self._creation = Creation(store, jobs, settings.num_threads, probes)

    # -- names ---------------------------------------------------------------------------------------------------
    async def get(self, text: str, *, blank: str | None = "model is required", malformed: str = "invalid model name",
                  missing: str | None = None, remote: bool = False) -> Model:
        """The installed model `text` names. Blank: 400 `blank` (None: as not found); not installed: 404
        `missing` (Ollama's "model 'x' not found" by default)."""
        if not text.strip() and blank is not None:
            raise invalid(blank, "model")
        not_found = GenerateError(Kind.MODEL_NOT_FOUND, missing or f"model '{text}' not found", "model")
        if not text.strip():
            raise not_found
        entry = self.store.get(parse_name(text, malformed=malformed, remote=remote))
        if entry is None or not entry.path.exists():
            raise not_found
        return await self.model(entry)

    async def model(self, entry: ModelEntry) -> Model:
        """What is known of an installed model without loading it: its file's metadata (an image model's: its
        architecture and format, and what a GGUF checkpoint carries)."""
        if entry.kind != "image":
            return Model(entry, await self.store.read_metadata(entry.path))
        with open(entry.path, "rb") as f:
            gguf = f.read(4) == b"GGUF"
        metadata = dict(await self.store.read_metadata(entry.path)) if gguf else {}
        metadata.update({"general.architecture": entry.architecture, "general.type": "diffusion",
                         "general.file_format": "gguf" if gguf else "safetensors"})
        return Model(entry, metadata)

    # -- loading -------------------------------------------------------------------------------------------------
    def load_options(self, model: Model, options: Any = None) -> LoadOptions:
        """What `model` is loaded with for a request's `options` (a protobuf Options; None: the defaults). An
        image model's worker takes only its threads: other load options never reload it."""
        load = checks.load_options(options, model.entry.parameters, default_ctx=self._settings.context_length,
                                   n_ctx_train=model.n_ctx_train, default_threads=self._settings.num_threads)
        return LoadOptions(num_ctx=0, num_thread=load.num_thread) if model.image else load

    @contextlib.asynccontextmanager
    async def lease(self, model: Model, load: LoadOptions, keep_alive_ns: int | None) -> AsyncIterator[Lease]:
        """Holds `model` loaded with `load` for the block; a load that fails is the request's error, in Ollama's
        words (what the engine said goes to the log only unless it is written for clients: it may name files)."""
        name = model.entry.name.short
        try:
            loaded = await self.pool.acquire(model.entry, load, keep_alive_ns)
        except (OutOfMemory, MemoryError) as exc:
            raise GenerateError(Kind.OUT_OF_MEMORY, f"model {name} requires more memory than is available") from exc
        except LoadTimeout as exc:
            raise GenerateError(Kind.MODEL_LOAD_FAILED, str(exc)) from exc
        except LoadError as exc:
            raise GenerateError(Kind.MODEL_LOAD_FAILED, f"unable to load model {name}: {exc}") from exc
        except Exception as exc:
            raise GenerateError(Kind.MODEL_LOAD_FAILED, f"unable to load model {name}") from exc
        try:
            yield Lease(loaded.runner)
        finally:
            await self.pool.release(loaded)

    async def ensure(self, name: str) -> None:
        """Loads the model `name` with its defaults (start-up); it then follows its keep-alive."""
        model = await self.get(name, remote=True)
        async with self.lease(model, self.load_options(model), None):
            pass

    async def unload(self, model: Model) -> None:
        await self.pool.unload(model.entry)

    # -- listings ------------------------------------------------------------------------------------------------
    async def installed(self) -> list[Model]:
        """Every installed model whose file is there, the newest first."""
        out = []
        for entry in sorted(self.store.entries(), key=lambda e: e.modified_at, reverse=True):
            if entry.path.exists():
                out.append(await self.model(entry))
        return out

    def speculation(self, model: Model) -> mpb.SpeculativeDecoding:
        """Where the model's drafts come from, on this service's engine: as its loaded runner says (a model whose
        memory cannot drop rejected drafts does not draft; a draft model that failed to load leaves lookup), or,
        not loaded, as the engine and the model's files say."""
        loaded = self.pool.loaded_runner(model.entry)
        said = getattr(loaded, "speculation", None)
        if said is None:
            said = "off" if not (self.pool.speculates and model.generative) else \
                "draft_model" if model.entry.draft else "prompt_lookup"
        return mpb.SpeculativeDecoding.Value("SPECULATIVE_DECODING_" + said.upper())  # type: ignore[return-value]

    async def running(self) -> list[Running]:
        """The loaded models, the one that stays longest first. One in use, or kept forever, expires its
        keep-alive from now."""
        out = []
        for loaded in self.pool.loaded():
            model = await self.model(loaded.entry)
            if loaded.expires_at is not None:
                expires = loaded.expires_at
            else:
                keep = loaded.keep_alive_ns
                expires = time.time() + (FOREVER_NS if keep < 0 else keep) / 1e9
            n_ctx = loaded.runner.n_ctx
            out.append(Running(model, loaded.entry.size + model.kv_bytes(n_ctx), n_ctx, expires))
        return sorted(out, key=lambda r: r.expires_at, reverse=True)

    # -- the store -----------------------------------------------------------------------------------------------
    def copy(self, source: Model, destination: names.ModelName) -> None:
        self.store.copy(source.entry.name, destination)

    async def delete(self, model: Model) -> None:
        """Unloads and removes a model; its blobs go once no model uses them."""
        await self.pool.unload(model.entry)
        self.store.delete(model.entry.name)
        await asyncio.to_thread(self.store.prune)

    def check_create(self, req: mpb.CreateModelRequest) -> names.ModelName:
        return self._creation.check(req)

    def create(self, req: mpb.CreateModelRequest) -> AsyncGenerator[Progress, None]:
        return self._creation.create(req)

    def pull(self, name: str) -> AsyncGenerator[Progress, None]:
        parse_name(name)
        return catalog.pull(self.store, name.strip(), self.jobs)

    def blob_size(self, text: str) -> int:
        """The size of the blob "sha256:<hex>" names (404 if there is none); its wait for a create starts again."""
        digest = parse_digest(text)
        if not self.store.has_blob(digest):
            raise GenerateError(Kind.MODEL_NOT_FOUND, f'blob "sha256:{digest}" not found', "digest")
        self.store.touch(digest)               # its create is coming: it waits for it afresh
        return self.store.blob_path(digest).stat().st_size

    async def write_blob(self, text: str, chunks: Callable[[], AsyncIterator[bytes]]) -> tuple[bool, int]:
        """(created, size) of the blob "sha256:<hex>", written from `chunks()` unless it is there already."""
        digest = parse_digest(text)
        if self.store.has_blob(digest):
            self.store.touch(digest)
            return False, self.store.blob_path(digest).stat().st_size
        try:
            size = await self.store.write_blob_async(chunks(), digest, self._settings.max_blob_bytes)
        except DigestMismatch as exc:
            raise invalid(f'digest mismatch, expected "sha256:{exc.expected}", got "sha256:{exc.got}"',
                          "digest") from None
        return True, size
