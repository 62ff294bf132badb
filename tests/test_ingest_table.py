"""The table adapter: CSV (plain and gzipped) and Parquet, one text column or several section
columns, rejects, config and column errors, and the real Open-i reports."""

from __future__ import annotations

import codecs
import csv
import functools
import gzip
import io
import logging
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileSystem
from test_ingest_support import ingest

from pipeline.core.errors import PipelineError
from pipeline.core.registry import PlanContext, get_stage
from pipeline.ingest import files as ingest_files
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


def test_empty_inputs_are_structural(tmp_path: Path) -> None:
    """0 bytes, a header and no rows, a Parquet file without rows: coded errors, nothing staged."""
    (tmp_path / "empty.csv").write_bytes(b"")
    (tmp_path / "empty.csv.gz").write_bytes(gzip.compress(b""))
    (tmp_path / "header.csv").write_text(",".join(HEADER) + "\n")
    pq.write_table(pa.table({h: pa.array([], pa.string()) for h in HEADER}), tmp_path / "none.parquet")
    for name, words in (
        ("empty.csv", "is empty (0 bytes)"),
        ("empty.csv.gz", "is empty after decompression"),
        ("header.csv", "has a header but no rows"),
        ("none.parquet", "has columns but no rows"),
    ):
        err = plan_error(config(tmp_path / name), tmp_path / "s")
        assert err.code == "E_DUMP_EMPTY" and words in err.message and name in err.message, (name, err)
    assert not (tmp_path / "s").exists()


# -- structural problems of the file itself --------------------------------------------------------


def plan_error(cfg: IngestConfig, staging: Path) -> PipelineError:
    with pytest.raises(PipelineError) as info:
        get_stage("ingest").plan(cfg, PlanContext(str(staging), 10))
    return info.value


def parquet_bytes() -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({h: [row[i] for row in ROWS[:3]] for i, h in enumerate(HEADER)}), buf)
    return buf.getvalue()


def _flip(data: bytes, start: int, stop: int) -> bytes:
    return data[:start] + bytes(b ^ 0xFF for b in data[start:stop]) + data[stop:]


@functools.cache
def _big_gzip() -> bytes:
    """A gzipped CSV of 3 MB of varied text: cut short, it fails past the first CSV block."""
    rng = random.Random(0)
    words = ["effusion", "normal", "lungs", "clear", "heart", "size", "no", "acute", "process"]
    rows = [[f"r{i}", "p", "train", "", " ".join(rng.choices(words, k=40)), ""] for i in range(12000)]
    return gzip.compress(csv_bytes(rows=rows))


STRUCTURAL = {
    # name: (file name, its bytes, code, words of the message)
    "folder": ("reports", None, "E_DUMP_LAYOUT", "is a folder, not a file: set dataset.path="),
    "csv in a .parquet": (
        "reports.parquet",
        csv_bytes(),
        "E_DUMP_FORMAT",
        "If it is a CSV, give it a .csv name",
    ),
    "truncated parquet": (
        "reports.parquet",
        parquet_bytes()[:-100],
        "E_DUMP_UNREADABLE",
        "truncated or corrupt",
    ),
    "corrupt parquet footer": (
        "reports.parquet",
        _flip(parquet_bytes(), -60, -8),
        "E_DUMP_UNREADABLE",
        "not a readable Parquet file",
    ),
    "corrupt parquet page": (
        "reports.parquet",
        _flip(parquet_bytes(), 4, 40),
        "E_DUMP_UNREADABLE",
        "Parquet",
    ),
    "git lfs pointer": (
        "reports.parquet",
        b"version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 12345\n",
        "E_DUMP_FORMAT",
        "git lfs pull",
    ),
    "truncated gzip": ("reports.csv.gz", _big_gzip()[:-5000], "E_DUMP_UNREADABLE", "truncated or corrupt"),
    "tiny truncated gzip": (
        "reports.csv.gz",
        gzip.compress(csv_bytes())[:30],
        "E_DUMP_UNREADABLE",
        "gzip -t",
    ),
    "corrupt gzip": (
        "reports.csv.gz",
        _flip(_big_gzip(), 4000, 4100),
        "E_DUMP_UNREADABLE",
        "truncated or corrupt",
    ),
    "binary junk": ("reports.csv", random.Random(1).randbytes(5000), "E_DUMP_FORMAT", "binary bytes"),
    "xlsx named .csv": ("reports.csv", b"PK\x03\x04" + bytes(200), "E_DUMP_FORMAT", "save the sheet as CSV"),
    "gzip of parquet": (
        "reports.parquet",
        gzip.compress(parquet_bytes()),
        "E_DUMP_FORMAT",
        "gzip-compressed",
    ),
    "tab separated": ("reports.tsv", b"uid\tFindings\nr1\tClear.\n", "E_DUMP_COLUMNS", "looks tab-separated"),
    "ragged csv": (
        "reports.csv",
        b"uid,Findings\nr1,a,b,c\n",
        "E_DUMP_COLUMNS",
        "A table needs a header row",
    ),
}


