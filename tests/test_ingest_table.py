"""The table adapter: CSV (plain and gzipped) and Parquet, one text column or several section
columns, rejects, config and column errors, and the real Open-i reports."""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from test_ingest_support import ingest

from pipeline.core.errors import PipelineError
from pipeline.core.registry import PlanContext, get_stage
from pipeline.ingest.config import DatasetConfig, IngestConfig

HEADER = ["uid", "patient", "split", "Indication", "Findings", "Impression"]
ROWS = [
    ["r1", "p1", "train", "Cough.", "Lungs are clear.\nNo effusion.", "Normal."],
    ["r2", "p1", "valid", "", "Small left effusion.", ""],
    ["r3", "p2", "test", "", "", ""],
    ["", "p3", "train", "Fever.", "", "Pneumonia."],
    ["r1", "p4", "train", "Again.", "A second r1.", ""],
    ["r4", "p5", "train", "", "@@bad@@", ""],
    ["r5", "p6", "train", "", "Garbled \x01\x02\x03\x04 text", ""],
]
EXPECTED_REJECTS = {
    "r3": "empty_text",
    "row 5": "missing_id",
    "r1": "duplicate_id",
    "r4": "bad_encoding",
    "r5": "garbled_text",
}


def csv_bytes(header: list[str] = HEADER, rows: list[list[str]] = ROWS) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n").writerows([header, *rows])
    return buf.getvalue().encode().replace(b"@@bad@@", b"\x81\x8d")


def config(path: Path | str, **dataset) -> IngestConfig:
    base = {
        "id_column": "uid",
        "text_columns": ("Indication", "Findings", "Impression"),
        "subject_column": "patient",
        "split_column": "split",
    }
    return IngestConfig(
        dataset=DatasetConfig(name="table", path=str(path), **{**base, **dataset}), part_size=3
    )


def test_sections_from_columns(tmp_path: Path) -> None:
    (tmp_path / "reports.csv").write_bytes(csv_bytes())
    got = ingest(config(tmp_path / "reports.csv"), tmp_path / "staging")
    assert got.rows_in["reports"] == len(ROWS) and len(got.specs) == 3
    assert got.rejected("reports") == EXPECTED_REJECTS
    r1 = got.row("reports", "report_id", "r1")
    assert (
        r1["text"] == "INDICATION: Cough.\n\nFINDINGS: Lungs are clear.\nNo effusion.\n\nIMPRESSION: Normal."
    )
    assert [(s["name"], r1["text"][s["start"] : s["end"]]) for s in r1["sections"]] == [
        ("indication", "Cough."),
        ("findings", "Lungs are clear.\nNo effusion."),
        ("impression", "Normal."),
    ]
    assert (r1["subject_id"], r1["split"], r1["source"], r1["path"], r1["study_id"]) == (
        "p1",
        "train",
        "table",
        "row 2",
        None,
    )
    r2 = got.row("reports", "report_id", "r2")
    assert r2["text"] == "FINDINGS: Small left effusion." and r2["split"] == "validate"
    assert got.images.num_rows == 0 and got.labels.num_rows == 0


def test_one_text_column_gz_and_parquet_agree(tmp_path: Path) -> None:
    (tmp_path / "reports.csv.gz").write_bytes(gzip.compress(csv_bytes()))
    one = {"text_columns": (), "text_column": "Findings"}
    from_csv = ingest(config(tmp_path / "reports.csv.gz", **one), tmp_path / "s1")
    r1 = from_csv.row("reports", "report_id", "r1")
    assert r1["text"] == "Lungs are clear.\nNo effusion." and r1["sections"] is None
    assert from_csv.rejected("reports") == {
        "r3": "empty_text",
        "row 5": "missing_id",
        "r1": "duplicate_id",
        "r4": "bad_encoding",
        "r5": "garbled_text",
    }
    good = [row for row in ROWS if "@@bad@@" not in row[4]]
    table = pa.table({h: [row[i] for row in good] for i, h in enumerate(HEADER)})
    table = table.set_column(0, "uid", pa.array([row[0] or None for row in good]))
    pq.write_table(table, tmp_path / "reports.parquet")
    from_parquet = ingest(config(f"file://{tmp_path}/reports.parquet", **one), tmp_path / "s2")
    assert from_parquet.reports.drop_columns(["path"]).equals(
        from_csv.reports.filter(pc.not_equal(from_csv.reports["report_id"], "r4")).drop_columns(["path"])
    )


