"""What an evaluation leaves for people: ``evaluation.json``, ``evaluation.md`` and PNG plots.

Several models side by side (the eight ablation presets, a run's checkpoints over training, an
untrained reference): one table row and one bar group per model. Matplotlib is imported when a
plot is drawn (the Agg backend: no display needed).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "clip2clinic.evaluation"
VERSION = 1
PLOTS = ("summary.png", "roc.png", "recall.png", "cxr_align.png", "training.png")


def _f(x: float | None, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _ci(value: float | None, ci: Sequence[float | None], pct: bool = False) -> str:
    show = _pct if pct else _f
    if value is None:
        return "–"
    if ci[0] is None:
        return show(value)
    return f"{show(value)} [{show(ci[0])}, {show(ci[1])}]"


def summary_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row of headline figures per model (the ablation table)."""
    rows = []
    for r in results:
        zs, ret = r["zero_shot"], r["retrieval"]
        align = r["cxr_align"].get("run") or next(iter(r["cxr_align"].values()), None)
        probe = r.get("negation_probe")
        rows.append(
            {
                "model": r["name"],
                "step": r["checkpoint"]["step"],
                "mean AUROC": zs["mean"]["auroc"],
                "CheXpert-5 AUROC": zs["chexpert5"]["auroc"],
                "I2T R@1": ret["image_to_text"].get("recall@1"),
                "I2T R@5": ret["image_to_text"].get("recall@5"),
                "I2T R@10": ret["image_to_text"].get("recall@10"),
                "T2I R@1": ret["text_to_image"].get("recall@1"),
                "T2I R@5": ret["text_to_image"].get("recall@5"),
                "T2I R@10": ret["text_to_image"].get("recall@10"),
                "Task A": align["task_a"]["accuracy"] if align else None,
                "Task B": align["task_b"]["accuracy"] if align else None,
                "probe": probe["accuracy"] if probe else None,
            }
        )
    return rows


def write_json(path: Path, results: Sequence[dict[str, Any]], meta: dict[str, Any]) -> None:
    document = {"format": FORMAT, "version": VERSION, **meta, "models": list(results)}
    _atomic_text(path, json.dumps(document, indent=2, sort_keys=True, allow_nan=False) + "\n")


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines + [""]


