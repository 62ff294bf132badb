"""The graph package: report graphs from mentions, networkx and RadGraph round trips, embeddings,
and both stages on a real LocalCluster over the demo run.

Regenerate the golden file after an intended change with::

    CLIP2CLINIC_UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_graph.py -k golden
"""

from __future__ import annotations

import importlib
import json
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.io import read_dataset
from pipeline.core.registry import get_stage
from pipeline.core.runner import Runner
from pipeline.graph.build import LABELS, report_graph, rows_table
from pipeline.graph.embed import dimension, embed
from pipeline.graph.radgraph import export_report, import_report
from pipeline.graph.stage import GraphConfig, GraphEmbeddingConfig
from pipeline.graph.views import to_networkx, to_rows
from pipeline.graph.vocabulary import load_vocabulary

TEXT = "Small left pleural effusion. There is a right lower lobe opacity, which may represent pneumonia."


def mention(
    text: str,
    word: str,
    finding: str,
    status: str = "present",
    sidx: int = 0,
    words: tuple[tuple[str, str, str], ...] = (),
    **mods,
) -> dict:
    """A mention row; ``words``: (kind, value, surface) given to it, found in ``text``."""
    start = text.index(word)
    modifiers = [
        {"kind": k, "value": v, "start": text.index(w), "end": text.index(w) + len(w)} for k, v, w in words
    ]
    return {
        "sentence_idx": sidx,
        "start": start,
        "end": start + len(word),
        "text": word,
        "finding": finding,
        "status": status,
        "anatomy": None,
        "laterality": None,
        "size": None,
        "severity": None,
        "temporal": None,
        "modifiers": modifiers,
        **mods,
    }


def sample_graph() -> tuple[list[dict], list[dict]]:
    mentions = [
        mention(
            TEXT,
            "effusion",
            "pleural_effusion",
            words=(
                ("anatomy", "pleura", "pleural"),
                ("laterality", "left", "left"),
                ("size", "small", "Small"),
            ),
            anatomy="pleura",
            laterality="left",
            size="small",
        ),
        mention(
            TEXT,
            "opacity",
            "opacity",
            sidx=1,
            words=(("anatomy", "lower_lobe", "lower lobe"), ("laterality", "right", "right")),
            anatomy="lower_lobe",
            laterality="right",
        ),
        mention(TEXT, "pneumonia", "pneumonia", "uncertain", sidx=1, anatomy="lung"),
    ]
    return report_graph("r1", mentions, {0: (0, TEXT[:28]), 1: (29, TEXT[29:])})


def triples(entities, relations) -> set[tuple[str, str, str]]:
    text = {e["entity_id"]: e["text"] for e in entities}
    return {(text[r["source_id"]], r["relation"], text[r["target_id"]]) for r in relations}


def check_invariants(entities: list[dict], relations: list[dict]) -> None:
    ids = {(e["report_id"], e["entity_id"]): e for e in entities}
    assert len(ids) == len(entities)
    for e in entities:
        assert e["label"] in LABELS
        if e["kind"] == "observation":
            assert e["label"] in ("OBS-DP", "OBS-U", "OBS-DA")
        if e["kind"] == "anatomy":
            assert e["label"] == "ANAT-DP"
    for r in relations:
        src, dst = ids[(r["report_id"], r["source_id"])], ids[(r["report_id"], r["target_id"])]
        if r["relation"] == "located_at":
            assert src["kind"] == "observation" and dst["label"] == "ANAT-DP"
        elif r["relation"] == "modify":
            assert src["kind"] == "modifier" and src["label"] in ("OBS-DP", "ANAT-DP")
        else:
            assert r["relation"] == "suggestive_of" and dst["label"] == "OBS-U"


def test_report_graph_entities_and_relations() -> None:
    entities, relations = sample_graph()
    check_invariants(entities, relations)
    assert triples(entities, relations) == {
        ("effusion", "located_at", "pleural"),
        ("Small", "modify", "effusion"),
        ("left", "modify", "pleural"),
        ("opacity", "located_at", "lower lobe"),
        ("right", "modify", "lower lobe"),
        ("opacity", "suggestive_of", "pneumonia"),
    }
    labels = {e["text"]: e["label"] for e in entities}
    assert labels["pneumonia"] == "OBS-U" and labels["Small"] == "OBS-DP" and labels["left"] == "ANAT-DP"
    for e in entities:
        assert TEXT[e["start"] : e["end"]] == e["text"]


