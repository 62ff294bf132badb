"""CheXpert Plus and CheXpert v1.0 on hand-built CSVs: multi-line quoted sections, report ids per
study, labels in v1.0's own column order, rejects and structural errors."""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_ingest_support import ingest

from pipeline.core.errors import PipelineError
from pipeline.core.registry import PlanContext, get_stage
from pipeline.ingest import files as ingest_files
from pipeline.ingest.chexpert import report_hash
from pipeline.ingest.config import DatasetConfig, IngestConfig

PLUS_COLUMNS = [
    "path_to_image",
    "path_to_dcm",
    "frontal_lateral",
    "ap_pa",
    "deid_patient_id",
    "patient_report_date_order",
    "report",
    "section_narrative",
    "section_clinical_history",
    "section_history",
    "section_comparison",
    "section_technique",
    "section_procedure_comments",
    "section_findings",
    "section_impression",
    "section_end_of_impression",
    "section_summary",
    "section_accession_number",
    "age",
    "sex",
    "race",
    "ethnicity",
    "interpreter_needed",
    "insurance_type",
    "recent_bmi",
    "deceased",
    "split",
]
R1 = (
    "NARRATIVE:\nCHEST 2 VIEWS\n\nCLINICAL HISTORY: Cough.\n\nFINDINGS:\nThe lungs are\nclear. No effusion.\n\n"
    "IMPRESSION:\n1. No acute disease.\n"
)
R1B = R1.replace("Cough.", "Fever.")  # the same study, anonymised differently
CP1252 = "@@cp1252@@"
BAD_BYTES = "@@bad@@"
MAX_CHARS = 400


def plus_row(
    path: str,
    report: str = "",
    *,
    view: str = "Frontal",
    ap_pa: str = "AP",
    patient: str = "pid1",
    split: str = "train",
    **sections: str,
) -> dict[str, str]:
    row = dict.fromkeys(PLUS_COLUMNS, "")
    row.update(
        path_to_image=path,
        path_to_dcm=path.replace(".jpg", ".dcm"),
        frontal_lateral=view,
        ap_pa=ap_pa,
        deid_patient_id=patient,
        report=report,
        split=split,
        age="70",
        sex="Female",
    )
    row.update({f"section_{k}": v for k, v in sections.items()})
    return row


R1_SECTIONS = {
    "narrative": "CHEST 2 VIEWS",
    "clinical_history": "Cough.",
    "findings": "The lungs are clear. No effusion.",
    "impression": "1. No acute disease.",
    "accession_number": "12345678",
}
PLUS_ROWS = [
    plus_row("train/patient00001/study1/view1_frontal.jpg", R1, **R1_SECTIONS),
    plus_row("train/patient00001/study1/view2_lateral.jpg", R1, view="Lateral", ap_pa="", **R1_SECTIONS),
    plus_row("train/patient00001/study1/view3_frontal.jpg", R1B, ap_pa="PA"),
    plus_row(
        "train/patient00002/study1/view1_frontal.jpg",
        "",
        patient="pid2",
        findings="Heart size normal.\nLungs clear.",
        impression="Normal chest.",
    ),
    plus_row("train/patient00003/study2/view1_frontal.jpg", "   \n", patient="pid3"),
    plus_row("", "FINDINGS: an image without a path."),
    plus_row("train/patient00001/study1/view1_frontal.jpg", R1, **R1_SECTIONS),
    plus_row("bad/path.jpg", "FINDINGS: too few path parts."),
    plus_row(
        "valid/patient64541/study1/view1_frontal.jpg",
        f"IMPRESSION: caf{CP1252} normal.",
        patient="pid4",
        split="valid",
    ),
    plus_row("train/patient00004/study1/view1_frontal.jpg", f"IMPRESSION: {BAD_BYTES}.", patient="pid5"),
    plus_row("train/patient00005/study1/view1_frontal.jpg", "x" * (MAX_CHARS + 1), patient="pid6"),
    # A late image of study1 in another CSV block: it still joins its report's part.
    plus_row("train/patient00001/study1/view4_lateral.jpg", R1, view="Lateral", ap_pa="", **R1_SECTIONS),
]
RID1 = f"train/patient00001/study1/{report_hash(R1.encode())}"
RID1B = f"train/patient00001/study1/{report_hash(R1B.encode())}"


def write_plus(path: Path) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, PLUS_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(PLUS_ROWS)
    data = buf.getvalue().encode().replace(CP1252.encode(), "\xe9".encode("cp1252"))
    path.write_bytes(data.replace(BAD_BYTES.encode(), b"\x81\x8d"))
    return path


