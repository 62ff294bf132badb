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
# # A report's knowledge graph
#
# The graph stage's RadGraph-style entities (`kg_entities`: ANAT-DP anatomy, OBS-DP present,
# OBS-U uncertain, OBS-DA absent observations; modifiers take RadGraph's labels) and relations
# (`kg_relations`: located_at, modify, suggestive_of) of one report, drawn with networkx, beside
# the RadGraph JSON the project exports for it (`pipeline.graph.radgraph.export_report`). This
# notebook only reads; point it at a run folder with `CLIP2CLINIC_RUN=runs/<name>` (default
# `runs/demo`, what `make run` writes).

# %%
import json
import os
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt
import networkx as nx
import pandas as pd
from IPython.display import display
from matplotlib.patches import Patch

from pipeline.core.io import read_or_empty
from pipeline.graph.build import entity_order
from pipeline.graph.radgraph import export_report, import_report
from pipeline.graph.views import to_networkx

RUN = Path(os.environ.get("CLIP2CLINIC_RUN", "runs/demo"))
LABEL_COLOURS = {"ANAT-DP": "#6baed6", "OBS-DP": "#ef6548", "OBS-U": "#fdae6b", "OBS-DA": "#74c476"}
LABEL_MEANING = {
    "ANAT-DP": "anatomy",
    "OBS-DP": "observation present",
    "OBS-U": "observation uncertain",
    "OBS-DA": "observation absent",
}


def load(dataset: str, columns: list[str] | None = None) -> pd.DataFrame:
    """A dataset of the run as pandas; an empty frame of its schema when the run has none of it."""
    return read_or_empty(str(RUN), dataset, columns).to_pandas()


reports = load("reports", ["report_id", "text"]).set_index("report_id")
entities = load("kg_entities")
relations = load("kg_relations")
print(
    f"{RUN}: {len(entities)} entities and {len(relations)} relations over {entities.report_id.nunique()} reports"
)

# %% [markdown]
# ## The run's graphs in numbers

# %%
if entities.empty:
    overview = "no kg_entities in this run"
else:
    print("relations:", relations.groupby("relation").size().to_dict() if len(relations) else {})
    overview = pd.crosstab(entities.label, entities.kind, margins=True)  # entities by label and kind
display(overview)

# %% [markdown]
# ## One report
#
# The report shown is the one whose graph has the most entity labels, then the most relations,
# among graphs small enough to read (at most 20 entities; any graph when none is that small).


# %%
def pick_report() -> str | None:
    """A report with entities, preferring many labels and relations in a readable graph."""
    known = entities[entities.report_id.isin(reports.index)]
    if known.empty:
        return None
    score = known.groupby("report_id").agg(labels=("label", "nunique"), n=("entity_id", "size"))
    score["relations"] = relations.groupby("report_id").size().reindex(score.index, fill_value=0)
    small = score[score.n <= 20]
    score = small if len(small) else score
    return score.sort_values(
        ["labels", "relations", "n"], ascending=[False, False, True], kind="stable"
    ).index[0]


report_id = pick_report()
if report_id is None:
    these_entities = these_relations = None
    table = "no entity in this run"
else:
    these_entities = entities[entities.report_id == report_id]
    these_entities = these_entities.iloc[
        sorted(range(len(these_entities)), key=lambda i: entity_order(these_entities.entity_id.iloc[i]))
    ]
    these_relations = relations[relations.report_id == report_id]
    text = reports.loc[report_id, "text"]
    print(f"report {report_id}: {len(these_entities)} entities, {len(these_relations)} relations")
    print(text)
    table = these_entities[["entity_id", "label", "kind", "text", "concept", "sentence_idx"]].reset_index(
        drop=True
    )
display(table)

# %% [markdown]
# ### The graph
#
# Nodes are entities, coloured by label, placed left to right in text order, one band per kind
# (modifiers above, observations in the middle, anatomy below); edges point from source to
# target and are labelled by relation. Built with `pipeline.graph.views.to_networkx`.

# %%
BAND = {"modifier": 1.0, "observation": 0.0, "anatomy": -1.0}

if report_id is None:
    print("no graph to draw")
else:
    graph = to_networkx(report_id, these_entities.to_dict("records"), these_relations.to_dict("records"))
    order = {e: i for i, e in enumerate(these_entities.entity_id)}
    pos = {
        n: (
            order[n],
            BAND.get(d["kind"], 0.0) + (0.25 if order[n] % 2 else -0.25) * (d["kind"] != "observation"),
        )
        for n, d in graph.nodes(data=True)
    }
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(graph)), 5.5))
    nx.draw_networkx_nodes(
        graph,
        pos,
        ax=ax,
        node_color=[LABEL_COLOURS.get(d["label"], "#bbb") for _, d in graph.nodes(data=True)],
        node_size=2000,
        edgecolors="#333",
    )
    nx.draw_networkx_labels(
        graph,
        pos,
        ax=ax,
        labels={
            n: f"{n}\n" + "\n".join(textwrap.wrap(" ".join(d["text"].split()), 13, break_long_words=False))
            for n, d in graph.nodes(data=True)
        },
        font_size=7,
    )
    nx.draw_networkx_edges(
        graph, pos, ax=ax, arrows=True, arrowsize=14, node_size=2000, connectionstyle="arc3,rad=0.15"
    )
    nx.draw_networkx_edge_labels(
        graph,
        pos,
        ax=ax,
        edge_labels={(s, t): d["relation"] for s, t, d in graph.edges(data=True)},
        font_size=7,
        connectionstyle="arc3,rad=0.15",
    )
    ax.legend(
        handles=[Patch(color=c, label=f"{k}: {LABEL_MEANING[k]}") for k, c in LABEL_COLOURS.items()],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.02),
        ncol=4,
        fontsize=8,
        frameon=False,
    )
    ax.set_title(f"knowledge graph of {report_id}")
    ax.margins(x=0.06, y=0.15)
    ax.axis("off")
    plt.tight_layout()
    plt.show()

# %% [markdown]
# ### Its RadGraph JSON
#
# `export_report` writes RadGraph's shape: `text` is the report's tokens joined by single spaces;
# each entity has its `tokens`, `label`, inclusive token indices `start_ix`/`end_ix` and its
# outgoing `relations` as `[relation, target_id]`. Reading it back with `import_report` recovers
# ids, labels, offsets and relations exactly (checked below).

# %%
if report_id is None:
    print("no graph to export")
else:
    document = export_report(text, these_entities.to_dict("records"), these_relations.to_dict("records"))
    # json.dumps per entity, one entity a line: the same JSON, easier to read than indent=2
    lines = ",\n".join(f"    {json.dumps(eid)}: {json.dumps(e)}" for eid, e in document["entities"].items())
    print(f'{{\n  "text": {json.dumps(document["text"])},\n  "entities": {{\n{lines}\n  }}\n}}')

    back_entities, back_relations = import_report(report_id, document, text)
    same = [(e["entity_id"], e["label"], e["start"], e["end"]) for e in back_entities] == [
        (e.entity_id, e.label, e.start, e.end) for e in these_entities.itertuples()
    ] and sorted((r["source_id"], r["target_id"], r["relation"]) for r in back_relations) == sorted(
        zip(these_relations.source_id, these_relations.target_id, these_relations.relation, strict=True)
    )
    print(f"round trip through RadGraph JSON keeps entities and relations: {same}")
