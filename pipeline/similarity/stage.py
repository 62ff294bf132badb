"""The similarity stages: ``clinical_vectors`` (map) and ``similarity`` (corpus-scale exact top-k).

``clinical_vectors`` encodes each report's labels and fine findings (encoding.py).

``similarity`` finds every report's ``k`` nearest reports over the whole corpus (topk.py):

1. one worker task reads the ``clinical_vectors`` parts (and the splits from ``reports``, and
   ``graph_embeddings`` when its weight is set), sorts by report_id, groups identical vectors and
   writes that index to the stage's staging folder; only a small summary returns to the client;
2. one task per block of ``reports_per_part`` reports (in id order) loads the index (once per
   worker), searches its block against every candidate and writes its part of
   ``similarity_topk`` with :func:`commit_corpus_part` on the worker.

A report is rejected (``no_findings``, ``no_neighbors``) when it cannot have a meaningful neighbour: its vectors are
all zero, or no other report shares its split. Score components: ``clinical`` (clinical_vectors)
and ``graph`` (graph_embeddings, report_id + vector, once the graph stage exists), each weighted by
config; a component with weight 0 is not read, and its score column is null.
"""

from __future__ import annotations

import functools
import io
import logging
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from distributed import as_completed

from pipeline.core.errors import PipelineError, reject_table
from pipeline.core.io import Store
from pipeline.core.registry import corpus_stage, map_stage
from pipeline.core.runner import CorpusContext, commit_corpus_part
from pipeline.core.schemas import check_file_schema, empty
from pipeline.similarity.encoding import ClinicalVectorConfig, clinical_vectors_table, encode, vectors_of
from pipeline.similarity.topk import COMPONENTS, CorpusIndex, Searcher, build_index

log = logging.getLogger(__name__)

STAGE = "similarity"
COMPONENT_DATASETS: dict[str, str] = {"clinical": "clinical_vectors", "graph": "graph_embeddings"}


@map_stage(
    "clinical_vectors",
    version=1,
    inputs=("labels", "findings"),
    outputs=("clinical_vectors",),
    config=ClinicalVectorConfig,
)
def clinical_vectors(tables: Mapping[str, pa.Table], *, config: ClinicalVectorConfig) -> dict[str, pa.Table]:
    """One clinical vector per labels row; rows with values outside the label domain are rejected."""
    encoded = encode(tables["labels"], tables["findings"], config)
    return {
        "clinical_vectors": clinical_vectors_table(encoded, config),
        "rejects": reject_table("clinical_vectors", "clinical_vectors", encoded.rejected),
    }


@dataclass(frozen=True)
class SimilarityConfig:
    """Top-k settings. Block sizes change speed and memory only, never the result."""

    k: int = 32
    within_split: bool = False  # neighbours only from the report's own split (train / validate / test)
    clinical_weight: float = 1.0  # weight of the clinical cosine in the score
    graph_weight: float = 0.0  # weight of the graph-embedding cosine (needs graph_embeddings)
    reports_per_part: int = 8192  # reports per task and per output part
    query_block: int = 256  # groups of identical vectors searched together
    candidate_block: int = 32768  # candidate groups per matmul (buffer: query_block x this, float32)
    first_block: int = 4096  # candidate groups scored in full before the sketch takes over
    sketch_dims: int = 32  # columns of the upper-bound sketch


def weights_of(config: SimilarityConfig) -> dict[str, float]:
    """The active components and their weights, in COMPONENTS order.

    Raises PipelineError(E_CONFIG_VALUE) for negative or non-finite weights, all weights zero,
    ``k < 1`` or non-positive block sizes.
    """
    weights = {"clinical": config.clinical_weight, "graph": config.graph_weight}
    if any(not math.isfinite(w) or w < 0 for w in weights.values()):
        raise PipelineError(
            "E_CONFIG_VALUE", f"stages.similarity weights must be finite and >= 0, got {weights}"
        )
    active = {name: float(w) for name in COMPONENTS if (w := weights[name]) > 0}
    if not active:
        raise PipelineError(
            "E_CONFIG_VALUE", "stages.similarity: every component weight is 0; set clinical_weight=1.0."
        )
    sizes = (
        config.k,
        config.reports_per_part,
        config.query_block,
        config.candidate_block,
        config.first_block,
    )
    if min(sizes) < 1 or config.sketch_dims < 0:
        raise PipelineError("E_CONFIG_VALUE", f"stages.similarity: k and block sizes must be >= 1 ({config})")
    return active


