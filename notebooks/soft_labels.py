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
# # Soft labels of one batch
#
# The training target of the `full` preset for one batch: the first 16 samples of the run's
# `shards/train` split (samples of a neighbour group are contiguous, so a batch read in order holds
# clinical neighbours together, as the training reader keeps them). The target is computed by
# the project's own `pipeline.similarity.soft`:
#
#     S = w_text * S_text + w_clinical * S_clinical + w_graph * S_graph
#     T = identity_mix * I + (1 - identity_mix) * row_softmax(S / temperature)
#
# with the weights of `PRESETS["full"]` and the `soft_temperature` / `identity_mix` defaults of
# `LossConfig` (`pipeline/train/config.py`). `S_clinical` and `S_graph` are cosines of the shards'
# `clinical_vector` and `graph_embedding`, exactly as in training.
#
# **`S_text` here is a stand-in.** In training it is the cosine of the text tower's *current*
# embeddings of the batch's texts (the dynamic part, which changes as the model learns). This
# notebook stays torch-free and needs no trained checkpoint, so it uses the cosine of TF-IDF
# vectors of the batch's `text` column (words of letters, lower-cased, smoothed idf over the
# batch), computed with numpy. It shows the shape of the target, not the numbers a trained text
# tower would give.
#
# This notebook only reads; point it at a run folder with `CLIP2CLINIC_RUN=runs/<name>` (default
# `runs/demo`, what `make run` writes).

# %%
import os
import re
from pathlib import Path

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from IPython.display import display

from pipeline.core.schemas import chexpert_observations
from pipeline.similarity.soft import (
    SoftLabelConfig,
    clinical_similarity,
    combined_similarity,
    cosine_similarity,
    graph_similarity,
    soft_targets,
)
from pipeline.train.config import PRESETS, LossConfig

RUN = Path(os.environ.get("CLIP2CLINIC_RUN", "runs/demo"))
BATCH = 16
COLUMNS = [
    "image_id",
    "report_id",
    "group_id",
    "view_position",
    "text",
    "labels",
    "clinical_vector",
    "graph_embedding",
]


def first_samples(n: int) -> pd.DataFrame:
    """The first ``n`` samples of the train split, read a row group at a time (not the whole split)."""
    tables, rows = [], 0
    for path in sorted((RUN / "shards" / "train").glob("part-*.parquet")):
        parquet = pq.ParquetFile(path)
        for i in range(parquet.num_row_groups):
            tables.append(parquet.read_row_group(i, columns=COLUMNS))
            rows += tables[-1].num_rows
            if rows >= n:
                return pa.concat_tables(tables).slice(0, n).to_pandas()
    return pa.concat_tables(tables).to_pandas() if tables else pd.DataFrame(columns=COLUMNS)


batch = first_samples(BATCH)
print(f"a batch of {len(batch)} samples from {RUN / 'shards' / 'train'}")

# %% [markdown]
# ## The batch

# %%
OBSERVATIONS = chexpert_observations()


def positives(labels: np.ndarray) -> str:
    """The observations a sample's label vector marks positive (1) or uncertain (-1, with '?')."""
    return ", ".join(
        o + ("?" if v == -1 else "") for o, v in zip(OBSERVATIONS, labels, strict=True) if v in (1.0, -1.0)
    )


if batch.empty:
    batch_table = "no train shards in this run: run the shards stage (the demo DAG ends with it)"
else:
    batch_table = pd.DataFrame(
        {
            "report_id": batch.report_id,
            "group": batch.group_id,
            "view": batch.view_position,
            "positive / uncertain": batch.labels.map(positives),
            "text": batch.text.str.slice(0, 70),
        }
    )
display(batch_table)

# %% [markdown]
# ## The weights, and the three similarity components

# %%
loss = LossConfig()
full = PRESETS["full"]
config = SoftLabelConfig(
    text_weight=full["text_weight"],
    clinical_weight=full["clinical_weight"],
    graph_weight=full["graph_weight"],
    temperature=loss.soft_temperature,
    identity_mix=loss.identity_mix,
)
print(config)


def tfidf(texts: list[str]) -> np.ndarray:
    """TF-IDF rows of ``texts`` over their own vocabulary (the stand-in for text embeddings)."""
    docs = [re.findall(r"[a-z]+", t.lower()) for t in texts]
    vocabulary = {w: i for i, w in enumerate(sorted({w for d in docs for w in d}))}
    counts = np.zeros((len(docs), len(vocabulary)))
    for i, d in enumerate(docs):
        for w in d:
            counts[i, vocabulary[w]] += 1
    df = (counts > 0).sum(axis=0)
    idf = np.log((1 + len(docs)) / (1 + df)) + 1
    return counts * idf


