"""The model store: a directory of blobs named by their SHA-256, and a manifest of model names.

Names are looked up in the manifest (case-insensitively, Ollama's grammar); they are never joined into a
filesystem path. A model is its weights blob (GGUF) plus Modelfile layers kept in the manifest (template,
system message, parameters, MESSAGE turns, licenses) and the blobs of its LoRA adapters and vision projector.
Models made from another share its blobs. A blob is written to a temporary file while it is hashed and only
renamed into place once its digest is known (and matches the one expected), so a reader never sees half a
blob, and an interrupted write leaves nothing behind.

The store heals (`heal`, at start-up): the temporary files of writes that a killed process left (a writer holds
a lock on its file, so another process's live upload is never taken for one) and quantizers' work folders go,
and so do blobs no model uses (`prune`, also after every create and delete). An uploaded blob waits
UNUSED_BLOB_SECONDS for the create that uses it (checking or uploading it again restarts the wait), and a blob a
running create or pull holds (`hold`) is never pruned.
Filled from the command line by `python -m service.store_cli` (service/store_cli.py).
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime as dt
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from common import names
from common.modelfile import MESSAGE_ROLES
from service.errors import GenerateError, Kind, invalid
from service.models.gguf import read_metadata

log = logging.getLogger(__name__)
_DIGEST = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")
_CHUNK = 1 << 20
UNUSED_BLOB_SECONDS = 3600.0         # how long a blob no model uses is kept (an upload waiting for its create)
PARTIAL_PREFIX = ".partial-"         # a blob being written
WORK_PREFIX = "quantize-"            # a quantizer's work folder


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class ReadOnlyStore(GenerateError):
    """The store cannot be changed (a read-only image or volume)."""

    def __init__(self) -> None:
        super().__init__(Kind.STORE_READ_ONLY, "the model store is read-only")


class StoreFull(GenerateError):
    """The store's disk is full."""

    def __init__(self) -> None:
        super().__init__(Kind.STORE_FULL, "there is no space left in the model store")


class DigestMismatch(ValueError):
    """Bytes whose SHA-256 is not the one expected."""

    def __init__(self, expected: str, got: str):
        super().__init__(f"checksum mismatch: expected sha256 {expected}, got {got}")
        self.expected, self.got = expected, got


def parse_digest(text: str) -> str:
    """The 64 lower-case hex digits of "sha256:<hex>" (or Ollama's on-disk "sha256-<hex>"); 400 otherwise."""
    match = _DIGEST.fullmatch(text)
    if match is None:
        raise invalid("invalid digest format", "digest")
    return match.group(1).lower()


