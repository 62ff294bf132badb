"""The lexicon is data: the bundled one is complete, a malformed one is rejected with a clear message."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline.core.errors import PipelineError
from pipeline.text.lexicon import FINDING_OBSERVATIONS, default_lexicon_dir, expand, load_lexicon


def test_bundled_lexicon_covers_the_vocabulary():
    lex = load_lexicon()
    assert len(lex.findings) >= 80
    assert {f.observation for f in lex.findings.values()} - {None} == FINDING_OBSERVATIONS
    for fid in (
        "lung_nodule",
        "lung_mass",
        "granuloma",
        "calcification",
        "emphysema",
        "fibrosis",
        "scarring",
        "pleural_thickening",
        "hiatal_hernia",
        "scoliosis",
        "rib_fracture",
        "clavicle_fracture",
        "vertebral_fracture",
        "hyperinflation",
        "vascular_congestion",
        "endotracheal_tube",
        "enteric_tube",
        "picc",
        "central_venous_catheter",
        "swan_ganz_catheter",
        "pacemaker",
        "icd",
        "sternotomy_wires",
        "surgical_clips",
        "chest_tube",
    ):
        assert fid in lex.findings, fid
    obs = {
        fid: lex.observation_of(fid)
        for fid in ("lung_nodule", "lung_mass", "rib_fracture", "pleural_thickening", "picc")
    }
    assert obs == {
        "lung_nodule": "Lung Lesion",
        "lung_mass": "Lung Lesion",
        "rib_fracture": "Fracture",
        "pleural_thickening": "Pleural Other",
        "picc": "Support Devices",
    }
    assert not lex.findings["picc"].blocks_no_finding and lex.findings["scoliosis"].blocks_no_finding
    assert set(lex.negation.negspacy()) == {
        "pseudo_negations",
        "preceding_negations",
        "following_negations",
        "termination",
    }
    assert "no longer" not in lex.negation.pseudo


def test_expand_braces():
    assert expand("{left,right} {effusion,}") == ["left effusion", "left", "right effusion", "right"]
    assert expand("no  change") == ["no change"]


@pytest.fixture
def lexicon_copy(tmp_path: Path) -> Path:
    target = tmp_path / "lexicon"
    shutil.copytree(default_lexicon_dir(), target)
    return target


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize(
    ("file", "old", "new", "message"),
    [
        (
            "findings.yaml",
            "  - id: cardiomegaly\n",
            "  - id: cardiomegaly\n    terms: [oops\n",
            r"findings.yaml: not valid YAML",
        ),
        (
            "findings.yaml",
            "observation: Cardiomegaly",
            "observation: Cardiomegally",
            r"finding 'cardiomegaly': unknown observation 'Cardiomegally'. Did you mean 'Cardiomegaly'",
        ),
        (
            "findings.yaml",
            "      - cardiomegal*",
            "      - Cardiomegaly",
            r"term 'Cardiomegaly' has capitals",
        ),
        (
            "findings.yaml",
            "  - id: cardiomegaly\n",
            "  - id: cardiomegaly\n    anatomie: heart\n",
            r"unknown key 'anatomie'. Did you mean 'anatomy'",
        ),
        (
            "findings.yaml",
            "  - id: lung_mass\n",
            "  - id: lung_nodule\n",
            r"finding 'lung_nodule': duplicate id",
        ),
        (
            "findings.yaml",
            "      - megacardia",
            "      - megacardia\n      - edema",
            r"term 'edema' belongs to both",
        ),
        (
            "findings.yaml",
            "      - cardiomegal*",
            "      - ca*",
            r"prefix 'ca\*' is shorter than 3 characters",
        ),
        (
            "findings.yaml",
            "rib: rib_fracture",
            "rib: rib_fractures",
            r"refine target 'rib_fractures' is not a finding",
        ),
        (
            "anchors.yaml",
            "when: {normal: absent, enlarged: present, borderline: present, equivocal: uncertain}",
            "when: {normal: absent, enlargd: present}",
            r"unknown qualifier group 'enlargd'. Did you mean 'enlarged'",
        ),
        (
            "anchors.yaml",
            "  - finding: cardiomegaly\n        when:",
            "  - finding: cardiomegaly\n        default: maybe\n        when:",
            r"default 'maybe' must be drop or present",
        ),
        ("negation.yaml", "rule_prefix: neg", "rule_prefix: unc", r"rule prefixes must differ"),
        ("uncertainty.yaml", "following:", "followng:", r"unknown key 'followng'. Did you mean 'following'"),
        ("anatomy.yaml", "version: 1", "version: 2", r"anatomy.yaml: unsupported version 2"),
    ],
)
def test_malformed_lexicon_is_rejected_with_a_clear_message(lexicon_copy, file, old, new, message):
    _edit(lexicon_copy / file, old, new)
    with pytest.raises(PipelineError, match=message) as err:
        load_lexicon(lexicon_copy)
    assert err.value.code == "E_LEXICON_INVALID"


def test_missing_file_and_folder(lexicon_copy, tmp_path):
    (lexicon_copy / "headers.yaml").unlink()
    with pytest.raises(PipelineError, match=r"headers.yaml: file missing"):
        load_lexicon(lexicon_copy)
    with pytest.raises(PipelineError, match="lexicon folder not found"):
        load_lexicon(tmp_path / "nowhere")


def test_a_valid_edited_copy_loads(lexicon_copy):
    _edit(lexicon_copy / "findings.yaml", "      - megacardia", "      - megacardia\n      - cor bovinum")
    lex = load_lexicon(lexicon_copy)
    assert "cor bovinum" in lex.findings["cardiomegaly"].terms
    assert lex.source == str(lexicon_copy.resolve())