def test_integer_ids_in_parquet(tmp_path: Path) -> None:
    pq.write_table(
        pa.table({"id": pa.array([7, 8], pa.int64()), "text": ["IMPRESSION: ok.", "FINDINGS: fine."]}),
        tmp_path / "t.parquet",
    )
    got = ingest(
        IngestConfig(
            dataset=DatasetConfig(
                name="table", path=str(tmp_path / "t.parquet"), id_column="id", text_column="text"
            )
        ),
        tmp_path / "s",
    )
    assert got.column("reports", "report_id") == ["7", "8"]


def test_config_and_column_errors(tmp_path: Path) -> None:
    (tmp_path / "reports.csv").write_bytes(csv_bytes())
    stage = get_stage("ingest")
    ctx = PlanContext(str(tmp_path / "staging"), 10)

    def error(cfg: IngestConfig) -> PipelineError:
        with pytest.raises(PipelineError) as info:
            stage.plan(cfg, ctx)
        return info.value

    path = tmp_path / "reports.csv"
    err = error(config(path, text_column="Findings"))
    assert err.code == "E_CONFIG" and "both" in err.message
    err = error(config(path, text_columns=()))
    assert err.code == "E_CONFIG" and "neither" in err.message
    assert error(config(path, id_column=None)).code == "E_CONFIG"
    err = error(config(tmp_path / "absent.csv"))
    assert err.code == "E_DUMP_MISSING" and "dataset.path=" in err.message
    err = error(config(path, id_column="id", text_columns=("Indication", "finding")))
    assert err.code == "E_DUMP_COLUMNS"
    assert "dataset.id_column='id'" in err.message and "Did you mean 'uid'" in err.message
    assert "dataset.text_columns='finding'" in err.message and "Did you mean 'Findings'" in err.message
    assert error(config(path, split_column="fold")).code == "E_DUMP_COLUMNS"
    with pytest.raises(PipelineError) as info:
        stage.plan(config(path), PlanContext(str(tmp_path / "staging"), 0))
    assert info.value.code == "E_CONFIG" and "part_size" in info.value.message


@pytest.mark.shared_data
def test_openi_reports_all_accounted_for(shared_data: Path, tmp_path: Path) -> None:
    path = shared_data / "openi" / "reports.csv"
    cfg = IngestConfig(
        dataset=DatasetConfig(
            name="table",
            path=str(path),
            id_column="uid",
            text_columns=("indication", "comparison", "findings", "impression"),
        ),
        part_size=1000,
    )
    got = ingest(cfg, tmp_path / "staging")
    assert got.rows_in["reports"] == 2793 and len(got.specs) == 3
    assert got.reports.num_rows + got.rejects.num_rows == 2793
    # The rejected rows are exactly those with all four text columns empty.
    with path.open(newline="") as fh:
        empty = {
            row["uid"]
            for row in csv.DictReader(fh)
            if not any(row[c].strip() for c in ("indication", "comparison", "findings", "impression"))
        }
    assert len(empty) == 20
    assert got.rejected("reports") == dict.fromkeys(empty, "empty_text")
    first = got.row("reports", "report_id", "1")
    assert first["text"].startswith(
        "INDICATION: Positive TB test\n\nCOMPARISON: None.\n\nFINDINGS: The cardiac"
    )
    assert [s["name"] for s in first["sections"]] == ["indication", "comparison", "findings", "impression"]


def test_empty_csv_is_a_column_error(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(PipelineError) as info:
        get_stage("ingest").plan(config(tmp_path / "empty.csv"), PlanContext(str(tmp_path / "s"), 10))
    assert info.value.code == "E_DUMP_COLUMNS"
    (tmp_path / "header.csv").write_text(",".join(HEADER) + "\n")
    assert (
        get_stage("ingest").plan(config(tmp_path / "header.csv"), PlanContext(str(tmp_path / "s"), 10)) == []
    )
