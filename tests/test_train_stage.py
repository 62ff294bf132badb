"""The train stage: Hydra typing, the training folder's lifecycle, and real trainer runs.

The trainer is the real one (``python -m pipeline.train`` in a subprocess) on the demo run's
shards with the demo dataset's tiny model, locally and on a separate scheduler with a ``GPU``-resource worker.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from cluster_fixtures import start_scheduler, start_worker, stop
from distributed import Client

from pipeline.core.config import compose_run
from pipeline.core.dag import load_dag
from pipeline.core.errors import PipelineError
from pipeline.core.io import read_dataset
from pipeline.core.registry import get_stage
from pipeline.core.runner import Runner
from pipeline.run import main
from pipeline.train.config import TrainConfig, identity, resolve
from pipeline.train.stage import (
    TrainStageConfig,
    metrics_table,
    prepare_folder,
    trainer_command,
    trainer_config,
    trainer_failure,
)

# A few optimizer steps are enough to exercise checkpoints (every 5 steps, each epoch end, the end).
STEPS = 6
TINY = [f"stages.train.max_steps={STEPS}", "stages.train.progress=false"]


# -- config ----------------------------------------------------------------------------------------


def test_stage_config_composes_through_hydra():
    cfg = compose_run(["stages.train.preset=full", "stages.train.nproc=2", "stages.train.loss.lambda_g=0.3"])
    train = cfg.stage_config("train")
    assert isinstance(train, TrainStageConfig) and isinstance(train, TrainConfig)
    assert (train.preset, train.nproc, train.where, train.gpus) == ("full", 2, "auto", 1)
    assert train.loss.lambda_g == 0.3 and train.loss.text_weight is None  # None: the preset's value
    # the demo dataset (the default) trains a tiny model; a real dump the full-size defaults
    assert (train.model.text.path, train.model.image.arch, train.model.image.width) == (
        "tiny",
        "resnet18",
        16,
    )
    assert (train.data.resolution, train.data.batch_size, train.optim.lr) == (64, 32, 1e-3)
    full = compose_run(["dataset=mimic_cxr", "dataset.root=/data/mimic"]).stage_config("train")
    assert full.model.text.path == "minilm" and full.data.resolution == 224


@pytest.mark.parametrize(
    "override, suggestion",
    [
        ("stages.train.optim.lrr=1e-4", "Did you mean 'lr'"),
        ("stages.train.nprocs=2", "Did you mean 'nproc'"),
        ("stages.train.model.txt.path=tiny", "Did you mean 'text'"),
    ],
)
def test_misspelt_train_key_suggests(override, suggestion):
    with pytest.raises(PipelineError, match=suggestion) as err:
        compose_run([override])
    assert err.value.code == "E_CONFIG_KEY"


def test_trainer_config_fills_the_run_paths(tmp_path):
    stage = TrainStageConfig(nproc=2)
    config = trainer_config(stage, str(tmp_path))
    assert type(config) is TrainConfig
    assert config.out == str(tmp_path / "train") and config.data.shards == str(tmp_path / "shards")
    mine = replace(stage, data=replace(stage.data, shards="/elsewhere/shards"))
    assert trainer_config(mine, str(tmp_path)).data.shards == "/elsewhere/shards"  # the user's wins
    with pytest.raises(PipelineError, match="always trains into") as err:
        trainer_config(TrainStageConfig(out="/tmp/x"), str(tmp_path))
    assert err.value.code == "E_CONFIG_VALUE"
    assert trainer_command("r.json", 1)[1:] == ["-m", "pipeline.train", "config=r.json"]
    assert trainer_command("r.json", 4)[1:6] == [
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=4",
        "-m",
    ]


def test_dags_end_in_train_and_evaluate():
    for name in ("train", "full", "demo"):
        stages = [s.name for s in load_dag(name).stages]
        assert stages[-3:] == ["shards", "train", "evaluate"], name
    assert [s.name for s in load_dag("full").stages] == [s.name for s in load_dag("demo").stages]
    stage = get_stage("train")
    assert stage.kind == "corpus" and stage.inputs == ("shards/train",)
    assert stage.optional_inputs == ("shards/validate",)
    assert stage.outputs == ("checkpoints", "train_metrics")


def test_stage_module_imports_no_torch():
    code = "import sys, pipeline.train.stage; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# -- the training folder -----------------------------------------------------------------------


def _stamp(config: TrainConfig, **over) -> dict:
    return {
        "identity": identity(resolve(config)),
        "upstream": {"shards/train": "a"},
        "code": "c",
        "nproc": 1,
    } | over


def _fake_run(folder: Path, config: TrainConfig, stamp: dict, complete: bool) -> None:
    folder.mkdir(parents=True)
    resolved = resolve(config)
    (folder / "config.json").write_text(json.dumps({"config": {}, "identity": identity(resolved)}))
    (folder / "stage.json").write_text(json.dumps(stamp))
    (folder / "summary.json").write_text(json.dumps({"complete": complete}))


@pytest.mark.parametrize(
    "change, complete, force, kept, train",
    [
        ({}, False, False, True, True),  # interrupted, same run: the trainer resumes it
        ({}, True, False, True, False),  # finished, same run: nothing to train
        ({}, True, True, False, True),  # force=true trains a finished run again
        ({"config": TrainConfig(epochs=7)}, False, False, False, True),  # another identity
        ({"upstream": {"shards/train": "b"}}, False, False, False, True),  # other shards
        ({"nproc": 2}, False, False, False, True),  # a checkpoint resumes on as many processes
        ({"code": "d"}, False, False, True, True),  # a fixed trainer resumes an interrupted run
        ({"code": "d"}, True, False, False, True),  # ... and retrains a finished one
    ],
)
def test_prepare_folder(tmp_path, change, complete, force, kept, train):
    folder = tmp_path / "train"
    base = TrainConfig()
    _fake_run(folder, change.get("config", base), _stamp(base), complete)
    now = _stamp(base, **{k: v for k, v in change.items() if k != "config"})
    assert prepare_folder(folder, now, force=force) is train
    assert (folder / "summary.json").exists() is kept


def test_metrics_table_keeps_the_last_line_per_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [
        {"step": 1, "epoch": 0, "loss": 2.0, "lr": 1e-4, "loss_graph_text": None, "bad_samples": 0},
        {"step": 2, "epoch": 0, "loss": 1.5, "lr": 2e-4, "new_key": 7},
        {"step": 2, "epoch": 0, "loss": 1.4, "lr": 2e-4},  # logged again after a resume
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + '\n{"step": 3, "lo')  # a torn last line
    table = metrics_table(path)
    assert table["step"].to_pylist() == [1, 2] and table["loss"].to_pylist() == [2.0, 1.4]
    assert table["extra"].to_pylist() == [None, None]
    table = metrics_table(_write(tmp_path / "m2.jsonl", lines[:2]))
    assert json.loads(table["extra"][1].as_py()) == {"new_key": 7}


def _write(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


TORCHRUN_REPORT = """error: loss is nan at step 4
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
Root Cause (first observed failure):
[0]:
  rank      : 0 (local_rank: 0)
  exitcode  : 3 (pid: 4990)
