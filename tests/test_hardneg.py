"""Hard negatives: sentence flips by family, the self-consistency gate, report variants and
CXR-Align, on hand-built sentences (read by the real text engine), on the demo run, and on real
Open-i reports.

Regenerate the golden files (hardneg_pairs, cxr_align) after an intended change with::

    CLIP2CLINIC_UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_hardneg.py -k golden
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.io import read_dataset
from pipeline.hardneg.__main__ import export_cxr_align, main, published_items
from pipeline.hardneg.rewrite import flips, load_rules
from pipeline.hardneg.stage import ALIGN_CLASSES, GateConfig, HardnegConfig, hardneg, hardneg_rewrite
from pipeline.hardneg.variants import LOCATIONS, clean, denial, locations, place, site_phrase
from pipeline.text.lexicon import load_lexicon
from pipeline.text.nlp import load_engine


def mentions_of(text: str) -> list[dict]:
    """The text engine's mention rows of one sentence (offsets relative to it)."""
    return [
        dict(
            h._asdict(),
            modifiers=[{"kind": k, "value": v, "start": a, "end": b} for k, v, a, b in h.modifiers],
        )
        for h in load_engine().analyse([text])[0]
    ]


def read(text: str) -> dict[str, str]:
    return {h.finding: h.status for h in load_engine().analyse([text])[0]}


def flipped(text: str, finding: str, to: str) -> list[tuple[str, str]]:
    return [
        (f.method, f.text)
        for f in flips(text, mentions_of(text))
        if f.finding == finding and f.flipped_status == to
    ]


def gate_ok(original: str, new: str, finding: str, to: str) -> bool:
    expected = {**read(original), finding: to}
    return read(new) == expected


@pytest.mark.parametrize(
    ("sentence", "finding", "to", "method", "result"),
    [
        (
            "There is a small left pleural effusion.",
            "pleural_effusion",
            "absent",
            "there_is_no",
            "There is no left pleural effusion.",
        ),
        ("No pneumothorax.", "pneumothorax", "present", "cue", "There is pneumothorax."),
        (
            "No consolidation, effusion, or pneumothorax.",
            "pleural_effusion",
            "present",
            "list",
            "There is effusion, but no consolidation or pneumothorax.",
        ),
        ("Heart size is normal.", "cardiomegaly", "present", "qualifier", "Heart size is enlarged."),
        ("The heart is enlarged.", "cardiomegaly", "absent", "qualifier", "The heart is not enlarged."),
        (
            "Small bilateral pleural effusions are seen.",
            "pleural_effusion",
            "absent",
            "no_prefix",
            "No bilateral pleural effusions are seen.",
        ),
        (
            "Cardiomegaly and small left effusion.",
            "pleural_effusion",
            "absent",
            "move_out",
            "Cardiomegaly, but no left effusion.",
        ),
        ("Possible pneumonia.", "pneumonia", "present", "cue", "There is pneumonia."),
        ("Possible pneumonia.", "pneumonia", "absent", "cue", "No pneumonia."),
        (
            "Opacity in the left lower lobe may represent pneumonia.",
            "pneumonia",
            "present",
            "cue",
            "Opacity in the left lower lobe represents pneumonia.",
        ),
        ("Pneumonia cannot be excluded.", "pneumonia", "absent", "cue", "Pneumonia is not seen."),
        ("Pneumothorax has resolved.", "pneumothorax", "present", "cue", "Pneumothorax has persisted."),
        # a bare deletion would leave the pneumothorax under the first "no"
        (
            "No pleural effusion, no pneumothorax.",
            "pneumothorax",
            "present",
            "cue",
            "No pleural effusion, but there is pneumothorax.",
        ),
        # the modal changes with its cue
        (
            "This could suggest emphysematous bullae.",
            "bullae",
            "present",
            "cue",
            "This is consistent with emphysematous bullae.",
        ),
        # each anchor has its own word for present
        (
            "The mediastinum is normal.",
            "enlarged_cardiomediastinum",
            "present",
            "qualifier",
            "The mediastinum is widened.",
        ),
        (
            "Heart size is normal and lungs are clear.",
            "opacity",
            "present",
            "qualifier",
            "Heart size is normal and lungs are opacified.",
        ),
    ],
)
def test_each_family_rewrites_and_reads_back(sentence, finding, to, method, result):
    got = flipped(sentence, finding, to)
    assert (method, result) in got, got
    assert gate_ok(sentence, result, finding, to)