def test_networkx_round_trip() -> None:
    entities, relations = sample_graph()
    graph = to_networkx("r1", entities, relations)
    assert graph.number_of_nodes() == len(entities) and graph.number_of_edges() == len(relations)
    assert to_rows(graph) == (entities, relations)


def test_radgraph_round_trip() -> None:
    entities, relations = sample_graph()
    doc = json.loads(json.dumps(export_report(TEXT, entities, relations)))
    ent = doc["entities"]["e5"]
    assert (
        ent["tokens"] == "lower lobe" and ent["label"] == "ANAT-DP" and ent["end_ix"] == ent["start_ix"] + 1
    )
    back_e, back_r = import_report("r1", doc, TEXT)
    keep = ("entity_id", "label", "start", "end", "text")
    assert [{k: e[k] for k in keep} for e in back_e] == [{k: e[k] for k in keep} for e in entities]
    assert back_r == relations
    assert {e["text"]: e["concept"] for e in back_e}["pleural"] == "pleura"
    assert export_report(TEXT, back_e, back_r) == doc


def obs(concept: str, label: str = "OBS-DP", eid: str = "e0") -> dict:
    return {"entity_id": eid, "kind": "observation", "label": label, "concept": concept}


CONCEPTS = [c for c in load_vocabulary().concepts]
graph_strategy = st.lists(
    st.tuples(st.sampled_from(CONCEPTS), st.sampled_from(["OBS-DP", "OBS-U", "OBS-DA"])),
    min_size=1,
    max_size=6,
)


@settings(max_examples=60, deadline=None)
@given(graph_strategy, st.data())
def test_embedding_properties(items, data) -> None:
    entities = [obs(c, label, f"e{i}") for i, (c, label) in enumerate(items)]
    v = embed(entities, [])
    assert v.shape == (dimension(),) and v.dtype == np.float32
    assert np.array_equal(v, embed([dict(e) for e in entities], []))  # identical graphs, identical vectors
    norm = float(np.linalg.norm(v))
    assert norm == 0.0 or abs(norm - 1) < 1e-5
    i = data.draw(st.integers(0, len(entities) - 1))
    flipped = [dict(e) for e in entities]
    others = [lab for lab in ("OBS-DP", "OBS-U", "OBS-DA") if lab != entities[i]["label"]]
    flipped[i]["label"] = data.draw(st.sampled_from(others))
    assert not np.array_equal(v, embed(flipped, []))


def test_embedding_semantics() -> None:
    assert not embed([], []).any() and embed([], []).shape == (dimension(),)
    nodule, mass, heart = (embed([obs(c)], []) for c in ("lung_nodule", "lung_mass", "cardiomegaly"))
    assert nodule @ mass > nodule @ heart
    entities, relations = sample_graph()
    left = [e for e in entities if e["concept"] in ("pleural_effusion", "pleura", "laterality:left")]
    rel = [
        r
        for r in relations
        if r["relation"] == "located_at" and r["target_id"] in {e["entity_id"] for e in left}
    ]
    denied = [dict(e, label="OBS-DA") if e["kind"] == "observation" else e for e in left]
    assert embed(left, rel) @ embed(denied, rel) < 0  # "left effusion" vs "no left effusion"
    lower = embed(
        [obs("opacity"), {"entity_id": "a", "kind": "anatomy", "label": "ANAT-DP", "concept": "lower_lobe"}],
        [{"source_id": "e0", "target_id": "a", "relation": "located_at"}],
    )
    upper = embed(
        [obs("opacity"), {"entity_id": "a", "kind": "anatomy", "label": "ANAT-DP", "concept": "upper_lobe"}],
        [{"source_id": "e0", "target_id": "a", "relation": "located_at"}],
    )
    assert 0.5 < lower @ upper < 1 - 1e-4


@pytest.fixture(scope="module")
def graph_run(demo_run, dask_client, tmp_path_factory):
    """The demo run's reports, sentences and mentions copied aside, then both graph stages."""
    dask_client.run(importlib.import_module, "pipeline.graph.stage")
    out = tmp_path_factory.mktemp("graph") / "run"
    for dataset in ("reports", "sentences", "mentions"):
        shutil.copytree(demo_run / dataset, out / dataset)
    runner = Runner(str(out), dask_client)
    reports = [
        runner.run_stage(get_stage("graph"), GraphConfig()),
        runner.run_stage(get_stage("graph_embeddings"), GraphEmbeddingConfig()),
    ]
    return out, reports