if batch.empty:
    components = {}
else:
    components = {
        "text (TF-IDF stand-in)": cosine_similarity(tfidf(batch.text.tolist())),
        "clinical": clinical_similarity(np.stack(batch.clinical_vector.to_numpy())),
        "graph": graph_similarity(np.stack(batch.graph_embedding.to_numpy())),
    }
    combined = combined_similarity(
        components["text (TF-IDF stand-in)"], components["clinical"], components["graph"], config=config
    )
    targets = soft_targets(
        components["text (TF-IDF stand-in)"], components["clinical"], components["graph"], config=config
    )
    zero_graphs = int((np.abs(np.stack(batch.graph_embedding.to_numpy())).sum(axis=1) == 0).sum())
    print(f"samples with no graph (zero embedding, cosine 0 with everything, itself included): {zero_graphs}")


def heatmap(ax: plt.Axes, matrix: np.ndarray, title: str, vmin: float, vmax: float, cmap: str) -> None:
    im = ax.imshow(matrix, vmin=vmin, vmax=vmax, cmap=cmap)
    ax.set_title(title, fontsize=10)
    ax.set_xticks(range(len(matrix)))
    ax.set_yticks(range(len(matrix)))
    ax.tick_params(labelsize=6)
    plt.colorbar(im, ax=ax, shrink=0.75)


if components:
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.2), layout="constrained")
    for ax, (name, s) in zip(axes, components.items(), strict=False):
        w = {"text (TF-IDF stand-in)": config.text_weight, "clinical": config.clinical_weight}.get(
            name, config.graph_weight
        )
        heatmap(ax, s, f"S_{name}  (weight {w})", -1, 1, "RdBu_r")
    heatmap(axes[3], combined, "S = weighted sum", -1, 1, "RdBu_r")
    fig.supxlabel("sample j of the batch")
    fig.supylabel("sample i")
    plt.show()
else:
    print("no batch, no similarities")

# %% [markdown]
# ## The soft target next to the identity
#
# The identity is the ordinary CLIP target (every weight 0 gives exactly it). Row i of `T` is
# image i's target over the batch's texts (and text i's over the images): half of it stays on
# the matched pair (`identity_mix`), the rest is a softmax over the row of `S` at temperature
# 0.1. A sample's similarity with itself is the largest, so most of that softmax lands on the
# diagonal too; only near-duplicates (two images of one report, reports with the same labels and
# graph) take a visible share. The third panel hides the diagonal to show the small off-diagonal
# mass on its own scale.

# %%
if components:
    identity = np.eye(len(batch))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), layout="constrained")
    heatmap(axes[0], targets, "soft target T (full preset)", 0, 1, "viridis")
    heatmap(axes[1], identity, "identity (CLIP target)", 0, 1, "viridis")
    off_diagonal = np.where(identity > 0, np.nan, targets)  # the diagonal hidden, own colour scale
    top = float(np.nanmax(off_diagonal)) if len(batch) > 1 else 1.0
    heatmap(axes[2], off_diagonal, "T off the diagonal (diagonal blank)", 0, max(top, 1e-9), "viridis")
    plt.show()
    row_sums = targets.sum(axis=1)
    print("row sums of T:", np.round(row_sums, 12))
    print(
        "every row sums to 1:",
        bool(np.allclose(row_sums, 1.0)),
        "| all entries >= 0:",
        bool((targets >= 0).all()),
    )
    off = 1 - np.diag(targets)
    print(
        f"mass moved off the matched pair per row: min {off.min():.3f}, mean {off.mean():.3f}, max {off.max():.3f}"
    )
else:
    print("no batch, no targets")

# %% [markdown]
# ## Who shares each sample's target
#
# For each sample, the other sample of the batch that gets the largest share of its target row.

# %%
if components and len(batch) > 1:
    others = targets - np.diag(np.diag(targets))
    j = others.argmax(axis=1)
    partners = pd.DataFrame(
        {
            "report_id": batch.report_id,
            "positive / uncertain": batch.labels.map(positives),
            "nearest report": batch.report_id.to_numpy()[j],
            "its positives": batch.labels.map(positives).to_numpy()[j],
            "target share": others[np.arange(len(j)), j].round(3),
            "clinical cos": components["clinical"][np.arange(len(j)), j].round(2),
        }
    )
else:
    partners = "a batch of fewer than two samples has no partners"
display(partners)
