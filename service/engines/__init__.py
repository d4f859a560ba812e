"""Engines over llama.cpp: one module of shared parts (llama.py), the batch scheduler (batch.py), and the
runner for embedding models (embedding.py)."""
from __future__ import annotations

from service.engines.base import Engine


def make_engine(name: str, num_parallel: int, invariant: bool = False) -> Engine:
    """The engine GENGATE_ENGINE names: `batch` decodes `num_parallel` requests together; `simple` is the same
    engine with one sequence (one request at a time, the others queue). `invariant`: the batch-invariant layout
    (GENGATE_BATCH_INVARIANT), else the fast one."""
    from service.engines.batch import BatchEngine
    if name == "batch":
        return BatchEngine(num_parallel, invariant=invariant)
    if name == "simple":
        return BatchEngine(1, invariant=invariant)
    raise ValueError(f"GENGATE_ENGINE: unknown engine {name!r} (batch or simple)")
