"""The ``images`` map stage: every images_meta row becomes an ``images`` row or a reject.

Per row: view filter (images_meta's view first, so excluded views are never read), path
resolution against ``dataset.root``, the file read whole, DICOM or JPG/PNG by content (the
``DICM`` prefix), header checks (modality, size) before any pixel is decoded, windowing, resize,
PNG. A per-row problem is a reject with a reason code; only a config or dump that cannot mean
anything (chexpert_plus without an images root, impossible settings) raises.

Paths: images_meta.path is relative to ``dataset.root`` (mimic_cxr, demo). CheXpert v1.0 paths
start with the dataset folder (``CheXpert-v1.0-small/train/...``) while the root is the folder
holding train.csv (or the folder of ``dataset.path``): both ``root/<path>`` and
``root/<path without its first folder>`` are tried, then ``root/../<path>``. CheXpert Plus lists
``.jpg`` paths but ships PNG (and DICOM): when the named file is missing, the same stem is tried
as ``.png``, ``.jpeg`` and ``.dcm``, in that order.
"""

from __future__ import annotations

import os
import posixpath
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import fsspec
import pyarrow as pa

from pipeline.core.errors import PipelineError, reject_table
from pipeline.core.registry import map_stage
from pipeline.core.schemas import load_schema
from pipeline.images.common import (
    ImageProblem,
    Picture,
    check_config,
    check_size,
    target_size,
)
from pipeline.images.config import ImagesConfig
from pipeline.images.dicom import check_decodable, decode_dicom, open_dicom
from pipeline.images.encode import png_bytes, resized, sha256
from pipeline.images.raster import decode_raster, open_raster

STAGE = "images"
_STEM_SUFFIXES = (".png", ".jpeg", ".jpg", ".dcm")
_META = ("image_id", "report_id", "subject_id", "study_id", "split", "view_position")


def images_root(config: ImagesConfig) -> str | None:
    """The folder images_meta paths are relative to. Raises PipelineError(E_CONFIG_MISSING)
    for chexpert_plus without ``dataset.root`` (its CSV does not say where the images are)."""
    ds = config.dataset
    if ds.name == "chexpert_plus" and not ds.root:
        raise PipelineError(
            "E_CONFIG_MISSING",
            "stage images on dataset=chexpert_plus needs the images folder: add "
            "dataset.root=<folder holding train/ and valid/ of the PNG (or DICOM) release>.",
        )
    if ds.root:
        return str(ds.root)
    if ds.name == "chexpert" and ds.path:
        return posixpath.dirname(str(ds.path)) or "."
    return None


def candidates(root: str | None, path: str, dataset: str) -> Iterator[str]:
    """Where the file of images_meta ``path`` may be, best first (see the module docstring)."""
    path = path.strip()
    if "://" in path or os.path.isabs(path) or root is None:
        first = [path]
    else:
        first = [_join(root, path)]
        if dataset == "chexpert":
            parts = [p for p in path.split("/") if p]
            if len(parts) > 4:
                first.append(_join(root, "/".join(parts[1:])))
            first.append(_join(_join(root, ".."), path))
    yield from first
    if dataset == "chexpert_plus":
        for suffix in _STEM_SUFFIXES:
            for name in first:
                stem, ext = posixpath.splitext(name)
                if ext.lower() != suffix:
                    yield stem + suffix


def _join(root: str, path: str) -> str:
    if "://" in root:
        return root.rstrip("/") + "/" + path
    return os.path.normpath(os.path.join(root, path))


def read_file(root: str | None, path: str | None, dataset: str) -> bytes:
    """The bytes of the first candidate that exists. Raises ImageProblem(missing_file,
    unreadable_file)."""
    if not path or not path.strip():
        raise ImageProblem("missing_file", "images_meta has no path for this image")
    tried = []
    for name in candidates(root, path, dataset):
        tried.append(name)
        try:
            if "://" in name:
                with fsspec.open(name, "rb") as fh:
                    return fh.read()
            with open(name, "rb") as fh:
                return fh.read()
        except (FileNotFoundError, NotADirectoryError):
            continue
        except (OSError, ValueError) as exc:
            raise ImageProblem("unreadable_file", f"{name}: {type(exc).__name__}: {exc}"[:300]) from exc
    raise ImageProblem("missing_file", f"not found: {', '.join(tried[:4])}")


def _view(value: Any) -> str | None:
    text = str(value).strip().upper() if value is not None else ""
    return text or None


