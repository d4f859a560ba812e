"""The ModelService servicer: Ollama's tags, show, ps, copy, delete, version, pull, push, create and blobs over
the store, the catalog and the pool. (Errors, request ids, metrics and access logs: service.api.observe.)"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import importlib.metadata
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2

from common import names
from gengate.v1 import generate_pb2 as pb
from gengate.v1 import model_pb2 as mpb
from gengate.v1 import model_pb2_grpc as mpb_grpc
from service.engines.pool import FOREVER_NS, ModelPool
from service.errors import GenerateError, Kind, invalid
from service.generation.admission import ModelJobs
from service.models import catalog
from service.models.creation import Creation
from service.models.gguf import LICENSE_TEXT
from service.models.model import Model
from service.models.store import DigestMismatch, ModelStore, parse_digest

log = logging.getLogger(__name__)


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def _modified(iso: str) -> timestamp_pb2.Timestamp:
    return _timestamp(dt.datetime.fromisoformat(iso).timestamp())


# The version of Ollama's API gengate answers /api/version with: clients check it before they use a feature
# (several want 0.6.4 or later); 0.14.0 is the release with every route gengate serves (/v1/messages last).
OLLAMA_API_VERSION = "0.14.0"
NO_REGISTRY = ("gengate has no registry to push to: its models come from its catalog (pull) and from files "
               "uploaded to it (create)")


def _streamed(replies: AsyncIterator[Any], stream: bool) -> AsyncIterator[Any]:
    """All the replies, or (stream false) only the last: Ollama's `stream` for progress."""
    if stream:
        return replies

    async def last() -> AsyncIterator[Any]:
        final = None
        async for reply in replies:
            final = reply
        if final is not None:
            yield final
    return last()


