"""Ollama's Modelfile: read by `gengate create -f`, written by /api/show.

    FROM smollm2:135m            # or a path to a GGUF file
    PARAMETER temperature 0.7
    PARAMETER stop "<end_of_turn>"
    TEMPLATE \"\"\"{{ .Prompt }}\"\"\"
    SYSTEM You are a pirate.
    MESSAGE user Hi
    LICENSE Apache-2.0
    ADAPTER ./lora.gguf

As Ollama's parser (parser/parser.go): commands are case-insensitive; a value runs to the end of its line, or
spans lines inside \"\"\"...\"\"\" or "..."; `#` starts a comment only at the start of a line; a PARAMETER's
type is its option's (repeated `stop` lines make a list); a MESSAGE role is system, user or assistant.
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from gengate.v1 import generate_pb2 as pb

MESSAGE_ROLES = ("system", "user", "assistant", "tool")
_COMMANDS = ("from", "license", "template", "system", "adapter", "parameter", "message")
# Parameters Ollama no longer uses: dropped, as its parser drops them.
_DEPRECATED = {"penalize_newline", "low_vram", "f16_kv", "logits_all", "vocab_only", "use_mlock", "mirostat",
               "mirostat_tau", "mirostat_eta", "tfs_z", "numa"}


class ModelfileError(ValueError):
    """A Modelfile that does not parse (the message says where)."""


@dataclasses.dataclass
class Modelfile:
    from_: str = ""
    more_from: list[str] = dataclasses.field(default_factory=list)    # FROM lines after the first (files)
    adapters: list[str] = dataclasses.field(default_factory=list)
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] = dataclasses.field(default_factory=dict)
    messages: list[dict[str, str]] = dataclasses.field(default_factory=list)
    license: list[str] = dataclasses.field(default_factory=list)


def _unquote(value: str, line: int) -> str:
    for mark in ('"""', '"'):
        if value.startswith(mark):
            if len(value) < 2 * len(mark) or not value.endswith(mark):
                raise ModelfileError(f"(line {line}): unexpected EOF")
            return value[len(mark):-len(mark)]
    return value


def _commands(text: str) -> list[tuple[int, str, str]]:
    """(line, command, raw value) for each command; quoted values may span lines."""
    out: list[tuple[int, str, str]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        command, _, value = stripped.partition(" ")
        if "\t" in command:
            command, _, rest = command.partition("\t")
            value = rest + (" " + value if value else "")
        value = value.strip()
        start = i
        for mark in ('"""', '"'):
            if value.startswith(mark) and (len(value) < 2 * len(mark) or not value.endswith(mark)):
                while i < len(lines) and not lines[i].rstrip().endswith(mark):
                    value += "\n" + lines[i]
                    i += 1
                if i < len(lines):
                    value += "\n" + lines[i].rstrip()
                    i += 1
                break
        out.append((start, command.lower(), value))
    return out


def _typed(key: str, value: str, line: int) -> Any:
    field = pb.Options.DESCRIPTOR.fields_by_name.get(key)
    if field is None:
        return value
    try:
        if field.type in (field.TYPE_INT32, field.TYPE_INT64):
            return int(value)
        if field.type in (field.TYPE_FLOAT, field.TYPE_DOUBLE):
            return float(value)
        if field.type == field.TYPE_BOOL:
            if value.lower() not in ("1", "t", "true", "0", "f", "false"):
                raise ValueError(value)
            return value.lower() in ("1", "t", "true")
    except ValueError:
        kind = {field.TYPE_BOOL: "bool", field.TYPE_FLOAT: "float", field.TYPE_DOUBLE: "float"}.get(field.type, "int")
        raise ModelfileError(f"(line {line}): invalid {kind} value [{value}]") from None
    return value


def parse(text: str) -> Modelfile:
    mf = Modelfile()
    for line, command, raw in _commands(text):
        if command not in _COMMANDS:
            raise ModelfileError(f"(line {line}): command must be one of "
                                 + ", ".join(f'"{c}"' for c in _COMMANDS))
        if command == "parameter":
            key, _, value = raw.partition(" ")
            if not key or not value.strip():
                raise ModelfileError(f"(line {line}): PARAMETER needs a name and a value")
            if key in _DEPRECATED:
                continue
            typed = _typed(key, _unquote(value.strip(), line), line)
            if key == "stop":
                mf.parameters.setdefault("stop", []).append(typed)
            else:
                mf.parameters[key] = typed
        elif command == "message":
            role, _, content = raw.partition(" ")
            if role not in MESSAGE_ROLES:
                raise ModelfileError(f"(line {line}): message role must be one of "
                                     + ", ".join(f'"{r}"' for r in MESSAGE_ROLES))
            mf.messages.append({"role": role, "content": _unquote(content.strip(), line)})
        else:
            value = _unquote(raw, line)
            if command == "from":
                if mf.from_:
                    mf.more_from.append(value)
                else:
                    mf.from_ = value
            elif command == "adapter":
                mf.adapters.append(value)
            elif command == "license":
                mf.license.append(value)
            else:
                setattr(mf, command, value)
    if not mf.from_:
        raise ModelfileError("no FROM line")
    return mf


def quote(text: str) -> str:
    """A value as Ollama writes it in a Modelfile: in quotes when it holds a newline or starts or ends with a
    space (in triple quotes when it holds a quote)."""
    if "\n" in text or text.startswith(" ") or text.endswith(" "):
        return f'"""{text}"""' if '"' in text else f'"{text}"'
    return text


def message_arg(text: str) -> dict[str, str]:
    """A command line's MESSAGE, "ROLE:TEXT" (the Modelfile's `MESSAGE role text`)."""
    role, sep, content = text.partition(":")
    if not sep or role not in MESSAGE_ROLES:
        raise argparse.ArgumentTypeError(f"expected ROLE:TEXT with ROLE one of {', '.join(MESSAGE_ROLES)}")
    return {"role": role, "content": content}
