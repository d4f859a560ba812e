"""Tiny random-weight vision projector ("mmproj") GGUF for llama.cpp's libmtmd / clip.cpp.

``write_tiny_mmproj(path, n_embd_text=64)`` writes a ~100 KB, fully deterministic
mmproj file that ``mtmd_init_from_file(path, text_model, params)`` accepts together
with any text model whose ``n_embd`` equals ``n_embd_text`` (e.g. the tiny llama of
``tiny_gguf.write_tiny_llama``, n_embd 64).  The weights are random (numpy, seeded):
the image embeddings are meaningless but depend on the pixels, so different
images give different logits and the same image gives identical logits.

Two projector types are supported (both use a CLIP/SigLIP-style ViT encoder):

* ``"mlp"`` (default; LLaVA-1.5 style): image -> (image_size/patch_size)**2 tokens
  (32/8 -> 16), normal causal attention in the text model, no extra text tokens
  around the image.
* ``"gemma3"``: image -> (image_size/patch_size/scale_factor)**2 tokens (32/8/2 -> 4);
  mtmd wraps the image in the text "<start_of_image>" ... "<end_of_image>" and the
  helper decodes the image with *non-causal* attention (llama_set_causal_attn).

Every image is resized (no tiling) to image_size x image_size, so the token count
does not depend on the input image size.

``random_png(w, h, seed)`` encodes a random RGB image as PNG bytes without Pillow.

Only numpy, gguf (tested with gguf==0.19.0) and the standard library are used.
"""

from __future__ import annotations

import pathlib
import struct
import zlib

import gguf
import numpy as np

__all__ = ["write_tiny_mmproj", "tiny_mmproj_n_image_tokens", "random_png"]


def random_png(width: int = 48, height: int = 40, seed: int = 0) -> bytes:
    """A random RGB image as PNG bytes (stdlib zlib encoder; decodable by mtmd's stb_image)."""
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(height))  # filter type 0 per row

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def tiny_mmproj_n_image_tokens(proj_type: str = "mlp", image_size: int = 32, patch_size: int = 8,
                               scale_factor: int = 2) -> int:
    """Number of embedding tokens (== positions) one image produces with these settings."""
    side = image_size // patch_size
    if proj_type == "gemma3":
        side //= scale_factor
    return side * side


