"""Process settings: command-line flags, then environment variables, then defaults.

Each process has one settings object, a frozen dataclass whose fields carry their
environment variable and help text; `load` builds it. The README lists every variable.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def setting(default: Any, env: str, help: str, choices: Sequence[str] = ()) -> Any:
    """Declares one setting of a settings dataclass (`choices`: the values a text setting may take)."""
    return dataclasses.field(default=default, metadata={"env": env, "help": help, "choices": tuple(choices)})


def _convert(kind: type, raw: str, name: str) -> Any:
    if kind is bool:
        value = raw.strip().lower()
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"{name}: expected a boolean, got {raw!r}")
    if kind is int:
        return int(raw)
    if kind is float:
        return float(raw)
    if kind is Path:
        return Path(raw).expanduser()
    return raw


def load(cls: type[T], argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> T:
    """Builds `cls` (a dataclass of setting() fields) from flags (`--field-name`), then environment variables, then
    defaults."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    fields = dataclasses.fields(cls)      # type: ignore[arg-type]
    hints = {f.name: f.type for f in fields}
    types = {"bool": bool, "int": int, "float": float, "Path": Path, "str": str}
    parser = argparse.ArgumentParser(prog=cls.__module__.split(".")[0], description=cls.__doc__)
    for f in fields:
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None, metavar=f.metadata["env"],
                            help=f"{f.metadata['help']} (env {f.metadata['env']}, default {f.default!r})")
    args = parser.parse_args(argv)
    values = {}
    for f in fields:
        kind = types[str(hints[f.name])]
        raw = getattr(args, f.name)
        if raw is None:
            raw = env.get(f.metadata["env"])
        if raw is not None:
            try:
                values[f.name] = _convert(kind, raw, f.name)
            except ValueError as exc:
                parser.error(f"{f.metadata['env']}: {exc}")
            if f.metadata.get("choices") and values[f.name] not in f.metadata["choices"]:
                parser.error(f"{f.metadata['env']}: expected one of {', '.join(f.metadata['choices'])}, got {raw!r}")
    return cls(**values)