@pytest.mark.parametrize("case", list(STRUCTURAL))
def test_structural_file_problems_are_coded(tmp_path: Path, case: str) -> None:
    name, data, code, words = STRUCTURAL[case]
    path = tmp_path / name
    if data is None:
        path.mkdir()
        (path / "reports.csv").write_bytes(csv_bytes())
    else:
        path.write_bytes(data)
    err = plan_error(config(path, text_columns=(), text_column="Findings"), tmp_path / "s")
    assert err.code == code and words in err.message, err
    if case == "folder":
        assert "It holds reports.csv" in err.message


def test_unreadable_file_is_coded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "reports.csv"
    path.write_bytes(csv_bytes())
    real_open = LocalFileSystem._open

    def denied(self, p, *args, **kwargs):  # chmod 000 does not stop root, who runs CI containers
        if str(p).endswith("reports.csv"):
            raise PermissionError(13, "Permission denied", str(p))
        return real_open(self, p, *args, **kwargs)

    monkeypatch.setattr(LocalFileSystem, "_open", denied)
    err = plan_error(config(path), tmp_path / "s")
    assert err.code == "E_DUMP_UNREADABLE" and "permission denied" in err.message and "chmod" in err.message


def test_parquet_named_csv_is_read_as_parquet(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "reports.csv").write_bytes(parquet_bytes())
    with caplog.at_level(logging.WARNING, logger="pipeline.ingest.table"):
        got = ingest(config(tmp_path / "reports.csv"), tmp_path / "s")
    assert got.column("reports", "report_id") == ["r1", "r2"] and got.rejected("reports") == {
        "r3": "empty_text"
    }
    assert "holds Parquet" in caplog.text


@pytest.mark.slow
def test_cli_stops_with_code_2_on_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.run import main

    (tmp_path / "dump").mkdir()
    args = ["stage=ingest", "dataset=table", f"dataset.path={tmp_path / 'dump'}", "dataset.id_column=uid"]
    args += [
        "dataset.text_column=Findings",
        f"out={tmp_path / 'run'}",
        "progress=false",
        "cluster.n_workers=1",
    ]
    assert main(args) == 2
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert "[E_DUMP_LAYOUT]" in err and "is a folder, not a file" in err and "Traceback" not in err


# -- encodings -------------------------------------------------------------------------------------

TEXT_ROWS = [
    [
        "r1",
        "p1",
        "train",
        "Toux.",
        "Épanchement pleural gauche.\nPas de pneumothorax.",
        "Anormal – à revoir.",
    ],
    ["r2", "p2", "test", "", "结论：双肺未见明显异常。", "正常"],
    ["r3", "p3", "train", "Cough, fever", 'He said "clear".', "Normal."],
]


def _utf8_reports(tmp_path: Path) -> pa.Table:
    (tmp_path / "utf8.csv").write_bytes(csv_bytes(rows=TEXT_ROWS))
    return ingest(config(tmp_path / "utf8.csv"), tmp_path / "s-utf8").reports


