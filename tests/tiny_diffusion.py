"""A tiny random-weight diffusion checkpoint, written here with the `gguf` package: a real pipeline for
stable-diffusion.cpp with nothing to download (no trustworthy PyPI package ships diffusion weights).

It is shaped as FLUX.2-klein, an architecture stable-diffusion.cpp sizes from the file itself (blocks counted,
widths read from tensor shapes): one double and one single block of width 128; a one-layer, 64-wide Qwen3 text
encoder (Qwen3's fixed 32 query and 8 key/value heads of 128, over the full 151 936-token vocabulary the
tokenizer needs); FLUX.2's 32-channel VAE decoder at 32 base channels. The tensor list was found as the loader
reports it: start from the names that select the architecture (a `double_stream_modulation_img` tensor, no 48th
single block), then add each tensor it says is missing and give each the shape it says it expects. About 29 MB;
a 64×64 image in a few steps takes well under a second on a CPU.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

HIDDEN = 128                 # the diffusion transformer's width (one head of 128)
TEXT = 64                    # the text encoder's width (its last layer's output is the transformer's context)
VOCAB = 151_936              # Qwen3's tokenizer
Z_CHANNELS = 32              # FLUX.2's latent channels
VAE_CH = 32                  # the VAE decoder's base channels (stable-diffusion.cpp reads it from conv_in)


def _flux2_klein() -> dict[str, list[int]]:
    """The transformer's tensors, shapes as ggml lists them (ne0 first)."""
    p = "model.diffusion_model."
    h = HIDDEN
    out = {p + "img_in.weight": [128, h], p + "txt_in.weight": [TEXT, h],
           p + "time_in.in_layer.weight": [256, h], p + "time_in.out_layer.weight": [h, h],
           p + "double_stream_modulation_img.lin.weight": [h, 6 * h],
           p + "double_stream_modulation_txt.lin.weight": [h, 6 * h],
           p + "single_stream_modulation.lin.weight": [h, 3 * h],
           p + "final_layer.adaLN_modulation.1.weight": [h, 2 * h], p + "final_layer.linear.weight": [h, 128],
           p + "single_blocks.0.linear1.weight": [h, 9 * h], p + "single_blocks.0.linear2.weight": [4 * h, h],
           p + "single_blocks.0.norm.key_norm.scale": [128], p + "single_blocks.0.norm.query_norm.scale": [128]}
    for stream in ("img", "txt"):
        b = f"{p}double_blocks.0.{stream}_"
        out.update({b + "attn.norm.key_norm.scale": [128], b + "attn.norm.query_norm.scale": [128],
                    b + "attn.proj.weight": [h, h], b + "attn.qkv.weight": [h, 3 * h],
                    b + "mlp.0.weight": [h, 6 * h], b + "mlp.2.weight": [3 * h, h]})
    return out


def _qwen3() -> dict[str, list[int]]:
    p = "text_encoders.llm.model."
    w = TEXT
    layer = p + "layers.0."
    return {p + "embed_tokens.weight": [w, VOCAB], p + "norm.weight": [w],
            layer + "input_layernorm.weight": [w], layer + "post_attention_layernorm.weight": [w],
            layer + "mlp.gate_proj.weight": [w, 128], layer + "mlp.up_proj.weight": [w, 128],
            layer + "mlp.down_proj.weight": [128, w],
            layer + "self_attn.q_proj.weight": [w, 32 * 128], layer + "self_attn.k_proj.weight": [w, 8 * 128],
            layer + "self_attn.v_proj.weight": [w, 8 * 128], layer + "self_attn.o_proj.weight": [32 * 128, w],
            layer + "self_attn.q_norm.weight": [128], layer + "self_attn.k_norm.weight": [128]}


def _vae_decoder() -> dict[str, list[int]]:
    p = "first_stage_model."
    d = p + "decoder."
    mult = [1, 2, 4, 4]
    top = VAE_CH * mult[-1]
    out: dict[str, list[int]] = {p + "post_quant_conv.weight": [1, 1, Z_CHANNELS, Z_CHANNELS],
                                 p + "post_quant_conv.bias": [Z_CHANNELS],
                                 d + "conv_in.weight": [3, 3, Z_CHANNELS, top], d + "conv_in.bias": [top],
                                 d + "norm_out.weight": [VAE_CH], d + "norm_out.bias": [VAE_CH],
                                 d + "conv_out.weight": [3, 3, VAE_CH, 3], d + "conv_out.bias": [3]}

    def resnet(name: str, cin: int, cout: int) -> None:
        out.update({name + "norm1.weight": [cin], name + "norm1.bias": [cin],
                    name + "conv1.weight": [3, 3, cin, cout], name + "conv1.bias": [cout],
                    name + "norm2.weight": [cout], name + "norm2.bias": [cout],
                    name + "conv2.weight": [3, 3, cout, cout], name + "conv2.bias": [cout]})
        if cin != cout:
            out.update({name + "nin_shortcut.weight": [1, 1, cin, cout], name + "nin_shortcut.bias": [cout]})
    resnet(d + "mid.block_1.", top, top)
    resnet(d + "mid.block_2.", top, top)
    for part in ("q", "k", "v", "proj_out"):
        out.update({f"{d}mid.attn_1.{part}.weight": [1, 1, top, top], f"{d}mid.attn_1.{part}.bias": [top]})
    out.update({d + "mid.attn_1.norm.weight": [top], d + "mid.attn_1.norm.bias": [top]})
    cin = top
    for level in reversed(range(len(mult))):
        cout = VAE_CH * mult[level]
        for block in range(3):
            resnet(f"{d}up.{level}.block.{block}.", cin, cout)
            cin = cout
        if level:
            out.update({f"{d}up.{level}.upsample.conv.weight": [3, 3, cout, cout],
                        f"{d}up.{level}.upsample.conv.bias": [cout]})
    return out


def tensors() -> dict[str, list[int]]:
    """Every tensor of the checkpoint: name → shape (ggml order)."""
    return {**_flux2_klein(), **_qwen3(), **_vae_decoder()}


def _values(rng: np.random.Generator, name: str, shape: list[int]) -> np.ndarray:
    """Random weights (norms at 1): matrices and kernels in F16, vectors in F32, numpy's order (ggml's reversed)."""
    values = rng.standard_normal(list(reversed(shape))) * (0.02 if len(shape) > 1 else 1.0)
    if name.endswith(("norm.weight", "norm1.weight", "norm2.weight", "norm_out.weight", ".scale")):
        values = np.ones(list(reversed(shape)))
    return values.astype(np.float16 if len(shape) > 1 else np.float32)


def write_tiny_flux2(path: Path, seed: int = 0, vae: Path | None = None) -> Path:
    """Writes the checkpoint (random weights from `seed`). With `vae`, the VAE goes there instead, as a separate
    safetensors file (its tensors named as a VAE release names them: `decoder.…`)."""
    import gguf

    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), arch="flux2-klein")
    apart: dict[str, np.ndarray] = {}
    for name, shape in tensors().items():
        if vae is not None and name.startswith("first_stage_model."):
            apart[name.removeprefix("first_stage_model.")] = _values(rng, name, shape)
        else:
            writer.add_tensor(name, _values(rng, name, shape))
    if vae is not None:
        write_safetensors(vae, apart)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_safetensors(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """A safetensors file: an 8-byte header length, the JSON header (dtype, shape, offsets), the data."""
    header, offset = {}, 0
    for name, array in arrays.items():
        header[name] = {"dtype": {"float16": "F16", "float32": "F32"}[array.dtype.name], "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        for array in arrays.values():
            f.write(np.ascontiguousarray(array).tobytes())
    return path
