"""What the service knows of an installed model without loading it: template, capabilities, details."""
from __future__ import annotations

import dataclasses
from typing import Any

from service import prompt as prompts
from service.errors import GenerateError
from service.store import ModelEntry
from service.thinking import thinking_tags

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
    def generative(self) -> bool:
        return self.arch not in NON_GENERATIVE

    def supports_tools(self) -> bool:
        if self.entry.template:
            return "tools" in self.template_fields()
        return "tools" in (self.chat_template or "")

    def capabilities(self) -> list[str]:
        caps = ["completion"] if self.generative else ["embedding"]
        if "suffix" in self.template_fields():
            caps.append("insert")
        if self.thinking_tags() is not None:
            caps.append("thinking")
        if self.supports_tools():
            caps.append("tools")
        return caps

    def details(self) -> dict[str, Any]:
        return {
            "parent_model": "", "format": "gguf", "family": self.arch, "families": [self.arch] if self.arch else [],
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
