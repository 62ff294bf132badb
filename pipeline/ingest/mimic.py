"""MIMIC-CXR (2.0.0 / 2.1.0, and MIMIC-CXR-JPG trees): report files or the reports zip, metadata,
split and label CSVs, and DICOM headers.

``plan`` (here) lists the dump once on the client, decides everything that needs the whole dump
(which report of a study is kept, which study an image or a label row belongs to, orphans) and
stages each part's rows as small Parquet files; ``read`` (:mod:`pipeline.ingest.mimic_read`)
fetches and checks the part's reports and DICOM headers on a worker.
"""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.errors import PipelineError
from pipeline.core.registry import PlanContext
from pipeline.ingest.common import (
    DETAIL,
    REJECT,
    PartSpec,
    observations,
    part_files,
    spread,
)
from pipeline.ingest.config import IngestConfig
from pipeline.ingest.files import (
    Location,
    check_columns,
    csv_columns,
    list_names,
    pick_file,
    read_csv,
    require,
    walk_files,
)

log = logging.getLogger(__name__)

SOURCE = "mimic_cxr"
REPORTS_ZIP = "mimic-cxr-reports.zip"
# Arrow (RE2) patterns: the study, subject and image named by a path of the files/ tree.
_REPORT = r"(?:^|/)p\d+/p(?P<subject>\d+)/s(?P<study>\d+)\.txt$"
_IMAGE = r"(?:^|/)p\d+/p(?P<subject>\d+)/s(?P<study>\d+)/(?P<image>[^/]+)\.(?P<ext>(?i:dcm|jpe?g|png))$"
_IMAGE_SUFFIXES = (".dcm", ".jpg", ".jpeg", ".png", ".DCM", ".JPG", ".JPEG", ".PNG")

_V = r"mimic-cxr-2\.\d+\.\d+"
METADATA = _V + r"-metadata\.csv(\.gz)?"
SPLIT = _V + r"-split\.csv(\.gz)?"
STUDY_LIST = r"cxr-study-list\.csv(\.gz)?"
LABEL_FILES: tuple[tuple[str, str], ...] = (
    (_V + r"-chexpert\.csv(\.gz)?", "chexpert"),
    (_V + r"-negbio\.csv(\.gz)?", "negbio"),
    (r"mimic-cxr-2\.1\.0-test-set-labeled\.csv(\.gz)?", "radiologist"),
)
# The 2.1.0 radiologist test set names one observation differently.
LABEL_ALIASES = {"Lung Opacity": ("Airspace Opacity",)}
# Staged columns besides the dump's own: the CSV line a row came from and that CSV's name.
LINE, FILE = "_line", "_file"
ZIP_COLUMNS = {
    "zip_offset": pa.int64(),
    "zip_csize": pa.int64(),
    "zip_method": pa.int32(),
    "zip_crc": pa.int64(),
}


# -- plan ------------------------------------------------------------------------------------------


def ensure_demo(config: IngestConfig) -> None:
    """Generate the demo dump into ``dataset.root`` when it is absent or an empty folder.

    Raises PipelineError(E_DUMP_MISSING) without a root, or for a remote root that does not
    exist (the generator writes local files only); PipelineError(demo_bad_argument) for a
    demo setting out of range (``image_size``, ``image_format``, ...).
    """
    ds = config.dataset
    if not ds.root:
        raise PipelineError("E_DUMP_MISSING", "the demo dump needs a folder: set dataset.root=<folder>.")
    root = Location.of(ds.root)
    if root.exists() and (not root.isdir() or root.fs.ls(root.path, detail=False)):
        return
    if not root.local:
        raise PipelineError(
            "E_DUMP_MISSING",
            f"dataset.root={ds.root!r} does not exist and the demo dump is "
            "generated into local folders only: set dataset.root=<local folder>.",
        )
    from pipeline.demo import generate_demo_dump  # the demo generator is only needed here

    log.info("generating a demo dump of %d reports into %s", ds.n_reports, root.path)
    generate_demo_dump(
        root.path,
        n_reports=ds.n_reports,
        seed=ds.seed,
        inject_bad_rows=ds.inject_bad_rows,
        image_size=ds.image_size,
        image_format=ds.image_format,
    )


