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
# # Hard negatives
#
# What the hardneg stages made of a run's reports: sentences with one finding's status flipped
# (`negation_pairs`), counted per rewrite family and per flip direction; what the self-consistency
# gate turned away and why (`rejects` of the `hardneg_rewrite` and `hardneg` stages); and one
# CXR-Align row (`cxr_align`: the report, its negated and its omitted variant). Every shipped text
# was read back by the text engine (`reread` stage) and showed exactly the intended statuses.
# This notebook only reads; point it at a run folder with `CLIP2CLINIC_RUN=runs/<name>` (default
# `runs/demo`, what `make run` writes).

# %%
import difflib
import html
import os
from pathlib import Path

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import HTML, display

from pipeline.core.io import read_or_empty

RUN = Path(os.environ.get("CLIP2CLINIC_RUN", "runs/demo"))
HARDNEG_STAGES = ("hardneg_rewrite", "hardneg")


def load(dataset: str, columns: list[str] | None = None) -> pd.DataFrame:
    """A dataset of the run as pandas; an empty frame of its schema when the run has none of it."""
    return read_or_empty(str(RUN), dataset, columns).to_pandas()


PAIR_COLUMNS = [
    "candidate_id",
    "report_id",
    "finding",
    "original",
    "flipped",
    "original_status",
    "flipped_status",
    "method",
]
pairs = load("negation_pairs", PAIR_COLUMNS)
candidates = load(
    "hardneg_candidates",
    [
        "candidate_id",
        "kind",
        "finding",
        "method",
        "original",
        "original_status",
        "flipped_status",
        "texts",
        "expected",
    ],
)
readings = load("hardneg_readings", ["candidate_id", "observed"])
rejects = load("rejects")
rejects = rejects[rejects.stage.isin(HARDNEG_STAGES)] if len(rejects) else rejects
print(
    f"{RUN}: {len(candidates)} candidates, {len(pairs)} sentence pairs shipped, {len(rejects)} hardneg rejects"
)

# %% [markdown]
# ## Original and flipped sentences, side by side
#
# One example per rewrite family and flip direction (`method`: `cue`, `list`, `qualifier`,
# `there_is_no`, `no_prefix`, `move_out`; see `pipeline/hardneg/rewrite.py`). Words the rewrite
# removed are struck through in red, words it added are green.


# %%
def word_diff(before: str, after: str, *, inline: bool = False) -> tuple[str, str]:
    """``before`` and ``after`` as HTML with the removed and added words marked; ``inline``: both
    marks in the second string (a one-line diff)."""
    a, b = before.split(), after.split()
    left, right = [], []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        old, new = html.escape(" ".join(a[i1:i2])), html.escape(" ".join(b[j1:j2]))
        if op == "equal":
            left.append(old)
            right.append(new)
            continue
        if old:
            struck = f'<del style="background:#fdd;color:#a00">{old}</del>'
            (right if inline else left).append(struck)
        if new:
            right.append(f'<ins style="background:#dfd;color:#060;text-decoration:none">{new}</ins>')
    return " ".join(left), " ".join(right)


if pairs.empty:
    display(HTML("<p>No negation pair in this run.</p>"))
else:
    pairs["direction"] = pairs.original_status + " → " + pairs.flipped_status
    examples = pairs.groupby(["method", "direction"], sort=True).head(1)
    rows = []
    for p in examples.itertuples():
        left, right = word_diff(p.original, p.flipped)
        rows.append(
            f"<tr><td>{html.escape(p.method)}</td><td>{html.escape(p.finding)}</td>"
            f"<td>{html.escape(p.direction)}</td><td>{left}</td><td>{right}</td></tr>"
        )
    display(
        HTML(
            '<table style="font-size:12px"><tr><th>method</th><th>finding</th><th>flip</th>'
            "<th>original</th><th>flipped</th></tr>" + "".join(rows) + "</table>"
        )
    )

# %% [markdown]
# The same pairs as a plain table (first 15 of the run):

# %%
if pairs.empty:
    pair_table = "no negation pairs in this run"
else:
    pair_table = pairs[
        ["finding", "original", "flipped", "original_status", "flipped_status", "method"]
    ].head(15)
display(pair_table)

# %% [markdown]
# ## Pairs per rewrite family and per flip direction

# %%
if pairs.empty:
    per_method = "no negation pairs in this run"
