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
# # Labels and cues
#
# How the text engine turns a report into CheXpert labels: one report with its mentions marked by
# status (present / absent / uncertain), the cue and rule behind each mention and the label each
# observation gets, label prevalence over the run, and agreement with the dump's official labels.
# This notebook only reads; point it at a run folder with `CLIP2CLINIC_RUN=runs/<name>` (default
# `runs/demo`, what `make run` writes).

# %%
import html
import os
from pathlib import Path

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import HTML, display

from pipeline.core.io import read_or_empty
from pipeline.core.schemas import chexpert_observations

RUN = Path(os.environ.get("CLIP2CLINIC_RUN", "runs/demo"))
OBSERVATIONS = list(chexpert_observations())
STATUS_COLOURS = {"present": "#f4a6a6", "absent": "#a8d8a8", "uncertain": "#ffd27f"}


def load(dataset: str, columns: list[str] | None = None) -> pd.DataFrame:
    """A dataset of the run as pandas; an empty frame of its schema when the run has none of it."""
    return read_or_empty(str(RUN), dataset, columns).to_pandas()


reports = load("reports", ["report_id", "text"]).set_index("report_id")
mentions = load("mentions")
labels = load("labels")
print(f"{RUN}: {len(reports)} reports, {len(mentions)} mentions, {len(labels)} labelled reports")

# %% [markdown]
# ## One report, its mentions marked by status
#
# Mention offsets (`start`, `end`, and the cue's `cue_start`, `cue_end`) point into `reports.text`:
# the extract stage adds each sentence's start to the engine's offsets within the sentence. The
# report chosen is the one whose labelled mentions show the most statuses (then the most
# mentions), among those with a labels row. Colours: red present, green absent, amber
# uncertain; the deciding cue is underlined. Mentions outside the labelled section (by default
# the last impression when there is one, as the MIT-LCP CheXpert labeler reads: indication and
# findings then do not count) are drawn dashed and faded: they are kept, but do not count toward
# labels. Hover a mark for its finding and rule.


# %%
def pick_report(mentions: pd.DataFrame) -> str | None:
    """The report whose labelled mentions have the most distinct statuses, then the most mentions;
    one with a labels row when there is such a report."""
    known = mentions[mentions.report_id.isin(reports.index)]
    if known.report_id.isin(labels.report_id).any():
        known = known[known.report_id.isin(labels.report_id)]
    counted = known[known.in_labeled_section.astype(bool)]
    if counted.empty:
        counted = known
    if counted.empty:
        return None
    score = counted.groupby("report_id").agg(statuses=("status", "nunique"), n=("status", "size"))
    return score.sort_values(["statuses", "n"], ascending=False, kind="stable").index[0]


def marked_html(text: str, spans: pd.DataFrame) -> str:
    """``text`` as HTML with each mention in a coloured <mark> and each cue underlined."""
    pieces = []  # (start, end, opening tag, closing tag)
    for m in spans.itertuples():
        labelled = bool(m.in_labeled_section)
        style = f"background:{STATUS_COLOURS.get(m.status, '#ddd')};padding:0 2px;border-radius:3px;"
        if not labelled:
            style += "opacity:0.55;border:1px dashed #666;"
        observation = m.observation if isinstance(m.observation, str) else "no observation"
        tip = html.escape(f"{m.finding} ({observation}): {m.status}, {m.rule}")
        pieces.append((int(m.start), int(m.end), f'<mark style="{style}" title="{tip}">', "</mark>"))
    cues = spans.dropna(subset=["cue_start", "cue_end"])
    for start, end in sorted({(int(c.cue_start), int(c.cue_end)) for c in cues.itertuples()}):
        pieces.append((start, end, '<u style="text-decoration-thickness:2px">', "</u>"))
    out, last = [], 0
    for start, end, opening, closing in sorted(pieces):
        if start < last:  # overlapping span: keep the first one drawn (the table lists every mention)
            continue
        out += [html.escape(text[last:start]), opening, html.escape(text[start:end]), closing]
        last = end
    out.append(html.escape(text[last:]))
    legend = " ".join(
        f'<mark style="background:{c};padding:0 4px;border-radius:3px">{s}</mark>'
        for s, c in STATUS_COLOURS.items()
    )
    return (
        f"<p>{legend} <u>cue</u> <span style='border:1px dashed #666;opacity:0.55'>not labelled</span></p>"
        f'<pre style="white-space:pre-wrap;font-size:12px;line-height:1.6">{"".join(out)}</pre>'
    )


