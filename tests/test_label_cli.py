"""The CheXpert labeler / CheXbert drop-in (pipeline/label.py): CLI, Python API, run exports.

The labeler's real input/output pair is read from ../shared/data through the ``shared_data``
fixture. Readings are checked where a radiologist agrees, not against every labeler value: the
engine differs from the labeler on purpose (schemas/labels.yaml).
"""

from __future__ import annotations

import csv
import io
import math
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core.errors import PipelineError
from pipeline.label import CHEXBERT_OBSERVATIONS, LABELER_OBSERVATIONS, main

REPO = Path(__file__).resolve().parents[1]
# FORMATS.md, "The CheXpert labeler's and CheXbert's files".
LABELER_HEADER = (
    "Reports,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Lesion,Lung Opacity,Edema,"
    "Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,Fracture,Support Devices"
)
VALUES = {"", "1.0", "0.0", "-1.0"}
REPORTS_COL = "Reports"


def cli(*args: str, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.label", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def rows_of(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def as_csv(rows: list[list[str]]) -> bytes:
    """Rows serialised as pandas' to_csv (the labeler's writer) does: minimal quoting, \\n."""
    buf = io.StringIO(newline="")
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue().encode()


def by_name(rows: list[list[str]]) -> list[dict[str, str]]:
    return [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]


def write_headerless(path: Path, texts: list[str]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh, lineterminator="\n").writerows([t] for t in texts)
    return path


@pytest.mark.shared_data
@pytest.mark.slow
def test_labeler_sample_through_the_cli(shared_data: Path, tmp_path: Path):
    """The labeler's own sample, its own command line: its header, number format, quoting, rows."""
    folder = shared_data / "rules" / "chexpert-labeler"
    out = tmp_path / "labeled_reports.csv"
    done = cli("--reports_path", str(folder / "sample_reports.csv"), "--output_path", str(out))
    assert done.returncode == 0, done.stderr
    assert "in this process" in done.stderr  # 4 reports: no cluster
    theirs_bytes = (folder / "labeled_reports.csv").read_bytes()
    ours_bytes = out.read_bytes()
    assert (
        ours_bytes.split(b"\n", 1)[0].decode() == LABELER_HEADER == theirs_bytes.split(b"\n", 1)[0].decode()
    )

    ours, theirs = rows_of(out), rows_of(folder / "labeled_reports.csv")
    # The labeler's file is exactly what this serialisation writes, and so is ours.
    assert as_csv(theirs) == theirs_bytes
    assert as_csv(ours) == ours_bytes
    assert len(ours) == len(theirs) == 5
    assert [r[0] for r in ours] == [r[0] for r in theirs]  # texts written back as read, in order
    assert {v for r in ours[1:] for v in r[1:]} <= VALUES

    first, second, third, fourth = by_name(ours)
    # "Heart size normal and lungs are clear. No edema or pneumonia. No effusion"
    assert (first["Cardiomegaly"], first["Edema"], first["Pneumonia"], first["Pleural Effusion"]) == (
        "0.0",
    ) * 4
    assert first["No Finding"] == "1.0"
    # "1. Left pleural effusion with adjacent atelectasis. ... 2. Cardiomegaly without overt edema."
    assert (second["Pleural Effusion"], second["Atelectasis"], second["Cardiomegaly"]) == ("1.0",) * 3
    assert second["Edema"] == "0.0" and second["No Finding"] == ""
    # "... may reflect atelectasis or consolidation."
    assert third["Consolidation"] == third["Atelectasis"] == "-1.0"
    # "1. Stable mild cardiomegaly. 2. Hyperexpanded but clear lungs."
    assert fourth["Cardiomegaly"] == "1.0" and fourth["Pneumothorax"] == ""


def test_chexbert_csv_in_both_layouts(tmp_path: Path, capsys):
    """CheXbert's input (a `Report Impression` column among others): the labeler's layout with
    the labeler's flags, CheXbert's own layout with CheXbert's -d/-o (its -c accepted)."""
    source = tmp_path / "impressions.csv"
    with source.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["study", "Report Impression"])
        writer.writerows(
            [
                ["s1", "No pneumothorax."],
                ["s2", ""],
                ["s3", "Small right pleural effusion. Pneumonia cannot be excluded."],
                ["s4", "   "],
            ]
        )
    out = tmp_path / "labeled.csv"
    assert main(["--reports_path", str(source), "--output_path", str(out)]) == 0
    rows = rows_of(out)
    assert ",".join(rows[0]) == LABELER_HEADER
    first, empty, third, blank = by_name(rows)
    assert [row[REPORTS_COL] for row in (first, empty, third, blank)] == [
        "No pneumothorax.",
        "",
        "Small right pleural effusion. Pneumonia cannot be excluded.",
        "   ",
    ]
    assert first["Pneumothorax"] == "0.0" and first["No Finding"] == "1.0"
    assert third["Pleural Effusion"] == "1.0" and third["Pneumonia"] == "-1.0"
    # empty and whitespace-only cells keep their row, every label blank
    assert {v for row in (empty, blank) for k, v in row.items() if k != "Reports"} == {""}
    assert "chexbert CSV" in capsys.readouterr().err

    folder = tmp_path / "chexbert_out"
    assert main(["-d", str(source), "-o", str(folder), "-c", "unused.pth"]) == 0
    rows = rows_of(folder / "labeled_reports.csv")
    assert rows[0] == ["Report Impression", *CHEXBERT_OBSERVATIONS]
    assert by_name(rows)[0]["Pneumothorax"] == "0.0"


