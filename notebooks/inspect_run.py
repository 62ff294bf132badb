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
# # Inspect a run
#
# Look at what a run produced: stage manifests, rejects by reason, label prevalence, agreement with
# the dump's official labels, and one report with its mentions marked. This notebook only reads;
# point it at a run folder with `CLIP2CLINIC_RUN` (default `runs/demo`, what `make run` writes).

# %%
import json
import os
from pathlib import Path

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt
import pandas as pd

from pipeline.core.io import read_dataset

RUN = Path(os.environ.get("CLIP2CLINIC_RUN", "runs/demo"))
datasets = sorted(p.parent.name for p in RUN.glob("*/_manifest.json"))
datasets

# %% [markdown]
# ## Manifests: rows in, out and rejected per dataset

# %%
manifests = {d: json.loads((RUN / d / "_manifest.json").read_text()) for d in datasets}
overview = pd.DataFrame(
    [
        {
            "dataset": d,
            "stage": m.get("stage", ""),
            "rows": m.get("rows"),
            "rejected": m.get("rows_rejected", ""),
            "stage rows in": m.get("stage_rows", {}).get("rows_in", ""),
            "stage rows out": m.get("stage_rows", {}).get("rows_out", ""),
            "seconds": m.get("timings", {}).get("stage_seconds", ""),
        }
        for d, m in manifests.items()
    ]
)
overview

# %% [markdown]
# ## Rejects by stage and reason

# %%
rejects = read_dataset(str(RUN), "rejects").to_pandas()
by_reason = rejects.groupby(["stage", "reason_code"]).size().rename("rows").reset_index()
if len(by_reason):
    ax = by_reason.set_index(["stage", "reason_code"])["rows"].plot.barh(figsize=(6, 3), title="rejects")
    ax.set_xlabel("rows")
    plt.tight_layout()
    plt.show()
by_reason

# %% [markdown]
# ## Label prevalence (1 positive, -1 uncertain, 0 negative)

# %%
if "labels" in datasets:
    labels = read_dataset(str(RUN), "labels").to_pandas().drop(columns=["provenance"])
    observations = [c for c in labels.columns if c != "report_id"]
    prevalence = pd.DataFrame({v: (labels[observations] == v).sum() for v in (1.0, -1.0, 0.0)}).rename(
        columns={1.0: "positive", -1.0: "uncertain", 0.0: "negative"}
    )
    prevalence.plot.barh(stacked=True, figsize=(7, 5), title=f"labels of {len(labels)} reports")
    plt.tight_layout()
    plt.show()
    display_prevalence = prevalence
else:
    display_prevalence = "no labels in this run"
display_prevalence

# %% [markdown]
# ## Agreement with the dump's official labels

# %%
if "label_agreement" in datasets:
    from pipeline.evaluate.agreement import summary

    agreement = pd.DataFrame(summary(read_dataset(str(RUN), "label_agreement")))
else:
    agreement = "the dump ships no official labels"
agreement

# %% [markdown]
# ## One report, its sentences and mentions

# %%
if "mentions" in datasets:
    reports = read_dataset(str(RUN), "reports").to_pandas().set_index("report_id")
    mentions = read_dataset(str(RUN), "mentions").to_pandas()
    counts = mentions.groupby("report_id").size()
    report_id = counts.idxmax()
    text = reports.loc[report_id, "text"]
    marked, last = [], 0
    for m in mentions[mentions.report_id == report_id].sort_values("start").itertuples():
        if m.start < last:
            continue
        marked.append(text[last : m.start])
        marked.append(f"[{text[m.start : m.end]}|{m.finding}:{m.status}]")
        last = m.end
    marked.append(text[last:])
    print(report_id)
    print("".join(marked))
    example = mentions[mentions.report_id == report_id][
        ["sentence_idx", "text", "finding", "status", "cue", "rule"]
    ]
else:
    example = "no mentions in this run"
example
