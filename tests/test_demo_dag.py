"""The demo DAG end to end on a real LocalCluster and the `make run` entry point (the notebooks run in
tests/test_notebooks.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.dag import load_dag
from pipeline.core.io import read_dataset


def test_every_stage_accounts_for_every_row(demo_run: Path):
    for stage in load_dag("demo").stages:
        record = json.loads((demo_run / "_state" / stage.name / "_stage.json").read_text())
        assert record["complete"]
        assert record["rows_in"] == record["rows_out"] + record["rejected"], stage.name
        for dataset in stage.outputs:
            manifest = json.loads((demo_run / dataset / "_manifest.json").read_text())
            assert manifest["fingerprint"] == record["fingerprint"]
            if "rows_in" in manifest:  # source datasets: records seen = rows written + rejected
                assert manifest["rows_in"] == manifest["rows"] + manifest["rows_rejected"], dataset


# what a reference cycle of a stage would be made of (other threads' cycles are not ours)
_STAGE_PACKAGES = frozenset(
    {"pipeline", "pyarrow", "spacy", "negspacy", "scispacy", "networkx", "polars", "numpy"}
)


def test_map_stages_make_no_reference_cycles_so_workers_pause_the_collector(
    demo_run: Path, cyclic_garbage, tmp_path
):
    """Workers run each part with the cyclic collector paused (pipeline.core.collector): sound only
    while a part's objects are freed by reference counting. Rerun ingest's read, every map stage of
    the demo DAG and the graph embedding on a part of the run with the collector off, and look for
    garbage."""
    import gc

    from pipeline.core.collector import collector_paused
    from pipeline.core.config import compose_run
    from pipeline.core.io import Store
    from pipeline.core.registry import PlanContext, get_stage
    from pipeline.graph import stage as graph_stage

    cfg = compose_run(
        [f"dataset.root={demo_run.parent / 'dump'}", "dataset.n_reports=160", f"out={demo_run}"]
    )
    ingest, ingest_config = get_stage("ingest"), cfg.stage_config("ingest")
    specs = ingest.plan(ingest_config, PlanContext(staging_dir=str(tmp_path), workers=1))
    ingest.read(specs[0], ingest_config)
    store = Store(str(demo_run))
    stages = [s for s in load_dag("demo").stages if get_stage(s.name).kind == "map"]
    assert {"parse", "extract", "graph", "hardneg_rewrite", "reread", "hardneg"} <= {s.name for s in stages}
    for stage in stages:
        st = get_stage(stage.name)
        inputs = {d: store.read_part(d, 0) for d in st.inputs}
        st.fn(inputs, config=st.config())  # caches and engines loaded before looking
    gc.collect()
    gc.disable()
    try:
        assert ingest.read(specs[0], ingest_config).tables
        for stage in stages:
            st = get_stage(stage.name)
            inputs = {d: store.read_part(d, 0) for d in st.inputs}
            assert st.fn(inputs, config=st.config())
        graphs = {r: g for r, g in graph_stage._grouped(store, 0).items() if g[0]}
        assert graph_stage.embeddings_table(graphs, graph_stage.GraphEmbeddingConfig().weights).num_rows
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # left as it was
        ours = cyclic_garbage(_STAGE_PACKAGES)
        assert not ours, ours[:5]
    finally:
        gc.enable()
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_injected_bad_rows_land_in_rejects(demo_run: Path):
    truth = demo_run.parent / "dump" / "demo_truth" / "injected.csv"
    injected = list(csv.DictReader(truth.open()))
    assert injected
    rejects = read_dataset(str(demo_run), "rejects").to_pylist()
    codes = {r["reason_code"] for r in rejects}
    for code in (
        "empty_text",
        "missing_file",
        "bad_encoding",
        "garbled_text",
        "too_long",
        "duplicate_id",
        "corrupt_dicom",
    ):
        assert code in codes, code


def test_one_labels_row_per_parsed_report(demo_run: Path):
    reports = read_dataset(str(demo_run), "reports")
    labels = read_dataset(str(demo_run), "labels")
    rejected = {
        r["row_id"]
        for r in read_dataset(str(demo_run), "rejects").to_pylist()
        if r["stage"] in ("parse", "extract")
    }
    assert set(labels["report_id"].to_pylist()) == set(reports["report_id"].to_pylist()) - rejected


# Findings the demo images draw (pipeline/demo/draw.py) with enough test positives to rank.
DRAWN = ("Cardiomegaly", "Lung Opacity", "Atelectasis", "Pleural Effusion", "Support Devices", "No Finding")


@pytest.mark.slow
def test_make_run_entry_point_trains_a_model_that_beats_its_untrained_self(tmp_path, monkeypatch, capsys):
    """`python -m pipeline.run` with no argument, as `make run` calls it: the demo dump generated
    (600 reports whose images draw what they state), the demo DAG run through a tiny CLIP trained
    for ten epochs on the CPU, and its evaluation beside the untrained model of the same config
    and seed, printed."""
    from pipeline.run import main

    monkeypatch.chdir(tmp_path)
    assert main(["progress=false", "stages.train.progress=false"]) == 0
    printed = capsys.readouterr().out
    for word in ("ingest", "reports", "labels", "rejects", "evaluation on the test split", "untrained"):
        assert word in printed
    assert (tmp_path / "data" / "demo" / "files").is_dir()
    run = tmp_path / "runs" / "demo"
    assert (run / "labels" / "_manifest.json").exists()
    doc = json.loads((run / "evaluate" / "evaluation.json").read_text())
    trained, untrained = doc["models"]
    assert untrained["name"] == "untrained" and trained["checkpoint"]["step"] > 100

    def drawn_auroc(model: dict) -> float:
        obs = model["zero_shot"]["observations"]
        return float(np.mean([obs[n]["auroc"] for n in DRAWN if obs[n]["positives"] >= 5]))

    # Margins well inside what the demo shows (about +0.25 AUROC, +45 points on Task A, +40 on
    # Task B), so that another draw of the demo cannot flip them, and far outside chance's.
    assert drawn_auroc(trained) > max(0.6, drawn_auroc(untrained) + 0.1)
    means = [m["zero_shot"]["mean"]["auroc"] for m in (trained, untrained)]
    assert means[0] > means[1] + 0.1
    a = [m["cxr_align"]["run"]["task_a"]["accuracy"] for m in (trained, untrained)]
    assert a[0] > 0.5 and a[0] > a[1] + 0.2
    b = [m["cxr_align"]["run"]["task_b"]["accuracy"] for m in (trained, untrained)]
    assert b[0] > b[1] + 0.15
    assert trained["negation_probe"]["accuracy"] > untrained["negation_probe"]["accuracy"]
    r10 = [m["retrieval"]["image_to_text"]["recall@10"] for m in (trained, untrained)]
    assert r10[0] > r10[1]


def _label_value(v: float | None) -> str:
    return "" if v is None else str(int(v))


def test_demo_labels_and_findings_golden(demo_run: Path, golden):
    """Labels and fine findings of the tiny demo run (n=160, seed 0), pinned.

    A change in the text engine that moves any label shows here as a reviewed diff
    (CLIP2CLINIC_UPDATE_GOLDEN=1 regenerates; see tests/conftest.py).
    """
    from pipeline.core.schemas import chexpert_observations

    observations = list(chexpert_observations())
    labels = read_dataset(str(demo_run), "labels").sort_by("report_id").to_pylist()
    golden(
        "demo_labels",
        [["report_id", *observations]]
        + [[r["report_id"], *(_label_value(r[o]) for o in observations)] for r in labels],
    )
    findings = read_dataset(str(demo_run), "findings").sort_by(
        [("report_id", "ascending"), ("finding", "ascending")]
    )
    golden(
        "demo_findings",
        [["report_id", "finding", "status", "n_mentions"]]
        + [[r["report_id"], r["finding"], r["status"], str(r["n_mentions"])] for r in findings.to_pylist()],
    )