def write_tiny_mmproj(
    path: str | pathlib.Path,
    *,
    n_embd_text: int = 64,
    proj_type: str = "mlp",
    image_size: int = 32,
    patch_size: int = 8,
    n_embd: int = 32,
    n_ff: int = 48,
    n_head: int = 4,
    n_layer: int = 1,
    scale_factor: int = 2,
    seed: int = 0,
) -> pathlib.Path:
    """Write a tiny random-weight mmproj GGUF to ``path`` and return the path.

    ``n_embd_text`` must equal the text model's n_embd (mtmd_init_from_file fails
    with "mismatch between text model (n_embd = ...) and mmproj" otherwise).
    ``scale_factor`` is only used by ``proj_type="gemma3"`` (avg-pool kernel).
    Keep ``n_ff != n_embd`` (clip.cpp swaps ffn up/down of "legacy" files when
    ffn_down's input dim equals n_embd).
    """
    if proj_type not in ("mlp", "gemma3"):
        raise ValueError(f"unsupported proj_type {proj_type!r}")
    if image_size % patch_size or n_embd % n_head or n_ff == n_embd:
        raise ValueError("bad tiny mmproj dimensions")
    if proj_type == "gemma3" and (image_size // patch_size) % scale_factor:
        raise ValueError("patches per side must be divisible by scale_factor")
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    d, n_patches = n_embd, (image_size // patch_size) ** 2

    def mat(n_out: int, n_in: int) -> np.ndarray:
        # numpy shape (n_out, n_in) == ggml ne (n_in, n_out)
        return (rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)).astype(np.float32)

    def vec(n: int, value: float | None = None) -> np.ndarray:
        if value is not None:
            return np.full(n, value, dtype=np.float32)
        return (0.1 * rng.standard_normal(n)).astype(np.float32)

    # conv2d kernel, ggml ne (patch, patch, 3, n_embd) -> numpy (n_embd, 3, patch, patch)
    patch_embd = (rng.standard_normal((d, 3, patch_size, patch_size)) / patch_size).astype(np.float32)
    tensors: list[tuple[str, np.ndarray]] = [
        ("v.patch_embd.weight", patch_embd),
        ("v.patch_embd.bias", vec(d)),
        ("v.position_embd.weight", (0.1 * rng.standard_normal((n_patches, d))).astype(np.float32)),
    ]
    for i in range(n_layer):
        p = f"v.blk.{i}"
        tensors += [
            (f"{p}.ln1.weight", vec(d, 1.0)), (f"{p}.ln1.bias", vec(d, 0.0)),
            (f"{p}.attn_q.weight", mat(d, d)), (f"{p}.attn_q.bias", vec(d)),
            (f"{p}.attn_k.weight", mat(d, d)), (f"{p}.attn_k.bias", vec(d)),
            (f"{p}.attn_v.weight", mat(d, d)), (f"{p}.attn_v.bias", vec(d)),
            (f"{p}.attn_out.weight", mat(d, d)), (f"{p}.attn_out.bias", vec(d)),
            (f"{p}.ln2.weight", vec(d, 1.0)), (f"{p}.ln2.bias", vec(d, 0.0)),
            (f"{p}.ffn_up.weight", mat(n_ff, d)), (f"{p}.ffn_up.bias", vec(n_ff)),
            (f"{p}.ffn_down.weight", mat(d, n_ff)), (f"{p}.ffn_down.bias", vec(d)),
        ]
    if proj_type == "mlp":
        # LLaVA projector: mm.0 (linear) -> GELU -> mm.2 (linear); output dim = mm.2 rows
        tensors += [
            ("mm.0.weight", mat(n_embd_text, d)), ("mm.0.bias", vec(n_embd_text)),
            ("mm.2.weight", mat(n_embd_text, n_embd_text)), ("mm.2.bias", vec(n_embd_text)),
        ]
    else:
        # Gemma 3: avg-pool -> RMS norm (soft_emb_norm) -> input_projection.
        # input_projection is used transposed: ggml ne (n_embd_text, d) == numpy (d, n_embd_text)
        tensors += [
            ("v.post_ln.weight", vec(d, 1.0)), ("v.post_ln.bias", vec(d, 0.0)),
            ("mm.soft_emb_norm.weight", vec(d, 1.0)),
            ("mm.input_projection.weight", mat(n_embd_text, d).T.copy()),
        ]

    writer = gguf.GGUFWriter(path, "clip")  # general.architecture = "clip"
    try:
        writer.add_name(f"tiny-mmproj-{proj_type}-random")
        writer.add_file_type(int(gguf.LlamaFileType.ALL_F32))
        # clip.cpp reads integer hparams with gguf_get_val_u32 (asserts UINT32) and
        # image_mean/std as FLOAT32 arrays of >= 3 elements (required in practice).
        writer.add_string("clip.projector_type", proj_type)
        writer.add_bool("clip.has_vision_encoder", True)
        writer.add_bool("clip.use_gelu", True)
        writer.add_uint32("clip.vision.image_size", image_size)
        writer.add_uint32("clip.vision.patch_size", patch_size)
        writer.add_uint32("clip.vision.embedding_length", d)
        writer.add_uint32("clip.vision.feed_forward_length", n_ff)
        writer.add_uint32("clip.vision.projection_dim", n_embd_text)
        writer.add_uint32("clip.vision.block_count", n_layer)
        writer.add_uint32("clip.vision.attention.head_count", n_head)
        writer.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
        writer.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
        writer.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])
        if proj_type == "mlp":
            # LLaVA by default runs only the first block_count-1 blocks (feature layer -2);
            # feature_layer = [n_layer] makes it use the output of the last block.
            writer.add_array("clip.vision.feature_layer", [n_layer])
        else:
            writer.add_uint32("clip.vision.projector.scale_factor", scale_factor)
        for name, arr in tensors:
            writer.add_tensor(name, np.ascontiguousarray(arr))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return path
