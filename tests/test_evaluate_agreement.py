"""Agreement of our labels with official labels: the confusion counts and the summary."""

from __future__ import annotations

import math

import pyarrow as pa

from pipeline.evaluate.agreement import OBSERVATIONS, confusion, state, summary, to_table


def labels_table(rows: dict[str, dict[str, float | None]], labeler: str | None = None) -> pa.Table:
    ids = list(rows)
    cols: dict[str, list] = {"report_id": ids}
    if labeler:
        cols["labeler"] = [labeler] * len(ids)
    for obs in OBSERVATIONS:
        cols[obs] = pa.array([rows[i].get(obs) for i in ids], pa.float32())
    return pa.table(cols)


def test_state_covers_nan_and_values():
    assert [state(v) for v in (1.0, 0.0, -1.0, None, float("nan"))] == ["1", "0", "-1", "blank", "blank"]


def test_confusion_counts_only_reports_on_both_sides():
    ours = labels_table({"a": {"Edema": 1.0}, "b": {"Edema": 0.0}, "c": {"Edema": -1.0}})
    theirs = labels_table({"a": {"Edema": 1.0}, "b": {"Edema": 1.0}, "z": {"Edema": 1.0}}, labeler="chexpert")
    counts, compared = confusion(ours, theirs)
    assert compared == 2
    assert counts[("chexpert", "Edema", "1", "1")] == 1
    assert counts[("chexpert", "Edema", "0", "1")] == 1
    assert sum(v for k, v in counts.items() if k[1] == "Edema") == 2
    assert counts[("chexpert", "Cardiomegaly", "blank", "blank")] == 2
    rows = {(r["labeler"], r["observation"]): r for r in summary(to_table(counts))}
    edema = rows[("chexpert", "Edema")]
    assert edema["n"] == 2 and edema["agreement"] == 0.5
    assert math.isclose(edema["f1_positive"], 2 / 3)


def test_empty_sides():
    empty = labels_table({})
    counts, compared = confusion(empty, labels_table({"a": {}}, labeler="negbio"))
    assert not counts and compared == 0
