"""PNG decode and image augmentation in plain torch (no torchvision), deterministic per sample.

Per sample (in the loader's worker process), in uint8 inside Pillow: decode the PNG; train: a
random resized crop (area 0.6-1.0, aspect 0.9-1.1), a rotation of a few degrees and a shift, as one
bilinear affine resample from the (``Image.reduce``-d) image straight to the training resolution,
then brightness and contrast as a lookup table; eval: the centred square of the shorter side
resized to the resolution (= resize the shorter side, then centre crop), antialiased. Per batch:
one float32 multiply-add that normalises and replicates the channel. No float64 and no per-pixel
Python anywhere. (A torch ``affine_grid``/``grid_sample`` pass on the batch did the same affine at
~3x the cost: it needs float32 images and a sampling grid per sample.)

Every random draw of a sample comes from a generator seeded by ``(seed, epoch, position)``,
``position`` the sample's index in the split, so a sample gets the same augmentation whichever
rank, worker or batch it lands in, and a resumed run gives bit-identical images. numpy's
SeedSequence is used rather than ``torch.Generator.manual_seed`` because it hashes a tuple of
integers into a well-mixed state (a torch seed is a single int that we would have to hash by hand).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

# torchvision's ImageNet statistics: what ResNet weights trained there expect on 3 channels.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# One channel: the means of the three (a grayscale image replicated to RGB has these statistics
# under ImageNet normalisation on average).
GRAY_MEAN = (0.449,)
GRAY_STD = (0.226,)


@dataclass(frozen=True)
class AugmentConfig:
    """Image settings. ``train=False``: eval transform only (no randomness)."""

    resolution: int = 224  # output side, pixels
    channels: int = 3  # 1, or 3 (replicated; torchvision ResNet weights expect 3)
    train: bool = True
    scale: tuple[float, float] = (0.6, 1.0)  # random resized crop: area fraction of the image
    ratio: tuple[float, float] = (0.9, 1.1)  # crop aspect (w/h) jitter, sampled log-uniformly
    degrees: float = 5.0  # rotation, uniform in [-degrees, degrees]
    translate: float = 0.05  # shift, uniform in [-t, t] of the side, each axis
    brightness: float = 0.1  # multiplicative factor in [1 - b, 1 + b]
    contrast: float = 0.1  # factor in [1 - c, 1 + c] around the image mean
    mean: tuple[float, ...] | None = None  # None: IMAGENET_MEAN (3 channels) or GRAY_MEAN (1)
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.resolution < 8:
            raise ValueError(f"resolution must be at least 8, got {self.resolution}")
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < low <= high <= 1, got {self.scale}")

    def stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalisation mean and std as (C, 1, 1) float32 tensors."""
        mean = self.mean or (IMAGENET_MEAN if self.channels == 3 else GRAY_MEAN)
        std = self.std or (IMAGENET_STD if self.channels == 3 else GRAY_STD)
        if len(mean) != self.channels or len(std) != self.channels:
            raise ValueError(f"mean and std need {self.channels} values")
        return (
            torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1),
            torch.tensor(std, dtype=torch.float32).view(-1, 1, 1),
        )


