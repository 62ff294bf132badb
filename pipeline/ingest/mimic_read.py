"""MIMIC-CXR ``read``: one part's report files (tree or zip), DICOM headers and label values.

The part was planned by :func:`pipeline.ingest.mimic.plan`, which settled everything that needs
the whole dump; this side only fetches bytes and checks them.
"""

from __future__ import annotations

import struct
import warnings
import zipfile
import zlib
from typing import IO, Any

import pyarrow as pa

from pipeline.core.registry import PartResult
from pipeline.ingest.common import (
    DETAIL,
    IMAGES,
    LABELS,
    REJECT,
    REPORTS,
    PartSpec,
    Rejects,
    build,
    label_value,
    normalise_split,
    observations,
)
from pipeline.ingest.config import IngestConfig
from pipeline.ingest.dicom import DicomHeader, HeaderProblem, read_header
from pipeline.ingest.files import Location, read_many, read_staged
from pipeline.ingest.mimic import FILE, LINE, SOURCE
from pipeline.ingest.text import check_text, decode_text


def read(spec: PartSpec, config: IngestConfig) -> PartResult:
    """Read one part: fetch and check its reports, read DICOM headers, parse label values.

    Every staged row ends in its output table or in rejects. Raises nothing per row; an
    unreadable staged file or zip raises (the part fails and can be rerun).
    """
    rejects = Rejects()
    reports = read_staged(spec.files("reports"))
    report_rows, verdict = _read_reports(spec, reports, config, rejects)
    images = read_staged(spec.files("images"))
    image_rows = _read_images(spec, images, verdict, config, rejects) if images is not None else []
    labels = read_staged(spec.files("labels"))
    label_rows = _read_labels(labels, verdict, rejects) if labels is not None else []
    return PartResult(
        tables={
            REPORTS: build(REPORTS, report_rows),
            IMAGES: build(IMAGES, image_rows),
            LABELS: build(LABELS, label_rows),
            "rejects": rejects.table(),
        },
        rows_in={
            REPORTS: 0 if reports is None else reports.num_rows,
            IMAGES: 0 if images is None else images.num_rows,
            LABELS: 0 if labels is None else labels.num_rows,
        },
    )


def _read_reports(
    spec: PartSpec, reports: pa.Table | None, config: IngestConfig, rejects: Rejects
) -> tuple[list[tuple[Any, ...]], dict[str, str | None]]:
    """Report rows, and for each report id its fate: None when kept, else its reject code."""
    if reports is None:
        return [], {}
    cols = {name: reports[name].to_pylist() for name in reports.column_names}
    todo = [i for i, code in enumerate(cols[REJECT]) if code is None]
    raw = _fetch(spec, cols, todo)
    verdict: dict[str, str | None] = {}
    rows: list[tuple[Any, ...]] = []
    for i, code in enumerate(cols[REJECT]):
        rid = cols["report_id"][i]
        if code is not None:
            rejects.add(REPORTS, rid, code, cols[DETAIL][i])
            verdict.setdefault(rid, code)
    for i, data in zip(todo, raw, strict=True):
        rid = cols["report_id"][i]
        if isinstance(data, Exception):
            code = "missing_file" if isinstance(data, FileNotFoundError | KeyError) else "unreadable_file"
            rejects.add(REPORTS, rid, code, f"{cols['member'][i]}: {type(data).__name__}: {data}")
            verdict[rid] = code
            continue
        text = decode_text(data)
        problem = check_text(text, config.max_chars)
        if problem is not None:
            rejects.add(REPORTS, rid, problem[0], f"{cols['member'][i]}: {problem[1]}")
            verdict[rid] = problem[0]
            continue
        verdict[rid] = None
        rows.append(
            (
                rid,
                cols["subject_id"][i],
                cols["study_id"][i],
                normalise_split(cols["split"][i]),
                SOURCE,
                cols["member"][i],
                text,
                None,
            )
        )
    return rows, verdict


def _fetch(spec: PartSpec, cols: dict[str, list[Any]], todo: list[int]) -> list[bytes | Exception]:
    members = [cols["member"][i] for i in todo]
    if spec.reports_zip is None:
        assert spec.root is not None
        return read_many(Location.of(spec.root), members)
    loc = Location.of(spec.reports_zip)
    out: list[bytes | Exception] = []
    with open(loc.path, "rb") if loc.local else loc.open("rb") as fh:  # noqa: SIM115
        for i in todo:
            try:
                out.append(
                    _zip_member(
                        fh,
                        cols["zip_offset"][i],
                        cols["zip_csize"][i],
                        cols["zip_method"][i],
                        cols["zip_crc"][i],
                    )
                )
            except (OSError, ValueError, zlib.error) as exc:
                out.append(exc)
    return out