def test_stages_on_cluster(graph_run) -> None:
    out, (graph_report, embed_report) = graph_run
    entities = read_dataset(str(out), "kg_entities").to_pylist()
    relations = read_dataset(str(out), "kg_relations").to_pylist()
    reports = {r["report_id"]: r["text"] for r in read_dataset(str(out), "reports").to_pylist()}
    assert graph_report.rows_in == len(reports) and graph_report.rows_out == len(
        {e["report_id"] for e in entities}
    )
    check_invariants(entities, relations)
    for e in entities:
        assert reports[e["report_id"]][e["start"] : e["end"]] == e["text"]
    assert {"located_at", "modify"} <= {r["relation"] for r in relations}
    by_report: dict[str, tuple[list, list]] = {}
    for e in entities:
        by_report.setdefault(e["report_id"], ([], []))[0].append(e)
    for r in relations:
        by_report[r["report_id"]][1].append(r)
    for rid, (ents, rels) in by_report.items():
        assert to_rows(to_networkx(rid, ents, rels)) == (ents, rels)
        doc = json.loads(json.dumps(export_report(reports[rid], ents, rels)))
        back_e, back_r = import_report(rid, doc, reports[rid])
        keep = ("entity_id", "label", "start", "end", "text")
        assert [{k: e[k] for k in keep} for e in back_e] == [{k: e[k] for k in keep} for e in ents]
        assert back_r == rels
    vectors = read_dataset(str(out), "graph_embeddings")
    assert set(vectors.column("report_id").to_pylist()) == set(by_report)
    concepts = read_dataset(str(out), "kg_concepts").to_pylist()
    lookup = {c["concept"]: c for c in concepts}
    assert lookup["lung_nodule"]["parent"] == "lung_lesion"
    assert sum(c["n_entities"] for c in concepts) == len(entities)
    # the stored vector is the one a fresh computation gives
    rid = vectors.column("report_id")[0].as_py()
    assert np.allclose(np.asarray(vectors.column("vector")[0].as_py(), np.float32), embed(*by_report[rid]))


def test_radgraph_json_option(graph_run, dask_client, tmp_path) -> None:
    out, _ = graph_run
    entities = read_dataset(str(out), "kg_entities").to_pylist()
    relations = read_dataset(str(out), "kg_relations").to_pylist()
    texts = {r["report_id"]: r["text"] for r in read_dataset(str(out), "reports").to_pylist()}
    from pipeline.graph.radgraph import export_corpus

    docs = export_corpus(texts, entities, relations)
    path = tmp_path / "radgraph.json"
    path.write_text(json.dumps(docs))
    run2 = tmp_path / "run"
    for dataset in ("reports", "sentences", "mentions"):
        shutil.copytree(out / dataset, run2 / dataset)
    Runner(str(run2), dask_client).run_stage(get_stage("graph"), GraphConfig(radgraph_json=str(path)))
    back = read_dataset(str(run2), "kg_entities").to_pylist()
    keep = ("report_id", "entity_id", "label", "start", "end", "text", "sentence_idx")
    assert [{k: e[k] for k in keep} for e in back] == [{k: e[k] for k in keep} for e in entities]
    assert read_dataset(str(run2), "kg_relations").to_pylist() == relations
    assert {e["source"] for e in back} == {"radgraph"}


def test_golden(graph_run, golden) -> None:
    out, _ = graph_run
    entities = read_dataset(str(out), "kg_entities").to_pylist()
    relations = read_dataset(str(out), "kg_relations").to_pylist()
    text = {
        (e["report_id"], e["entity_id"]): f"{' '.join(e['text'].split())}|{e['label']}|{e['concept']}"
        for e in entities
    }
    rows = [["report_id", "source", "relation", "target"]]
    rows += sorted(
        [
            r["report_id"],
            text[(r["report_id"], r["source_id"])],
            r["relation"],
            text[(r["report_id"], r["target_id"])],
        ]
        for r in relations
    )
    golden("graph_relations", rows[:1] + rows[1:400])
    assert rows_table([], "kg_entities").num_rows == 0
