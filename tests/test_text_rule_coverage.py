"""The CheXpert labeler's and NegBio's negation and uncertainty rules, family by family, on our engine.

One case per rule family (two where a family has two readings): a sentence of our own that the
family is written to catch, the finding, and the status a radiologist would give, which is the
labeler's unless we differ on purpose. The id names the first rule of the family
(``chexpert.post:43`` is line 43 of the labeler's ``patterns/post_negation_uncertainty.txt``;
``negbio2.post:36`` is id 36 of NegBio2's ``post_negation_uncertainty.yml``); the lexicon README's
"Coverage of the CheXpert labeler's and NegBio's rules" lists every rule of each family. The rule
files themselves are not read here.

kind: ``covered`` (we read it as the rule does), ``deliberate`` (we differ on purpose: the expected
status is our documented reading), ``gap`` (strict xfail: we differ and the rule is right; fix the
termset, then drop the mark). ``None``: the finding is not mentioned at all.
"""

from __future__ import annotations

import pytest

from pipeline.text.nlp import MentionHit, load_engine

COVERED, DELIBERATE, GAP = "covered", "deliberate", "gap"


def case(rule: str, sentence: str, finding: str, expected: str | None, kind: str = COVERED, why: str = ""):
    """One parametrised case; a gap is a strict xfail whose reason says what is missing."""
    marks = [pytest.mark.xfail(strict=True, reason=f"gap: {why}")] if kind == GAP else []
    return pytest.param(sentence, finding, expected, kind, id=f"{rule}/{kind}", marks=marks)