def _zip_member(fh: IO[bytes], offset: int, csize: int, method: int, crc: int) -> bytes:
    """One zip member's bytes, read at the offset plan found (no central directory parse per part).

    Raises ValueError for a damaged or encrypted member, zlib.error for bad deflate data.
    """
    fh.seek(offset)
    header = fh.read(30)
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        raise ValueError("no local file header at the recorded offset")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    fh.seek(offset + 30 + name_len + extra_len)
    data = fh.read(csize)
    if method == zipfile.ZIP_STORED:
        out = data
    elif method == zipfile.ZIP_DEFLATED:
        out = zlib.decompress(data, -15)
    else:
        raise ValueError(f"unsupported zip compression method {method} (or an encrypted member)")
    if zlib.crc32(out) != crc:
        raise ValueError("CRC mismatch: the zip member is damaged")
    return out


def _int_or_bad(value: str | None) -> int | None:
    """An int from a metadata cell; raises ValueError for a non-integer."""
    if value is None or not value.strip():
        return None
    return int(float(value))


def _read_images(
    spec: PartSpec, images: pa.Table, verdict: dict[str, str | None], config: IngestConfig, rejects: Rejects
) -> list[tuple[Any, ...]]:
    cols = {name: images[name].to_pylist() for name in images.column_names}
    root = Location.of(spec.root) if spec.root else None
    rows: list[tuple[Any, ...]] = []
    with warnings.catch_warnings():
        # pydicom warns about odd values in real headers; the fields we keep are checked here.
        warnings.simplefilter("ignore")
        for i, code in enumerate(cols[REJECT]):
            row_id = cols["image_id"][i] or f"{cols[FILE][i]}:row {cols[LINE][i]}"
            if code is not None:
                rejects.add(IMAGES, row_id, code, cols[DETAIL][i])
                continue
            rid = cols["report_id"][i]
            fate = verdict.get(rid)
            if fate is not None or rid not in verdict:
                rejects.add(
                    IMAGES, row_id, "orphan_row", f"its report {rid} was rejected ({fate or 'not read'})"
                )
                continue
            try:
                meta_rows = _int_or_bad(cols["rows"][i])
                meta_columns = _int_or_bad(cols["columns"][i])
            except ValueError:
                rejects.add(
                    IMAGES,
                    row_id,
                    "bad_value",
                    f"Rows/Columns {cols['rows'][i]!r}/{cols['columns'][i]!r} are not integers",
                )
                continue
            view = (cols["view_position"][i] or "").strip() or None
            path, fmt = cols["path"][i], cols["file_format"][i]
            header = None
            if path and fmt == "dcm" and config.dicom_headers and root is not None:
                try:
                    header = _header(root, path)
                except HeaderProblem as problem:
                    rejects.add(IMAGES, row_id, problem.code, f"{path}: {problem.detail}")
                    continue
            in_meta = bool(cols["in_metadata"][i])
            if header is not None:  # the header wins where it speaks; the CSV fills the gaps
                technical = (
                    header.view_position or view,
                    header.rows or meta_rows,
                    header.columns or meta_columns,
                    header.modality,
                    header.photometric_interpretation,
                    header.bits_stored,
                    header.transfer_syntax,
                    "both" if in_meta else "dicom",
                )
            else:
                technical = (
                    view,
                    meta_rows,
                    meta_columns,
                    None,
                    None,
                    None,
                    None,
                    "metadata" if in_meta else "file",
                )
            ids = (row_id, rid, cols["subject_id"][i], cols["study_id"][i], normalise_split(cols["split"][i]))
            rows.append((*ids, path, fmt, *technical))
    return rows


def _header(root: Location, path: str) -> DicomHeader:
    if root.local:
        return read_header(root.join(path).path)
    with root.join(path).open("rb") as fh:
        return read_header(fh)


def _read_labels(labels: pa.Table, verdict: dict[str, str | None], rejects: Rejects) -> list[tuple[Any, ...]]:
    obs = observations()
    cols = {name: labels[name].to_pylist() for name in labels.column_names}
    rows: list[tuple[Any, ...]] = []
    for i, code in enumerate(cols[REJECT]):
        rid = cols["report_id"][i]
        row_id = (
            f"{cols[FILE][i]}:row {cols[LINE][i]}"
            if code == "missing_id"
            else f"{rid} ({cols['labeler'][i]})"
        )
        if code is not None:
            rejects.add(LABELS, row_id, code, cols[DETAIL][i])
            continue
        fate = verdict.get(rid)
        if fate is not None or rid not in verdict:
            rejects.add(LABELS, row_id, "orphan_row", f"its report {rid} was rejected ({fate or 'not read'})")
            continue
        try:
            values = tuple(label_value(cols[o][i]) for o in obs)
        except ValueError:
            bad = {o: cols[o][i] for o in obs if not _is_label(cols[o][i])}
            rejects.add(LABELS, row_id, "bad_value", f"label values outside 1/0/-1/blank: {bad}")
            continue
        rows.append((rid, cols["labeler"][i], *values))
    return rows


def _is_label(text: str | None) -> bool:
    try:
        label_value(text)
    except ValueError:
        return False
    return True
