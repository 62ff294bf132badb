"""Odd reports through the real ingest -> parse -> extract: no crash, every row accounted for."""

from __future__ import annotations

import csv
import random

import pytest

from pipeline.core.config import compose_run
from pipeline.core.dag import build_dag
from pipeline.core.io import read_dataset
from pipeline.core.runner import Runner


def odd_reports() -> dict[str, str]:
    rng = random.Random(7)
    garbage = "".join(chr(rng.randrange(0x21, 0x2FF)) for _ in range(3000))
    return {
        "empty": "",
        "blank": "   \n\t  \n",
        "huge": "FINDINGS: " + "There is a small left pleural effusion. No pneumothorax. " * 17_600,
        "garbage": garbage,
        "control": "FINDINGS: \x00\x01\x02\x03 no effusion \x04\x05\x06" * 20,
        "french": "CONCLUSION : Pas d'épanchement pleural. Silhouette cardiaque normale.",
        "chinese": "结论：双肺未见明显异常。",
        "caps": "FINDINGS: THE HEART IS ENLARGED. NO PLEURAL EFFUSION OR PNEUMOTHORAX.",
        "unpunctuated": "findings\nheart size normal\nno focal consolidation\nsmall right effusion\nimpression\nsmall right effusion",
        "symbols": "..... ;;;; ---- ____ XXXX ___ 1. 2. 3.",
        "normal": "IMPRESSION: No acute cardiopulmonary process.",
    }


@pytest.mark.slow
def test_odd_reports_never_crash_and_are_accounted_for(tmp_path, dask_client):
    reports = odd_reports()
    path = tmp_path / "odd.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "report"])
        writer.writerows(reports.items())
    cfg = compose_run(
        [
            "dataset=table",
            f"dataset.path={path}",
            "dataset.id_column=id",
            "dataset.text_column=report",
            "stages.ingest.max_chars=2000000",
            f"out={tmp_path / 'run'}",
            "stages.ingest.part_size=4",
        ]
    )
    dag = build_dag("labels", ["ingest", "parse", "extract"])
    stage_reports = Runner(cfg.out, dask_client).run_dag(
        dag, {s.name: cfg.stage_config(s.name) for s in dag.stages}
    )
    for rep in stage_reports:
        assert rep.rows_in == rep.rows_out + rep.rejected, rep
    rejects = {r["row_id"]: r["reason_code"] for r in read_dataset(cfg.out, "rejects").to_pylist()}
    labels = {r["report_id"]: r for r in read_dataset(cfg.out, "labels").to_pylist()}
    assert set(rejects) | set(labels) == set(reports)  # nothing lost
    assert not set(rejects) & set(labels)
    assert rejects["empty"] == "empty_text" and rejects["blank"] == "empty_text"
    assert rejects["control"] == "garbled_text"
    # Real reading still happens in the odd-but-valid ones.
    assert labels["caps"]["Cardiomegaly"] == 1.0 and labels["caps"]["Pleural Effusion"] == 0.0
    assert labels["huge"]["Pleural Effusion"] == 1.0 and labels["huge"]["Pneumothorax"] == 0.0
    assert labels["unpunctuated"]["Pleural Effusion"] == 1.0
    assert labels["normal"]["No Finding"] == 1.0
    for rid in ("french", "chinese"):
        if rid in labels:  # read without inventing findings
            assert all(labels[rid][obs] is None for obs in ("Cardiomegaly", "Edema", "Pneumothorax"))
