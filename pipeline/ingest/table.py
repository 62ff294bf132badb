"""Any table of reports (CSV, gzipped or not, or Parquet): an id column and one text column, or
several section columns joined as ``"INDICATION: ...\\n\\nFINDINGS: ..."`` with known spans."""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.core.errors import PipelineError, did_you_mean
from pipeline.core.registry import PartResult, PlanContext
from pipeline.ingest.common import (
    IMAGES,
    LABELS,
    REPORTS,
    PartSpec,
    Rejects,
    build,
    normalise_split,
    part_files,
)
from pipeline.ingest.config import IngestConfig
from pipeline.ingest.files import (
    PARQUET_SUFFIXES,
    Location,
    count_rows,
    csv_columns,
    delimiter_hint,
    digest,
    is_parquet,
    iter_csv,
    iter_parquet,
    parquet_columns,
    read_staged,
    require_file,
    sniff_text,
)
from pipeline.ingest.text import (
    check_text,
    decode_id,
    decode_text_as,
    encoding_note,
    not_utf8_rows,
    sectioned_text,
)

log = logging.getLogger(__name__)

SOURCE = "table"
# Staged column names (fixed, so a dump's own column names never clash with ours).
ID, SUBJECT, STUDY, SPLIT, ROWNO, REJECT, DETAIL = (
    "id",
    "subject",
    "study",
    "split",
    "_row",
    "_reject",
    "_detail",
)


def _text_columns(config: IngestConfig) -> tuple[str, ...]:
    ds = config.dataset
    if not ds.id_column:
        raise PipelineError("E_CONFIG", "dataset=table needs the id column: set dataset.id_column=<column>.")
    if bool(ds.text_column) == bool(ds.text_columns):
        raise PipelineError(
            "E_CONFIG",
            "dataset=table needs exactly one of dataset.text_column=<column> (free text) or "
            "dataset.text_columns=[a,b,...] (one section per column); "
            + ("both are set." if ds.text_column else "neither is set."),
        )
    return (ds.text_column,) if ds.text_column else tuple(ds.text_columns)


def _check(names: Sequence[str], config: IngestConfig, texts: Sequence[str], where: str) -> dict[str, str]:
    """Map each staged column to the table's column; raise E_DUMP_COLUMNS naming what is missing."""
    ds = config.dataset
    wanted = {ID: ("dataset.id_column", ds.id_column)}
    for i, col in enumerate(texts):
        wanted[f"t{i}"] = ("dataset.text_column" if ds.text_column else "dataset.text_columns", col)
    for key, setting, col in (
        (SUBJECT, "dataset.subject_column", ds.subject_column),
        (STUDY, "dataset.study_column", ds.study_column),
        (SPLIT, "dataset.split_column", ds.split_column),
    ):
        if col:
            wanted[key] = (setting, col)
    missing = [(setting, col) for setting, col in wanted.values() if col not in names]
    if missing:
        hints = "; ".join(
            f"{setting}={col!r} is not a column.{did_you_mean(str(col), names)}" for setting, col in missing
        )
        # A junk header can be one huge "column": show the columns, clipped.
        shown = [n if len(n) <= 60 else n[:57] + "..." for n in names[:40]]
        more = f" (and {len(names) - 40} more)" if len(names) > 40 else ""
        raise PipelineError(
            "E_DUMP_COLUMNS", f"{where}: {hints} Columns: {', '.join(shown)}{more}.{delimiter_hint(names)}"
        )
    return {key: str(col) for key, (_, col) in wanted.items()}


def _batches(loc: Location, columns: dict[str, str], parquet: bool) -> Iterator[pa.Table]:
    """The needed columns, renamed to the staged names: text columns as bytes, the rest as strings."""
    # Text is read as bytes so that a row in another encoding is one reject, not a failed read.
    binary = [c for k, c in columns.items() if _is_text(k)]
    sources = list(dict.fromkeys(columns.values()))
    batches = iter_parquet(loc, sources) if parquet else iter_csv(loc, sources, binary=binary)
    for batch in batches:
        yield _rename(pa.Table.from_batches([batch]), columns)


