"""Antialiased resize and deterministic PNG bytes."""

from __future__ import annotations

import hashlib
import io
import zlib

from PIL import Image

from pipeline.images.common import ImageProblem, Picture
from pipeline.images.config import ImagesConfig

STRATEGIES = {
    "default": zlib.Z_DEFAULT_STRATEGY,
    "filtered": zlib.Z_FILTERED,
    "rle": zlib.Z_RLE,
    "huffman": zlib.Z_HUFFMAN_ONLY,
}


def resized(picture: Picture, target: tuple[int, int], config: ImagesConfig) -> Image.Image:
    """``picture.image`` at ``target`` (rows, columns) with Lanczos (antialiased when shrinking).

    With ``reducing_gap`` Pillow first box-reduces by an integer factor while the image stays at
    least that many times the target, then resamples: ~3x faster than a full Lanczos from 3,000
    rows, and at 2.0 indistinguishable from it by eye (Pillow's own thumbnail default).
    """
    im = picture.image
    if im.size == (target[1], target[0]):
        return im
    return im.resize(
        (target[1], target[0]), Image.Resampling.LANCZOS, reducing_gap=config.reducing_gap or None
    )


def png_bytes(im: Image.Image, config: ImagesConfig) -> bytes:
    """An 8-bit grayscale PNG of ``im``: IHDR, IDAT, IEND only (no text, time, gamma, ICC or dpi
    chunks), so the bytes depend on the pixels and the compression settings alone."""
    if im.mode != "L":
        raise ImageProblem("undecodable_image", f"picture mode {im.mode} is not 8-bit grayscale")
    clean = Image.frombytes("L", im.size, im.tobytes())  # drops .info (ICC profile, dpi, exif)
    buffer = io.BytesIO()
    clean.save(
        buffer,
        format="PNG",
        compress_level=config.png_compress_level,
        compress_type=STRATEGIES[config.png_strategy],
        optimize=False,
    )
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
