"""Problems the demo dump can carry on purpose, and the bytes that carry them.

Each kind maps to the reject reason an ingest should give (``pipeline.core.errors``). Report
problems leave the text the official labeler reads untouched: undecodable bytes go at the end of
the report's first text line (the banner or the wet-read header), long filler goes before the
banner with no blank line in it, so even a report without headers keeps its last paragraph.
"""

from __future__ import annotations

import random

from pipeline.demo.text import wrap

# Injected problems: kind -> the reject reason an ingest should give (pipeline.core.errors).
INJECTED_KINDS: dict[str, str] = {
    "empty_report": "empty_text",
    "whitespace_report": "empty_text",
    "missing_report": "missing_file",
    "undecodable_report": "bad_encoding",
    "garbage_report": "garbled_text",
    "long_report": "too_long",
    "duplicate_study": "duplicate_id",
    "truncated_header_dicom": "corrupt_dicom",
    "truncated_pixels_dicom": "corrupt_dicom",
    "random_bytes_dicom": "not_dicom",
}
REPORT_KINDS = (
    "empty_report",
    "whitespace_report",
    "missing_report",
    "undecodable_report",
    "garbage_report",
    "long_report",
)
UNLABELED_KINDS = frozenset({"empty_report", "whitespace_report", "missing_report", "garbage_report"})
DICOM_KINDS = ("truncated_header_dicom", "truncated_pixels_dicom", "random_bytes_dicom")
# Undefined in Windows-1252 and stray continuation bytes in UTF-8: undecodable by either.
UNDECODABLE = b"\x81\x8d\x8f\x90\x9d"
LONG_REPORT_CHARS = 200_000
CONTROL_BYTES = bytes([*range(0, 9), 11, 12, *range(14, 32), 127])


def long_filler() -> str:
    """Over LONG_REPORT_CHARS of wrapped, indented filler lines with no blank line among them."""
    line = "Prior report text was duplicated here by an interface error and is not part of this study."
    lines = []
    size = 0
    while size <= LONG_REPORT_CHARS:
        for piece in wrap(line):
            lines.append(" " + piece)
            size += len(piece) + 2
    return "\n".join(lines) + "\n"


def corrupt_report(kind: str, text: str, rng: random.Random) -> bytes | None:
    """The bytes written for a report injected as ``kind`` (None: no file)."""
    if kind == "empty_report":
        return b""
    if kind == "whitespace_report":
        return b"  \n \n\t \n   \n"
    if kind == "missing_report":
        return None
    if kind == "garbage_report":
        return bytes(rng.choice(CONTROL_BYTES) for _ in range(rng.randint(200, 2000)))
    head, sep, rest = text.partition("\n")  # head is the empty first line
    second, sep2, tail = rest.partition("\n")
    if kind == "undecodable_report":  # never in a labeled section
        return (head + sep + second).encode() + UNDECODABLE + (sep2 + tail).encode()
    if kind == "long_report":  # filler before the banner: outside any labeled text, no blank line
        return (head + sep + long_filler() + rest).encode()
    raise ValueError(f"unknown report injection {kind!r}")
