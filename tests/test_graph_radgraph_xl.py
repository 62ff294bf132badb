"""RadGraph-XL label sets in the graph stage: the ``radgraph`` package's own expected outputs (v1
and XL labels, RadGraph's re-tokenised text) read through ``../shared/data``, hand-written files
mixing both label sets, exports in either set, and the export command on the demo run.

Fast and cluster-free: the graph stage's pure function is called on hand-built tables.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from pipeline.core.errors import PipelineError
from pipeline.graph.build import LABEL_ID, LABELS
from pipeline.graph.radgraph import (
    XL_LABEL,
    XL_STATUSES,
    export_corpus,
    export_report,
    import_report,
    normalise_label,
    read_radgraph,
)
from pipeline.graph.stage import GraphConfig, graph

PACKAGE = Path("fixtures") / "radgraph-package"
KEEP = ("entity_id", "label", "label_id", "start", "end", "text")
TAG = {"OBS-DP": "definitely present", "OBS-U": "uncertain", "OBS-DA": "definitely absent"}


def package_file(shared_data: Path, name: str) -> Any:
    return json.loads((shared_data / PACKAGE / name).read_text())


def triples(relations: Sequence[Mapping[str, Any]]) -> set[tuple[str, str, str]]:
    return {(r["source_id"], r["relation"], r["target_id"]) for r in relations}


def check_matches_document(doc: Mapping[str, Any], entities: list[dict], relations: list[dict]) -> None:
    """Our rows say what the RadGraph document says: ids, (normalised) labels, words, relations."""
    fixture = doc["entities"]
    assert [e["entity_id"] for e in entities] == list(fixture)
    for e in entities:
        f = fixture[e["entity_id"]]
        assert e["label"] == normalise_label(f["label"]) and e["label_id"] == LABEL_ID[e["label"]]
        assert " ".join(e["text"].split()) == f["tokens"]
        assert e["source"] == "radgraph"
    assert triples(relations) == {
        (eid, rel, str(t)) for eid, f in fixture.items() for rel, t in f["relations"]
    }


def processed(entities: list[dict], relations: list[dict]) -> list[dict[str, Any]]:
    """RadGraph's "processed annotations" of our rows, rebuilt the way the package builds them: a
    main observation is an observation that modifies nothing, written with the observations that
    modify it; each located_at anatomy with the anatomy that modifies it (a target modifying
    another target folds into it); suggestive_of as "<observation> suggestive of <target>"."""
    by_id = {e["entity_id"]: e for e in entities}
    out: dict[str, list[tuple[str, str]]] = {}
    for r in relations:
        out.setdefault(r["source_id"], []).append((r["relation"], r["target_id"]))

    def words(e: Mapping[str, Any]) -> str:
        return " ".join(e["text"].lower().split())

    def phrase(eid: str) -> str:
        modifiers = [s for s, rels in out.items() if ("modify", eid) in rels]
        return " ".join(words(by_id[i]) for i in sorted([eid, *modifiers], key=lambda i: by_id[i]["start"]))

    rows = []
    for e in sorted(entities, key=lambda e: e["start"]):
        eid, rels = e["entity_id"], out.get(e["entity_id"], [])
        if not e["label"].startswith("OBS") or any(rel == "modify" for rel, _ in rels):
            continue
        located = [t for rel, t in rels if rel == "located_at"]
        located = [t for t in located if not any(("modify", u) in out.get(t, []) for u in located)]
        suggests = [f"{words(e)} suggestive of {phrase(t)}" for rel, t in rels if rel == "suggestive_of"]
        rows.append(
            {
                "observation": phrase(eid),
                "located_at": [phrase(t) for t in located],
                "tag": TAG[e["label"]],
                "suggestive_of": suggests or None,
            }
        )
    return rows


# -- the radgraph package's own expected outputs -------------------------------------------------


@pytest.mark.shared_data
def test_package_xl_readme_example(shared_data: Path) -> None:
    doc = package_file(shared_data, "modern_radgraph_xl_readme_expected.json")["0"]
    report = "No evidence of pneumothorax following chest tube removal."  # RadGraph split off the "."
    entities, relations = import_report("r0", doc, report)
    check_matches_document(doc, entities, relations)
    assert {e["text"]: e["label"] for e in entities} == {
        "pneumothorax": "OBS-DA",
        "chest": "ANAT-DP",
        "tube": "OBS-DP",
    }
    assert {e["text"]: e["kind"] for e in entities}["chest"] == "anatomy"
    assert triples(relations) == {("3", "located_at", "2")}
    assert report[entities[0]["start"] : entities[0]["end"]] == "pneumothorax"
    xl = export_report(report, entities, relations, labels="xl")
    assert xl["text"] == doc["text"] and xl["entities"] == doc["entities"]


@pytest.mark.shared_data
def test_package_v1_example(shared_data: Path) -> None:
    doc = package_file(shared_data, "radgraph_v1_expected.json")["0"]
    entities, relations = import_report("r0", doc, doc["text"])
    check_matches_document(doc, entities, relations)
    assert [e["label"] for e in entities] == [f["label"] for f in doc["entities"].values()]
    assert triples(relations) == {("3", "located_at", "2")}
    assert export_report(doc["text"], entities, relations)["entities"] == doc["entities"]
    xl = export_report(doc["text"], entities, relations, labels="xl")["entities"]
    assert [xl[k]["label"] for k in ("1", "2", "6")] == [
        "Observation::definitely absent",
        "Anatomy::definitely present",
        "Observation::definitely present",
    ]
    assert import_report("r0", {"text": doc["text"], "entities": xl}, doc["text"]) == (entities, relations)


@pytest.mark.shared_data
def test_package_processed_annotations(shared_data: Path) -> None:
    """Five reports: RadGraph-XL's graph of each (on its re-tokenised text) read against the
    original text, checked entity by entity, label by start token, and through the package's own
    processed view; our XL export of the rows is the package's document exactly."""
    items = package_file(shared_data, "expected_processed_annotations.json")
    assert len(items) == 5
    for item in items:
        rid, report = str(item["report_id"]), item["report_text"]
        annotations = item["processed_annotations"]
        doc = annotations["radgraph_annotations"]["0"]
        assert doc["text"] != report  # re-tokenised: "sharp ." / "patient ' s" vs "sharp." / "patient's"
        entities, relations = import_report(rid, doc, report)
        check_matches_document(doc, entities, relations)
        for e in entities:
            assert report[e["start"] : e["end"]] == e["text"]
        by_start = {doc["entities"][e["entity_id"]]["start_ix"]: e for e in entities}
        for ix, label in annotations["start_ix_to_label"].items():
            assert by_start[int(ix)]["label"] == normalise_label(label), (rid, ix)
        want = [
            {
                "observation": p["observation"],
                "located_at": p["located_at"],
                "tag": p["tags"][0],
                "suggestive_of": p["suggestive_of"],
            }
            for p in annotations["processed_annotations"]
        ]
        assert processed(entities, relations) == want, rid
        xl = export_report(report, entities, relations, labels="xl")
        assert xl["text"] == doc["text"] == annotations["radgraph_text"]
        assert xl["entities"] == doc["entities"], rid
        v1 = export_report(report, entities, relations)
        assert {f["label"] for f in v1["entities"].values()} <= set(LABELS)
        assert import_report(rid, v1, report) == (entities, relations)