def test_a_list_gives_one_flip_per_finding_and_keeps_the_others_absent():
    sentence = "No consolidation, effusion, or pneumothorax."
    outs = {f.finding: f.text for f in flips(sentence, mentions_of(sentence))}
    assert set(outs) == {"consolidation", "pleural_effusion", "pneumothorax"}
    for finding, text in outs.items():
        assert gate_ok(sentence, text, finding, "present"), text


def test_uncertain_flips_both_ways_and_what_cannot_flip_says_so():
    targets = {f.flipped_status for f in flips("Possible pneumonia.", mentions_of("Possible pneumonia."))}
    assert targets == {"present", "absent"}
    # a statement has no negated form the engine would read; it is recorded as method none
    none = flips("Normal chest radiograph.", mentions_of("Normal chest radiograph."))
    assert none and all(f.method == "none" and f.text == "" for f in none)


@pytest.mark.parametrize(
    ("sentence", "finding"),
    [
        # one cue decides two findings: flipping it would flip both
        ("Aspiration or edema are also possible.", "aspiration"),
        # an uncertain list is a differential, not a list of denials
        ("Linear opacity at the right base may represent atelectasis or scarring.", "atelectasis"),
        # "clear of" denies what follows; "the lungs are opacified of" is no sentence
        ("The lungs are clear of focal airspace disease.", "opacity"),
        ("The lungs are clear of focal airspace disease.", "airspace_disease"),
        # the pleural spaces and bones have no present form the engine reads as their finding
        ("The pleural spaces are clear.", "pleural_effusion"),
        ("Bony thorax and soft tissues are unremarkable.", "fracture"),
        # "not" would reach the aorta; "mildly to not moderately" is no sentence
        ("The heart is enlarged with unfolding of the aorta.", "cardiomegaly"),
        ("Heart size mildly to moderately enlarged.", "cardiomegaly"),
        # "degenerative" is not a whole item of "mild degenerative changes in the spine"
        (
            "The osseous structures are intact, with mild degenerative changes in the thoracic spine.",
            "degenerative_changes",
        ),
    ],
)
def test_what_would_flip_more_than_its_finding_or_break_the_sentence_gets_no_flip(sentence, finding):
    got = [f for f in flips(sentence, mentions_of(sentence)) if f.finding == finding]
    assert got and all(f.method == "none" and f.text == "" for f in got), got


def test_a_denial_names_the_site_that_refined_the_finding():
    site = [{"kind": "anatomy", "value": "rib", "start": 0, "end": 4}]
    assert site_phrase("rib_fracture", "fractures", site) == "fractures of the rib"
    assert site_phrase("rib_fracture", "rib fractures", site) == "rib fractures"
    assert (
        site_phrase("pleural_effusion", "effusion", [{"kind": "anatomy", "value": "lung_base"}]) == "effusion"
    )
    sentence = "There are healed fractures of the right 5th and 6th ribs."
    (m,) = [m for m in mentions_of(sentence) if m["finding"] == "rib_fracture"]
    phrase = site_phrase(m["finding"], m["text"], m["modifiers"])
    assert read(denial(phrase, "No evidence of {finding}.")) == {"rib_fracture": "absent"}