class _Paths:
    """Strings gathered into Arrow chunks: a 600k-file listing stays compact on the client."""

    def __init__(self) -> None:
        self.chunks: list[pa.Array] = []
        self.buffer: list[str] = []

    def add(self, value: str) -> None:
        self.buffer.append(value)
        if len(self.buffer) >= 65_536:
            self._flush()

    def _flush(self) -> None:
        if self.buffer:
            self.chunks.append(pa.array(self.buffer, pa.string()))
            self.buffer = []

    def array(self) -> pa.Array:
        self._flush()
        return pa.concat_arrays(self.chunks) if self.chunks else pa.array([], pa.string())


def _list_tree(root: Location) -> tuple[pa.Array, pa.Array]:
    """Paths (relative to root) of the ``.txt`` files and of the image files under ``files/``."""
    texts, images = _Paths(), _Paths()
    for rel in walk_files(root.join("files")):
        if rel.endswith(".txt"):
            texts.add("files/" + rel)
        elif rel.endswith(_IMAGE_SUFFIXES):
            images.add("files/" + rel)
    return texts.array(), images.array()


def tree_stamp(root: Location) -> str | None:
    """Names and modification times of ``files/``, its ``pNN`` group folders and the patient
    folders (a folder's time changes when a file or folder is added to it or removed): 65k stats
    instead of listing 600k files. An image added to an existing study folder, or a report edited
    in place, goes unseen: ``force=true``. None when the tree is not local."""
    top = root.join("files")
    if not top.local or not os.path.isdir(top.path):
        return None
    entries = [f"files {os.stat(top.path).st_mtime_ns}"]
    with os.scandir(top.path) as groups:
        for group in sorted(groups, key=lambda e: e.name):
            if not group.is_dir():
                continue
            entries.append(f"{group.name} {group.stat().st_mtime_ns}")
            with os.scandir(group.path) as patients:
                for patient in sorted(patients, key=lambda e: e.name):
                    entries.append(f"{group.name}/{patient.name} {patient.stat().st_mtime_ns}")
    return "\n".join(entries)


def _list_zip(zloc: Location) -> pa.Table:
    """The ``.txt`` members of the reports zip with where each one's bytes sit."""
    try:
        with zloc.open("rb") as fh, zipfile.ZipFile(fh) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir() and i.filename.endswith(".txt")]
    except zipfile.BadZipFile as exc:
        raise PipelineError("E_DUMP_LAYOUT", f"{zloc.url} is not a readable zip file ({exc}).") from exc
    return pa.table(
        {
            "member": pa.array([i.filename for i in infos], pa.string()),
            "zip_offset": pa.array([i.header_offset for i in infos], pa.int64()),
            "zip_csize": pa.array([i.compress_size for i in infos], pa.int64()),
            # -1 marks an encrypted member, which read rejects as unreadable.
            "zip_method": pa.array([-1 if i.flag_bits & 0x1 else i.compress_type for i in infos], pa.int32()),
            "zip_crc": pa.array([i.CRC for i in infos], pa.int64()),
        }
    )


