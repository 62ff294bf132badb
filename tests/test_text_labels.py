"""CheXpert aggregation: exact matches with the CheXpert labeler and NegBio, properties, provenance."""

from __future__ import annotations

import csv
import re
import xml.etree.ElementTree as ET

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_text_extract import make_tables

from pipeline.core.schemas import load_schema
from pipeline.text.extract import ExtractConfig, extract
from pipeline.text.labels import aggregate_status, findings_table, label_table, typed_table
from pipeline.text.lexicon import OBSERVATIONS

FINDING_OBS = [o for o in OBSERVATIONS if o != "No Finding"]


def mention_table(rows: list[dict]) -> pa.Table:
    """A mentions table from partial rows (defaults fill the rest)."""
    cols: dict[str, list] = {c.name: [] for c in load_schema("mentions").columns}
    for i, row in enumerate(rows):
        full = {
            "report_id": "r",
            "section": "findings",
            "sentence_idx": i,
            "start": 0,
            "end": 1,
            "text": "x",
            "finding": "f",
            "observation": None,
            "status": "present",
            "cue": None,
            "rule": "default.present",
            "anatomy": None,
            "laterality": None,
            "severity": None,
            "size": None,
            "temporal": None,
            "cue_start": None,
            "cue_end": None,
            "modifiers": [],
            "in_labeled_section": True,
            **row,
        }
        for c in cols:
            cols[c].append(full[c])
    return typed_table(cols, "mentions")


def labels_of(rows: list[dict], **kwargs) -> dict:
    return label_table(mention_table(rows), ["r"], **kwargs).to_pylist()[0]


# --- exact matches -----------------------------------------------------------------------------------


@pytest.mark.shared_data
def test_chexpert_labeler_sample_matches_exactly(shared_data):
    """The CheXpert labeler's own 4 labeled reports, headerless impressions."""
    path = shared_data / "rules" / "chexpert-labeler" / "labeled_reports.csv"
    rows = list(csv.DictReader(path.open(newline="", encoding="utf-8")))
    assert len(rows) == 4
    tables = make_tables({str(i): [("impression", row["Reports"])] for i, row in enumerate(rows)})
    labels = extract(tables, config=ExtractConfig())["labels"].to_pylist()
    for row, ours in zip(rows, labels, strict=True):
        expected = {obs: float(row[obs]) if row[obs] else None for obs in OBSERVATIONS}
        assert {obs: ours[obs] for obs in OBSERVATIONS} == expected, row["Reports"]


def _negbio_expected(xml_path) -> dict[str, dict[str, float]]:
    values = {"Positive": 1.0, "Negative": 0.0, "Uncertain": -1.0}
    out: dict[str, dict[str, float]] = {}
    for doc in ET.parse(xml_path).getroot().iter("document"):
        rid = doc.findtext("id")
        out[rid] = {}
        for infon in doc.findall("infon"):
            key = infon.get("key", "")
            if key.startswith("CheXpert/"):
                obs = key.removeprefix("CheXpert/").replace("Airspace Opacity", "Lung Opacity")
                out[rid][obs] = values[infon.text]
    return out


@pytest.mark.shared_data
def test_negbio_nih_reports_match_its_chexpert_labels(shared_data):
    """NegBio's two NIH reports: its CheXpert labels (No Finding is not in its output), but for
    one deliberate difference: NegBio reads "heart and mediastinum are stable" (00000086) as
    Enlarged Cardiomediastinum; "stable" says nothing about size, so we leave it unmentioned."""
    root = shared_data / "fixtures" / "negbio-nih-reports"
    expected = _negbio_expected(root / "expected" / "1.neg_chexpert.xml")
    reports = {}
    for rid in expected:
        text = (root / f"{rid}.txt").read_text(encoding="utf-8")
        parts = []
        # lower-case headers at line starts ("findings:", "impression:") split the sections
        for m in re.finditer(
            r"(?m)^\s*(findings|impression):(.*?)(?=^\s*(?:findings|impression):|\Z)", text, re.S
        ):
            parts.append((m.group(1), m.group(2).strip()))
        reports[rid] = parts
    assert all(reports.values())
    assert expected["00000086"].pop("Enlarged Cardiomediastinum") == 1.0
    labels = extract(make_tables(reports), config=ExtractConfig())["labels"].to_pylist()
    for row in labels:
        got = {obs: row[obs] for obs in FINDING_OBS if row[obs] is not None}
        assert got == expected[row["report_id"]], row["report_id"]


# --- aggregation rules -------------------------------------------------------------------------------


def test_precedence_present_then_uncertain_then_absent():
    assert aggregate_status([]) is None
    assert aggregate_status(["absent", "uncertain"]) == "uncertain"
    assert aggregate_status(["absent", "present", "uncertain"]) == "present"
    got = labels_of(
        [
            {"finding": "pleural_effusion", "observation": "Pleural Effusion", "status": "absent"},
            {
                "finding": "pleural_effusion",
                "observation": "Pleural Effusion",
                "status": "uncertain",
                "start": 5,
            },
            {"finding": "pneumothorax", "observation": "Pneumothorax", "status": "absent"},
        ]
    )
    assert (got["Pleural Effusion"], got["Pneumothorax"], got["Edema"]) == (-1.0, 0.0, None)