SENTENCES = [
    "There is a small left pleural effusion.",
    "No pneumothorax.",
    "No consolidation, effusion, or pneumothorax.",
    "Heart size is normal.",
    "The heart is enlarged.",
    "Mild pulmonary edema.",
    "There is no pleural effusion.",
    "Pneumothorax has resolved.",
    "Patchy opacity at the right base.",
    "Cardiomegaly and small left effusion.",
]


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(SENTENCES), st.data())
def test_flipping_twice_restores_the_original_status(sentence, data):
    # present <-> absent flips invert each other; an uncertain finding flips to both and has no
    # way back (no rewrite makes a statement hedged)
    passing = [
        f
        for f in flips(sentence, mentions_of(sentence))
        if f.text
        and f.original_status != "uncertain"
        and gate_ok(sentence, f.text, f.finding, f.flipped_status)
    ]
    f = data.draw(st.sampled_from(passing))
    assert f.text != sentence  # no pair maps a sentence to itself
    back = [
        g.text
        for g in flips(f.text, mentions_of(f.text))
        if g.finding == f.finding and g.flipped_status == f.original_status and g.text
    ]
    assert any(read(t).get(f.finding) == f.original_status for t in back), (f.text, back)


def test_variants_strip_comparisons_and_fill_templates():
    assert clean("Comparison is made to the prior study.", has_finding=False) is None
    assert clean("No significant change.", has_finding=False) is None
    assert clean("Small left effusion is unchanged since the prior study.", has_finding=True) == (
        "Small left effusion is present."
    )
    assert clean("New right lower lobe opacity.", has_finding=True) == "Right lower lobe opacity."
    assert denial("effusions", "No {finding} {is} seen.") == "No effusions are seen."
    assert denial("ET tube", "{Finding} {is} not seen.") == "ET tube is not seen."
    rules = load_rules()
    assert not set(rules.denials["train"]) & set(rules.denials["benchmark"])
    for template in (*rules.denials["train"], *rules.denials["benchmark"]):
        for phrase, finding in (("pleural effusion", "pleural_effusion"), ("pneumothorax", "pneumothorax")):
            assert read(denial(phrase, template)) == {finding: "absent"}, template


def tables_for(reports: list[tuple[str, str, list[str]]]) -> dict[str, pa.Table]:
    """reports, sections, sentences and mentions tables for (report_id, split, sentences)."""
    rep, sec, sen, men = [], [], [], []
    for rid, split, sents in reports:
        text = ""
        sec.append({"report_id": rid, "section_idx": 0, "is_labeled": True})
        for i, s in enumerate(sents):
            start = len(text)
            text += s + " "
            sen.append({"report_id": rid, "sentence_idx": i, "section_idx": 0, "start": start, "text": s})
            for m in mentions_of(s):
                men.append(
                    {
                        **m,
                        "report_id": rid,
                        "sentence_idx": i,
                        "start": m["start"] + start,
                        "end": m["end"] + start,
                        "cue_start": None if m["cue_start"] is None else m["cue_start"] + start,
                        "cue_end": None if m["cue_end"] is None else m["cue_end"] + start,
                        "modifiers": [
                            {**w, "start": w["start"] + start, "end": w["end"] + start}
                            for w in m["modifiers"]
                        ],
                    }
                )
        rep.append({"report_id": rid, "subject_id": "p1", "study_id": rid, "split": split, "text": text})
    return {
        "reports": pa.Table.from_pylist(rep),
        "sections": pa.Table.from_pylist(sec),
        "sentences": pa.Table.from_pylist(sen),
        "mentions": pa.Table.from_pylist(men),
    }


REPORTS = [
    (
        "r1",
        "test",
        [
            "Comparison is made to the prior study.",
            "There is a small left pleural effusion.",
            "Mild cardiomegaly is unchanged.",
            "No pneumothorax.",
        ],
    ),
    ("r2", "train", ["Possible right lower lobe pneumonia.", "No consolidation, effusion, or pneumothorax."]),
    ("r3", "train", ["Technically limited study."]),
]


