"""The extract stage: every hard case of ARCHITECTURE §5 on hand-built sentences, then the stage.

Sentence tables are built by hand here (``make_tables``) so these tests do not depend on the
parse stage. The spaCy pipeline is built once per process (about 2 s) and shared by every test.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import pyarrow as pa
import pytest

from pipeline.core.errors import PipelineError
from pipeline.core.schemas import load_schema
from pipeline.text.extract import ExtractConfig, extract
from pipeline.text.nlp import MentionHit, load_engine

# a sentence ends at ". " or "? " or a blank line; single line breaks stay inside (wrapped text)
_SENTENCE = re.compile(r"\S(?:.|\n(?!\s*\n))*?(?:[.?](?=\s|$)|(?=\n\s*\n)|$)")


def make_tables(
    reports: Mapping[str, Sequence[tuple[str, str]]], labeled: Sequence[str] = ("findings", "impression")
) -> dict[str, pa.Table]:
    """``reports``: id -> [(section, body), ...] to reports/sections/sentences tables.

    The text is "SECTION: body" blocks joined by blank lines; a body splits into sentences at
    ". "/"? " and blank lines; sections named in ``labeled`` get ``is_labeled``.
    """
    rep: dict[str, list] = {"report_id": [], "text": []}
    sec: dict[str, list] = {
        k: [] for k in ("report_id", "section_idx", "section", "header", "text", "start", "end", "is_labeled")
    }
    sen: dict[str, list] = {
        k: [] for k in ("report_id", "section", "section_idx", "sentence_idx", "text", "start", "end")
    }
    for rid, parts in reports.items():
        text, idx = "", 0
        for k, (name, body) in enumerate(parts):
            if text:
                text += "\n\n"
            text += f"{name.upper()}: "
            start = len(text)
            text += body
            for key, value in zip(
                sec,
                (rid, k, name, name.upper(), body, start, start + len(body), name in labeled),
                strict=True,
            ):
                sec[key].append(value)
            for m in _SENTENCE.finditer(body):
                s = m.group().rstrip()
                s_start = start + m.start()
                for key, value in zip(sen, (rid, name, k, idx, s, s_start, s_start + len(s)), strict=True):
                    sen[key].append(value)
                idx += 1
        rep["report_id"].append(rid)
        rep["text"].append(text)
    sections = pa.table(sec, schema=load_schema("sections").arrow())
    sentences = pa.table(sen, schema=load_schema("sentences").arrow())
    return {"reports": pa.table(rep), "sections": sections, "sentences": sentences}


def mentions(sentence: str) -> list[MentionHit]:
    """The mentions the engine finds in one sentence."""
    return list(load_engine().analyse([sentence])[0])


def one(sentence: str, finding: str) -> MentionHit:
    hits = [h for h in mentions(sentence) if h.finding == finding]
    assert len(hits) == 1, (sentence, mentions(sentence))
    return hits[0]


def status(sentence: str, finding: str) -> str:
    return one(sentence, finding).status


# --- ARCHITECTURE §5 hard cases, one test each -------------------------------------------------------


def test_header_leaked_into_sentence_is_masked_and_negation_holds():
    hit = one("FINDINGS: No pneumothorax.", "pneumothorax")
    assert (hit.status, hit.cue, hit.rule) == ("absent", "No", "neg.preceding.no")
    # a header inside a sentence ends a cue's scope, and is never read as a finding
    assert status("No acute disease IMPRESSION: small left effusion.", "pleural_effusion") == "present"


def test_list_after_one_negation_negates_every_item():
    hits = mentions("No consolidation, effusion, or pneumothorax.")
    assert {(h.finding, h.status) for h in hits} == {
        ("consolidation", "absent"),
        ("pleural_effusion", "absent"),
        ("pneumothorax", "absent"),
    }


def test_scope_ends_at_but():
    assert status("No effusion but there is atelectasis.", "pleural_effusion") == "absent"
    assert status("No effusion but there is atelectasis.", "atelectasis") == "present"
    assert status("No pneumothorax; small left effusion.", "pleural_effusion") == "present"


def test_pseudo_negations_deny_nothing_but_no_longer_does():
    assert status("No change in the moderate left pleural effusion.", "pleural_effusion") == "present"
    assert status("No significant interval change in cardiomegaly.", "cardiomegaly") == "present"
    assert status("Not only is there cardiomegaly but also mild edema.", "cardiomegaly") == "present"
    # "no longer seen": the finding was there and is gone now
    hit = one("The pneumothorax is no longer seen.", "pneumothorax")
    assert hit.status == "absent" and hit.rule.startswith("neg.following.no_longer")
    assert status("No longer any evidence of pneumothorax.", "pneumothorax") == "absent"


@pytest.mark.parametrize(
    ("sentence", "finding", "rule"),
    [
        ("Pneumonia cannot be excluded.", "pneumonia", "unc.following.cannot_be_excluded"),
        ("Opacity may represent atelectasis.", "atelectasis", "unc.preceding.may_represent"),
        ("Atelectasis versus pneumonia.", "pneumonia", "unc.preceding.versus"),
        ("Atelectasis versus pneumonia.", "atelectasis", "unc.following.versus"),
        ("Possible small left effusion.", "pleural_effusion", "unc.preceding.possible"),
        ("Findings suggestive of pneumonia.", "pneumonia", "unc.preceding.suggestive_of"),
    ],
)
def test_hedges_make_mentions_uncertain(sentence, finding, rule):
    hit = one(sentence, finding)
    assert (hit.status, hit.rule) == ("uncertain", rule)


def test_hedge_scope_and_probable_cues():
    # the opacity is seen; only its reading is hedged
    assert status("Opacity may represent atelectasis versus pneumonia.", "opacity") == "present"
    # "cannot be excluded" is not a negation
    assert status("Small effusion cannot be excluded.", "pleural_effusion") == "uncertain"
    # a negation running through a hedge wins; a nearer hedge after a negated finding wins
    assert status("No findings suggestive of pneumonia.", "pneumonia") == "absent"
    assert status("No pneumothorax, possible small left effusion.", "pleural_effusion") == "uncertain"
    # "likely" leans to presence: present, cue kept, rule says so (the CheXpert labeler has no
    # rule for "likely", only for "less likely")
    hit = one("Likely small left effusion.", "pleural_effusion")
    assert (hit.status, hit.cue, hit.rule) == ("present", "Likely", "likely.preceding.likely")
    assert status("Right basilar opacity, most consistent with pneumonia.", "pneumonia") == "present"
    assert status("Atelectasis is less likely.", "atelectasis") == "uncertain"


@pytest.mark.parametrize(
    ("sentence", "finding", "rule"),
    [
        # the CheXpert labeler's own hedge words: probable, presumably, favor
        ("Probable small left effusion.", "pleural_effusion", "unc.preceding.probable"),
        ("Left basilar opacity, probably atelectasis.", "atelectasis", "unc.preceding.probably"),
        ("Presumably a small right pleural effusion.", "pleural_effusion", "unc.preceding.presumably"),
        ("Streaky left basilar opacity, favoring atelectasis.", "atelectasis", "unc.preceding.favoring"),
        ("A small effusion is probable on the right.", "pleural_effusion", "unc.following.is_probable"),
        (
            "Dense lingular opacity, highly concerning for pneumonia.",
            "pneumonia",
            "unc.preceding.highly_concerning_for",
        ),
        # a conditional reading and what another test could show are no findings of this one
        (
            "In the appropriate clinical setting, the opacity is compatible with pneumonia.",
            "pneumonia",
            "unc.preceding.in_the_appropriate_clinical_setting",
        ),
        (
            "CT would be more sensitive for detecting a small nodule.",
            "lung_nodule",
            "unc.preceding.for_detecting",
        ),
    ],
)
def test_probable_and_presumed_are_hedges(sentence, finding, rule):
    hit = one(sentence, finding)
    assert (hit.status, hit.rule) == ("uncertain", rule)
    assert status("Probably benign calcified granuloma.", "granuloma") == "present"
    # the diagnosis is hedged, not the opacity that is seen
    hits = {h.finding: h.status for h in mentions("Left basilar opacity favored to represent atelectasis.")}
    assert hits == {"opacity": "present", "atelectasis": "uncertain"}


def test_versus_is_a_hedge_between_findings_only():
    # a differential between two findings hedges both, and only them
    hits = {
        h.finding: h for h in mentions("Mild streaky right basilar opacity, atelectasis versus scarring.")
    }
    assert hits["opacity"].status == "present"
    assert (hits["atelectasis"].status, hits["atelectasis"].rule) == ("uncertain", "unc.following.versus")
    assert (hits["scarring"].status, hits["scarring"].rule) == ("uncertain", "unc.preceding.versus")
    assert status("Left lower lobe consolidation vs. atelectasis.", "consolidation") == "uncertain"
    assert (
        status("Likely atelectasis versus early pneumonia at the right base.", "atelectasis") == "uncertain"
    )
    # a comparison with an earlier study hedges nothing
    for sentence in (
        "The right upper lobe nodule shows a 1.5 cm increase vs. prior.",
        "Right upper lobe nodule, larger versus the prior study.",
        "Enlarging left effusion vs. the previous radiograph, with new left basilar atelectasis.",
        "Left pleural effusion is larger compared to the prior study.",
    ):
        assert {h.status for h in mentions(sentence)} == {"present"}, sentence
    # a negation still wins over an alternative: the labeler reads "X or Y" after negation
    assert {h.status for h in mentions("No focal consolidation, effusion and/or pneumothorax.")} == {"absent"}
    assert status("No effusion; small left effusion and/or atelectasis.", "atelectasis") == "uncertain"


def test_indication_mentions_never_count():
    tables = make_tables(
        {"r1": [("indication", "Rule out pneumonia."), ("findings", "The lungs are clear.")]}
    )
    out = extract(tables, config=ExtractConfig())
    (m,) = [m for m in out["mentions"].to_pylist() if m["finding"] == "pneumonia"]
    assert (m["section"], m["status"], m["in_labeled_section"]) == ("indication", "uncertain", False)
    assert out["labels"].to_pylist()[0]["Pneumonia"] is None
    # even when the parse stage marks the indication as the labeled section
    out = extract(
        make_tables({"r1": [("indication", "Pneumonia.")]}, labeled=("indication",)), config=ExtractConfig()
    )
    assert out["mentions"].column("in_labeled_section").to_pylist() == [False]


def test_normal_phrasings_deny_cardiomegaly_and_opacity():
    hit = one("Heart size is normal.", "cardiomegaly")
    assert (hit.status, hit.observation, hit.cue, hit.rule) == (
        "absent",
        "Cardiomegaly",
        "normal",
        "normal.heart_size_normal",
    )
    for sentence in (
        "Normal heart size.",
        "The heart is not enlarged.",
        "Heart size upper limits of normal.",
    ):
        assert status(sentence, "cardiomegaly") == "absent", sentence
    assert status("The cardiac silhouette is mildly enlarged.", "cardiomegaly") == "present"
    assert status("The heart is possibly enlarged.", "cardiomegaly") == "uncertain"
    # "lungs are clear" denies opacity as a fine finding but sets no CheXpert label: the
    # CheXpert labeler leaves Lung Opacity blank for it (its sample reports 1 and 4)
    hit = one("The lungs are clear.", "opacity")
    assert (hit.status, hit.observation, hit.rule) == ("absent", None, "normal.lungs_clear")
    assert one("Hyperexpanded but clear lungs.", "opacity").status == "absent"


def test_temporal_words_keep_status_and_resolved_removes():
    assert status("Right lower lobe pneumonia has resolved.", "pneumonia") == "absent"
    assert status("Interval resolution of the left effusion.", "pleural_effusion") == "absent"
    assert status("The endotracheal tube has been removed.", "endotracheal_tube") == "absent"
    hit = one("Unchanged small left effusion.", "pleural_effusion")
    assert (hit.status, hit.temporal, hit.size, hit.laterality) == ("present", "unchanged", "small", "left")
    assert one("New right upper lobe opacity.", "opacity")[5:13] == (
        "present",
        None,
        "default.present",
        "upper_lobe",
        "right",
        None,
        None,
        "new",
    )
    assert status("Cardiomegaly is again seen.", "cardiomegaly") == "present"
    assert status("No new effusion.", "pleural_effusion") == "absent"


def test_deidentification_holes_do_not_break_negation():
    assert status("There are no XXXX of a pleural effusion.", "pleural_effusion") == "absent"
    assert status("No ___ pleural effusion.", "pleural_effusion") == "absent"
    hit = one("Normal chest x-XXXX.", "normal_study")
    assert (hit.status, hit.rule) == ("present", "statement.normal_study")


def test_qualifiers_belong_to_their_own_structure():
    # after a comma, "moderately enlarged" premodifies the aorta, not the heart
    hits = mentions("Stable heart size, moderately enlarged and tortuous calcified aorta.")
    assert "cardiomegaly" not in {h.finding for h in hits}
    assert status("Heart size normal lungs clear.", "cardiomegaly") == "absent"
    assert status("The heart is enlarged, aorta tortuous.", "cardiomegaly") == "present"
    # "normal" is the heart's predicate, not a premodifier of the lungs after it
    hits = mentions("Heart size is normal and lungs are opacified.")
    assert sorted((h.finding, h.status) for h in hits) == [("cardiomegaly", "absent"), ("opacity", "present")]
    # ... while a premodifier still reaches across a coordination
    assert status("Normal heart and lungs.", "opacity") == "absent"
    # "normal or mildly enlarged": the radiologist cannot say which
    hit = one("The heart is at the upper limits of normal or mildly enlarged.", "cardiomegaly")
    assert (hit.status, hit.rule) == ("uncertain", "qual.heart_size_equivocal")


def test_hydropneumothorax_is_a_pneumothorax():
    # air and fluid in the pleural space: a pneumothorax (the CheXpert labeler's phrase matches too)
    hit = one("Small right apical hydropneumothorax with an air-fluid level.", "pneumothorax")
    assert (hit.status, hit.observation) == ("present", "Pneumothorax")
    assert status("No residual hydropneumothorax after chest tube placement.", "pneumothorax") == "absent"
    # no scope failure behind the pneumothorax false positives: a resolved one is gone
    assert status("The small left apical pneumothorax has resolved.", "pneumothorax") == "absent"
    assert status("Interval resolution of the right pneumothorax.", "pneumothorax") == "absent"


def test_cancer_outside_the_lung_is_no_lung_lesion():
    hit = one("Brain metastasis versus abscess.", "extrapulmonary_malignancy")
    assert (hit.status, hit.observation) == ("uncertain", None)
    assert (
        one("History of breast carcinoma, status post mastectomy.", "extrapulmonary_malignancy").observation
        is None
    )
    assert one("Lytic rib metastases.", "bone_lesion").observation is None
    assert one("Known lung carcinoma.", "lung_neoplasm").observation == "Lung Lesion"


# --- lexicon coverage on mentions --------------------------------------------------------------------


def test_anatomy_laterality_and_sites():
    hit = one("Left lower lobe atelectasis.", "atelectasis")
    assert (hit.anatomy, hit.laterality) == ("lower_lobe", "left")
    assert one("Bibasilar atelectasis.", "atelectasis")[8:10] == ("base", "bilateral")
    # a generic fracture takes the site written next to it
    hit = one("Fracture of the right 5th rib.", "rib_fracture")
    assert (hit.observation, hit.anatomy, hit.laterality) == ("Fracture", "rib", "right")
    assert one("Mild cardiomegaly.", "cardiomegaly").severity == "mild"


@pytest.mark.parametrize(
    ("sentence", "finding", "observation"),
    [
        ("Right IJ central line tip in the SVC.", "central_venous_catheter", "Support Devices"),
        ("Endotracheal tube 4 cm above the carina.", "endotracheal_tube", "Support Devices"),
        ("NG/OG tube in the stomach.", "enteric_tube", "Support Devices"),
        ("Left PICC line terminates in the SVC.", "picc", "Support Devices"),
        ("Median sternotomy wires.", "sternotomy_wires", "Support Devices"),
        ("Dual-chamber pacemaker.", "pacemaker", "Support Devices"),
        ("Small hiatal hernia.", "hiatal_hernia", None),
        ("Calcified granuloma in the right upper lobe.", "granuloma", None),
        ("Right apical pleural thickening.", "pleural_thickening", "Pleural Other"),
        ("Spiculated right upper lobe nodule.", "lung_nodule", "Lung Lesion"),
        ("T12 compression fracture.", "vertebral_fracture", "Fracture"),
        ("Minimal left basilar scarring/atelectasis.", "atelectasis", "Atelectasis"),
    ],
)
def test_fine_findings_map_to_their_observation(sentence, finding, observation):
    hit = one(sentence, finding)
    assert (hit.status, hit.observation) == ("present", observation)


def test_whitespace_and_newlines_inside_a_sentence():
    text = "no\npneumothorax.   Heart  size   normal."
    hits = mentions(text)
    by_finding = {h.finding: h for h in hits}
    assert by_finding["pneumothorax"].status == "absent"
    assert text[by_finding["pneumothorax"].start : by_finding["pneumothorax"].end] == "pneumothorax"
    assert by_finding["cardiomegaly"].text == "Heart  size"


# --- the engine: prefilter and memo -----------------------------------------------------------------


def test_memo_and_prefilter():
    engine = load_engine()
    before = dict(engine.stats)
    first = engine.analyse(
        ["No pneumothorax seen today.", "Comparison made with prior.", "No pneumothorax seen today."]
    )
    assert first[0] == first[2] and first[1] == ()
    again = engine.analyse(["No pneumothorax seen today."])
    assert again[0] == first[0]
    stats = engine.stats
    assert stats["skipped"] - before["skipped"] == 1  # no lexicon word: never reaches spaCy
    assert stats["parsed"] - before["parsed"] <= 1  # the repeat is parsed once, then memoised
    assert stats["cached"] - before["cached"] >= 1


_ENGINE_PACKAGES = frozenset({"spacy", "negspacy", "scispacy", "pipeline", "pyarrow"})


def test_analyse_makes_no_reference_cycles_and_restores_the_collector(cyclic_garbage):
    """analyse and extract pause the cyclic collector on the grounds that their docs, hits and
    tables make no cycles: check that, on sentences that exercise every component."""
    import gc

    engine = load_engine()
    engine.clear_cache()
    sentences = [
        "No pneumothorax, small left effusion, or consolidation.",
        "Mild bibasilar atelectasis versus scarring; pneumonia cannot be excluded.",
        "The heart is possibly enlarged and the NG/OG tube tip is not seen.",
        "Interval removal of the right chest tube with a tiny residual pneumothorax.",
    ]
    tables = make_tables({"r1": [("findings", " ".join(sentences))], "r2": [("impression", sentences[0])]})
    gc.collect()
    gc.disable()
    try:
        hits = engine.analyse(sentences)
        assert all(hits) and not gc.isenabled()  # left as the caller had it
        engine.clear_cache()
        assert extract(tables, config=ExtractConfig())["mentions"].num_rows >= len(sentences)
        ours = cyclic_garbage(_ENGINE_PACKAGES)
        assert not ours, ours[:5]
    finally:
        gc.enable()
    engine.clear_cache()
    engine.analyse(sentences)
    assert gc.isenabled()


# --- the stage ---------------------------------------------------------------------------------------


def test_stage_outputs_conform_and_account_for_every_report():
    tables = make_tables(
        {
            "a": [("findings", "Left pleural effusion. No pneumothorax."), ("impression", "Small effusion.")],
            "b": [("findings", "The lungs are clear. Heart size is normal.")],
            "c": [],  # no sentence at all
        }
    )
    out = extract(tables, config=ExtractConfig())
    assert set(out) == {"mentions", "labels", "findings", "rejects"}
    for name in ("mentions", "labels", "findings", "rejects"):
        assert out[name].schema.equals(load_schema(name).arrow(), check_metadata=False)
    assert out["labels"].column("report_id").to_pylist() == ["a", "b"]
    assert out["rejects"].to_pylist() == [
        {
            "stage": "extract",
            "dataset": "labels",
            "row_id": "c",
            "reason_code": "no_sentences",
            "detail": "the parse stage found no sentence in this report",
        }
    ]
    texts = dict(
        zip(tables["reports"]["report_id"].to_pylist(), tables["reports"]["text"].to_pylist(), strict=True)
    )
    for m in out["mentions"].to_pylist():
        assert texts[m["report_id"]][m["start"] : m["end"]] == m["text"]
    labels = {r["report_id"]: r for r in out["labels"].to_pylist()}
    assert labels["a"]["Pleural Effusion"] == 1.0 and labels["a"]["Pneumothorax"] == 0.0
    assert labels["b"]["Cardiomegaly"] == 0.0 and labels["b"]["No Finding"] == 1.0
    assert labels["b"]["Lung Opacity"] is None
    findings = {(f["report_id"], f["finding"]): f for f in out["findings"].to_pylist()}
    assert findings[("a", "pleural_effusion")]["n_mentions"] == 2
    assert findings[("b", "opacity")]["observation"] == "Lung Opacity"  # the finding's, not the label's


def test_labeled_sections_config_and_default_is_labeled():
    tables = make_tables(
        {"r": [("findings", "Small left effusion."), ("impression", "No acute disease.")]},
        labeled=("impression",),
    )
    default = extract(tables, config=ExtractConfig())
    assert default["labels"].to_pylist()[0]["Pleural Effusion"] is None  # findings not labeled by parse
    # sentences v1 (no section_idx): the section is found by offset
    v1 = extract({**tables, "sentences": tables["sentences"].drop(["section_idx"])}, config=ExtractConfig())
    assert v1["mentions"].equals(default["mentions"])
    chosen = extract(tables, config=ExtractConfig(labeled_sections=("findings", "impression")))
    assert chosen["labels"].to_pylist()[0]["Pleural Effusion"] == 1.0


def test_input_errors_are_structural():
    tables = make_tables({"r": [("findings", "No effusion.")]})
    with pytest.raises(PipelineError, match="needs the 'sentences' table") as err:
        extract({"reports": tables["reports"], "sections": tables["sections"]}, config=ExtractConfig())
    assert err.value.code == "E_EXTRACT_INPUT"
    with pytest.raises(PipelineError, match=r"lacks columns \['start'\]"):
        extract({**tables, "sentences": tables["sentences"].drop(["start"])}, config=ExtractConfig())


def test_extract_does_not_mutate_and_is_deterministic():
    tables = make_tables({"r": [("findings", "Possible right lower lobe pneumonia. No effusion.")]})
    snapshot = {k: v.to_pylist() for k, v in tables.items()}
    first = extract(tables, config=ExtractConfig())
    second = extract(tables, config=ExtractConfig())
    assert {k: v.to_pylist() for k, v in tables.items()} == snapshot
    for name in first:
        assert first[name].equals(second[name])


# --- readings where peers (and we, before) went wrong --------------------------------------------


@pytest.mark.parametrize(
    "sentence",
    ["2.No pleural effusion.", "3)no pleural effusion", "(2)No pleural effusion.", "4.no effusion"],
)
def test_glued_list_number_does_not_hide_the_cue(sentence):
    assert status(sentence, "pleural_effusion") == "absent"
    assert one("3.no focal consolidation or pneumothorax", "pneumothorax").status == "absent"


@pytest.mark.parametrize(
    ("sentence", "device"),
    [
        ("Interval removal of the chest tube, with a small residual apical pneumothorax.", "chest_tube"),
        ("Status post removal of the right chest tube with a tiny residual pneumothorax.", "chest_tube"),
        ("The chest tube has been removed, small residual pneumothorax.", "chest_tube"),
    ],
)
def test_a_removal_denies_the_device_only(sentence, device):
    assert status(sentence, device) == "absent"
    assert status(sentence, "pneumothorax") == "present"
    # a negation of its own still reaches the finding
    assert status("Removal of the chest tube with no pneumothorax.", "pneumothorax") == "absent"
    # a removal cue never denies a finding, even one right after it
    assert status("Interval removal of the endotracheal tube and persistent atelectasis.", "atelectasis") == (
        "present"
    )


@pytest.mark.parametrize(
    ("sentence", "finding", "expected"),
    [
        # a finding with its own size or severity after a comma or "and" opens a new clause
        ("No pneumothorax, small left effusion.", "pleural_effusion", "present"),
        ("No pneumothorax and mild edema.", "pulmonary_edema", "present"),
        ("No focal consolidation, with a small left effusion.", "pleural_effusion", "present"),
        ("No evidence of pneumothorax, moderate cardiomegaly.", "cardiomegaly", "present"),
        # ... or its own predicate
        ("No pneumothorax and effusion is unchanged.", "pleural_effusion", "present"),
        ("No pneumothorax, effusion is unchanged.", "pleural_effusion", "present"),
        # a list stays one denial
        ("No pneumothorax, effusion, or consolidation.", "pleural_effusion", "absent"),
        ("No consolidation, large effusion, or pneumothorax.", "pleural_effusion", "absent"),
        ("No pneumothorax, effusion and edema.", "pulmonary_edema", "absent"),
        ("No pneumothorax or mild edema.", "pulmonary_edema", "absent"),
        ("No pneumothorax, effusion, or consolidation.", "pneumothorax", "absent"),
        # a following cue with its own subject after a comma stays in its clause
        ("Small right pleural effusion, pneumonia cannot be excluded.", "pleural_effusion", "present"),
        ("Small right pleural effusion, pneumonia cannot be excluded.", "pneumonia", "uncertain"),
        ("Pneumothorax, effusion, or consolidation is not seen.", "pneumothorax", "absent"),
        ("Pneumothorax, effusion and consolidation are not seen.", "pneumothorax", "absent"),
    ],
)
def test_negation_scope_ends_at_a_new_clause(sentence, finding, expected):
    assert status(sentence, finding) == expected


@pytest.mark.parametrize(
    ("sentence", "findings", "expected"),
    [
        ("Left basilar atelectasis or consolidation.", ("atelectasis", "consolidation"), "uncertain"),
        ("Either atelectasis or pneumonia.", ("atelectasis", "pneumonia"), "uncertain"),
        ("Small effusion and/or atelectasis.", ("pleural_effusion", "atelectasis"), "uncertain"),
        ("Likely atelectasis or scarring.", ("atelectasis", "scarring"), "uncertain"),
        ("No effusion or atelectasis.", ("pleural_effusion", "atelectasis"), "absent"),
        ("Atelectasis or pneumonia is not seen.", ("atelectasis", "pneumonia"), "absent"),
        ("No lines or tubes.", ("support_device",), "absent"),
    ],
)
def test_x_or_y_is_uncertain_for_both_unless_denied(sentence, findings, expected):
    hits = [h for h in mentions(sentence) if h.finding in findings]
    assert hits and {h.status for h in hits} == {expected}, hits
    # the finding the differential explains is not hedged with it
    assert status("Opacity may represent atelectasis or pneumonia.", "opacity") == "present"


@pytest.mark.parametrize(
    "sentence",
    [
        "Stable cardiomediastinal silhouette.",
        "Heart and mediastinum are stable.",
        "The mediastinal contours are unchanged.",
        "Cardiomediastinal silhouette is again seen.",
    ],
)
def test_stable_says_nothing_about_enlargement(sentence):
    assert [h.observation for h in mentions(sentence)] == []
    assert status("The mediastinum is widened.", "enlarged_cardiomediastinum") == "present"
    assert status("Stable widened mediastinum.", "enlarged_cardiomediastinum") == "present"
    assert status("Cardiomediastinal silhouette is normal.", "enlarged_cardiomediastinum") == "absent"


@pytest.mark.parametrize(
    ("sentence", "finding"),
    [
        ("Adequate opacification of the pulmonary arteries.", "contrast_opacification"),
        ("Opacification of the contrast bolus is suboptimal.", "contrast_opacification"),
        ("Changes of cystic fibrosis.", "cystic_fibrosis"),
        ("Small knee joint effusion.", "extrathoracic_effusion"),
        ("Right middle ear effusion.", "extrathoracic_effusion"),
        ("Small subdural effusion.", "extrathoracic_effusion"),
        ("Small pericardial effusion.", "pericardial_effusion"),
        ("Defibrillator pads overlie the chest.", "external_pads"),
    ],
)
def test_words_that_look_like_a_finding_but_are_another(sentence, finding):
    hits = mentions(sentence)
    assert [h.finding for h in hits] == [finding], hits
    observations = {h.observation for h in hits}
    assert observations.isdisjoint({"Lung Opacity", "Pleural Effusion", "Pleural Other"})
    assert status("Right lower lobe opacification.", "opacity") == "present"


@pytest.mark.parametrize(
    ("sentence", "finding", "expected"),
    [
        ("Increased interstitial lung markings.", "interstitial_opacity", "present"),
        ("Opacity, likely infectious/inflammatory process.", "pneumonia", "present"),
        ("No interval change of consolidation.", "consolidation", "present"),
    ],
)
def test_lexicon_gaps(sentence, finding, expected):
    assert status(sentence, finding) == expected
    # a slash compound with a term on each side keeps both findings
    pleural, pericardial = (
        one("No pleural/pericardial effusion.", f) for f in ("pleural_effusion", "pericardial_effusion")
    )
    assert pleural.status == pericardial.status == "absent"


@pytest.mark.parametrize(
    "sentence",
    [
        "Enteric tube passes below the diaphragm, tip not seen.",
        "The tip of the PICC line is not visualized.",
        "The PICC line tip is not seen.",
    ],
)
def test_a_tip_not_seen_is_no_absent_device(sentence):
    hits = [h for h in mentions(sentence) if h.observation == "Support Devices"]
    assert hits and {h.status for h in hits} == {"present"}, hits
    assert status("Nasogastric tube is not seen.", "enteric_tube") == "absent"