# The README's "Processed Annotations" example (report with line breaks and a double space). The
# package fixture transcribes only the processed output; the graph below is ours, in XL labels on
# RadGraph's re-tokenisation, and must give that output when read against the raw report.
README_DOC = {
    "text": "Mild pulmonary edema with probable small bilateral pleural effusions . More focal opacities "
    "at lung bases may reflect atelectasis but infection cannot be completely excluded .",
    "entities": {
        "1": {"tokens": "Mild", "label": "Observation::definitely present", "start_ix": 0, "end_ix": 0,
              "relations": [["modify", "3"]]},
        "2": {"tokens": "pulmonary", "label": "Anatomy::definitely present", "start_ix": 1, "end_ix": 1,
              "relations": []},
        "3": {"tokens": "edema", "label": "Observation::definitely present", "start_ix": 2, "end_ix": 2,
              "relations": [["located_at", "2"]]},
        "4": {"tokens": "small", "label": "Observation::uncertain", "start_ix": 5, "end_ix": 5,
              "relations": [["modify", "7"]]},
        "5": {"tokens": "bilateral", "label": "Anatomy::definitely present", "start_ix": 6, "end_ix": 6,
              "relations": [["modify", "6"]]},
        "6": {"tokens": "pleural", "label": "Anatomy::definitely present", "start_ix": 7, "end_ix": 7,
              "relations": []},
        "7": {"tokens": "effusions", "label": "Observation::uncertain", "start_ix": 8, "end_ix": 8,
              "relations": [["located_at", "6"]]},
        "8": {"tokens": "focal", "label": "Observation::definitely present", "start_ix": 11, "end_ix": 11,
              "relations": [["modify", "9"]]},
        "9": {"tokens": "opacities", "label": "Observation::definitely present", "start_ix": 12,
              "end_ix": 12, "relations": [["located_at", "10"], ["suggestive_of", "12"],
                                          ["suggestive_of", "13"]]},
        "10": {"tokens": "lung", "label": "Anatomy::definitely present", "start_ix": 14, "end_ix": 14,
               "relations": []},
        "11": {"tokens": "bases", "label": "Anatomy::definitely present", "start_ix": 15, "end_ix": 15,
               "relations": [["modify", "10"]]},
        "12": {"tokens": "atelectasis", "label": "Observation::uncertain", "start_ix": 18, "end_ix": 18,
               "relations": []},
        "13": {"tokens": "infection", "label": "Observation::uncertain", "start_ix": 20, "end_ix": 20,
               "relations": []},
    },
}  # fmt: skip