def plan(config: IngestConfig, ctx: PlanContext) -> list[PartSpec]:
    """Part specs of a MIMIC-CXR dump (``dataset.root``), staging each part's rows.

    Memory stays bounded by columnar listings (Arrow, not Python objects): about 0.5 GiB for the
    full MIMIC-CXR. Raises PipelineError: E_DUMP_MISSING (root or reports_zip absent),
    E_DUMP_LAYOUT (no report files under files/ and no reports zip, or a damaged zip),
    E_DUMP_COLUMNS (a CSV without the columns it needs).
    """
    ds = config.dataset
    if ds.name == "demo":
        ensure_demo(config)
    root = require(ds.root, "dataset.root", "MIMIC-CXR dump folder")
    if not root.isdir():
        raise PipelineError(
            "E_DUMP_LAYOUT",
            f"dataset.root={ds.root!r} is a file; give the dump folder (the one holding files/ and the CSVs).",
        )
    names = list_names(root)
    texts, image_paths = _list_tree(root) if "files" in names else (pa.array([], pa.string()),) * 2
    zloc: Location | None = None
    if ds.reports_zip:
        zloc = require(ds.reports_zip, "dataset.reports_zip", "MIMIC-CXR reports zip")
    elif not len(texts) and REPORTS_ZIP in names:
        zloc = root.join(REPORTS_ZIP)
    if zloc is not None:
        files = _list_zip(zloc)  # an explicit zip wins over loose files
    else:
        files = pa.table({"member": texts, **{c: pa.nulls(len(texts), t) for c, t in ZIP_COLUMNS.items()}})
    del texts
    if not files.num_rows:
        raise PipelineError(
            "E_DUMP_LAYOUT",
            f"no report files under {root.url}/files (files/p10/p10000032/s50414267.txt) and no "
            f"{REPORTS_ZIP}: unpack the reports there, or set dataset.reports_zip=<path to {REPORTS_ZIP}>.",
        )

    meta_name = pick_file(names, METADATA)
    meta = _read_metadata(root.join(meta_name)) if meta_name else None
    reports = _report_rows(root, names, files, meta)
    del files
    parts = np.arange(reports.num_rows, dtype=np.int64) // ctx.part_size_for(reports.num_rows)
    n_parts = int(parts[-1]) + 1
    # Images and labels follow the part of their study's kept report (or its missing_file row).
    keep = pc.fill_null(pc.not_equal(reports[REJECT], "duplicate_id"), True)
    keep = pc.and_(keep, pc.not_equal(pc.fill_null(reports[REJECT], ""), "bad_id"))
    kept_ids = reports["report_id"].filter(keep).combine_chunks()
    kept_parts = parts[np.asarray(keep.to_numpy(zero_copy_only=False), dtype=bool)]
    splits = _read_splits(root, names)
    if splits is not None:
        reports = reports.set_column(
            reports.schema.get_field_index("split"), "split", _study_split(splits, reports)
        )
    images = _image_rows(meta_name, meta, image_paths, splits)
    del meta, image_paths, splits
    labels = _label_rows(root, names, reports)

    staged: dict[str, dict[int, list[str]]] = {"reports": {}, "images": {}, "labels": {}}
    part_files(ctx.staging_dir, "mimic-reports", reports, parts, staged["reports"])
    for kind, table in (("images", images), ("labels", labels)):
        if table is not None and table.num_rows:
            table, rows_parts = _assign(table, kept_ids, kept_parts, n_parts)
            part_files(ctx.staging_dir, f"mimic-{kind}", table, rows_parts, staged[kind])
    log.info(
        "mimic_cxr: %d report rows, %d images, %d label rows, %d parts",
        reports.num_rows,
        0 if images is None else images.num_rows,
        0 if labels is None else labels.num_rows,
        n_parts,
    )
    return [
        PartSpec(
            adapter=SOURCE,
            index=p,
            staged=tuple((k, tuple(staged[k].get(p, ()))) for k in ("reports", "images", "labels")),
            root=root.url,
            reports_zip=zloc.url if zloc else None,
        )
        for p in range(n_parts)
    ]


def _repeated(values: pa.Array | pa.ChunkedArray) -> list[str]:
    """The values occurring more than once (few in any real dump)."""
    counts = pc.value_counts(values)
    return counts.field("values").filter(pc.greater(counts.field("counts"), 1)).to_pylist()