def test_two_cores_stay_in_process_above_the_threshold(tmp_path: Path, monkeypatch, capsys):
    """Automatic choice: the runner path never wins on 2 cores, so only 4+ cores (or --address,
    or --workers N) take it; --workers 1 stays here whatever the size."""
    import pipeline.label as label

    source = write_headerless(tmp_path / "r.csv", ["No pneumothorax.", "Mild cardiomegaly."])
    monkeypatch.setattr(label, "_cpu_count", lambda: 2)
    assert (
        main(
            [
                "--reports_path",
                str(source),
                "--output_path",
                str(tmp_path / "o.csv"),
                "--cluster-threshold",
                "1",
            ]
        )
        == 0
    )
    assert "in this process" in capsys.readouterr().err
    assert (
        main(["--reports_path", str(source), "--output_path", str(tmp_path / "o.csv"), "--workers", "-1"])
        == 2
    )
    assert "--workers must be >= 0" in capsys.readouterr().err


def test_label_reports_api():
    import pandas as pd

    from pipeline import label_reports

    df = label_reports(["No pneumothorax.", "", "Heart size is normal. Small right pleural effusion."])
    assert list(df.columns[:15]) == [REPORTS_COL, *LABELER_OBSERVATIONS]
    assert list(df.columns[15:]) == [f"{obs} evidence" for obs in LABELER_OBSERVATIONS]
    assert len(df) == 3 and list(df.index) == [0, 1, 2]
    assert df.loc[0, "Pneumothorax"] == 0.0
    (proof,) = df.loc[0, "Pneumothorax evidence"]
    assert proof["sentence"] == "No pneumothorax." and proof["mention"] == "pneumothorax"
    assert proof["status"] == "absent" and proof["cue"] == "No" and proof["rule"].startswith("neg.")
    assert all(math.isnan(df.loc[1, obs]) for obs in LABELER_OBSERVATIONS)
    assert all(df.loc[1, f"{obs} evidence"] == [] for obs in LABELER_OBSERVATIONS)
    assert df.loc[2, "Pleural Effusion"] == 1.0 and df.loc[2, "Cardiomegaly"] == 0.0
    assert math.isnan(df.loc[2, "No Finding"])
    assert [p["status"] for p in df.loc[2, "Pleural Effusion evidence"]] == ["present"]

    # A Series keeps its index; one string is one report; sections=whole|impression.
    report = (
        "INDICATION: Rule out pneumonia.\n\nFINDINGS: Small left effusion.\n\nIMPRESSION: No pneumothorax."
    )
    whole = label_reports(pd.Series([report], index=["s50414267"]), evidence=False)
    assert list(whole.index) == ["s50414267"] and len(whole.columns) == 15
    assert whole.loc["s50414267", "Pleural Effusion"] == 1.0  # findings count in the whole cell
    assert math.isnan(whole.loc["s50414267", "Pneumonia"])  # an indication asks; it is not a finding
    impression = label_reports(report, sections="impression")
    assert math.isnan(impression.loc[0, "Pleural Effusion"]) and impression.loc[0, "Pneumothorax"] == 0.0
    with pytest.raises(PipelineError) as err:
        label_reports(["x"], sections="impresion")
    assert err.value.code == "E_CONFIG_VALUE" and "impression" in err.value.message


def test_import_pipeline_stays_cheap():
    code = (
        "import sys, pipeline\n"
        "assert 'spacy' not in sys.modules and 'pandas' not in sys.modules\n"
        "assert callable(pipeline.label_reports) and 'label_reports' in dir(pipeline)\n"
        "assert 'spacy' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("content", "code", "hint"),
    [
        (None, "E_LABEL_INPUT_MISSING", "does not exist"),
        (b"", "E_LABEL_INPUT_EMPTY", "no report"),
        (b"\n\n", "E_LABEL_INPUT_EMPTY", "no report"),
        (b"uid,Report Impression\n", "E_LABEL_INPUT_EMPTY", "no report under it"),
        (
            b"uid,report impression\n1,No effusion.\n",
            "E_LABEL_INPUT_COLUMNS",
            "rename it 'Report Impression'",
        ),
        (b"No effusion.\nNo edema, no effusion.\n", "E_LABEL_INPUT_COLUMNS", "row 2 has 2 fields"),
    ],
    ids=["missing", "empty", "blank-lines", "header-only", "two-columns", "unquoted-comma"],
)
def test_bad_inputs_exit_2(tmp_path: Path, capsys, content: bytes | None, code: str, hint: str):
    source = tmp_path / "reports.csv"
    if content is not None:
        source.write_bytes(content)
    assert main(["--reports_path", str(source), "--output_path", str(tmp_path / "out.csv")]) == 2
    err = capsys.readouterr().err
    assert f"[{code}]" in err and hint in err and "Report Impression" in err
    assert not (tmp_path / "out.csv").exists()


