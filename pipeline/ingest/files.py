"""File access for the adapters: local paths and fsspec URLs alike, plus the staging of part tables.

Everything a dump holds is reached through fsspec, with a fast path for local files (plain
``open`` and ``os.walk``), since a MIMIC tree is several hundred thousand small files.
"""

from __future__ import annotations

import codecs
import contextlib
import gzip
import hashlib
import io
import logging
import lzma
import os
import posixpath
import re
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

import fsspec
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from fsspec.compression import compr
from fsspec.implementations.local import LocalFileSystem
from fsspec.utils import infer_compression

from pipeline.core.errors import PipelineError, did_you_mean

log = logging.getLogger(__name__)

CSV_BLOCK_SIZE = 16 << 20  # a CheXpert Plus row (report plus sections) must fit in one block
HEAD_BYTES = 4096  # what is sniffed of a file: its compression, its text encoding, its format
TRANSCODE_CHUNK = 1 << 20  # bytes of a UTF-16/32 file decoded at a time (memory stays bounded)
PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")


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


def require_file(url: str | None, setting: str, what: str) -> Location:
    """The file at ``url`` of ``setting``, checked to be one that can be read.

    Raises PipelineError: E_DUMP_MISSING (no ``url``, or nothing there), E_DUMP_LAYOUT (a folder,
    not a file), E_DUMP_UNREADABLE (no permission, or another I/O error), E_DUMP_EMPTY (0 bytes).
    """
    loc = require(url, setting, what)
    if loc.isdir():
        inside = _readable_names(loc)
        hint = f" It holds {', '.join(inside[:5])}{' ...' if len(inside) > 5 else ''}." if inside else ""
        raise PipelineError(
            "E_DUMP_LAYOUT",
            f"{what} {url!r} is a folder, not a file: set {setting}=<the file itself>.{hint}",
        )
    try:
        with loc.fs.open(loc.path, "rb") as fh:
            head = fh.read(1)
    except OSError as exc:
        raise _os_error(loc, exc, setting) from exc
    if not head:
        raise PipelineError(
            "E_DUMP_EMPTY",
            f"{what} {url!r} is empty (0 bytes): set {setting}=<the full file> (an export or copy "
            "that stopped early leaves an empty file).",
        )
    return loc


def _readable_names(folder: Location) -> list[str]:
    """Names of the tables (CSV, Parquet) directly inside ``folder``, for a hint."""
    try:
        names = list_names(folder)
    except OSError:
        return []
    return [n for n in names if n.lower().endswith((".csv", ".csv.gz", ".tsv", *PARQUET_SUFFIXES))]


def _os_error(loc: Location, exc: OSError, setting: str | None = None) -> PipelineError:
    """The coded error for an OSError met opening or reading ``loc``."""
    fix = (
        f"set {setting}=<path or URL> to the file itself"
        if setting
        else "point the setting at the file itself"
    )
    if isinstance(exc, IsADirectoryError):
        return PipelineError("E_DUMP_LAYOUT", f"{loc.url} is a folder, not a file: {fix}.")
    if isinstance(exc, FileNotFoundError):
        return PipelineError("E_DUMP_MISSING", f"{loc.url} does not exist: {fix}.")
    if isinstance(exc, PermissionError):
        return PipelineError(
            "E_DUMP_UNREADABLE",
            f"{loc.url} cannot be read: permission denied. Make it readable by this user "
            "(e.g. chmod a+r, or copy it to a folder you own).",
        )
    return PipelineError(
        "E_DUMP_UNREADABLE", f"{loc.url} cannot be read: {exc}. Check the file (or the filesystem) and retry."
    )


