"""The text engine's stages: `parse` (sections, sentences) and `extract` (mentions, labels, findings)."""

from __future__ import annotations

from pipeline.core.registry import map_stage
from pipeline.text.extract import ExtractConfig, extract
from pipeline.text.parse import ParseConfig, parse

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
