"""The ingest stage: read a dump (MIMIC-CXR, CheXpert Plus, CheXpert v1.0, any table of reports) into
``reports``, ``images_meta``, ``official_labels`` and ``rejects``.

``plan`` runs on the client: it lists the dump, settles everything that needs all of it (duplicate
ids, which part a study's images and labels join) and stages each part's rows under the run's
staging folder. ``read`` runs on a worker and turns one :class:`PartSpec` into checked tables.
"""

from __future__ import annotations

from collections.abc import Callable

from pipeline.core.errors import PipelineError, did_you_mean
from pipeline.core.registry import PartResult, PlanContext, source_stage
from pipeline.ingest import chexpert, mimic, mimic_read, table
from pipeline.ingest.common import PartSpec
from pipeline.ingest.config import DATASET_KINDS, IngestConfig

_PLANS: dict[str, Callable[[IngestConfig, PlanContext], list[PartSpec]]] = {
    "mimic_cxr": mimic.plan,
    "demo": mimic.plan,
    "chexpert_plus": chexpert.plan_plus,
    "chexpert": chexpert.plan_v1,
    "table": table.plan,
}
_READS: dict[str, Callable[[PartSpec, IngestConfig], PartResult]] = {
    "mimic_cxr": mimic_read.read,
    "chexpert_plus": chexpert.read_plus,
    "chexpert": chexpert.read_v1,
    "table": table.read,
}


def plan(config: IngestConfig, ctx: PlanContext) -> list[PartSpec]:
    """Part specs for the dump named by ``config.dataset`` (about ``ctx.part_size`` reports each).

    Raises PipelineError before anything is written to the run: E_CONFIG (unknown dataset kind,
    bad table settings, part_size < 1), E_DUMP_MISSING, E_DUMP_LAYOUT, E_DUMP_COLUMNS.
    """
    name = config.dataset.name
    if name not in _PLANS:
        raise PipelineError("E_CONFIG", f"unknown dataset kind {name!r}." + did_you_mean(name, DATASET_KINDS))
    if ctx.part_size < 1:
        raise PipelineError("E_CONFIG", f"ingest.part_size must be at least 1, got {ctx.part_size}.")
    return _PLANS[name](config, ctx)


def read(spec: PartSpec, config: IngestConfig) -> PartResult:
    """Read one part planned by :func:`plan`. Per-row problems become rejects, never exceptions."""
    return _READS[spec.adapter](spec, config)


source_stage(
    "ingest",
    version=1,
    outputs=("reports", "images_meta", "official_labels"),
    optional_outputs=("images_meta", "official_labels"),
    config=IngestConfig,
    plan=plan,
    read=read,
    description="Read a dump into reports, images_meta, official_labels and rejects.",
)
