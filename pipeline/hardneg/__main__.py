"""Export a run's cxr_align dataset to JSON in the published CXR-Align shape.

    python -m pipeline.hardneg export OUT [PATH]    (PATH default: OUT/cxr_align.json)

The published file is a JSON list of objects with keys report, chosen, negation, omitted and
location; ours add report_id, subject_id, study_id and finding.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pipeline.core.errors import PipelineError
from pipeline.core.io import read_dataset

KEYS = ("report", "chosen", "negation", "omitted", "location")
IDS = ("report_id", "subject_id", "study_id", "finding")


def export_cxr_align(out: str, path: str) -> int:
    """Write ``out``'s cxr_align rows to ``path`` as a JSON list; returns the row count."""
    rows = read_dataset(out, "cxr_align").to_pylist()
    records = [{**{k: r[k] for k in KEYS}, **{k: r[k] for k in IDS}} for r in rows]
    target = Path(path)
    tmp = target.with_suffix(target.suffix + ".tmp")
    tmp.write_text(json.dumps(records, indent=1, ensure_ascii=False))
    tmp.replace(target)  # atomic: a reader never sees half a file
    return len(records)


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3) or argv[0] != "export":
        print(__doc__.strip(), file=sys.stderr)
        return 2
    out = argv[1]
    path = argv[2] if len(argv) == 3 else str(Path(out) / "cxr_align.json")
    try:
        n = export_cxr_align(out, path)
    except PipelineError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"wrote {n} CXR-Align rows to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