@pytest.mark.shared_data
def test_package_readme_processed_example(shared_data: Path) -> None:
    example = package_file(shared_data, "readme_processed_example.json")
    report = example["report"]
    assert "\n" in report and "  " in report
    entities, relations = import_report("readme", README_DOC, report)
    check_matches_document(README_DOC, entities, relations)
    assert processed(entities, relations) == example["expected_processed"]
    assert {e["text"]: e["label"] for e in entities}["effusions"] == "OBS-U"
    assert ("9", "suggestive_of", "12") in triples(relations)
    assert export_report(report, entities, relations, labels="xl") == README_DOC


# -- hand-written files mixing the label sets ----------------------------------------------------

REPORT = (
    "FINDINGS:\nThe patient's heart size is normal.  Small left pleural effusion,\n"
    "likely atelectasis. 2.5 cm nodule in the right upper lobe.\n"
)
# RadGraph's re-tokenisation ("patient ' s", separate "." and ","; "2.5" stays whole), labels from
# both sets and the rare XL families (anatomy status, measurement).
MIXED_DOC = {
    "text": "FINDINGS : The patient ' s heart size is normal . Small left pleural effusion , likely "
    "atelectasis . 2.5 cm nodule in the right upper lobe .",
    "entities": {
        "1": {"tokens": "heart", "label": "ANAT-DP", "start_ix": 6, "end_ix": 6, "relations": []},
        "2": {"tokens": "size", "label": "Anatomy::definitely present", "start_ix": 7, "end_ix": 7,
              "relations": [["modify", "1"]]},
        "3": {"tokens": "normal", "label": "Observation::definitely present", "start_ix": 9, "end_ix": 9,
              "relations": [["located_at", "1"]]},
        "4": {"tokens": "Small", "label": "OBS-DP", "start_ix": 11, "end_ix": 11,
              "relations": [["modify", "7"]]},
        "5": {"tokens": "left", "label": "Anatomy::definitely present", "start_ix": 12, "end_ix": 12,
              "relations": [["modify", "6"]]},
        "6": {"tokens": "pleural", "label": "ANAT-DP", "start_ix": 13, "end_ix": 13, "relations": []},
        "7": {"tokens": "effusion", "label": "OBS-DP", "start_ix": 14, "end_ix": 14,
              "relations": [["located_at", "6"], ["suggestive_of", "8"]]},
        "8": {"tokens": "atelectasis", "label": "Observation::uncertain", "start_ix": 17, "end_ix": 17,
              "relations": []},
        "9": {"tokens": "2.5 cm", "label": "Observation::measurement::definitely present", "start_ix": 19,
              "end_ix": 20, "relations": [["modify", "10"]]},
        "10": {"tokens": "nodule", "label": "OBS-DP", "start_ix": 21, "end_ix": 21,
               "relations": [["located_at", "13"]]},
        "11": {"tokens": "right", "label": "Anatomy::uncertain", "start_ix": 24, "end_ix": 24,
               "relations": [["modify", "13"]]},
        "12": {"tokens": "upper", "label": "Anatomy::measurement::definitely present", "start_ix": 25,
               "end_ix": 25, "relations": [["modify", "13"]]},
        "13": {"tokens": "lobe", "label": "Anatomy::definitely absent", "start_ix": 26, "end_ix": 26,
               "relations": []},
    },
}  # fmt: skip
MIXED_LABELS = {
    "1": "ANAT-DP", "2": "ANAT-DP", "3": "OBS-DP", "4": "OBS-DP", "5": "ANAT-DP", "6": "ANAT-DP",
    "7": "OBS-DP", "8": "OBS-U", "9": "OBS-DP", "10": "OBS-DP", "11": "ANAT-DP", "12": "ANAT-DP",
    "13": "ANAT-DP",
}  # fmt: skip


