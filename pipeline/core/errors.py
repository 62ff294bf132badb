"""One catalogue of structural errors and per-row reject reasons.

Structural problems (the run cannot mean anything) raise :class:`PipelineError` with a code and a
message that names the fix. Per-row problems never raise: they become ``rejects`` rows whose
``reason_code`` is one of :data:`REJECT_REASONS`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

import pyarrow as pa

# Per-row reasons. Stages may only emit these codes (the runner checks), so a user can group on them.
REJECT_REASONS: dict[str, str] = {
    "missing_file": "a file the dump lists is not there",
    "unreadable_file": "the file exists but could not be read",
    "empty_text": "the report is empty or whitespace only",
    "bad_encoding": "the bytes decode as neither UTF-8 nor Windows-1252",
    "garbled_text": "the text is binary or control-character garbage",
    "too_long": "the report is longer than ingest.max_chars",
    "duplicate_id": "another row already has this id (the first one is kept)",
    "missing_id": "the id column is empty",
    "bad_id": "the id does not follow the dump's id format",
    "corrupt_dicom": "the DICOM file could not be parsed",
    "not_dicom": "the file is not a DICOM file",
    "bad_value": "a field has a value outside its domain",
    "no_sentences": "the report has no sentence to read",
    "no_findings": "the report has no finding to work on",
    "no_neighbors": "no other report (in its split) to compare the report with",
    "flip_failed": "a rewritten sentence did not read back with the intended statuses",
    "orphan_row": "the row refers to something that is not in its parent dataset",
    "view_excluded": "the image's view is not one of stages.images.views (kept out on purpose)",
    "no_pixel_data": "the DICOM file has no pixel data",
    "unsupported_transfer_syntax": "no installed decoder handles the file's transfer syntax (the detail names the package)",
    "undecodable_image": "the pixel data or image file could not be decoded",
    "not_xray": "the DICOM modality is not a radiograph (CR, DX, DR, RG)",
    "constant_image": "every pixel has the same value after windowing: nothing to learn from",
    "bad_image_size": "the image is too small, too large or too elongated to be a chest radiograph",
    "no_image": "the sample has no decoded image",
    "no_text": "the report has no text for training (no findings, impression or fallback section)",
    "benchmark_report": "the report is in the CXR-Align benchmark, so it stays out of the train shards",
}


class PipelineError(Exception):
    """A structural problem: the run stops before any output is marked complete.

    ``code`` is stable (tests and users grep for it); ``message`` says what failed and how to fix it.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.message = message

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        # Raised on a Dask worker, it must reach the client whole (code and message).
        return (type(self), (self.code, self.message))


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A ' Did you mean ...?' suffix for ``word`` among ``choices``, or the list of choices."""
    choices = sorted(set(choices))
    close = difflib.get_close_matches(word, choices, n=3, cutoff=0.5)
    if close:
        return " Did you mean " + " or ".join(repr(c) for c in close) + "?"
    return " Choose from: " + ", ".join(choices) + "." if choices else ""


REJECT_DETAIL_MAX = 500


def reject_table(
    stage: str,
    dataset: str,
    rows: Iterable[tuple[str, str, str | None]],
) -> pa.Table:
    """Build a ``rejects`` table from ``(row_id, reason_code, detail)`` triples.

    Raises ``ValueError`` for a reason code outside :data:`REJECT_REASONS` (a programming error).
    """
    ids: list[str] = []
    codes: list[str] = []
    details: list[str | None] = []
    for row_id, code, detail in rows:
        if code not in REJECT_REASONS:
            raise ValueError(f"unknown reject reason {code!r}." + did_you_mean(code, REJECT_REASONS))
        ids.append(str(row_id))
        codes.append(code)
        details.append(None if detail is None else str(detail)[:REJECT_DETAIL_MAX])
    n = len(ids)
    return pa.table(
        {
            "stage": pa.array([stage] * n, pa.string()),
            "dataset": pa.array([dataset] * n, pa.string()),
            "row_id": pa.array(ids, pa.string()),
            "reason_code": pa.array(codes, pa.string()),
            "detail": pa.array(details, pa.string()),
        }
    )