def _rows_of(values: pa.Array | pa.ChunkedArray, wanted: Sequence[str]) -> list[int]:
    if not wanted:
        return []
    return pc.indices_nonzero(pc.is_in(values, value_set=pa.array(wanted, pa.string()))).to_pylist()


def _const(value: str, n: int) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(
        pa.array(np.zeros(n, dtype=np.int32)), pa.array([value], pa.string())
    )


def _report_rows(root: Location, names: Sequence[str], files: pa.Table, meta: pa.Table | None) -> pa.Table:
    """One row per report file (duplicates and bad names flagged), then listed studies without one.

    Of several files of one study, the one under the subject the metadata gives for that study is
    kept (a copy filed under another patient is the duplicate), else the first by path.
    """
    files = files.take(pc.sort_indices(files["member"]))
    found = pc.extract_regex(files["member"], _REPORT)
    named = pc.is_valid(found)
    good, bad = files.filter(named), files.filter(pc.invert(named))
    found = found.filter(named)
    studies = pc.struct_field(found, "study")
    n = good.num_rows
    codes: list[str | None] = [None] * n
    details: list[str | None] = [None] * n
    dups = _repeated(studies)
    if dups:
        subjects = pc.struct_field(found, "subject")
        preferred: dict[str, str] = {}
        if meta is not None:
            rows = meta.filter(pc.is_in(meta["study_id"], value_set=pa.array(dups, pa.string())))
            for study, subject in zip(
                rows["study_id"].to_pylist(), rows["subject_id"].to_pylist(), strict=True
            ):
                preferred.setdefault(study, subject)
        by_study: dict[str, list[int]] = {}
        for i in _rows_of(studies, dups):
            by_study.setdefault(studies[i].as_py(), []).append(i)
        for study, rows_of_study in by_study.items():
            members = {i: good["member"][i].as_py() for i in rows_of_study}
            kept = min(rows_of_study, key=lambda i: (subjects[i].as_py() != preferred.get(study), members[i]))
            for i in rows_of_study:
                if i != kept:
                    codes[i] = "duplicate_id"
                    details[i] = f"{members[i]}: study {study} is also at {members[kept]}, which is kept"
    tables = [
        pa.table(
            {
                "report_id": pc.binary_join_element_wise("s", studies, ""),
                "subject_id": pc.struct_field(found, "subject"),
                "study_id": studies,
                "member": good["member"],
                **{c: good[c] for c in ZIP_COLUMNS},
                REJECT: pa.array(codes, pa.string()),
                DETAIL: pa.array(details, pa.string()),
            }
        )
    ]
    if bad.num_rows:
        tables.append(
            pa.table(
                {
                    "report_id": bad["member"],
                    "subject_id": pa.nulls(bad.num_rows, pa.string()),
                    "study_id": pa.nulls(bad.num_rows, pa.string()),
                    "member": bad["member"],
                    **{c: bad[c] for c in ZIP_COLUMNS},
                    REJECT: pa.array(["bad_id"] * bad.num_rows, pa.string()),
                    DETAIL: pa.array(
                        ["report files are named files/pXX/p<subject_id>/s<study_id>.txt"] * bad.num_rows,
                        pa.string(),
                    ),
                }
            )
        )
    listed = pick_file(names, STUDY_LIST)
    if listed:
        tables.extend(_unfiled_studies(root.join(listed), studies))
    table = pa.concat_tables(tables)
    return table.add_column(3, "split", pa.nulls(table.num_rows, pa.string()))