def markdown(results: Sequence[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The tables a person reads: headline figures per model, then each task in detail."""
    names = [r["name"] for r in results]
    out = ["# Evaluation", ""]
    data = meta.get("data", {})
    out.append(
        f"Test split: {data.get('samples', '?')} images of {data.get('reports', '?')} reports "
        f"({data.get('shards', '')}); zero-shot truth: {meta['settings'].get('truth', 'labels')}. "
        f"{meta['settings']['level']:.0%} intervals: {meta['settings'].get('intervals', '')} "
        f"({meta['settings']['bootstrap']} resamples). Definitions: README, section Evaluation.\n"
    )
    out.append("## Side by side\n")
    header = [
        "model",
        "step",
        "mean AUROC",
        "CheXpert-5",
        "I2T R@1/5/10",
        "T2I R@1/5/10",
        "Task A",
        "Task B",
        "probe",
    ]
    rows = []
    for r, s in zip(results, summary_rows(results), strict=True):
        zs = r["zero_shot"]
        rows.append(
            [
                s["model"],
                str(s["step"]),
                _ci(zs["mean"]["auroc"], zs["mean"]["ci"]),
                _f(s["CheXpert-5 AUROC"]),
                "/".join(_pct(s[f"I2T R@{k}"]) for k in (1, 5, 10)),
                "/".join(_pct(s[f"T2I R@{k}"]) for k in (1, 5, 10)),
                _pct(s["Task A"]),
                _pct(s["Task B"]),
                _pct(s["probe"]),
            ]
        )
    out += _table(header, rows)

    out.append("## Zero-shot AUROC per observation\n")
    first = results[0]["zero_shot"]["observations"]
    least = results[0]["zero_shot"].get("min_positives")
    out.append(f"† not in the mean: fewer than {least} positives or negatives in the test split.\n")
    rows = []
    for obs, v in first.items():
        cells = [obs + ("" if v.get("in_mean", True) else " †"), f"{v['positives']}/{v['negatives']}"]
        cells += [
            _ci(r["zero_shot"]["observations"][obs]["auroc"], r["zero_shot"]["observations"][obs]["ci"])
            for r in results
        ]
        rows.append(cells)
    out += _table(["observation", "pos/neg", *names], rows)

    out.append("## Retrieval\n")
    rows = []
    for r in results:
        for direction, v in r["retrieval"].items():
            ks = sorted(int(k.split("@")[1]) for k in v if k.startswith("recall@"))
            rows.append(
                [r["name"], direction.replace("_", " ")]
                + [_pct(v[f"recall@{k}"]) for k in ks]
                + [_f(v["median_rank"], 1), f"{v['queries']} x {v['candidates']}"]
            )
    ks = sorted(
        int(k.split("@")[1]) for k in results[0]["retrieval"]["image_to_text"] if k.startswith("recall@")
    )
    out += _table(
        ["model", "direction", *[f"R@{k}" for k in ks], "median rank", "queries x candidates"], rows
    )

    out.append("## CXR-Align\n")
    out.append(
        "Task A: image nearer the report than its negated version; Task B: nearer the report than "
        "the report with the finding omitted; O>N: nearer the omitted than the negated report.\n"
    )
    rows = []
    for r in results:
        for source, v in r["cxr_align"].items():
            rows.append(
                [
                    r["name"],
                    source,
                    _ci(v["task_a"]["accuracy"], v["task_a"]["ci"], pct=True),
                    _ci(v["task_b"]["accuracy"], v["task_b"]["ci"], pct=True),
                    _ci(v["omitted_over_negation"]["accuracy"], v["omitted_over_negation"]["ci"], pct=True),
                    f"{v['task_a']['n']} ({v['rows']} rows, {v['unmatched_rows']} without an image)",
                ]
            )
    out += _table(["model", "source", "Task A", "Task B", "O>N", "items"], rows)
    locations = sorted(
        {loc for r in results for v in r["cxr_align"].values() for loc in v["task_a_by_location"]}
    )
    if locations:
        out.append("Task A by where the denial was placed:\n")
        rows = []
        for r in results:
            for source, v in r["cxr_align"].items():
                by = v["task_a_by_location"]
                rows.append(
                    [r["name"], source]
                    + [_pct(by[loc]["accuracy"]) if loc in by else "–" for loc in locations]
                )
        out += _table(["model", "source", *locations], rows)

    if any(r.get("negation_probe") for r in results):
        out.append("## Negation probe (text tower: original sentence vs its flip)\n")
        methods = sorted({m for r in results for m in (r.get("negation_probe") or {}).get("by_method", {})})
        directions = sorted(
            {d for r in results for d in (r.get("negation_probe") or {}).get("by_direction", {})}
        )
        rows = []
        for r in results:
            p = r.get("negation_probe")
            if not p:
                continue
            cells = [r["name"], _ci(p["accuracy"], p["ci"], pct=True), str(p["n"])]
            cells += [_pct(p["by_method"][m]["accuracy"]) if m in p["by_method"] else "–" for m in methods]
            cells += [
                _pct(p["by_direction"][d]["accuracy"]) if d in p["by_direction"] else "–" for d in directions
            ]
            rows.append(cells)
        out += _table(["model", "accuracy", "items", *methods, *directions], rows)

    out.append("## Models\n")
    rows = [
        [
            r["name"],
            r["checkpoint"].get("preset", ""),
            str(r["checkpoint"].get("step", "")),
            (r["checkpoint"].get("sha256") or "")[:12],
            r["checkpoint"].get("file", ""),
        ]
        for r in results
    ]
    out += _table(["model", "preset", "step", "sha256", "file"], rows)
    out.append("Plots: " + ", ".join(f"[{p}]({p})" for p in PLOTS) + "\n")
    return "\n".join(out)


# -- plots ---------------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _bars(ax: Any, groups: Sequence[str], series: dict[str, Sequence[float | None]], ylabel: str) -> None:
    width = 0.8 / max(1, len(series))
    x = np.arange(len(groups))
    for i, (label, values) in enumerate(series.items()):
        heights = [np.nan if v is None else v for v in values]
        ax.bar(x + (i - (len(series) - 1) / 2) * width, heights, width, label=label)
    ax.set_xticks(x, groups, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)


def plot_summary(path: Path, results: Sequence[dict[str, Any]]) -> None:
    """Headline figures, one bar per model per figure (the ablation figure)."""
    plt = _pyplot()
    rows = summary_rows(results)
    keys = ["mean AUROC", "CheXpert-5 AUROC", "I2T R@10", "T2I R@10", "Task A", "Task B", "probe"]
    fig, ax = plt.subplots(figsize=(max(7, 1.2 * len(keys) + 0.4 * len(rows)), 4))
    _bars(ax, keys, {r["model"]: [r[k] for k in keys] for r in rows}, "score (AUROC or share)")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, ncol=min(4, len(rows)))
    ax.set_title("Models side by side")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_roc(path: Path, results: Sequence[dict[str, Any]], curves: Sequence[dict[str, Any]]) -> None:
    """ROC curves per observation (one panel each), one line per model."""
    plt = _pyplot()
    names = sorted(
        {n for c in curves for n in c.get("roc", {})},
        key=lambda n: list(results[0]["zero_shot"]["observations"]).index(n),
    )
    cols = 4
    rows = max(1, math.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        for r, c in zip(results, curves, strict=True):
            if name in c.get("roc", {}):
                fpr, tpr = c["roc"][name]
                auc = r["zero_shot"]["observations"][name]["auroc"]
                ax.plot(fpr, tpr, lw=1.2, label=f"{r['name']} ({_f(auc, 2)})")
        ax.plot([0, 1], [0, 1], color="grey", lw=0.6, ls="--")
        v = results[0]["zero_shot"]["observations"][name]
        ax.set_title(f"{name} ({v['positives']}+/{v['negatives']}-)", fontsize=9)
        ax.legend(fontsize=6, loc="lower right")
        ax.set_xlabel("false positive rate", fontsize=7)
        ax.set_ylabel("true positive rate", fontsize=7)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_recall(path: Path, results: Sequence[dict[str, Any]]) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, direction in zip(axes, ("image_to_text", "text_to_image"), strict=True):
        ks = sorted(k for k in results[0]["retrieval"][direction] if k.startswith("recall@"))
        ks.sort(key=lambda k: int(k.split("@")[1]))
        _bars(
            ax,
            [k.replace("recall", "R") for k in ks],
            {r["name"]: [r["retrieval"][direction][k] for k in ks] for r in results},
            "recall",
        )
        ax.set_title(direction.replace("_", " "))
        ax.set_ylim(0, 1)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_cxr_align(path: Path, results: Sequence[dict[str, Any]]) -> None:
    plt = _pyplot()
    sources = sorted({s for r in results for s in r["cxr_align"]})
    fig, axes = plt.subplots(1, max(1, len(sources)), figsize=(5 * max(1, len(sources)), 3.6), squeeze=False)
    for ax, source in zip(axes.flat, sources, strict=False):
        tasks = ("task_a", "task_b", "omitted_over_negation")
        series = {
            r["name"]: [
                r["cxr_align"][source][t]["accuracy"] if source in r["cxr_align"] else None for t in tasks
            ]
            for r in results
        }
        _bars(ax, ["Task A", "Task B", "O>N"], series, "accuracy")
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_ylim(0, 1)
        ax.set_title(f"CXR-Align ({source})")
        ax.legend(fontsize=8)
    if not sources:
        axes[0, 0].text(0.5, 0.5, "no CXR-Align items", ha="center")
        axes[0, 0].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


LOSS_TERMS = ("loss", "loss_i2t", "loss_t2i", "loss_graph_image", "loss_graph_text")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The lines of a ``metrics.jsonl`` (a torn last line is skipped)."""
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def plot_training(path: Path, runs: dict[str, list[dict[str, Any]]]) -> None:
    """Loss terms over optimizer steps per training folder, with the learning rate and temperature."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    for label, rows in runs.items():
        steps = [r["step"] for r in rows]
        for term in LOSS_TERMS:
            values = [r.get(term) for r in rows]
            if any(v is not None for v in values):
                axes[0].plot(
                    steps, [np.nan if v is None else v for v in values], lw=1, label=f"{label}: {term}"
                )
        axes[1].plot(steps, [r.get("lr") for r in rows], lw=1, label=label)
        axes[2].plot(steps, [r.get("temperature") for r in rows], lw=1, label=label)
    for ax, title in zip(axes, ("loss terms", "learning rate", "temperature"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        if runs:
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_all(
    folder: Path,
    results: Sequence[dict[str, Any]],
    curves: Sequence[dict[str, Any]],
    meta: dict[str, Any],
    training: dict[str, list[dict[str, Any]]],
) -> list[str]:
    """Every file of an evaluation into ``folder``; returns their names."""
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "evaluation.json", results, meta)
    _atomic_text(folder / "evaluation.md", markdown(results, meta))
    plot_summary(folder / "summary.png", results)
    plot_roc(folder / "roc.png", results, curves)
    plot_recall(folder / "recall.png", results)
    plot_cxr_align(folder / "cxr_align.png", results)
    plot_training(folder / "training.png", training)
    return ["evaluation.json", "evaluation.md", *PLOTS]
