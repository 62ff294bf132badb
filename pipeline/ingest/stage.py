"""The ingest stage: read a dump (MIMIC-CXR, CheXpert Plus, CheXpert v1.0, any table of reports) into
``reports``, ``images_meta``, ``official_labels`` and ``rejects``.

``plan`` runs on the client: it lists the dump, settles everything that needs all of it (duplicate
ids, which part a study's images and labels join) and stages each part's rows under the run's
staging folder. ``read`` runs on a worker and turns one :class:`PartSpec` into checked tables.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from pipeline.core.errors import PipelineError, did_you_mean
from pipeline.core.registry import PartResult, PlanContext, source_stage
from pipeline.ingest import chexpert, mimic, mimic_read, table
from pipeline.ingest.common import PartSpec
from pipeline.ingest.config import DATASET_KINDS, IngestConfig
from pipeline.ingest.files import Location, list_names

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
    if ctx.part_size is not None and ctx.part_size < 1:
        raise PipelineError("E_CONFIG", f"ingest.part_size must be at least 1, got {ctx.part_size}.")
    return _PLANS[name](config, ctx)


def stamp(config: IngestConfig) -> str | None:
    """A digest of a dump that is cheap to take, so that a rerun on an unchanged dump skips ingest
    without listing or reading it again: the bytes of a table or of CheXpert's CSVs; for a local
    MIMIC-CXR tree, the bytes of its CSVs (and reports zip) and the modification times of the
    folders under files/ down to the patients' (adding or removing a study, a report or a patient
    changes them). None (the plan decides) for a remote tree, or when a file is missing."""
    ds = config.dataset
    try:
        h = hashlib.blake2b(digest_size=16)
        if ds.name in ("table", "chexpert_plus") and ds.path:
            locs = [Location.of(ds.path)]
        elif ds.name == "chexpert":
            locs = [loc for loc, _ in chexpert._v1_files(config)]
        elif ds.name in ("mimic_cxr", "demo") and ds.root and not ds.reports_zip:
            folders = mimic.tree_stamp(Location.of(ds.root))
            if folders is None:
                return None
            h.update(folders.encode())
            locs = [Location.of(ds.root).join(n) for n in list_names(Location.of(ds.root))]
            locs = [loc for loc in locs if loc.name.endswith((".csv", ".csv.gz", ".zip"))]
        else:
            return None
        for loc in locs:
            with loc.open("rb") as fh:
                for block in iter(lambda fh=fh: fh.read(1 << 22), b""):
                    h.update(block)
            h.update(b"\x1f")
    except (OSError, PipelineError):
        return None
    return h.hexdigest()


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
    stamp=stamp,
    description="Read a dump into reports, images_meta, official_labels and rejects.",
)
