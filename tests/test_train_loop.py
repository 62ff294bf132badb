"""The trainer end to end on CPU: it learns on the demo shards, resumes bit for bit, runs every
preset, matches one process under 2-process DDP (torchrun, gloo), stops on a non-finite loss and
skips undecodable samples."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from shard_fixtures import write_shards

from pipeline.train import checkpoint as ckpt
from pipeline.train.augment import AugmentConfig
from pipeline.train.config import PRESETS
from pipeline.train.data import ReaderConfig, ShardDataset

REPO = Path(__file__).resolve().parents[1]

TINY = [
    "model.text.path=tiny",
    "model.text.tiny_hidden=32",
    "model.text.tiny_vocab=500",
    "model.image.arch=resnet18",
    "model.image.width=8",
    "model.embed_dim=32",
    "model.graph.hidden=32",
    "model.graph.concept_dim=16",
    "data.resolution=48",
    "data.batch_size=16",
    "data.workers=0",
    "optim.lr=2e-3",
    "optim.warmup_steps=2",
    "progress=false",
]


def start_cli(*args: str, nproc: int = 0) -> subprocess.Popen:
    """``python -m pipeline.train ARGS`` (under torchrun with ``nproc``), started and not waited for."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        if nproc
        else [sys.executable]
    )
    return subprocess.Popen(
        [*launcher, "-m", "pipeline.train", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def finish_cli(proc: subprocess.Popen, check: bool = True) -> subprocess.CompletedProcess:
    try:
        stdout, stderr = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    done = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    if check and done.returncode != 0:
        raise AssertionError(f"exit {done.returncode}\n{done.stdout}\n{done.stderr[-4000:]}")
    return done


def train_cli(*args: str, check: bool = True, nproc: int = 0) -> subprocess.CompletedProcess:
    return finish_cli(start_cli(*args, nproc=nproc), check=check)


@contextlib.contextmanager
def cli_alongside(*args: str) -> Iterator[subprocess.Popen]:
    """A trainer command that runs while the block does (a second core), waited for and checked
    at the block's end; killed when the block fails."""
    proc = start_cli(*args)
    try:
        yield proc
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    finish_cli(proc)


def train_here(*overrides: str) -> dict:
    """The trainer in this process (no CLI start-up), for the tests that are not about the CLI."""
    from pipeline.train.config import TrainConfig, apply_overrides
    from pipeline.train.loop import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the CLI runs here (OMP_NUM_THREADS=1): no threads fighting for 2 cores
    try:
        return train(apply_overrides(TrainConfig(), list(overrides)))
    finally:
        torch.set_num_threads(threads)


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shards")
    write_shards(root / "train", n_groups=40, groups_per_shard=10, image_size=48, seed=1)
    return root


@pytest.mark.slow
def test_tiny_model_learns_on_the_demo_shards(demo_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "train"
    train_here(f"out={out}", f"data.shards={demo_run / 'shards'}", "epochs=8", "preset=full", *TINY)
    lines = metrics(out)
    assert [m["step"] for m in lines] == list(range(1, len(lines) + 1))
    losses = np.array([m["loss"] for m in lines])
    k = max(3, len(losses) // 5)
    assert losses[-k:].mean() < losses[:k].mean() - 0.1, losses
    for key in (
        "loss_i2t",
        "loss_t2i",
        "loss_graph_image",
        "lr",
        "temperature",
        "samples_per_s",
        "data_wait",
    ):
        assert all(m[key] is not None and np.isfinite(m[key]) for m in lines), key
    assert any(m["negatives"] > 0 for m in lines)  # the demo's train-template negations arrive
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["steps"] == len(lines)
    final = ckpt.load(out / summary["final"])
    assert final["step"] == summary["steps"] and (out / "tokenizer" / "tokenizer.json").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["loss"]["negatives"] is True  # the resolved preset is recorded


@pytest.mark.slow
def test_a_stopped_run_resumes_bit_for_bit(synthetic: Path, tmp_path: Path) -> None:
    # Two epochs of 12 steps: the resumed run crosses an epoch end.
    common = [f"data.shards={synthetic}", "epochs=2", "deterministic=true", "checkpoint_every=4", *TINY]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    # The uninterrupted run is a process of its own either way: it runs beside the stopped ones.
    with cli_alongside(f"out={whole}", *common):
        # Stopped mid-epoch at step 5 (one step after a periodic checkpoint), then at step 9.
        train_cli(f"out={parts}", "stop_after=5", *common)
        stopped = json.loads((parts / "summary.json").read_text())
        assert not stopped["complete"] and stopped["steps"] == 5
        train_cli(f"out={parts}", "stop_after=4", *common)
        train_cli(f"out={parts}", *common)
    a = ckpt.load(whole / json.loads((whole / "summary.json").read_text())["final"])
    b = ckpt.load(parts / json.loads((parts / "summary.json").read_text())["final"])
    assert a["step"] == b["step"] > 12
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    timing = {"samples_per_s", "data_wait", "gpu_memory_mb"}
    strip = lambda rows: [{k: v for k, v in m.items() if k not in timing} for m in rows]  # noqa: E731
    assert strip(metrics(whole)) == strip(metrics(parts))
    # keep_last: at most 3 step files besides nothing else
    assert len(list((parts / "checkpoints").glob("step-*.pt"))) <= 3


def test_resume_refuses_a_run_of_another_config(synthetic: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    common = [f"out={out}", f"data.shards={synthetic}", "max_steps=1", *TINY]
    train_here(*common)
    proc = train_cli(*common, "seed=7", check=False)  # the refusal is the CLI's: exit 2, a message
    assert proc.returncode == 2 and "another config" in proc.stderr
    assert train_here(*common, "seed=7", "resume=none")["complete"]  # explicitly over it


@pytest.mark.slow
def test_every_preset_builds_and_takes_a_step(synthetic: Path, tmp_path: Path) -> None:
    for preset in PRESETS:
        summary = train_here(
            f"out={tmp_path / preset}", f"data.shards={synthetic}", f"preset={preset}", "max_steps=1", *TINY
        )
        assert summary["complete"] and summary["steps"] == 1, preset
        line = metrics(tmp_path / preset)[0]
        assert np.isfinite(line["loss"])
        assert (line["loss_graph_image"] is not None) == (PRESETS[preset]["lambda_g"] > 0), preset


@pytest.fixture(scope="module")
def ddp_results(synthetic: Path, tmp_path_factory) -> dict[int, dict]:
    """tests/ddp_check.py under torchrun (2 processes, gloo), once for both loss.local_loss
    settings: each setting's comparison of a DDP step with one process on the whole batch."""
    from pipeline.train.config import TrainConfig, apply_overrides, resolve
    from pipeline.train.data import ShardIndex
    from pipeline.train.loop import split_texts
    from pipeline.train.model import build_text_tower

    tmp = tmp_path_factory.mktemp("ddp")
    tok = tmp / "tokenizer"
    config = resolve(apply_overrides(TrainConfig(), ["model.text.path=tiny", "model.text.tiny_vocab=500"]))
    build_text_tower(
        config.model.text, tokenizer_dir=tok, texts=split_texts(ShardIndex.load(synthetic / "train"))
    )
    result = tmp / "ddp.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO}:{REPO / 'tests'}"}
    proc = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            str(REPO / "tests" / "ddp_check.py"), str(synthetic / "train"), str(tok), str(result), "full", "0,1",
        ],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {int(local): got for local, got in json.loads(result.read_text()).items()}


@pytest.mark.slow
@pytest.mark.parametrize("local", [0, 1])
def test_two_process_ddp_matches_one_process(ddp_results: dict[int, dict], local: int) -> None:
    got = ddp_results[local]
    assert got["local_loss"] is bool(local)
    assert got["params"] and got["n_params"] > 20
    assert got["negatives"] > 0
    assert got["ddp_loss"] == pytest.approx(got["single_loss"], rel=1e-5, abs=1e-6)
    assert got["max_grad_diff"] <= 1e-4 * max(1.0, got["max_grad"]), got


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    write_shards(shards / "train", n_groups=40, groups_per_shard=10, image_size=48, seed=2)
    # Corrupt the clinical vectors of one shard: the soft targets (and the loss) turn NaN when a
    # batch holds one of its samples, after some good steps have been checkpointed.
    files = sorted((shards / "train").glob("part-*.parquet"))
    t = pq.read_table(files[-1])
    n = len(t.column("clinical_vector")[0])
    bad = pa.array([[float("nan")] * n] * t.num_rows, type=t.schema.field("clinical_vector").type)
    field = t.schema.field("clinical_vector")
    pq.write_table(
        t.set_column(t.schema.get_field_index(field.name), field, bad).replace_schema_metadata(
            t.schema.metadata
        ),
        files[-1],
        row_group_size=16,
    )
    out = tmp_path / "run"
    proc = train_cli(
        f"out={out}",
        f"data.shards={shards}",
        "preset=dtc",
        "epochs=3",
        "checkpoint_every=1",
        *TINY,
        check=False,
    )
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "loss is nan" in proc.stderr and "last good checkpoint" in proc.stderr
    latest = ckpt.latest(out / "checkpoints")
    if latest is not None:  # every parameter of the kept checkpoint is finite
        assert all(
            torch.isfinite(v).all() for v in ckpt.load(latest)["model"].values() if v.is_floating_point()
        )


def test_an_undecodable_image_is_skipped_and_counted(tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    write_shards(shards / "train", n_groups=40, groups_per_shard=10, image_size=48, seed=3)
    first = sorted((shards / "train").glob("part-*.parquet"))[0]
    t = pq.read_table(first)
    images = t.column("image").to_pylist()
    images[3] = b"not a png"
    field = t.schema.field("image")
    t = t.set_column(t.schema.get_field_index("image"), field, pa.array(images, pa.binary()))
    pq.write_table(t, first, row_group_size=16)
    out = tmp_path / "run"
    train_here(f"out={out}", f"data.shards={shards}", "epochs=2", "max_bad_samples=0.05", *TINY)
    summary = json.loads((out / "summary.json").read_text())
    # The trainer drops each epoch's incomplete last batch: count the epochs that read sample 3.
    reader = ReaderConfig(batch_size=16, remainder="drop", augment=AugmentConfig(resolution=48))
    ds = ShardDataset(shards / "train", reader, rank=0, world_size=1)
    expected = sum(int(np.isin(3, np.concatenate(ds.rank_batches(e)))) for e in range(2))
    assert expected >= 1
    assert summary["complete"] and summary["bad_samples"] == expected
    assert metrics(out)[-1]["bad_samples"] == expected


def test_the_trainer_and_evaluation_import_no_pipeline_core_spacy_dask_or_hydra() -> None:
    """... and the tiny text tower, built and run, imports no transformers (seconds per start)."""
    code = (
        "import sys, tempfile, torch, pipeline.train.loop, pipeline.train.__main__, pipeline.train.model, pipeline.train.evaluate, pipeline.train.report; "
        "from pipeline.train.config import TextTowerConfig; "
        "tower, tok = pipeline.train.model.build_text_tower(TextTowerConfig(path='tiny', tiny_vocab=100), "
        "tokenizer_dir=tempfile.mkdtemp(), texts=['No acute process.', 'Small left effusion.']); "
        "enc = tok(['No effusion.'], padding=True, truncation=True, max_length=16, return_tensors='pt'); "
        "tower(enc['input_ids'], enc['attention_mask']).sum().backward(); "
        "print('transformers' in sys.modules); "
        "import transformers, tokenizers; "
        "bad = ('spacy', 'dask', 'distributed', 'polars', 'pipeline.core', 'hydra', 'omegaconf', 'rich', "
        "'networkx', 'pydicom', 'torchvision', 'timm', 'sentence_transformers'); "
        "print([m for m in bad if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "[]"], out.stdout


def test_gradient_accumulation_steps_once_per_accum_micro_batches(synthetic: Path, tmp_path: Path) -> None:
    out = tmp_path / "accum"
    train_here(f"out={out}", f"data.shards={synthetic}", "optim.accum_steps=2", "max_steps=2", *TINY)
    lines = metrics(out)
    assert [m["step"] for m in lines] == [1, 2]
    assert all(m["batch_size"] == 2 * 16 for m in lines)  # two micro-batches of 16 per step
    assert lines[-1]["samples"] == 64


def test_one_negated_report_per_sample_is_drawn_per_epoch(synthetic: Path) -> None:
    from pipeline.train.data import TokenizingCollate

    reader = ReaderConfig(batch_size=64, shuffle=False, augment=AugmentConfig(resolution=32, train=False))
    ds = ShardDataset(synthetic / "train", reader, rank=0, world_size=1)
    raw = next(iter(ds))
    owners = raw["negated_owner"].numpy()
    assert np.bincount(owners).max() > 1  # the fixture has samples with several
    capped = TokenizingCollate(None, max_negated=1, seed=0)(dict(raw))
    kept = capped["negated_owner"].numpy()
    assert np.array_equal(np.unique(kept), np.unique(owners)) and np.bincount(kept).max() == 1
    assert set(capped["negated_reports"]) <= set(raw["negated_reports"])
    again = TokenizingCollate(None, max_negated=1, seed=0)(dict(raw))
    assert again["negated_reports"] == capped["negated_reports"]  # deterministic: resume sees the same
    assert TokenizingCollate(None, max_negated=0)(dict(raw))["negated_reports"] == raw["negated_reports"]