"""


TORCHRUN_CRASH = """[rank1]: Traceback (most recent call last):
[rank1]:     raise ValueError(
[rank1]: ValueError: 1 shards cannot give each of 2 ranks one
Traceback (most recent call last):
  File "torch/distributed/run.py", line 1032, in <module>
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
Root Cause (first observed failure):
  exitcode  : 1 (pid: 6098)
"""


@pytest.mark.parametrize(
    "code, output, error, text",
    [
        (
            3,
            "step 3\nerror: the loss is nan at step 4\n",
            "E_TRAIN_NONFINITE",
            "last good checkpoint is kept",
        ),
        (1, TORCHRUN_REPORT, "E_TRAIN_NONFINITE", "loss is nan at step 4"),  # a rank's exit under torchrun
        (
            2,
            "error: data.shards: no _index.json; rebuild the shards\n",
            "E_TRAIN_CONFIG",
            "rebuild the shards",
        ),
        (1, "\r".join(f"line {i}" for i in range(40)), "E_TRAIN_FAILED", "line 39"),
        (-9, "boom\n", "E_TRAIN_FAILED", "killed by signal 9"),
        (130, "stopping\n", "E_TRAIN_FAILED", "stopped by signal 2"),
        (1, TORCHRUN_CRASH, "E_TRAIN_FAILED", "exited with code 1 (ValueError: 1 shards cannot"),
    ],
)
def test_trainer_failures_are_explained(tmp_path, code, output, error, text):
    exc = trainer_failure(code, output, tmp_path / "train.log")
    assert exc.code == error and text in exc.message
    if error == "E_TRAIN_FAILED":
        assert "resume from the last checkpoint" in exc.message and "line 19" not in exc.message
        assert "Root Cause" not in exc.message  # torchrun's report is cut: the ranks' output says it


# -- real training -----------------------------------------------------------------------------


@pytest.fixture
def run_copy(demo_run: Path, tmp_path: Path) -> Path:
    """A private copy of the demo run up to its shards (the demo DAG's own training and
    evaluation left out), so training here starts from nothing and leaves the demo run untouched."""
    out = tmp_path / "run"
    trained = ("train", "checkpoints", "train_metrics", "evaluate", "evaluation")
    shutil.copytree(
        demo_run,
        out,
        ignore=lambda folder, names: [n for n in names if Path(folder) == demo_run and n in trained],
    )
    for stage in ("train", "evaluate"):
        shutil.rmtree(out / "_state" / stage, ignore_errors=True)
    return out


def _check_outputs(out: Path, steps: int) -> dict:
    summary = json.loads((out / "train" / "summary.json").read_text())
    assert summary["complete"] and summary["steps"] == steps
    checkpoints = read_dataset(str(out), "checkpoints")
    metrics = read_dataset(str(out), "train_metrics")
    for dataset, table in (("checkpoints", checkpoints), ("train_metrics", metrics)):
        manifest = json.loads((out / dataset / "_manifest.json").read_text())
        assert manifest["complete"] and manifest["rows"] == table.num_rows > 0, dataset
        assert manifest["rows_in"] == manifest["rows"] and manifest["stage"] == "train.v1"
        meta = pq.read_schema(out / dataset / "part-00000.parquet").metadata
        assert meta[b"clip2clinic.schema"] == dataset.encode()
    assert len(summary["checkpoints"]) == checkpoints.num_rows
    for row in checkpoints.to_pylist():
        file = out / row["file"]
        assert row["file"].startswith("train/checkpoints/step-") and file.stat().st_size == row["bytes"]
        assert hashlib.sha256(file.read_bytes()).hexdigest() == row["sha256"]
        assert json.loads(row["config"])["identity"]
    final = [r for r in checkpoints.to_pylist() if r["is_final"]]
    assert len(final) == 1 and final[0]["step"] == steps and final[0]["file"] == f"train/{summary['final']}"
    assert metrics["step"].to_pylist() == list(range(1, steps + 1))
    assert all(x is not None and x == x for x in metrics["loss"].to_pylist())
    return json.loads((out / "_state" / "train" / "part-00000.json").read_text())


@pytest.mark.slow
def test_dag_train_runs_then_skips(run_copy: Path, demo_run: Path, dask_client):
    overrides = [
        f"dataset.root={demo_run.parent / 'dump'}",
        "dataset.n_reports=160",
        f"out={run_copy}",
        "stages.evaluate.bootstrap=50",  # the DAG's evaluate runs too; its intervals are not checked here
        *TINY,
    ]
    cfg = compose_run(["dag=train", *overrides])
    dag = load_dag("train")
    configs = {s.name: cfg.stage_config(s.name) for s in dag.stages}
    reports = Runner(cfg.out, dask_client).run_dag(dag, configs)
    train = next(r for r in reports if r.stage == "train")
    assert train.stage == "train" and train.status == "ran"
    marker = _check_outputs(run_copy, STEPS)
    assert marker["launched"]["where"] == "local" and marker["launched"]["pid"] == os.getpid()
    assert train.datasets["train_metrics"] == STEPS
    assert (run_copy / "train" / "train.log").read_text().count("pipeline.train") >= 1
    again = Runner(cfg.out, dask_client).run_dag(dag, configs)
    assert {r.status for r in again} == {"skipped"}


@pytest.mark.slow
def test_an_interrupted_run_resumes_and_another_config_trains_afresh(run_copy: Path, dask_client):
    cfg = compose_run([f"out={run_copy}", *TINY])
    config = cfg.stage_config("train")
    runner = Runner(str(run_copy), dask_client)
    with pytest.raises(PipelineError, match="rerun the same command") as err:
        runner.run_stage(get_stage("train"), replace(config, stop_after=3))  # an interrupt, on purpose
    assert err.value.code == "E_TRAIN_STOPPED"
    assert not (run_copy / "checkpoints" / "_manifest.json").exists()
    assert runner.run_stage(get_stage("train"), config).status == "ran"
    log = (run_copy / "train" / "train.log").read_text()
    assert log.count("=== ") == 2 and "resumed from" in log  # the second launch resumed at step 3
    marker = _check_outputs(run_copy, STEPS)
    assert marker["trained"]
    first = (run_copy / "train" / "checkpoints" / f"step-{STEPS:08d}.pt").stat().st_mtime_ns
    # Another config (an identity field) deletes the folder and trains afresh.
    report = runner.run_stage(get_stage("train"), replace(config, seed=1))
    assert report.status == "ran"
    log = (run_copy / "train" / "train.log").read_text()
    assert log.count("=== ") == 1 and "resumed from" not in log
    assert (run_copy / "train" / "checkpoints" / f"step-{STEPS:08d}.pt").stat().st_mtime_ns != first
    assert json.loads((run_copy / "train" / "config.json").read_text())["config"]["seed"] == 1


@pytest.mark.slow
def test_two_processes_train_through_torchrun(run_copy: Path, demo_run: Path, dask_client):
    cfg = compose_run(
        [f"dataset.root={demo_run.parent / 'dump'}", "dataset.n_reports=160", f"out={run_copy}"]
    )
    runner = Runner(str(run_copy), dask_client)
    runner.run_stage(get_stage("shards"), replace(cfg.stage_config("shards"), shard_size=40))  # 2+ shards
    config = replace(cfg.stage_config("train"), nproc=2, max_steps=2, progress=False)
    config = replace(config, data=replace(config.data, batch_size=8))
    assert runner.run_stage(get_stage("train"), config).status == "ran"
    _check_outputs(run_copy, 2)
    assert set(read_dataset(str(run_copy), "checkpoints")["world_size"].to_pylist()) == {2}


@pytest.mark.slow
def test_cluster_trains_on_the_gpu_worker(run_copy: Path, tmp_path: Path, capsys):
    """A scheduler and workers as separate processes: without a `GPU` worker the stage stops at
    once and says what to start; with one, training runs there (not on the CPU-only worker)."""
    address, scheduler = start_scheduler()
    procs = [scheduler]
    args = ["stage=train", f"out={run_copy}", f"cluster.address={address}", "progress=false", *TINY]
    try:
        procs.append(start_worker(address, tmp_path / "cpu"))
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(1, timeout=60)
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "E_TRAIN_NO_GPU" in err and "--resources GPU=1" in err and "where=local" in err
        assert not (run_copy / "train").exists()  # stopped before anything was launched

        procs.append(start_worker(address, tmp_path / "gpu", "--resources", "GPU=1"))
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
            info = client.scheduler_info(n_workers=-1)["workers"]
            gpu = {a for a, w in info.items() if w.get("resources", {}).get("GPU")}
            pids = client.run(os.getpid)
        assert main(args) == 0
        marker = _check_outputs(run_copy, STEPS)
        assert marker["launched"]["where"] == "cluster"
        assert (
            marker["launched"]["worker"] in gpu and marker["worker_pid"] == pids[marker["launched"]["worker"]]
        )
        assert marker["worker_pid"] != os.getpid()
        assert main(args) == 0 and "skipped" in capsys.readouterr().out
    finally:
        stop(procs)


def test_where_cluster_on_a_local_cluster_without_gpus(run_copy: Path, dask_client):
    config = TrainStageConfig(where="cluster")
    with pytest.raises(PipelineError, match="--resources GPU=1") as err:
        Runner(str(run_copy), dask_client).run_stage(get_stage("train"), config)
    assert err.value.code == "E_TRAIN_NO_GPU"
    assert not (run_copy / "train").exists()