def rows(entities: list[dict]) -> list[dict]:
    return [{k: e[k] for k in KEEP} for e in entities]


def test_normalise_label() -> None:
    for label in LABELS:
        assert normalise_label(label) == label
        assert normalise_label(XL_LABEL[label]) == label
    assert normalise_label("Observation::measurement::uncertain") == "OBS-U"
    assert normalise_label("Observation::measurement::definitely absent") == "OBS-DA"
    for status in ("definitely present", "definitely absent", "uncertain"):
        assert normalise_label(f"Anatomy::{status}") == "ANAT-DP"
        assert normalise_label(f"Anatomy::measurement::{status}") == "ANAT-DP"
    for bad in ("OBS-POS", "observation::definitely present", "Observation::probably present", "", None):
        with pytest.raises(ValueError, match="ANAT-DP, OBS-DP, OBS-U, OBS-DA.*Observation::<status>"):
            normalise_label(bad)  # type: ignore[arg-type]


def test_mixed_labels_read_and_round_trip_in_both_sets() -> None:
    entities, relations = import_report("r1", MIXED_DOC, REPORT)
    check_matches_document(MIXED_DOC, entities, relations)
    assert {e["entity_id"]: e["label"] for e in entities} == MIXED_LABELS
    for e in entities:
        assert REPORT[e["start"] : e["end"]] == e["text"]
    kinds = {e["text"]: e["kind"] for e in entities}
    assert kinds["lobe"] == "anatomy" and kinds["effusion"] == "observation"
    assert {e["text"]: e["concept"] for e in entities}["pleural"] == "pleura"

    v1 = json.loads(json.dumps(export_report(REPORT, entities, relations)))
    xl = json.loads(json.dumps(export_report(REPORT, entities, relations, labels="xl")))
    assert v1 == export_report(REPORT, entities, relations, labels="v1")  # v1 is the default
    assert {f["label"] for f in v1["entities"].values()} == {"ANAT-DP", "OBS-DP", "OBS-U"}
    assert {f["label"] for f in xl["entities"].values()} == {
        "Anatomy::definitely present",
        "Observation::definitely present",
        "Observation::uncertain",
    }
    # the two exports differ in their labels only
    relabelled = {k: {**f, "label": XL_LABEL[f["label"]]} for k, f in v1["entities"].items()}
    assert xl == {"text": v1["text"], "entities": relabelled}
    for doc, labels in ((v1, "v1"), (xl, "xl")):
        back_e, back_r = import_report("r1", doc, REPORT)
        assert rows(back_e) == rows(entities) and back_r == relations
        assert export_report(REPORT, back_e, back_r, labels=labels) == doc
    # rows carrying XL labels (a caller's own) export the same
    as_xl = [{**e, "label": XL_LABEL[e["label"]]} for e in entities]
    assert export_report(REPORT, as_xl, relations) == v1


def test_export_corpus_label_sets() -> None:
    entities, relations = import_report("r1", MIXED_DOC, REPORT)
    docs = export_corpus({"r1": REPORT}, entities, relations, labels="xl")
    assert docs["r1"]["entities"]["8"]["label"] == "Observation::uncertain"
    assert export_corpus({"r1": REPORT}, entities, relations)["r1"]["entities"]["8"]["label"] == "OBS-U"
    with pytest.raises(PipelineError) as err:
        export_corpus({"r1": REPORT}, entities, relations, labels="XL")
    assert err.value.code == "E_CONFIG_VALUE" and "v1, xl" in err.value.message
    with pytest.raises(PipelineError, match="E_CONFIG_VALUE"):
        export_report(REPORT, entities, relations, labels="v2")


def test_unknown_label_names_entity_and_accepted_labels() -> None:
    doc = json.loads(json.dumps(MIXED_DOC))
    doc["entities"]["8"]["label"] = "Observation::probably present"
    with pytest.raises(ValueError) as err:
        import_report("r1", doc, REPORT)
    message = str(err.value)
    assert message.startswith("entity 8: label 'Observation::probably present'")
    assert "ANAT-DP" in message and "Observation::<status>" in message and "uncertain" in message


# -- the stage and its config --------------------------------------------------------------------