def _read_error(loc: Location, exc: BaseException, what: str = "CSV") -> PipelineError:
    """The coded error for an exception met while reading ``loc`` as ``what`` (CSV or Parquet)."""
    if isinstance(exc, PipelineError):
        return exc
    if isinstance(exc, EOFError | zlib.error | lzma.LZMAError | gzip.BadGzipFile):
        return PipelineError(
            "E_DUMP_UNREADABLE",
            f"{loc.url} could not be decompressed to its end ({_short(exc)}): the file is truncated "
            "or corrupt. Download or copy it again (`gzip -t` tests a .gz file).",
        )
    if what == "Parquet" and isinstance(exc, pa.ArrowException | OSError):
        return PipelineError(
            "E_DUMP_UNREADABLE",
            f"{loc.url} is not a readable Parquet file ({_short(exc)}): it is truncated or corrupt. "
            "Write or copy it again.",
        )
    if isinstance(exc, pa.ArrowInvalid) and "Empty CSV" in str(exc):
        return PipelineError(
            "E_DUMP_EMPTY", f"{loc.url} holds no CSV header and no rows: point the setting at the full file."
        )
    if isinstance(exc, pa.ArrowInvalid):
        return PipelineError(
            "E_DUMP_COLUMNS",
            f"{loc.url} is not a readable CSV: {_short(exc)}. A table needs a header row, commas between "
            "values, and double quotes around values holding commas, quotes or newlines.",
        )
    if isinstance(exc, OSError):
        return _os_error(loc, exc)
    return PipelineError("E_DUMP_UNREADABLE", f"{loc.url} could not be read ({_short(exc)}). Check the file.")


