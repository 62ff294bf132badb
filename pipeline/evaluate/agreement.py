"""Confusion of our CheXpert-style labels against a dump's official labels.

Pure functions over Arrow tables; the stage in :mod:`pipeline.evaluate.stage` maps
:func:`confusion` over partitions and sums the counts.
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa

from pipeline.core.schemas import chexpert_observations

OBSERVATIONS = chexpert_observations()
STATES = ("1", "0", "-1", "blank")


def state(value: float | None) -> str:
    """'1', '0', '-1' or 'blank' for a label value (NaN counts as blank)."""
    if value is None or value != value:
        return "blank"
    return {1.0: "1", 0.0: "0", -1.0: "-1"}.get(float(value), "blank")


Key = tuple[str, str, str, str]


def confusion(labels: pa.Table, official: pa.Table) -> tuple[Counter[Key], int]:
    """Count (labeler, observation, ours, theirs) over reports present in both tables.

    Returns the counts and the number of (report, labeler) pairs compared.
    """
    counts: Counter[Key] = Counter()
    if labels.num_rows == 0 or official.num_rows == 0:
        return counts, 0
    ours = {rid: i for i, rid in enumerate(labels["report_id"].to_pylist())}
    our_cols = {obs: labels[obs].to_pylist() for obs in OBSERVATIONS}
    their_cols = {obs: official[obs].to_pylist() for obs in OBSERVATIONS}
    compared = 0
    for j, (rid, labeler) in enumerate(
        zip(official["report_id"].to_pylist(), official["labeler"].to_pylist(), strict=True)
    ):
        i = ours.get(rid)
        if i is None:
            continue
        compared += 1
        for obs in OBSERVATIONS:
            counts[(labeler, obs, state(our_cols[obs][i]), state(their_cols[obs][j]))] += 1
    return counts, compared


def to_table(counts: Counter[Key]) -> pa.Table:
    keys = sorted(counts)
    return pa.table(
        {
            "labeler": [k[0] for k in keys],
            "observation": [k[1] for k in keys],
            "ours": [k[2] for k in keys],
            "theirs": [k[3] for k in keys],
            "count": pa.array([counts[k] for k in keys], pa.int64()),
        }
    )


def summary(table: pa.Table) -> list[dict[str, object]]:
    """Per labeler and observation: compared reports, exact agreement, and positive-class F1.

    Positive class = 1 on both sides (uncertain and blank count as not positive).
    """
    rows: dict[tuple[str, str], Counter[tuple[str, str]]] = {}
    for rec in table.to_pylist():
        rows.setdefault((rec["labeler"], rec["observation"]), Counter())[(rec["ours"], rec["theirs"])] += rec[
            "count"
        ]
    out = []
    for (labeler, obs), cm in sorted(rows.items()):
        n = sum(cm.values())
        agree = sum(v for (a, b), v in cm.items() if a == b)
        tp = cm[("1", "1")]
        fp = sum(v for (a, b), v in cm.items() if a == "1" and b != "1")
        fn = sum(v for (a, b), v in cm.items() if a != "1" and b == "1")
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
        out.append(
            {
                "labeler": labeler,
                "observation": obs,
                "n": n,
                "agreement": agree / n if n else float("nan"),
                "f1_positive": f1,
            }
        )
    return out
