"""Typed config of the ``images`` stage."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.ingest.config import DatasetConfig

UNKNOWN_VIEW_CHOICES = ("keep", "exclude")
PNG_STRATEGIES = ("rle", "default", "filtered", "huffman")


@dataclass(frozen=True)
class ImagesConfig:
    """Which images to decode and how to store them.

    ``views``: ViewPosition values kept (case-insensitive), ``("all",)`` for every view. An image
    whose view is unknown (empty in the metadata CSV and, for a DICOM, no ViewPosition in its
    header: about 4% of MIMIC-CXR's images, some of them laterals) follows ``unknown_view``:
    ``exclude`` (default) rejects it as ``view_excluded`` with a detail naming the setting, so a
    frontal-only training set stays frontal; ``keep`` decodes it and stores ``view_position`` null
    (for dumps that never record views, such as NIH ChestX-ray14's DICOMs).
    """

    # Filled from the run's `dataset=` by the config composer: images_meta.path is relative to
    # dataset.root (chexpert: the folder of train.csv, or of dataset.path).
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    views: tuple[str, ...] = ("PA", "AP")
    unknown_view: str = "exclude"  # exclude | keep: images whose view nobody recorded
    size: int = 512  # shorter side of the stored PNG; smaller images are never enlarged
    min_side: int = 64  # shorter source side below this: bad_image_size (demo images are 64-128)
    max_side: int = 12000  # longer source side above this: bad_image_size (detectors are ~4300)
    max_aspect: float = 3.0  # longer / shorter side above this: bad_image_size
    modalities: tuple[str, ...] = (
        "CR",
        "DX",
        "DR",
        "RG",
    )  # DICOM Modality kept; add "" to keep files without one
    percentile_low: float = 0.5  # window when the header has none: these percentiles map to black...
    percentile_high: float = 99.5  # ...and white (in modality units)
    jpeg_draft: bool = True  # JPEG: decode at the smallest DCT scale still >= the target size
    reducing_gap: float = 2.0  # Pillow resize: box-reduce first while >= this x the target (None-like at 0)
    png_compress_level: int = 6  # zlib level 0-9
    png_strategy: str = "rle"  # zlib strategy: rle is ~5x faster than default and smaller on radiographs
