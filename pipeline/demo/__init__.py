"""Demo dump generator: a synthetic MIMIC-CXR 2.0.0 dump whose truth is known.

``generate_demo_dump(root, n_reports=...)`` writes reports, DICOMs and the six CSVs of the MIMIC-CXR
layout (FORMATS.md) under ``root``, plus ``root/demo_truth/`` (labels, mentions, injected problems)
that dump readers ignore. Command line: ``python -m pipeline.demo out=DIR n_reports=N [seed=S]``.
"""

from __future__ import annotations

from pipeline.demo.dump import (
    FILES,
    INJECTED_KINDS,
    LABEL_COLUMNS,
    METADATA_COLUMNS,
    RECORD_COLUMNS,
    SPLIT_COLUMNS,
    STUDY_COLUMNS,
    TRUTH_DIR,
    DemoSummary,
    generate_demo_dump,
)
from pipeline.demo.phrases import OBSERVATIONS

__all__ = [
    "FILES",
    "INJECTED_KINDS",
    "LABEL_COLUMNS",
    "METADATA_COLUMNS",
    "OBSERVATIONS",
    "RECORD_COLUMNS",
    "SPLIT_COLUMNS",
    "STUDY_COLUMNS",
    "TRUTH_DIR",
    "DemoSummary",
    "generate_demo_dump",
]
