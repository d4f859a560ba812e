"""What the service knows of an installed model without loading it: template, capabilities, details."""
from __future__ import annotations

import dataclasses
from typing import Any

from common import golang, modelfile
from service.chat import prompt as prompts
from service.chat.thinking import thinking_tags
from service.errors import GenerateError
from service.models.store import ModelEntry

NON_GENERATIVE = {"bert", "nomic-bert", "jina-bert-v2", "t5encoder"}
# llama.cpp's general.file_type values.
FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
              12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
              19: "IQ2_XXS", 20: "IQ2_XS", 24: "IQ1_S", 25: "IQ4_NL", 32: "BF16"}


@dataclasses.dataclass
class Model:
    entry: ModelEntry
    metadata: dict[str, Any]

    @property
    def arch(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def _arch_value(self, key: str, default: int = 0) -> int:
        return int(self.metadata.get(f"{self.arch}.{key}", default) or default)

    @property
    def chat_template(self) -> str | None:
        return self.metadata.get("tokenizer.chat_template")

    @property
    def n_ctx_train(self) -> int:
        return self._arch_value("context_length")

    def template_fields(self) -> set[str]:
        """Fields the model's Go template uses, lower-cased (Ollama compares them so)."""
        if not self.entry.template:
            return set()
        try:
            return {f.lower() for f in prompts.parse_go_template(self.entry.template).fields()}
        except GenerateError:
            return set()        # a broken template: no capabilities from it (rendering reports the error)

    def thinking_tags(self) -> tuple[str, str] | None:
        return thinking_tags(self.entry.template or self.chat_template or "")

    @property
    def image(self) -> bool:
        """An image-generation (diffusion) model."""
        return self.entry.kind == "image"

    @property
    def generative(self) -> bool:
        """It writes text (Generate and Chat on it decode tokens)."""
        return not self.image and self.arch not in NON_GENERATIVE

    @property
    def vision(self) -> bool:
        """Whether it can see: it has a projector layer."""
        return self.entry.projector is not None

    def native_tools(self) -> bool:
        """Whether the model's template shows tools itself (else gengate's generic format does)."""
        if self.entry.template:
            return "tools" in self.template_fields()
        return "tools" in (self.chat_template or "")

    def capabilities(self) -> list[str]:
        if self.image:
            return ["image"]
        caps = ["completion"] if self.generative else ["embedding"]
        if "suffix" in self.template_fields():
            caps.append("insert")
        if self.thinking_tags() is not None:
            caps.append("thinking")
        if self.generative:              # natively, or in gengate's generic format
            caps.append("tools")
        if self.vision:
            caps.append("vision")
        return caps

    def details(self) -> dict[str, Any]:
        fmt = str(self.metadata.get("general.file_format", "gguf"))
        return {
            "parent_model": self.entry.parent, "format": fmt, "family": self.arch,
            "families": [self.arch] if self.arch else [],
            "parameter_size": str(self.metadata.get("general.size_label", "")),
            "quantization_level": FILE_TYPES.get(int(self.metadata.get("general.file_type", -1)), "unknown"),
            "context_length": self.n_ctx_train, "embedding_length": self._arch_value("embedding_length"),
        }

    def kv_bytes(self, n_ctx: int) -> int:
        """Memory of an f16 KV cache of n_ctx tokens."""
        heads = max(self._arch_value("attention.head_count", 1), 1)
        kv_heads = self._arch_value("attention.head_count_kv", heads)
        width = self._arch_value("embedding_length") * kv_heads // heads
        return n_ctx * self._arch_value("block_count") * 2 * width * 2

    # -- the Modelfile, as Ollama's /api/show writes it ------------------------------------------------------
    def parameters_text(self) -> str:
        """Ollama's `parameters`: one `name value` line per value (a list gives a line per item), the name
        padded to 30 columns, the value as Go's %#v prints it (strings quoted)."""
        lines = []
        for key in sorted(self.entry.parameters):
            value = self.entry.parameters[key]
            for item in value if isinstance(value, list) else [value]:
                lines.append(f"{key:<30} {golang.format_value(item, quoted=True)}")
        return "\n".join(lines)

    def modelfile(self, template: str) -> str:
        """A Modelfile that `create` reads back: FROM the model's name, then its layers, as Ollama writes them."""
        name = self.entry.name.short
        lines = ["# Modelfile generated by \"gengate show\"", "# To build a new Modelfile based on this, "
                 "replace FROM with:", f"# FROM {name}", "", f"FROM {name}"]
        if template:
            lines.append(f"TEMPLATE {modelfile.quote(template)}")
        if self.entry.system:
            lines.append(f"SYSTEM {modelfile.quote(self.entry.system)}")
        for key in sorted(self.entry.parameters):
            value = self.entry.parameters[key]
            for item in value if isinstance(value, list) else [value]:
                lines.append(f"PARAMETER {key} {modelfile.quote(golang.format_value(item, quoted=False))}")
        lines += [f"LICENSE {modelfile.quote(text)}" for text in self.entry.license]
        lines += [f"MESSAGE {m['role']} {modelfile.quote(m['content'])}" for m in self.entry.messages]
        return "\n".join(lines) + "\n"

