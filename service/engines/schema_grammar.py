"""llama.cpp's grammar language (GBNF) for `format`: its JSON grammar, and a JSON Schema converted to GBNF and checked
by llama.cpp's own parser. The conversion runs in a worker process (service.generation.grammar bounds it); this
module is that worker."""
from __future__ import annotations

import sys
from typing import Any

import llama_cpp  # loaded before the worker's address-space cap: the cap is the conversion's
from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from service import workers

JSON_GRAMMAR = JSON_GBNF
MAX_GRAMMAR_BYTES = 256 << 10        # the GBNF text (llama.cpp parses ~2 MB/s, for every request using it)


def _convert(schema_text: str) -> str:
    """In the worker: the schema's GBNF, checked by llama.cpp's parser (ValueError if it cannot be)."""
    try:
        grammar = json_schema_to_gbnf(schema_text)
    except MemoryError:
        raise
    except Exception as exc:   # noqa: BLE001   (the converter raises assorted errors on schemas it cannot express)
        raise ValueError(f"invalid JSON schema in format: {exc}") from None
    if len(grammar) > MAX_GRAMMAR_BYTES:
        raise ValueError(f"format: the schema makes a grammar of {len(grammar)} bytes, over the limit of "
                         f"{MAX_GRAMMAR_BYTES}")
    sampler = llama_cpp.llama_sampler_init_grammar(None, grammar.encode("utf-8"), b"root")
    if not sampler:
        raise ValueError("invalid JSON schema in format")
    llama_cpp.llama_sampler_free(sampler)
    return grammar


def _handle(request: dict[str, Any]) -> dict[str, Any]:
    try:
        return {"grammar": _convert(request["schema"])}
    except ValueError as exc:
        return {"error": str(exc)}


def main() -> None:
    """`python -m service.engines.schema_grammar MEMORY_BYTES`: converts schemas ({"schema": ...} → {"grammar": ...}
    or {"error": ...}), with MEMORY_BYTES of address space over what its code takes (service.workers)."""
    workers.serve(_handle, int(sys.argv[1]))


if __name__ == "__main__":
    main()