def plus_config(path: Path | str, **kwargs) -> IngestConfig:
    return IngestConfig(
        dataset=DatasetConfig(name="chexpert_plus", path=str(path)), max_chars=MAX_CHARS, **kwargs
    )


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """CSV blocks of 1 KiB, so that a dozen rows span several batches."""
    monkeypatch.setattr(ingest_files, "CSV_BLOCK_SIZE", 1024)


def test_plus_reports_images_and_rejects(tmp_path: Path, small_blocks: None) -> None:
    got = ingest(plus_config(write_plus(tmp_path / "plus.csv")), tmp_path / "staging")
    assert got.rows_in == {"reports": 9, "images_meta": 12, "official_labels": 0}
    rejected = got.rejected("reports")
    # A blank report column is hashed with its (here empty) section columns.
    assert {k.rsplit("/", 1)[0] if "/" in k else k: v for k, v in rejected.items()} == {
        "row 7": "missing_id",
        "row 9": "bad_id",
        "train/patient00003/study2": "empty_text",
        "train/patient00004/study1": "bad_encoding",
        "train/patient00005/study1": "too_long",
    }
    assert f"train/patient00005/study1/{report_hash(b'x' * (MAX_CHARS + 1))}" in rejected
    assert got.rejected("images_meta") == {
        "row 7": "missing_id",
        "train/patient00001/study1/view1_frontal.jpg": "duplicate_id",
        "bad/path.jpg": "bad_id",
        "train/patient00003/study2/view1_frontal.jpg": "orphan_row",
        "train/patient00004/study1/view1_frontal.jpg": "orphan_row",
        "train/patient00005/study1/view1_frontal.jpg": "orphan_row",
    }
    images = {r["image_id"]: r for r in got.images.to_pylist()}
    assert {k: r["report_id"] for k, r in images.items() if "patient00001" in k} == {
        "train/patient00001/study1/view1_frontal.jpg": RID1,
        "train/patient00001/study1/view2_lateral.jpg": RID1,
        "train/patient00001/study1/view3_frontal.jpg": RID1B,
        "train/patient00001/study1/view4_lateral.jpg": RID1,
    }
    first = images["train/patient00001/study1/view1_frontal.jpg"]
    assert (
        first["view_position"],
        first["subject_id"],
        first["study_id"],
        first["split"],
        first["file_format"],
    ) == ("AP", "pid1", "train/patient00001/study1", "train", "jpg")
    assert images["train/patient00001/study1/view2_lateral.jpg"]["view_position"] == "LATERAL"
    assert images["valid/patient64541/study1/view1_frontal.jpg"]["split"] == "validate"


def test_plus_text_and_known_sections(tmp_path: Path) -> None:
    got = ingest(plus_config(write_plus(tmp_path / "plus.csv")), tmp_path / "staging")
    report = got.row("reports", "report_id", RID1)
    assert report["text"] == R1 and report["source"] == "chexpert_plus"
    spans = [(s["name"], R1[s["start"] : s["end"]]) for s in report["sections"]]
    # Found in the report even where the section column re-wraps the text; no accession number.
    assert spans == [
        ("narrative", "CHEST 2 VIEWS"),
        ("history", "Cough."),
        ("findings", "The lungs are\nclear. No effusion."),
        ("impression", "1. No acute disease."),
    ]
    assert got.row("reports", "report_id", RID1B)["sections"] is None
    built = [r for r in got.reports.to_pylist() if r["study_id"] == "train/patient00002/study1"]
    assert len(built) == 1
    text = built[0]["text"]
    assert text == "FINDINGS: Heart size normal.\nLungs clear.\n\nIMPRESSION: Normal chest."
    assert [text[s["start"] : s["end"]] for s in built[0]["sections"]] == [
        "Heart size normal.\nLungs clear.",
        "Normal chest.",
    ]
    valid = [r for r in got.reports.to_pylist() if r["study_id"] == "valid/patient64541/study1"][0]
    assert valid["text"] == "IMPRESSION: caf\xe9 normal." and valid["split"] == "validate"


def test_plus_parts_hold_whole_reports(tmp_path: Path, small_blocks: None) -> None:
    got = ingest(plus_config(write_plus(tmp_path / "plus.csv"), part_size=1), tmp_path / "staging")
    assert len(got.specs) == 9  # one per report row; ingest() checks images sit with their report


