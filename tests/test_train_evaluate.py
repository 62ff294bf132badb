"""Evaluation: metric functions against hand-computed cases and scikit-learn, CXR-Align scoring on
a constructed set, the published CXR-Align reader, and the evaluate stage on real checkpoints
(skipped when unchanged, several checkpoints side by side). The learning signal is asserted on
the make run demo: tests/test_demo_dag.py."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml
from sklearn.metrics import roc_auc_score, roc_curve

from pipeline.core.config import compose_run
from pipeline.core.errors import PipelineError
from pipeline.core.io import read_dataset
from pipeline.core.registry import get_stage
from pipeline.core.runner import Runner
from pipeline.core.schemas import load_schema
from pipeline.hardneg.__main__ import export_cxr_align
from pipeline.train import evaluate as ev
from pipeline.train import metrics

# -- metrics ---------------------------------------------------------------------------------------


def test_auroc_hand_computed_and_ties():
    # positives 0.35, 0.8; negatives 0.1, 0.4: pairs (0.35>0.1, 0.35<0.4, 0.8>0.1, 0.8>0.4) = 3/4
    assert metrics.auroc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    assert metrics.auroc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5  # a tie counts half
    assert metrics.auroc(np.array([1, 0, 0]), np.array([0.9, 0.1, 0.2])) == 1.0
    assert math.isnan(metrics.auroc(np.array([1, 1]), np.array([0.2, 0.3])))  # one class only


@pytest.mark.parametrize("seed", range(5))
def test_auroc_and_roc_curve_match_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    y[:2] = [0, 1]
    scores = np.round(rng.normal(size=300) + y * 0.7, 1)  # rounded: many ties
    assert metrics.auroc(y, scores) == pytest.approx(roc_auc_score(y, scores), abs=1e-12)
    fpr, tpr = metrics.roc_curve(y, scores)
    ref_fpr, ref_tpr, _ = roc_curve(y, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)


def test_average_ranks_match_the_definition():
    np.testing.assert_array_equal(metrics.average_ranks(np.array([3.0, 1.0, 3.0, 2.0])), [3.5, 1, 3.5, 2])


def test_bootstrap_is_seeded_and_resamples_whole_groups():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(50), np.ones(50)]
    s = y + rng.normal(size=100)
    a = metrics.bootstrap_aurocs(y, s, n=200, seed=3)
    np.testing.assert_array_equal(a, metrics.bootstrap_aurocs(y, s, n=200, seed=3))
    lo, hi = metrics.interval(a[:, 0])
    assert lo < metrics.auroc(y, s) < hi and hi - lo < 0.3
    # One group holding every sample: every resample is the full set, the interval collapses.
    one = metrics.bootstrap_aurocs(y, s, groups=np.zeros(100), n=20, seed=0)
    np.testing.assert_allclose(one[:, 0], metrics.auroc(y, s))
    # NaN labels are left out of their column only; a resample lacking a class gives NaN.
    labels = np.c_[y, np.where(np.arange(100) % 2, np.nan, y)]
    both = metrics.bootstrap_aurocs(labels, np.c_[s, s], n=50, seed=1)
    assert both.shape == (50, 2) and np.isfinite(both).all()
    tiny = metrics.bootstrap_aurocs(np.array([0.0, 1.0]), np.array([0.1, 0.9]), n=200, seed=0)
    assert np.isnan(tiny).any() and np.nanmax(tiny) == 1.0


def test_clustered_bootstrap_matches_a_brute_force_loop():
    rng = np.random.default_rng(2)
    sizes = [1, 3, 2, 5, 1, 4]
    groups = np.repeat(np.arange(len(sizes)), sizes)
    y = rng.integers(0, 2, len(groups)).astype(float)
    y[:2] = [0, 1]
    s = rng.normal(size=len(groups)) + y
    got = metrics.bootstrap_aurocs(y, s, groups=groups, n=30, seed=7)[:, 0]
    draw = np.random.default_rng(7)
    for b in range(30):
        chosen = draw.integers(0, len(sizes), len(sizes))
        rows = np.concatenate([np.flatnonzero(groups == g) for g in chosen])
        expected = metrics.auroc(y[rows], s[rows])
        assert (math.isnan(expected) and math.isnan(got[b])) or got[b] == pytest.approx(expected)
    means = metrics.bootstrap_means(y, groups.astype(str), n=30, seed=7)
    draw = np.random.default_rng(7)
    _, inverse = np.unique(groups.astype(str), return_inverse=True)
    for b in range(30):
        chosen = draw.integers(0, len(sizes), (1, len(sizes)))[0]
        rows = np.concatenate([np.flatnonzero(inverse == g) for g in chosen])
        assert means[b] == pytest.approx(y[rows].mean())


def test_truth_mapping_of_labels_and_uncertain():
    labels = np.array([[1.0, 0.0, np.nan, -1.0]], np.float32)
    np.testing.assert_array_equal(ev._truth(labels, "exclude"), [[1, 0, 0, np.nan]])
    np.testing.assert_array_equal(ev._truth(labels, "positive"), [[1, 0, 0, 1]])
    np.testing.assert_array_equal(ev._truth(labels, "negative"), [[1, 0, 0, 0]])
    assert np.isnan(ev._truth(labels, "exclude", np.array([True]))).all()


def _test_set(report_ids: list[str]) -> ev.TestSet:
    n = len(report_ids)
    return ev.TestSet(
        image_ids=[f"i{k}" for k in range(n)],
        report_ids=report_ids,
        texts=[f"report {r}" for r in report_ids],
        labels=np.full((n, len(ev.OBSERVATIONS)), np.nan, np.float32),
        pngs=[b""] * n,
        views=["PA"] * n,
    )


def test_benchmark_and_probe_rows_of_other_splits_are_left_out():
    test = _test_set(["r1", "r1", "r2"])
    align = pa.table(
        {
            "report_id": ["r1", "r9", "r8"],
            "split": ["test", "train", "test"],
            "report": ["a", "b", "c"],
            "negation": ["na", "nb", "nc"],
            "omitted": ["oa", "ob", "oc"],
            "location": ["first", "last", "add"],
            "chosen": ["Edema", "Edema", "Edema"],
        }
    )
    items = ev.align_items_from_table(align, test)
    # r1's row against both of its images; r9 is another split's; r8 is a test row without an image
    assert (items.rows, items.unmatched, items.image, items.group) == (2, 1, [0, 1], ["r1", "r1"])
    pairs = pa.table(
        {
            "report_id": ["r2", "r9", "r7"],
            "split": ["test", "train", "test"],
            "original": ["No effusion.", "x", "y"],
            "flipped": ["Effusion.", "x2", "y2"],
            "method": ["cue", "cue", "cue"],
            "original_status": ["absent", "present", "absent"],
            "flipped_status": ["present", "absent", "present"],
        }
    )
    probe = ev.probe_pairs_from_table(pairs, test)
    assert (probe.rows, probe.unmatched, probe.image, probe.direction) == (2, 1, [2], ["absent->present"])


def test_official_labels_replace_ours_as_truth():
    test = _test_set(["r1", "r2"])
    row = {o: None for o in ev.OBSERVATIONS}
    official = pa.Table.from_pylist(
        [
            {"report_id": "r1", "labeler": "chexpert", **row, "Edema": 1.0},
            {"report_id": "r2", "labeler": "negbio", **row, "Edema": 0.0},
        ]
    )
    got = test.with_official_labels(official, "chexpert")
    assert got.truth == "chexpert" and got.unlabelled.tolist() == [False, True]
    assert got.labels[0, ev.OBSERVATIONS.index("Edema")] == 1.0
    with pytest.raises(ValueError, match="no such labeler"):
        test.with_official_labels(official, "chexbert")


def test_retrieval_ranks_and_recall():
    sim = np.array([[0.9, 0.1, 0.2], [0.5, 0.4, 0.6], [0.3, 0.1, 0.3]])
    correct = np.eye(3, dtype=bool)
    # row 0: correct first; row 1: 0.6 and 0.5 above 0.4 -> rank 3; row 2: tie with a wrong -> 2
    ranks = metrics.retrieval_ranks(sim, correct)
    np.testing.assert_array_equal(ranks, [1, 3, 2])
    assert metrics.recall_at_k(ranks, (1, 2, 3)) == {1: 1 / 3, 2: 2 / 3, 3: 1.0}
    # several correct candidates: the best-scored one counts
    many = np.array([[False, True, True]])
    assert metrics.retrieval_ranks(np.array([[0.5, 0.1, 0.4]]), many).tolist() == [2]
    # a constant model ranks last, not first
    assert metrics.retrieval_ranks(np.zeros((2, 4)), np.eye(2, 4, dtype=bool)).tolist() == [4, 4]
    with pytest.raises(ValueError, match="correct candidate"):
        metrics.retrieval_ranks(sim, np.zeros((3, 3), bool))


def test_recall_matches_a_brute_force_count():
    rng = np.random.default_rng(1)
    sim = rng.normal(size=(40, 30))
    truth = rng.integers(0, 30, 40)
    correct = np.zeros((40, 30), bool)
    correct[np.arange(40), truth] = True
    ranks = metrics.retrieval_ranks(sim, correct)
    top = np.argsort(-sim, axis=1)
    for k in (1, 5, 10):
        brute = np.mean([truth[i] in top[i, :k] for i in range(40)])
        assert metrics.recall_at_k(ranks, [k])[k] == pytest.approx(brute)


def test_wilson_interval_known_values():
    lo, hi = metrics.wilson_interval(8, 10)
    assert (round(lo, 3), round(hi, 3)) == (0.490, 0.943)
    assert metrics.wilson_interval(0, 10)[0] == 0.0
    assert all(math.isnan(x) for x in metrics.wilson_interval(0, 0))


# -- prompts, observations, CXR-Align ---------------------------------------------------------------


def test_observations_follow_the_labels_schema():
    names = [c.name for c in load_schema("labels").columns if c.name not in ("report_id", "provenance")]
    assert tuple(names) == ev.OBSERVATIONS


def test_default_prompt_bank_covers_every_observation(tmp_path):
    bank = ev.read_prompts()
    assert set(bank) == set(ev.OBSERVATIONS)
    assert all(sides["positive"] and sides["negative"] for sides in bank.values())
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump({"observations": {"Cardiomegally": {"positive": ["a"], "negative": ["b"]}}})
    )
    with pytest.raises(ValueError, match="not a CheXpert observation"):
        ev.read_prompts(bad)
    bad.write_text(yaml.safe_dump({"observations": {"Edema": {"positive": ["edema"], "negative": []}}}))
    with pytest.raises(ValueError, match="non-empty lists"):
        ev.read_prompts(bad)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_cxr_align_scoring_on_a_constructed_set():
    e = np.eye(4)
    # Four items. Image i is e0 for all; the texts are placed so the answers are known:
    image = np.tile(e[0], (4, 1))
    report = _unit(np.array([[1, 0.1, 0, 0], [1, 0, 0, 0], [0.2, 1, 0, 0], [1, 0, 0, 0]]))
    negation = _unit(np.array([[0.5, 1, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0]]))
    omitted = _unit(np.array([[0.8, 0.5, 0, 0], [1, 0, 1, 0], [1, 0, 0, 0], [0.9, 0.5, 0, 0]]))
    out = ev.align_figures(
        image,
        report,
        negation,
        omitted,
        locations=["first", "last", "first", "middle"],
        chosen=["a", "a", "b", "b"],
        groups=["s1", "s2", "s3", "s4"],
    )
    # Task A: item 0 right, item 1 a tie (half), item 2 wrong, item 3 right -> 2.5 / 4
    assert out["task_a"]["accuracy"] == 0.625 and out["task_a"]["n"] == 4
    # Task B: 0 right (0.995 > 0.848), 1 right (1 > 0.707), 2 wrong, 3 right -> 3 / 4
    assert out["task_b"]["accuracy"] == 0.75
    # omitted over negation: 0 right, 1 wrong (0.707 < 1), 2 tie (half), 3 right -> 2.5 / 4
    assert out["omitted_over_negation"]["accuracy"] == 0.625
    assert (
        out["task_a_by_location"]["first"]["accuracy"] == 0.5
        and out["task_a_by_location"]["middle"]["n"] == 1
    )
    assert out["task_a_by_finding"]["b"]["accuracy"] == 0.5
    lo, hi = out["task_a"]["ci"]
    assert 0 <= lo < 0.625 < hi <= 1 and out["task_a"]["studies"] == 4
    # Wilson's interval without the bootstrap
    wilson = ev.align_figures(
        image,
        report,
        negation,
        omitted,
        locations=["x"] * 4,
        chosen=["a"] * 4,
        groups=["s"] * 4,
        settings=ev.ScoreSettings(bootstrap=0),
    )
    assert wilson["task_a"]["ci"] == pytest.approx(list(metrics.wilson_interval(2.5, 4)))


def test_published_cxr_align_reader(tmp_path):
    published = {
        "mimic": {
            "d1": {
                "report": "Large left effusion. Heart size normal.",
                "chosen": "Pleural Effusion",
                "negation": "No pleural effusion is seen. Heart size normal.",
                "omitted": "Heart size normal.",
                "location": "first",
            },
            "d2": {
                "report": "Cardiomegaly.",
                "chosen": "Cardiomegaly",
                "negation": "There is no evidence of cardiomegaly.",
                "omitted": "",
                "location": "add",
            },
            "d3": {"report": "x", "chosen": "Edema", "negation": "y", "omitted": "z", "location": "last"},
        }
    }
    path = tmp_path / "cxr_align.json"
    path.write_text(json.dumps(published))
    rows = ev.read_published_align(path)
    assert set(rows) == {"d1", "d2", "d3"} and rows["d1"]["dataset"] == "mimic"
    images = pa.table({"image_id": ["d2", "other", "d1"], "png": [b"p2", b"po", b"p1"]})
    items, pngs = ev.align_items_from_json(rows, images)
    assert (items.rows, items.unmatched, len(items)) == (3, 1, 2)  # d3 has no image in the run
    assert [pngs[i] for i in items.image] == [b"p1", b"p2"]
    assert items.negation[0].startswith("No pleural effusion") and items.location == ["first", "add"]
    path.write_text(json.dumps({"mimic": {"d1": {"report": "x", "chosen": "Edema"}}}))
    with pytest.raises(ValueError, match="mimic/d1 lacks negation, omitted, location"):
        ev.read_published_align(path)
    path.write_text(json.dumps({"mimic": {"d1": {**published["mimic"]["d1"], "chosen": 3}}}))
    with pytest.raises(ValueError, match="mimic/d1 lacks chosen"):  # every value a string
        ev.read_published_align(path)
    path.write_text(json.dumps({"mimic": published["mimic"], "other": {"d2": published["mimic"]["d2"]}}))
    with pytest.raises(ValueError, match="d2 is under both 'mimic' and 'other'"):
        ev.read_published_align(path)
    path.write_text(json.dumps(["not", "nested"]))
    with pytest.raises(ValueError, match="dataset"):
        ev.read_published_align(path)


def test_an_exported_cxr_align_file_reads_back_as_the_run_wrote_it(demo_run: Path, tmp_path: Path):
    """The round trip: python -m pipeline.hardneg export -> the reader -> items on the run's images."""
    path = tmp_path / "cxr_align.json"
    summary = export_cxr_align(str(demo_run), str(path))
    rows = ev.read_published_align(path)
    assert len(rows) == summary.items > 0 and {r["dataset"] for r in rows.values()} == {"mimic"}
    images = ev.read_images(demo_run / "images", rows)
    items, pngs = ev.align_items_from_json(rows, images)
    assert items.rows == len(rows) and len(items) == len(pngs) == len(rows) - items.unmatched > 0
    table = read_dataset(str(demo_run), "cxr_align").to_pylist()
    keys = ("report", "negation", "omitted", "location", "chosen")
    written = {(r["report_id"], *(r[k] for k in keys)) for r in table}
    read = list(zip(items.group, *(getattr(items, k) for k in keys), strict=True))
    assert set(read) <= written  # each item is a row of the run's cxr_align, on an image of its study
    assert {r[-1] for r in read} <= set(ev.OBSERVATIONS) - {"No Finding"}  # chosen: a CheXpert class