report_id = pick_report(mentions) if len(mentions) else None
if report_id is None:
    display(HTML("<p>No mention in this run: nothing to mark.</p>"))
else:
    these = mentions[mentions.report_id == report_id].sort_values(["start", "end"])
    text = reports.loc[report_id, "text"]
    bad = [m.text for m in these.itertuples() if text[m.start : m.end] != m.text]
    print(f"report {report_id}: {len(these)} mentions; offsets that miss reports.text: {len(bad)}")
    display(HTML(marked_html(text, these)))

# %% [markdown]
# ### The cue and rule behind each mention
#
# `rule` names what decided the status: `neg.<preceding|following>.<cue>`, `unc.<...>.<cue>`,
# `normal.<anchor>_<qualifier>` ("heart size is normal"), `qual.<...>`, `statement.<finding>` or
# `default.present` (no cue in scope).

# %%
if report_id is None:
    mention_table = "no mentions in this run"
else:
    mention_table = these[
        [
            "section",
            "sentence_idx",
            "text",
            "finding",
            "observation",
            "status",
            "cue",
            "rule",
            "in_labeled_section",
        ]
    ].reset_index(drop=True)
display(mention_table)

# %% [markdown]
# ### The resulting CheXpert labels of that report
#
# Each non-blank label with the mentions that decided it (the `provenance` column of `labels`):
# per observation, positive if any counted mention is present, else uncertain if any is uncertain,
# else negative if any is absent, else blank.

# %%
LABEL_NAMES = {1.0: "positive (1)", 0.0: "negative (0)", -1.0: "uncertain (-1)"}


def label_rows(row: pd.Series) -> pd.DataFrame:
    """One line per observation: its label and the finding, status, cue and rule that decided it."""
    decided: dict[str, list[str]] = {}
    for p in row["provenance"]:
        cue = f" cue '{p['cue']}'" if p["cue"] else ""
        decided.setdefault(p["observation"], []).append(f"{p['finding']}: {p['status']}{cue} [{p['rule']}]")
    return pd.DataFrame(
        {
            "observation": OBSERVATIONS,
            "label": [
                LABEL_NAMES.get(row[o], "blank") if pd.notna(row[o]) else "blank" for o in OBSERVATIONS
            ],
            "decided by": ["; ".join(decided.get(o, [])) for o in OBSERVATIONS],
        }
    )


report_labels = labels[labels.report_id == report_id] if report_id is not None else labels.iloc[:0]
if report_id is None:
    label_table = "no report to show"
elif report_labels.empty:
    label_table = "this report has no labels row (rejected by parse or extract?)"
else:
    label_table = label_rows(report_labels.iloc[0])
display(label_table)

# %% [markdown]
# ## Label prevalence per observation
#
# Counts over every labelled report of the run: positive (1), uncertain (-1), negative (0) and
# blank (no counted mention).

# %%
if labels.empty:
    prevalence = "no labels in this run"
else:
    values = labels[OBSERVATIONS]
    prevalence = pd.DataFrame(
        {
            "positive": (values == 1.0).sum(),
            "uncertain": (values == -1.0).sum(),
            "negative": (values == 0.0).sum(),
            "blank": values.isna().sum(),
        }
    )
    ax = prevalence.iloc[::-1].plot.barh(
        stacked=True,
        figsize=(8, 5),
        color=["#d62728", "#ff9f1c", "#2ca02c", "#d9d9d9"],
        title=f"labels of {len(labels)} reports",
    )
    ax.set_xlabel("reports")
    ax.legend(loc="lower right", fontsize=8)
    plt.tight_layout()
    plt.show()
