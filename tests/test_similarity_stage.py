"""The clinical_vectors and similarity stages on a real LocalCluster, against the dense reference.

The golden file ``tests/golden/similarity_topk.csv`` holds similarity_topk of the small fixed
corpus below. Regenerate it after an intended change with::

    CLIP2CLINIC_UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_similarity_stage.py -k golden

(the test then writes the file and fails, so a regeneration is never silent); a missing golden
fails too.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipeline.core.errors import PipelineError
from pipeline.core.io import Store, read_dataset
from pipeline.core.registry import get_stage
from pipeline.core.runner import Runner
from pipeline.core.schemas import load_schema
from pipeline.similarity import stage as similarity_stage
from pipeline.similarity.encoding import OBSERVATIONS, ClinicalVectorConfig, vectors_of
from pipeline.similarity.stage import SimilarityConfig
from pipeline.similarity.topk import dense_topk

GOLDEN = Path(__file__).parent / "golden" / "similarity_topk.csv"

# (labels: observation -> value, findings: finding -> status); cycled over the corpus so many
# reports share a template (exact ties) and a few are one of a kind.
TEMPLATES: list[tuple[dict[str, float], dict[str, str]]] = [
    (
        {"No Finding": 1.0, "Pneumothorax": 0.0, "Pleural Effusion": 0.0},
        {"pneumothorax": "absent", "pleural_effusion": "absent"},
    ),
    ({"No Finding": 1.0}, {"normal_study": "present"}),
    (
        {"No Finding": 1.0, "Pneumothorax": 0.0, "Pleural Effusion": 0.0, "Consolidation": 0.0},
        {"pneumothorax": "absent", "pleural_effusion": "absent", "consolidation": "absent"},
    ),
    (
        {"Pleural Effusion": 1.0, "Pneumothorax": 0.0},
        {"pleural_effusion": "present", "pneumothorax": "absent"},
    ),
    ({"Edema": 1.0, "Pleural Effusion": 1.0}, {"pulmonary_edema": "present", "pleural_effusion": "present"}),
    ({"Atelectasis": -1.0, "Pneumonia": -1.0}, {"atelectasis": "uncertain", "pneumonia": "uncertain"}),
    ({"Lung Lesion": 1.0}, {"lung_nodule": "present"}),
    ({"Lung Lesion": 1.0}, {"lung_mass": "present"}),
    ({"Support Devices": 1.0, "No Finding": 1.0}, {"picc": "present"}),
    ({"Cardiomegaly": 1.0, "Edema": 0.0}, {"cardiomegaly": "present", "pulmonary_edema": "absent"}),
]
N_REPORTS = 60
PART_SIZE = 20
SPLITS = ("train", "validate", "test")


def corpus_rows() -> list[tuple[str, str | None, dict[str, float], dict[str, str]]]:
    """(report_id, split, labels, findings) of the fixed corpus; ids are not in template order."""
    rows = []
    for i in range(N_REPORTS):
        report_id = f"s{(i * 37) % 101:04d}"
        labels, findings = TEMPLATES[(i * 7) % len(TEMPLATES)] if i % 3 else TEMPLATES[0]
        rows.append((report_id, SPLITS[i % 3], labels, findings))
    rows.append(("s0999", "lonely", {}, {}))  # no label, no finding: a zero vector
    rows.append(("s0998", "lonely", {"Fracture": 1.0}, {"rib_fracture": "present"}))
    rows.append(("s0997", "solo", {"Edema": 1.0}, {}))  # alone in its split
    return rows


def write_inputs(out: Path, rows=None) -> None:
    """labels, findings and reports parts plus complete manifests, as upstream stages would."""
    rows = rows if rows is not None else corpus_rows()
    store = Store(str(out))
    provenance = load_schema("labels").arrow().field("provenance").type
    sections = load_schema("reports").arrow().field("sections").type
    parts = [rows[a : a + PART_SIZE] for a in range(0, len(rows), PART_SIZE)]
    for index, part in enumerate(parts):
        n = len(part)
        labels = {"report_id": [r[0] for r in part]}
        for obs in OBSERVATIONS:
            labels[obs] = pa.array([r[2].get(obs) for r in part], pa.float32())
        labels["provenance"] = pa.array([[] for _ in part], provenance)
        store.write_table(pa.table(labels), "labels", index)
        found = [(r[0], f, s) for r in part for f, s in r[3].items()]
        store.write_table(
            pa.table(
                {
                    "report_id": [f[0] for f in found],
                    "finding": [f[1] for f in found],
                    "observation": pa.nulls(len(found), pa.string()),
                    "status": [f[2] for f in found],
                    "n_mentions": pa.array([1] * len(found), pa.int32()),
                }
            ),
            "findings",
            index,
        )
        store.write_table(
            pa.table(
                {
                    "report_id": [r[0] for r in part],
                    "subject_id": pa.nulls(n, pa.string()),
                    "study_id": pa.nulls(n, pa.string()),
                    "split": [r[1] for r in part],
                    "source": ["test"] * n,
                    "path": pa.nulls(n, pa.string()),
                    "text": ["FINDINGS: test."] * n,
                    "sections": pa.nulls(n, sections),
                }
            ),
            "reports",
            index,
        )
    for dataset in ("labels", "findings", "reports"):
        store.write_json(store.manifest_path(dataset), {"complete": True, "fingerprint": f"test-{dataset}"})


@pytest.fixture(scope="module")
def client(dask_client):
    # Until the lead adds pipeline.similarity.stage to STAGE_MODULES, workers import it here.
    dask_client.run(importlib.import_module, "pipeline.similarity.stage")
    return dask_client


def run(out: Path, client, config: SimilarityConfig | None = None, force: bool = False):
    runner = Runner(str(out), client, force=force)
    vectors = runner.run_stage(get_stage("clinical_vectors"), ClinicalVectorConfig())
    topk = runner.run_stage(get_stage("similarity"), config or SimilarityConfig(k=5, reports_per_part=25))
    return vectors, topk


def sorted_topk(out: Path) -> pa.Table:
    return read_dataset(str(out), "similarity_topk").sort_by(
        [("report_id", "ascending"), ("rank", "ascending")]
    )


def reference(out: Path, k: int, within_split: bool) -> dict[str, list]:
    """The dense brute force over the stage's own clinical_vectors, minus rejected reports."""
    vectors = read_dataset(str(out), "clinical_vectors")
    ids = vectors.column("report_id").to_pylist()
    splits = None
    if within_split:
        reports = read_dataset(str(out), "reports")
        split_of = dict(zip(reports["report_id"].to_pylist(), reports["split"].to_pylist(), strict=True))
        splits = [split_of[i] for i in ids]
    x = vectors_of(vectors)
    report, neighbor, rank, score, parts = dense_topk(ids, [x], [1.0], k, splits)
    ordered = sorted(ids)
    keep = np.linalg.norm(x[np.argsort(ids)], axis=1)[report] > 0  # zero vectors are rejected
    return {
        "report_id": [ordered[i] for i in report[keep]],
        "neighbor_id": [ordered[i] for i in neighbor[keep]],
        "rank": rank[keep].tolist(),
        "score": score[keep].tolist(),
        "clinical_score": parts[0][keep].tolist(),
    }