def _unfiled_studies(loc: Location, filed: pa.Array | pa.ChunkedArray) -> list[pa.Table]:
    """Rows of the study list whose report file is absent (missing_file) or without a study id."""
    cols = csv_columns(loc)
    check_columns(cols, ["study_id"], loc.url)
    listing = read_csv(loc, [c for c in ("subject_id", "study_id", "path") if c in cols])
    studies = pc.utf8_trim_whitespace(listing["study_id"])
    absent = pc.invert(
        pc.is_in(studies, value_set=filed.combine_chunks() if hasattr(filed, "combine_chunks") else filed)
    )
    rows = pc.indices_nonzero(absent).to_pylist()
    out: dict[str, list[Any]] = {k: [] for k in ("report_id", "subject_id", "study_id", REJECT, DETAIL)}
    seen: set[str] = set()
    for i in rows:
        study = studies[i].as_py()
        subject = listing["subject_id"][i].as_py() if "subject_id" in cols else None
        if not study:
            row_id, code, detail = (
                f"{loc.name}:row {i + 2}",
                "missing_id",
                f"{loc.name} row {i + 2} has no study_id",
            )
        elif study in seen:
            continue
        else:
            seen.add(study)
            path = listing["path"][i].as_py() if "path" in cols else None
            row_id, code, detail = (
                "s" + study,
                "missing_file",
                f"{loc.name} lists {path or study}, which is not in the dump",
            )
        for key, value in zip(out, (row_id, subject or None, study or None, code, detail), strict=True):
            out[key].append(value)
    if not out["report_id"]:
        return []
    n = len(out["report_id"])
    return [
        pa.table(
            {
                "report_id": pa.array(out["report_id"], pa.string()),
                "subject_id": pa.array(out["subject_id"], pa.string()),
                "study_id": pa.array(out["study_id"], pa.string()),
                "member": pa.array([""] * n, pa.string()),
                **{c: pa.nulls(n, t) for c, t in ZIP_COLUMNS.items()},
                REJECT: pa.array(out[REJECT], pa.string()),
                DETAIL: pa.array(out[DETAIL], pa.string()),
            }
        )
    ]


def _read_splits(root: Location, names: Sequence[str]) -> pa.Table | None:
    name = pick_file(names, SPLIT)
    if not name:
        return None
    loc = root.join(name)
    cols = csv_columns(loc)
    check_columns(cols, ["dicom_id", "split"], loc.url)
    return read_csv(loc, [c for c in ("dicom_id", "study_id", "split") if c in cols])


def _study_split(splits: pa.Table, reports: pa.Table) -> pa.ChunkedArray | pa.Array:
    """Each report's split: that of the first image of its study in the split CSV."""
    if "study_id" not in splits.column_names:
        return pa.nulls(reports.num_rows, pa.string())
    first = splits.group_by("study_id", use_threads=False).aggregate([("split", "first")])
    at = pc.index_in(reports["study_id"], value_set=first["study_id"].combine_chunks())
    return pc.take(first["split_first"].combine_chunks(), at)


def _read_metadata(loc: Location) -> pa.Table:
    cols = csv_columns(loc)
    check_columns(cols, ["dicom_id", "study_id"], loc.url)
    wanted = ("dicom_id", "subject_id", "study_id", "ViewPosition", "Rows", "Columns")
    table = read_csv(loc, [c for c in wanted if c in cols])
    for c in wanted:
        if c not in cols:
            table = table.append_column(c, pa.nulls(table.num_rows, pa.string()))
    return table


def _image_files(paths: pa.Array) -> pa.Table:
    """Image files of the tree, one per image id (a DICOM preferred over a JPG of the same image)."""
    found = pc.extract_regex(paths, _IMAGE)
    named = pc.is_valid(found)
    found, paths = found.filter(named), paths.filter(named)
    ext = pc.utf8_lower(pc.struct_field(found, "ext"))
    files = pa.table(
        {
            "image_id": pc.struct_field(found, "image"),
            "subject_id": pc.struct_field(found, "subject"),
            "study_id": pc.struct_field(found, "study"),
            "path": paths,
            "file_format": pc.if_else(pc.equal(ext, "jpeg"), "jpg", ext),
        }
    )
    dups = _repeated(files["image_id"])
    if not dups:
        return files
    drop: list[int] = []
    by_id: dict[str, list[int]] = {}
    for i in _rows_of(files["image_id"], dups):
        by_id.setdefault(files["image_id"][i].as_py(), []).append(i)
    for rows in by_id.values():
        kept = min(rows, key=lambda i: (files["file_format"][i].as_py() != "dcm", files["path"][i].as_py()))
        drop.extend(i for i in rows if i != kept)
    mask = np.ones(files.num_rows, dtype=bool)
    mask[drop] = False
    return files.filter(pa.array(mask))


