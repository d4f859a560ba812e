"""Ollama's model-name grammar: [host/][namespace/]model[:tag] (types/model/name.go)."""
from __future__ import annotations

import dataclasses
import re

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}")
_NAMESPACE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}")
_MODEL_OR_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}")


class InvalidName(ValueError):
    """The text is not a model name."""


@dataclasses.dataclass(frozen=True)
class ModelName:
    """A parsed model name with Ollama's defaults filled in."""

    host: str
    namespace: str
    model: str
    tag: str

    def __str__(self) -> str:
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    @property
    def key(self) -> str:
        """The lookup key: names match case-insensitively."""
        return str(self).lower()

    @property
    def short(self) -> str:
        """The name as Ollama lists it: defaults left out, e.g. "smollm2:135m"."""
        prefix = ""
        if self.host != DEFAULT_HOST:
            prefix = f"{self.host}/{self.namespace}/"
        elif self.namespace != DEFAULT_NAMESPACE:
            prefix = f"{self.namespace}/"
        return f"{prefix}{self.model}:{self.tag}"


def parse(text: str) -> ModelName:
    """Parses a model name; raises InvalidName when it breaks the grammar."""
    rest = text
    if "://" in rest:
        rest = rest.split("://", 1)[1]
    tag = DEFAULT_TAG
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1:]
        if not _MODEL_OR_TAG.fullmatch(tag):
            raise InvalidName(text)
    parts = rest.split("/")
    if len(parts) > 3:
        raise InvalidName(text)
    host, namespace = DEFAULT_HOST, DEFAULT_NAMESPACE
    if len(parts) == 3:
        host, namespace, model = parts
        if not _HOST.fullmatch(host):
            raise InvalidName(text)
    elif len(parts) == 2:
        namespace, model = parts
    else:
        (model,) = parts
    if not _NAMESPACE.fullmatch(namespace) or not _MODEL_OR_TAG.fullmatch(model):
        raise InvalidName(text)
    return ModelName(host, namespace, model, tag)
