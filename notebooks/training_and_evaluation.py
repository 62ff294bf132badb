# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Training and evaluation
#
# What the `train` and `evaluate` stages left in a run: the loss terms over optimizer steps, the
# learning rate and temperature, the zero-shot ROC curves per observation, retrieval and
# CXR-Align figures, and the side-by-side table of every model the evaluation scored (the
# ablation table when it scored several presets). This notebook only reads; point it at a run
# with `CLIP2CLINIC_RUN=runs/<name>` (default `runs/demo`, what `make run` writes). To fill the
# table with the paper's ablation rows, train each preset into its own run and score them
# together: `python -m pipeline.run stage=evaluate out=runs/demo
# 'stages.evaluate.checkpoints=[runs/clip/train,runs/full/train]' stages.evaluate.untrained=true`.

# %%
import json
import os
from pathlib import Path

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt
import pandas as pd

from pipeline.core.io import read_dataset
from pipeline.train.report import summary_rows

RUN = Path(os.environ.get("CLIP2CLINIC_RUN", "runs/demo"))
if not (RUN / "evaluate" / "evaluation.json").exists():
    raise FileNotFoundError(
        f"{RUN} has no evaluation: train and evaluate first (python -m pipeline.run dag=train out={RUN})"
    )
summary = json.loads((RUN / "train" / "summary.json").read_text())
{k: summary.get(k) for k in ("steps", "epochs", "samples", "device", "world_size", "seconds", "final")}

# %% [markdown]
# ## Loss terms over steps
#
# `loss` is the sum the optimizer sees: soft cross-entropy image to text (negated reports as
# extra columns) and text to image, plus `lambda_g` times the graph-image term.

# %%
metrics = read_dataset(str(RUN), "train_metrics").to_pandas()
terms = [
    c
    for c in ("loss", "loss_i2t", "loss_t2i", "loss_graph_image", "loss_graph_text")
    if metrics[c].notna().any()
]
fig, axes = plt.subplots(1, 3, figsize=(14, 3.5))
metrics.plot(x="step", y=terms, ax=axes[0], lw=1, title="loss terms")
metrics.plot(x="step", y="lr", ax=axes[1], lw=1, title="learning rate", legend=False)
metrics.plot(x="step", y="temperature", ax=axes[2], lw=1, title="temperature", legend=False)
fig.tight_layout()

# %% [markdown]
# ## The side-by-side table
#
# One row per model the evaluation scored. AUROC intervals are bootstrap intervals over
# studies; the accuracy columns are shares of CXR-Align items and probe pairs.

# %%
evaluation = json.loads((RUN / "evaluate" / "evaluation.json").read_text())
table = pd.DataFrame(summary_rows(evaluation["models"])).set_index("model")
table["AUROC 95% CI"] = [m["zero_shot"]["mean"]["ci"] for m in evaluation["models"]]
table.round(3)

# %% [markdown]
# ## Zero-shot AUROC per observation
#
# Observations with fewer than `min_positives` positives or negatives in the test split are
# reported but left out of the mean (`in_mean`).

# %%
per_obs = pd.DataFrame(
    {
        m["name"]: {obs: v["auroc"] for obs, v in m["zero_shot"]["observations"].items()}
        for m in evaluation["models"]
    }
)
counts = pd.DataFrame(evaluation["models"][0]["zero_shot"]["observations"]).T[
    ["positives", "negatives", "in_mean"]
]
per_obs.join(counts).round(3)

# %% [markdown]
# ## The stage's plots
#
# ROC curves per observation, Recall@K both ways, CXR-Align Tasks A and B (and whether the
# omitted report beats the negated one), and the models side by side.

# %%
from PIL import Image

for name in ("roc.png", "recall.png", "cxr_align.png", "summary.png"):
    image = Image.open(RUN / "evaluate" / name)
    fig, ax = plt.subplots(figsize=(image.width / 100, image.height / 100))
    ax.imshow(image)
    ax.set_title(name)
    ax.axis("off")

# %% [markdown]
# ## The same figures as a table other tools read
#
# The `evaluation` dataset: one row per (model, task, subset, metric).

# %%
table = read_dataset(str(RUN), "evaluation").to_pandas()
table[table["task"] == "cxr_align"].head(20)
