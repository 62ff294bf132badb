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
# # Images and shard samples
#
# The images stage's decoded pictures (`images`: 8-bit grayscale PNG per image of the chosen
# views), a few per view position, captioned with their report's positive observations (the
# `labels` dataset joined on `report_id`); then everything one training sample holds (one row of
# `shards/train`, every column). This notebook only reads; point it at a run folder with
# `CLIP2CLINIC_RUN=runs/<name>` (default `runs/demo`, what `make run` writes).

# %%
import io
import os
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from IPython.display import display
from PIL import Image

from pipeline.core.io import read_or_empty
from pipeline.core.schemas import chexpert_observations

RUN = Path(os.environ.get("CLIP2CLINIC_RUN", "runs/demo"))
OBSERVATIONS = list(chexpert_observations())
PER_VIEW = 6
LABEL_NAMES = {1.0: "positive", 0.0: "negative", -1.0: "uncertain"}


def load(dataset: str, columns: list[str] | None = None) -> pd.DataFrame:
    """A dataset of the run as pandas; an empty frame of its schema when the run has none of it."""
    return read_or_empty(str(RUN), dataset, columns).to_pandas()


def decode(png: bytes) -> np.ndarray:
    """An 8-bit grayscale image from PNG bytes."""
    with Image.open(io.BytesIO(png)) as im:
        return np.asarray(im.convert("L"))


images = load("images", ["image_id", "report_id", "view_position", "png", "height", "width", "source_format"])
labels = load("labels", ["report_id", *OBSERVATIONS])
print(f"{RUN}: {len(images)} images of {images.report_id.nunique()} reports")
if images.empty:
    per_view = "no images in this run"
else:
    per_view = images.groupby(images.view_position.fillna("unknown")).agg(
        images=("image_id", "size"), median_height=("height", "median"), median_width=("width", "median")
    )
display(per_view)

# %% [markdown]
# ## Images per view position
#
# Up to six images per view, in the dataset's order; the caption is the report id and its positive
# observations (`?` marks uncertain ones; `-` none).


# %%
def findings_of(report_id: str | None) -> str:
    """The positive (and, with '?', uncertain) observations of a report's labels row."""
    if report_id is None or report_id not in by_report.index:
        return "(no labels row)"
    row = by_report.loc[report_id]
    found = [o for o in OBSERVATIONS if row[o] == 1.0] + [f"{o}?" for o in OBSERVATIONS if row[o] == -1.0]
    return ", ".join(found) or "-"


by_report = labels.drop_duplicates("report_id").set_index("report_id")
if images.empty:
    print("no images in this run")
else:
    views = images.assign(view=images.view_position.fillna("unknown"))
    groups = {v: g.head(PER_VIEW) for v, g in views.groupby("view", sort=True)}
    fig, axes = plt.subplots(
        len(groups),
        PER_VIEW,
        figsize=(2.4 * PER_VIEW, 3.0 * len(groups)),
        squeeze=False,
        layout="constrained",
    )
    for r, (view, group) in enumerate(groups.items()):
        for c in range(PER_VIEW):
            ax = axes[r, c]
            ax.axis("off")
            if c >= len(group):
                continue
            picture = group.iloc[c]
            ax.imshow(decode(picture.png), cmap="gray", vmin=0, vmax=255)
            caption = f"{picture.report_id}\n" + "\n".join(
                textwrap.wrap(findings_of(picture.report_id), 26)[:3]
            )
            ax.set_title(caption, fontsize=7)
        axes[r, 0].text(
            -0.08,
            0.5,
            view,
            transform=axes[r, 0].transAxes,
            rotation=90,
            ha="right",
            va="center",
            fontsize=11,
        )
    plt.show()

# %% [markdown]
# ## One training sample, every column
#
# A row of `shards/train` (schemas/shards.yaml) joins everything a sample needs: the image, the
# training text, the 14 labels, the clinical vector and graph embedding, the report graph as
# lists (nodes and edges for the graph tower), the negated reports (hard-negative texts) and the
# report's clinical top-k neighbours. The row shown is the first with a graph, a negated report
# and neighbours, else the first row.