def test_rewrite_is_deterministic_for_a_seed_and_variants_are_well_formed():
    tables = tables_for(REPORTS)
    a = hardneg_rewrite(tables, config=HardnegConfig(seed=0))
    assert a["hardneg_candidates"].equals(
        hardneg_rewrite(tables, config=HardnegConfig(seed=0))["hardneg_candidates"]
    )
    assert a["rejects"].column("row_id").to_pylist() == ["r3"]  # nothing to flip or negate
    rows = a["hardneg_candidates"].to_pylist()
    denials = [r for r in rows if r["kind"] == "denial"]
    assert {(r["report_id"], r["finding"]) for r in denials} == {
        ("r1", "pleural_effusion"),
        ("r1", "cardiomegaly"),
    }
    for r in denials:
        assert r["template_set"] == "benchmark" and r["location"] in LOCATIONS
        assert "Comparison" not in r["report"] and "unchanged" not in r["report"]
        assert r["flipped"] in r["negation"] and all(s in r["negation"] for s in r["texts"])
        assert r["chosen"] not in r["omitted"]
    seeds = {
        tuple(
            (r["method"], r["location"])
            for r in hardneg_rewrite(tables, config=HardnegConfig(seed=s))["hardneg_candidates"].to_pylist()
            if r["kind"] == "denial"
        )
        for s in range(6)
    }
    assert len(seeds) > 1  # the seed draws templates and places


def test_a_denial_goes_first_middle_last_or_add():
    assert locations(0) == ("add",) and locations(1) == ("first", "last")
    assert set(locations(2)) == set(locations(5)) == {"first", "middle", "last"}
    assert place([], "D.", "add") == ["D."]
    assert place(["A."], "D.", "first") == ["D.", "A."] and place(["A."], "D.", "last") == ["A.", "D."]
    for n in range(2, 7):
        out = place([f"s{i}." for i in range(n)], "D.", "middle")
        assert 0 < out.index("D.") < n  # strictly inside: a sentence on each side
    for sentences, location in (([], "first"), (["A."], "middle"), (["A."], "add"), (["A.", "B."], "add")):
        with pytest.raises(ValueError, match="denial beside"):
            place(sentences, "D.", location)


ALONE = [
    # edema is all that is left once comparisons go: the denial alone ("add")
    ("r4", "test", ["Comparison is made to the prior study.", "Moderate pulmonary edema."]),
    # one sentence beside each denial: first or last, never a "middle" that would be first
    ("r5", "test", ["Small right pneumothorax.", "Heart size is normal."]),
    ("r6", "test", ["Small hiatal hernia.", "Small right pneumothorax.", "No effusion."]),
    ("r7", "train", ["Moderate pulmonary edema.", "No effusion."]),
]


def test_variants_place_the_denial_by_what_is_left():
    for seed in range(8):
        rows = hardneg_rewrite(tables_for(ALONE), config=HardnegConfig(seed=seed))["hardneg_candidates"]
        denials = {(r["report_id"], r["finding"]): r for r in rows.to_pylist() if r["kind"] == "denial"}
        add = denials[("r4", "pulmonary_edema")]
        assert add["location"] == "add" and add["omitted"] == ""
        assert add["negation"] == add["flipped"] and add["texts"] == [add["flipped"]]
        assert add["expected"] == ["pulmonary_edema=absent"]
        assert denials[("r5", "pneumothorax")]["location"] in ("first", "last")
        for r in denials.values():
            assert r["location"] in locations(len(r["texts"]) - 1)
            assert r["negation"] == " ".join(r["texts"])


def findings_of(tables: dict[str, pa.Table]) -> pa.Table:
    """A ``findings`` table for ``tables_for``'s mentions: each finding with the lexicon's class."""
    lexicon = load_lexicon()
    pairs = sorted({(m["report_id"], m["finding"]) for m in tables["mentions"].to_pylist()})
    return pa.table(
        {
            "report_id": [r for r, _ in pairs],
            "finding": [f for _, f in pairs],
            "observation": pa.array([lexicon.findings[f].observation for _, f in pairs], pa.string()),
        }
    )