def _row_label(parquet: bool) -> Callable[[int], str]:
    """How a row is named to the user: ``row 19`` in a CSV (a spreadsheet's numbering: the header
    is row 1), ``row index 17`` in Parquet (the 0-based index pandas and pyarrow show)."""
    if parquet:
        return lambda i: f"row index {i}"
    return lambda i: f"row {i + 2}"


def _open(config: IngestConfig) -> tuple[Location, bool, list[str]]:
    """The table's location, whether it is Parquet (by its content), and its column names."""
    loc = require_file(config.dataset.path, "dataset.path", "table of reports")
    named_parquet = loc.path.lower().endswith(PARQUET_SUFFIXES)
    parquet = is_parquet(loc)
    if parquet and not named_parquet:
        log.warning("%s holds Parquet, though its name does not say so: read as Parquet", loc.url)
    if parquet or named_parquet:  # a .parquet that is not Parquet stops here, saying what it is
        return loc, True, parquet_columns(loc)
    sniff = sniff_text(loc)
    if sniff.transcoded:
        log.warning("%s is %s: read re-encoded as UTF-8", loc.url, sniff.describe())
    return loc, False, csv_columns(loc)


def _is_text(key: str) -> bool:
    return key.startswith("t") and key[1:].isdigit()


def _rename(table: pa.Table, columns: dict[str, str]) -> pa.Table:
    out = {}
    for key, col in columns.items():
        arr = table[col]
        is_bytes = pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type)
        if _is_text(key):
            if not is_bytes and not pa.types.is_string(arr.type) and not pa.types.is_large_string(arr.type):
                arr = arr.cast(pa.string())
            arr = arr.cast(pa.binary())
        elif not pa.types.is_string(arr.type):
            arr = arr.cast(pa.string())
        out[key] = arr
    return pa.table(out)


def plan(config: IngestConfig, ctx: PlanContext) -> list[PartSpec]:
    """Part specs of a table of reports (``dataset.path``), ``part_size`` rows each.

    Raises PipelineError: E_CONFIG (no id column, or not exactly one of text_column/text_columns),
    E_DUMP_MISSING (no such file), E_DUMP_LAYOUT (a folder), E_DUMP_UNREADABLE (no permission, a
    truncated gzip, a corrupt Parquet file), E_DUMP_FORMAT (not CSV text nor Parquet),
    E_DUMP_EMPTY (0 bytes, or a header and no rows), E_DUMP_COLUMNS (a configured column is
    missing, with suggestions; a malformed CSV).
    """
    texts = _text_columns(config)
    loc, parquet, names = _open(config)
    columns = _check(names, config, texts, loc.url)
    part_size = ctx.part_size_for(lambda: count_rows(loc, columns[ID]))
    label = _row_label(parquet)
    first_at: dict[str, int] = {}
    files: dict[int, list[str]] = {}
    not_utf8: list[str] = []
    n_not_utf8 = 0
    row = 0
    for b, table in enumerate(_batches(loc, columns, parquet)):
        n = table.num_rows
        ids = [decode_id(x) for x in table[ID].to_pylist()]
        codes: list[str | None] = [None] * n
        details: list[str | None] = [None] * n
        for i, rid in enumerate(ids):
            where = label(row + i)
            if not rid:
                codes[i], details[i] = "missing_id", f"{where}: {config.dataset.id_column} is empty"
                ids[i] = where
            elif rid in first_at:
                codes[i], details[i] = (
                    "duplicate_id",
                    f"{where}: id {rid!r} is also at {label(first_at[rid])} (the first is kept)",
                )
            else:
                first_at[rid] = row + i
        bad = not_utf8_rows([table[k] for k in table.column_names if _is_text(k)])
        n_not_utf8 += len(bad)
        not_utf8.extend(label(row + i) for i in bad[: max(0, 5 - len(not_utf8))])
        table = (
            table.set_column(table.schema.get_field_index(ID), ID, pa.array(ids, pa.string()))
            .append_column(ROWNO, pa.array([label(i) for i in range(row, row + n)], pa.string()))
            .append_column(REJECT, pa.array(codes, pa.string()))
            .append_column(DETAIL, pa.array(details, pa.string()))
        )
        parts = np.arange(row, row + n, dtype=np.int64) // part_size
        part_files(ctx.staging_dir, f"table-b{b:05d}", table, parts, files)
        row += n
    if row == 0:  # nothing was staged: part_files writes no empty file
        raise PipelineError(
            "E_DUMP_EMPTY",
            f"{loc.url} has {'columns' if parquet else 'a header'} but no rows: there is no report to "
            "read. Point dataset.path at the full table (an export that stopped early, or a filter "
            "that matched nothing, leaves only the header).",
        )
    if n_not_utf8:
        log.warning(encoding_note(loc.url, n_not_utf8, not_utf8))
    log.info("table: %d rows from %s", row, loc.url)
    sections = tuple(c.lower() for c in texts) if len(texts) > 1 or config.dataset.text_columns else ()
    # The rows' content is each part's key (PartSpec.part_key): a touched file reruns nothing.
    dump = digest(repr(columns))
    return [
        PartSpec(
            adapter=SOURCE,
            index=p,
            staged=(("rows", tuple(files.get(p, ()))),),
            root=posixpath.dirname(loc.url),
            sections=sections,
            digest=dump,
        )
        for p in range(max(files, default=-1) + 1)
    ]


