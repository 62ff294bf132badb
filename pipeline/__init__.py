"""clip2clinic: label engineering for medical vision-language training data.

``from pipeline import label_reports`` is the notebook entry to the text engine (see
:mod:`pipeline.label`). It is resolved lazily, by the module ``__getattr__`` below, so that
``import pipeline`` (which every worker process and CLI does) stays cheap and loads no spaCy.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

# Arrow tables that crossed a Dask transfer can hold buffers Acero calls misaligned; realigning
# them (a copy) is correct and silences a C++ warning on every group_by. Set before Arrow reads it.
os.environ.setdefault("ACERO_ALIGNMENT_HANDLING", "reallocate")

__version__ = "0.1.0"
__all__ = ["__version__", "label_reports"]

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.label import label_reports

_LAZY = {"label_reports": "pipeline.label"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # resolved once
        return value
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