@contextmanager
def _writable() -> Iterator[None]:
    """OS errors of a write as the store's errors: read-only, full."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise ReadOnlyStore() from exc
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StoreFull() from exc
        raise


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """One installed model."""

    name: names.ModelName
    path: Path                      # the weights blob
    digest: str                     # its SHA-256, hex
    size: int                       # bytes of all its blobs
    modified_at: str
    # Ollama Modelfile layers: a Go template, a system message, default options, MESSAGE turns, licenses.
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] = dataclasses.field(default_factory=dict)
    messages: tuple[dict[str, str], ...] = ()      # MESSAGE turns: {"role", "content"}
    license: tuple[str, ...] = ()
    adapters: tuple[Path, ...] = ()                # LoRA adapter blobs, applied at load
    projector: Path | None = None                  # the vision projector blob (models that can see)
    draft: Path | None = None                      # the draft model blob (speculative decoding)
    parent: str = ""                               # the model it was created from
    kind: str = "text"                             # "text" (llama.cpp), or "image" (a diffusion checkpoint)
    architecture: str = ""                         # an image model's, as create detected it ("flux2-klein", …)
    components: tuple[tuple[str, Path], ...] = ()  # an image model's separate parts: (role, blob) ("vae", "llm", …)

    @property
    def key(self) -> str:
        return self.name.key

    @property
    def files(self) -> tuple[Path, tuple[Path, ...], Path | None, Path | None, tuple[tuple[str, Path], ...]]:
        """The blobs a load reads: weights, adapters, projector, draft, components (a change means a reload)."""
        return self.path, self.adapters, self.projector, self.draft, self.components


class ModelStore:
    """Installed models under one directory."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._blobs = self.root / "blobs"
        self._manifest = self.root / "manifest.json"
        self._metadata: dict[Path, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._held: collections.Counter[str] = collections.Counter()     # digests running creates and pulls hold

    # -- blobs -------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        """Where the blob of this SHA-256 (hex) is, or would be."""
        return self._blobs / ("sha256-" + digest)

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def touch(self, digest: str) -> None:
        """Restarts an unused blob's wait (a client checked or uploaded it: its create is coming)."""
        with contextlib.suppress(OSError):
            os.utime(self.blob_path(digest))

    @contextmanager
    def hold(self) -> Iterator[Callable[[str], None]]:
        """For a create or a pull: the blobs passed to the function it yields are not pruned until it ends."""
        held: list[str] = []

        def add(digest: str) -> None:
            with self._lock:
                self._held[digest] += 1
            held.append(digest)
        try:
            yield add
        finally:
            with self._lock:
                self._held.subtract(held)
                self._held += collections.Counter()         # drops the zeros

    def heal(self) -> None:
        """Removes what killed writers left (temporary blobs, quantizers' work folders), then prunes."""
        for path in [*(self._blobs.glob(PARTIAL_PREFIX + "*") if self._blobs.is_dir() else ()),
                     *(self.root.glob(WORK_PREFIX + "*") if self.root.is_dir() else ())]:
            if _abandoned(path):
                log.info("store: removing %s, left by a write that did not finish", path.name)
                with contextlib.suppress(OSError):
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
        self.prune()

    def prune(self, unused_seconds: float = UNUSED_BLOB_SECONDS) -> list[str]:
        """Removes the blobs no model uses that have waited `unused_seconds` and that nothing holds; their
        digests."""
        if not self._blobs.is_dir():
            return []
        removed = []
        now = time.time()
        with self._lock:
            used = {d for r in self._read().values() for d in blobs_of(r)} | set(self._held)
            for path in self._blobs.glob("sha256-*"):
                digest = path.name[len("sha256-"):]
                try:
                    if digest in used or now - path.stat().st_mtime < unused_seconds:
                        continue
                    path.unlink()
                except OSError:
                    continue
                self._metadata.pop(path, None)
                removed.append(digest)
        if removed:
            log.info("store: pruned %d blob(s) no model uses", len(removed))
        return removed

    def write_blob(self, source: Readable, expected_sha256: str | None = None,
                   progress: Callable[[int], None] | None = None) -> tuple[str, int]:
        """Streams `source` into a blob, hashing it; (digest, size). DigestMismatch (nothing kept) when an
        expected digest is given and not met."""
        with _BlobWriter(self) as writer:
            while chunk := source.read(_CHUNK):
                writer.feed(chunk)
                if progress is not None:
                    progress(writer.size)
            return writer.commit(expected_sha256)

    def write_file(self, path: Path) -> str:
        """A local file copied into a blob; its digest."""
        with open(path, "rb") as f:
            return self.write_blob(f)[0]

    async def write_blob_async(self, chunks: AsyncIterator[bytes], expected_sha256: str, max_bytes: int) -> int:
        """An upload: `chunks` as they arrive, hashed and written (off the event loop); its size. DigestMismatch
        (nothing kept) when the bytes are not those of `expected_sha256`; TOO_LARGE past `max_bytes`."""
        with _BlobWriter(self) as writer:
            async for chunk in chunks:
                if writer.size + len(chunk) > max_bytes:
                    raise GenerateError(Kind.TOO_LARGE, f"blob larger than the limit of {max_bytes} bytes")
                await asyncio.to_thread(writer.feed, chunk)
            _, size = await asyncio.to_thread(writer.commit, expected_sha256)
            return size

    # -- the manifest ------------------------------------------------------------
    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            return json.loads(self._manifest.read_text())["models"]
        except FileNotFoundError:
            return {}

    def _write(self, models: dict[str, dict[str, Any]]) -> None:
        with _writable():
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = self._manifest.with_suffix(".tmp")
            tmp.write_text(json.dumps({"models": models}, indent=1))
            os.replace(tmp, self._manifest)

    def _entry(self, record: dict[str, Any]) -> ModelEntry:
        projector = record.get("projector")
        return ModelEntry(
            name=names.parse(record["name"]),
            path=self.blob_path(record["digest"]),
            digest=record["digest"],
            size=record["size"],
            modified_at=record["modified_at"],
            template=record.get("template"),
            system=record.get("system"),
            parameters=record.get("parameters") or {},
            messages=tuple(record.get("messages") or ()),
            license=tuple(record.get("license") or ()),
            adapters=tuple(self.blob_path(d) for d in record.get("adapters") or ()),
            projector=self.blob_path(projector) if projector else None,
            draft=self.blob_path(record["draft"]) if record.get("draft") else None,
            parent=record.get("parent", ""),
            kind=record.get("kind", "text"),
            architecture=record.get("architecture", ""),
            components=tuple((role, self.blob_path(d)) for role, d in sorted((record.get("components") or {}).items())),
        )

    def get(self, name: names.ModelName) -> ModelEntry | None:
        """The installed model of that name, or None."""
        record = self._read().get(name.key)
        return None if record is None else self._entry(record)

    def record(self, name: names.ModelName) -> dict[str, Any] | None:
        """The manifest record of a model (what create builds on)."""
        return self._read().get(name.key)

    def entries(self) -> list[ModelEntry]:
        return [self._entry(r) for r in self._read().values()]

    def metadata(self, path: Path) -> dict[str, Any]:
        """The GGUF metadata of a blob (read once; reading a file can take a while: see `read_metadata`)."""
        with self._lock:
            if path not in self._metadata:
                self._metadata[path] = read_metadata(path)
            return self._metadata[path]

    async def read_metadata(self, path: Path) -> dict[str, Any]:
        """`metadata`, read off the event loop when it is not known yet."""
        cached = self._metadata.get(path)
        return cached if cached is not None else await asyncio.to_thread(self.metadata, path)

    def add(self, name: str, digest: str, **layers: Any) -> ModelEntry:
        """Adds (or replaces) a model: its weights blob and its layers (`adapters` and `projector` by digest)."""
        parsed = names.parse(name)
        record = {"name": parsed.short, "digest": digest,
                  "size": sum(self.blob_path(d).stat().st_size for d in set(blobs_of({"digest": digest, **layers}))),
                  "modified_at": dt.datetime.now(dt.UTC).isoformat(), **{k: v for k, v in layers.items() if v}}
        with self._lock:
            models = self._read()
            replaced = models.get(parsed.key)
            models[parsed.key] = record
            self._write(models)
            if replaced is not None:
                self._drop_unused(replaced, models)
        return self._entry(record)

    def copy(self, source: names.ModelName, destination: names.ModelName) -> ModelEntry:
        """Adds `destination` as another name for the model `source` (same blobs)."""
        with self._lock:
            models = self._read()
            record = dict(models[source.key], name=destination.short,
                          modified_at=dt.datetime.now(dt.UTC).isoformat())
            models[destination.key] = record
            self._write(models)
        return self._entry(record)

    def delete(self, name: names.ModelName) -> None:
        """Removes a name; its blobs go too once no model uses them."""
        with self._lock:
            models = self._read()
            record = models.pop(name.key)
            self._write(models)
            self._drop_unused(record, models)

    def _drop_unused(self, record: dict[str, Any], models: dict[str, dict[str, Any]]) -> None:
        """Removes the blobs of a deleted or replaced manifest record that no model uses any more."""
        used = {d for r in models.values() for d in blobs_of(r)} | set(self._held)
        for digest in set(blobs_of(record)) - used:
            with _writable():
                self.blob_path(digest).unlink(missing_ok=True)

    def import_file(self, name: str, path: Path, *, template: str | None = None, system: str | None = None,
                    parameters: dict[str, Any] | None = None, messages: list[dict[str, str]] | None = None,
                    progress: Callable[[int], None] | None = None, projector: Path | None = None) -> ModelEntry:
        """Copies a local GGUF file (and its vision `projector`) into the store under `name`; `progress` gets the
        bytes copied so far."""
        digests = []
        for source in [path] + ([projector] if projector else []):
            with open(source, "rb") as f:
                if f.read(4) != b"GGUF":
                    raise ValueError(f"{source} is not a GGUF file")
                f.seek(0)
                digests.append(self.write_blob(f, progress=progress)[0])
        check_messages(messages or [])
        return self.add(name, digests[0], template=template, system=system, parameters=parameters,
                        messages=[{"role": m["role"], "content": m["content"]} for m in messages or ()],
                        projector=digests[1] if projector else None)


class _BlobWriter:
    """A blob being written: a temporary file in the blob folder, hashed as it grows, renamed to its digest by
    commit(), removed if it is left without one."""

    def __init__(self, store: ModelStore):
        self._store = store
        with _writable():
            store._blobs.mkdir(parents=True, exist_ok=True)
            self._file = tempfile.NamedTemporaryFile(dir=store._blobs, delete=False, prefix=PARTIAL_PREFIX)
        fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)     # this write is alive (see ModelStore.heal)
        self._hash = hashlib.sha256()
        self.size = 0

    def __enter__(self) -> _BlobWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()
        if os.path.exists(self._file.name):
            os.unlink(self._file.name)

    def feed(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        with _writable():
            self._file.write(chunk)
        self.size += len(chunk)

    def commit(self, expected_sha256: str | None) -> tuple[str, int]:
        digest = self._hash.hexdigest()
        if expected_sha256 and digest != expected_sha256:
            raise DigestMismatch(expected_sha256, digest)
        with _writable():
            self._file.flush()
            os.fsync(self._file.fileno())
            os.chmod(self._file.name, 0o644)        # readable by a service running as another user
            os.replace(self._file.name, self._store.blob_path(digest))
        return digest, self.size


def lock_alive(path: Path) -> int:
    """Marks a work folder as in use for as long as the returned descriptor stays open (see ModelStore.heal)."""
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _abandoned(path: Path) -> bool:
    """Whether no live process holds the write lock of this temporary file or work folder."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def blobs_of(record: dict[str, Any]) -> list[str]:
    """The blobs a model's record names: weights, adapters, projector, draft, components."""
    return [record["digest"], *(record.get("adapters") or ()),
            *(record[key] for key in ("projector", "draft") if record.get(key)),
            *(record.get("components") or {}).values()]


def check_messages(messages: list[dict[str, str]]) -> None:
    if any(m.get("role") not in MESSAGE_ROLES or not isinstance(m.get("content"), str) for m in messages):
        raise ValueError(f"a MESSAGE needs a role ({', '.join(MESSAGE_ROLES)}) and text")
