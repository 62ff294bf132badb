"""CheXpert Plus (one CSV of images with their reports and section columns) and CheXpert v1.0
(``train.csv`` / ``valid.csv``: images and labels, no report text).

Both CSVs are streamed on the client and staged part by part; a part holds whole studies, so a
report (or a study's labels) is always in the part of its images.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.errors import PipelineError
from pipeline.core.registry import PartResult, PlanContext
from pipeline.ingest.common import (
    IMAGES,
    LABELS,
    REPORTS,
    PartSpec,
    Rejects,
    build,
    label_value,
    normalise_split,
    observations,
    part_files,
    view_from,
)
from pipeline.ingest.config import IngestConfig
from pipeline.ingest.files import (
    Location,
    check_columns,
    count_rows,
    csv_columns,
    iter_csv,
    list_names,
    read_staged,
    require,
    require_file,
    sniff_text,
)
from pipeline.ingest.text import (
    check_text,
    decode_text_as,
    encoding_note,
    locate_sections,
    not_utf8_rows,
    sectioned_text,
)

log = logging.getLogger(__name__)

# CheXpert Plus section columns and the canonical section names they carry (MIT-LCP's synonyms:
# "clinical history" is history). The accession number is an identifier, not a section.
PLUS_SECTIONS: dict[str, str] = {
    "section_narrative": "narrative",
    "section_clinical_history": "history",
    "section_history": "history",
    "section_comparison": "comparison",
    "section_technique": "technique",
    "section_procedure_comments": "procedure",
    "section_findings": "findings",
    "section_impression": "impression",
    "section_end_of_impression": "end_of_impression",
    "section_summary": "summary",
}
PLUS_OPTIONAL = ("deid_patient_id", "frontal_lateral", "ap_pa", "split")
V1_OPTIONAL = ("Frontal/Lateral", "AP/PA")
V1_FILES = {"train.csv": "train", "valid.csv": "validate"}

# Columns plan adds to each staged row.
RID, FIRST, ROWNO = "_report_id", "_first", "_row"
REP_REJECT, REP_DETAIL, IMG_REJECT, IMG_DETAIL = "_rep_reject", "_rep_detail", "_img_reject", "_img_detail"


def report_hash(data: bytes) -> str:
    """The short stable hash in CheXpert Plus report ids: blake2b-48 of the report's bytes."""
    return hashlib.blake2b(data, digest_size=6).hexdigest()