def test_stage_equals_brute_force_with_accounting(tmp_path, client):
    write_inputs(tmp_path)
    vectors, topk = run(tmp_path, client)
    assert vectors.rows_in == N_REPORTS + 3 and vectors.rows_out == N_REPORTS + 3
    assert topk.rows_in == topk.rows_out + topk.rejected and topk.rejected == 1  # the zero vector
    got = sorted_topk(tmp_path)
    want = reference(tmp_path, 5, within_split=False)
    for column, values in want.items():
        assert got.column(column).to_pylist() == values, column
    assert got.column("graph_score").null_count == got.num_rows
    assert topk.parts == 3  # 63 reports, 25 per part
    manifest = json.loads((tmp_path / "similarity_topk" / "_manifest.json").read_text())
    assert manifest["complete"] and manifest["rows"] == got.num_rows == 5 * (N_REPORTS + 2)
    rejects = read_dataset(str(tmp_path), "rejects")
    mine = rejects.filter(pa.compute.equal(rejects["stage"], "similarity"))
    assert mine["row_id"].to_pylist() == ["s0999"] and mine["reason_code"].to_pylist() == ["no_findings"]
    again = run(tmp_path, client)[1]
    assert again.status == "skipped"


def test_within_split(tmp_path, client):
    write_inputs(tmp_path)
    _, topk = run(tmp_path, client, SimilarityConfig(k=4, within_split=True, reports_per_part=16))
    got = sorted_topk(tmp_path)
    want = reference(tmp_path, 4, within_split=True)
    for column, values in want.items():
        assert got.column(column).to_pylist() == values, column
    reports = read_dataset(str(tmp_path), "reports")
    split_of = dict(zip(reports["report_id"].to_pylist(), reports["split"].to_pylist(), strict=True))
    assert all(
        split_of[a] == split_of[b]
        for a, b in zip(got["report_id"].to_pylist(), got["neighbor_id"].to_pylist(), strict=True)
    )
    # s0997 has nobody in its split; s0998's only split mate is the zero vector s0999, which is
    # rejected as a query but stays a candidate (score 0).
    assert topk.rejected == 2 and topk.rows_out == N_REPORTS + 1
    rejects = read_dataset(str(tmp_path), "rejects").to_pylist()
    detail = {r["row_id"]: r["detail"] for r in rejects if r["stage"] == "similarity"}
    assert sorted(detail) == ["s0997", "s0999"] and "split 'solo'" in detail["s0997"]


