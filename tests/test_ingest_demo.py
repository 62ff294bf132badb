"""The ingest stage on a generated demo dump with injected bad rows: each lands in rejects with the
reason the generator intended, and nothing else is rejected."""

from __future__ import annotations

import csv

import pytest
from test_ingest_support import ingest

from pipeline.ingest.config import DatasetConfig, IngestConfig


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("demo")
    cfg = IngestConfig(
        dataset=DatasetConfig(
            name="demo", root=str(base / "dump"), n_reports=120, seed=3, inject_bad_rows=True
        ),
        part_size=40,
    )
    return base / "dump", ingest(cfg, base / "staging")


def test_demo_dump_is_generated_when_absent(demo) -> None:
    root, got = demo
    assert (root / "files").is_dir() and (root / "demo_truth" / "injected.csv").exists()
    assert len(got.specs) == 4  # 121 report rows (120 studies, one duplicate copy) in parts of 40


def test_every_injected_row_is_rejected_with_its_reason(demo) -> None:
    root, got = demo
    with (root / "demo_truth" / "injected.csv").open(newline="") as fh:
        injected = list(csv.DictReader(fh))
    assert {row["kind"] for row in injected} >= {
        "empty_report",
        "missing_report",
        "undecodable_report",
        "garbage_report",
        "long_report",
        "duplicate_study",
        "random_bytes_dicom",
        "truncated_header_dicom",
        "truncated_pixels_dicom",
    }
    rejects = got.rejects.to_pylist()
    expected = set()
    for row in injected:
        if row["dicom_id"]:
            key = ("images_meta", row["dicom_id"], row["reason_code"])
        else:
            key = ("reports", f"s{row['study_id']}", row["reason_code"])
        expected.add(key)
        matches = [r for r in rejects if (r["dataset"], r["row_id"], r["reason_code"]) == key]
        assert matches, row
        if row["kind"] == "duplicate_study":
            # The copy filed under the other subject is the one rejected, not the study's own report.
            assert matches[0]["detail"].startswith(row["path"] + ":"), matches[0]
    # Besides the injected rows, only their consequences: images and labels of rejected reports,
    # and the label rows of the duplicated report's copy.
    duplicated = {f"s{row['study_id']}" for row in injected if row["kind"] == "duplicate_study"}
    others = {(r["dataset"], r["row_id"], r["reason_code"]) for r in rejects} - expected
    kept = set(got.column("reports", "report_id"))
    for dataset, row_id, code in others:
        report_id = row_id.split(" ")[0]
        assert dataset in ("images_meta", "official_labels"), row_id
        if code == "duplicate_id":
            assert dataset == "official_labels" and report_id in duplicated
        else:
            assert code == "orphan_row" and report_id not in kept
