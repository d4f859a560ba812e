"""Diffusion checkpoints: what a file holds, read from its tensor names (GGUF or safetensors), without loading it.

stable-diffusion.cpp decides a checkpoint's architecture from its tensor names; create does the same to tell an
image model from a text one and to know its defaults, then has the engine load the file to be sure. A model's
separate parts (a VAE, a text encoder) come as further files named by their role.
"""
from __future__ import annotations

import dataclasses
import json
import os
import struct
from pathlib import Path

from service.models.gguf import GGUFError, check_tensors

MAX_SAFETENSORS_HEADER = 16 << 20    # the JSON header of a safetensors file (SDXL's is about 0.4 MB)
MAX_SAFETENSORS_TENSORS = 1 << 16    # tensors listed in it (SDXL has about 2 500)
MAX_TENSOR_NAME = 256                # bytes of a tensor's name
# A component file's role, from its name (its stem, lower-cased): what stable-diffusion.cpp loads it as.
ROLES = {"vae": "vae", "ae": "vae", "llm": "llm", "text_encoder": "llm", "clip_l": "clip_l", "clip_g": "clip_g",
         "t5xxl": "t5xxl", "t5": "t5xxl", "taesd": "taesd"}


@dataclasses.dataclass(frozen=True)
class Defaults:
    """An architecture's image size, steps and guidance when a request does not say, and the multiple its width
    and height must be."""

    size: int
    steps: int
    cfg_scale: float
    multiple: int


# By architecture, as each family is meant to be used (the distilled ones in few steps, without guidance).
DEFAULTS = {
    "sd1": Defaults(512, 20, 7.0, 8), "sd2": Defaults(768, 20, 7.0, 8), "sdxl": Defaults(1024, 20, 7.0, 8),
    "sd-turbo": Defaults(512, 1, 1.0, 8), "sdxs": Defaults(512, 1, 1.0, 8), "sd3": Defaults(1024, 28, 4.5, 16),
    "flux": Defaults(1024, 20, 1.0, 16), "flux2": Defaults(1024, 28, 4.0, 16),
    "flux2-klein": Defaults(1024, 4, 1.0, 16), "chroma": Defaults(1024, 26, 4.0, 16),
    "z-image": Defaults(1024, 8, 1.0, 16), "qwen-image": Defaults(1024, 20, 2.5, 16),
}


def role_of(file_name: str) -> str | None:
    """The component role a file's name gives it (vae.safetensors → "vae"), or None: a checkpoint."""
    stem = Path(file_name).name.split(".", 1)[0].lower()
    return ROLES.get(stem)


def safetensors_names(path: str | Path) -> list[str]:
    """The tensor names of a safetensors file, from its header (bounded); ValueError if it is not one."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if len(head) != 8:
            raise ValueError("not a safetensors file")
        length = struct.unpack("<Q", head)[0]
        if length > min(MAX_SAFETENSORS_HEADER, size - 8):
            raise ValueError("not a safetensors file")
        text = f.read(length)
    # Keys (a tensor has four: its name, dtype, shape, data_offsets) counted before the parse, which costs more.
    if text.count(b'":') > 4 * MAX_SAFETENSORS_TENSORS + 1024:
        raise ValueError("safetensors file with too many tensors")
    try:
        header = json.loads(text)
    except (ValueError, RecursionError):
        raise ValueError("not a safetensors file") from None
    if not isinstance(header, dict):
        raise ValueError("not a safetensors file")
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if len(name.encode("utf-8", errors="replace")) > MAX_TENSOR_NAME:
            raise ValueError("safetensors tensor name too long")
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= size - 8 - length):
            raise ValueError("safetensors tensor: data outside the file")
    return [name for name in header if name != "__metadata__"]


def tensor_names(path: str | Path) -> tuple[str, list[str]]:
    """("gguf" | "safetensors", the file's tensor names); ValueError if it is neither (or is unsound)."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == b"GGUF":
        try:
            return "gguf", check_tensors(path)
        except GGUFError as exc:
            raise ValueError(str(exc)) from None
    return "safetensors", safetensors_names(path)


def architecture(names: list[str]) -> str | None:
    """The diffusion architecture these tensor names are of (as stable-diffusion.cpp reads them), or None."""
    joined = "\n".join(names)

    def has(fragment: str) -> bool:
        return fragment in joined
    if has("double_stream_modulation_img.lin.weight"):
        return "flux2" if has("single_blocks.47.linear1.weight") else "flux2-klein"
    if has("distilled_guidance_layer.in_proj.weight"):
        return "chroma"
    if has("double_blocks."):
        return "flux"
    if has("joint_blocks."):
        return "sd3"
    if has("cap_embedder.0.weight"):
        return "z-image"
    if has("transformer_blocks.0.img_mod.1.weight"):
        return "qwen-image"
    if has("model.diffusion_model.input_blocks.") or has("input_blocks.0.0.weight"):
        if has("conditioner.embedders.1") or has("label_emb."):
            return "sdxl"
        if not has("middle_block.1."):
            return "sdxs"
        if has("cond_stage_model.model.") or has("open_clip"):
            return "sd2"
        return "sd1"
    return None