@corpus_stage(
    STAGE,
    version=1,
    inputs=("clinical_vectors", "reports"),
    outputs=("similarity_topk",),
    config=SimilarityConfig,
    optional_inputs=("graph_embeddings",),
)
def similarity(ctx: CorpusContext, *, config: SimilarityConfig) -> None:
    """Exact top-k neighbours of every report (score = weighted component cosines), sparse triplets."""
    weights = weights_of(config)
    if "graph" in weights:
        # An optional input: its fingerprint joins ours when present; the graph weight needs it.
        manifest = ctx.store.read_json(ctx.store.manifest_path("graph_embeddings"))
        if not manifest or not manifest.get("complete"):
            raise PipelineError(
                "E_INPUT_MISSING",
                f"stages.similarity.graph_weight={config.graph_weight} needs graph_embeddings under {ctx.out}; "
                "run the graph stage first, or set graph_weight=0.",
            )
    token = uuid.uuid4().hex[:12]
    summary = ctx.client.submit(
        _prepare, ctx.out, config, token, key=f"{STAGE}-prepare-{token}", pure=False
    ).result()
    log.info("similarity: %s", summary)
    n = summary["reports"]
    if n == 0:
        tables = {"similarity_topk": empty("similarity_topk")}
        ctx.commit(0, commit_corpus_part(ctx.out, STAGE, 0, tables, ctx.fingerprint, 0, 0))
        return
    step = config.reports_per_part
    futures = {
        ctx.client.submit(
            _topk_part,
            ctx.out,
            ctx.fingerprint,
            i,
            lo,
            min(n, lo + step),
            config,
            token,
            key=f"{STAGE}-{token}-{i}",
            pure=False,
        ): i
        for i, lo in enumerate(range(0, n, step))
    }
    try:
        for future in as_completed(futures):
            ctx.commit(futures[future], future.result())
    finally:
        ctx.client.run(_forget)


# -- worker side ---------------------------------------------------------------------------------


def _staging(store: Store, name: str = "") -> str:
    return store.path("_state", STAGE, "staging", name) if name else store.path("_state", STAGE, "staging")


def _read_columns(store: Store, dataset: str, index: int, columns: list[str]) -> pa.Table:
    """Some columns of one part, after checking its schema stamp (Store.read_part reads them all)."""
    path = store.part_path(dataset, index)
    with store.parquet_file(path) as parquet:
        check_file_schema(parquet.schema_arrow, dataset, path)
        return parquet.read(columns=columns)


def _read_vectors(store: Store, dataset: str) -> tuple[pa.Array, np.ndarray, set[str]]:
    """(report ids, vectors, encodings) of every part of a vector dataset."""
    ids, vectors, encodings = [], [], set()
    for index in store.part_indices(dataset):
        columns = (
            ["report_id", "vector", "encoding"] if dataset == "clinical_vectors" else ["report_id", "vector"]
        )
        table = _read_columns(store, dataset, index, columns)
        ids.append(table.column("report_id").combine_chunks())
        vectors.append(vectors_of(table))
        if "encoding" in columns:
            encodings.update(pc.unique(table.column("encoding")).to_pylist())
    dims = {v.shape[1] for v in vectors if len(v)}
    if len(dims) > 1:
        raise PipelineError(
            "E_SCHEMA_MISMATCH", f"{dataset}: parts disagree on the vector size {sorted(dims)}"
        )
    dim = dims.pop() if dims else 0
    all_ids = pa.concat_arrays(ids) if ids else pa.array([], pa.string())
    all_vectors = (
        np.concatenate([v.reshape(-1, dim) for v in vectors]) if vectors else np.zeros((0, dim), np.float32)
    )
    return all_ids, all_vectors, encodings


def _aligned(ids: pa.Array, other_ids: pa.Array, values: np.ndarray) -> np.ndarray:
    """Rows of ``values`` (keyed by ``other_ids``) in the order of ``ids``; zeros where missing."""
    at = pc.index_in(ids, value_set=other_ids).to_numpy(zero_copy_only=False)
    found = ~np.isnan(at.astype(np.float64))
    out = np.zeros((len(ids), values.shape[1]), np.float32)
    out[found] = values[at[found].astype(np.int64)]
    return out


