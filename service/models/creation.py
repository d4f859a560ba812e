"""The Create pipeline (Ollama's POST /api/create), in Ollama's order, as progress steps.

Checked before anything is sent (so they are statuses, 400s over HTTP): file names (relative paths), digests,
the new model's name, and that there is something to build on (`from` or `files`). Then, step by step:

- `from`: an installed model, whose blobs and layers the new one takes ("using existing layer sha256:...");
  a catalog model that is not installed yet is pulled first, as Ollama pulls from its registry;
- `files`: uploaded GGUF blobs, each "parsing GGUF": checked (a GGUF, its tensor table inside the file) and
  sorted into the weights, a vision projector, or a LoRA adapter;
- `adapters`: LoRA GGUF blobs, applied when the model loads;
- `draft_files`: a draft model for speculative decoding (Ollama's DRAFT), a GGUF with the model's tokenizer;
- `quantize`: llama.cpp's quantizer, in a process of its own, from F32/F16/BF16 weights ("quantizing F16 model
  to Q4_K_M", "verifying conversion", then the new weights' "creating new layer sha256:..."); `draft_quantize`
  the same for the draft model;
- the Modelfile layers (template, system, license, parameters, messages): each "creating new layer sha256:..."
  with the digest of its content;
- "writing manifest", "success".

A create whose client leaves writes no manifest; a blob already written stays (as Ollama keeps layers) and is
shared by the next create that needs it.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import AsyncGenerator, Awaitable, Callable
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from common import golang, names
from common.modelfile import MESSAGE_ROLES
from gengate.v1 import generate_pb2 as pb
from gengate.v1 import model_pb2 as mpb
from service.chat import prompt
from service.errors import GenerateError, Kind, invalid
from service.models import catalog, checkpoint, quantize, tokenizer
from service.models.catalog import Progress
from service.models.gguf import GGUFError, kind_of, read_metadata
from service.models.jobs import ModelJobs, waiting_status
from service.models.model import NON_GENERATIVE
from service.models.store import WORK_PREFIX, ModelStore, blobs_of, lock_alive, parse_digest

NO_SOURCE = "neither 'from' or 'files' was specified"
DRAFT_QUANTIZE_ALONE = "--draft-quantize requires a DRAFT model"          # Ollama's words


@dataclasses.dataclass(frozen=True)
class Probes:
    """The engines' checks of uploaded files, each None or why the engine cannot use them (given by the service's
    composition root: models know no engine)."""

    projector: Callable[[Path, Path], str | None]                          # a vision projector with its model
    text: Callable[[Path], str | None]                                     # llama.cpp reads the model
    diffusion: Callable[[Path, dict[str, Path]], Awaitable[str | None]]    # stable-diffusion.cpp loads it
ZERO_DIGEST = "0" * 19                   # what Ollama puts in the digest of a quantizing step


def _valid_path(name: str) -> bool:
    """Go's fs.ValidPath: a relative, slash-separated path without empty, "." or ".." elements."""
    if name == ".":
        return True
    return bool(name) and all(part not in ("", ".", "..") for part in name.split("/"))


def _layer(status_digest: str, created: bool) -> Progress:
    return Progress(f"{'creating new' if created else 'using existing'} layer sha256:{status_digest}")