def test_the_gate_gives_cxr_align_the_chexpert_class_and_leaves_out_findings_without_one():
    tables = tables_for(REPORTS + ALONE)
    candidates = hardneg_rewrite(tables, config=HardnegConfig(seed=0))["hardneg_candidates"]
    readings = pa.table(  # a reread that reads every text as intended
        {"candidate_id": candidates.column("candidate_id"), "observed": candidates.column("expected")}
    )
    out = hardneg(
        {"hardneg_candidates": candidates, "hardneg_readings": readings, "findings": findings_of(tables)},
        config=GateConfig(),
    )
    negated = out["negated_reports"].to_pylist()
    align = {(r["report_id"], r["finding"]): r for r in out["cxr_align"].to_pylist()}
    assert {k: r["chosen"] for k, r in align.items()} == {
        ("r1", "cardiomegaly"): "Cardiomegaly",
        ("r1", "pleural_effusion"): "Pleural Effusion",
        ("r4", "pulmonary_edema"): "Edema",
        ("r5", "pneumothorax"): "Pneumothorax",
        ("r6", "pneumothorax"): "Pneumothorax",
    }
    assert set(r["chosen"] for r in align.values()) <= ALIGN_CLASSES and "No Finding" not in ALIGN_CLASSES
    assert len(ALIGN_CLASSES) == 13
    # hiatal hernia has no CheXpert class: a benchmark negated report, but no CXR-Align row
    by_key = {(r["report_id"], r["finding"]): r for r in negated}
    assert by_key[("r6", "hiatal_hernia")]["template_set"] == "benchmark"
    assert by_key[("r7", "pulmonary_edema")]["template_set"] == "train"
    # negated_reports keeps the finding's phrase as the report writes it
    assert by_key[("r1", "pleural_effusion")]["chosen"] == "pleural effusion"
    assert align[("r4", "pulmonary_edema")]["location"] == "add"
    assert align[("r4", "pulmonary_edema")]["negation"] == by_key[("r4", "pulmonary_edema")]["denial"]


def test_demo_run_gate_and_outputs(demo_run, tmp_path):
    out = str(demo_run)
    pairs = read_dataset(out, "negation_pairs").to_pylist()
    assert pairs
    for p in pairs:
        assert p["original"] != p["flipped"]
        assert read(p["flipped"]).get(p["finding"]) == p["flipped_status"]
    # de-duplicated: a report gives one pair per sentence text, finding and flipped status
    content = [(p["report_id"], p["original"], p["finding"], p["flipped_status"]) for p in pairs]
    assert len(content) == len(set(content))
    candidates = read_dataset(out, "hardneg_candidates").num_rows
    rejects = read_dataset(out, "rejects").to_pandas()
    gate_rejects = rejects[rejects.stage == "hardneg"]
    negated = read_dataset(out, "negated_reports").to_pylist()
    assert candidates == len(pairs) + len(negated) + len(gate_rejects)
    assert set(gate_rejects.reason_code) <= {"flip_failed"}
    manifest = json.loads((demo_run / "negation_pairs" / "_manifest.json").read_text())
    rows = manifest["stage_rows"]
    assert rows["rows_in"] == rows["rows_out"] + rows["rows_rejected"] == candidates
    align = read_dataset(out, "cxr_align").to_pylist()
    bench = {(r["report_id"], r["finding"]) for r in negated if r["template_set"] == "benchmark"}
    classes = {
        (f["report_id"], f["finding"]): f["observation"] for f in read_dataset(out, "findings").to_pylist()
    }
    # every benchmark negated report whose finding has a CheXpert class, that class as `chosen`
    assert {(r["report_id"], r["finding"]) for r in align} == {k for k in bench if classes[k] is not None}
    assert bench - {(r["report_id"], r["finding"]) for r in align}  # the demo has some with none
    assert all(r["chosen"] == classes[(r["report_id"], r["finding"])] in ALIGN_CLASSES for r in align)
    assert all(r["split"] == "test" for r in align)
    assert all(r["split"] != "test" for r in negated if r["template_set"] == "train")
    # the denial's place, as CXR-Align has it
    denials = {(r["report_id"], r["finding"]): r["denial"] for r in negated}
    for r in [*align, *negated]:
        d, omitted, negation = denials[(r["report_id"], r["finding"])], r["omitted"], r["negation"]
        expected = {
            "add": d,
            "first": f"{d} {omitted}",
            "last": f"{omitted} {d}",
        }.get(r["location"])
        if r["location"] == "middle":
            assert not negation.startswith(d) and not negation.endswith(d), r
            assert negation.replace(f" {d} ", " ") == omitted, r
        else:
            assert negation == expected, r
        assert (omitted == "") == (r["location"] == "add"), r
    assert {r["location"] for r in negated} == set(LOCATIONS)
    summary = export_cxr_align(out, str(tmp_path / "cxr_align.json"))
    data = json.loads((tmp_path / "cxr_align.json").read_text())
    assert list(data) == ["mimic"] and summary.keyed_by == "image_id"
    items = data["mimic"]
    assert len(items) == summary.items and summary.rows == len(align) > 0
    assert summary.items + summary.no_image + summary.extra_rows == len(align)
    assert summary.no_class == len(bench) - len(align)
    images = {
        m["image_id"]: m["report_id"]
        for m in read_dataset(out, "images_meta", ["image_id", "report_id"]).to_pylist()
    }
    rows = {(r["report_id"], r["finding"]): r for r in align}
    for image_id, item in items.items():
        assert set(item) == {"report", "chosen", "negation", "omitted", "location", "report_id", "finding"}
        assert all(isinstance(v, str) for v in item.values())
        assert images[image_id] == item["report_id"]
        row = rows[(item["report_id"], item["finding"])]
        assert {k: row[k] for k in item} == item