def _prepare(out: str, config: SimilarityConfig, token: str) -> dict[str, Any]:
    """Worker task: read the inputs, build the index, write it to the staging folder."""
    store = Store(out)
    weights = weights_of(config)
    ids, clinical, encodings = _read_vectors(store, "clinical_vectors")
    if len(encodings) > 1:
        raise PipelineError(
            "E_ENCODING_MIXED",
            f"clinical_vectors holds vectors of several encodings {sorted(encodings)}; rerun clinical_vectors.",
        )
    components = []
    if "clinical" in weights:
        components.append(clinical)
    if "graph" in weights:
        graph_ids, graph, _ = _read_vectors(store, "graph_embeddings")
        components.append(_aligned(ids, graph_ids, graph))  # a report without a graph: zero, cosine 0
    splits = None
    if config.within_split:
        tables = [
            _read_columns(store, "reports", i, ["report_id", "split"]) for i in store.part_indices("reports")
        ]
        reports = (
            pa.concat_tables(tables)
            if tables
            else pa.table({"report_id": pa.array([], pa.string()), "split": pa.array([], pa.string())})
        )
        at = pc.index_in(ids, value_set=reports.column("report_id").combine_chunks())
        splits = reports.column("split").combine_chunks().take(at)  # a report missing there: null split
    index = build_index(ids, components, config.k, splits)
    table = pa.table(
        {
            "report_id": index.ids,
            "split": pa.array(index.split, pa.int32()),
            "group": pa.array(index.group, pa.int32()),
        }
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    store.write_bytes(_staging(store, f"{token}-index.parquet"), buffer.getvalue())
    for name, unique in zip(weights, index.unique, strict=True):
        buffer = io.BytesIO()
        np.save(buffer, unique, allow_pickle=False)
        store.write_bytes(_staging(store, f"{token}-{name}.npy"), buffer.getvalue())
    buffer = io.BytesIO()
    np.save(buffer, index.candidates, allow_pickle=False)
    store.write_bytes(_staging(store, f"{token}-candidates.npy"), buffer.getvalue())
    store.write_json(_staging(store, f"{token}-meta.json"), {"split_names": index.split_names})
    return {
        "reports": len(index.ids),
        "groups": len(index.unique[0]) if index.unique else 0,
        "candidates": len(index.candidates),
        "splits": index.split_names,
        "components": weights,
        "encodings": sorted(encodings),
    }


@functools.lru_cache(maxsize=1)
def _load(out: str, config: SimilarityConfig, token: str) -> Searcher:
    """The index written by :func:`_prepare`, loaded once per worker (one cached run)."""
    store = Store(out)
    table = store.read_parquet(_staging(store, f"{token}-index.parquet"))

    def array(name: str) -> np.ndarray:
        with store.fs.open(_staging(store, f"{token}-{name}.npy"), "rb") as fh:
            return np.load(io.BytesIO(fh.read()), allow_pickle=False)

    weights = weights_of(config)
    meta = store.read_json(_staging(store, f"{token}-meta.json"))
    index = CorpusIndex(
        ids=table.column("report_id").combine_chunks(),
        split=table.column("split").to_numpy(),
        split_names=meta["split_names"],
        group=table.column("group").to_numpy(),
        unique=[array(name) for name in weights],
        candidates=array("candidates"),
    )
    return Searcher(index, list(weights.values()), sketch_dims=config.sketch_dims)


def _forget() -> None:
    _load.cache_clear()


def _topk_part(
    out: str, fingerprint: str, part: int, lo: int, hi: int, config: SimilarityConfig, token: str
) -> dict[str, Any]:
    """Worker task: the neighbours of reports ``lo:hi`` (id order), written as part ``part``."""
    searcher = _load(out, config, token)
    index = searcher.index
    weights = weights_of(config)
    rows = np.arange(lo, hi, dtype=np.int64)
    empty = searcher.empty_groups()[index.group[rows]]
    report, neighbor, rank, score, parts = searcher.topk(
        rows[~empty],
        config.k,
        query_block=config.query_block,
        candidate_block=config.candidate_block,
        first_block=config.first_block,
    )
    n = len(report)
    columns: dict[str, pa.Array] = {
        "report_id": index.ids.take(pa.array(report)),
        "neighbor_id": index.ids.take(pa.array(neighbor)),
        "rank": pa.array(rank, pa.int16()),
        "score": pa.array(score, pa.float32()),
    }
    for name in COMPONENTS:
        at = list(weights).index(name) if name in weights else None
        columns[f"{name}_score"] = (
            pa.array(parts[at], pa.float32()) if at is not None else pa.nulls(n, pa.float32())
        )
    found = np.zeros(hi - lo, bool)
    found[report - lo] = True
    rejected = []
    for i in np.flatnonzero(~found):
        row = lo + int(i)
        if empty[i]:
            detail = "every component vector is zero: no report is clinically closer than another"
        else:
            detail = f"no other report in split {index.split_names[index.split[row]]!r} to compare with"
        rejected.append((index.ids[row].as_py(), "no_findings" if empty[i] else "no_neighbors", detail))
    tables = {
        "similarity_topk": pa.table(columns),
        "rejects": reject_table(STAGE, "similarity_topk", rejected),
    }
    return commit_corpus_part(out, STAGE, part, tables, fingerprint, hi - lo, int(found.sum()))
