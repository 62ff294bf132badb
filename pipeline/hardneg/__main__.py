"""Export a run's cxr_align dataset as a CXR-Align JSON file, in the published shape.

    python -m pipeline.hardneg export OUT [PATH] [--dataset NAME]   (PATH: OUT/cxr_align.json)

The published file (PhysioNet cxr-align 1.0.0) is one JSON object, every value a string:

    {"mimic": {"<dicom_id>": {"report": ..., "chosen": ..., "negation": ..., "omitted": ...,
                              "location": ...}}}

``chosen`` is a CheXpert class and ``location`` first, middle, last or add; ours add
``report_id`` and ``finding`` (the fine finding), strings too. The outer key is the dump's name:
``mimic`` for MIMIC-CXR (the demo dump has its layout), else the adapter of ``reports.source``
(``chexpert_plus``, ``table``); ``--dataset`` sets another. The inner key is an image id
(``images_meta``) when the dump has images: a JSON key holds one item, so each image gets one of
its report's rows (rows by finding, images frontal first then by id, paired in order); rows past
their report's images, and rows of a report with no image, are left out and counted. A dump
without images is keyed by report id (one row per report, the first by finding).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.errors import PipelineError
from pipeline.core.io import read_dataset, read_or_empty

KEYS = ("report", "chosen", "negation", "omitted", "location")
IDS = ("report_id", "finding")
# The published file's name for a dump, by reports.source; other adapters keep their own name.
PUBLISHED_NAMES = {"mimic_cxr": "mimic"}
FRONTAL = {"PA", "AP"}


@dataclass(frozen=True)
class Export:
    """What an export wrote (``items`` under ``dataset``, keyed by ``keyed_by``) and left out."""

    items: int
    dataset: str
    keyed_by: str  # "image_id" or "report_id"
    rows: int  # cxr_align rows read
    no_image: int  # rows of a report with no image (keyed by image id)
    extra_rows: int  # rows past their report's images (by image id), or past its first (by report id)
    no_class: int  # benchmark negated reports whose finding has no CheXpert class (not in cxr_align)

    def summary(self, path: str) -> str:
        """One line for the CLI: what was written where, and what was left out."""
        left = []
        if self.no_image:
            left.append(f"{self.no_image} rows of reports with no image")
        if self.extra_rows:
            past = "their report's images" if self.keyed_by == "image_id" else "their report's first"
            left.append(f"{self.extra_rows} rows past {past}")
        if self.no_class:
            left.append(f"{self.no_class} findings with no CheXpert class")
        return (
            f"wrote {self.items} CXR-Align items of {self.rows} rows to {path} "
            f"({self.dataset!r}, keyed by {self.keyed_by})"
            + (f"; left out: {', '.join(left)}" if left else "")
        )


def _dataset_name(out: str) -> str:
    sources = pc.unique(read_dataset(out, "reports", ["source"]).column("source")).to_pylist()
    if not sources:
        raise PipelineError("E_INPUT_MISSING", f"{out} has no reports: run a DAG that ingests some.")
    if len(sources) > 1:
        raise PipelineError(
            "E_EXPORT_DATASET",
            f"{out}'s reports come from {sorted(map(str, sources))}: name the export with --dataset NAME.",
        )
    return PUBLISHED_NAMES.get(sources[0], sources[0])


def _images(out: str, report_ids: list[str]) -> tuple[bool, dict[str, list[str]]]:
    """Whether the dump has images (of any report), and report_id -> its image ids for
    ``report_ids``, frontal views first, then by id."""
    meta = read_or_empty(out, "images_meta", ["image_id", "report_id", "view_position"])
    has_images = meta.num_rows > meta.column("report_id").null_count
    # MIMIC lists 377k images: keep the benchmark reports' before leaving Arrow
    wanted = meta.filter(pc.is_in(meta.column("report_id"), pa.array(sorted(set(report_ids)), pa.string())))
    by_report: dict[str, list[tuple[bool, str]]] = defaultdict(list)
    for m in wanted.to_pylist():
        view = (m["view_position"] or "").split()
        by_report[m["report_id"]].append((not (view and view[0] in FRONTAL), m["image_id"]))
    return has_images, {r: [i for _, i in sorted(ids)] for r, ids in by_report.items()}


def published_items(out: str, dataset: str | None = None) -> tuple[dict[str, Any], Export]:
    """``out``'s cxr_align rows as the published object ``{dataset: {id: item}}`` and a count of
    what was left out (module docstring). Raises PipelineError when the run has no cxr_align or
    no reports, or when its reports come from several adapters and ``dataset`` is not given."""
    rows = read_dataset(out, "cxr_align").to_pylist()
    name = dataset or _dataset_name(out)
    has_images, images = _images(out, [r["report_id"] for r in rows])
    by_report: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in sorted(rows, key=lambda r: (r["report_id"], r["finding"])):
        by_report[r["report_id"]].append(r)
    items: dict[str, dict[str, str]] = {}
    no_image = extra = 0
    for rid, report_rows in by_report.items():
        keys = images.get(rid, []) if has_images else [rid]
        no_image += len(report_rows) if not keys else 0
        extra += max(0, len(report_rows) - len(keys)) if keys else 0
        for key, r in zip(keys, report_rows, strict=False):
            items[key] = {k: str(r[k]) for k in (*KEYS, *IDS)}
    # every cxr_align row is a benchmark negated report; the others' findings have no class
    # (a run folder without negated_reports counts none)
    benchmark = read_or_empty(out, "negated_reports", ["template_set"]).column("template_set")
    no_class = max(0, (pc.sum(pc.equal(benchmark, "benchmark")).as_py() or 0) - len(rows))
    summary = Export(
        items=len(items),
        dataset=name,
        keyed_by="image_id" if has_images else "report_id",
        rows=len(rows),
        no_image=no_image,
        extra_rows=extra,
        no_class=no_class,
    )
    return {name: items}, summary


def export_cxr_align(out: str, path: str, *, dataset: str | None = None) -> Export:
    """Write ``out``'s cxr_align rows to ``path`` in the published shape (:func:`published_items`);
    returns what was written and left out."""
    data, summary = published_items(out, dataset)
    target = Path(path)
    tmp = target.with_suffix(target.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False))
    tmp.replace(target)  # atomic: a reader never sees half a file
    return summary


def main(argv: list[str]) -> int:
    args = list(argv)
    dataset = None
    if "--dataset" in args:
        at = args.index("--dataset")
        if at + 1 >= len(args):
            print(__doc__.strip(), file=sys.stderr)
            return 2
        dataset = args[at + 1]
        del args[at : at + 2]
    if len(args) not in (2, 3) or args[0] != "export":
        print(__doc__.strip(), file=sys.stderr)
        return 2
    out = args[1]
    path = args[2] if len(args) == 3 else str(Path(out) / "cxr_align.json")
    try:
        summary = export_cxr_align(out, path, dataset=dataset)
    except PipelineError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(summary.summary(path))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