# -- the stage on the demo run ------------------------------------------------------------------------


def test_the_demo_dag_evaluates_its_final_checkpoint(demo_run: Path):
    folder = demo_run / "evaluate"
    for name in (
        "evaluation.json",
        "evaluation.md",
        "summary.png",
        "roc.png",
        "recall.png",
        "cxr_align.png",
        "training.png",
    ):
        assert (folder / name).stat().st_size > 0, name
    doc = json.loads((folder / "evaluation.json").read_text())
    assert doc["format"] == "clip2clinic.evaluation"
    # the demo scores its final checkpoint beside the untrained reference (conf/dataset/demo.yaml)
    assert [m["name"] for m in doc["models"]][1:] == ["untrained"]
    model = doc["models"][0]
    final = [r for r in read_dataset(str(demo_run), "checkpoints").to_pylist() if r["is_final"]][0]
    assert model["checkpoint"]["file"] == str(demo_run / final["file"])
    assert model["checkpoint"]["sha256"] == final["sha256"] and model["config"]["preset"] == "full"
    assert set(doc["data"]["fingerprints"]) >= {"shards/test", "checkpoints", "cxr_align", "negation_pairs"}
    assert set(model["zero_shot"]["observations"]) == set(ev.OBSERVATIONS)
    assert model["retrieval"]["image_to_text"]["queries"] == doc["data"]["samples"]
    assert model["cxr_align"]["run"]["task_a"]["n"] > 0 and model["negation_probe"]["n"] > 0
    table = read_dataset(str(demo_run), "evaluation")
    manifest = json.loads((demo_run / "evaluation" / "_manifest.json").read_text())
    assert manifest["rows"] == table.num_rows and manifest["complete"]
    assert {"zero_shot", "retrieval", "cxr_align", "negation_probe"} == set(table["task"].to_pylist())
    md = (folder / "evaluation.md").read_text()
    assert "## Side by side" in md and "| Cardiomegaly" in md


