"""The ``reread`` stage: the text engine reads back rewritten texts (hardneg's gate).

Pure over one partition of ``hardneg_candidates``: each candidate's ``texts`` are read as
sentences by the same engine as ``extract`` (same lexicon, same memo), and the statuses found are
written as ``hardneg_readings.observed``, one canonical string per text (sorted
"finding=status" items joined by ";"), comparable with the candidate's ``expected``.
"""

from __future__ import annotations

from collections.abc import Mapping

import pyarrow as pa

from pipeline.core.schemas import conform, load_schema
from pipeline.text.config import RereadConfig
from pipeline.text.nlp import load_engine


def reread(tables: Mapping[str, pa.Table], *, config: RereadConfig) -> dict[str, pa.Table]:
    """Readings of every candidate's texts."""
    engine = load_engine(config.lexicon_dir, config.cache_size)
    candidates = tables["hardneg_candidates"].select(["candidate_id", "report_id", "texts"]).to_pydict()
    flat = [t for texts in candidates["texts"] for t in texts]
    hits = iter(engine.analyse(flat))
    observed = [
        [";".join(sorted({f"{h.finding}={h.status}" for h in next(hits)})) for _ in texts]
        for texts in candidates["texts"]
    ]
    schema = load_schema("hardneg_readings").arrow()
    table = pa.table(
        {
            "candidate_id": candidates["candidate_id"],
            "report_id": candidates["report_id"],
            "observed": observed,
        },
        schema=schema,
    )
    return {"hardneg_readings": conform(table, "hardneg_readings")}