@pytest.mark.parametrize(
    "encoding, bom, gz",
    [
        ("utf-16-le", codecs.BOM_UTF16_LE, False),
        ("utf-16-be", codecs.BOM_UTF16_BE, False),
        ("utf-32-le", codecs.BOM_UTF32_LE, False),
        ("utf-32-be", b"", False),
        ("utf-16-le", b"", False),
        ("utf-16-be", b"", False),
        ("utf-16-le", codecs.BOM_UTF16_LE, True),
        ("utf-8", codecs.BOM_UTF8, False),
    ],
)
def test_utf16_and_utf32_tables_read_like_utf8(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    encoding: str,
    bom: bytes,
    gz: bool,
) -> None:
    expected = _utf8_reports(tmp_path)
    # Small chunks and blocks: code units and CSV rows split across reads still come out whole.
    monkeypatch.setattr(ingest_files, "TRANSCODE_CHUNK", 7, raising=False)
    monkeypatch.setattr(ingest_files, "CSV_BLOCK_SIZE", 256)
    data = bom + csv_bytes(rows=TEXT_ROWS).decode("utf-8").encode(encoding)
    path = tmp_path / ("reports.csv.gz" if gz else "reports.csv")
    path.write_bytes(gzip.compress(data) if gz else data)
    with caplog.at_level(logging.WARNING, logger="pipeline.ingest.table"):
        got = ingest(config(path), tmp_path / "s")
    assert got.reports.equals(expected)
    if encoding != "utf-8":
        how = "byte-order mark" if bom else "NUL bytes"
        assert f"{encoding.upper()} (by its {how})" in caplog.text and "re-encoded as UTF-8" in caplog.text


def test_rows_not_utf8_are_counted_and_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "reports.csv").write_bytes(csv_bytes())
    with caplog.at_level(logging.WARNING, logger="pipeline.ingest.table"):
        got = ingest(config(tmp_path / "reports.csv"), tmp_path / "s")
    assert got.rejected("reports")["r4"] == "bad_encoding"
    # Row 7 (r4) holds bytes that are neither UTF-8 nor Windows-1252; add a Windows-1252 one.
    assert "1 row(s) are not UTF-8" in caplog.text and "(row 7)" in caplog.text
    caplog.clear()
    rows = [*ROWS, ["r9", "p9", "train", "", "Caf@@1252@@ normal.", ""]]
    data = csv_bytes(rows=rows).replace(b"@@1252@@", "\xe9".encode("cp1252"))
    (tmp_path / "mixed.csv").write_bytes(data)
    with caplog.at_level(logging.WARNING, logger="pipeline.ingest.table"):
        got = ingest(config(tmp_path / "mixed.csv"), tmp_path / "s2")
    assert got.row("reports", "report_id", "r9")["text"] == "FINDINGS: Caf\xe9 normal."
    assert "2 row(s) are not UTF-8 and are read as Windows-1252 (row 7, row 9)" in caplog.text


# -- how rows are named --------------------------------------------------------------------------


def test_rows_are_named_as_the_user_sees_them(tmp_path: Path) -> None:
    """CSV: spreadsheet rows (the header is row 1); Parquet: the 0-based row index."""
    rows = [
        ["a", "p", "train", "", "Clear.", ""],
        ["", "p", "train", "", "No id.", ""],
        ["b", "p", "train", "", "", ""],
        ["a", "p", "train", "", "Again.", ""],
    ]
    (tmp_path / "r.csv").write_bytes(csv_bytes(rows=rows))
    table = pa.table({h: [row[i] or None for row in rows] for i, h in enumerate(HEADER)})
    pq.write_table(table, tmp_path / "r.parquet")
    one = {"text_columns": (), "text_column": "Findings"}
    for name, first, second, third, fourth in (
        ("r.csv", "row 2", "row 3", "row 4", "row 5"),
        ("r.parquet", "row index 0", "row index 1", "row index 2", "row index 3"),
    ):
        got = ingest(config(tmp_path / name, **one), tmp_path / f"s-{name}")
        assert got.row("reports", "report_id", "a")["path"] == first
        details = dict(zip(got.rejects["row_id"].to_pylist(), got.rejects["detail"].to_pylist(), strict=True))
        assert details == {
            second: f"{second}: uid is empty",
            "b": f"{third}: empty",
            "a": f"{fourth}: id 'a' is also at {first} (the first is kept)",
        }, name