# %%
def first_sample() -> pd.Series | None:
    """The first train sample with a graph, a negated report and neighbours, else the first one;
    read a row group at a time, so a large run is not read whole."""
    fallback = None
    for path in sorted((RUN / "shards" / "train").glob("part-*.parquet")):
        parquet = pq.ParquetFile(path)
        for i in range(parquet.num_row_groups):
            rows = parquet.read_row_group(i).to_pandas()
            if rows.empty:
                continue
            fallback = rows.iloc[0] if fallback is None else fallback
            full = rows[
                (rows.node_texts.map(len) > 0)
                & (rows.negated_reports.map(len) > 0)
                & (rows.neighbor_ids.map(len) > 0)
            ]
            if len(full):
                return full.iloc[0]
    return fallback


sample = first_sample()
if sample is None:
    print("no train shards in this run: run the shards stage (the demo DAG ends with it)")
else:
    overview = pd.DataFrame(
        {
            "column": sample.index,
            "value": [
                f"{len(v)} bytes"
                if isinstance(v, bytes)
                else f"list of {len(v)}"
                if isinstance(v, np.ndarray | list)
                else textwrap.shorten(str(v), 80)
                for v in sample
            ],
        }
    )
display(overview if sample is not None else "no sample")

# %% [markdown]
# ### Its image and text

# %%
if sample is not None:
    fig, ax = plt.subplots(figsize=(3.2, 3.2))
    ax.imshow(decode(sample.image), cmap="gray", vmin=0, vmax=255)
    ax.set_title(
        f"{sample.image_id[:17]}...\n{sample.view_position}, {sample.image_height}x{sample.image_width}",
        fontsize=8,
    )
    ax.axis("off")
    plt.show()
    print(f"text ({sample.text_source}):\n" + textwrap.fill(sample.text, 110))

# %% [markdown]
# ### Its 14 labels, by name

# %%
if sample is not None:
    sample_labels = pd.DataFrame(
        {
            "observation": OBSERVATIONS,
            "value": sample.labels,
            "meaning": [LABEL_NAMES.get(v, "blank") if v == v else "blank" for v in sample.labels],
        }
    )
else:
    sample_labels = "no sample"
display(sample_labels)

# %% [markdown]
# ### Its graph lists, negated reports and neighbours
#
# Node lists are in entity offset order (`node_label_ids`: 0 ANAT-DP, 1 OBS-DP, 2 OBS-U, 3 OBS-DA);
# edges index into them (`edge_types`: 0 located_at, 1 modify, 2 suggestive_of).

# %%
NODE_LABELS = ["ANAT-DP", "OBS-DP", "OBS-U", "OBS-DA"]
RELATIONS = ["located_at", "modify", "suggestive_of"]

if sample is not None:
    graph_columns = [c for c in sample.index if c.startswith(("node_", "edge_"))]
    print("lengths:", {c: len(sample[c]) for c in graph_columns})
    print("vector sizes:", {c: len(sample[c]) for c in ("clinical_vector", "graph_embedding")})
    texts = [" ".join(t.split()) for t in sample.node_texts]
    for s, t, kind in zip(sample.edge_source, sample.edge_target, sample.edge_types, strict=True):
        print(
            f"  {texts[s]!r} ({NODE_LABELS[sample.node_label_ids[s]]}) -{RELATIONS[kind]}-> "
            f"{texts[t]!r} ({NODE_LABELS[sample.node_label_ids[t]]})"
        )
    print(f"\n{len(sample.negated_reports)} negated report(s):")
    for text in sample.negated_reports:
        print(textwrap.fill(text, 110, initial_indent="  - ", subsequent_indent="    "))
    neighbours = pd.DataFrame({"neighbor_id": sample.neighbor_ids, "score": sample.neighbor_scores})
else:
    neighbours = "no sample"
display(neighbours)
