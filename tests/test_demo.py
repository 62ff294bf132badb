"""The demo dump generator: layout, truth, DICOMs, injected problems, determinism, CLI."""

from __future__ import annotations

import collections
import copy
import csv
import gzip
import hashlib
import io
import random
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.errors import PipelineError
from pipeline.demo import (
    FILES,
    INJECTED_KINDS,
    LABEL_COLUMNS,
    METADATA_COLUMNS,
    OBSERVATIONS,
    RECORD_COLUMNS,
    SPLIT_COLUMNS,
    STUDY_COLUMNS,
    TRUTH_DIR,
    generate_demo_dump,
)
from pipeline.demo import dump as dump_module
from pipeline.demo.__main__ import main as cli_main
from pipeline.demo.phrases import compile_phrase_bank, load_phrase_bank
from pipeline.demo.text import ReportWriter, StudyContext, observation_labels, wrap

pydicom = pytest.importorskip("pydicom")

# FORMATS.md, word for word.
FORMATS_OBSERVATIONS = [
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
]
FORMATS_METADATA = [
    "dicom_id",
    "subject_id",
    "study_id",
    "PerformedProcedureStepDescription",
    "ViewPosition",
    "Rows",
    "Columns",
    "StudyDate",
    "StudyTime",
    "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
]
DICOM_ID = re.compile(r"^[0-9a-f]{8}(-[0-9a-f]{8}){4}$")
REPORT_PATH = re.compile(r"^files/p(1\d)/p(\1\d{6})/s(5\d{7})\.txt$")
N_REPORTS = 150
SEED = 3


