"""The graph stages: ``graph`` (map: report graphs) and ``graph_embeddings`` (corpus).

``graph`` turns each report's counted mentions into RadGraph-style entities and relations
(build.py), or, with ``stages.graph.radgraph_json=PATH``, reads a user's RadGraph file instead
(radgraph.py; documents matched to reports by id or doc-key stem). A report without any entity is
rejected (``no_findings``; ``bad_value`` when its RadGraph document does not fit its text).

``graph_embeddings`` embeds every report graph over the fixed vocabulary (embed.py), one worker
task per input part, and writes the corpus concept table ``kg_concepts`` (hierarchy, counts,
co-occurrence) with part 0: a first round of tasks counts, the client sums, a second embeds.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
from distributed import as_completed

from pipeline.core.collector import collector_paused
from pipeline.core.errors import reject_table
from pipeline.core.io import Store
from pipeline.core.registry import CONTENT, corpus_stage, map_stage
from pipeline.core.runner import CorpusContext, commit_corpus_part
from pipeline.core.schemas import conform, empty
from pipeline.graph.build import LABEL_STATUS, graphs_from_mentions, rows_table
from pipeline.graph.embed import EmbeddingWeights, embed, encoding
from pipeline.graph.radgraph import import_report, read_radgraph
from pipeline.graph.vocabulary import load_vocabulary

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GraphConfig:
    """How report graphs are made.

    radgraph_json: a RadGraph JSON file read instead of deriving graphs; its labels may be RadGraph
        v1's (ANAT-DP...) or RadGraph-XL's (Observation::definitely present...), both normalised
        to kg_entities' v1 labels.
    """

    labeled_only: bool = True  # only mentions of the labeled sections (not indication, history)
    # a RadGraph JSON file to read instead of deriving graphs (its bytes join the fingerprint)
    radgraph_json: str | None = field(default=None, metadata={CONTENT: True})


@functools.lru_cache(maxsize=2)
def _radgraph_docs(path: str) -> dict[str, dict[str, Any]]:
    return read_radgraph(path)


def _from_radgraph(tables: Mapping[str, pa.Table], path: str) -> tuple[dict[str, tuple[list, list]], list]:
    docs = _radgraph_docs(path)
    reports = tables["reports"].select(["report_id", "text"]).to_pydict()
    sents: dict[str, list[tuple[int, int, int]]] = {}
    s = tables["sentences"].select(["report_id", "start", "end", "sentence_idx"]).to_pydict()
    for rid, a, b, i in zip(s["report_id"], s["start"], s["end"], s["sentence_idx"], strict=True):
        sents.setdefault(rid, []).append((a, b, i))
    graphs, rejected = {}, []
    for rid, text in zip(reports["report_id"], reports["text"], strict=True):
        doc = docs.get(rid)
        if doc is None:
            continue
        spans = sorted(sents.get(rid, []))
        try:
            graphs[rid] = import_report(
                rid, doc, text, ([x[0] for x in spans], [x[1] for x in spans], [x[2] for x in spans])
            )
        except (ValueError, KeyError, TypeError) as exc:
            rejected.append((rid, "bad_value", f"RadGraph document does not fit the report: {exc}"))
    return graphs, rejected


@map_stage(
    "graph",
    version=1,
    inputs=("reports", "mentions", "sentences"),
    outputs=("kg_entities", "kg_relations"),
    config=GraphConfig,
)
def graph(tables: Mapping[str, pa.Table], *, config: GraphConfig) -> dict[str, pa.Table]:
    """RadGraph-style entities and relations per report, from mentions or a RadGraph file."""
    rejected: list[tuple[str, str, str | None]] = []
    if config.radgraph_json:
        graphs, rejected = _from_radgraph(tables, config.radgraph_json)
    else:
        graphs = graphs_from_mentions(
            tables["mentions"], tables["sentences"], labeled_only=config.labeled_only
        )
    done = {rid for rid, *_ in rejected}
    for rid in tables["reports"].column("report_id").to_pylist():
        if rid not in done and not (rid in graphs and graphs[rid][0]):
            graphs.pop(rid, None)
            why = "no RadGraph document or entity" if config.radgraph_json else "no counted mention"
            rejected.append((rid, "no_findings", why))
    return {
        "kg_entities": rows_table((e for rid in sorted(graphs) for e in graphs[rid][0]), "kg_entities"),
        "kg_relations": rows_table((r for rid in sorted(graphs) for r in graphs[rid][1]), "kg_relations"),
        "rejects": conform(reject_table("graph", "kg_entities", rejected), "rejects"),
    }


# -- graph embeddings ----------------------------------------------------------------------------

STAGE = "graph_embeddings"


@dataclass(frozen=True)
class GraphEmbeddingConfig:
    """Weights of the embedding (see embed.py and schemas/graph_embeddings.yaml)."""

    present: float = 1.0
    uncertain: float = 0.5
    absent: float = -0.5
    ancestor_decay: float = 0.5
    location_weight: float = 0.5
    status_weight: float = 0.25
    top_cooccurring: int = 10  # co-occurring concepts kept per kg_concepts row

    @property
    def weights(self) -> EmbeddingWeights:
        return EmbeddingWeights(
            self.present,
            self.uncertain,
            self.absent,
            self.ancestor_decay,
            self.location_weight,
            self.status_weight,
        )


def _grouped(store: Store, index: int) -> dict[str, tuple[list[dict], list[dict]]]:
    entities = store.read_part("kg_entities", index).to_pylist()
    relations = store.read_part("kg_relations", index).to_pylist()
    out: dict[str, tuple[list[dict], list[dict]]] = {}
    for e in entities:
        out.setdefault(e["report_id"], ([], []))[0].append(e)
    for r in relations:
        out.setdefault(r["report_id"], ([], []))[1].append(r)
    return out


@collector_paused()
def _count_part(out: str, index: int) -> dict[str, Any]:
    """Worker task: per-concept counts and co-occurring pairs of one kg_entities part.

    Group-bys and a self-join over the part's columns (polars): a concept's ``n_reports`` counts
    the reports holding it, a pair (a < b) the reports where both co-occur (anatomy, or an
    observation present or uncertain)."""
    entities = pl.from_arrow(
        Store(out).read_part("kg_entities", index).select(["report_id", "concept", "kind", "label"])
    )
    status = pl.col("label").replace_strict(LABEL_STATUS, default=None, return_dtype=pl.String)
    entities = entities.with_columns(
        status=pl.when(pl.col("kind") == "observation").then(status).otherwise(None)
    )
    kinds = entities.group_by("concept", maintain_order=True).agg(pl.col("kind").first())
    totals = entities.group_by("concept").agg(
        n_entities=pl.len(),
        n_reports=pl.col("report_id").n_unique(),
        **{f"n_{s}": (pl.col("status") == s).sum() for s in ("present", "uncertain", "absent")},
    )
    together = (
        entities.filter((pl.col("kind") == "anatomy") | pl.col("status").is_in(["present", "uncertain"]))
        .select("report_id", "concept")
        .unique()
    )
    pairs = (
        together.join(together, on="report_id", suffix="_b")
        .filter(pl.col("concept") < pl.col("concept_b"))
        .group_by("concept", "concept_b")
        .len()
    )
    counts = {
        row.pop("concept"): Counter({k: v for k, v in row.items() if v})
        for row in totals.iter_rows(named=True)
    }
    return {
        "kinds": dict(kinds.iter_rows()),
        "counts": counts,
        "pairs": Counter({(a, b): n for a, b, n in pairs.iter_rows()}),
    }


def concepts_table(summaries: list[dict[str, Any]], top: int) -> pa.Table:
    """kg_concepts from the per-part summaries of :func:`_count_part`."""
    vocab = load_vocabulary()
    kinds: dict[str, str] = {}
    counts: dict[str, Counter] = {}
    pairs: Counter = Counter()
    for s in summaries:
        for c, k in s["kinds"].items():
            kinds.setdefault(c, k)
        for c, n in s["counts"].items():
            counts.setdefault(c, Counter()).update(n)
        pairs.update(s["pairs"])
    partners: dict[str, Counter] = {}
    for (a, b), n in pairs.items():
        partners.setdefault(a, Counter())[b] += n
        partners.setdefault(b, Counter())[a] += n
    rows = []
    for i, c in enumerate(vocab.concepts):
        rows.append((c, "observation", vocab.parent[c], len(vocab.ancestors(c)), i))
    for a in vocab.anatomy_terms:
        if a not in vocab.slot:
            rows.append((a, "anatomy", vocab.region(a), 1, -1))
    listed = {r[0] for r in rows}
    rows += [
        (c, "other" if kinds[c] == "observation" else kinds[c], None, 0, -1)
        for c in sorted(kinds)
        if c not in listed
    ]
    cols: dict[str, list] = {
        k: []
        for k in (
            "concept",
            "kind",
            "parent",
            "depth",
            "slot",
            "n_entities",
            "n_reports",
            "n_present",
            "n_uncertain",
            "n_absent",
            "cooccurring",
        )
    }
    for concept, kind, parent, depth, slot in rows:
        n = counts.get(concept, Counter())
        for k, v in zip(
            ("concept", "kind", "parent", "depth", "slot"), (concept, kind, parent, depth, slot), strict=True
        ):
            cols[k].append(v)
        for k in ("n_entities", "n_reports", "n_present", "n_uncertain", "n_absent"):
            cols[k].append(int(n[k]))
        best = sorted(partners.get(concept, Counter()).items(), key=lambda kv: (-kv[1], kv[0]))[:top]
        cols["cooccurring"].append([{"concept": b, "n_reports": int(m)} for b, m in best])
    target = conform(
        pa.table({k: cols[k] for k in cols}).cast(
            pa.schema(
                [
                    pa.field(k, t)
                    for k, t in zip(
                        cols,
                        [
                            pa.string(),
                            pa.string(),
                            pa.string(),
                            pa.int8(),
                            pa.int32(),
                            *[pa.int64()] * 5,
                            pa.list_(pa.struct([("concept", pa.string()), ("n_reports", pa.int64())])),
                        ],
                        strict=True,
                    )
                ]
            )
        ),
        "kg_concepts",
    )
    return target


def embeddings_table(
    graphs: Mapping[str, tuple[list[dict], list[dict]]], weights: EmbeddingWeights
) -> pa.Table:
    """graph_embeddings rows of ``graphs`` (report_id -> (entities, relations)), sorted by id."""
    ids = sorted(graphs)
    enc = encoding(weights)
    dim = int(enc.split("/d")[1].split("/")[0])
    vectors = np.stack([embed(*graphs[r], weights) for r in ids]) if ids else np.zeros((0, dim), np.float32)
    flat = pa.array(vectors.reshape(-1), pa.float32())
    return conform(
        pa.table(
            {
                "report_id": pa.array(ids, pa.string()),
                "vector": pa.FixedSizeListArray.from_arrays(flat, dim),
                "encoding": pa.array([enc] * len(ids), pa.string()),
                "n_entities": pa.array([len(graphs[r][0]) for r in ids], pa.int32()),
                "n_relations": pa.array([len(graphs[r][1]) for r in ids], pa.int32()),
            }
        ),
        "graph_embeddings",
        vector_size=dim,
    )


@collector_paused()
def _embed_part(
    out: str, fingerprint: str, index: int, config: GraphEmbeddingConfig, concepts: pa.Table | None
) -> dict[str, Any]:
    """Worker task: embed one kg_entities part and commit it (with kg_concepts on part 0)."""
    graphs = {rid: g for rid, g in _grouped(Store(out), index).items() if g[0]}
    tables = {"graph_embeddings": embeddings_table(graphs, config.weights)}
    tables["kg_concepts"] = concepts if concepts is not None else empty("kg_concepts")
    return commit_corpus_part(out, STAGE, index, tables, fingerprint, len(graphs), len(graphs))


@corpus_stage(
    STAGE,
    version=1,
    inputs=("kg_entities", "kg_relations"),
    outputs=("graph_embeddings", "kg_concepts"),
    config=GraphEmbeddingConfig,
)
def graph_embeddings(ctx: CorpusContext, *, config: GraphEmbeddingConfig) -> None:
    """A fixed-size graph embedding per report, and the corpus concept table."""
    parts = ctx.input_parts("kg_entities") or [0]
    token = uuid.uuid4().hex[:8]
    present = set(ctx.input_parts("kg_entities"))
    counted = ctx.client.gather(
        [
            ctx.client.submit(_count_part, ctx.out, i, key=f"{STAGE}-count-{token}-{i}", pure=False)
            for i in sorted(present)
        ]
    )
    concepts = concepts_table(counted, config.top_cooccurring)
    log.info("graph_embeddings: %d concepts, %d parts", concepts.num_rows, len(parts))
    if not present:
        tables = {"graph_embeddings": embeddings_table({}, config.weights), "kg_concepts": concepts}
        ctx.commit(0, commit_corpus_part(ctx.out, STAGE, 0, tables, ctx.fingerprint, 0, 0))
        return
    futures = {
        ctx.client.submit(
            _embed_part,
            ctx.out,
            ctx.fingerprint,
            i,
            config,
            concepts if i == parts[0] else None,
            key=f"{STAGE}-{token}-{i}",
            pure=False,
        ): i
        for i in parts
    }
    for future in as_completed(futures):
        ctx.commit(futures[future], future.result())