def check_view(view: str | None, config: ImagesConfig) -> None:
    """Raise ImageProblem(view_excluded) for a view the config does not keep."""
    kept = {v.strip().upper() for v in config.views}
    if "ALL" in kept:
        return
    if view is None:
        if config.unknown_view == "exclude":
            raise ImageProblem(
                "view_excluded", "view unknown (stages.images.unknown_view=keep decodes such images)"
            )
        return
    if view not in kept:
        raise ImageProblem("view_excluded", f"view {view} is not in stages.images.views={list(config.views)}")


def picture_of(data: bytes, meta_view: str | None, config: ImagesConfig) -> tuple[Picture, tuple[int, int]]:
    """Decode one file's bytes into a windowed picture and its stored size (rows, columns).

    Raises ImageProblem with the reject code.
    """
    if data[128:132] == b"DICM":
        dicom = open_dicom(data)
        if meta_view is None:
            check_view(_view(dicom.view_position), config)
        modality = (dicom.modality or "").upper()
        if modality not in {m.upper() for m in config.modalities}:
            shown = dicom.modality or "missing"
            raise ImageProblem(
                "not_xray",
                f"Modality {shown} is not one of stages.images.modalities={list(config.modalities)}",
            )
        check_decodable(dicom)
        rows, columns = check_size(dicom.rows, dicom.columns, config)
        target = target_size(rows, columns, config.size)
        return decode_dicom(dicom, config), target
    if meta_view is None:  # a JPG/PNG has no header to tell its view
        check_view(None, config)
    im = open_raster(data)
    columns, rows = im.size
    check_size(rows, columns, config)
    target = target_size(rows, columns, config.size)
    return decode_raster(im, target, config), target


def decode_row(root: str | None, row: Mapping[str, Any], config: ImagesConfig) -> dict[str, Any]:
    """One images row for one images_meta row. Raises ImageProblem with the reject code."""
    meta_view = _view(row.get("view_position"))
    if meta_view is not None:  # a known view is filtered before the file is read
        check_view(meta_view, config)
    data = read_file(root, row.get("path"), config.dataset.name)
    declared = (row.get("file_format") or posixpath.splitext(row.get("path") or "")[1].lstrip(".")).lower()
    if declared == "dcm" and data and data[128:132] != b"DICM":
        raise ImageProblem("not_dicom", "no 'DICM' prefix at byte 128: not a DICOM file")
    if not data and declared == "dcm":
        raise ImageProblem("corrupt_dicom", "the file is empty (0 bytes): an interrupted copy?")
    picture, target = picture_of(data, meta_view, config)
    out = resized(picture, target, config)
    lo, hi = out.getextrema()
    if lo == hi:
        raise ImageProblem("constant_image", f"every pixel of the stored picture is {lo} after windowing")
    png = png_bytes(out, config)
    return {
        **{k: row.get(k) for k in _META if k != "view_position"},
        "view_position": meta_view or _view(picture.view_position),
        "source_format": picture.source_format,
        "png": png,
        "height": out.size[1],
        "width": out.size[0],
        "source_rows": picture.source_rows,
        "source_columns": picture.source_columns,
        "bits_stored": picture.bits_stored,
        "photometric_interpretation": picture.photometric_interpretation,
        "window_source": picture.window_source,
        "window_center": picture.window_center,
        "window_width": picture.window_width,
        "sha256": sha256(png),
    }


@map_stage(
    STAGE,
    version=1,
    inputs=("images_meta",),
    outputs=("images",),
    config=ImagesConfig,
    key="image_id",
    row_group_size=256,
)
def images(tables: Mapping[str, pa.Table], *, config: ImagesConfig) -> dict[str, pa.Table]:
    """Decode each images_meta row to an 8-bit grayscale PNG of the configured size, or reject it."""
    check_config(config)
    meta = tables["images_meta"]
    root = images_root(config)
    wanted = [c for c in (*_META, "path", "file_format") if c in meta.column_names]
    rows: list[dict[str, Any]] = []
    rejects: list[tuple[str, str, str | None]] = []
    with warnings.catch_warnings():
        # pydicom and Pillow warn about odd but readable values; a warning is never a reject
        # and must not become an error under -W error. Per part: workers run one thread.
        warnings.simplefilter("ignore")
        for row in meta.select(wanted).to_pylist():
            try:
                rows.append(decode_row(root, row, config))
            except ImageProblem as problem:
                rejects.append((row["image_id"], problem.code, problem.detail))
    schema = load_schema("images").arrow()
    table = pa.Table.from_pylist(rows, schema=schema) if rows else schema.empty_table()
    return {"images": table, "rejects": reject_table(STAGE, "images", rejects)}