def test_no_finding():
    absent = {"finding": "pneumothorax", "observation": "Pneumothorax", "status": "absent"}
    device = {"finding": "picc", "observation": "Support Devices", "status": "present", "start": 3}
    assert labels_of([absent, device])["No Finding"] == 1.0  # support devices do not block it
    assert labels_of([{**absent, "status": "uncertain"}])["No Finding"] is None
    # a finding without a CheXpert observation blocks it too (the labeler's no_finding phrases)
    scoliosis = {"finding": "scoliosis", "observation": None, "status": "present", "start": 7}
    assert labels_of([absent, scoliosis])["No Finding"] is None
    assert labels_of([absent, scoliosis], non_blocking=["scoliosis"])["No Finding"] == 1.0
    # nothing counted: all blank, unless the labeler's behaviour is asked for
    uncounted = {**absent, "in_labeled_section": False}
    assert all(labels_of([uncounted])[obs] is None for obs in OBSERVATIONS)
    assert labels_of([uncounted], no_finding_without_mentions=True)["No Finding"] == 1.0


_MENTION = st.fixed_dictionaries(
    {
        "finding": st.sampled_from(["pleural_effusion", "pneumothorax", "scoliosis", "picc", "opacity"]),
        "status": st.sampled_from(["present", "absent", "uncertain"]),
        "in_labeled_section": st.booleans(),
        "start": st.integers(0, 500),
    }
).map(
    lambda m: {
        **m,
        "observation": {
            "pleural_effusion": "Pleural Effusion",
            "pneumothorax": "Pneumothorax",
            "scoliosis": None,
            "picc": "Support Devices",
            "opacity": "Lung Opacity",
        }[m["finding"]],
    }
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_MENTION, max_size=8), st.randoms(use_true_random=False))
def test_labels_ignore_mention_order(rows, rnd):
    shuffled = list(rows)
    rnd.shuffle(shuffled)
    for i, row in enumerate(rows):
        row["sentence_idx"] = i
    a = labels_of(rows)
    b = labels_of(shuffled)
    assert {obs: a[obs] for obs in OBSERVATIONS} == {obs: b[obs] for obs in OBSERVATIONS}
    key = lambda p: (p["observation"], p["sentence_idx"], p["start"], p["finding"])  # noqa: E731
    assert sorted(a["provenance"], key=key) == sorted(b["provenance"], key=key)


@settings(max_examples=60, deadline=None)
@given(st.lists(_MENTION, max_size=8))
def test_a_counted_present_mention_always_wins(rows):
    for i, row in enumerate(rows):
        row["sentence_idx"] = i
    got = labels_of(rows)
    for obs in FINDING_OBS:
        counted = [r["status"] for r in rows if r["observation"] == obs and r["in_labeled_section"]]
        if "present" in counted:
            assert got[obs] == 1.0
        elif not counted:
            assert got[obs] is None


# --- provenance and findings ---------------------------------------------------------------------------


def test_provenance_points_at_real_mentions():
    tables = make_tables(
        {
            "a": [
                ("findings", "Left pleural effusion. Possible right lower lobe pneumonia. No pneumothorax."),
                ("impression", "Heart size is normal."),
            ],
            "b": [("impression", "No acute cardiopulmonary abnormality.")],
        }
    )
    out = extract(tables, config=ExtractConfig())
    mentions = {
        (m["report_id"], m["sentence_idx"], m["start"], m["finding"]): m for m in out["mentions"].to_pylist()
    }
    seen_obs = set()
    for row in out["labels"].to_pylist():
        for p in row["provenance"]:
            m = mentions[(row["report_id"], p["sentence_idx"], p["start"], p["finding"])]
            assert (m["status"], m["cue"], m["rule"]) == (p["status"], p["cue"], p["rule"])
            assert row[p["observation"]] == p["value"]
            seen_obs.add((row["report_id"], p["observation"]))
        non_blank = {obs for obs in OBSERVATIONS if row[obs] is not None}
        assert non_blank == {obs for rid, obs in seen_obs if rid == row["report_id"]}
    labels = {r["report_id"]: r for r in out["labels"].to_pylist()}
    assert labels["a"]["Pneumonia"] == -1.0
    (p,) = [p for p in labels["a"]["provenance"] if p["observation"] == "Pneumonia"]
    assert (p["cue"], p["rule"]) == ("Possible", "unc.preceding.possible")
    assert labels["b"]["No Finding"] == 1.0


def test_findings_table_uses_the_same_precedence():
    table = mention_table(
        [
            {"finding": "scoliosis", "status": "absent"},
            {"finding": "scoliosis", "status": "present", "start": 9},
            {"finding": "opacity", "status": "absent", "in_labeled_section": False},
        ]
    )
    rows = findings_table(table, {"scoliosis": None, "opacity": "Lung Opacity"}).to_pylist()
    assert rows == [
        {"report_id": "r", "finding": "scoliosis", "observation": None, "status": "present", "n_mentions": 2}
    ]