def test_bad_input_exit_code_of_the_process(tmp_path: Path):
    done = cli("--reports_path", str(tmp_path / "nope.csv"), timeout=60)
    assert done.returncode == 2 and "E_LABEL_INPUT_MISSING" in done.stderr
    done = cli("export", "--run", str(tmp_path))  # neither --to nor --findings: a usage error
    assert done.returncode == 2 and "--findings" in done.stderr


def test_exports_of_a_run(demo_run: Path, tmp_path: Path, capsys):
    from pipeline.core.io import read_dataset

    labels_csv, findings_csv = tmp_path / "labeled_reports.csv", tmp_path / "findings.csv"
    argv = ["export", "--run", str(demo_run), "--to", str(labels_csv), "--findings", str(findings_csv)]
    assert main(argv) == 0
    reports = read_dataset(str(demo_run), "reports", columns=["report_id", "text"])
    rows = rows_of(labels_csv)
    assert ",".join(rows[0]) == LABELER_HEADER
    assert [r[0] for r in rows[1:]] == reports.column("text").to_pylist()
    assert as_csv(rows) == labels_csv.read_bytes()
    assert {v for r in rows[1:] for v in r[1:]} <= VALUES

    with_ids = tmp_path / "with_ids.csv"
    assert main(["export", "--run", str(demo_run), "--to", str(with_ids), "--ids"]) == 0
    exported = {r["report_id"]: r for r in by_name(rows_of(with_ids))}
    labels = read_dataset(str(demo_run), "labels").to_pylist()
    assert labels
    for row in labels:
        for obs in LABELER_OBSERVATIONS:
            want = "" if row[obs] is None else f"{row[obs]:.1f}"
            assert exported[row["report_id"]][obs] == want

    findings = read_dataset(str(demo_run), "findings")
    tidy = rows_of(findings_csv)
    assert tidy[0] == ["report_id", "finding", "observation", "status", "n_mentions"]
    assert len(tidy) - 1 == findings.num_rows > 0
    assert {r[3] for r in tidy[1:]} <= {"present", "absent", "uncertain"}

    capsys.readouterr()
    assert main(["export", "--run", str(tmp_path / "no-run"), "--to", str(tmp_path / "x.csv")]) == 2
    assert "[E_INPUT_MISSING]" in capsys.readouterr().err


@pytest.mark.shared_data
@pytest.mark.slow
def test_large_input_path_through_the_runner(shared_data: Path, tmp_path: Path, dask_client, capsys):
    """Above --cluster-threshold the real runner labels (ingest, parse, extract) on a cluster (the
    session's, by --address); the CSV is the same as the in-process path's, byte for byte."""
    sample = (shared_data / "rules" / "chexpert-labeler" / "sample_reports.csv").open(newline="")
    texts = [row[0] for row in csv.reader(sample)]
    sample.close()
    texts += [
        "No pneumothorax.",
        "",
        "FINDINGS: Heart size is normal. No focal consolidation.\n\nIMPRESSION: No acute process.",
        "INDICATION: Rule out pneumonia.\n\nFINDINGS: Lungs are clear.",
        "Endotracheal tube 4 cm above the carina. Possible left lower lobe atelectasis.",
        "Moderate cardiomegaly with mild pulmonary edema, improved.",
        "Right rib fracture. No pleural effusion or pneumothorax.",
        "Stable 8 mm nodule in the right upper lobe.",
        "Degenerative changes of the spine.",
        "Left PICC line tip in the SVC.",
        "Unchanged.",
        "Low lung volumes with bibasilar opacities, atelectasis versus pneumonia.",
        "Blunting of the costophrenic angles may represent small effusions.",
        "Widened mediastinum.",
        "Pleural thickening on the left.",
        "No evidence of acute cardiopulmonary disease.",
    ]
    source = write_headerless(tmp_path / "reports.csv", texts)
    address = dask_client.scheduler.address
    on_cluster, in_process = tmp_path / "cluster.csv", tmp_path / "local.csv"
    argv = ["--reports_path", str(source), "--cluster-threshold", "10", "--address", address]
    assert main([*argv, "--output_path", str(on_cluster)]) == 0
    assert f"the scheduler at {address}" in capsys.readouterr().err
    assert main([*argv, "--output_path", str(in_process), "--workers", "1"]) == 0
    assert "in this process" in capsys.readouterr().err
    assert on_cluster.read_bytes() == in_process.read_bytes()
    rows = by_name(rows_of(on_cluster))
    assert len(rows) == 20 and [r["Reports"] for r in rows] == texts
    assert rows[4]["Pneumothorax"] == "0.0"
    assert {v for k, v in rows[5].items() if k != "Reports"} == {""}  # the empty row
    assert rows[7]["Pneumonia"] == ""  # "rule out pneumonia" is an indication
    assert rows[8]["Support Devices"] == "1.0" and rows[8]["Atelectasis"] == "-1.0"