else:
    per_method = pd.crosstab(pairs.method, pairs.direction, margins=True)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.5), layout="constrained")
    pd.crosstab(pairs.method, pairs.direction).plot.barh(stacked=True, ax=axes[0], title="pairs per method")
    axes[0].set_xlabel("pairs")
    axes[0].legend(fontsize=8, title="flip", title_fontsize=8)
    pairs.direction.value_counts().sort_index().plot.barh(
        ax=axes[1], title="pairs per flip direction", color="#6a51a3"
    )
    axes[1].set_xlabel("pairs")
    plt.show()
display(per_method)

# %% [markdown]
# ## What the gate turned away, and why
#
# Reason codes of the hardneg stages (`pipeline/hardneg/stage.py`): `hardneg_rewrite` rejects a
# report with `no_findings` (no sentence of its labelled sections mentions a finding);
# `hardneg` rejects a candidate with `flip_failed`, into `negation_pairs` (sentence flips) or
# `negated_reports` (report denials). Its `detail` says which: no rewrite family applies (method
# `none`: a statement, a shared cue, an uncertain list...), no reading (the reread stage did not
# run), or the gate proper, where the text engine read the rewrite differently from what was
# intended (`text i: read '...', expected '...'`).


# %%
def why(detail: str | None) -> str:
    detail = detail or ""
    if detail.startswith("no rewrite family applies"):
        return "no rewrite family applies"
    if detail.startswith("no reading"):
        return "no reading (reread missing)"
    if detail.startswith("text ") or "readings for" in detail:
        return "read back differently (gate)"
    return detail or "(no detail)"


if rejects.empty:
    reasons = "no hardneg rejects in this run"
else:
    rejects = rejects.assign(why=rejects.detail.map(why))
    reasons = rejects.groupby(["stage", "dataset", "reason_code", "why"]).size().rename("rows").reset_index()
display(reasons)

# %% [markdown]
# Flip candidates no family could rewrite, by finding and original status: what the rewriter
# leaves alone.

# %%
if candidates.empty:
    unflipped = "no hardneg candidates in this run"
else:
    none = candidates[(candidates.kind == "flip") & (candidates.method == "none")]
    unflipped = (
        none.groupby(["finding", "original_status"])
        .size()
        .rename("candidates")
        .sort_values(ascending=False)
        .head(15)
        if len(none)
        else "every flip candidate found a rewrite family"
    )
display(unflipped)

# %% [markdown]
# Rewrites the text engine read back differently (the gate at work), with the sentence, the
# rewrite, what was expected and what was read:

# %%
gate = rejects[rejects.why == "read back differently (gate)"] if len(rejects) else rejects
if gate.empty:
    gate_table = "the gate rejected no rewrite in this run: every rewrite read back as intended"
else:
    gate_table = (
        gate[["row_id", "dataset", "detail"]]
        .merge(candidates, left_on="row_id", right_on="candidate_id", how="left")
        .merge(readings, on="candidate_id", how="left")[
            ["finding", "method", "original", "texts", "expected", "observed", "detail"]
        ]
        .head(15)
    )
display(gate_table)

# %% [markdown]
# ## One CXR-Align row
#
# For a report of the benchmark splits and one finding it states (`finding`, ours; `chosen`, its
# CheXpert class, as the published file has it): the report (comparisons removed), the negation
# (the finding's sentences removed and a denial inserted at `location`: first, middle, last, or
# `add` when nothing else is left) and the omitted report (the sentences removed, no denial). Task A
# asks whether the image is nearer the report than the negation; task B, nearer the report than
# the omitted one. The variants are shown as diffs against the report (struck red: removed,
# green: added). The row shown is the run's first; when the run has no benchmark rows, a
# `negated_reports` row (train templates) stands in.

# %%
align = load("cxr_align")
source = "cxr_align"
if align.empty:
    align, source = load("negated_reports"), "negated_reports"
if align.empty:
    display(HTML("<p>No cxr_align or negated_reports row in this run.</p>"))
else:
    row = align.iloc[0]
    _, negation = word_diff(row.report, row.negation, inline=True)
    _, omitted = word_diff(row.report, row.omitted, inline=True)
    display(
        HTML(
            f"<p><b>{source}</b> row of report {html.escape(row.report_id)}: finding "
            f"<code>{html.escape(row.finding)}</code>, chosen <code>{html.escape(row.chosen)}</code>, "
            f"denial placed <b>{html.escape(row.location)}</b></p>"
            '<table style="font-size:12px">'
            f"<tr><th>report</th><td>{html.escape(row.report)}</td></tr>"
            f"<tr><th>negation</th><td>{negation}</td></tr>"
            f"<tr><th>omitted</th><td>{omitted}</td></tr></table>"
        )
    )
