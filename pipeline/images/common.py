"""What every decoder returns, the problems that become rejects, and the rules they share."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from pipeline.core.errors import PipelineError
from pipeline.images.config import PNG_STRATEGIES, UNKNOWN_VIEW_CHOICES, ImagesConfig


class ImageProblem(Exception):
    """Why one image cannot be used: a reject ``code`` (pipeline.core.errors) and a ``detail``."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class Picture:
    """A decoded image, windowed and ready for display: ``image`` is Pillow mode ``L``, white =
    dense. ``source_rows``/``source_columns`` are the file's own size (before any reduced-
    resolution decoding)."""

    image: Image.Image
    source_format: str  # dcm, jpg, png
    source_rows: int
    source_columns: int
    bits_stored: int | None
    photometric_interpretation: str | None
    window_source: str  # voi_lut, window, percentile, file
    window_center: float | None = None
    window_width: float | None = None
    view_position: str | None = None  # from the DICOM header; None for JPG/PNG


def check_config(config: ImagesConfig) -> None:
    """Raise PipelineError(E_CONFIG_VALUE) for settings that cannot mean anything."""
    problems = []
    if config.size < 1:
        problems.append(f"size={config.size} must be >= 1")
    if not 1 <= config.min_side <= config.max_side:
        problems.append(f"need 1 <= min_side ({config.min_side}) <= max_side ({config.max_side})")
    if config.max_aspect < 1:
        problems.append(f"max_aspect={config.max_aspect} must be >= 1")
    if not 0 <= config.percentile_low < config.percentile_high <= 100:
        problems.append(
            f"need 0 <= percentile_low ({config.percentile_low}) < percentile_high ({config.percentile_high}) <= 100"
        )
    if not 0 <= config.png_compress_level <= 9:
        problems.append(f"png_compress_level={config.png_compress_level} must be 0-9")
    if config.png_strategy not in PNG_STRATEGIES:
        problems.append(f"png_strategy={config.png_strategy!r} is not one of {PNG_STRATEGIES}")
    if config.unknown_view not in UNKNOWN_VIEW_CHOICES:
        problems.append(f"unknown_view={config.unknown_view!r} is not one of {UNKNOWN_VIEW_CHOICES}")
    if not config.views:
        problems.append("views is empty: list views (views=[PA,AP]) or views=[all]")
    if config.reducing_gap < 0:
        problems.append(f"reducing_gap={config.reducing_gap} must be >= 0 (0: plain resize)")
    if problems:
        raise PipelineError("E_CONFIG_VALUE", "stages.images: " + "; ".join(problems))


def check_size(rows: int | None, columns: int | None, config: ImagesConfig) -> tuple[int, int]:
    """``(rows, columns)`` when they are a plausible radiograph's; else ImageProblem(bad_image_size)."""
    if not rows or not columns or rows < 1 or columns < 1:
        raise ImageProblem("bad_image_size", f"image size {rows} x {columns} is empty")
    short, long = min(rows, columns), max(rows, columns)
    if short < config.min_side:
        raise ImageProblem(
            "bad_image_size",
            f"{rows} x {columns}: shorter side below stages.images.min_side={config.min_side}",
        )
    if long > config.max_side:
        raise ImageProblem(
            "bad_image_size",
            f"{rows} x {columns}: longer side above stages.images.max_side={config.max_side}",
        )
    if long / short > config.max_aspect:
        raise ImageProblem(
            "bad_image_size",
            f"{rows} x {columns}: aspect {long / short:.2f} above stages.images.max_aspect={config.max_aspect}",
        )
    return rows, columns


def target_size(rows: int, columns: int, size: int) -> tuple[int, int]:
    """``(rows, columns)`` of the stored picture: the shorter side ``size``, the aspect kept, never
    larger than the source."""
    short = min(rows, columns)
    if short <= size:
        return rows, columns
    scale = size / short
    if rows <= columns:
        return size, max(1, round(columns * scale))
    return max(1, round(rows * scale)), size


def percentile_window(
    values: np.ndarray, counts: np.ndarray, low: float, high: float
) -> tuple[float, float] | None:
    """``(lo, hi)``: the ``low`` and ``high`` percentiles (inverted CDF: the smallest value whose
    cumulative share reaches the percentile) of a histogram, ``values[i]`` seen ``counts[i]`` times.

    Falls back to the full range when the percentiles coincide; None when every counted value is
    the same (a constant image).
    """
    seen = counts > 0
    v, c = values[seen], counts[seen]
    if v.size == 0:
        return None
    order = np.argsort(v, kind="stable")
    v = v[order]
    cum = np.cumsum(c[order])
    total = cum[-1]
    last = v.size - 1
    lo = v[min(int(np.searchsorted(cum, total * low / 100.0, side="left")), last)]
    hi = v[min(int(np.searchsorted(cum, total * high / 100.0, side="left")), last)]
    if hi <= lo:
        lo, hi = v[0], v[-1]
    if hi <= lo:
        return None
    return float(lo), float(hi)


def to_uint8(t: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (clipped) to 0..255, rounded half to even."""
    return np.rint(np.clip(t, 0.0, 1.0) * 255.0).astype(np.uint8)


def sample_stride(n_pixels: int, limit: int = 2_000_000) -> int:
    """A stride per axis that leaves at most about ``limit`` pixels for a histogram."""
    stride = 1
    while n_pixels // (stride * stride) > limit:
        stride += 1
    return stride
