"""Small stages for testing the runner itself, registered through CLIP2CLINIC_STAGE_MODULES."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import pyarrow as pa

from pipeline.core.errors import reject_table
from pipeline.core.registry import PartResult, PlanContext, map_stage, source_stage


@dataclass(frozen=True)
class ToySourceConfig:
    n_reports: int = 50
    part_size: int = 10
    empty_every: int = 7  # every k-th report has empty text, so it is rejected downstream


def _plan(config: ToySourceConfig, ctx: PlanContext) -> list[tuple[int, int]]:
    return [(a, min(a + ctx.part_size, config.n_reports)) for a in range(0, config.n_reports, ctx.part_size)]


def _read(spec: tuple[int, int], config: ToySourceConfig) -> PartResult:
    ids, texts, bad = [], [], []
    for i in range(*spec):
        if i % 13 == 12:  # an unreadable row: rejected by the source itself
            bad.append((f"r{i:04d}", "unreadable_file", "toy"))
            continue
        ids.append(f"r{i:04d}")
        texts.append("" if i % config.empty_every == 0 else f"FINDINGS: report {i}. No effusion.")
    n = len(ids)
    reports = pa.table(
        {
            "report_id": ids,
            "subject_id": [None] * n,
            "study_id": [None] * n,
            "split": ["train"] * n,
            "source": ["toy"] * n,
            "path": [None] * n,
            "text": texts,
            "sections": pa.nulls(
                n, pa.list_(pa.struct([("name", pa.string()), ("start", pa.int32()), ("end", pa.int32())]))
            ),
        }
    )
    return PartResult(
        {"reports": reports, "rejects": reject_table("toy_source", "reports", bad)},
        {"reports": spec[1] - spec[0]},
    )


source_stage("toy_source", version=1, outputs=("reports",), config=ToySourceConfig, plan=_plan, read=_read)


@dataclass(frozen=True)
class ToySplitConfig:
    fail_if_exists: str = ""  # a path: while it exists, part 1 raises (simulates a crash mid-stage)
    suffix: str = ""


@map_stage("toy_split", version=1, inputs=("reports",), outputs=("sections",), config=ToySplitConfig)
def toy_split(tables: Mapping[str, pa.Table], *, config: ToySplitConfig) -> dict[str, pa.Table]:
    """One section per non-empty report; empty reports are rejected."""
    reports = tables["reports"]
    if (
        config.fail_if_exists
        and os.path.exists(config.fail_if_exists)
        and reports.num_rows
        and reports["report_id"][0].as_py() == "r0010"
    ):
        raise RuntimeError("simulated crash")
    return split_sections(reports, "toy_split", config.suffix)


def split_sections(reports: pa.Table, stage: str, suffix: str = "") -> dict[str, pa.Table]:
    """One section per non-empty report (``suffix`` appended); empty reports rejected by ``stage``."""
    ids, texts, bad = [], [], []
    for rid, text in zip(reports["report_id"].to_pylist(), reports["text"].to_pylist(), strict=True):
        if not text:
            bad.append((rid, "empty_text", None))
            continue
        ids.append(rid)
        texts.append(text + suffix)
    n = len(ids)
    sections = pa.table(
        {
            "report_id": ids,
            "section_idx": pa.array([0] * n, pa.int32()),
            "section": ["findings"] * n,
            "header": ["FINDINGS"] * n,
            "text": texts,
            "start": pa.array([0] * n, pa.int32()),
            "end": pa.array([len(t) for t in texts], pa.int32()),
            "is_labeled": [True] * n,
        }
    )
    return {"sections": sections, "rejects": reject_table(stage, "sections", bad)}


@map_stage("toy_lossy", version=1, inputs=("reports",), outputs=("sentences",), config=ToySplitConfig)
def toy_lossy(tables: Mapping[str, pa.Table], *, config: ToySplitConfig) -> dict[str, pa.Table]:
    """Drops rows without a reject: the runner must refuse it."""
    return {
        "sentences": pa.table(
            {
                "report_id": pa.array([], pa.string()),
                "section": pa.array([], pa.string()),
                "sentence_idx": pa.array([], pa.int32()),
                "text": pa.array([], pa.string()),
                "start": pa.array([], pa.int32()),
                "end": pa.array([], pa.int32()),
            }
        )
    }


@map_stage(
    "toy_join",
    version=1,
    inputs=("reports",),
    outputs=("findings",),
    config=ToySplitConfig,
    optional_inputs=("sections",),
)
def toy_join(tables: Mapping[str, pa.Table], *, config: ToySplitConfig) -> dict[str, pa.Table]:
    """One `findings` row per report: present when the optional `sections` has the report."""
    ids = tables["reports"]["report_id"].to_pylist()
    with_section = set(tables["sections"]["report_id"].to_pylist()) if "sections" in tables else set()
    return {
        "findings": pa.table(
            {
                "report_id": ids,
                "finding": ["has_section"] * len(ids),
                "observation": pa.nulls(len(ids), pa.string()),
                "status": ["present" if rid in with_section else "absent" for rid in ids],
                "n_mentions": pa.array([1] * len(ids), pa.int32()),
            }
        )
    }