def stage_tables(reports: dict[str, str]) -> dict[str, pa.Table]:
    first = REPORT.index("The")
    second = REPORT.index("Small")
    sentences = {
        "report_id": ["r1", "r1", "r1"],
        "start": [first, second, REPORT.index("2.5")],
        "end": [second - 2, REPORT.index("2.5") - 1, len(REPORT) - 1],
        "sentence_idx": [0, 1, 3],
    }
    return {
        "reports": pa.table({"report_id": list(reports), "text": list(reports.values())}),
        "sentences": pa.table(
            {k: pa.array(v, pa.string() if k == "report_id" else pa.int32()) for k, v in sentences.items()}
        ),
        "mentions": pa.table({"report_id": pa.array([], pa.string())}),
    }


def radgraph_file(tmp_path: Path, docs: Mapping[str, Any]) -> str:
    path = tmp_path / "radgraph.json"
    path.write_text(json.dumps(docs))
    return str(path)


def test_stage_reads_a_file_mixing_label_sets(tmp_path: Path) -> None:
    xl_only = export_report(REPORT, *import_report("r2", MIXED_DOC, REPORT), labels="xl")
    path = radgraph_file(tmp_path, {"files/p1/r1.txt": MIXED_DOC, "r2": xl_only})
    assert set(read_radgraph(path)) >= {"r1", "r2"}
    out = graph(stage_tables({"r1": REPORT, "r2": REPORT}), config=GraphConfig(radgraph_json=path))
    entities = out["kg_entities"].to_pylist()
    r1 = [e for e in entities if e["report_id"] == "r1"]
    r2 = [e for e in entities if e["report_id"] == "r2"]
    assert {e["entity_id"]: e["label"] for e in r1} == MIXED_LABELS
    assert rows(r1) == rows(r2) and {e["source"] for e in entities} == {"radgraph"}
    sentence = {e["text"]: e["sentence_idx"] for e in r1}
    assert sentence["heart"] == 0 and sentence["nodule"] == 3
    assert set(out["kg_entities"].column("label").to_pylist()) <= set(LABELS)
    relations = out["kg_relations"].to_pylist()
    assert triples([r for r in relations if r["report_id"] == "r2"]) == triples(
        import_report("r1", MIXED_DOC, REPORT)[1]
    )
    assert out["rejects"].num_rows == 0


def test_stage_rejects_a_report_with_an_unknown_label(tmp_path: Path) -> None:
    bad = json.loads(json.dumps(MIXED_DOC))
    bad["entities"]["4"]["label"] = "OBS-POS"
    path = radgraph_file(tmp_path, {"r1": MIXED_DOC, "r2": bad})
    out = graph(stage_tables({"r1": REPORT, "r2": REPORT}), config=GraphConfig(radgraph_json=path))
    assert set(out["kg_entities"].column("report_id").to_pylist()) == {"r1"}
    rejects = out["rejects"].to_pylist()
    assert [(r["row_id"], r["reason_code"]) for r in rejects] == [("r2", "bad_value")]
    assert "entity 4: label 'OBS-POS'" in rejects[0]["detail"] and "ANAT-DP" in rejects[0]["detail"]


def test_export_cli_writes_either_label_set(demo_run: Path, tmp_path: Path) -> None:
    """``python -m pipeline.graph export``: every report with a graph, in the label set asked for."""
    from pipeline.graph.__main__ import main

    v1, xl = tmp_path / "v1.json", tmp_path / "xl.json"
    assert main(["export", str(demo_run), str(v1)]) == 0
    assert main(["export", str(demo_run), str(xl), "--labels", "xl"]) == 0
    docs_v1, docs_xl = json.loads(v1.read_text()), json.loads(xl.read_text())
    assert docs_v1 and docs_v1.keys() == docs_xl.keys()
    labels_v1 = {e["label"] for d in docs_v1.values() for e in d["entities"].values()}
    labels_xl = {e["label"] for d in docs_xl.values() for e in d["entities"].values()}
    assert labels_v1 <= {"ANAT-DP", "OBS-DP", "OBS-U", "OBS-DA"} and "OBS-DP" in labels_v1
    assert labels_xl <= {f"{k}::{s}" for k in ("Anatomy", "Observation") for s in XL_STATUSES}
    rid = next(iter(docs_v1))
    assert [e["tokens"] for e in docs_v1[rid]["entities"].values()] == [
        e["tokens"] for e in docs_xl[rid]["entities"].values()
    ]
    assert main(["export", str(demo_run), str(xl), "--labels", "v2"]) == 2
    assert main(["export", str(tmp_path / "no_run")]) == 2
