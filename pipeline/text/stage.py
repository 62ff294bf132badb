"""The text engine's stages: `parse` (sections, sentences), `extract` (mentions, labels, findings)
and `reread` (hardneg's self-consistency gate: rewritten texts read back)."""

from __future__ import annotations

from pipeline.core.registry import map_stage
from pipeline.text.extract import ExtractConfig, extract
from pipeline.text.parse import ParseConfig, parse
from pipeline.text.reread import RereadConfig, reread

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