def _crop_box(rng: np.random.Generator, w: int, h: int, cfg: AugmentConfig) -> tuple[float, ...]:
    """A random resized crop (torchvision's algorithm, 10 tries, then the centred square)."""
    area = w * h
    log_lo, log_hi = math.log(cfg.ratio[0]), math.log(cfg.ratio[1])
    for _ in range(10):
        target = area * rng.uniform(cfg.scale[0], cfg.scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        cw, ch = math.sqrt(target * aspect), math.sqrt(target / aspect)
        if cw <= w and ch <= h:
            x0, y0 = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
            return (x0, y0, x0 + cw, y0 + ch)
    return _centre_box(w, h)


def _centre_box(w: int, h: int) -> tuple[float, ...]:
    side = min(w, h)
    x0, y0 = (w - side) / 2, (h - side) / 2
    return (x0, y0, x0 + side, y0 + side)


def decode_batch(
    pngs: Sequence[bytes], positions: np.ndarray, *, seed: int, epoch: int, cfg: AugmentConfig
) -> torch.Tensor:
    """Decode and transform a batch of PNGs into a (B, C, R, R) float32 tensor, normalised.

    ``positions`` (B,) are the samples' indices in the split; they seed the augmentation.
    Raises PIL.UnidentifiedImageError (or OSError) for bytes that are not a readable image.
    """
    images, _good = _decode(pngs, positions, seed=seed, epoch=epoch, cfg=cfg, skip_bad=False)
    return images


def decode_valid(
    pngs: Sequence[bytes], positions: np.ndarray, *, seed: int, epoch: int, cfg: AugmentConfig
) -> tuple[torch.Tensor, np.ndarray]:
    """As :func:`decode_batch`, but an undecodable image is left out instead of raising: returns
    the images of the readable samples and a (B,) bool mask of which those are."""
    return _decode(pngs, positions, seed=seed, epoch=epoch, cfg=cfg, skip_bad=True)


def _decode(
    pngs: Sequence[bytes], positions: np.ndarray, *, seed: int, epoch: int, cfg: AugmentConfig, skip_bad: bool
) -> tuple[torch.Tensor, np.ndarray]:
    res = cfg.resolution
    out = np.empty((len(pngs), res, res), np.uint8)
    good = np.ones(len(pngs), bool)
    for i, (data, pos) in enumerate(zip(pngs, positions, strict=True)):
        try:
            im = Image.open(io.BytesIO(data))
            if im.mode != "L":
                im = im.convert("L")
            if cfg.train:
                out[i] = _train_view(im, np.random.default_rng([seed, epoch, int(pos)]), cfg)
            else:
                # Antialiased crop-and-resize in one pass over the box's pixels only.
                out[i] = np.asarray(im.resize((res, res), Image.BILINEAR, box=_centre_box(*im.size)))
        except (OSError, ValueError, Image.DecompressionBombError):  # UnidentifiedImageError is an OSError
            if not skip_bad:
                raise
            good[i] = False
    mean, std = cfg.stats()
    # (x / 255 - mean) / std as one multiply-add; broadcasting replicates the channel.
    scale, shift = 1.0 / (255.0 * std), -mean / std
    pixels = torch.from_numpy(out[good] if not good.all() else out)
    return pixels.unsqueeze(1).to(torch.float32).mul(scale).add_(shift), good


def _train_view(im: Image.Image, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Random resized crop, rotation and shift as one affine resample, then brightness/contrast.

    All in uint8 inside Pillow. The crop is first brought to within 2x of the output side by
    ``Image.reduce`` (a box filter, which also antialiases), so the bilinear affine pass never
    decimates by 2 or more; one pass replaces resize + grid_sample and never touches float.
    """
    res = cfg.resolution
    x0, y0, x1, y1 = _crop_box(rng, *im.size, cfg)
    angle = math.radians(rng.uniform(-cfg.degrees, cfg.degrees))
    tx, ty = rng.uniform(-cfg.translate, cfg.translate, 2) * res
    brightness = rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)
    contrast = rng.uniform(1 - cfg.contrast, 1 + cfg.contrast)
    factor = max(1, int(min(x1 - x0, y1 - y0) // res))
    if factor > 1:
        im = im.reduce(factor)
        x0, y0, x1, y1 = x0 / factor, y0 / factor, x1 / factor, y1 / factor
    # Output point p (pixel centres) -> input: crop centre + S . Rot(angle) . (p - centre - t).
    sx, sy = (x1 - x0) / res, (y1 - y0) / res
    cos, sin = math.cos(angle), math.sin(angle)
    a, b, d, e = sx * cos, -sx * sin, sy * sin, sy * cos
    ox, oy = res / 2 + tx, res / 2 + ty
    c = (x0 + x1) / 2 - a * ox - b * oy
    f = (y0 + y1) / 2 - d * ox - e * oy
    view = im.transform((res, res), Image.AFFINE, (a, b, c, d, e, f), resample=Image.BILINEAR, fillcolor=0)
    pixels = np.asarray(view)
    # Contrast around the image mean, then brightness: a 256-entry lookup table, in C.
    mean = float(pixels.mean())
    lut = np.clip((np.arange(256) - mean) * contrast + mean * brightness, 0, 255).round().astype(np.uint8)
    return np.asarray(view.point(lut.tolist()))
