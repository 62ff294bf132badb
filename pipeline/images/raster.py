"""JPG and PNG radiographs (MIMIC-CXR-JPG, CheXpert, CheXpert Plus) through Pillow.

A JPEG is decoded at a reduced resolution when that still covers the target size
(``Image.draft``: libjpeg scales in the DCT domain, skipping most of the inverse transform), then
resized like any other picture. 8-bit files are taken as stored (``window_source=file``: MIMIC-
CXR-JPG is already windowed and histogram-equalised); 16-bit PNGs get the percentile window.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.images.common import ImageProblem, Picture, percentile_window, sample_stride, to_uint8
from pipeline.images.config import ImagesConfig

FORMATS = {"JPEG": "jpg", "PNG": "png"}


def open_raster(data: bytes) -> Image.Image:
    """Open (not decode) a JPG or PNG. Raises ImageProblem(undecodable_image) for anything else."""
    if not data:
        raise ImageProblem("undecodable_image", "the file is empty (0 bytes): an interrupted copy?")
    try:
        return Image.open(io.BytesIO(data), formats=list(FORMATS))
    except Image.DecompressionBombError as exc:
        raise ImageProblem("bad_image_size", str(exc)[:300]) from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageProblem("undecodable_image", f"not a JPG or PNG file: {exc}"[:300]) from exc


def decode_raster(im: Image.Image, target: tuple[int, int], config: ImagesConfig) -> Picture:
    """Decode ``im`` (from :func:`open_raster`) to an 8-bit grayscale picture, drafting a JPEG to
    no less than ``target`` (rows, columns). Raises ImageProblem(undecodable_image, constant_image)."""
    columns, rows = im.size
    source_format = FORMATS[im.format or "PNG"]
    try:
        if config.jpeg_draft and im.format == "JPEG" and target != (rows, columns):
            im.draft("L", (target[1], target[0]))
        im.load()
        picture, bits, source, center, width = _grayscale(im, config)
    except ImageProblem:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated or damaged data, whatever Pillow raises
        raise ImageProblem("undecodable_image", f"{type(exc).__name__}: {exc}"[:300]) from exc
    return Picture(
        image=picture,
        source_format=source_format,
        source_rows=rows,
        source_columns=columns,
        bits_stored=bits,
        photometric_interpretation="MONOCHROME2",
        window_source=source,
        window_center=center,
        window_width=width,
    )


def _grayscale(
    im: Image.Image, config: ImagesConfig
) -> tuple[Image.Image, int, str, float | None, float | None]:
    if im.mode == "L":
        return im, 8, "file", None, None
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im)
        stride = sample_stride(arr.size)
        sample = arr[::stride, ::stride]
        if sample.dtype.kind == "u" and sample.dtype.itemsize <= 2:  # 16-bit: a histogram, no sort
            counts = np.bincount(sample.ravel(), minlength=1 << (8 * sample.dtype.itemsize))
            values = np.arange(counts.size)
        else:
            values, counts = np.unique(sample[np.isfinite(sample)], return_counts=True)
        window = percentile_window(
            values.astype(np.float64), counts, config.percentile_low, config.percentile_high
        )
        if window is None:
            raise ImageProblem("constant_image", "every pixel has the same value")
        lo, hi = window
        out = to_uint8((arr.astype(np.float32) - lo) / (hi - lo))
        bits = 16 if im.mode.startswith("I;16") else 32
        return Image.fromarray(out), bits, "percentile", (lo + hi) / 2.0, hi - lo
    # RGB, RGBA, LA, P, 1: luminance as Pillow computes it (ITU-R 601-2)
    return im.convert("L"), 8, "file", None, None