def read(spec: PartSpec, config: IngestConfig) -> PartResult:
    """Reports of one part of a table; sections spans when the text came from several columns."""
    rejects = Rejects()
    rows: list[tuple[Any, ...]] = []
    table = read_staged(spec.files("rows"))
    n = 0 if table is None else table.num_rows
    cp1252 = 0  # rows whose text was not UTF-8 and was read as Windows-1252
    if table is not None:
        cols = {name: table[name].to_pylist() for name in table.column_names}
        text_keys = sorted((k for k in cols if _is_text(k)), key=lambda k: int(k[1:]))
        subjects, studies, splits = cols.get(SUBJECT), cols.get(STUDY), cols.get(SPLIT)
        for i, rid in enumerate(cols[ID]):
            if cols[REJECT][i]:
                rejects.add(REPORTS, rid, cols[REJECT][i], cols[DETAIL][i])
                continue
            decoded = [decode_text_as(cols[k][i]) for k in text_keys]
            bodies = [body for body, _ in decoded]
            if any(encoding == "cp1252" for _, encoding in decoded):
                cp1252 += 1
            if any(body is None for body in bodies):
                text, sections = None, None
            elif spec.sections:
                text, spans = sectioned_text(zip(spec.sections, bodies, strict=True))  # type: ignore[arg-type]
                sections = spans or None
            else:
                text, sections = bodies[0], None
            problem = check_text(text, config.max_chars)
            if problem:
                rejects.add(REPORTS, rid, problem[0], f"{cols[ROWNO][i]}: {problem[1]}")
                continue
            rows.append(
                (
                    rid,
                    _opt(subjects, i),
                    _opt(studies, i),
                    normalise_split(_opt(splits, i)),
                    SOURCE,
                    cols[ROWNO][i],
                    text,
                    sections,
                )
            )
    if cp1252:
        # Per part, for the manifest (the plan warns once for the whole file).
        log.info("table part %d: %d of %d rows not UTF-8, read as Windows-1252", spec.index, cp1252, n)
    return PartResult(
        tables={
            REPORTS: build(REPORTS, rows),
            IMAGES: build(IMAGES, []),
            LABELS: build(LABELS, []),
            "rejects": rejects.table(),
        },
        rows_in={REPORTS: n, IMAGES: 0, LABELS: 0},
        notes={"rows_read_as_cp1252": cp1252} if cp1252 else {},
    )


def _opt(values: list[Any] | None, i: int) -> str | None:
    if values is None:
        return None
    value = values[i]
    return (value.strip() or None) if isinstance(value, str) else value