def test_plus_structural_errors(tmp_path: Path) -> None:
    stage = get_stage("ingest")
    ctx = PlanContext(str(tmp_path / "staging"), 10)
    with pytest.raises(PipelineError) as info:
        stage.plan(plus_config(tmp_path / "missing.csv"), ctx)
    assert info.value.code == "E_DUMP_MISSING" and "dataset.path=" in info.value.message
    (tmp_path / "noreport.csv").write_text("path_to_image,reports\ntrain/p/s/v.jpg,x\n")
    with pytest.raises(PipelineError) as info:
        stage.plan(plus_config(tmp_path / "noreport.csv"), ctx)
    assert info.value.code == "E_DUMP_COLUMNS" and "Did you mean 'reports'" in info.value.message


# -- CheXpert v1.0 ---------------------------------------------------------------------------------

V1_OBSERVATIONS = [
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
]
V1_HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *V1_OBSERVATIONS]


def v1_row(path: str, view: str = "Frontal", ap_pa: str = "AP", **labels: str) -> list[str]:
    return [
        path,
        "Female",
        "68",
        view,
        ap_pa,
        *(labels.get(o.replace(" ", "_"), "") for o in V1_OBSERVATIONS),
    ]


def write_v1(root: Path) -> Path:
    prefix = "CheXpert-v1.0-small/train"
    train = [
        v1_row(f"{prefix}/patient00001/study1/view1_frontal.jpg", No_Finding="1.0", Support_Devices="1.0"),
        v1_row(
            f"{prefix}/patient00001/study1/view2_lateral.jpg",
            "Lateral",
            "",
            No_Finding="1.0",
            Support_Devices="1.0",
        ),
        v1_row(
            f"{prefix}/patient00002/study2/view1_frontal.jpg",
            ap_pa="PA",
            Cardiomegaly="-1.0",
            Edema="1.0",
            Lung_Opacity="0.0",
        ),
        v1_row(f"{prefix}/patient00003/study1/view1_frontal.jpg", Edema="2.0"),
        v1_row(""),
        v1_row(f"{prefix}/patient00002/study2/view1_frontal.jpg", ap_pa="PA"),
    ]
    valid = [v1_row("CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg", Pneumothorax="0.0")]
    root.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train.csv", train), ("valid.csv", valid)):
        with (root / name).open("w", newline="") as fh:
            csv.writer(fh, lineterminator="\n").writerows([V1_HEADER, *rows])
    return root


def v1_config(**dataset) -> IngestConfig:
    return IngestConfig(dataset=DatasetConfig(name="chexpert", **dataset))


def test_v1_images_and_labels_by_name(tmp_path: Path) -> None:
    root = write_v1(tmp_path / "CheXpert-v1.0-small")
    got = ingest(v1_config(root=str(root)), tmp_path / "staging")
    assert got.reports.num_rows == 0
    assert got.rows_in == {"reports": 0, "images_meta": 7, "official_labels": 5}
    assert got.rejected("official_labels") == {
        "train/patient00003/study1 (chexpert)": "bad_value",
        "train.csv:row 6 (chexpert)": "missing_id",
    }
    assert got.rejected("images_meta") == {
        "train.csv:row 6": "missing_id",
        "CheXpert-v1.0-small/train/patient00002/study2/view1_frontal.jpg": "duplicate_id",
    }
    labels = {r["report_id"]: r for r in got.labels.to_pylist()}
    assert set(labels) == {
        "train/patient00001/study1",
        "train/patient00002/study2",
        "valid/patient64541/study1",
    }
    study2 = labels["train/patient00002/study2"]
    assert (
        study2["Cardiomegaly"],
        study2["Edema"],
        study2["Lung Opacity"],
        study2["No Finding"],
        study2["labeler"],
    ) == (-1.0, 1.0, 0.0, None, "chexpert")
    assert (
        labels["train/patient00001/study1"]["No Finding"],
        labels["train/patient00001/study1"]["Support Devices"],
    ) == (1.0, 1.0)
    images = {r["image_id"]: r for r in got.images.to_pylist()}
    lateral = images["train/patient00001/study1/view2_lateral.jpg"]
    assert (
        lateral["view_position"],
        lateral["report_id"],
        lateral["subject_id"],
        lateral["split"],
        lateral["path"],
    ) == (
        "LATERAL",
        "train/patient00001/study1",
        "patient00001",
        "train",
        "CheXpert-v1.0-small/train/patient00001/study1/view2_lateral.jpg",
    )
    assert images["train/patient00002/study2/view1_frontal.jpg"]["view_position"] == "PA"
    assert images["valid/patient64541/study1/view1_frontal.jpg"]["split"] == "validate"
    # One CSV through dataset.path reads the same rows of that file.
    only_valid = ingest(v1_config(path=str(root / "valid.csv")), tmp_path / "staging2")
    assert only_valid.column("official_labels", "report_id") == ["valid/patient64541/study1"]


