"""DICOM headers without pixels: the few acquisition fields downstream stages need, nothing else.

Only technical fields are copied out of the header (view, modality, photometric interpretation,
size, bit depth, transfer syntax); names, dates, ids and every other patient field stay behind.

Two paths, both pydicom: the common case (a little-endian, non-deflated file whose header fits in
the first 64 KiB) walks the raw elements with ``pydicom.filereader.data_element_generator`` and
decodes only the fields kept, about 3x faster than ``dcmread`` (which builds a full ``Dataset``
and converts every element it is asked for). Anything else, or anything the fast path fails on,
goes through ``dcmread(..., stop_before_pixels=True)``, which also decides the reject code.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.filereader import data_element_generator
from pydicom.uid import UID

# Real headers sit in the first few KiB; one read of this much replaces many small reads.
HEAD_BYTES = 64 << 10
_PIXEL_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) Pixel Data, little endian
_PIXEL = 0x7FE00010
_SEQUENCE_END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"  # (FFFE,E0DD), length 0

# The tags read, and how their raw value is decoded.
_VIEW, _MODALITY, _PHOTOMETRIC = 0x00185101, 0x00080060, 0x00280004
_ROWS, _COLUMNS, _BITS_STORED, _BITS_ALLOCATED = 0x00280010, 0x00280011, 0x00280101, 0x00280100
_SAMPLES, _FRAMES = 0x00280002, 0x00280008
_KINDS: dict[int, str] = {
    _VIEW: "text", _MODALITY: "text", _PHOTOMETRIC: "text", _ROWS: "US", _COLUMNS: "US",
    _BITS_STORED: "US", _BITS_ALLOCATED: "US", _SAMPLES: "US", _FRAMES: "IS",
}  # fmt: skip
# Explicit VR file meta elements with a 4-byte length (PS3.5 7.1.2).
_LONG_VRS = frozenset(
    (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV")
)


@dataclass(frozen=True)
class DicomHeader:
    view_position: str | None
    modality: str | None
    photometric_interpretation: str | None
    rows: int | None
    columns: int | None
    bits_stored: int | None
    transfer_syntax: str | None


class HeaderProblem(Exception):
    """Why a file's header could not be read, as a reject ``code`` and a ``detail``."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def read_header(source: str | os.PathLike[str] | bytes | IO[bytes]) -> DicomHeader:
    """Read the header of a DICOM file (a local path, its bytes, or an open seekable binary file).

    Pixel data is not decoded, but its extent is checked against the file size (a file cut short
    is ``corrupt_dicom`` here, not later when pixels are needed). Raises :class:`HeaderProblem`
    with code ``not_dicom`` (no DICOM preamble / file meta), ``corrupt_dicom`` (the header does
    not parse, has no image size, or the pixel data is cut) or ``unreadable_file``.
    Callers silence pydicom's warnings about odd values (one ``catch_warnings`` per part).
    """
    try:
        if isinstance(source, bytes):
            return _parse(source, len(source), source[-8:], None)
        if isinstance(source, str | os.PathLike):
            with open(source, "rb") as fh:
                return _parse_file(fh, os.fstat(fh.fileno()).st_size)
        source.seek(0, os.SEEK_END)
        size = source.tell()
        source.seek(0)
        return _parse_file(source, size)
    except OSError as exc:
        raise HeaderProblem("unreadable_file", f"{type(exc).__name__}: {exc}") from exc


def _parse_file(fh: IO[bytes], size: int) -> DicomHeader:
    head = fh.read(HEAD_BYTES)
    if len(head) == size:
        return _parse(head, size, head[-8:], None)
    fh.seek(size - 8)
    tail = fh.read(8)
    if _PIXEL_TAG in head[:-12]:
        return _parse(head, size, tail, None)
    fh.seek(0)  # a header longer than the first block: parse from the file itself
    return _parse(b"", size, tail, fh)