@pytest.fixture
def eval_copy(demo_run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(demo_run, out)
    return out


@pytest.mark.slow
def test_evaluate_alone_skips_when_unchanged_and_scores_several_checkpoints(eval_copy: Path, dask_client):
    runner = Runner(str(eval_copy), dask_client)
    stage = get_stage("evaluate")
    config = compose_run([f"out={eval_copy}", "stages.evaluate.bootstrap=50"]).stage_config("evaluate")
    assert runner.run_stage(stage, config).status == "ran"
    assert runner.run_stage(stage, config).status == "skipped"  # same checkpoint, data, settings
    files = sorted((eval_copy / "train" / "checkpoints").glob("step-*.pt"))
    assert len(files) >= 2
    several = replace(
        config, checkpoints=(str(files[0]), str(files[-1])), names=("early", "late"), untrained=True
    )
    assert runner.run_stage(stage, several).status == "ran"
    doc = json.loads((eval_copy / "evaluate" / "evaluation.json").read_text())
    assert [m["name"] for m in doc["models"]] == ["early", "late", "untrained"]
    assert doc["models"][2]["checkpoint"]["untrained"] and doc["models"][2]["checkpoint"]["step"] == 0
    assert set(read_dataset(str(eval_copy), "evaluation")["model"].to_pylist()) == {
        "early",
        "late",
        "untrained",
    }
    md = (eval_copy / "evaluate" / "evaluation.md").read_text()
    assert "| early |" in md and "| untrained |" in md
    assert runner.run_stage(stage, several).status == "skipped"
    # A checkpoint file changed in place (retrained) is scored again.
    copy = eval_copy / "train" / "checkpoints" / "copy.pt"
    shutil.copyfile(files[0], copy)
    one = replace(config, checkpoint=str(copy))
    assert runner.run_stage(stage, one).status == "ran"
    assert runner.run_stage(stage, one).status == "skipped"
    shutil.copyfile(files[-1], copy)
    assert runner.run_stage(stage, one).status == "ran"
    doc = json.loads((eval_copy / "evaluate" / "evaluation.json").read_text())
    assert doc["models"][0]["checkpoint"]["step"] == int(files[-1].stem.split("-")[1])
    # Every kept checkpoint of the run's train stage, in step order, then the reference.
    steps = sorted(read_dataset(str(eval_copy), "checkpoints")["step"].to_pylist())
    assert runner.run_stage(stage, replace(config, every_checkpoint=True)).status == "ran"
    doc = json.loads((eval_copy / "evaluate" / "evaluation.json").read_text())
    assert [m["checkpoint"]["step"] for m in doc["models"]] == [*steps, 0]
    # The run folder itself as the checkpoint: only the scored file and its tokenizer are hashed,
    # so the stage's own outputs under the folder do not make it rerun forever.
    by_run = replace(config, checkpoint=str(eval_copy))
    assert runner.run_stage(stage, by_run).status == "ran"
    assert runner.run_stage(stage, by_run).status == "skipped"


def test_an_undecodable_test_image_is_left_out_of_every_figure(demo_run: Path):
    test = ev.read_test_set(demo_run / "shards" / "test")
    test.pngs[0] = b"not a png"
    data = ev.EvalData(test=test)
    data.align.append(ev.align_items_from_table(read_dataset(str(demo_run), "cxr_align"), test))
    data.probe = ev.probe_pairs_from_table(read_dataset(str(demo_run), "negation_pairs"), test)
    loaded = ev.load_model(demo_run / "train")
    figures, curves = ev.score(loaded, data, ev.read_prompts(), ev.ScoreSettings(bootstrap=20))
    assert figures["undecodable_images"] == 1 and figures["samples"] == len(test)
    assert figures["retrieval"]["image_to_text"]["queries"] == len(test) - 1
    first = sum(1 for i in data.align[0].image if i == 0)
    assert figures["cxr_align"]["run"]["task_a"]["n"] == len(data.align[0]) - first
    assert figures["negation_probe"]["n"] == len(data.probe) - sum(1 for i in data.probe.image if i == 0)
    json.dumps(figures, allow_nan=False)  # every undefined figure is None, not NaN


def test_evaluate_without_a_checkpoint_names_the_fix(tmp_path: Path, demo_run: Path, dask_client):
    out = tmp_path / "run"
    shutil.copytree(demo_run / "shards", out / "shards")
    assert (out / "shards/test" / "_manifest.json").exists()
    config = compose_run([f"out={out}"]).stage_config("evaluate")
    with pytest.raises(PipelineError, match="stages.evaluate.checkpoint=PATH") as err:
        Runner(str(out), dask_client).run_stage(get_stage("evaluate"), config)
    assert err.value.code == "E_EVAL_NO_CHECKPOINT"
    with pytest.raises(PipelineError, match="no such file") as err:
        Runner(str(out), dask_client).run_stage(
            get_stage("evaluate"), replace(config, checkpoint=str(tmp_path / "x.pt"))
        )
    assert err.value.code == "E_CONFIG_VALUE"
