"""File access for the adapters: local paths and fsspec URLs alike, plus the staging of part tables.

Everything a dump holds is reached through fsspec, with a fast path for local files (plain
``open`` and ``os.walk``), since a MIMIC tree is several hundred thousand small files.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import posixpath
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

import fsspec
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem
from fsspec.utils import infer_compression

from pipeline.core.errors import PipelineError, did_you_mean

log = logging.getLogger(__name__)

CSV_BLOCK_SIZE = 16 << 20  # a CheXpert Plus row (report plus sections) must fit in one block


@dataclass(frozen=True)
class Location:
    """A file or folder: the URL as the user gave it, its fsspec filesystem and the path in it."""

    url: str
    fs: Any
    path: str

    @classmethod
    def of(cls, url: str) -> Location:
        fs, path = fsspec.core.url_to_fs(str(url))
        return cls(str(url), fs, path)

    @property
    def local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))

    def join(self, *parts: str) -> Location:
        path = posixpath.join(self.path, *parts)
        url = self.url.rstrip("/") + "/" + "/".join(parts) if "://" in self.url else path
        return Location(url, self.fs, path)

    def exists(self) -> bool:
        return bool(self.fs.exists(self.path))

    def isdir(self) -> bool:
        return bool(self.fs.isdir(self.path))

    def open(self, mode: str = "rb", compression: str | None = None) -> IO[bytes]:
        """Open the file; ``compression="infer"`` decompresses ``.gz`` and friends."""
        if compression == "infer":
            compression = infer_compression(self.path)
        # OpenFile closes the raw file together with the decompressor.
        return fsspec.core.OpenFile(self.fs, self.path, mode, compression=compression).open()

    def signature(self) -> str:
        """Path, size and modification time: enough to notice that a dump file changed."""
        info = self.fs.info(self.path)
        mtime = info.get("mtime") or info.get("LastModified") or info.get("last_modified") or ""
        return f"{self.path}|{info.get('size')}|{mtime}"


def require(url: str | None, setting: str, what: str) -> Location:
    """The location ``url`` of ``setting``; raises PipelineError(E_DUMP_MISSING) naming the setting."""
    if not url:
        raise PipelineError("E_DUMP_MISSING", f"no {what} given: set {setting}=<path or URL>.")
    loc = Location.of(url)
    if not loc.exists():
        raise PipelineError(
            "E_DUMP_MISSING",
            f"{what} {url!r} does not exist: set {setting}=<path or URL> to an existing one.",
        )
    return loc


def walk_files(top: Location) -> Iterator[str]:
    """Paths of all files under ``top``, relative to it, posix style, in sorted order per folder."""
    if top.local:
        base = top.path.rstrip(os.sep)
        cut = len(base) + 1
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            # Slicing, not os.path.relpath: this runs once per folder of a 300k-folder tree.
            prefix = dirpath[cut:].replace(os.sep, "/") + "/" if len(dirpath) > len(base) else ""
            for name in sorted(filenames):
                yield prefix + name
        return
    base = top.path.rstrip("/") + "/"
    for path in sorted(top.fs.find(top.path)):
        if path.startswith(base):
            yield path[len(base) :]


def read_many(root: Location, rel_paths: Sequence[str]) -> list[bytes | Exception]:
    """The bytes of each file (or the exception reading it raised), in order."""
    if root.local:
        out: list[bytes | Exception] = []
        for rel in rel_paths:
            try:
                with open(os.path.join(root.path, rel), "rb") as fh:
                    out.append(fh.read())
            except OSError as exc:
                out.append(exc)
        return out
    full = [posixpath.join(root.path, rel) for rel in rel_paths]
    # One batched call: remote filesystems fetch these concurrently.
    got = root.fs.cat(full, on_error="return")
    return [got.get(p, FileNotFoundError(p)) for p in full]


def csv_columns(loc: Location) -> list[str]:
    """Column names of a CSV (gzipped or not), read from its first block.

    Raises PipelineError(E_DUMP_COLUMNS) for an empty or unreadable CSV.
    """
    with loc.open("rb", compression="infer") as fh:
        try:
            reader = pacsv.open_csv(
                fh,
                read_options=pacsv.ReadOptions(block_size=1 << 20),
                parse_options=pacsv.ParseOptions(newlines_in_values=True),
            )
        except (pa.ArrowInvalid, OSError, EOFError) as exc:
            raise PipelineError("E_DUMP_COLUMNS", f"{loc.url} has no readable CSV header: {exc}") from exc
        names = list(reader.schema.names)
        reader.close()
    return names


def iter_csv(
    loc: Location, columns: Sequence[str], *, binary: Sequence[str] = ()
) -> Iterator[pa.RecordBatch]:
    """Stream ``columns`` of a CSV as record batches: ``binary`` columns as bytes, others as strings.

    Quoted values may hold newlines. Raises PipelineError(E_DUMP_COLUMNS) for a malformed CSV.
    """
    types = {c: (pa.binary() if c in binary else pa.string()) for c in columns}
    with loc.open("rb", compression="infer") as fh:
        try:
            reader = pacsv.open_csv(
                fh,
                read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_SIZE),
                parse_options=pacsv.ParseOptions(newlines_in_values=True),
                convert_options=pacsv.ConvertOptions(
                    column_types=types,
                    include_columns=list(columns),
                    strings_can_be_null=False,
                ),
            )
            yield from reader
        except pa.ArrowInvalid as exc:
            raise PipelineError("E_DUMP_COLUMNS", f"{loc.url} is not a readable CSV: {exc}") from exc


def count_rows(loc: Location, column: str) -> int:
    """Rows of a CSV (one column parsed) or of a Parquet file (its footer): sizes the parts."""
    if loc.path.lower().endswith((".parquet", ".pq", ".parq")):
        with loc.open("rb") as fh:
            return int(pq.ParquetFile(fh).metadata.num_rows)
    return sum(batch.num_rows for batch in iter_csv(loc, [column]))


def read_csv(loc: Location, columns: Sequence[str]) -> pa.Table:
    """``columns`` of a (small) CSV as one table of strings."""
    types = {c: pa.string() for c in columns}
    with loc.open("rb", compression="infer") as fh:
        try:
            return pacsv.read_csv(
                fh,
                parse_options=pacsv.ParseOptions(newlines_in_values=True),
                convert_options=pacsv.ConvertOptions(
                    column_types=types,
                    include_columns=list(columns),
                    strings_can_be_null=False,
                ),
            )
        except pa.ArrowInvalid as exc:
            raise PipelineError("E_DUMP_COLUMNS", f"{loc.url} is not a readable CSV: {exc}") from exc


def check_columns(have: Sequence[str], want: Sequence[str], where: str, hint: str = "") -> None:
    """Raise PipelineError(E_DUMP_COLUMNS) naming each of ``want`` missing from ``have``."""
    missing = [c for c in want if c not in have]
    if missing:
        suggestions = "".join(f" {c!r}:{did_you_mean(c, have)}" for c in missing)
        raise PipelineError(
            "E_DUMP_COLUMNS",
            f"{where} lacks column(s) {missing}.{suggestions}{(' ' + hint) if hint else ''}",
        )


_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)")


def pick_file(names: Sequence[str], pattern: str) -> str | None:
    """The name matching ``pattern`` with the highest x.y.z version (plain before gzipped)."""
    rx = re.compile(pattern)
    found = [n for n in names if rx.fullmatch(n)]
    if not found:
        return None

    def rank(n: str) -> tuple[tuple[int, ...], int]:
        m = _VERSION.search(n)
        return (tuple(int(g) for g in m.groups()) if m else (0, 0, 0)), int(not n.endswith(".gz"))

    return max(found, key=rank)


def list_names(folder: Location) -> list[str]:
    """Names of the entries directly inside ``folder``."""
    return sorted(posixpath.basename(p.rstrip("/")) for p in folder.fs.ls(folder.path, detail=False))


# -- staging ---------------------------------------------------------------------------------------


def write_staged(staging_dir: str, name: str, table: pa.Table) -> str:
    """Write ``table`` to ``<staging_dir>/<name>.parquet`` and return that URL."""
    folder = Location.of(staging_dir)
    folder.fs.makedirs(folder.path, exist_ok=True)
    target = folder.join(f"{name}.parquet")
    if target.local:
        pq.write_table(table, target.path, compression="lz4")
    else:
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="lz4")
        with target.open("wb") as fh:
            fh.write(buf.getvalue())
    return target.url


def read_staged(urls: Sequence[str]) -> pa.Table | None:
    """The staged tables at ``urls`` concatenated, or None when there are none."""
    tables = []
    for url in urls:
        loc = Location.of(url)
        if loc.local:
            tables.append(pq.read_table(loc.path))
        else:
            with loc.open("rb") as fh:
                tables.append(pq.read_table(fh))
    if not tables:
        return None
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def digest(*parts: str) -> str:
    """A short hash of the strings describing a dump (its fingerprint follows the dump)."""
    h = hashlib.blake2b(digest_size=10)
    for part in parts:
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\x1f")
    return h.hexdigest()
