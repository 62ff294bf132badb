"""The one place report text is decoded and checked, for every adapter.

``decode_text`` turns bytes into the text stored in ``reports.text`` (UTF-8, else Windows-1252;
line endings normalised); ``check_text`` says why a decoded text cannot be used, as a reject code.
``sectioned_text`` builds a report out of section columns ("INDICATION: ...\\n\\nFINDINGS: ...")
and returns the spans of each body.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import pyarrow as pa

# C0 controls other than tab and newline, DEL, and the C1 block: what binary junk decodes to.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
GARBLED_SHARE = 0.01  # more than 1% control characters reads as garbage, not as a stray byte

Section = dict[str, object]  # {"name": str, "start": int, "end": int}, the reports.sections struct


def decode_text(raw: bytes | str | None) -> str | None:
    """Decode report bytes: UTF-8 (a BOM dropped), else Windows-1252; CRLF and lone CR become LF.

    Returns None when the bytes are neither UTF-8 nor Windows-1252 (reject ``bad_encoding``).
    ``None`` in gives ``""`` out (an empty field, rejected later as ``empty_text``).
    """
    return decode_text_as(raw)[0]


def decode_text_as(raw: bytes | str | None) -> tuple[str | None, str]:
    """:func:`decode_text`, and the encoding it assumed: ``utf-8``, ``cp1252`` (the bytes were not
    UTF-8) or ``""`` (neither: the text is None). A ``str`` or None in counts as ``utf-8``."""
    encoding = "utf-8"
    if raw is None:
        return "", encoding
    if isinstance(raw, str):
        text = raw
    else:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            try:
                text, encoding = raw.decode("cp1252"), "cp1252"
            except UnicodeDecodeError:
                return None, ""
    if text.startswith("\ufeff"):
        text = text[1:]
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text, encoding


def not_utf8_rows(columns: Sequence[pa.Array | pa.ChunkedArray]) -> list[int]:
    """Indices of the rows where any of the binary ``columns`` is not valid UTF-8, in order.

    One validating cast per column; only a column that fails it is looked at row by row.
    """
    bad: set[int] = set()
    for column in columns:
        try:
            column.cast(pa.string())
        except pa.ArrowInvalid:
            for i, value in enumerate(column.to_pylist()):
                if value is not None and not _is_utf8(value):
                    bad.add(i)
    return sorted(bad)


def _is_utf8(value: bytes | str) -> bool:
    if isinstance(value, str):
        return True
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def encoding_note(where: str, n_rows: int, examples: Sequence[str]) -> str:
    """The warning for ``n_rows`` rows of ``where`` that are not UTF-8 (read as Windows-1252)."""
    shown = ", ".join(examples[:5]) + (" ..." if n_rows > len(examples[:5]) else "")
    return (
        f"{where}: {n_rows} row(s) are not UTF-8 and are read as Windows-1252 ({shown}); those that "
        "are not Windows-1252 either are rejected as bad_encoding. If the file is in another "
        "encoding, re-encode it as UTF-8 first (iconv -f <its encoding> -t UTF-8)."
    )


def decode_id(raw: bytes | str | None) -> str:
    """Decode an id field leniently (ids are ASCII in every known dump); None gives ''."""
    if raw is None:
        return ""
    if isinstance(raw, str):
        return raw.strip()
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return raw.decode("latin-1").strip()


def check_text(text: str | None, max_chars: int) -> tuple[str, str] | None:
    """Why ``text`` (from :func:`decode_text`) cannot be a report, as ``(reason_code, detail)``.

    Checks in order: undecodable (``bad_encoding``), NUL bytes or more than 1% control characters
    (``garbled_text``), empty or whitespace only (``empty_text``), longer than ``max_chars``
    (``too_long``). Returns None when the text is fine.
    """
    if text is None:
        return "bad_encoding", "bytes are neither UTF-8 nor Windows-1252"
    if "\x00" in text:
        return "garbled_text", "contains NUL bytes"
    if _CONTROL.search(text) is not None:
        n_control = len(_CONTROL.findall(text))
        if n_control > GARBLED_SHARE * len(text):
            return "garbled_text", f"{n_control} control characters in {len(text)}"
    if not text.strip():
        return "empty_text", "empty" if not text else "whitespace only"
    if len(text) > max_chars:
        return "too_long", f"{len(text)} characters > ingest.max_chars={max_chars}"
    return None


def header_for(name: str) -> str:
    """The upper-case header written before a section body: ``clinical_history`` -> ``CLINICAL HISTORY``."""
    return name.replace("_", " ").strip().upper()


def sectioned_text(bodies: Iterable[tuple[str, str]]) -> tuple[str, list[Section]]:
    """Join ``(section name, body)`` pairs as ``"NAME: body\\n\\nNAME: body"``, skipping empty bodies.

    Bodies are stripped; each span's ``[start, end)`` covers its body exactly.
    """
    pieces: list[str] = []
    sections: list[Section] = []
    pos = 0
    for name, body in bodies:
        body = body.strip()
        if not body:
            continue
        lead = ("\n\n" if pieces else "") + header_for(name) + ": "
        start = pos + len(lead)
        pieces.append(lead)
        pieces.append(body)
        pos = start + len(body)
        sections.append({"name": name, "start": start, "end": pos})
    return "".join(pieces), sections


def locate_sections(text: str, bodies: Iterable[tuple[str, str]]) -> list[Section] | None:
    """Spans of section bodies found verbatim in ``text`` (whitespace-insensitive as a fallback).

    Bodies are searched after the previous one first, then anywhere; a body not found, or one
    overlapping a span already placed, is left out. Returns the spans by start, or None if none.
    """
    spans: list[Section] = []
    taken: list[tuple[int, int]] = []
    cursor = 0
    for name, body in bodies:
        body = body.strip()
        if not body:
            continue
        found = _find(text, body, cursor)
        if found is None:
            found = _find(text, body, 0)
        if found is None:
            continue
        start, end = found
        if any(start < e and s < end for s, e in taken):
            continue
        taken.append((start, end))
        spans.append({"name": name, "start": start, "end": end})
        cursor = end
    spans.sort(key=lambda s: s["start"])  # type: ignore[arg-type, return-value]
    return spans or None


def _find(text: str, body: str, start: int) -> tuple[int, int] | None:
    at = text.find(body, start)
    if at >= 0:
        return at, at + len(body)
    # Section columns are often re-wrapped copies of the report: match word by word.
    words = body.split()
    if not words or len(words) > 2000:
        return None
    match = re.compile(r"\s+".join(re.escape(w) for w in words)).search(text, start)
    return (match.start(), match.end()) if match else None