class _Rows:
    """Per-row bookkeeping of the CheXpert readers, kept across batches and files: each row's
    report id, whether it is its report's first row, its part, and reject codes for the report
    and the image. A row whose path names no study is its own report, rejected."""

    def __init__(self, part_size: int, column: str, shape: str) -> None:
        self.part_size, self.column, self.shape = part_size, column, shape
        self.part_of: dict[str, int] = {}
        self.seen_images: set[str] = set()
        self.n_reports = 0

    def start(self, n: int) -> None:
        self.rids: list[str] = []
        self.firsts: list[bool] = []
        self.parts: list[int] = []
        self.rep_codes: list[str | None] = [None] * n
        self.rep_details: list[str | None] = [None] * n
        self.img_codes: list[str | None] = [None] * n
        self.img_details: list[str | None] = [None] * n

    def bad(self, i: int, label: str, path: str | None) -> None:
        if not (path or "").strip():
            code, detail = "missing_id", f"{self.column} is empty"
        else:
            code, detail = "bad_id", f"{self.column} {path!r} is not {self.shape}"
        self.rids.append(label)
        self.firsts.append(True)
        self.parts.append(self.n_reports // self.part_size)
        self.n_reports += 1
        self.rep_codes[i] = self.img_codes[i] = code
        self.rep_details[i] = self.img_details[i] = detail

    def add(self, i: int, rid: str, image_id: str) -> None:
        part = self.part_of.get(rid)
        self.firsts.append(part is None)
        if part is None:
            part = self.part_of[rid] = self.n_reports // self.part_size
            self.n_reports += 1
        self.rids.append(rid)
        self.parts.append(part)
        if image_id in self.seen_images:
            self.img_codes[i] = "duplicate_id"
            self.img_details[i] = f"{self.column} {image_id} repeated (first kept)"
        self.seen_images.add(image_id)

    def columns(self, table: pa.Table) -> pa.Table:
        """``table`` with the bookkeeping columns appended."""
        return (
            table.append_column(RID, pa.array(self.rids, pa.string()))
            .append_column(FIRST, pa.array(self.firsts, pa.bool_()))
            .append_column(REP_REJECT, pa.array(self.rep_codes, pa.string()))
            .append_column(REP_DETAIL, pa.array(self.rep_details, pa.string()))
            .append_column(IMG_REJECT, pa.array(self.img_codes, pa.string()))
            .append_column(IMG_DETAIL, pa.array(self.img_details, pa.string()))
        )


def _image_row(
    image_id: str, report_id: str, subject: str, study: str, split: str | None, path: str, view: str | None
) -> tuple[Any, ...]:
    """One images_meta row of a CheXpert CSV: the CSV names no DICOM tags, so those are null."""
    return (image_id, report_id, subject, study, split, path, _format(path), view, *[None] * 6, "metadata")


def _study_parts(path: str, head: bool) -> tuple[str, str] | None:
    """(study key, image id) of an image path, or None when it has too few parts.

    CheXpert Plus paths start at the split folder (``train/patient1/study1/view1.jpg``: the study
    is the first three parts); v1.0 paths carry a dataset folder first, so the study is the three
    parts before the file name.
    """
    parts = [p for p in path.strip().split("/") if p]
    if len(parts) < 4:
        return None
    if head:
        return "/".join(parts[:3]), path.strip()
    return "/".join(parts[-4:-1]), "/".join(parts[-4:])


class _Stager:
    """Streams batches into staged part files and counts the parts."""

    def __init__(self, ctx: PlanContext, prefix: str) -> None:
        self.ctx = ctx
        self.prefix = prefix
        self.files: dict[int, list[str]] = {}
        self.batches = 0

    def add(self, table: pa.Table, parts: list[int]) -> None:
        part_files(
            self.ctx.staging_dir,
            f"{self.prefix}-b{self.batches:05d}",
            table,
            np.asarray(parts, dtype=np.int64),
            self.files,
        )
        self.batches += 1

    def specs(self, adapter: str, root: str, dump: str) -> list[PartSpec]:
        n_parts = max(self.files, default=-1) + 1
        return [
            PartSpec(
                adapter=adapter,
                index=p,
                staged=(("rows", tuple(self.files.get(p, ()))),),
                root=root,
                digest=dump,
            )
            for p in range(n_parts)
        ]


# -- CheXpert Plus ---------------------------------------------------------------------------------


def plan_plus(config: IngestConfig, ctx: PlanContext) -> list[PartSpec]:
    """Part specs of a CheXpert Plus CSV (``dataset.path``), ``part_size`` reports each.

    Raises PipelineError: E_DUMP_MISSING (no such file), E_DUMP_LAYOUT (a folder),
    E_DUMP_UNREADABLE, E_DUMP_FORMAT (not CSV text), E_DUMP_EMPTY (0 bytes, or a header and no
    rows), E_DUMP_COLUMNS (path_to_image or report missing; a malformed CSV).
    """
    loc = require_file(config.dataset.path, "dataset.path", "CheXpert Plus CSV")
    _log_encoding(loc)
    names = csv_columns(loc)
    check_columns(
        names, ["path_to_image", "report"], loc.url, "dataset=chexpert_plus reads df_chexpert_plus_*.csv."
    )
    sections = [c for c in PLUS_SECTIONS if c in names]
    optional = [c for c in PLUS_OPTIONAL if c in names]
    stager = _Stager(ctx, "cxp")
    # Rows (images) bound the reports: a safe count for sizing the parts.
    part_size = ctx.part_size_for(lambda: count_rows(loc, "path_to_image"))
    rows = _Rows(part_size, "path_to_image", "<split>/<patient>/<study>/<image>")
    row = 0
    not_utf8: list[str] = []
    n_not_utf8 = 0
    for batch in iter_csv(
        loc, ["path_to_image", "report", *sections, *optional], binary=["report", *sections]
    ):
        paths = batch.column("path_to_image").to_pylist()
        reports = batch.column("report").to_pylist()
        section_values = [batch.column(c).to_pylist() for c in sections]
        n = len(paths)
        rows.start(n)
        for i, path in enumerate(paths):
            key = _study_parts(path or "", head=True)
            if key is None:
                rows.bad(i, f"row {row + i + 2}", path)
                continue
            study, image_id = key
            body = reports[i] or b""
            if not body.strip():
                body = b"\x1f".join(v[i] or b"" for v in section_values)
            rows.add(i, f"{study}/{report_hash(body)}", image_id)
        first_mask = pa.array(rows.firsts, pa.bool_())
        table = pa.Table.from_batches([batch])
        bad = [i for i in not_utf8_rows([table[c] for c in ["report", *sections]]) if rows.firsts[i]]
        n_not_utf8 += len(bad)
        not_utf8.extend(f"row {row + i + 2}" for i in bad[: max(0, 5 - len(not_utf8))])
        # Only a report's first row needs its text: later rows of the same report are images.
        for c in ["report", *sections]:
            table = table.set_column(
                table.schema.get_field_index(c),
                c,
                pc.if_else(first_mask, table[c], pa.scalar(None, pa.binary())),
            )
        table = rows.columns(table).append_column(
            ROWNO, pa.array(np.arange(row, row + n, dtype=np.int64) + 2)
        )
        stager.add(table, rows.parts)
        row += n
    if row == 0:
        raise PipelineError(
            "E_DUMP_EMPTY",
            f"{loc.url} has a header but no rows: there is no report to read. Point dataset.path at "
            "the full df_chexpert_plus_*.csv (a download or export that stopped early leaves only "
            "the header).",
        )
    if n_not_utf8:
        log.warning(encoding_note(loc.url, n_not_utf8, not_utf8))
    log.info("chexpert_plus: %d rows, %d reports", row, rows.n_reports)
    return stager.specs("chexpert_plus", posixpath.dirname(loc.url), "")


def read_plus(spec: PartSpec, config: IngestConfig) -> PartResult:
    """Reports (text and known section spans) and images of one CheXpert Plus part."""
    rejects = Rejects()
    table = read_staged(spec.files("rows"))
    report_rows: list[tuple[Any, ...]] = []
    image_rows: list[tuple[Any, ...]] = []
    n_reports = n_images = 0
    if table is not None:
        cols = {name: table[name].to_pylist() for name in table.column_names}
        sections = [c for c in PLUS_SECTIONS if c in cols]
        verdict: dict[str, str | None] = {}
        cp1252: list[str] = []  # reports whose text was not UTF-8 and was read as Windows-1252
        for i, rid in enumerate(cols[RID]):
            if cols[FIRST][i]:
                n_reports += 1
                problem = _plus_report(cols, sections, i, rid, config.max_chars, report_rows, cp1252)
                verdict[rid] = problem[0] if problem else None
                if problem:
                    rejects.add(REPORTS, rid, *problem)
            n_images += 1
            path = cols["path_to_image"][i] or ""
            if cols[IMG_REJECT][i]:
                rejects.add(IMAGES, path or rid, cols[IMG_REJECT][i], cols[IMG_DETAIL][i])
                continue
            if verdict.get(rid) is not None:
                rejects.add(IMAGES, path, "orphan_row", f"its report {rid} was rejected ({verdict[rid]})")
                continue
            study = rid.rsplit("/", 1)[0]
            image_rows.append(
                _image_row(
                    path.strip(),
                    rid,
                    _get(cols, "deid_patient_id", i) or study.split("/")[1],
                    study,
                    normalise_split(_get(cols, "split", i)),
                    path.strip(),
                    view_from(_get(cols, "frontal_lateral", i), _get(cols, "ap_pa", i)),
                )
            )
        if cp1252:
            # Per part, for the manifest (the plan warns once for the whole file).
            log.info(
                "chexpert_plus part %d: %d of %d reports not UTF-8, read as Windows-1252",
                spec.index,
                len(cp1252),
                n_reports,
            )
    return PartResult(
        tables={
            REPORTS: build(REPORTS, report_rows),
            IMAGES: build(IMAGES, image_rows),
            LABELS: build(LABELS, []),
            "rejects": rejects.table(),
        },
        rows_in={REPORTS: n_reports, IMAGES: n_images, LABELS: 0},
        notes={"rows_read_as_cp1252": len(cp1252)} if cp1252 else {},
    )


def _plus_report(
    cols: dict[str, list[Any]],
    sections: list[str],
    i: int,
    rid: str,
    max_chars: int,
    out: list[tuple[Any, ...]],
    cp1252: list[str],
) -> tuple[str, str | None] | None:
    """Append report ``i`` to ``out``, or return its (reject code, detail). A report with text that
    was not UTF-8 (read as Windows-1252) has its id appended to ``cp1252``."""
    if cols[REP_REJECT][i]:
        return cols[REP_REJECT][i], cols[REP_DETAIL][i]
    report, encoding = decode_text_as(cols["report"][i])
    decoded = [(PLUS_SECTIONS[c], *decode_text_as(cols[c][i])) for c in sections]
    bodies = [(name, body) for name, body, _ in decoded]
    if encoding == "cp1252" or any(enc == "cp1252" for _, _, enc in decoded):
        cp1252.append(rid)
    spans: list[dict[str, object]] | None
    if report is not None and report.strip():
        text = report
        spans = locate_sections(text, [(name, body) for name, body in bodies if body])
    elif report is None or any(body is None for _, body in bodies):
        text, spans = None, None
    else:
        text, built = sectioned_text([(name, body or "") for name, body in bodies])
        spans = built or None
    problem = check_text(text, max_chars)
    if problem:
        return problem
    study = rid.rsplit("/", 1)[0]
    out.append(
        (
            rid,
            _get(cols, "deid_patient_id", i) or study.split("/")[1],
            study,
            normalise_split(_get(cols, "split", i)),
            "chexpert_plus",
            f"row {cols[ROWNO][i]}",
            text,
            spans,
        )
    )
    return None


def _get(cols: dict[str, list[Any]], name: str, i: int) -> Any:
    values = cols.get(name)
    if values is None:
        return None
    value = values[i]
    return value.strip() or None if isinstance(value, str) else value


def _format(path: str) -> str | None:
    ext = posixpath.splitext(path.strip())[1].lower().lstrip(".")
    return {"jpeg": "jpg"}.get(ext, ext) or None


# -- CheXpert v1.0 ---------------------------------------------------------------------------------


def _v1_files(config: IngestConfig) -> list[tuple[Location, str | None]]:
    ds = config.dataset
    if ds.path:
        loc = require_file(ds.path, "dataset.path", "CheXpert train/valid CSV")
        return [(loc, V1_FILES.get(loc.name))]
    if not ds.root:
        raise PipelineError(
            "E_DUMP_MISSING",
            "no CheXpert dump given: set dataset.root=<folder with train.csv and "
            "valid.csv> or dataset.path=<one of them>.",
        )
    root = require(ds.root, "dataset.root", "CheXpert folder")
    names = list_names(root) if root.isdir() else []
    found = [(root.join(n), split) for n, split in V1_FILES.items() if n in names]
    if not found:
        raise PipelineError(
            "E_DUMP_LAYOUT",
            f"no train.csv or valid.csv in {root.url}: point dataset.root at the "
            "CheXpert-v1.0 folder or set dataset.path=<csv>.",
        )
    return found


def _log_encoding(loc: Location) -> None:
    """Say so when a CSV is not UTF-8 (it is re-encoded on the fly); raises as sniff_text does."""
    sniff = sniff_text(loc)
    if sniff.transcoded:
        log.warning("%s is %s: read re-encoded as UTF-8", loc.url, sniff.describe())


def plan_v1(config: IngestConfig, ctx: PlanContext) -> list[PartSpec]:
    """Part specs of CheXpert v1.0 CSVs, ``part_size`` studies each (there are no reports).

    Raises PipelineError: E_DUMP_MISSING, E_DUMP_LAYOUT (no train/valid CSV; a folder given as
    dataset.path), E_DUMP_UNREADABLE, E_DUMP_FORMAT, E_DUMP_EMPTY (no rows in any CSV),
    E_DUMP_COLUMNS.
    """
    obs = list(observations())
    stager = _Stager(ctx, "cxv1")
    files = _v1_files(config)
    part_size = ctx.part_size_for(lambda: sum(count_rows(loc, "Path") for loc, _ in files))
    rows = _Rows(part_size, "Path", ".../<patient>/<study>/<image>")
    n_rows = 0
    for loc, split in files:
        _log_encoding(loc)
        names = csv_columns(loc)
        check_columns(names, ["Path", *obs], loc.url, "CheXpert v1.0 CSVs have Path and the 14 observations.")
        optional = [c for c in V1_OPTIONAL if c in names]
        row = 0
        for batch in iter_csv(loc, ["Path", *optional, *obs]):
            paths = batch.column("Path").to_pylist()
            n = len(paths)
            rows.start(n)
            for i, path in enumerate(paths):
                key = _study_parts(path or "", head=False)
                if key is None:
                    rows.bad(i, f"{loc.name}:row {row + i + 2}", path)
                    continue
                study, image_id = key
                rows.add(i, study, image_id)
            table = rows.columns(pa.Table.from_batches([batch])).append_column(
                "_split", pa.array([split] * n, pa.string())
            )
            # Batches of two CSVs have different optional columns: stage each file's on its own.
            stager.prefix = f"cxv1-{loc.name.split('.')[0]}"
            stager.add(table, rows.parts)
            row += n
        n_rows += row
    if n_rows == 0:
        raise PipelineError(
            "E_DUMP_EMPTY",
            f"{' and '.join(loc.url for loc, _ in files)} {'have headers' if len(files) > 1 else 'has a header'} "
            "but no rows: there is no image to read. Point dataset.root (or dataset.path) at the full "
            "CheXpert CSVs.",
        )
    log.info("chexpert: %d studies", rows.n_reports)
    return stager.specs("chexpert", posixpath.dirname(files[0][0].url), "")


def read_v1(spec: PartSpec, config: IngestConfig) -> PartResult:
    """Images and official labels (labeler ``chexpert``, one row per study) of a CheXpert v1.0 part."""
    rejects = Rejects()
    obs = observations()
    image_rows: list[tuple[Any, ...]] = []
    label_rows: list[tuple[Any, ...]] = []
    n_images = n_labels = 0
    for cols in _staged_columns(spec):
        for i, rid in enumerate(cols[RID]):
            n_images += 1
            if cols[FIRST][i]:
                n_labels += 1
                if cols[REP_REJECT][i]:
                    rejects.add(LABELS, f"{rid} (chexpert)", cols[REP_REJECT][i], cols[REP_DETAIL][i])
                else:
                    try:
                        label_rows.append((rid, "chexpert", *(label_value(cols[o][i]) for o in obs)))
                    except ValueError:
                        rejects.add(
                            LABELS,
                            f"{rid} (chexpert)",
                            "bad_value",
                            "label values outside 1/0/-1/blank: "
                            + str({o: cols[o][i] for o in obs if not _label_ok(cols[o][i])}),
                        )
            path = (cols["Path"][i] or "").strip()
            if cols[IMG_REJECT][i]:
                rejects.add(IMAGES, path or rid, cols[IMG_REJECT][i], cols[IMG_DETAIL][i])
                continue
            key = _study_parts(path, head=False)
            assert key is not None
            image_rows.append(
                _image_row(
                    key[1],
                    rid,
                    rid.split("/")[1],
                    rid,
                    cols["_split"][i],
                    path,
                    view_from(_get(cols, "Frontal/Lateral", i), _get(cols, "AP/PA", i)),
                )
            )
    return PartResult(
        tables={
            REPORTS: build(REPORTS, []),
            IMAGES: build(IMAGES, image_rows),
            LABELS: build(LABELS, label_rows),
            "rejects": rejects.table(),
        },
        rows_in={REPORTS: 0, IMAGES: n_images, LABELS: n_labels},
    )


def _staged_columns(spec: PartSpec) -> Iterator[dict[str, list[Any]]]:
    # Staged files of train.csv and valid.csv may differ in optional columns: read them one by one.
    for url in spec.files("rows"):
        table = read_staged([url])
        if table is not None:
            yield {name: table[name].to_pylist() for name in table.column_names}


def _label_ok(text: str | None) -> bool:
    try:
        label_value(text)
    except ValueError:
        return False
    return True