def _image_rows(
    meta_name: str | None, meta: pa.Table | None, image_paths: pa.Array, splits: pa.Table | None
) -> pa.Table | None:
    """One row per image: metadata rows (with the file's path when it is there), then image files
    the metadata does not list. Duplicate and missing dicom_ids are flagged."""
    files = _image_files(image_paths)
    tables: list[pa.Table] = []
    if meta is not None and meta_name is not None:
        n = meta.num_rows
        ids = pc.utf8_trim_whitespace(meta["dicom_id"])
        codes: list[str | None] = [None] * n
        details: list[str | None] = [None] * n
        for i in pc.indices_nonzero(pc.equal(ids, "")).to_pylist():
            codes[i], details[i] = "missing_id", f"{meta_name} row {i + 2} has no dicom_id"
        seen: set[str] = set()
        for i in _rows_of(ids, [d for d in _repeated(ids) if d]):
            image_id = ids[i].as_py()
            if image_id in seen:
                codes[i], details[i] = (
                    "duplicate_id",
                    f"{meta_name} row {i + 2}: dicom_id repeated (first kept)",
                )
            seen.add(image_id)
        at = pc.index_in(ids, value_set=files["image_id"].combine_chunks())
        tables.append(
            pa.table(
                {
                    "image_id": ids,
                    "subject_id": meta["subject_id"],
                    "study_id": meta["study_id"],
                    "path": pc.take(files["path"].combine_chunks(), at),
                    "file_format": pc.take(files["file_format"].combine_chunks(), at),
                    "view_position": meta["ViewPosition"],
                    "rows": meta["Rows"],
                    "columns": meta["Columns"],
                    "in_metadata": pa.array(np.ones(n, dtype=bool)),
                    REJECT: pa.array(codes, pa.string()),
                    DETAIL: pa.array(details, pa.string()),
                    LINE: pa.array(np.arange(2, n + 2, dtype=np.int64)),
                    FILE: _const(meta_name, n),
                }
            )
        )
        files = files.filter(pc.invert(pc.is_in(files["image_id"], value_set=ids.combine_chunks())))
    if files.num_rows:
        n = files.num_rows
        tables.append(
            pa.table(
                {
                    **{c: files[c] for c in ("image_id", "subject_id", "study_id", "path", "file_format")},
                    "view_position": pa.nulls(n, pa.string()),
                    "rows": pa.nulls(n, pa.string()),
                    "columns": pa.nulls(n, pa.string()),
                    "in_metadata": pa.array(np.zeros(n, dtype=bool)),
                    REJECT: pa.nulls(n, pa.string()),
                    DETAIL: pa.nulls(n, pa.string()),
                    LINE: pa.nulls(n, pa.int64()),
                    FILE: _const("files/", n),
                }
            )
        )
    if not tables:
        return None
    images = pa.concat_tables(tables, promote_options="permissive")
    split = pa.nulls(images.num_rows, pa.string())
    if splits is not None:
        at = pc.index_in(images["image_id"], value_set=splits["dicom_id"].combine_chunks())
        split = pc.take(splits["split"].combine_chunks(), at)
    images = images.append_column("split", split)
    return images.append_column("report_id", pc.binary_join_element_wise("s", images["study_id"], ""))