class ModelServicer(mpb_grpc.ModelServiceServicer):
    def __init__(self, store: ModelStore, pool: ModelPool, max_blob_bytes: int = 64 << 30, threads: int = 0,
                 jobs: ModelJobs | None = None):
        self._store = store
        self._pool = pool
        self._max_blob_bytes = max_blob_bytes
        self._jobs = jobs or ModelJobs()
        self._creation = Creation(store, self._jobs, threads)

    async def _model(self, text: str, *, required: str = "model is required", invalid_text: str | None = None,
               missing: str | None = None) -> Model:
        if not text.strip():
            raise invalid(required, "model")
        try:
            name = names.parse(text.strip())
        except names.InvalidName:
            raise invalid(invalid_text or "invalid model name", "model") from None
        entry = self._store.get(name)
        if entry is None or not entry.path.exists():
            raise GenerateError(Kind.MODEL_NOT_FOUND, missing or f"model '{text}' not found", "model")
        return Model(entry, await self._store.read_metadata(entry.path))

    async def ListModels(self, request, context):
        models = []
        for entry in sorted(self._store.entries(), key=lambda e: e.modified_at, reverse=True):
            if not entry.path.exists():
                log.warning("model %s: its file is missing from the store", entry.name.short)
                continue
            model = Model(entry, await self._store.read_metadata(entry.path))
            models.append(mpb.ModelSummary(
                name=entry.name.short, model=entry.name.short, modified_at=_modified(entry.modified_at),
                size=entry.size, digest=entry.digest, details=mpb.ModelDetails(**model.details()),
                capabilities=model.capabilities()))
        return mpb.ListModelsResponse(models=models)

    async def ShowModel(self, request, context):
        model = await self._model(request.model)
        entry = model.entry
        template = entry.template or model.chat_template or ""
        reply = mpb.ShowModelResponse(
            messages=[pb.Message(role=m["role"], content=m["content"]) for m in entry.messages],
            modelfile=model.modelfile(template), parameters=model.parameters_text(), template=template,
            system=entry.system or "", details=mpb.ModelDetails(**model.details()),
            model_info=_info(model.metadata, request.verbose),
            capabilities=model.capabilities(), modified_at=_modified(entry.modified_at),
            license="\n".join(entry.license) or str(model.metadata.get("general.license", "")))
        if entry.projector is not None:
            reply.projector_info.CopyFrom(_info(await self._store.read_metadata(entry.projector), request.verbose))
        return reply

    async def ListRunningModels(self, request, context):
        running = []
        for loaded in self._pool.loaded():
            model = Model(loaded.entry, await self._store.read_metadata(loaded.entry.path))
            if loaded.expires_at is not None:
                expires = loaded.expires_at
            else:
                keep = loaded.keep_alive_ns
                expires = time.time() + ((FOREVER_NS if keep < 0 else keep) / 1e9)
            running.append((expires, mpb.RunningModel(
                name=loaded.entry.name.short, model=loaded.entry.name.short,
                size=loaded.entry.size + model.kv_bytes(loaded.runner.n_ctx), size_vram=0,
                digest=loaded.entry.digest, details=mpb.ModelDetails(**model.details()),
                expires_at=_timestamp(expires), context_length=loaded.runner.n_ctx)))
        running.sort(key=lambda pair: pair[0], reverse=True)
        return mpb.ListRunningModelsResponse(models=[m for _, m in running])

    async def CopyModel(self, request, context):
        for field, value in (("source", request.source), ("destination", request.destination)):
            try:
                names.parse(value)
            except names.InvalidName:
                raise invalid(f'{field} "{value}" is invalid', field) from None
        source = await self._model(request.source, required=f'source "{request.source}" is invalid',
                             missing=f'model "{request.source}" not found')
        self._store.copy(source.entry.name, names.parse(request.destination))
        return mpb.CopyModelResponse()

    async def DeleteModel(self, request, context):
        model = await self._model(request.model, required=f'name "{request.model}" is invalid',
                            invalid_text=f'name "{request.model}" is invalid')
        await self._pool.unload(model.entry)
        self._store.delete(model.entry.name)
        await asyncio.to_thread(self._store.prune)
        return mpb.DeleteModelResponse()

    async def GetVersion(self, request, context):
        return mpb.GetVersionResponse(version=OLLAMA_API_VERSION, gengate_version=importlib.metadata.version("gengate"))

    # -- the model lifecycle -------------------------------------------------------------------------------------
    async def PullModel(self, request, context):
        try:
            names.parse(request.model.strip())
        except names.InvalidName:
            raise invalid("invalid model name", "model") from None
        stream = request.stream if request.HasField("stream") else True
        async with contextlib.aclosing(catalog.pull(self._store, request.model.strip(), self._jobs)) as steps:
            async for step in _streamed(steps, stream):
                yield mpb.PullModelResponse(**dataclasses.asdict(step))

    async def PushModel(self, request, context):
        if not request.model.strip():
            raise invalid("model is required", "model")
        raise GenerateError(Kind.NO_REGISTRY, NO_REGISTRY)
        yield  # an async generator (a stream of PushModelResponse)

    async def CreateModel(self, request, context):
        stream = request.stream if request.HasField("stream") else True
        self._creation.check(request)          # its 400s before the stream starts, whatever `stream` says
        async with contextlib.aclosing(self._creation.create(request)) as steps:
            async for step in _streamed(steps, stream):
                yield mpb.CreateModelResponse(**dataclasses.asdict(step))

    async def CheckBlob(self, request, context):
        digest = parse_digest(request.digest)
        if not self._store.has_blob(digest):
            raise GenerateError(Kind.MODEL_NOT_FOUND, f'blob "sha256:{digest}" not found', "digest")
        self._store.touch(digest)              # its create is coming: it waits for it afresh
        return mpb.CheckBlobResponse(size=self._store.blob_path(digest).stat().st_size)

    async def CreateBlob(self, request_iterator, context):
        first = await anext(aiter(request_iterator), None)
        if first is None:
            raise invalid("missing request body")
        digest = parse_digest(first.digest)
        if self._store.has_blob(digest):
            self._store.touch(digest)
            return mpb.CreateBlobResponse(created=False, size=self._store.blob_path(digest).stat().st_size)

        async def chunks() -> AsyncIterator[bytes]:
            yield first.data
            async for message in request_iterator:
                yield message.data
        try:
            size = await self._store.write_blob_async(chunks(), digest, self._max_blob_bytes)
        except DigestMismatch as exc:
            raise invalid(f'digest mismatch, expected "sha256:{exc.expected}", got "sha256:{exc.got}"',
                          "digest") from None
        return mpb.CreateBlobResponse(created=True, size=size)


def _info(metadata: dict[str, Any], verbose: bool) -> struct_pb2.Struct:
    """GGUF metadata for /api/show: long arrays (token lists) only when verbose, as their length."""
    info = struct_pb2.Struct()
    info.update({k: v for k, v in metadata.items() if k != LICENSE_TEXT  # it is the `license` field
                 and (verbose or not (isinstance(v, dict) and "array_length" in v))})
    return info
