"""``python -m pipeline.demo out=DIR n_reports=N [seed=S] [inject_bad_rows=true] [dicom_fraction=F]
[images_per_study=X] [image_size=small|full] [image_format=dcm|dcm_j2k|jpg] [image_workers=N]
[progress=true]``: write a demo dump and print what it holds.

Exit status 0 on success, 2 on a usage error (unknown key, bad value, missing key, ``out`` not
empty).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pipeline.core.errors import PipelineError, did_you_mean

USAGE = (
    "usage: python -m pipeline.demo out=DIR n_reports=N [seed=0] [inject_bad_rows=false] "
    "[dicom_fraction=1.0] [images_per_study=1.65] [image_size=small|full] "
    "[image_format=dcm|dcm_j2k|jpg] [image_workers=<auto>] [progress=<tty>]"
)
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("expected true or false")


KEYS: dict[str, Callable[[str], Any]] = {
    "out": str,
    "n_reports": int,
    "seed": int,
    "inject_bad_rows": _bool,
    "dicom_fraction": float,
    "images_per_study": float,
    "image_size": str,  # values checked by generate_demo_dump (demo_bad_argument)
    "image_format": str,
    "image_workers": int,
    "progress": _bool,
}
REQUIRED = ("out", "n_reports")


class UsageError(Exception):
    """A command line that cannot be run; the message says what to change."""


def parse_args(argv: Sequence[str]) -> dict[str, Any]:
    """``key=value`` arguments to keyword arguments of ``generate_demo_dump`` (plus ``out``).

    Raises :class:`UsageError` for a malformed argument, an unknown or repeated key, a value that
    does not convert, or a missing required key.
    """
    values: dict[str, Any] = {}
    for arg in argv:
        key, sep, text = arg.partition("=")
        if not sep:
            raise UsageError(f"expected key=value, got {arg!r}")
        if key not in KEYS:
            raise UsageError(f"unknown key {key!r}." + did_you_mean(key, KEYS))
        if key in values:
            raise UsageError(f"{key!r} given twice")
        try:
            values[key] = KEYS[key](text)
        except ValueError as exc:
            raise UsageError(f"bad value for {key}: {text!r} ({exc})") from exc
    missing = [k for k in REQUIRED if k not in values]
    if missing:
        raise UsageError("missing " + ", ".join(f"{k}=..." for k in missing))
    return values


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    from rich.console import Console
    from rich.table import Table

    from pipeline.demo.dump import TRUTH_DIR, generate_demo_dump

    args = list(sys.argv[1:] if argv is None else argv)
    err = Console(stderr=True)
    if any(a in ("-h", "--help", "help") for a in args):
        Console().print(USAGE, markup=False)
        return 0
    try:
        values = parse_args(args)
    except UsageError as exc:
        err.print(f"error: {exc}", markup=False, soft_wrap=True)
        err.print(USAGE, markup=False, soft_wrap=True)
        return 2
    values.setdefault("progress", err.is_terminal)
    logging.basicConfig(level=logging.WARNING)
    out = values.pop("out")
    try:
        summary = generate_demo_dump(out, **values)
    except PipelineError as exc:
        err.print(f"error: {exc}", markup=False, soft_wrap=True)
        return 2
    table = Table(title=f"demo dump in {summary.root}", show_header=False)
    for name in ("reports", "report_files", "subjects", "images", "dicoms", "jpgs", "injected"):
        if name != "jpgs" or summary.jpgs:
            table.add_row(name, f"{getattr(summary, name):,}")
    table.add_row("seconds", f"{summary.seconds:.1f}")
    table.add_row("truth", f"{summary.root}/{TRUTH_DIR}/")
    Console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