display(prevalence)

# %% [markdown]
# ## Agreement with the dump's official labels
#
# `label_agreement` holds, per labeler (chexpert, negbio, ...) and observation, a confusion of our
# state against theirs over 1 / 0 / -1 / blank, counted over the reports both sides label.
# `pipeline.evaluate.agreement.summary` turns it into exact agreement and positive-class F1 (1 on
# both sides; uncertain and blank count as not positive). Below: agreement per observation, the
# confusion summed over observations per labeler, and the first disagreements report by report
# (from `official_labels`).

# %%
agreement_counts = load("label_agreement")
if agreement_counts.empty:
    agreement = "the dump ships no official labels (no label_agreement in this run)"
else:
    import pyarrow as pa

    from pipeline.evaluate.agreement import STATES, summary

    agreement = pd.DataFrame(summary(pa.Table.from_pandas(agreement_counts, preserve_index=False)))
    exact = agreement.pivot(index="observation", columns="labeler", values="agreement")
    labelers = sorted(agreement_counts.labeler.unique())
    fig, axes = plt.subplots(
        1,
        1 + len(labelers),
        figsize=(4 + 3.4 * len(labelers), 5),
        layout="constrained",
        gridspec_kw={"width_ratios": [1.3] + [1] * len(labelers)},
    )
    axes = np.atleast_1d(axes)
    grid = exact.to_numpy(dtype=float)
    im = axes[0].imshow(grid, vmin=0.5, vmax=1.0, cmap="RdYlGn", aspect="auto")
    axes[0].set_xticks(range(len(exact.columns)), exact.columns)
    axes[0].set_yticks(range(len(exact.index)), exact.index, fontsize=8)
    for (i, j), v in np.ndenumerate(grid):
        axes[0].text(j, i, "-" if np.isnan(v) else f"{v:.0%}", ha="center", va="center", fontsize=8)
    axes[0].set_title("exact agreement (1/0/-1/blank)")
    fig.colorbar(im, ax=axes[0], shrink=0.6)
    for ax, labeler in zip(axes[1:], labelers, strict=True):
        cm = (
            agreement_counts[agreement_counts.labeler == labeler]
            .pivot_table(index="ours", columns="theirs", values="count", aggfunc="sum")
            .reindex(index=list(STATES), columns=list(STATES))
            .fillna(0)
            .to_numpy(dtype=float)
        )
        shade = np.log1p(cm) / max(np.log1p(cm).max(), 1.0)
        ax.imshow(shade, cmap="Blues", vmin=0, vmax=1)
        for (i, j), v in np.ndenumerate(cm):
            ax.text(
                j,
                i,
                f"{int(v)}",
                ha="center",
                va="center",
                fontsize=8,
                color="w" if shade[i, j] > 0.6 else "k",
            )
        ax.set_xticks(range(len(STATES)), STATES)
        ax.set_yticks(range(len(STATES)), STATES)
        ax.set_xlabel(f"{labeler} (theirs)")
        ax.set_ylabel("ours")
        ax.set_title(f"all observations vs {labeler}")
    plt.show()
display(agreement)

# %% [markdown]
# ### Where we disagree, report by report

# %%
official = load("official_labels")
if official.empty or labels.empty:
    disagreements = "no official labels to compare with"
else:
    from pipeline.evaluate.agreement import state

    ours = labels.set_index("report_id")
    rows = []
    for rec in official[official.report_id.isin(ours.index)].to_dict("records"):
        for obs in OBSERVATIONS:
            mine, theirs = state(ours.at[rec["report_id"], obs]), state(rec.get(obs))
            if mine != theirs:
                rows.append([rec["report_id"], rec["labeler"], obs, mine, theirs])
    disagreements = pd.DataFrame(rows, columns=["report_id", "labeler", "observation", "ours", "theirs"])
    print(f"{len(disagreements)} disagreeing (report, labeler, observation) cells")
    disagreements = disagreements.head(20)
display(disagreements)
