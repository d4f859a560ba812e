"""A tiny random-weight draft model with a real model's vocabulary: ``write_tiny_draft(model, out)`` copies the
model's tokenizer (every ``tokenizer.*`` key) into a two-layer llama of width 64 with seeded random weights, so its
drafts are (nearly) never what the model writes, while every token id means what it means to the model.

Only numpy, gguf and the standard library are used.
"""
from __future__ import annotations

import pathlib

import gguf
import numpy as np

N_EMBD, N_LAYER, N_HEAD, N_FF = 64, 2, 4, 128


def write_tiny_draft(model: str | pathlib.Path, out: str | pathlib.Path, seed: int = 0) -> pathlib.Path:
    reader = gguf.GGUFReader(str(model))
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_name("tiny-draft-random")
    writer.add_context_length(2048)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD)
    writer.add_rope_dimension_count(N_EMBD // N_HEAD)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    n_vocab = 0
    for field in reader.fields.values():
        if not field.name.startswith("tokenizer."):
            continue
        types = list(field.types)
        if types[0] == gguf.GGUFValueType.ARRAY:
            value = field.contents()
            writer.add_key_value(field.name, value, types[0], sub_type=types[-1])
            if field.name == "tokenizer.ggml.tokens":
                n_vocab = len(value)
        else:
            writer.add_key_value(field.name, field.contents(), types[0])
    rng = np.random.default_rng(seed)

    def tensor(name: str, *shape: int) -> None:
        if len(shape) == 1:
            writer.add_tensor(name, np.ones(shape, dtype=np.float32))
        else:
            writer.add_tensor(name, (rng.standard_normal(shape, dtype=np.float32) * 0.5).astype(np.float16))

    tensor("token_embd.weight", n_vocab, N_EMBD)
    tensor("output_norm.weight", N_EMBD)
    for i in range(N_LAYER):
        tensor(f"blk.{i}.attn_norm.weight", N_EMBD)
        for part in ("q", "k", "v", "output"):
            tensor(f"blk.{i}.attn_{part}.weight", N_EMBD, N_EMBD)
        tensor(f"blk.{i}.ffn_norm.weight", N_EMBD)
        tensor(f"blk.{i}.ffn_gate.weight", N_FF, N_EMBD)
        tensor(f"blk.{i}.ffn_up.weight", N_FF, N_EMBD)
        tensor(f"blk.{i}.ffn_down.weight", N_EMBD, N_FF)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return pathlib.Path(out)