def _parse(head: bytes, size: int, tail: bytes, whole: IO[bytes] | None) -> DicomHeader:
    """Parse ``head`` (a complete header) or, when given, the open file ``whole``."""
    if whole is None:
        fast = _fast(head)
        if fast is not None:
            values, transfer, pixel_at = fast
            return _checked(values, transfer, pixel_at, head[pixel_at : pixel_at + 12], size, tail)
    fh = whole if whole is not None else io.BytesIO(head)
    try:
        ds = dcmread(fh, stop_before_pixels=True)
        meta = getattr(ds, "file_meta", None)
        transfer = meta.get("TransferSyntaxUID") if meta is not None else None
        pixel_at = fh.tell()
        element = fh.read(12)
        if transfer is not None and not transfer.is_little_endian:
            # Retired big endian syntax: let pydicom convert values, skip the pixel extent check.
            values = {tag: ds.get(tag).value for tag in _KINDS if tag in ds}
            return _checked(values, transfer, None, b"", size, tail)
        values = {tag: ds.get_item(tag).value for tag in _KINDS if tag in ds}
    except HeaderProblem:
        raise
    except InvalidDicomError as exc:
        raise HeaderProblem(
            "not_dicom", "no 'DICM' prefix at byte 128 and no file meta: not a DICOM file"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - any parse failure of a damaged header
        raise HeaderProblem("corrupt_dicom", f"{type(exc).__name__}: {exc}"[:300]) from exc
    return _checked(values, transfer, pixel_at, element, size, tail)


def _fast(head: bytes) -> tuple[dict[int, Any], UID, int] | None:
    """Raw values of the kept tags, the transfer syntax and where Pixel Data starts; None when
    the file is not a plain little-endian one (dcmread then handles it, errors included)."""
    if len(head) < 144 or head[128:132] != b"DICM":
        return None
    try:
        pos, transfer = 132, None
        while head[pos : pos + 2] == b"\x02\x00":  # the file meta group, always explicit VR LE
            vr = head[pos + 4 : pos + 6]
            if vr in _LONG_VRS:
                length, start = int.from_bytes(head[pos + 8 : pos + 12], "little"), pos + 12
            else:
                length, start = int.from_bytes(head[pos + 6 : pos + 8], "little"), pos + 8
            if head[pos + 2 : pos + 4] == b"\x10\x00":
                transfer = UID(head[start : start + length].rstrip(b"\x00 ").decode("ascii"))
            pos = start + length
        if transfer is None or not transfer.is_little_endian or transfer.is_deflated:
            return None
        fh = io.BytesIO(head)
        fh.seek(pos)
        values = {}
        for element in data_element_generator(fh, transfer.is_implicit_VR, True, stop_when=_at_pixels):
            if element.tag in _KINDS:
                values[int(element.tag)] = element.value
        return values, transfer, fh.tell()
    except Exception:  # noqa: BLE001 - whatever the fast path trips on, dcmread will judge
        return None


def _at_pixels(tag: Any, vr: Any, length: int) -> bool:
    return tag == _PIXEL


def _checked(
    raw: Mapping[int, Any], transfer: Any, pixel_at: int | None, element: bytes, size: int, tail: bytes
) -> DicomHeader:
    """The header from raw (or converted) values, after the integrity checks."""
    values = {tag: _decode(raw.get(tag), kind) for tag, kind in _KINDS.items()}
    if transfer is None or values[_ROWS] is None or values[_COLUMNS] is None:
        # pydicom stops quietly at a truncated header; an image header without its size is
        # damaged (or not an image at all).
        raise HeaderProblem(
            "corrupt_dicom", "header has no TransferSyntaxUID/Rows/Columns: truncated or not an image"
        )
    if pixel_at is not None:
        _check_pixels(values, pixel_at, element, size, tail, bool(transfer.is_implicit_VR))
    return DicomHeader(
        view_position=values[_VIEW],
        modality=values[_MODALITY],
        photometric_interpretation=values[_PHOTOMETRIC],
        rows=values[_ROWS],
        columns=values[_COLUMNS],
        bits_stored=values[_BITS_STORED],
        transfer_syntax=str(transfer),
    )


def _decode(value: Any, kind: str) -> Any:
    """A raw (bytes, little endian) or pydicom-converted value as text or int; None if empty."""
    if value is None:
        return None
    if isinstance(value, bytes):
        if kind == "US":
            return int.from_bytes(value[:2], "little") if len(value) >= 2 else None
        value = value.decode("latin-1")
    if kind == "text":
        text = str(value).strip(" \x00")
        return text or None
    try:
        return int(str(value).strip(" \x00"))
    except ValueError:
        return None


def _check_pixels(
    values: Mapping[int, Any], pos: int, element: bytes, size: int, tail: bytes, implicit: bool
) -> None:
    """Raise corrupt_dicom when the Pixel Data element at ``pos`` is absent or runs past the file."""
    if len(element) < 8 or element[:4] != _PIXEL_TAG:
        raise HeaderProblem("corrupt_dicom", "no pixel data after the header: truncated")
    length = struct.unpack("<I", element[4:8] if implicit else element[8:12])[0]
    start = pos + (8 if implicit else 12)
    if length == 0xFFFFFFFF:
        # Encapsulated (compressed) frames end with a sequence delimiter: a cut file does not.
        if tail != _SEQUENCE_END:
            raise HeaderProblem(
                "corrupt_dicom", "encapsulated pixel data has no sequence delimiter: truncated"
            )
        return
    if start + length > size:
        raise HeaderProblem(
            "corrupt_dicom", f"pixel data truncated: {size - start} of {length} bytes present"
        )
    frames = values[_FRAMES] or 1
    bits = values[_BITS_ALLOCATED] or 8
    needed = (values[_ROWS] * values[_COLUMNS] * (values[_SAMPLES] or 1) * frames * bits + 7) // 8
    if length < needed:
        raise HeaderProblem(
            "corrupt_dicom", f"pixel data holds {length} bytes, Rows x Columns needs {needed}"
        )