def _short(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, non-printable characters escaped, clipped."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- what a file holds: compression, format, text encoding -----------------------------------------

_COMPRESSION_MAGIC = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bz2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)
# Formats that are not CSV text, told apart by their first bytes, with what to do about each.
_FORMAT_MAGIC = (
    (b"PAR1", "a Parquet file", "give the CSV itself (only dataset=table reads Parquet, by content)"),
    (b"PK\x03\x04", "a zip archive (an .xlsx workbook is one too)", "unzip it, or save the sheet as CSV"),
    (b"\xd0\xcf\x11\xe0", "an Excel 97-2003 workbook (.xls)", "save it as CSV"),
    (b"%PDF", "a PDF document", "export the table as CSV"),
    (b"SQLite format 3\x00", "an SQLite database", "export the table as CSV"),
    (b"version https://git-lfs", "a Git LFS pointer, not the file", "fetch the file itself (git lfs pull)"),
)
_BOMS = (  # UTF-32 first: its little-endian BOM starts like UTF-16's
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


@dataclass(frozen=True)
class TextSniff:
    """How a text file is stored: ``compression`` (fsspec name or None) and ``encoding`` (a Python
    codec name: ``utf-8``, ``utf-16-le`` ...), told by a BOM or by where the NUL bytes fall
    (``how``), and the bytes of BOM to skip."""

    compression: str | None
    encoding: str = "utf-8"
    how: str = ""
    bom: int = 0

    @property
    def transcoded(self) -> bool:
        return self.encoding != "utf-8"

    def describe(self) -> str:
        """E.g. ``UTF-16-LE (by its byte-order mark), gzip-compressed``."""
        words = self.encoding.upper() + (f" ({self.how})" if self.how else "")
        return words + (f", {self.compression}-compressed" if self.compression else "")


def _compression(head: bytes, path: str) -> str | None:
    """The compression of a file, by its first bytes (the name only breaks ties)."""
    for magic, name in _COMPRESSION_MAGIC:
        if head.startswith(magic):
            return name
    inferred = infer_compression(path)
    # A name ending in .gz holding plain bytes is read as it is; a zip needs unpacking first.
    return None if inferred in (None, "gzip", "bz2", "xz", "lzma", "zstd") else inferred


def _nul_pattern(head: bytes) -> tuple[str, str] | None:
    """UTF-16/32 without a BOM, told by the NUL bytes of mostly-ASCII text ("a" then NUL is UTF-16-LE).

    Needs a clear pattern: UTF-8 text has no NUL bytes, and a stray one (a garbled row) is spread
    over all positions.
    """
    n4 = len(head) // 4 * 4
    if n4 >= 8:
        z = [head[k:n4:4].count(0) / (n4 // 4) for k in range(4)]
        if z[2] > 0.9 and z[3] > 0.9 and z[0] < 0.05:
            return "utf-32-le", "by its NUL bytes"
        if z[0] > 0.9 and z[1] > 0.9 and z[3] < 0.05:
            return "utf-32-be", "by its NUL bytes"
    n2 = len(head) // 2 * 2
    if n2 >= 4:
        even = head[0:n2:2].count(0) / (n2 // 2)
        odd = head[1:n2:2].count(0) / (n2 // 2)
        if odd > 0.3 and even < 0.02:
            return "utf-16-le", "by its NUL bytes"
        if even > 0.3 and odd < 0.02:
            return "utf-16-be", "by its NUL bytes"
    return None


def _decompressed(loc: Location, raw: IO[bytes], compression: str | None) -> IO[bytes]:
    if compression is None:
        return raw
    if compression not in compr:
        raise PipelineError(
            "E_DUMP_FORMAT",
            f"{loc.url} is {compression}-compressed and no decompressor for it is installed: "
            f"decompress it first, or install the package fsspec uses for {compression}.",
        )
    if compression == "zip":
        raise PipelineError(
            "E_DUMP_FORMAT", f"{loc.url} is a zip archive, not a CSV: unzip it and point at the file inside."
        )
    return compr[compression](raw, mode="rb")


def sniff_text(loc: Location) -> TextSniff:
    """How the text file ``loc`` is stored (see :class:`TextSniff`), from its first bytes.

    Raises PipelineError: E_DUMP_FORMAT (not text: Parquet, a spreadsheet, a zip ...),
    E_DUMP_EMPTY (nothing in it), E_DUMP_UNREADABLE / E_DUMP_LAYOUT (it cannot be opened).
    """
    try:
        with contextlib.ExitStack() as stack:
            raw = stack.enter_context(loc.fs.open(loc.path, "rb"))
            magic = raw.read(8)
            raw.seek(0)
            compression = _compression(magic, loc.path)
            fh = _decompressed(loc, raw, compression)
            if fh is not raw:
                stack.callback(fh.close)
            head = fh.read(HEAD_BYTES)
    except (PipelineError, OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise _read_error(loc, exc) from exc
    for magic_bytes, kind, fix in _FORMAT_MAGIC:
        if head.startswith(magic_bytes):
            raise PipelineError("E_DUMP_FORMAT", f"{loc.url} is {kind}, not CSV text: {fix}.")
    for bom, encoding in _BOMS:
        if head.startswith(bom):
            return TextSniff(compression, encoding, "by its byte-order mark", len(bom))
    found = _nul_pattern(head)
    if found:
        return TextSniff(compression, *found)
    if not head:
        after = " after decompression" if compression else ""
        raise PipelineError("E_DUMP_EMPTY", f"{loc.url} is empty{after}: point the setting at the full file.")
    first_line = head.split(b"\n", 1)[0]
    if re.search(rb"[\x00-\x08\x0e-\x1f]", first_line):
        raise PipelineError(
            "E_DUMP_FORMAT",
            f"{loc.url} does not start with a CSV header: its first line holds binary bytes "
            f"({first_line[:24]!r}...). It is another format or corrupt: export the table as CSV text.",
        )
    return TextSniff(compression)


class _Utf8Stream(io.RawIOBase):
    """A UTF-16/32 byte stream re-encoded as UTF-8, a chunk at a time (never the whole file).

    Undecodable code units become U+FFFD: one bad character is a row's problem, not the file's.
    """

    def __init__(self, source: IO[bytes], encoding: str) -> None:
        super().__init__()
        self._source = source
        self._decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
        self._out = b""
        self._pos = 0
        self._eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(view):
            if self._pos >= len(self._out):
                if self._eof:
                    break
                data = self._source.read(TRANSCODE_CHUNK)
                self._eof = not data
                self._out, self._pos = self._decoder.decode(data, final=self._eof).encode("utf-8"), 0
                continue
            n = min(len(view) - filled, len(self._out) - self._pos)
            view[filled : filled + n] = self._out[self._pos : self._pos + n]
            filled += n
            self._pos += n
        return filled


@contextlib.contextmanager
def open_text(loc: Location) -> Iterator[IO[bytes]]:
    """The bytes of the text file ``loc`` as UTF-8: decompressed (gzip, bz2, xz, by their first
    bytes), and re-encoded from UTF-16/32 on the fly (see :func:`sniff_text`).

    Raises PipelineError as :func:`sniff_text` does; errors while reading are the caller's to
    translate (:func:`_read_error`).
    """
    sniff = sniff_text(loc)
    with contextlib.ExitStack() as stack:
        try:
            raw = stack.enter_context(loc.fs.open(loc.path, "rb"))
        except OSError as exc:
            raise _os_error(loc, exc) from exc
        fh = _decompressed(loc, raw, sniff.compression)
        if fh is not raw:
            stack.callback(fh.close)
        if sniff.transcoded:
            fh.read(sniff.bom)
            fh = _Utf8Stream(fh, sniff.encoding)
        yield fh


def is_parquet(loc: Location) -> bool:
    """Whether ``loc`` holds Parquet (its first bytes are ``PAR1``), whatever its name says; a
    name ending in .parquet counts when the file cannot be opened (the reader then says why)."""
    try:
        with loc.fs.open(loc.path, "rb") as fh:
            return fh.read(4) == b"PAR1"
    except OSError:
        return loc.path.lower().endswith(PARQUET_SUFFIXES)


@contextlib.contextmanager
def parquet_file(loc: Location) -> Iterator[pq.ParquetFile]:
    """``loc`` opened as a Parquet file, its footer read.

    Raises PipelineError: E_DUMP_FORMAT (not Parquet: CSV text, gzip, a Git LFS pointer ...),
    E_DUMP_UNREADABLE (truncated, or a corrupt footer), E_DUMP_LAYOUT / E_DUMP_MISSING.
    """
    try:
        fh = loc.fs.open(loc.path, "rb")
    except OSError as exc:
        raise _os_error(loc, exc) from exc
    with fh:
        try:
            head = fh.read(HEAD_BYTES)
            fh.seek(0)
        except OSError as exc:
            raise _os_error(loc, exc) from exc
        if not head.startswith(b"PAR1"):
            raise PipelineError("E_DUMP_FORMAT", _not_parquet(loc, head))
        try:
            pf = pq.ParquetFile(fh)
        except (pa.ArrowException, OSError) as exc:
            raise _read_error(loc, exc, "Parquet") from exc
        yield pf


def _not_parquet(loc: Location, head: bytes) -> str:
    what = f"{loc.url} is not a Parquet file (Parquet files start with PAR1)"
    if not head:
        return f"{what}: it is empty (0 bytes). Write or copy it again."
    for magic, name in _COMPRESSION_MAGIC:
        if head.startswith(magic):
            return (
                f"{what}: it is {name}-compressed. Decompress it, or name it .csv.gz if it is a gzipped CSV."
            )
    for magic, kind, fix in _FORMAT_MAGIC[1:]:
        if head.startswith(magic):
            return f"{what}: it is {kind}. {fix[0].upper()}{fix[1:]}."
    line = head.split(b"\n", 1)[0].decode("utf-8", "replace").rstrip("\r")
    if not line.strip() or re.search(r"[\x00-\x08\x0e-\x1f]", line):
        return f"{what}: it starts with {head[:16]!r}. Write or copy it again."
    shown = line if len(line) <= 60 else line[:57] + "..."
    return f"{what}: it is text starting {shown!r}. If it is a CSV, give it a .csv name."


def iter_parquet(loc: Location, columns: Sequence[str], batch_size: int = 65_536) -> Iterator[pa.RecordBatch]:
    """Stream ``columns`` of a Parquet file as record batches.

    Raises PipelineError as :func:`parquet_file` does, and E_DUMP_UNREADABLE for a corrupt page.
    """
    with parquet_file(loc) as pf:
        try:
            yield from pf.iter_batches(batch_size=batch_size, columns=list(columns))
        except (pa.ArrowException, OSError) as exc:
            raise _read_error(loc, exc, "Parquet") from exc


def parquet_columns(loc: Location) -> list[str]:
    """Column names of a Parquet file (see :func:`parquet_file` for what it raises)."""
    with parquet_file(loc) as pf:
        return list(pf.schema_arrow.names)


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
    """Column names of a CSV (gzipped or not, UTF-8 or UTF-16/32), read from its first block.

    Raises PipelineError: E_DUMP_COLUMNS (no readable header), E_DUMP_EMPTY, E_DUMP_FORMAT,
    E_DUMP_UNREADABLE (see :func:`sniff_text`).
    """
    with open_text(loc) as fh:
        try:
            reader = pacsv.open_csv(
                fh,
                read_options=pacsv.ReadOptions(block_size=1 << 20),
                parse_options=pacsv.ParseOptions(newlines_in_values=True),
            )
        except (pa.ArrowInvalid, OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
            raise _read_error(loc, exc) from exc
        names = list(reader.schema.names)
        reader.close()
    return names


def iter_csv(
    loc: Location, columns: Sequence[str], *, binary: Sequence[str] = ()
) -> Iterator[pa.RecordBatch]:
    """Stream ``columns`` of a CSV as record batches: ``binary`` columns as bytes, others as strings.

    Quoted values may hold newlines. Raises PipelineError: E_DUMP_COLUMNS (a malformed CSV),
    E_DUMP_UNREADABLE (a truncated or corrupt compressed file), and as :func:`sniff_text` does.
    """
    types = {c: (pa.binary() if c in binary else pa.string()) for c in columns}
    with open_text(loc) as fh:
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
        except (pa.ArrowInvalid, OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
            raise _read_error(loc, exc) from exc


def count_rows(loc: Location, column: str) -> int:
    """Rows of a CSV (one column parsed) or of a Parquet file (its footer): sizes the parts."""
    if is_parquet(loc):
        with parquet_file(loc) as pf:
            return int(pf.metadata.num_rows)
    return sum(batch.num_rows for batch in iter_csv(loc, [column]))


def read_csv(loc: Location, columns: Sequence[str]) -> pa.Table:
    """``columns`` of a (small) CSV as one table of strings (raises as :func:`iter_csv` does)."""
    types = {c: pa.string() for c in columns}
    with open_text(loc) as fh:
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
        except (pa.ArrowInvalid, OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
            raise _read_error(loc, exc) from exc


def check_columns(have: Sequence[str], want: Sequence[str], where: str, hint: str = "") -> None:
    """Raise PipelineError(E_DUMP_COLUMNS) naming each of ``want`` missing from ``have``."""
    missing = [c for c in want if c not in have]
    if missing:
        suggestions = "".join(f" {c!r}:{did_you_mean(c, have)}" for c in missing)
        raise PipelineError(
            "E_DUMP_COLUMNS",
            f"{where} lacks column(s) {missing}.{suggestions}{(' ' + hint) if hint else ''}"
            + delimiter_hint(have),
        )


def delimiter_hint(names: Sequence[str]) -> str:
    """A hint when a header read as one column holds tabs or semicolons: another delimiter."""
    if len(names) == 1:
        for sep, word in (("\t", "tab"), (";", "semicolon"), ("|", "pipe")):
            if sep in names[0]:
                return (
                    f" The header reads as one column holding {word}s: the file looks "
                    f"{word}-separated. Save it comma-separated (values in double quotes where needed)."
                )
    return ""


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