def write_run(out, datasets: dict[str, list[dict]]) -> str:
    """A run folder holding one hand-built part per dataset (what the exporter reads)."""
    for name, rows in datasets.items():
        (out / name).mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows), out / name / "part-00000.parquet")
    return str(out)


def align_row(report_id: str, finding: str, chosen: str, location: str = "first") -> dict:
    omitted = "" if location == "add" else "Heart size is normal."
    denial = f"No {finding} is seen."
    negation = {"first": f"{denial} {omitted}", "last": f"{omitted} {denial}", "add": denial}[location]
    return {
        "report_id": report_id,
        "finding": finding,
        "report": f"There is {finding}. {omitted}".strip(),
        "chosen": chosen,
        "negation": negation,
        "omitted": omitted,
        "location": location,
    }


def test_export_keys_each_image_by_its_report_rows(tmp_path, capsys):
    align = [
        align_row("s1", "pleural_effusion", "Pleural Effusion"),
        align_row("s1", "pneumothorax", "Pneumothorax", "last"),
        align_row("s2", "pulmonary_edema", "Edema", "add"),
        align_row("s3", "cardiomegaly", "Cardiomegaly"),
    ]
    images = [
        {"image_id": "d-lat", "report_id": "s1", "view_position": "LATERAL"},
        {"image_id": "d-pa", "report_id": "s1", "view_position": "PA"},
        {"image_id": "d-ap", "report_id": "s2", "view_position": "AP"},
        {"image_id": "d-x", "report_id": "s2", "view_position": None},
        {"image_id": "d-other", "report_id": "s9", "view_position": "PA"},
    ]
    out = write_run(
        tmp_path / "run",
        {
            "reports": [{"report_id": r, "source": "mimic_cxr"} for r in ("s1", "s2", "s3", "s9")],
            "cxr_align": align,
            "images_meta": images,
            "negated_reports": [{"template_set": t} for t in ["benchmark"] * 6 + ["train"] * 3],
        },
    )
    path = tmp_path / "cxr_align.json"
    summary = export_cxr_align(out, str(path))
    data = json.loads(path.read_text())
    # frontal first: the PA gets s1's first row by finding, the lateral its second; s2's one row
    # goes to its AP view; s3 has no image
    assert {k: (v["report_id"], v["finding"]) for k, v in data["mimic"].items()} == {
        "d-pa": ("s1", "pleural_effusion"),
        "d-lat": ("s1", "pneumothorax"),
        "d-ap": ("s2", "pulmonary_edema"),
    }
    assert data["mimic"]["d-ap"] == align[2]
    assert data["mimic"]["d-ap"]["location"] == "add" and data["mimic"]["d-ap"]["omitted"] == ""
    assert (summary.items, summary.rows, summary.no_image, summary.extra_rows, summary.no_class) == (
        3,
        4,
        1,
        0,
        2,
    )
    assert main(["export", out, str(path), "--dataset", "mimic-demo"]) == 0
    assert list(json.loads(path.read_text())) == ["mimic-demo"]
    printed = capsys.readouterr().out
    assert "wrote 3 CXR-Align items of 4 rows" in printed and "1 rows of reports with no image" in printed
    assert main(["export"]) == 2 and main(["export", str(tmp_path / "none")]) == 1


