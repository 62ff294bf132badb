"""Clinical vectors: a fixed layout, and cosine similarities that mean what the encoding says."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml

from pipeline.core.errors import PipelineError
from pipeline.core.schemas import conform
from pipeline.similarity.encoding import (
    OBSERVATIONS,
    ClinicalVectorConfig,
    encode,
    encoding_id,
    load_vocabulary,
    vector_layout,
    vector_size,
)
from pipeline.similarity.soft import cosine_similarity
from pipeline.similarity.stage import clinical_vectors

LEXICON = Path(__file__).resolve().parents[1] / "pipeline" / "text" / "lexicon" / "findings.yaml"


def tables(reports: dict[str, tuple[dict[str, float], dict[str, str]]]) -> dict[str, pa.Table]:
    ids = list(reports)
    labels = {"report_id": ids}
    for obs in OBSERVATIONS:
        labels[obs] = pa.array([reports[r][0].get(obs) for r in ids], pa.float32())
    rows = [(r, f, s) for r in ids for f, s in reports[r][1].items()]
    findings = pa.table(
        {
            "report_id": pa.array([x[0] for x in rows], pa.string()),
            "finding": pa.array([x[1] for x in rows], pa.string()),
            "status": pa.array([x[2] for x in rows], pa.string()),
        }
    )
    return {"labels": pa.table(labels), "findings": findings}


NORMAL = {"No Finding": 1.0}
REPORTS = {
    "terse_normal": (NORMAL, {"normal_study": "present"}),
    "verbose_normal": (
        {**NORMAL, "Pneumothorax": 0.0, "Pleural Effusion": 0.0, "Consolidation": 0.0, "Cardiomegaly": 0.0},
        {
            "pneumothorax": "absent",
            "pleural_effusion": "absent",
            "consolidation": "absent",
            "cardiomegaly": "absent",
        },
    ),
    "typical_normal": (
        {**NORMAL, "Pneumothorax": 0.0, "Pleural Effusion": 0.0},
        {"pneumothorax": "absent", "pleural_effusion": "absent"},
    ),
    "typical_normal_2": (
        {**NORMAL, "Pneumothorax": 0.0, "Pleural Effusion": 0.0},
        {"pneumothorax": "absent", "pleural_effusion": "absent"},
    ),
    "effusion": ({"Pleural Effusion": 1.0}, {"pleural_effusion": "present"}),
    "effusion_edema": (
        {"Pleural Effusion": 1.0, "Edema": 1.0},
        {"pleural_effusion": "present", "pulmonary_edema": "present"},
    ),
    "possible_effusion": ({"Pleural Effusion": -1.0}, {"pleural_effusion": "uncertain"}),
    "pneumothorax": ({"Pneumothorax": 1.0}, {"pneumothorax": "present"}),
    "atelectasis_no_ptx": (
        {"Atelectasis": 1.0, "Pneumothorax": 0.0, "Pleural Effusion": 0.0},
        {"atelectasis": "present", "pneumothorax": "absent", "pleural_effusion": "absent"},
    ),
    "fracture_no_ptx": (
        {"Fracture": 1.0, "Pneumothorax": 0.0, "Pleural Effusion": 0.0},
        {"rib_fracture": "present", "pneumothorax": "absent", "pleural_effusion": "absent"},
    ),
    "no_effusion_only": ({"Pleural Effusion": 0.0}, {"pleural_effusion": "absent"}),
    "nothing": ({}, {}),
}


@pytest.fixture(scope="module")
def sim() -> dict[tuple[str, str], float]:
    encoded = encode(**tables(REPORTS), config=ClinicalVectorConfig())
    s = cosine_similarity(encoded.vectors)
    ids = encoded.report_ids
    return {(a, b): float(s[i, j]) for i, a in enumerate(ids) for j, b in enumerate(ids)}


def test_layout_is_fixed():
    vocabulary = load_vocabulary()
    assert vector_size() == 14 + len(vocabulary.findings) == len(vector_layout())
    assert (
        vector_layout()[0] == "observation:No Finding"
        and vector_layout()[14] == f"finding:{vocabulary.findings[0]}"
    )
    # the dimension never depends on what a partition holds
    one = encode(**tables({"a": (NORMAL, {})}), config=ClinicalVectorConfig())
    assert one.vectors.shape == (1, vector_size())
    assert encoding_id(ClinicalVectorConfig()).startswith(
        f"clinical.v1/vocab.v{vocabulary.version}/d{vector_size()}/"
    )
    assert encoding_id(ClinicalVectorConfig(absent=-0.5)) != encoding_id(ClinicalVectorConfig())


def test_vocabulary_covers_the_text_lexicon():
    """A finding the text engine emits but the vocabulary lacks would stop the clinical_vectors stage."""
    if not LEXICON.exists():
        pytest.skip("the text lexicon is not in this checkout")
    lexicon = {f["id"] for f in yaml.safe_load(LEXICON.read_text())["findings"]}
    missing = sorted(lexicon - set(load_vocabulary().findings))
    assert not missing, (
        f"append {missing} to pipeline/similarity/finding_vocabulary.yaml and bump its version"
    )


def test_states_are_distinct_and_absent_is_not_unmentioned():
    config = ClinicalVectorConfig()
    encoded = encode(
        **tables(
            {
                "present": ({"Edema": 1.0}, {}),
                "uncertain": ({"Edema": -1.0}, {}),
                "absent": ({"Edema": 0.0}, {}),
                "unmentioned": ({}, {}),
            }
        ),
        config=config,
    )
    edema = OBSERVATIONS.index("Edema")
    values = dict(zip(encoded.report_ids, encoded.vectors[:, edema].tolist(), strict=True))
    assert values == {"present": 1.0, "uncertain": 0.5, "absent": -0.25, "unmentioned": 0.0}
    assert encoded.counts.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]]


def test_normal_reports_are_similar(sim):
    normals = ["terse_normal", "verbose_normal", "typical_normal", "typical_normal_2"]
    assert sim["typical_normal", "typical_normal_2"] == pytest.approx(1.0)
    for a in normals:
        for b in normals:
            assert sim[a, b] >= 0.75, (a, b, sim[a, b])


def test_different_positives_are_not_similar(sim):
    assert sim["effusion", "pneumothorax"] == pytest.approx(0.0, abs=1e-12)
    # sharing only denials lifts different positives a little, far below two normals
    assert 0 < sim["atelectasis_no_ptx", "fracture_no_ptx"] < 0.25
    assert sim["atelectasis_no_ptx", "fracture_no_ptx"] < sim["terse_normal", "verbose_normal"] - 0.5


def test_same_positive_similar_and_contradiction_negative(sim):
    assert sim["effusion", "effusion_edema"] > 0.65
    assert sim["effusion", "possible_effusion"] > 0.9  # uncertain leans toward present
    assert sim["effusion", "no_effusion_only"] < 0  # present against a denial: a contradiction
    assert sim["effusion", "typical_normal"] < 0
    assert sim["no_effusion_only", "typical_normal"] > 0  # denial against denial: agreement
    assert sim["nothing", "effusion"] == 0.0  # an empty vector is similar to nothing


def test_stage_function_conforms_and_rejects_bad_values():
    reports = dict(REPORTS)
    inputs = tables(reports)
    labels = inputs["labels"]
    bad = labels.set_column(
        labels.schema.get_field_index("Edema"),
        "Edema",
        pa.array([2.0] + [None] * (labels.num_rows - 1), pa.float32()),
    )
    findings = pa.concat_tables(
        [
            inputs["findings"],
            pa.table({"report_id": ["effusion"], "finding": ["opacity"], "status": ["maybe"]}),
        ]
    )
    before = bad.to_pylist()
    out = clinical_vectors({"labels": bad, "findings": findings}, config=ClinicalVectorConfig())
    table = conform(out["clinical_vectors"], "clinical_vectors")
    rejected = out["rejects"].to_pylist()
    first = labels["report_id"][0].as_py()
    assert sorted(r["row_id"] for r in rejected) == sorted([first, "effusion"])
    assert {r["reason_code"] for r in rejected} == {"bad_value"}
    assert table.num_rows == labels.num_rows - 2
    assert table.schema.field("vector").type.list_size == vector_size()
    assert len(set(table["encoding"].to_pylist())) == 1
    assert bad.to_pylist() == before  # the input is not mutated


def test_unknown_findings_error_or_ignore():
    inputs = tables({"a": (NORMAL, {"made_up_finding": "present"})})
    with pytest.raises(PipelineError) as err:
        encode(**inputs, config=ClinicalVectorConfig())
    assert err.value.code == "E_VOCABULARY_UNKNOWN" and "made_up_finding" in err.value.message
    kept = encode(**inputs, config=ClinicalVectorConfig(unknown_findings="ignore"))
    assert np.count_nonzero(kept.vectors) == 1


def test_empty_partition_keeps_the_vector_size():
    inputs = tables({})
    out = clinical_vectors(inputs, config=ClinicalVectorConfig())
    assert (
        conform(out["clinical_vectors"], "clinical_vectors").schema.field("vector").type.list_size
        == vector_size()
    )
