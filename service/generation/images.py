"""Images on requests for vision models: checked against the limits, then decoded to RGB (Pillow).

Accepted: PNG, JPEG, WebP, GIF (its first frame) and BMP, with or without alpha (dropped). The header is read
first, so an image over GENGATE_MAX_IMAGE_PIXELS is refused before its pixels are decoded; images are decoded
one at a time as the prompt is built, so a request holds at most one decoded image.

Placement follows Ollama (server/prompt.go): in each message, each `[img]` of its text becomes the next image's
tag `[img-N]` (N counted across the conversation); images beyond those tags are prefixed as `[img-N]` tags.
The rendered prompt is then split at the tags; a tag naming no image of the request stays text.
"""
from __future__ import annotations

import hashlib
import io
import random
import re
from collections.abc import Sequence

from PIL import Image, UnidentifiedImageError

from gengate.v1 import generate_pb2 as pb
from service.engines.base import Bitmap, ImageJob
from service.errors import invalid
from service.models import checkpoint

FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
TAG = re.compile(r"\[img-(\d+)\]")


def place(text: str, first: int, count: int) -> str:
    """A message's text with its `count` images' tags (ids from `first`) placed as Ollama places them."""
    prefix = ""
    for n in range(first, first + count):
        if "[img]" in text:
            text = text.replace("[img]", f"[img-{n}]", 1)
        else:
            prefix += f"[img-{n}]"
    return prefix + text


def split(text: str, count: int) -> list[str | int]:
    """The rendered prompt as text pieces and image numbers (tags of images the request has)."""
    parts: list[str | int] = []
    at = 0
    for match in TAG.finditer(text):
        n = int(match.group(1))
        if n >= count:
            continue
        parts += [text[at:match.start()], n]
        at = match.end()
    parts.append(text[at:])
    return parts


def check_count(images: Sequence[bytes], limit: int, field: str) -> None:
    if len(images) > limit:
        raise invalid(f"too many images: {len(images)}, the limit is {limit} (GENGATE_MAX_IMAGES)", field)


def decode(data: bytes, field: str, max_pixels: int) -> Bitmap:
    """The image as RGB pixels; 400 naming `field` if it is not an image of an accepted format or too large."""
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
        width, height = image.size
        if width * height > max_pixels:         # checked from the header, before any pixel is decoded
            raise invalid(f"the image is {width}x{height} pixels, over the limit of {max_pixels} "
                          "(GENGATE_MAX_IMAGE_PIXELS)", field)
        image.seek(0)
        pixels = image.convert("RGB").tobytes()
        del image
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        kind = "unknown format" if isinstance(exc, UnidentifiedImageError) else "it could not be decoded"
        raise invalid(f"invalid image data: {kind} (accepted: PNG, JPEG, WebP, GIF, BMP)", field) from None
    digest = hashlib.sha256(f"{width}x{height}:".encode() + pixels).digest()
    return Bitmap(width, height, pixels, digest)


MAX_IMAGE_PROMPT = 4096                  # characters of an image model's prompt (its text encoders take far fewer)


def check_image_prompt(prompt: str) -> None:
    """An image model's prompt: bounded (stable-diffusion.cpp's text encoders crash on prompts of some ten
    thousand tokens), and free of NUL (the library reads a C string: the rest would be dropped unseen)."""
    if len(prompt) > MAX_IMAGE_PROMPT:
        raise invalid(f"prompt is too long for an image model: {len(prompt)} characters (the limit is "
                      f"{MAX_IMAGE_PROMPT})", "prompt")
    if "\0" in prompt:
        raise invalid("prompt contains a NUL character, which an image model cannot read", "prompt")


PNG_OVERHEAD = 64 << 10                  # a PNG's bytes beyond its pixels, at most (headers, filters, zlib blocks)


def image_job(req: pb.GenerateRequest, architecture: str, *, max_pixels: int, max_steps: int,
              max_message_bytes: int) -> ImageJob:
    """An image request's job: its size and steps (the architecture's defaults where it does not say; the default
    size within the pixel budget), checked
    against what the engine needs (a multiple) and the limits (pixels, steps); its seed (options.seed, else a
    random one)."""
    defaults = checkpoint.DEFAULTS.get(architecture, checkpoint.Defaults(512, 20, 7.0, 8))
    size = defaults.size                 # the default square, shrunk to the pixel budget when over it
    while size * size > max_pixels and size > defaults.multiple:
        size -= defaults.multiple
    width = req.width or size            # 0 (or unset) is the default, as Ollama's omitempty fields
    height = req.height or size
    steps = req.steps or defaults.steps
    if width % defaults.multiple or height % defaults.multiple:
        raise invalid(f"width and height must be multiples of {defaults.multiple} for this model "
                      f"({architecture or 'unknown architecture'})", "width" if width % defaults.multiple else "height")
    if width * height > max_pixels:
        raise invalid(f"width × height is {width * height} pixels, over the limit of {max_pixels}", "width")
    if width * height * 3 + PNG_OVERHEAD > max_message_bytes:          # a PNG of noise hardly compresses
        raise invalid(f"a {width}×{height} image may not fit in a reply of at most {max_message_bytes} bytes "
                      "(GENGATE_MAX_MESSAGE_BYTES)", "width")
    if steps > max_steps:
        raise invalid(f"steps is {steps}, over the limit of {max_steps}", "steps")
    seed = req.options.seed if req.options.HasField("seed") and req.options.seed >= 0 else random.randrange(2**31)
    return ImageJob(req.prompt, width, height, steps, seed, defaults.cfg_scale)