def _label_rows(root: Location, names: Sequence[str], reports: pa.Table) -> pa.Table | None:
    """One row per row of each official label file present, columns read by name.

    Of several rows of one study, the one whose subject_id is the subject of the kept report is
    kept (the others label a duplicate filed under another patient), else the first.
    """
    obs = observations()
    tables = []
    for pattern, labeler in LABEL_FILES:
        name = pick_file(names, pattern)
        if not name:
            continue
        loc = root.join(name)
        cols = csv_columns(loc)
        source_of = {o: next((a for a in (o, *LABEL_ALIASES.get(o, ())) if a in cols), o) for o in obs}
        check_columns(
            cols,
            ["study_id", *source_of.values()],
            loc.url,
            "Official label files have study_id and the 14 CheXpert observation columns.",
        )
        table = read_csv(
            loc, [*(["subject_id"] if "subject_id" in cols else []), "study_id", *source_of.values()]
        )
        n = table.num_rows
        studies = pc.utf8_trim_whitespace(table["study_id"])
        codes: list[str | None] = [None] * n
        details: list[str | None] = [None] * n
        for i in pc.indices_nonzero(pc.equal(studies, "")).to_pylist():
            codes[i], details[i] = "missing_id", f"{name} row {i + 2} has no study_id"
        dups = [d for d in _repeated(studies) if d]
        if dups:
            wanted = pa.array(["s" + d for d in dups], pa.string())
            kept_reports = reports.filter(
                pc.and_(pc.is_in(reports["report_id"], value_set=wanted), pc.is_null(reports[REJECT]))
            )
            subject_of = dict(
                zip(kept_reports["study_id"].to_pylist(), kept_reports["subject_id"].to_pylist(), strict=True)
            )
            by_study: dict[str, list[tuple[int, str | None]]] = {}
            for i in _rows_of(studies, dups):
                subject = table["subject_id"][i].as_py() if "subject_id" in cols else None
                by_study.setdefault(studies[i].as_py(), []).append((i, subject))
            for study, rows in by_study.items():
                kept = min(rows, key=lambda row, s=study: (row[1] != subject_of.get(s), row[0]))[0]
                for i, subject in rows:
                    if i != kept:
                        codes[i] = "duplicate_id"
                        details[i] = (
                            f"{name} row {i + 2}: study {study} (subject {subject}) is also on row {kept + 2}, "
                            "which is kept"
                        )
        columns: dict[str, Any] = {
            "report_id": pc.binary_join_element_wise("s", studies, ""),
            "labeler": _const(labeler, n),
            **{o: table[source_of[o]] for o in obs},
            REJECT: pa.array(codes, pa.string()),
            DETAIL: pa.array(details, pa.string()),
            LINE: pa.array(np.arange(2, n + 2, dtype=np.int64)),
            FILE: _const(name, n),
        }
        tables.append(pa.table(columns))
    return pa.concat_tables(tables, promote_options="permissive") if tables else None


def _assign(
    table: pa.Table, kept_ids: pa.Array, kept_parts: np.ndarray, n_parts: int
) -> tuple[pa.Table, np.ndarray]:
    """Each row's part (its report's); rows whose study has no report become orphan_row rejects,
    spread over the parts."""
    at = pc.index_in(table["report_id"], value_set=kept_ids)
    orphan = np.asarray(at.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    parts = kept_parts[np.asarray(pc.fill_null(at, 0).to_numpy(zero_copy_only=False), dtype=np.int64)]
    if orphan.any():
        parts[orphan] = spread(int(orphan.sum()), n_parts)
        codes = table[REJECT].to_pylist()
        details = table[DETAIL].to_pylist()
        for i in np.flatnonzero(orphan).tolist():
            if codes[i] is None:
                study = (table["report_id"][i].as_py() or "s")[1:]
                codes[i], details[i] = "orphan_row", f"no report for study {study or '?'}"
        table = table.set_column(table.schema.get_field_index(REJECT), REJECT, pa.array(codes, pa.string()))
        table = table.set_column(table.schema.get_field_index(DETAIL), DETAIL, pa.array(details, pa.string()))
    return table, parts