def _text_digest(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class Creation:
    """Runs CreateModel requests against the store."""

    def __init__(self, store: ModelStore, jobs: ModelJobs, threads: int, probes: Probes):
        self._store = store
        self._jobs = jobs
        self._threads = threads
        self._probes = probes

    def check(self, req: mpb.CreateModelRequest) -> names.ModelName:
        """What Ollama checks before it streams anything (400s)."""
        for name, digest in list(req.files.items()) + list(req.adapters.items()):
            if name in req.files and not _valid_path(name):
                raise invalid("file path must be relative", "files")
            if not digest:
                raise invalid("invalid digest format", "files")
        try:
            target = names.parse(req.model.strip())
        except names.InvalidName:
            raise invalid("invalid model name", "model") from None
        for name, digest in req.draft_files.items():
            if not _valid_path(name):
                raise invalid("file path must be relative", "draft_files")
            if not digest:
                raise invalid("invalid digest format", "draft_files")
        if req.draft_quantize and not req.draft_files:
            raise invalid(DRAFT_QUANTIZE_ALONE, "draft_quantize")
        if not getattr(req, "from") and not req.files:
            raise invalid(NO_SOURCE, "from")
        return target

    async def create(self, req: mpb.CreateModelRequest) -> AsyncGenerator[Progress, None]:
        target = self.check(req)
        with self._store.hold() as hold:
            async for step in self._create(req, target, hold):
                yield step
        await asyncio.to_thread(self._store.prune)

    async def _create(self, req: mpb.CreateModelRequest, target: names.ModelName,
                      hold: Callable[[str], None]) -> AsyncGenerator[Progress, None]:
        layers: dict[str, Any] = {}
        source = getattr(req, "from")
        for digest in [*req.files.values(), *req.adapters.values(), *req.draft_files.values()]:
            with contextlib.suppress(GenerateError):
                hold(parse_digest(digest))
        if source:
            async for step in self._from(source, layers):
                yield step
        else:
            async for step in self._files(req, layers):
                yield step
        for digest in blobs_of(layers):            # what the new model takes from `from`, until it is written
            hold(digest)
        if layers.get("kind") == "image":          # what only text models use: refused, not silently unused
            for field, given in (("adapters", req.adapters), ("template", req.template), ("system", req.system),
                                 ("messages", req.messages)):
                if given:
                    raise invalid(f"an image model takes no {field}", field)
        if not source and "projector" in layers:
            await asyncio.to_thread(self._check_projector, layers)
        for name in sorted(req.adapters):
            digest = self._blob(req.adapters[name], "adapters")
            if (await self._inspect(digest))[0] != "adapter":
                raise invalid(f"{name} is not a LoRA adapter", "adapters")
            layers.setdefault("adapters", [])
            if digest not in layers["adapters"]:
                layers["adapters"].append(digest)
            yield _layer(digest, created=False)
        if req.draft_files:                        # checked before any quantizing
            async for step in self._draft(req, layers):
                yield step
        if req.quantize:
            async for step in self._quantize(req.quantize, layers, "digest"):
                yield step
            hold(layers["digest"])
        if req.draft_quantize:
            async for step in self._quantize(req.draft_quantize, layers, "draft"):
                yield step
            hold(layers["draft"])
        async for step in self._text_layers(req, layers):
            yield step
        yield Progress("writing manifest")
        digest = layers.pop("digest")
        self._store.add(target.short, digest, **layers)
        yield Progress("success")

    # -- the weights ---------------------------------------------------------------------------------
    async def _from(self, source: str, layers: dict[str, Any]) -> AsyncGenerator[Progress, None]:
        try:
            parsed = names.parse(source.strip())
        except names.InvalidName:
            raise invalid("invalid model name", "from") from None
        record = self._store.record(parsed)
        if record is None or not self._store.has_blob(record["digest"]):
            # As Ollama pulls a model it does not have from its registry: from gengate's catalog.
            async for step in catalog.pull(self._store, source.strip(), self._jobs):
                if step.status != "success":
                    yield step
            record = self._store.record(parsed)
            assert record is not None
        for key in ("digest", "adapters", "projector", "draft", "template", "system", "parameters", "messages",
                    "license", "kind", "architecture", "components"):
            if record.get(key):
                layers[key] = record[key]
        layers["parent"] = parsed.short
        for digest in blobs_of(record):
            yield _layer(digest, created=False)
        for key in ("template", "system", "parameters", "messages", "license"):
            if record.get(key):
                yield _layer(_text_digest(record[key]), created=False)

    async def _files(self, req: mpb.CreateModelRequest, layers: dict[str, Any]) -> AsyncGenerator[Progress, None]:
        """The uploaded files, each sorted by what it holds: a text model's weights (llama.cpp), a vision
        projector, LoRA adapters, or a diffusion checkpoint and its separate components (named by role: vae, llm,
        clip_l, clip_g, t5xxl). Whichever engine it is for must load it: a file neither can is a 400 now."""
        inspected: list[tuple[str, str, str, str]] = []         # (name, digest, kind, architecture)
        for name in sorted(req.files):
            yield Progress("parsing GGUF")
            digest = self._blob(req.files[name], "files")
            inspected.append((name, digest, *await self._inspect(digest)))
        image = any(kind == "diffusion" for _, _, kind, _ in inspected)
        components: dict[str, str] = {}
        for name, digest, kind, architecture in inspected:
            role = checkpoint.role_of(name) if image else None   # roles name files only beside a checkpoint
            if role is not None and kind != "diffusion":
                components[role] = digest
            elif kind == "diffusion":
                if "digest" in layers:
                    raise invalid("more than one model among the files", "files")
                layers.update(digest=digest, kind="image", architecture=architecture)
            elif kind == "model":
                if "digest" in layers:
                    raise invalid("more than one model among the files", "files")
                layers["digest"] = digest
            elif kind == "projector":
                if "projector" in layers:
                    raise invalid("more than one vision projector among the files", "files")
                layers["projector"] = digest
            elif kind == "adapter":
                layers.setdefault("adapters", []).append(digest)
            else:
                raise invalid(f"{name}: a safetensors file that is not a diffusion checkpoint, nor one of its parts "
                              f"named by role ({', '.join(sorted(set(checkpoint.ROLES)))})", "files")
            yield _layer(digest, created=False)
        if "digest" not in layers:
            raise invalid("no model weights among the files", "files")
        weights = self._store.blob_path(layers["digest"])
        if layers.get("kind") == "image":
            if layers.get("projector") or layers.get("adapters"):
                raise invalid("an image model takes no vision projector or LoRA adapter", "files")
            layers["components"] = components
            problem = await self._probes.diffusion(
                weights, {role: self._store.blob_path(d) for role, d in components.items()})
        else:
            problem = await asyncio.to_thread(self._probes.text, weights)
        if problem:
            raise invalid(problem, "files")

    async def _draft(self, req: mpb.CreateModelRequest, layers: dict[str, Any]) -> AsyncGenerator[Progress, None]:
        """The draft model (Ollama's DRAFT): one GGUF model that shares the model's tokenizer, which speculative
        decoding runs ahead of the model to propose its next tokens. It replaces a draft taken with `from`."""
        if layers.get("kind") == "image":
            raise invalid("an image model takes no draft model", "draft_files")
        found: list[str] = []
        for name in sorted(req.draft_files):
            yield Progress("parsing GGUF")
            digest = self._blob(req.draft_files[name], "draft_files")
            kind, _ = await self._inspect(digest, "draft_files")
            if kind != "model":
                raise invalid(f"{name}: a draft is a GGUF model, not a {kind}", "draft_files")
            found.append(digest)
        if len(found) != 1:
            raise invalid("more than one model among the draft files", "draft_files")
        draft = found[0]
        model, drafter = self._store.blob_path(layers["digest"]), self._store.blob_path(draft)

        def compare() -> str | None:
            """Why the draft cannot draft for the model, or None."""
            if str(read_metadata(drafter).get("general.architecture", "")) in NON_GENERATIVE:
                return "the draft model writes no text (an encoder)"
            if drafter.stat().st_size > model.stat().st_size:
                return "the draft model is larger than the model: it would cost more than it saves"
            return tokenizer.difference(tokenizer.read(model), tokenizer.read(drafter))
        try:
            problem = await asyncio.to_thread(compare)
        except (GGUFError, OSError):
            raise invalid("supplied file was not in GGUF format", "draft_files") from None
        if problem:
            raise invalid(problem, "draft_files")
        problem = await asyncio.to_thread(self._probes.text, drafter)
        if problem:
            raise invalid(problem, "draft_files")
        layers["draft"] = draft
        yield _layer(draft, created=False)

    async def _inspect(self, digest: str, field: str = "files") -> tuple[str, str]:
        """(what an uploaded blob holds: "model", "projector", "adapter", "diffusion" or "component"; a diffusion
        checkpoint's architecture), its table checked to stay inside the file (off the event loop: the file is
        the client's)."""
        path = self._store.blob_path(digest)

        def read() -> tuple[str, str]:
            file_format, tensors = checkpoint.tensor_names(path)
            architecture = checkpoint.architecture(tensors)
            if architecture is not None:
                return "diffusion", architecture
            if file_format != "gguf":
                return "component", ""
            return kind_of(read_metadata(path)), ""
        try:
            return await asyncio.to_thread(read)
        except (ValueError, GGUFError):
            raise invalid("supplied file was not in GGUF format", field) from None

    def _check_projector(self, layers: dict[str, Any]) -> None:
        """Tries the projector with the model (the engine's probe, in a child process): one that cannot be used
        with it is refused now, with the reason."""
        problem = self._probes.projector(self._store.blob_path(layers["digest"]),
                                         self._store.blob_path(layers["projector"]))
        if problem:
            raise invalid(problem, "files")

    def _blob(self, text: str, field: str) -> str:
        digest = parse_digest(text)
        if not self._store.has_blob(digest):
            raise GenerateError(Kind.INVALID_ARGUMENT, f'blob "sha256:{digest}" not found: upload it first', field)
        return digest

    async def _quantize(self, text: str, layers: dict[str, Any], key: str) -> AsyncGenerator[Progress, None]:
        """Quantizes the weights (`key` "digest") or the draft model ("draft") to the type `text` names."""
        field = "quantize" if key == "digest" else "draft_quantize"
        if layers.get("kind") == "image":
            raise invalid("quantize is for text models: an image model is used as its checkpoint is", field)
        wanted = text.upper()
        file_type = quantize.TARGETS.get(wanted)
        if file_type is None:
            raise invalid(quantize.UNSUPPORTED.format(wanted), field)
        source = self._store.blob_path(layers[key])
        current = int((await asyncio.to_thread(read_metadata, source)).get("general.file_type", -1))
        if current == file_type:
            return
        if current not in quantize.SOURCES:
            raise invalid(quantize.NOT_FROM_FLOAT, field)
        step = f"quantizing {quantize.SOURCES[current]} {'model' if key == 'digest' else 'draft model'} to {wanted}"
        async for ahead in self._jobs.turn():
            yield Progress(waiting_status(ahead))
        try:
            with tempfile.TemporaryDirectory(prefix=WORK_PREFIX, dir=self._store.root) as tmp:
                alive = lock_alive(Path(tmp))
                try:
                    output = Path(tmp) / "model.gguf"
                    try:
                        async for done, total in quantize.quantize(source, output, file_type, current,
                                                                   self._threads):
                            yield Progress(step, ZERO_DIGEST, total, done)
                    except RuntimeError as exc:
                        raise GenerateError(Kind.INTERNAL, f"quantizing failed: {exc}") from None
                    yield Progress("verifying conversion")
                    digest = await asyncio.to_thread(self._store.write_file, output)
                finally:
                    os.close(alive)
        finally:
            self._jobs.done()
        layers[key] = digest
        yield _layer(digest, created=True)

    # -- the Modelfile layers ------------------------------------------------------------------------------
    async def _text_layers(self, req: mpb.CreateModelRequest, layers: dict[str, Any]
                           ) -> AsyncGenerator[Progress, None]:
        new: dict[str, Any] = {}
        if req.template:
            try:
                prompt.parse_go_template(req.template)
            except GenerateError as exc:
                raise invalid(f"template error: {exc.message}", "template") from None
            new["template"] = req.template
        if req.system:
            new["system"] = req.system
        if req.license:
            new["license"] = list(req.license)
        if req.HasField("parameters"):
            new["parameters"] = check_parameters(json_format.MessageToDict(req.parameters))
        if req.messages:
            new["messages"] = [_message(m, i) for i, m in enumerate(req.messages)]
        for key, value in new.items():
            layers[key] = value
            yield _layer(_text_digest(value), created=True)


def _message(m: pb.Message, i: int) -> dict[str, str]:
    if m.role not in MESSAGE_ROLES:
        raise invalid(f'message role must be one of {", ".join(golang.quote(r) for r in MESSAGE_ROLES)}',
                      f"messages[{i}].role")
    return {"role": m.role, "content": m.content}


def check_parameters(values: dict[str, Any]) -> dict[str, Any]:
    """Modelfile PARAMETERs: the options Ollama knows, each of its type (a wrong one would fail every request
    later); numbers that are whole stay integers. Unknown names are kept and ignored, as Ollama does."""
    fields = pb.Options.DESCRIPTOR.fields_by_name
    out: dict[str, Any] = {}
    for key, value in values.items():
        field = fields.get(key)
        if field is None:
            out[key] = value
        elif field.name == "stop":
            stops = [value] if isinstance(value, str) else value
            if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
                raise invalid('parameter "stop" must be a string or a list of strings', "parameters.stop")
            out[key] = stops
        elif field.type == field.TYPE_BOOL:
            if not isinstance(value, bool):
                raise invalid(f'parameter "{key}" must be a boolean', f"parameters.{key}")
            out[key] = value
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise invalid(f'parameter "{key}" must be a number', f"parameters.{key}")
        elif field.type in (field.TYPE_FLOAT, field.TYPE_DOUBLE):
            out[key] = value
        elif value != int(value):
            raise invalid(f'parameter "{key}" must be an integer', f"parameters.{key}")
        else:
            out[key] = int(value)
    return out