def _read(root: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(root / FILES[name], dtype=str, keep_default_na=False)


def _truth(root: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(root / TRUTH_DIR / name, dtype=str, keep_default_na=False)


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "dump"
    summary = generate_demo_dump(root, n_reports=N_REPORTS, seed=SEED, inject_bad_rows=True)
    assert summary.reports == N_REPORTS + 1  # one injected duplicate (one of each kind at this size)
    return root


@pytest.fixture(scope="module")
def injected(demo: Path) -> dict[str, list[dict[str, str]]]:
    by_kind: dict[str, list[dict[str, str]]] = collections.defaultdict(list)
    for row in _truth(demo, "injected.csv").to_dict("records"):
        by_kind[row["kind"]].append(row)
    return by_kind


# -- layout -------------------------------------------------------------------------------------


def test_tables_have_the_columns_of_formats_md(demo: Path) -> None:
    assert list(OBSERVATIONS) == FORMATS_OBSERVATIONS == sorted(FORMATS_OBSERVATIONS)
    assert list(METADATA_COLUMNS) == FORMATS_METADATA
    expected = {
        "metadata": FORMATS_METADATA,
        "split": ["dicom_id", "study_id", "subject_id", "split"],
        "chexpert": ["subject_id", "study_id", *FORMATS_OBSERVATIONS],
        "negbio": ["subject_id", "study_id", *FORMATS_OBSERVATIONS],
        "records": ["subject_id", "study_id", "dicom_id", "path"],
        "studies": ["subject_id", "study_id", "path"],
    }
    assert tuple(tuple(expected[k]) for k in ("split", "records", "studies")) == (
        SPLIT_COLUMNS,
        RECORD_COLUMNS,
        STUDY_COLUMNS,
    )
    assert list(LABEL_COLUMNS) == expected["chexpert"]
    for name, columns in expected.items():
        assert FILES[name].endswith(".csv.gz")
        assert list(pd.read_csv(demo / FILES[name], nrows=0).columns) == columns, name


def test_ids_paths_and_splits(demo: Path) -> None:
    meta, split, records, studies = (_read(demo, n) for n in ("metadata", "split", "records", "studies"))
    assert len(meta) == len(split) == len(records)
    assert set(meta.dicom_id) == set(split.dicom_id) == set(records.dicom_id)
    assert meta.dicom_id.str.fullmatch(DICOM_ID.pattern).all() and meta.dicom_id.is_unique
    assert meta.subject_id.str.fullmatch(r"1\d{7}").all() and meta.study_id.str.fullmatch(r"5\d{7}").all()
    assert set(meta.ViewPosition) <= {"AP", "PA", "LATERAL", "LL", ""} and "" in set(meta.ViewPosition)
    assert (meta.Rows.astype(int) > 0).all() and meta.StudyDate.str.fullmatch(r"\d{8}").all()
    for row in studies.itertuples():
        m = REPORT_PATH.match(row.path)
        assert m and (m.group(2), m.group(3)) == (row.subject_id, row.study_id)
    assert (
        records.path
        == "files/p"
        + records.subject_id.str[:2]
        + "/p"
        + records.subject_id
        + "/s"
        + records.study_id
        + "/"
        + records.dicom_id
        + ".dcm"
    ).all()
    assert set(split.split) == {"train", "validate", "test"}
    assert (split.groupby("subject_id").split.nunique() == 1).all()  # split is per subject
    assert studies.groupby("subject_id").size().max() > 1  # several studies per subject
    assert set(meta.study_id) <= set(studies.study_id)
    ids = [int(s) for s in studies.drop_duplicates("study_id").study_id]
    assert ids != sorted(ids) or len(ids) < 3  # random, not chronological


def test_report_ids_are_unique_except_injected_duplicates(demo: Path, injected: dict) -> None:
    files = [p.stem for p in (demo / "files").rglob("s*.txt")]
    counts = collections.Counter(files)
    repeated = {s[1:] for s, n in counts.items() if n > 1}
    assert repeated == {row["study_id"] for row in injected["duplicate_study"]}
    for study_id in repeated:
        subjects = {p.parent.name for p in (demo / "files").rglob(f"s{study_id}.txt")}
        assert len(subjects) == 2


# -- report text --------------------------------------------------------------------------------


def test_report_text_looks_like_mimic(demo: Path, injected: dict) -> None:
    bad = {row["study_id"] for rows in injected.values() for row in rows if row["kind"] != "duplicate_study"}
    texts = [p.read_text() for p in sorted((demo / "files").rglob("*.txt")) if p.stem[1:] not in bad]
    assert len(texts) > 100
    for text in texts:
        assert text.startswith("\n") and "FINAL REPORT" in text
        assert max(len(line) for line in text.splitlines()) <= 80
        assert re.search(r"\n ([A-Z ()/,-]+):\s", text) or "\n \n" in text
    joined = "\n".join(texts)
    assert "___" in joined and "IMPRESSION:" in joined and "FINDINGS:" in joined


def test_phrasing_variety_and_shares() -> None:
    """2,000 reports straight from the composer: shares of report kinds, hedges, negations, lists."""
    bank = load_phrase_bank()
    writer = ReportWriter(bank, random.Random(11))
    reports = []
    subject = writer.new_subject()
    for i in range(2000):
        if i % 3 == 0:
            subject = writer.new_subject()
        portable = i % 2 == 0
        procedure = "CHEST (PORTABLE AP)" if portable else "CHEST (PA AND LAT)"
        reports.append(writer.compose(subject, StudyContext(procedure, portable, i % 3 != 0)))
    kinds = collections.Counter(r.kind for r in reports)
    assert abs(kinds["impression"] / 2000 - 0.82) < 0.04
    assert abs(kinds["findings"] / 2000 - 0.125) < 0.03
    assert abs(kinds["neither"] / 2000 - 0.055) < 0.02
    text = "\n".join(r.text for r in reports)
    for phrase in (
        "cannot be excluded",
        "may represent",
        "Possible",
        "versus",
        "suggestive of",
        "Compared to",
        "unchanged",
        "New ",
        "resolved",
        "The lungs are clear",
        "Heart size is normal",
        "Cardiomediastinal silhouette is within normal limits",
        "above the carina",
        "Right IJ",
        "NG tube",
        "pacemaker",
        "sternotomy wires",
        "\n 1.",
        "\n 2.",
        "WET READ:",
        "ADDENDUM",
        "IMPRESSON",
        "Evaluate for pneumonia",
        " cm ",
        "No change in",
        "No focal consolidation",
    ):
        assert phrase in text, phrase
    assert re.search(r"\d\.\d cm", text)
    sentences = {m.sentence for r in reports for m in r.mentions}
    assert len(sentences) > 1500
    seen = collections.defaultdict(set)
    for r in reports:
        for m in r.mentions:
            if m.observation:
                seen[m.observation].add(m.status)
    for obs in OBSERVATIONS:
        if obs != "No Finding":
            assert "present" in seen[obs] and "absent" in seen[obs], obs
    fine = {m.finding for r in reports for m in r.mentions}
    for finding in (
        "nodule",
        "mass",
        "granuloma",
        "emphysema",
        "scarring",
        "hiatal_hernia",
        "rib_fracture",
        "clavicle_fracture",
        "pleural_thickening",
        "vascular_congestion",
    ):
        assert finding in fine, finding


# -- truth --------------------------------------------------------------------------------------

_HEADER = re.compile(r"\n ([A-Z ()/,-]+):\s")
_CANON = {
    "conclusion": "impression",
    "findings and impression": "impression",
    "findings/impression": "impression",
    "impresson": "impression",
    "impession": "impression",
    "impresion": "impression",
    "finding": "findings",
    "findngs": "findings",
    "finidngs": "findings",
    "comparision": "comparison",
}


def _canonical(header: str) -> str:
    name = header.lower().strip()
    if name in _CANON:
        return _CANON[name]
    for main in ("impression", "findings", "history", "comparison", "addendum"):
        if main in name:
            return main
    return "findings" if re.search(r"chest|portable|pa and lat", name) else name


def _labeled_section(text: str) -> tuple[str | None, str]:
    """The section the official labels were made from, chosen the way MIT-LCP's parser chooses it."""
    names, bodies = [], []
    match = _HEADER.search(text)
    if match is None:
        names, bodies = ["full report"], [text]
    else:
        names, bodies = ["preamble"], [text[: match.start(1)]]
        while match:
            start, header = match.end(), match.group(1)
            newline = text.find("\n", start)
            match = _HEADER.search(text, newline if newline >= 0 else start)
            names.append(_canonical(header))
            bodies.append(text[start : match.start() if match else len(text)])
    kept = [
        (n, b) for n, b in zip(names, bodies, strict=True) if n not in ("impression", "findings") or b.strip()
    ]
    names, bodies = [n for n, _ in kept], [b for _, b in kept]
    if "impression" not in names and "findings" not in names and "\n \n" in bodies[-1]:
        first, *rest = bodies[-1].split("\n \n")
        bodies[-1] = first
        names.append("last_paragraph")
        bodies.append("\n \n".join(rest))
    for wanted in ("impression", "findings", "last_paragraph", "comparison"):
        if wanted in names:
            i = len(names) - 1 - names[::-1].index(wanted)
            return wanted, bodies[i]
    return None, ""


def test_official_labels_follow_the_truth(demo: Path) -> None:
    chexpert = _read(demo, "chexpert").set_index(["subject_id", "study_id"])
    negbio = _read(demo, "negbio").set_index(["subject_id", "study_id"])
    truth = _truth(demo, "labels.csv").set_index(["subject_id", "study_id"])
    assert chexpert.index.equals(truth.index) and negbio.index.equals(truth.index)
    assert chexpert.equals(truth[list(OBSERVATIONS)])
    values = set(chexpert.to_numpy().ravel())
    assert values == {"1.0", "0.0", "-1.0", ""}
    others = [o for o in OBSERVATIONS if o not in ("No Finding", "Support Devices")]
    positive = chexpert[others].isin(["1.0", "-1.0"]).any(axis=1)
    assert ((chexpert["No Finding"] == "1.0") == ~positive).all()
    assert set(chexpert["No Finding"]) <= {"1.0", ""}
    differs = (chexpert != negbio).any(axis=1)
    listed = _truth(demo, "negbio_disagreements.csv").set_index(["subject_id", "study_id"]).index
    assert set(chexpert.index[differs]) == set(listed) and 0 < differs.mean() < 0.12


def test_labels_aggregate_the_labeled_mentions(demo: Path) -> None:
    mentions = pd.read_csv(demo / TRUTH_DIR / "mentions.csv.gz", dtype=str, keep_default_na=False)
    assert set(mentions.status) == {"present", "absent", "uncertain"}
    truth = _truth(demo, "labels.csv")
    labeled = mentions[mentions.labeled == "1"]
    value = {"present": 1.0, "uncertain": -1.0, "absent": 0.0}
    rank = {1.0: 3, -1.0: 2, 0.0: 1}
    by_study: dict[tuple[str, str], dict[str, float]] = collections.defaultdict(dict)
    for row in labeled.itertuples():
        if row.observation:
            cur = by_study[(row.subject_id, row.study_id)].get(row.observation)
            new = value[row.status]
            if cur is None or rank[new] > rank[cur]:
                by_study[(row.subject_id, row.study_id)][row.observation] = new
    for row in truth.to_dict("records"):
        got = by_study.get((row["subject_id"], row["study_id"]), {})
        for obs in OBSERVATIONS:
            if obs != "No Finding":
                assert row[obs] == ("" if obs not in got else str(got[obs])), (row["study_id"], obs)


def test_truth_section_is_the_one_the_official_parser_reads(demo: Path) -> None:
    truth = _truth(demo, "labels.csv")
    mentions = pd.read_csv(demo / TRUTH_DIR / "mentions.csv.gz", dtype=str, keep_default_na=False)
    labeled = mentions[mentions.labeled == "1"].groupby(["subject_id", "study_id"]).sentence.apply(list)
    assert set(truth.label_section) == {"impression", "findings", "last_paragraph"}
    for row in truth.itertuples():
        path = demo / f"files/p{row.subject_id[:2]}/p{row.subject_id}/s{row.study_id}.txt"
        name, body = _labeled_section(path.read_bytes().decode("utf-8", "replace"))
        assert name == row.label_section, row.study_id
        flat = " ".join(body.split())
        for sentence in labeled.get((row.subject_id, row.study_id), []):
            assert " ".join(sentence.split()) in flat, (row.study_id, sentence)


# -- DICOM --------------------------------------------------------------------------------------


def test_dicoms_read_back_and_match_metadata(demo: Path) -> None:
    meta = _read(demo, "metadata").set_index("dicom_id")
    images = pd.read_csv(demo / TRUTH_DIR / "images.csv.gz", dtype=str, keep_default_na=False)
    valid = images[images.has_dcm == "1"]
    assert len(valid) > 100
    seen = collections.Counter()
    for row in valid.itertuples():
        path = demo / f"files/p{row.subject_id[:2]}/p{row.subject_id}/s{row.study_id}/{row.dicom_id}.dcm"
        ds = pydicom.dcmread(path)
        m = meta.loc[row.dicom_id]
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.get("ViewPosition", "") == m.ViewPosition
        assert (ds.Rows, ds.Columns) == (int(m.Rows), int(m.Columns))
        assert ds.PatientID == row.subject_id and not ds.PatientName
        assert ds.StudyDate == m.StudyDate and ds.Modality in ("DX", "CR")
        assert (
            ds.SOPClassUID
            == {"DX": "1.2.840.10008.5.1.4.1.1.1.1", "CR": "1.2.840.10008.5.1.4.1.1.1"}[ds.Modality]
        )
        assert ds.BitsStored in (8, 12) and ds.PhotometricInterpretation in ("MONOCHROME1", "MONOCHROME2")
        pixels = ds.pixel_array
        assert pixels.shape == (ds.Rows, ds.Columns) and int(pixels.max()) < (1 << ds.BitsStored)
        assert float(pixels.std()) > 0
        seen[ds.PhotometricInterpretation] += 1
        seen[ds.BitsStored] += 1
        seen["no view" if "ViewPosition" not in ds else "view"] += 1
    assert seen["MONOCHROME1"] and seen["MONOCHROME2"] > seen["MONOCHROME1"]
    assert seen[8] and seen[12] and seen["no view"]


def test_dicom_fraction_zero_lists_images_without_files(tmp_path: Path) -> None:
    summary = generate_demo_dump(tmp_path / "d", n_reports=30, seed=1, dicom_fraction=0.0)
    assert summary.dicoms == 0 and not list((tmp_path / "d").rglob("*.dcm"))
    assert len(_read(tmp_path / "d", "metadata")) == summary.images >= 30


# -- injected problems --------------------------------------------------------------------------


def test_injected_reports_are_there_as_described(demo: Path, injected: dict) -> None:
    assert set(injected) == set(INJECTED_KINDS)
    assert (
        _truth(demo, "injected.csv").reason_code == _truth(demo, "injected.csv").kind.map(INJECTED_KINDS)
    ).all()
    studies = set(_read(demo, "studies").study_id)
    meta_studies = set(_read(demo, "metadata").study_id)
    labeled = set(_read(demo, "chexpert").study_id)

    def data(kind: str) -> bytes:
        return (demo / injected[kind][0]["path"]).read_bytes()

    assert data("empty_report") == b""
    assert data("whitespace_report") and not data("whitespace_report").strip()
    missing = injected["missing_report"][0]
    assert not (demo / missing["path"]).exists() and missing["study_id"] in studies & meta_studies
    raw = data("undecodable_report")
    for encoding in ("utf-8", "cp1252"):
        with pytest.raises(UnicodeDecodeError):
            raw.decode(encoding)
    garbage = data("garbage_report")
    assert b"\x00" in garbage and not re.search(rb"[A-Za-z]{3}", garbage)
    assert len(data("long_report").decode()) > 200_000
    for kind in ("empty_report", "whitespace_report", "missing_report", "garbage_report"):
        assert injected[kind][0]["study_id"] not in labeled, kind
    assert injected["long_report"][0]["study_id"] in labeled


def test_injected_dicoms_are_broken(demo: Path, injected: dict) -> None:
    with pytest.raises(pydicom.errors.InvalidDicomError):
        pydicom.dcmread(demo / injected["random_bytes_dicom"][0]["path"])
    # pydicom reads a file cut inside its meta header without complaint: it is the missing
    # transfer syntax and image that give it away.
    head = pydicom.dcmread(demo / injected["truncated_header_dicom"][0]["path"])
    assert "TransferSyntaxUID" not in head.file_meta and "PixelData" not in head
    cut = pydicom.dcmread(demo / injected["truncated_pixels_dicom"][0]["path"])
    assert cut.Rows > 0
    with pytest.raises(ValueError):
        cut.pixel_array  # noqa: B018


# -- determinism, atomicity, errors -------------------------------------------------------------


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    kwargs = {"n_reports": 60, "inject_bad_rows": True, "dicom_fraction": 0.3}
    generate_demo_dump(tmp_path / "a", seed=5, **kwargs)
    generate_demo_dump(tmp_path / "b", seed=5, **kwargs)
    generate_demo_dump(tmp_path / "c", seed=6, **kwargs)
    a, b, c = (_digest(tmp_path / n) for n in "abc")
    assert a == b
    assert set(a) != set(c) and a != c
    assert a[FILES["chexpert"]] != c[FILES["chexpert"]]
    # clean reports do not depend on the injection switch
    generate_demo_dump(tmp_path / "d", seed=5, **{**kwargs, "inject_bad_rows": False})
    d = _digest(tmp_path / "d")
    bad = {
        r["path"]
        for r in csv.DictReader(io.StringIO((tmp_path / "a" / TRUTH_DIR / "injected.csv").read_text()))
    }
    same = [p for p in d if p.endswith(".txt") and p not in bad]
    assert same and all(a.get(p) == d[p] for p in same)


def test_gzip_members_carry_no_name_or_time(demo: Path) -> None:
    header = (demo / FILES["metadata"]).read_bytes()[:10]
    assert header[:3] == b"\x1f\x8b\x08" and header[3] == 0 and header[4:8] == b"\0\0\0\0"
    with gzip.open(demo / FILES["metadata"], "rt") as fh:
        assert fh.readline().startswith("dicom_id,")


def test_interrupted_generation_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(dump_module, "_write_tables", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        generate_demo_dump(tmp_path / "dump", n_reports=25, dicom_fraction=0.0)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_and_existing_root(tmp_path: Path) -> None:
    for kwargs in (
        {"n_reports": 0},
        {"n_reports": 10, "dicom_fraction": 1.5},
        {"n_reports": 10, "images_per_study": 0.5},
        {"n_reports": 10, "inject_bad_rows": True},
        {"n_reports": True},
    ):
        with pytest.raises(PipelineError) as info:
            generate_demo_dump(tmp_path / "x", **kwargs)  # type: ignore[arg-type]
        assert info.value.code == "demo_bad_argument"
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(PipelineError) as info:
        generate_demo_dump(tmp_path / "full", n_reports=5)
    assert info.value.code == "demo_root_exists" and (tmp_path / "full" / "keep.txt").read_text() == "mine"
    (tmp_path / "empty").mkdir()
    assert generate_demo_dump(tmp_path / "empty", n_reports=5, dicom_fraction=0).reports == 5


# -- CLI and phrase bank ------------------------------------------------------------------------


def test_cli_writes_and_summarises(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    assert (
        cli_main([f"out={out}", "n_reports=25", "seed=2", "inject_bad_rows=true", "dicom_fraction=0.2"]) == 0
    )
    assert "reports" in capsys.readouterr().out and (out / FILES["studies"]).exists()
    assert cli_main([f"out={out}", "n_reports=25"]) == 2  # not empty any more
    assert cli_main([f"out={tmp_path / 'y'}", "n_reports=ten"]) == 2
    assert cli_main([f"out={tmp_path / 'y'}"]) == 2
    assert "missing n_reports" in capsys.readouterr().err


def test_cli_unknown_key_says_did_you_mean() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.demo", "out=/nonexistent/x", "n_report=5"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Did you mean 'n_reports'?" in proc.stderr


def test_phrase_bank_rejects_unknown_placeholders() -> None:
    raw = yaml.safe_load(
        resources.files("pipeline.demo").joinpath("phrases.yaml").read_text(encoding="utf-8")
    )
    broken = copy.deepcopy(raw)
    broken["findings"]["pneumothorax"]["present"].append("There is a {sise} pneumothorax.")
    with pytest.raises(PipelineError, match="sise") as info:
        compile_phrase_bank(broken)
    assert info.value.code == "demo_phrases_invalid" and "size" in str(info.value)
    broken = copy.deepcopy(raw)
    broken["findings"]["edema"]["absent"].append({"t": "No edema.", "also": {"pneumothorx": "absent"}})
    with pytest.raises(PipelineError, match="pneumothorx"):
        compile_phrase_bank(broken)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet="abc ", min_size=1, max_size=12), min_size=1, max_size=30))
def test_wrap_keeps_words_and_width(words: list[str]) -> None:
    text = " ".join(words).strip()
    lines = wrap(text, 20)
    assert " ".join(" ".join(lines).split()) == " ".join(text.split())
    assert all(len(line) <= 20 or " " not in line for line in lines)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(sorted(load_phrase_bank().findings)),
            st.sampled_from(["present", "absent", "uncertain"]),
        ),
        max_size=8,
    )
)
def test_no_finding_rule(facts: list[tuple[str, str]]) -> None:
    bank = load_phrase_bank()
    labels = dict(zip(OBSERVATIONS, observation_labels(facts, bank), strict=True))
    positive = any(v in (1.0, -1.0) for k, v in labels.items() if k not in ("No Finding", "Support Devices"))
    assert labels["No Finding"] == (None if positive else 1.0)