def test_bad_config_and_missing_graph(tmp_path, client):
    write_inputs(tmp_path)
    runner = Runner(str(tmp_path), client)
    runner.run_stage(get_stage("clinical_vectors"), ClinicalVectorConfig())
    with pytest.raises(PipelineError) as err:
        runner.run_stage(get_stage("similarity"), SimilarityConfig(clinical_weight=0.0))
    assert err.value.code == "E_CONFIG_VALUE"
    with pytest.raises(PipelineError) as err:
        runner.run_stage(get_stage("similarity"), SimilarityConfig(graph_weight=0.5))
    assert err.value.code == "E_INPUT_MISSING" and "graph_embeddings" in err.value.message


def _golden_rows(table: pa.Table) -> list[list[str]]:
    rows = []
    for rec in table.to_pylist():
        rows.append(
            [
                rec["report_id"],
                rec["neighbor_id"],
                str(rec["rank"]),
                repr(float(np.float32(rec["score"]))),
                repr(float(np.float32(rec["clinical_score"]))),
            ]
        )
    return rows


def test_golden(tmp_path, client, golden):
    write_inputs(tmp_path)
    run(tmp_path, client)
    header = ["report_id", "neighbor_id", "rank", "score", "clinical_score"]
    golden("similarity_topk", [header, *_golden_rows(sorted_topk(tmp_path))])


def test_stages_resolve_by_name():
    assert get_stage("similarity").fn is similarity_stage.similarity
    assert get_stage("clinical_vectors").kind == "map"


def test_empty_corpus(tmp_path, client):
    write_inputs(tmp_path, rows=[("s0001", "train", {}, {})])  # one report, a zero vector
    _, topk = run(tmp_path, client)
    assert (topk.rows_in, topk.rows_out, topk.rejected) == (1, 0, 1)
    assert read_dataset(str(tmp_path), "similarity_topk").num_rows == 0
    nothing = tmp_path / "nothing"
    write_inputs(nothing, rows=[])
    _, topk = run(nothing, client)
    assert (topk.rows_in, topk.rows_out, topk.parts) == (0, 0, 1)