def test_v1_structural_errors(tmp_path: Path) -> None:
    stage = get_stage("ingest")
    ctx = PlanContext(str(tmp_path / "staging"), 10)

    def error(cfg: IngestConfig) -> PipelineError:
        with pytest.raises(PipelineError) as info:
            stage.plan(cfg, ctx)
        return info.value

    assert error(v1_config()).code == "E_DUMP_MISSING"
    assert error(v1_config(root=str(tmp_path / "absent"))).code == "E_DUMP_MISSING"
    (tmp_path / "empty").mkdir()
    assert error(v1_config(root=str(tmp_path / "empty"))).code == "E_DUMP_LAYOUT"
    (tmp_path / "short.csv").write_text(",".join(h for h in V1_HEADER if h != "Edema") + "\n")
    err = error(v1_config(path=str(tmp_path / "short.csv")))
    assert err.code == "E_DUMP_COLUMNS" and "'Edema'" in err.message


# -- structural problems of the files, encodings -----------------------------------------------------


def _error(cfg: IngestConfig, staging: Path) -> PipelineError:
    with pytest.raises(PipelineError) as info:
        get_stage("ingest").plan(cfg, PlanContext(str(staging), 10))
    return info.value


def test_plus_file_problems_are_coded(tmp_path: Path) -> None:
    folder = tmp_path / "df_chexpert_plus_240401.csv"  # unpacked into a folder of the same name
    folder.mkdir()
    write_plus(folder / "df_chexpert_plus_240401.csv")
    err = _error(plus_config(folder), tmp_path / "s")
    assert err.code == "E_DUMP_LAYOUT" and "is a folder, not a file: set dataset.path=" in err.message
    assert "It holds df_chexpert_plus_240401.csv" in err.message
    (tmp_path / "header.csv").write_text(",".join(PLUS_COLUMNS) + "\n")
    err = _error(plus_config(tmp_path / "header.csv"), tmp_path / "s")
    assert err.code == "E_DUMP_EMPTY" and "has a header but no rows" in err.message
    pq.write_table(pa.table({"path_to_image": ["a/b/c/d.jpg"], "report": ["x"]}), tmp_path / "plus.csv")
    err = _error(plus_config(tmp_path / "plus.csv"), tmp_path / "s")
    assert err.code == "E_DUMP_FORMAT" and "is a Parquet file, not CSV text" in err.message
    (tmp_path / "empty.csv").write_bytes(b"")
    assert _error(plus_config(tmp_path / "empty.csv"), tmp_path / "s").code == "E_DUMP_EMPTY"
    assert not (tmp_path / "s").exists()


def test_plus_utf16_gzipped_reads_like_utf8(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, PLUS_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(PLUS_ROWS[:5])
    text = buf.getvalue().replace(R1, R1.replace("Cough.", "Toux \u2013 fièvre."))
    (tmp_path / "utf8.csv").write_bytes(text.encode("utf-8"))
    (tmp_path / "utf16.csv.gz").write_bytes(gzip.compress(codecs.BOM_UTF16_LE + text.encode("utf-16-le")))
    expected = ingest(plus_config(tmp_path / "utf8.csv"), tmp_path / "s1")
    with caplog.at_level(logging.WARNING, logger="pipeline.ingest.chexpert"):
        got = ingest(plus_config(tmp_path / "utf16.csv.gz"), tmp_path / "s2")
    assert got.reports.equals(expected.reports) and got.images.equals(expected.images)
    assert "fièvre" in "".join(got.column("reports", "text"))
    assert "UTF-16-LE (by its byte-order mark), gzip-compressed" in caplog.text


def test_plus_rows_not_utf8_are_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pipeline.ingest.chexpert"):
        ingest(plus_config(write_plus(tmp_path / "plus.csv")), tmp_path / "staging")
    # Row 10 is Windows-1252; row 11 is neither that nor UTF-8 (rejected as bad_encoding).
    assert "2 row(s) are not UTF-8 and are read as Windows-1252 (row 10, row 11)" in caplog.text


def test_v1_empty_and_folder_are_coded(tmp_path: Path) -> None:
    root = tmp_path / "CheXpert-v1.0-small"
    root.mkdir()
    for name in ("train.csv", "valid.csv"):
        (root / name).write_text(",".join(V1_HEADER) + "\n")
    err = _error(v1_config(root=str(root)), tmp_path / "s")
    assert err.code == "E_DUMP_EMPTY" and "have headers but no rows" in err.message
    assert "train.csv" in err.message and "valid.csv" in err.message
    err = _error(v1_config(path=str(tmp_path)), tmp_path / "s")
    assert err.code == "E_DUMP_LAYOUT" and "is a folder" in err.message
