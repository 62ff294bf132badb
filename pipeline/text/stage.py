"""The text engine's stages: `parse` (sections, sentences), `extract` (mentions, labels, findings)
and `reread` (hardneg's self-consistency gate: rewritten texts read back).

``extract`` and ``reread`` import the engine (spaCy) when a part first runs, not here: this module
is imported to find stages on the client and on every worker, also by runs with nothing to do."""

from __future__ import annotations

from collections.abc import Mapping

import pyarrow as pa

from pipeline.core.registry import map_stage
from pipeline.text.config import ExtractConfig, RereadConfig
from pipeline.text.parse import ParseConfig, parse


def extract(tables: Mapping[str, pa.Table], *, config: ExtractConfig) -> dict[str, pa.Table]:
    """:func:`pipeline.text.extract.extract`."""
    from pipeline.text.extract import extract as run

    return run(tables, config=config)


def reread(tables: Mapping[str, pa.Table], *, config: RereadConfig) -> dict[str, pa.Table]:
    """:func:`pipeline.text.reread.reread`."""
    from pipeline.text.reread import reread as run

    return run(tables, config=config)


map_stage(
    "parse",
    version=1,
    inputs=("reports",),
    outputs=("sections", "sentences"),
    config=ParseConfig,
    primary_output="sections",
)(parse)

map_stage(
    "extract",
    version=1,
    inputs=("reports", "sections", "sentences"),
    outputs=("labels", "mentions", "findings"),
    config=ExtractConfig,
    primary_output="labels",
)(extract)

map_stage(
    "reread",
    version=1,
    inputs=("hardneg_candidates",),
    outputs=("hardneg_readings",),
    config=RereadConfig,
    key="candidate_id",
)(reread)
