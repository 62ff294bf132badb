"""What every adapter shares: the part spec, reject bookkeeping, output tables, label values."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.core.errors import reject_table
from pipeline.core.schemas import conform, empty, load_schema
from pipeline.ingest.files import read_staged, write_staged

STAGE = "ingest"
REPORTS, IMAGES, LABELS = "reports", "images_meta", "official_labels"
OUTPUTS = (REPORTS, IMAGES, LABELS)

# Staged part tables carry, besides the dump's own columns, what plan decided about each row.
REJECT, DETAIL = "_reject", "_detail"


@dataclass(frozen=True)
class PartSpec:
    """One part of a dump, as ``plan`` hands it to ``read``: small, picklable, with a stable repr.

    ``staged`` maps a table kind (``reports``, ``images``, ``labels`` or ``rows``) to the staged
    Parquet files holding that part's rows. ``root`` is where relative file paths start;
    ``reports_zip`` is the MIMIC reports zip when reports are read from it; ``sections`` names
    the text columns of a table; ``digest`` summarises the dump so the stage fingerprint follows
    it.
    """

    adapter: str
    index: int
    staged: tuple[tuple[str, tuple[str, ...]], ...]
    root: str | None = None
    reports_zip: str | None = None
    sections: tuple[str, ...] = ()
    digest: str = ""

    def files(self, kind: str) -> tuple[str, ...]:
        return dict(self.staged).get(kind, ())

    def part_key(self) -> str:
        """A digest of what this part reads: its staged rows' content (not where they were
        staged, nor how the dump's batches cut them) and how they are read.

        A table's staged rows hold the report text, so an edit anywhere reruns the parts that hold
        it; a tree's hold its listing and CSV rows.
        """
        h = hashlib.blake2b(digest_size=16)
        h.update(
            repr((self.adapter, self.index, self.root, self.reports_zip, self.sections, self.digest)).encode()
        )
        for kind, urls in self.staged:
            h.update(kind.encode() + b"\x1f")
            table = read_staged(urls)
            if table is None:
                continue
            # One IPC stream of the combined table: the same rows give the same bytes.
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table.combine_chunks())
            h.update(sink.getvalue())
        return h.hexdigest()


@functools.cache
def observations() -> tuple[str, ...]:
    """The 14 CheXpert observation names, in the order of schemas/official_labels.yaml."""
    return tuple(load_schema(LABELS).names[2:])


def normalise_split(value: str | None) -> str | None:
    """``train``, ``validate`` or ``test`` (``valid``/``val``/``validation`` read as validate)."""
    if not value:
        return None
    v = value.strip().lower()
    if v in ("valid", "val", "validation", "dev"):
        return "validate"
    return v or None


_LABEL_VALUES: dict[str, float | None] = {
    "": None,
    "1.0": 1.0,
    "1": 1.0,
    "0.0": 0.0,
    "0": 0.0,
    "-1.0": -1.0,
    "-1": -1.0,
    "nan": None,
    "NaN": None,
}


def label_value(text: str | None) -> float | None:
    """1.0, 0.0, -1.0 or None from a label cell. Raises ValueError for anything else."""
    if text is None:
        return None
    try:
        return _LABEL_VALUES[text]
    except KeyError:
        pass
    value = float(text.strip() or "nan")
    if value != value:
        return None
    if value not in (1.0, 0.0, -1.0):
        raise ValueError(text)
    return value


def view_from(frontal_lateral: str | None, ap_pa: str | None) -> str | None:
    """CheXpert view columns to a MIMIC-style ViewPosition (AP, PA, LL, LATERAL...)."""
    if ap_pa and ap_pa.strip():
        return ap_pa.strip().upper()
    if frontal_lateral and frontal_lateral.strip().lower() == "lateral":
        return "LATERAL"
    return None


class Rejects:
    """Rejected rows of one part, by the dataset they would have gone to."""

    def __init__(self) -> None:
        self.rows: dict[str, list[tuple[str, str, str | None]]] = {d: [] for d in OUTPUTS}

    def add(self, dataset: str, row_id: str, code: str, detail: str | None = None) -> None:
        self.rows[dataset].append((row_id, code, detail))

    def count(self, dataset: str) -> int:
        return len(self.rows[dataset])

    def table(self) -> pa.Table:
        tables = [reject_table(STAGE, d, rows) for d, rows in self.rows.items() if rows]
        if not tables:
            return empty("rejects")
        return conform(pa.concat_tables(tables), "rejects")


def build(dataset: str, rows: Sequence[tuple[Any, ...]]) -> pa.Table:
    """An output table from row tuples in the schema's column order, checked by ``conform``."""
    schema = load_schema(dataset).arrow()
    if not rows:
        return schema.empty_table()
    columns = list(zip(*rows, strict=True))
    arrays = [pa.array(col, type=field.type) for col, field in zip(columns, schema, strict=True)]
    return conform(pa.Table.from_arrays(arrays, names=schema.names), dataset)


def part_files(
    staging_dir: str, prefix: str, table: pa.Table, parts: np.ndarray, into: dict[int, list[str]]
) -> None:
    """Stage the rows of ``table`` part by part (``parts[i]`` is row i's part) under ``staging_dir``.

    Appends each written file's URL to ``into[part]``. Row order within a part is kept.
    """
    if table.num_rows == 0:
        return
    order = np.argsort(parts, kind="stable")
    sorted_parts = parts[order]
    table = table.take(pa.array(order))
    bounds = np.flatnonzero(np.diff(sorted_parts)) + 1
    starts = np.concatenate(([0], bounds))
    ends = np.concatenate((bounds, [len(sorted_parts)]))
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        part = int(sorted_parts[start])
        url = write_staged(staging_dir, f"{prefix}-p{part:05d}", table.slice(start, end - start))
        into.setdefault(part, []).append(url)


def spread(n_items: int, n_parts: int) -> np.ndarray:
    """Parts for ``n_items`` rows that belong to no part (orphans), spread evenly over the parts."""
    return (np.arange(n_items, dtype=np.int64) * max(n_parts, 1)) // max(n_items, 1)
