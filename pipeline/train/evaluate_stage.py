"""The ``evaluate`` stage: score checkpoints on the run's test split, side by side.

After ``train`` in ``dag=train`` and ``dag=full`` (and the demo DAG), it scores the run's final
checkpoint; alone (``stage=evaluate``) it scores any checkpoint files or training folders given
as ``stages.evaluate.checkpoint=PATH`` or ``stages.evaluate.checkpoints=[A,B,...]`` (the eight
ablation presets into one table), plus, with ``untrained=true``, the untrained model of the first
one's config as the reference a trained model must beat.

Writes ``<out>/evaluate/``: ``evaluation.json`` (every figure, each model's checkpoint, sha256 and
config, the data's fingerprints), ``evaluation.md`` (tables), and PNGs (``summary.png`` the models
side by side, ``roc.png``, ``recall.png``, ``cxr_align.png``, ``training.png`` from each training
folder's ``metrics.jsonl``); and the ``evaluation`` dataset, one row per (model, figure). Skipped
when the checkpoints (their bytes, or the run's ``checkpoints`` dataset), the data and the
settings are unchanged.

Torch is imported when the stage runs, not when the registry loads it.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.core.errors import PipelineError
from pipeline.core.io import read_dataset
from pipeline.core.registry import CONTENT, corpus_stage
from pipeline.core.runner import CorpusContext, commit_corpus_part
from pipeline.core.schemas import load_schema

log = logging.getLogger(__name__)

STAGE = "evaluate"
FOLDER = "evaluate"  # under the run's out


def scored_files(path: str) -> list[str]:
    """The files of checkpoint ``path`` that scoring reads: the checkpoint itself (a training
    folder's final one) and its tokenizer. Their bytes join the fingerprint; a folder's other
    checkpoints, and a run folder's other datasets, do not."""
    from pipeline.train.evaluate import resolve_checkpoint  # torch: only when a path is given

    try:
        file = resolve_checkpoint(path)
    except ValueError:
        return [path]  # missing: the stage says so
    folder = file.parent.parent if file.parent.name == "checkpoints" else file.parent
    tokenizer = sorted(str(p) for p in (folder / "tokenizer").glob("*") if p.is_file())
    return [str(file), *tokenizer]


@dataclass(frozen=True)
class EvaluateConfig:
    # What to score. Empty: the run's final checkpoint (the `checkpoints` dataset). Paths are
    # checkpoint files or training folders (their final checkpoint); their bytes join the
    # stage's fingerprint, so a retrained file is scored again.
    checkpoint: str = field(default="", metadata={CONTENT: scored_files})
    checkpoints: tuple[str, ...] = field(default=(), metadata={CONTENT: scored_files})
    names: tuple[str, ...] = ()  # table labels for checkpoint(s), in order; default preset@step
    every_checkpoint: bool = False  # the run's kept checkpoints over training, not only the final
    untrained: bool = False  # add the untrained model (same config and seed) as a reference row
    # Zero-shot truth: our `labels` (in the shards), or an official labeler's rows of the run's
    # `official_labels` (chexpert, negbio: MIMIC-CXR's own files).
    truth: str = "labels"
    # Zero-shot: the prompt bank (default pipeline/train/prompts.yaml) and -1 labels' fate.
    prompts: str = field(default="", metadata={CONTENT: True})
    uncertain: str = "exclude"  # exclude | positive | negative
    bootstrap: int = 1000  # resamples (over studies) for the AUROC intervals; 0: none
    level: float = 0.95
    seed: int = 0
    ks: tuple[int, ...] = (1, 5, 10)  # Recall@K
    min_positives: int = 5  # an observation enters the mean AUROC with this many positives and negatives
    # A CXR-Align file in the published shape ({dataset: {dicom_id: {report, chosen, negation,
    # omitted, location}}}), scored beside the run's own cxr_align; images by image_id in `images`.
    cxr_align_json: str = field(default="", metadata={CONTENT: True})
    max_samples: int = 0  # score the first N test images only (0: all)
    batch_size: int = 64
    device: str = "auto"  # auto (cuda when available) | cpu | cuda


def _problems(config: EvaluateConfig) -> list[str]:
    problems = []
    if config.uncertain not in ("exclude", "positive", "negative"):
        problems.append(f"uncertain={config.uncertain!r}: choose exclude, positive or negative")
    if config.bootstrap < 0:
        problems.append(f"bootstrap must be >= 0, got {config.bootstrap}")
    if config.level not in (0.9, 0.95, 0.99):
        problems.append(f"level must be 0.9, 0.95 or 0.99, got {config.level}")
    if not config.ks or min(config.ks) < 1:
        problems.append(f"ks must be positive integers, got {list(config.ks)}")
    if config.device not in ("auto", "cpu", "cuda"):
        problems.append(f"device={config.device!r}: choose auto, cpu or cuda")
    if config.batch_size < 1:
        problems.append(f"batch_size must be >= 1, got {config.batch_size}")
    for name in (
        "prompts",
        "cxr_align_json",
        "checkpoint",
        "checkpoints",
    ):
        values = getattr(config, name)
        for value in values if isinstance(values, tuple) else (values,):
            if value and not Path(value).expanduser().exists():
                problems.append(f"{name}={value}: no such file or folder")
    return problems


def chosen_checkpoints(config: EvaluateConfig, ctx: CorpusContext) -> list[tuple[str, str]]:
    """(path, name) of each checkpoint to score, in table order. Raises PipelineError."""
    given = [p for p in (config.checkpoint, *config.checkpoints) if p]
    if config.names and len(config.names) != len(given):
        raise PipelineError(
            "E_CONFIG_VALUE",
            f"stages.evaluate.names has {len(config.names)} labels for {len(given)} checkpoints given; names "
            "label stages.evaluate.checkpoint / checkpoints, one per checkpoint in order",
        )
    if given:
        names = list(config.names) or [""] * len(given)
        return [(str(Path(p).expanduser().resolve()), n) for p, n in zip(given, names, strict=True)]
    if "checkpoints" not in ctx.runner.present_optional_inputs(ctx.stage):
        raise PipelineError(
            "E_EVAL_NO_CHECKPOINT",
            f"stage 'evaluate' has no checkpoint to score: {ctx.out} has no complete `checkpoints` dataset. "
            "Train first (dag=train, or stage=train), or give stages.evaluate.checkpoint=PATH "
            "(a .pt file or a training folder; stages.evaluate.checkpoints=[A,B] for several).",
        )
    rows = read_dataset(ctx.out, "checkpoints", columns=["file", "step", "is_final"]).to_pylist()
    rows = sorted(rows, key=lambda r: r["step"])
    if not config.every_checkpoint:
        rows = [r for r in rows if r["is_final"]] or rows[-1:]
    return [(os.path.join(os.path.abspath(ctx.store.root), r["file"]), "") for r in rows]


def evaluation_table(results: list[dict[str, Any]]) -> pa.Table:
    """The ``evaluation`` dataset: one row per (model, task, subset, metric)."""
    rows: list[dict[str, Any]] = []

    def add(
        r: dict[str, Any], task: str, subset: str, metric: str, value: Any, ci=(None, None), n=None
    ) -> None:
        if value is not None and isinstance(value, float) and math.isnan(value):
            value = None
        rows.append(
            {
                "model": r["name"],
                "checkpoint": r["checkpoint"].get("file"),
                "step": r["checkpoint"].get("step"),
                "task": task,
                "subset": subset,
                "metric": metric,
                "value": value,
                "ci_low": ci[0],
                "ci_high": ci[1],
                "n": n,
            }
        )

    for r in results:
        zs = r["zero_shot"]
        for obs, v in zs["observations"].items():
            add(r, "zero_shot", obs, "auroc", v["auroc"], v["ci"], v["positives"] + v["negatives"])
        for subset in ("mean", "chexpert5"):
            add(
                r,
                "zero_shot",
                subset,
                "auroc",
                zs[subset]["auroc"],
                zs[subset]["ci"],
                len(zs[subset]["observations"]),
            )
        for direction, v in r["retrieval"].items():
            for metric, value in v.items():
                if metric.startswith("recall@") or metric.endswith("_rank"):
                    add(r, "retrieval", direction, metric, value, n=v["queries"])
        for source, v in r["cxr_align"].items():
            for task in ("task_a", "task_b", "omitted_over_negation"):
                add(r, "cxr_align", source, task, v[task]["accuracy"], v[task]["ci"], v[task]["n"])
            for location, w in v["task_a_by_location"].items():
                add(r, "cxr_align", f"{source}/location={location}", "task_a", w["accuracy"], w["ci"], w["n"])
        p = r.get("negation_probe")
        if p:
            add(r, "negation_probe", "all", "accuracy", p["accuracy"], p["ci"], p["n"])
            for key in ("by_method", "by_direction"):
                for subset, w in p[key].items():
                    add(
                        r, "negation_probe", f"{key[3:]}={subset}", "accuracy", w["accuracy"], w["ci"], w["n"]
                    )
    schema = load_schema("evaluation")
    return pa.table({c.name: pa.array([row[c.name] for row in rows], c.type) for c in schema.columns})


@corpus_stage(
    STAGE,
    version=1,
    inputs=("shards/test",),
    optional_inputs=("checkpoints", "cxr_align", "negation_pairs", "images", "official_labels"),
    outputs=("evaluation",),
    config=EvaluateConfig,
)
def evaluate(ctx: CorpusContext, *, config: EvaluateConfig) -> None:
    """Score checkpoints on the test split: zero-shot AUROC, retrieval, CXR-Align A/B, negation probe."""
    problems = _problems(config)
    if problems:
        raise PipelineError("E_CONFIG_VALUE", "stages.evaluate: " + "; ".join(problems))
    if not ctx.store.local:
        raise PipelineError(
            "E_CONFIG_VALUE",
            f"stage 'evaluate' reads checkpoints with torch and writes plots into a local folder; out={ctx.out} "
            "is not one. Use a local path.",
        )
    if ctx.resume(0):
        return
    chosen = chosen_checkpoints(config, ctx)
    try:
        import torch

        from pipeline.train import evaluate as ev
        from pipeline.train import report
        from pipeline.train.config import to_dict
    except ImportError as exc:
        raise PipelineError(
            "E_TRAIN_DEPS", f"stage 'evaluate' needs PyTorch and matplotlib: pip install '.[train]' ({exc})"
        ) from exc
    if config.device == "cuda" and not torch.cuda.is_available():
        raise PipelineError(
            "E_CONFIG_VALUE",
            "stages.evaluate.device=cuda, but torch sees no CUDA device here; use device=auto",
        )
    device = "cuda" if config.device != "cpu" and torch.cuda.is_available() else "cpu"
    out = Path(os.path.abspath(ctx.store.root))
    present = set(ctx.runner.present_optional_inputs(ctx.stage))
    started = time.perf_counter()
    data = _read_data(ctx, config, ev, out, present)
    test = data.test
    prompts = ev.read_prompts(config.prompts or None)
    settings = ev.ScoreSettings(
        uncertain=config.uncertain,
        bootstrap=config.bootstrap,
        level=config.level,
        seed=config.seed,
        ks=tuple(config.ks),
        batch_size=config.batch_size,
        min_positives=config.min_positives,
    )
    log.info(
        "evaluate: %d test images, %d model(s), on %s", len(test), len(chosen) + config.untrained, device
    )

    models: list[tuple[str, str, bool]] = [(path, name, False) for path, name in chosen]
    if config.untrained:
        models.append((chosen[0][0], "untrained", True))
    results, curves = [], []
    for path, name, untrained in models:
        try:
            loaded = ev.load_model(path, device=device, untrained=untrained, name=name)
            figures, curve = ev.score(loaded, data, prompts, settings)
        except ValueError as exc:
            raise PipelineError("E_EVAL_CHECKPOINT", f"stage 'evaluate': {exc}") from exc
        results.append(
            {"name": loaded.name, "checkpoint": loaded.info, "config": to_dict(loaded.config), **figures}
        )
        curves.append(curve)
        log.info(
            "evaluate: %s mean AUROC %s, Task A %s",
            loaded.name,
            figures["zero_shot"]["mean"]["auroc"],
            next(iter(figures["cxr_align"].values()), {}).get("task_a", {}).get("accuracy"),
        )
        del loaded
    _unique_names(results)
    training: dict[str, tuple[str, list[dict[str, Any]]]] = {}
    for r in results:  # one training curve per training folder, under its model's final name
        if not r["checkpoint"]["untrained"]:
            folder = Path(r["checkpoint"]["train_folder"])
            label = r["name"] if len(chosen) > 1 else folder.parent.name or r["name"]
            training.setdefault(str(folder), (label, report.read_metrics(folder / "metrics.jsonl")))
    meta = {
        "data": {
            "shards": str(out / "shards" / "test"),
            "samples": len(test),
            "reports": len(set(test.report_ids)),
            "fingerprints": data.fingerprints,
            "cxr_align_json": config.cxr_align_json or None,
        },
        "settings": {
            "truth": config.truth,
            "uncertain": config.uncertain,
            "bootstrap": config.bootstrap,
            "intervals": "percentile bootstrap over studies"
            if config.bootstrap
            else "Wilson (shares), none (AUROC)",
            "level": config.level,
            "seed": config.seed,
            "ks": list(config.ks),
            "min_positives": config.min_positives,
            "prompts": config.prompts or str(ev.DEFAULT_PROMPTS),
            "device": device,
        },
        "prompts": prompts,
        "stage_fingerprint": ctx.fingerprint,
        "seconds": round(time.perf_counter() - started, 3),
    }
    folder = out / FOLDER
    files = report.write_all(folder, results, curves, meta, dict(training.values()))
    table = evaluation_table(results)
    extra = {"files": [f"{FOLDER}/{f}" for f in files], "models": [r["name"] for r in results]}
    n = table.num_rows
    ctx.commit(
        0, commit_corpus_part(ctx.out, STAGE, 0, {"evaluation": table}, ctx.fingerprint, n, n, extra=extra)
    )
    log.info("evaluate: %s", folder / "evaluation.md")


def _read_data(ctx: CorpusContext, config: EvaluateConfig, ev: Any, out: Path, present: set[str]) -> Any:
    """The test split and what else is scored on it (``ev`` is pipeline.train.evaluate)."""
    test = ev.read_test_set(out / "shards" / "test", max_samples=config.max_samples)
    if config.truth != "labels":
        if "official_labels" not in present:
            raise PipelineError(
                "E_INPUT_MISSING",
                f"stages.evaluate.truth={config.truth} reads the run's `official_labels`, which is not complete "
                f"under {ctx.out} (a dump with label files: MIMIC-CXR, CheXpert); use truth=labels.",
            )
        try:
            test = test.with_official_labels(read_dataset(ctx.out, "official_labels"), config.truth)
        except ValueError as exc:
            raise PipelineError("E_CONFIG_VALUE", f"stages.evaluate: {exc}") from exc
    data = ev.EvalData(test=test, fingerprints=ctx.runner.upstream_fingerprints(ctx.stage))
    if "cxr_align" in present:
        data.align.append(ev.align_items_from_table(read_dataset(ctx.out, "cxr_align"), test))
    if config.cxr_align_json:
        if "images" not in present:
            raise PipelineError(
                "E_INPUT_MISSING",
                "stages.evaluate.cxr_align_json locates its images through the run's `images` dataset, "
                f"which is not complete under {ctx.out}: run the images stage first (dag=preprocess).",
            )
        try:
            rows = ev.read_published_align(config.cxr_align_json)
        except ValueError as exc:
            raise PipelineError("E_CONFIG_VALUE", f"stages.evaluate: {exc}") from exc
        items, pngs = ev.align_items_from_json(rows, ev.read_images(out / "images", rows))
        data.align.append(items)
        data.align_pngs["json"] = pngs
        if items.unmatched:
            log.warning(
                "evaluate: %d of %d CXR-Align items name an image this run does not hold",
                items.unmatched,
                items.rows,
            )
    if "negation_pairs" in present:
        data.probe = ev.probe_pairs_from_table(read_dataset(ctx.out, "negation_pairs"), test)
    return data


def _unique_names(results: list[dict[str, Any]]) -> None:
    """Two models of one label (full@1000 from two runs) get their training folder's run name."""
    seen: dict[str, int] = {}
    for r in results:
        seen[r["name"]] = seen.get(r["name"], 0) + 1
    for r in results:
        if seen[r["name"]] > 1 and not r["checkpoint"]["untrained"]:
            run = Path(r["checkpoint"]["train_folder"]).parent.name
            r["name"] = f"{run}:{r['name']}"
