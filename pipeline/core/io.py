"""Parquet shard I/O, atomic writes, part markers and manifests.

Layout of a run (``out`` may be a local path or an fsspec URL)::

    <out>/<dataset>/part-NNNNN.parquet      one file per partition, schema-stamped
    <out>/<dataset>/_manifest.json          written when the producing stage completes
    <out>/rejects/<stage>/part-NNNNN.parquet
    <out>/_state/<stage>/part-NNNNN.json    a part's marker: written last, after its files
    <out>/_state/<stage>/_stage.json        the stage's completion record

A part counts as done only when its marker exists with the current fingerprint, and a marker is
written only after every file of the part has been renamed into place, so an interrupted run
never mistakes half a part for a finished one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, is_dataclass
from importlib import metadata
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.errors import PipelineError
from pipeline.core.schemas import check_file_schema, conform

STATE_DIR = "_state"
MANIFEST = "_manifest.json"
REJECTS = "rejects"

# The packages whose versions change outputs; recorded in every manifest.
TRACKED_PACKAGES = (
    "clip2clinic",
    "numpy",
    "pyarrow",
    "pandas",
    "dask",
    "distributed",
    "spacy",
    "scispacy",
    "negspacy",
    "pydicom",
    "networkx",
    "torch",
    "transformers",
)


class Store:
    """A run's output folder, local or remote, addressed by dataset and part index."""

    def __init__(self, out: str) -> None:
        self.url = str(out)
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.local = "file" in (
            self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        )

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts) if not self.local else os.path.join(self.root, *parts)

    def url_of(self, path: str) -> str:
        """``path`` with its protocol, so another process (a worker) can open it."""
        return path if self.local else self.fs.unstrip_protocol(path)

    def dataset_dir(self, dataset: str, stage: str | None = None) -> str:
        if dataset == REJECTS:
            return self.path(REJECTS, stage or "")
        return self.path(dataset)

    def part_path(self, dataset: str, index: int, stage: str | None = None) -> str:
        return posixpath.join(self.dataset_dir(dataset, stage), f"part-{index:05d}.parquet")

    def marker_path(self, stage: str, index: int) -> str:
        return self.path(STATE_DIR, stage, f"part-{index:05d}.json")

    def stage_record_path(self, stage: str) -> str:
        return self.path(STATE_DIR, stage, "_stage.json")

    def manifest_path(self, dataset: str) -> str:
        return self.path(dataset, MANIFEST)

    # -- atomic writes -------------------------------------------------------------------
    def _commit(self, tmp: str, final: str) -> None:
        if self.local:
            os.replace(tmp, final)  # atomic on one filesystem
        else:
            self.fs.mv(tmp, final)  # object stores: a single PUT is already all-or-nothing

    def write_bytes(self, path: str, data: bytes) -> None:
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with self.fs.open(tmp, "wb") as fh:
            fh.write(data)
        self._commit(tmp, path)

    def write_with(self, path: str, write: Callable[[Any], None]) -> None:
        """Call ``write(fh)`` on a temporary file, then move it to ``path`` atomically."""
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with self.fs.open(tmp, "wb") as fh:
            write(fh)
        self._commit(tmp, path)

    def write_json(self, path: str, obj: Any) -> None:
        self.write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())

    def read_json(self, path: str) -> Any | None:
        try:
            with self.fs.open(path, "rb") as fh:
                return json.loads(fh.read())
        except FileNotFoundError:
            return None
        except json.JSONDecodeError:
            return None  # a torn marker from another tool: treat as absent, the part is redone

    def write_table(
        self,
        table: pa.Table,
        dataset: str,
        index: int,
        *,
        stage: str | None = None,
        vector_size: int | None = None,
        row_group_size: int | None = None,
    ) -> int:
        """Validate ``table`` against ``dataset``'s schema and write part ``index`` atomically.

        ``row_group_size`` caps the rows per Parquet row group (streaming readers read one at a
        time); by default a part is one row group. Returns the number of rows written. Raises PipelineError(E_SCHEMA_MISMATCH) before
        anything is written when the table does not conform.
        """
        table = conform(table, dataset, vector_size=vector_size)
        path = self.part_path(dataset, index, stage)
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with self.fs.open(tmp, "wb") as fh:
            pq.write_table(table, fh, compression="zstd", row_group_size=row_group_size)
        self._commit(tmp, path)
        return table.num_rows

    def read_parquet(self, path: str, columns: list[str] | None = None) -> pa.Table:
        """One Parquet file of the run as a table.

        Never a Python file object for pyarrow: a threaded read of one finishes tearing down on
        Arrow's I/O threads after returning, and freeing its Python buffers there needs the GIL.
        Near interpreter exit CPython ends such a thread with ``pthread_exit``, whose unwinding
        through C++ aborts the process ("terminate called without an active exception", exit
        134; apache/arrow#33975). A local file goes to Arrow by path; a remote one is fetched into
        memory Arrow owns. ``ParquetFile``, not ``pq.read_table``: the latter imports
        pyarrow.dataset, most of a second at every process start.
        """
        if self.local:
            with self.parquet_file(path) as pf:
                return pf.read(columns=columns)
        data = self.fs.cat_file(path)
        owned = pa.allocate_buffer(len(data))
        pa.FixedSizeBufferWriter(owned).write(data)
        with pq.ParquetFile(owned) as pf:
            return pf.read(columns=columns)

    @contextlib.contextmanager
    def parquet_file(self, path: str) -> Iterator[pq.ParquetFile]:
        """A Parquet file of the run opened for its footer or some row groups. A local file goes
        to Arrow by path, as in :meth:`read_parquet`; a remote one is read through fsspec's file
        object (only the row groups asked for are fetched; done on workers, never at exit)."""
        if self.local:
            with pq.ParquetFile(path) as pf:
                yield pf
        else:
            with self.fs.open(path, "rb") as fh, pq.ParquetFile(fh) as pf:
                yield pf

    def read_part(self, dataset: str, index: int, *, stage: str | None = None) -> pa.Table:
        """Read one part, checking its schema stamp. Raises PipelineError when missing or stale."""
        path = self.part_path(dataset, index, stage)
        try:
            table = self.read_parquet(path)
        except FileNotFoundError as exc:
            raise PipelineError(
                "E_INPUT_MISSING", f"{path} is missing; rerun the stage that writes {dataset}."
            ) from exc
        check_file_schema(table.schema, dataset, path)
        return table

    def part_indices(self, dataset: str, stage: str | None = None) -> list[int]:
        folder = self.dataset_dir(dataset, stage)
        if not self.fs.exists(folder):
            return []
        out = []
        for name in self.fs.ls(folder, detail=False):
            base = posixpath.basename(name)
            if base.startswith("part-") and base.endswith(".parquet"):
                out.append(int(base[5:10]))
        return sorted(out)

    def remove_parts_except(self, dataset: str, keep: Iterable[int], stage: str | None = None) -> int:
        """Delete part files (and leftover temp files) not in ``keep``: stale parts of an older run."""
        keep = set(keep)
        folder = self.dataset_dir(dataset, stage)
        if not self.fs.exists(folder):
            return 0
        removed = 0
        for name in self.fs.ls(folder, detail=False):
            base = posixpath.basename(name)
            stale_part = (
                base.startswith("part-") and base.endswith(".parquet") and int(base[5:10]) not in keep
            )
            if stale_part or ".tmp-" in base:
                self.fs.rm(name)
                removed += 1
        return removed

    def dataset_files(self, dataset: str) -> list[str]:
        """Every part file of a dataset (rejects: of every stage), for readers."""
        if dataset == REJECTS:
            return sorted(self.fs.glob(self.path(REJECTS, "*", "part-*.parquet")))
        return sorted(self.fs.glob(self.path(dataset, "part-*.parquet")))


def read_dataset(out: str, dataset: str, columns: list[str] | None = None) -> pa.Table:
    """Read a whole dataset of a run into one Arrow table (for notebooks, tests, small corpora)."""
    store = Store(out)
    files = store.dataset_files(dataset)
    if not files:
        raise PipelineError("E_INPUT_MISSING", f"no {dataset} under {out}; run a DAG that produces it.")
    tables = [store.read_parquet(path, columns) for path in files]
    return pa.concat_tables(tables, promote_options="default")


def read_or_empty(out: str, dataset: str, columns: list[str] | None = None) -> pa.Table:
    """:func:`read_dataset`, or an empty table of the dataset's schema when the run has none of it
    (notebooks pointed at a run that stopped early)."""
    from pipeline.core.schemas import load_schema

    try:
        return read_dataset(out, dataset, columns=columns)
    except PipelineError:
        table = load_schema(dataset).arrow().empty_table()
        return table.select(columns) if columns else table


def package_versions() -> dict[str, str]:
    out = {}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def stable_hash(obj: Any) -> str:
    """A sha256 of a JSON-able object (dataclasses included), stable across processes."""
    if is_dataclass(obj) and not isinstance(obj, type):
        obj = asdict(obj)
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
