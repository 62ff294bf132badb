"""The README's user's guide, run as written: every ``bash`` block of its section, in order, in one
shell, on a 60-report demo dump (MIMIC-CXR layout) through a scheduler and workers started here.

What differs from a real cluster, and only that: the guide's ``export`` lines (the user's paths)
are replaced by this test's paths; ``dask scheduler`` / ``dask worker`` are no-ops (this test
started both, ``$SCHEDULER`` points at them); ``torchrun`` gets one rank (torchrun with several
is tested in tests/test_train_stage.py), a tiny model and two steps; the ablation loop runs one
preset, not eight; evaluation takes 50 bootstrap resamples. ``$TEXT_MODEL`` is a local transformers folder and
``$IMAGE_WEIGHTS`` a torchvision-layout ResNet state dict, both made here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cluster_fixtures import start_scheduler, start_worker, stop

REPO = Path(__file__).resolve().parents[1]
PRESETS = "clip dt dtc n n_dtc g g_dtcg full"
TINY_TRAIN = (
    "max_steps=2 model.text.tiny_hidden=32 model.text.tiny_vocab=500 model.image.arch=resnet18 "
    "model.image.width=8 model.embed_dim=32 model.graph.hidden=32 model.graph.concept_dim=16 "
    "data.resolution=48 data.batch_size=8 data.workers=0 progress=false"
)

SHIMS = r"""
set -euo pipefail
dask() { :; }  # the test runs the scheduler and the worker ($SCHEDULER)
python() {
  if [ "$1" = -m ] && [ "$2" = pipeline.run ]; then
    command "$PY" "$@" progress=false stages.evaluate.bootstrap=50
  else
    command "$PY" "$@"
  fi
}
torchrun() {
  local args=() text=model.text.path=tiny
  for a in "$@"; do
    args+=("${a/--nproc_per_node=8/--nproc_per_node=1}")
    case "$a" in model.text.path=*) text= ;; esac
  done
  command "$TORCHRUN" "${args[@]}" $TINY_TRAIN $text
}
"""


def guide_blocks() -> list[str]:
    """The bash blocks of the README's user's guide section, in order."""
    text = (REPO / "README.md").read_text()
    start = text.index("## User's guide")
    end = text.index("\n## ", start + 1)
    return re.findall(r"```bash\n(.*?)```", text[start:end], flags=re.S)


def test_the_guide_has_every_step():
    script = "\n".join(guide_blocks())
    for needed in (
        "dag=shards",
        "cluster.address=$SCHEDULER",
        "torchrun",
        "model.text.path=$TEXT_MODEL",
        "model.image.weights=$IMAGE_WEIGHTS",
        "stage=evaluate",
        PRESETS,
    ):
        assert needed in script, needed


def _text_model(folder: Path, texts: list[str]) -> None:
    from transformers import BertConfig, BertModel

    from pipeline.train.wordpiece import train_wordpiece

    tokenizer = train_wordpiece(texts, vocab_size=300)
    tokenizer.save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        pad_token_id=tokenizer.pad_token_id,
    )
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)


@pytest.mark.slow
def test_the_users_guide_runs_as_written(tmp_path: Path):
    from pipeline.train.model import ResNet

    dump = tmp_path / "dump"  # a small MIMIC-CXR-layout dump: the guide's steps, not its scale
    subprocess.run(
        [sys.executable, "-m", "pipeline.demo", f"out={dump}", "n_reports=60"],
        check=True,
        capture_output=True,
    )

    script = "\n".join(
        line for block in guide_blocks() for line in block.splitlines() if not line.startswith("export ")
    )
    assert PRESETS in script
    script = SHIMS + script.replace(PRESETS, "clip")
    text_model = tmp_path / "text-model"
    _text_model(text_model, ["No acute cardiopulmonary process.", "Small left pleural effusion."] * 20)
    weights = tmp_path / "resnet18.pth"
    torch.save(ResNet("resnet18", width=8).state_dict(), weights)
    run = tmp_path / "run"
    address, scheduler = start_scheduler()
    procs = [scheduler]
    try:
        procs.append(start_worker(address, tmp_path / "worker", nworkers=2))
        env = {
            **os.environ,
            "DUMP": str(dump),
            "RUN": str(run),
            "SCHEDULER": address,
            "TEXT_MODEL": str(text_model),
            "IMAGE_WEIGHTS": str(weights),
            "PY": sys.executable,
            "TORCHRUN": str(Path(sys.executable).parent / "torchrun"),
            "TINY_TRAIN": TINY_TRAIN,
            "PYTHONPATH": str(REPO),
        }
        done = subprocess.run(
            ["bash", "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
        )
    finally:
        stop(procs)
    assert done.returncode == 0, done.stderr[-4000:]
    # 1. the shards, built on the cluster
    for split in ("train", "validate", "test"):
        assert json.loads((run / "shards" / split / "_index.json").read_text())["samples"] > 0
    # 2. the trainer's folders, one with the user's text model and weights
    first = json.loads((run / "train" / "summary.json").read_text())
    assert first["complete"] and first["steps"] == 2
    own = json.loads((run / "train-cxrbert" / "config.json").read_text())["config"]["model"]
    assert own["text"]["path"] == str(text_model) and own["image"]["weights"] == str(weights)
    # 3. the evaluation of the ablation folders, side by side with the untrained reference
    doc = json.loads((run / "evaluate" / "evaluation.json").read_text())
    assert [m["checkpoint"]["preset"] for m in doc["models"]] == ["clip", "clip"]
    assert doc["models"][-1]["name"] == "untrained"
    assert (run / "evaluate" / "summary.png").exists() and "| clip@2 |" in (
        run / "evaluate" / "evaluation.md"
    ).read_text()