CASES = [
    # --- pre-negation uncertainty (the labeler's first pass) -----------------------------------------
    # cannot-exclude: "cannot exclude" governing the finding
    case(
        "chexpert.pre:4 cannot-exclude",
        "Cannot exclude a small left pleural effusion.",
        "pleural_effusion",
        "uncertain",
    ),
    # not-excluded: the finding is the subject of a negated or "cannot" "excluded"
    case(
        "chexpert.pre:7 not-excluded#a", "A small pneumothorax is not excluded.", "pneumothorax", "uncertain"
    ),
    case("chexpert.pre:7 not-excluded#b", "Pneumonia cannot be excluded.", "pneumonia", "uncertain"),
    # no-new: "no new" (or "no new area of") before the finding: an old one may persist
    # deliberate: we read 'no new X' as a denial (tests/test_text_extract.py: 'No new effusion.' absent)
    case("chexpert.pre:10 no-new", "No new area of consolidation.", "consolidation", "absent", DELIBERATE),
    # cannot-rule-out: "cannot rule out" governing the finding
    case("chexpert.pre:19 cannot-rule-out", "Cannot rule out early pneumonia.", "pneumonia", "uncertain"),
    # no-evidence-to-rule-out: "no evidence to rule out" the finding: the "no" must not deny it
    case(
        "chexpert.pre:23 no-evidence-to-rule-out#a",
        "No evidence to rule out pneumonia.",
        "pneumonia",
        "uncertain",
    ),
    case(
        "chexpert.pre:23 no-evidence-to-rule-out#b",
        "There is no evidence to rule out pneumonia.",
        "pneumonia",
        "uncertain",
    ),
    # --- negation ------------------------------------------------------------------------------------
    # no-definite: "no definite" before the finding
    case("chexpert.neg:2 no-definite", "No definite pneumothorax.", "pneumothorax", "absent"),
    # no-obvious: "no obvious (associated)" before the finding
    case("chexpert.neg:5 no-obvious", "No obvious associated pneumothorax.", "pneumothorax", "absent"),
    # normal-x: "normal"/"unremarkable" as the finding's modifier or predicate ("appears/remains normal",
    # "shows a normal X", "structures appear normal")
    case(
        "chexpert.neg:8 normal-x#a",
        "The mediastinal contours are unremarkable.",
        "enlarged_cardiomediastinum",
        "absent",
    ),
    case(
        "chexpert.neg:8 normal-x#b", "The study shows a normal cardiac silhouette.", "cardiomegaly", "absent"
    ),
    # normal-appearance-of: "normal/unremarkable appearance of" the structure
    case(
        "chexpert.neg:22 normal-appearance-of",
        "Normal appearance of the cardiomediastinal silhouette.",
        "enlarged_cardiomediastinum",
        "absent",
    ),
    # denied-coordination: the finding coordinated with a denied one ("no X or Y", "..., no Y"), and
    # parses where "no" hangs off the finding as advmod/dep
    case(
        "chexpert.neg:13 denied-coordination#a",
        "No pleural effusion or pneumothorax.",
        "pneumothorax",
        "absent",
    ),
    case(
        "chexpert.neg:13 denied-coordination#b",
        "Stable cardiomegaly and no pneumothorax.",
        "pneumothorax",
        "absent",
    ),
    # within-normal-limits: "within normal limits", "at the upper limits of normal", "remains within
    # normal limits"
    case(
        "chexpert.neg:15 within-normal-limits#a",
        "Heart size is at the upper limits of normal.",
        "cardiomegaly",
        "absent",
    ),
    case(
        "chexpert.neg:15 within-normal-limits#b",
        "The cardiac silhouette remains within normal limits.",
        "cardiomegaly",
        "absent",
    ),
    # dead-exclude-dependency: a pattern on a dependency named "exclude" (no parser emits it: never
    # fires); read as "exclude X"
    case(
        "chexpert.neg:16 dead-exclude-dependency", "Pneumothorax has been excluded.", "pneumothorax", "absent"
    ),
    # silhouette-obscured: the cardiac silhouette is obscured: its mention is denied
    case(
        "chexpert.neg:19 silhouette-obscured",
        "The cardiac silhouette is obscured by a large left effusion.",
        "cardiomegaly",
        "uncertain",
    ),
    # normal-vascularity: "normal pulmonary vascularity"
    case(
        "chexpert.neg:40 normal-vascularity", "Normal pulmonary vascularity.", "vascular_congestion", "absent"
    ),
    # modifier-of-denied-noun: the finding word modifies a denied noun ("no consolidative opacity", "no
    # acute X findings", "without evidence of X change")
    case(
        "chexpert.neg:25 modifier-of-denied-noun",
        "No focal consolidative opacity.",
        "consolidation",
        "absent",
    ),
    # absent: the finding is the subject of "absent"
    case("chexpert.neg:30 absent", "Pneumothorax is absent.", "pneumothorax", "absent"),
    # rather-than: "rather than" the finding
    case("chexpert.neg:53 rather-than", "Atelectasis rather than pneumonia.", "pneumonia", "absent"),
    # without: "without" the finding
    case("chexpert.neg:54 without", "Cardiomegaly without pulmonary edema.", "pulmonary_edema", "absent"),
    # cleared: "clear of"/"clearing of" the finding, the finding "has cleared", a structure "is clear"
    case("chexpert.neg:56 cleared#a", "Interval clearing of the left basilar opacity.", "opacity", "absent"),
    case(
        "chexpert.neg:56 cleared#b",
        "The left lower lobe consolidation has cleared.",
        "consolidation",
        "absent",
    ),
    case("chexpert.neg:56 cleared#c", "The costophrenic angles are clear.", "pleural_effusion", "absent"),
    # rule-out: "rule out" the finding (the labeler's negation; "cannot rule out" is caught before it)
    # deliberate: README choices: rule out / evaluate for X is a question
    case("chexpert.neg:57 rule-out", "Rule out pneumonia.", "pneumonia", "uncertain", DELIBERATE),
    # resolution-of: "free/disappearance/resolution/removal of" the finding
    case(
        "chexpert.neg:60 resolution-of#a",
        "Interval resolution of the left effusion.",
        "pleural_effusion",
        "absent",
    ),
    case("chexpert.neg:60 resolution-of#b", "Free of effusion.", "pleural_effusion", "absent"),
    # history-of: "history of" the finding (same rule line)
    # deliberate: a chronic condition named as history is present
    case(
        "chexpert.neg:60 history-of",
        "Interstitial opacities consistent with a history of pulmonary fibrosis.",
        "fibrosis",
        "present",
        DELIBERATE,
    ),
    # drainage-of: "drainage of" the finding (same rule line)
    case(
        "chexpert.neg:60 drainage-of",
        "Interval drainage of the right pleural effusion.",
        "pleural_effusion",
        "absent",
    ),
    # negative-for: "negative for" the finding
    case("chexpert.neg:61 negative-for", "Negative for pneumothorax.", "pneumothorax", "absent"),
    # exclude: any "exclude" governing the finding ("X is excluded", "to exclude X")
    case("chexpert.neg:64 exclude#a", "Pneumothorax is excluded.", "pneumothorax", "absent"),
    # deliberate: a question, as 'rule out'
    case("chexpert.neg:64 exclude#b", "To exclude pneumonia.", "pneumonia", "uncertain", DELIBERATE),
    # resolved: the finding "has resolved", "resolved X"
    case(
        "chexpert.neg:69 resolved#a", "The right pleural effusion has resolved.", "pleural_effusion", "absent"
    ),
    case("chexpert.neg:69 resolved#b", "Resolved pneumothorax.", "pneumothorax", "absent"),
    # there-is-no: "there is no" the finding
    case("chexpert.neg:72 there-is-no", "There is no pleural effusion.", "pleural_effusion", "absent"),
    # no-evidence-of: "no/without evidence (or findings) of/for" the finding, "without evidence seen for"
    case("chexpert.neg:75 no-evidence-of#a", "Without evidence of pneumothorax.", "pneumothorax", "absent"),
    case("chexpert.neg:75 no-evidence-of#b", "No evidence for pneumothorax.", "pneumothorax", "absent"),
    # no-development-of: "no/without development of" the finding
    case(
        "chexpert.neg:78 no-development-of",
        "No development of pleural effusion.",
        "pleural_effusion",
        "absent",
    ),
    # no-focus-of: "no focus of" the finding
    case("chexpert.neg:90 no-focus-of", "No focus of consolidation.", "consolidation", "absent"),
    # no-moderate-to: "no moderate to (large)" finding
    case("chexpert.neg:94 no-moderate-to", "No moderate to large effusion.", "pleural_effusion", "absent"),
    # no-evidence-of-developing: "no/without evidence of developing" finding
    case(
        "chexpert.neg:97 no-evidence-of-developing",
        "No evidence of developing pneumonia.",
        "pneumonia",
        "absent",
    ),
    # no-focal: "no focal" finding (a parse where "no" is the subject)
    case("chexpert.neg:101 no-focal", "No focal consolidation.", "consolidation", "absent"),
    # previously-demonstrated: the finding "previously demonstrated/visualized"
    # deliberate: a finding seen before and described now is there
    case(
        "chexpert.neg:104 previously-demonstrated",
        "The previously demonstrated left pleural effusion is smaller.",
        "pleural_effusion",
        "present",
        DELIBERATE,
    ),
    # no-nn-to-suggest: "(there is) no <noun> to suggest/explain" the finding
    case(
        "chexpert.neg:107 no-nn-to-suggest",
        "There is no opacity to suggest pneumonia.",
        "pneumonia",
        "absent",
    ),
    # no-area-of: "no area of" the finding
    case("chexpert.neg:113 no-area-of", "No area of consolidation.", "consolidation", "absent"),
    # not-enlarged: the structure "is not enlarged"
    case("chexpert.neg:116 not-enlarged", "The heart is not enlarged.", "cardiomegaly", "absent"),
    # removed: the device "removed"
    case("chexpert.neg:122 removed", "The chest tube has been removed.", "chest_tube", "absent"),
    # no-longer-seen: the finding "is no longer seen"
    case("chexpert.neg:126 no-longer-seen", "The pneumothorax is no longer seen.", "pneumothorax", "absent"),
    # with-interval-resolution: the finding "with interval resolution"
    case(
        "chexpert.neg:151 with-interval-resolution",
        "Left pleural effusion with interval resolution.",
        "pleural_effusion",
        "absent",
        GAP,
        "no following cue for it",
    ),
    # no-general: "no"/"not" (any neg edge) on the finding
    case("chexpert.neg:154 no-general", "No pneumothorax.", "pneumothorax", "absent"),
    # --- NegBio-only negation rules ------------------------------------------------------------------
    # resolving: NegBio v1: any "resolve/resolving" governing the finding
    # deliberate: a resolving pneumonia is still there
    case(
        "negbio.neg:14 resolving", "Resolving left lower lobe pneumonia.", "pneumonia", "present", DELIBERATE
    ),
    # not-demonstrated: NegBio: "does not demonstrate/visualize" the finding, "X is not demonstrated"
    case("negbio.neg:48 not-demonstrated", "Pneumothorax is not visualized.", "pneumothorax", "absent"),
    # --- post-negation uncertainty -------------------------------------------------------------------
    # stable-silhouette: cardiomediastinal silhouette / heart size "stable", "unchanged", "not changed",
    # "similar to prior", "stable/unchanged appearance/size of", "constant size of"
    # deliberate: stable says nothing about size (lead's tests:
    # test_stable_says_nothing_about_enlargement)
    case(
        "chexpert.post:4 stable-silhouette#a",
        "Stable cardiomediastinal silhouette.",
        "enlarged_cardiomediastinum",
        None,
        DELIBERATE,
    ),
    # deliberate: README choices: 'heart size is stable' no mention
    case("chexpert.post:4 stable-silhouette#b", "Heart size is stable.", "cardiomegaly", None, DELIBERATE),
    # suspicious-for: "suspicious/worrisome/concern/suspicion for" the finding
    case(
        "chexpert.post:23 suspicious-for#a",
        "Right lower lobe opacity, suspicious for pneumonia.",
        "pneumonia",
        "uncertain",
    ),
    case("chexpert.post:23 suspicious-for#b", "Concern for pneumonia.", "pneumonia", "uncertain"),
    # possibly-represent: "possibly represent(s)/reflecting" the finding
    case(
        "chexpert.post:24 possibly-represent",
        "The opacity possibly represents pneumonia.",
        "pneumonia",
        "uncertain",
    ),
    # and-or: "X and/or Y"
    case("chexpert.post:25 and-or", "Atelectasis and/or pneumonia.", "atelectasis", "uncertain"),
    # which-may-represent: "..., which may represent" the finding
    case(
        "chexpert.post:29 which-may-represent",
        "Left basilar opacity, which may represent atelectasis.",
        "atelectasis",
        "uncertain",
    ),
    # versus: "X versus Y" (NegBio v1 denied Y; CheXpert hedges both)
    case("chexpert.post:33 versus", "Left base opacity, atelectasis vs pneumonia.", "pneumonia", "uncertain"),
    # costophrenic-blunting: blunting of the costophrenic angle is hedged
    # deliberate: README choices: own finding, no observation
    case(
        "chexpert.post:37 costophrenic-blunting",
        "Blunting of the left costophrenic angle.",
        "costophrenic_angle_blunting",
        "present",
        DELIBERATE,
    ),
    # less-likely: "less likely" before or after the finding
    case("chexpert.post:38 less-likely#a", "Pneumonia is less likely.", "pneumonia", "uncertain"),
    case(
        "chexpert.post:38 less-likely#b",
        "Less likely pneumonia.",
        "pneumonia",
        "uncertain",
    ),
    # possible: "possible/possibly" attached to the finding
    case("chexpert.post:43 possible", "Possible small left effusion.", "pleural_effusion", "uncertain"),
    # probable-presumably: "probable/presumably" attached to the finding
    case(
        "chexpert.post:43 probable-presumably",
        "Presumably a small right effusion.",
        "pleural_effusion",
        "uncertain",
    ),
    # questionable: "questionable" finding
    case("chexpert.post:43 questionable", "Questionable small pneumothorax.", "pneumothorax", "uncertain"),
    # suspected: "suspect/suspected" finding, "X is suspected", "X suspected"
    case("chexpert.post:43 suspected#a", "Suspected pneumonia.", "pneumonia", "uncertain"),
    case("chexpert.post:43 suspected#b", "Pneumonia is suspected.", "pneumonia", "uncertain"),
    # suspicious-modifier: "suspicious" as the finding's adjective (same rule)
    # deliberate: the nodule is seen; 'suspicious' is for malignancy
    case(
        "chexpert.post:43 suspicious-modifier",
        "Suspicious nodule in the right upper lobe.",
        "lung_nodule",
        "present",
        DELIBERATE,
    ),
    # question: "question (of)", "questioned", "question left" with the finding
    case("chexpert.post:44 question#a", "Question of a small pneumothorax.", "pneumothorax", "uncertain"),
    case(
        "chexpert.post:44 question#b",
        "Questioned pneumothorax.",
        "pneumothorax",
        "uncertain",
    ),
    # may-be: "may/might/would/could (be)" with the finding
    case("chexpert.post:47 may-be", "There may be a small left effusion.", "pleural_effusion", "uncertain"),
    # suggestive-of: "suggestion/suggestive of", "suggest(ing)" the finding
    case("chexpert.post:52 suggestive-of", "Findings suggestive of pneumonia.", "pneumonia", "uncertain"),
    # favor-consider: "favor/consider" the finding
    case("chexpert.post:53 favor-consider", "Consider pneumonia.", "pneumonia", "uncertain"),
    # maybe: "maybe (due to)" the finding
    case(
        "chexpert.post:64 maybe",
        "Opacity maybe due to atelectasis.",
        "atelectasis",
        "uncertain",
    ),
    # modal-represent: "may/could/would/might/can/possibly represent/reflect/indicate/include" the finding
    # (or "the presence of" it)
    case(
        "chexpert.post:67 modal-represent#a", "Opacity may reflect atelectasis.", "atelectasis", "uncertain"
    ),
    case(
        "chexpert.post:67 modal-represent#b",
        "Opacity would represent atelectasis.",
        "atelectasis",
        "uncertain",
    ),
    # secondary-to: "secondary to" the finding (commented "maybe secondary to", written for any)
    # deliberate: a stated cause is asserted
    case(
        "chexpert.post:73 secondary-to",
        "Right basilar opacity secondary to atelectasis.",
        "atelectasis",
        "present",
        DELIBERATE,
    ),
    # due-to: "can/could/may/would/possibly be due to" the finding
    case("chexpert.post:76 due-to#a", "Opacity may be due to atelectasis.", "atelectasis", "uncertain"),
    case(
        "chexpert.post:76 due-to#b",
        "Opacity can be due to atelectasis.",
        "atelectasis",
        "uncertain",
    ),
    # related-to: "can/could/may/would/possibly (be) related to" the finding
    case("chexpert.post:79 related-to", "Opacity may be related to atelectasis.", "atelectasis", "uncertain"),
    # compatible-with: "be/could/may/would compatible with" the finding: "is compatible with" included
    # through "be"
    case(
        "chexpert.post:82 compatible-with#a",
        "The opacity may be compatible with pneumonia.",
        "pneumonia",
        "uncertain",
    ),
    # deliberate: 'compatible with' reads as 'consistent with'
    case(
        "chexpert.post:82 compatible-with#b",
        "The opacity is compatible with pneumonia.",
        "pneumonia",
        "present",
        DELIBERATE,
    ),
    # differential: "differential diagnosis includes" the finding
    case(
        "chexpert.post:89 differential",
        "The differential diagnosis includes pneumonia.",
        "pneumonia",
        "uncertain",
    ),
    # symptoms-of: "correlation for symptoms of", "correlate clinically for (evidence/signs of)" the
    # finding
    case(
        "chexpert.post:99 symptoms-of",
        "Correlate clinically for signs of pneumonia.",
        "pneumonia",
        "uncertain",
    ),
    # borderline-heart: "borderline heart size", "borderline size of the (cardiac) silhouette"
    # deliberate: README choices: borderline is mild cardiomegaly
    case(
        "chexpert.post:102 borderline-heart", "Borderline heart size.", "cardiomegaly", "present", DELIBERATE
    ),
    # may-be-present: the finding "could/might/may/can/possibly be present"
    case(
        "chexpert.post:105 may-be-present",
        "A small effusion may be present.",
        "pleural_effusion",
        "uncertain",
    ),
    # poorly-evaluated: the finding "is poorly/incompletely evaluated"
    case(
        "chexpert.post:108 poorly-evaluated#a",
        "Pneumothorax is poorly evaluated on this supine film.",
        "pneumothorax",
        "uncertain",
    ),
    # deliberate: a seen finding whose work-up is incomplete is present
    case(
        "chexpert.post:108 poorly-evaluated#b",
        "Right apical opacity, incompletely evaluated on this exam.",
        "opacity",
        "present",
        DELIBERATE,
    ),
    # not-well-visualized: the finding "is not (well) visualized/evaluated", "not clearly seen"
    case(
        "chexpert.post:114 not-well-visualized",
        "A small pneumothorax is not well visualized.",
        "pneumothorax",
        "uncertain",
    ),
    # obscured: any "obscure" attached to the finding ("obscured X", "X is obscured", "X obscures ...")
    case(
        "chexpert.post:118 obscured#a",
        "A retrocardiac consolidation may be obscured by the heart.",
        "consolidation",
        "uncertain",
    ),
    # deliberate: the finding that obscures is seen
    case(
        "chexpert.post:118 obscured#b",
        "The effusion obscures the left hemidiaphragm.",
        "pleural_effusion",
        "present",
        DELIBERATE,
    ),
    # could-appear: the finding "could/may/might/can appear", "may (also) have this appearance"
    case(
        "chexpert.post:121 could-appear#a",
        "Pneumonia could appear this way.",
        "pneumonia",
        "uncertain",
    ),
    case(
        "chexpert.post:121 could-appear#b",
        "Atelectasis could also have this appearance.",
        "atelectasis",
        "uncertain",
    ),
    # may-be-consistent: "may/might/can/could be consistent/compatible with" the finding
    case(
        "chexpert.post:124 may-be-consistent",
        "The opacity could be consistent with pneumonia.",
        "pneumonia",
        "uncertain",
    ),
    # not-appreciated: the finding "was not appreciated"
    # deliberate: not appreciated = not seen
    case(
        "chexpert.post:140 not-appreciated",
        "A small pneumothorax was not appreciated.",
        "pneumothorax",
        "absent",
        DELIBERATE,
    ),
    # congestion: vascular/pulmonary congestion, indistinctness, vascular prominence (Edema mentions) are
    # hedged
    # deliberate: README choices: own finding, no observation
    case(
        "chexpert.post:149 congestion",
        "Mild pulmonary vascular congestion.",
        "vascular_congestion",
        "present",
        DELIBERATE,
    ),
    # x-or-y: "X or Y"
    case("chexpert.post:155 x-or-y", "Scarring or atelectasis.", "atelectasis", "uncertain"),
    # --- NegBio2-only uncertainty rules --------------------------------------------------------------
    # cannot-be-identified: NegBio2 regex "X cannot be (entirely/certainly/fully) identified/detected"
    case(
        "negbio2.unc_re:3 cannot-be-identified",
        "A pneumothorax cannot be identified.",
        "pneumothorax",
        "absent",
    ),
    # likely-due-to: NegBio2 (top-level set, not its MIMIC set): "likely due to/related to" the finding
    # deliberate: README choices: likely X is present
    case(
        "negbio2.post:36 likely-due-to",
        "Opacity likely due to atelectasis.",
        "atelectasis",
        "present",
        DELIBERATE,
    ),
    # not-definitive: NegBio2: the finding "is not definitive/definite"
    case(
        "negbio2.post:9 not-definitive",
        "Pneumonia is not definitive.",
        "pneumonia",
        "uncertain",
    ),
    # doubt: NegBio2 regex: "doubt" up to 3 words before the finding
    case("negbio2.unc_re:2 doubt", "Doubt pneumonia.", "pneumonia", "uncertain"),
    # cannot-be-excluded-adverb: NegBio2 regex: "X cannot be (entirely/certainly/fully) excluded"
    case(
        "negbio2.unc_re:3 cannot-be-excluded-adverb#a",
        "Pneumonia cannot be entirely excluded.",
        "pneumonia",
        "uncertain",
    ),
    case(
        "negbio2.unc_re:3 cannot-be-excluded-adverb#b",
        "Pneumonia cannot be certainly excluded.",
        "pneumonia",
        "uncertain",
    ),
    # cannot-be-assessed: NegBio2 regex: "X cannot be evaluated/assessed/confirmed"
    case(
        "negbio2.unc_re:3 cannot-be-assessed",
        "Pneumonia cannot be confirmed.",
        "pneumonia",
        "uncertain",
    ),
    # if-any: NegBio2 regex: "X if any"
    case("negbio2.unc_re:7 if-any", "Small pneumothorax, if any.", "pneumothorax", "uncertain"),
    # unchanged-x: NegBio2 MIMIC set only: "unchanged" up to 3 words before the finding
    # deliberate: an unchanged finding is still there
    case(
        "negbio2.unc_re:0 unchanged-x",
        "Unchanged small left effusion.",
        "pleural_effusion",
        "present",
        DELIBERATE,
    ),
]


@pytest.fixture(scope="module")
def readings() -> dict[str, tuple[MentionHit, ...]]:
    """Every case sentence read once by the process-wide engine (one load, one batch)."""
    sentences = [p.values[0] for p in CASES]
    return dict(zip(sentences, load_engine().analyse(sentences), strict=True))


@pytest.mark.parametrize(("sentence", "finding", "expected", "kind"), CASES)
def test_rule_family(readings, sentence: str, finding: str, expected: str | None, kind: str) -> None:
    hits = readings[sentence]
    statuses = {h.status for h in hits if h.finding == finding}
    seen = [(h.finding, h.status, h.cue, h.rule) for h in hits]
    assert statuses == ({expected} if expected else set()), seen


def test_cases_are_distinct_and_gaps_say_why():
    ids = [p.id for p in CASES]
    assert len(ids) == len(set(ids))
    assert len({p.values[0] for p in CASES}) == len(CASES)
    for p in CASES:
        assert p.values[3] in (COVERED, DELIBERATE, GAP), p.id
        if p.values[3] == GAP:
            assert [m.kwargs["reason"] for m in p.marks][0].startswith("gap: ") and len(p.marks) == 1