def test_export_without_images_keys_by_report_id(tmp_path):
    align = [
        align_row("r1", "cardiomegaly", "Cardiomegaly"),
        align_row("r1", "pleural_effusion", "Pleural Effusion"),
        align_row("r2", "pneumothorax", "Pneumothorax", "last"),
    ]
    out = write_run(
        tmp_path / "run",
        {"reports": [{"report_id": r, "source": "table"} for r in ("r1", "r2")], "cxr_align": align},
    )
    data, summary = published_items(out)
    assert {k: v["finding"] for k, v in data["table"].items()} == {"r1": "cardiomegaly", "r2": "pneumothorax"}
    assert (summary.keyed_by, summary.items, summary.extra_rows, summary.no_class) == ("report_id", 2, 1, 0)


def test_golden(demo_run, golden):
    pairs = read_dataset(str(demo_run), "negation_pairs").to_pylist()
    rows = [
        ["report_id", "sentence_idx", "finding", "original_status", "flipped_status", "method", "flipped"]
    ]
    rows += sorted(
        [
            p["report_id"],
            str(p["sentence_idx"]),
            p["finding"],
            p["original_status"],
            p["flipped_status"],
            p["method"],
            p["flipped"],
        ]
        for p in pairs
    )
    golden("hardneg_pairs", rows)
    align = read_dataset(str(demo_run), "cxr_align").to_pylist()
    rows = [["report_id", "finding", "chosen", "location", "negation", "omitted"]]
    rows += sorted(
        [r["report_id"], r["finding"], r["chosen"], r["location"], r["negation"], r["omitted"]] for r in align
    )
    golden("cxr_align", rows)


@pytest.mark.shared_data
def test_openi_reports_flip_and_read_back(shared_data, dask_client, tmp_path):
    """The real Open-i reports through ingest, parse, extract and the three hardneg stages."""
    from pipeline.core.config import compose_run
    from pipeline.core.registry import get_stage
    from pipeline.core.runner import Runner

    cfg = compose_run(
        [
            "dag=labels",
            "dataset=table",
            f"dataset.path={shared_data / 'openi' / 'reports.csv'}",
            "dataset.id_column=uid",
            "dataset.text_columns=[indication,comparison,findings,impression]",
            "stages.parse.labeled=findings_and_impression",
            f"out={tmp_path / 'run'}",
            "stages.ingest.part_size=700",
        ]
    )
    runner = Runner(cfg.out, dask_client)
    wanted = ("ingest", "parse", "extract", "hardneg_rewrite", "reread", "hardneg")
    for name in wanted:
        runner.run_stage(get_stage(name), cfg.stage_config(name))
    out = cfg.out
    cand = read_dataset(out, "hardneg_candidates", ["candidate_id", "kind", "method"]).to_pandas()
    pairs = read_dataset(out, "negation_pairs").to_pylist()
    negated = read_dataset(out, "negated_reports").num_rows
    rejects = read_dataset(out, "rejects").to_pandas()
    gate = rejects[rejects.stage == "hardneg"]
    assert len(cand) == len(pairs) + negated + len(gate)
    tried = (cand.method != "none").sum()
    failed = (~gate.detail.str.startswith("no rewrite family")).sum()
    # the contract: at least 99% of the rewrites tried read back as intended
    assert tried > 10_000 and failed / tried < 0.01, (failed, tried)
    assert {"cue", "list", "qualifier", "there_is_no", "no_prefix", "move_out"} <= {
        p["method"] for p in pairs
    }
    assert all(p["original"] != p["flipped"] for p in pairs)
    assert negated > 3_000
    # Open-i has no split column: no report is a test report, so no CXR-Align rows
    assert read_dataset(out, "cxr_align", ["report_id"]).num_rows == 0
