"""The ModelService servicer: Ollama's tags, show, ps, copy, delete, version, pull, push, create and blobs, each a
translation between protobuf and the Models domain object (service.generation.models). (Errors, request ids,
metrics and access logs: service.api.observe.)"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import importlib.metadata
from collections.abc import AsyncIterator
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2

from common import requests
from gengate.v1 import generate_pb2 as pb
from gengate.v1 import model_pb2 as mpb
from gengate.v1 import model_pb2_grpc as mpb_grpc
from service.errors import GenerateError, Kind, invalid
from service.generation.models import Models, parse_name
from service.models.gguf import LICENSE_TEXT
from service.models.model import Model


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
    def __init__(self, models: Models):
        self._models = models

    async def ListModels(self, request, context):
        return mpb.ListModelsResponse(models=[mpb.ModelSummary(
            name=m.entry.name.short, model=m.entry.name.short, modified_at=_modified(m.entry.modified_at),
            size=m.entry.size, digest=m.entry.digest, details=mpb.ModelDetails(**m.details()),
            capabilities=m.capabilities()) for m in await self._models.installed()])

    async def ShowModel(self, request, context):
        model = await self._models.get(request.model)
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
            reply.projector_info.CopyFrom(_info(await self._models.store.read_metadata(entry.projector),
                                                request.verbose))
        if entry.draft is not None:
            draft = Model(entry, await self._models.store.read_metadata(entry.draft))
            reply.draft.CopyFrom(mpb.ModelDetails(**{**draft.details(), "parent_model": ""}))
        reply.speculative_decoding = self._models.speculation(model)
        return reply

    async def ListRunningModels(self, request, context):
        return mpb.ListRunningModelsResponse(models=[mpb.RunningModel(
            name=r.model.entry.name.short, model=r.model.entry.name.short, size=r.size, size_vram=0,
            digest=r.model.entry.digest, details=mpb.ModelDetails(**r.model.details()),
            expires_at=_timestamp(r.expires_at), context_length=r.context_length,
            speculative_decoding=self._models.speculation(r.model))
            for r in await self._models.running()])

    async def CopyModel(self, request, context):
        for field, value in (("source", request.source), ("destination", request.destination)):
            parse_name(value, malformed=f'{field} "{value}" is invalid', field=field)
        source = await self._models.get(request.source, blank=f'source "{request.source}" is invalid',
                                        missing=f'model "{request.source}" not found')
        self._models.copy(source, parse_name(request.destination))
        return mpb.CopyModelResponse()

    async def DeleteModel(self, request, context):
        name_error = f'name "{request.model}" is invalid'
        await self._models.delete(await self._models.get(request.model, blank=name_error, malformed=name_error))
        return mpb.DeleteModelResponse()

    async def GetVersion(self, request, context):
        return mpb.GetVersionResponse(version=OLLAMA_API_VERSION, gengate_version=importlib.metadata.version("gengate"))

    # -- the model lifecycle -------------------------------------------------------------------------------------
    async def PullModel(self, request, context):
        async with contextlib.aclosing(self._models.pull(request.model)) as steps:
            async for step in _streamed(steps, requests.streams(request)):
                yield mpb.PullModelResponse(**dataclasses.asdict(step))

    async def PushModel(self, request, context):
        if not request.model.strip():
            raise invalid("model is required", "model")
        raise GenerateError(Kind.NO_REGISTRY, NO_REGISTRY)
        yield  # an async generator (a stream of PushModelResponse)

    async def CreateModel(self, request, context):
        self._models.check_create(request)     # its 400s before the stream starts, whatever `stream` says
        async with contextlib.aclosing(self._models.create(request)) as steps:
            async for step in _streamed(steps, requests.streams(request)):
                yield mpb.CreateModelResponse(**dataclasses.asdict(step))

    async def CheckBlob(self, request, context):
        return mpb.CheckBlobResponse(size=self._models.blob_size(request.digest))

    async def CreateBlob(self, request_iterator, context):
        first = await anext(aiter(request_iterator), None)
        if first is None:
            raise invalid("missing request body")

        async def chunks() -> AsyncIterator[bytes]:
            yield first.data
            async for message in request_iterator:
                yield message.data
        created, size = await self._models.write_blob(first.digest, chunks)
        return mpb.CreateBlobResponse(created=created, size=size)


def _info(metadata: dict[str, Any], verbose: bool) -> struct_pb2.Struct:
    """GGUF metadata for /api/show: long arrays (token lists) only when verbose, as their length."""
    info = struct_pb2.Struct()
    info.update({k: v for k, v in metadata.items() if k != LICENSE_TEXT  # it is the `license` field
                 and (verbose or not (isinstance(v, dict) and "array_length" in v))})
    return info
