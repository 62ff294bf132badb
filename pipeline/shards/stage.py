"""The ``shards`` stage: training shards per split, joining everything a sample needs.

A corpus stage in three steps, all on Dask workers (the client sees only summaries):

1. **plan** (one task): lazy Polars scans of the run's datasets (never the pixels) join each
   report's text, labels, clinical vector, graph, graph embedding, negated reports, neighbours and
   CXR-Align flag (plan.py); splits are assigned, neighbour groups formed and shards cut. It
   writes the image-level plan (sorted by ``images`` part) and the report features (one row group
   per shard) to the stage's staging folder, and the rejects.
2. **buckets** (one task per ``images`` part): the part's PNG bytes, ordered by (shard, position),
   go to a staging file with one row group per target shard: an external shuffle that reads
   every image once, whatever the corpus size.
3. **shards** (one task per shard): its row groups from the buckets and its features row group
   are joined, ordered and written as ``shards/<split>/part-NNNNN.parquet`` in row groups of
   ``row_group_size``. Part numbers run over the splits (train first), one marker per shard.

Every ``images`` row and every report without an image is accounted: a sample, or a reject
(``orphan_row``, ``no_text``, ``benchmark_report``, ``no_image``). Each split folder gets an
``_index.json`` (sample counts per shard, schema, fingerprints) once every shard is written. A
resumed run keeps the shards whose markers carry the current fingerprint and the staging files
of the same fingerprint.
"""

from __future__ import annotations

import io
import logging
import math
import posixpath
import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from distributed import as_completed
from PIL import Image

from pipeline.core.errors import PipelineError, reject_table
from pipeline.core.io import Store, read_dataset
from pipeline.core.registry import corpus_stage
from pipeline.core.runner import CorpusContext, commit_corpus_part
from pipeline.core.schemas import chexpert_observations, load_schema
from pipeline.shards.plan import (
    SPLITS,
    ShardsConfig,
    assign_splits,
    cut_shards,
    neighbour_groups,
    report_features,
)

log = logging.getLogger(__name__)

STAGE = "shards"
OUTPUTS: tuple[str, ...] = tuple(f"shards/{split}" for split in SPLITS)
INPUTS: tuple[str, ...] = (
    "images",
    "reports",
    "sections",
    "labels",
    "clinical_vectors",
    "graph_embeddings",
    "kg_entities",
    "kg_relations",
    "negated_reports",
    "similarity_topk",
    "cxr_align",
)
INDEX = "_index.json"
IMAGE_COLUMNS = ("image_id", "report_id", "subject_id", "study_id", "view_position")
PLAN_COLUMNS = (
    "image_id",
    "report_id",
    "subject_id",
    "study_id",
    "view_position",
    "split",
    "split_source",
    "group_id",
    "shard",
    "position",
    "images_part",
)
FEATURE_COLUMNS = (
    "text",
    "text_source",
    "labels",
    "clinical_vector",
    "graph_embedding",
    "node_concept_ids",
    "node_label_ids",
    "node_texts",
    "edge_source",
    "edge_target",
    "edge_types",
    "negated_reports",
    "neighbor_ids",
    "neighbor_scores",
)


def check_config(config: ShardsConfig) -> None:
    """Raise PipelineError(E_CONFIG_VALUE) for settings that cannot make shards."""
    problems = []
    if config.shard_size < 1 or config.row_group_size < 1 or config.group_size < 1:
        problems.append("shard_size, row_group_size and group_size must be >= 1")
    if not 0.0 <= config.neighbor_share <= 1.0:
        problems.append(f"neighbor_share must be in [0, 1], got {config.neighbor_share}")
    if config.image_size is not None and config.image_size < 16:
        problems.append(
            f"image_size must be >= 16 (or null to keep the images stage's size), got {config.image_size}"
        )
    if config.neighbors < 0:
        problems.append("neighbors must be >= 0")
    if not config.text_sections:
        problems.append("text_sections must name at least one section (findings, impression, ...)")
    if problems:
        raise PipelineError("E_CONFIG_VALUE", "stages.shards: " + "; ".join(problems))


def _staging(store: Store, name: str) -> str:
    return store.path("_state", STAGE, "staging", name)


def _scan(store: Store, dataset: str, columns: list[str], *, with_part: bool = False) -> pl.LazyFrame:
    """A lazy scan of a dataset's parts, only ``columns`` (plus the part number when asked)."""
    files = store.dataset_files(dataset)
    if not files:
        raise PipelineError("E_INPUT_MISSING", f"no {dataset} parts under {store.url}; rerun its stage.")
    if store.local:
        frame = pl.scan_parquet(files, include_file_paths="_file" if with_part else None)
    else:  # a remote run folder: read through fsspec (Polars' own cloud readers need other options)
        tables = []
        for path in files:
            table = store.read_parquet(path, columns)
            tables.append(table.append_column("_file", pa.array([path] * table.num_rows)))
        frame = pl.from_arrow(pa.concat_tables(tables)).lazy()  # type: ignore[union-attr]
    if with_part:
        part = pl.col("_file").str.extract(r"part-(\d+)\.parquet$").cast(pl.Int64).alias("images_part")
        return frame.select(*columns, part)
    return frame.select(columns)


def _graph_dim(store: Store) -> int:
    files = store.dataset_files("graph_embeddings")
    with store.parquet_file(files[0]) as pf:
        typ = pf.schema_arrow.field("vector").type
    return typ.list_size if pa.types.is_fixed_size_list(typ) else 0


# -- step 1: the plan ----------------------------------------------------------------------------


def _plan(out: str, config: ShardsConfig, token: str) -> dict[str, Any]:
    """Worker task: join the report features, assign splits, groups and shards; write the plan."""
    store = Store(out)
    observations = chexpert_observations()
    scans = {
        "reports": _scan(store, "reports", ["report_id", "subject_id", "study_id", "split"]),
        "sections": _scan(store, "sections", ["report_id", "section_idx", "section", "text"]),
        "labels": _scan(store, "labels", ["report_id", *observations]),
        "clinical_vectors": _scan(store, "clinical_vectors", ["report_id", "vector"]),
        "graph_embeddings": _scan(store, "graph_embeddings", ["report_id", "vector"]),
        "entities": _scan(
            store, "kg_entities", ["report_id", "entity_id", "start", "end", "concept_id", "label_id", "text"]
        ),
        "relations": _scan(store, "kg_relations", ["report_id", "source_id", "target_id", "relation_id"]),
        "negated_reports": _scan(
            store, "negated_reports", ["report_id", "candidate_id", "negation", "template_set"]
        ),
        "similarity_topk": _scan(store, "similarity_topk", ["report_id", "neighbor_id", "rank", "score"]),
        "cxr_align": _scan(store, "cxr_align", ["report_id"]),
    }
    features = report_features(
        reports=scans["reports"],
        sections=scans["sections"],
        labels=scans["labels"],
        observations=observations,
        clinical_vectors=scans["clinical_vectors"],
        graph_embeddings=scans["graph_embeddings"],
        graph_dim=_graph_dim(store),
        entities=scans["entities"],
        relations=scans["relations"],
        negated_reports=scans["negated_reports"],
        similarity_topk=scans["similarity_topk"],
        cxr_align=scans["cxr_align"],
        config=config,
    ).collect()
    images = _scan(store, "images", list(IMAGE_COLUMNS), with_part=True).collect().sort("image_id")
    try:
        splits = assign_splits(features.select("report_id", "subject_id", "split", "in_benchmark"), config)
    except ValueError as exc:
        raise PipelineError("E_CONFIG_VALUE", str(exc)) from exc
    features = features.drop("split").join(splits, on="report_id", how="left")

    # Which images make samples, and why the others do not.
    joined = images.join(
        features.select(
            "report_id", "split", "split_source", "in_benchmark", "has_labels", "has_vector",
            pl.col("text").is_not_null().alias("has_text"),
            pl.col("subject_id").alias("_report_subject"), pl.col("study_id").alias("_report_study"),
        ),
        on="report_id",
        how="left",
    )  # fmt: skip
    reason = (
        pl.when(pl.col("report_id").is_null() | pl.col("split").is_null())
        .then(pl.lit("orphan_row"))
        .when(~pl.col("has_text"))
        .then(pl.lit("no_text"))
        .when(~pl.col("has_labels") | ~pl.col("has_vector"))
        .then(pl.lit("orphan_row"))
        .when((pl.col("split") == "train") & pl.col("in_benchmark"))
        .then(pl.lit("benchmark_report"))
    )
    joined = joined.with_columns(reason.alias("_reason"))
    rejected = joined.filter(pl.col("_reason").is_not_null())
    details = {
        "orphan_row": "report {r} is not in reports, or has no labels or clinical vector (rejected upstream)",
        "no_text": "report {r} has none of the sections "
        + "+".join(config.text_sections + config.fallback_sections),
        "benchmark_report": "report {r} is in cxr_align and its split is train",
    }
    reject_rows = [
        (image_id, code, details[code].format(r=report_id))
        for image_id, code, report_id in rejected.select("image_id", "_reason", "report_id").iter_rows()
    ]
    samples = joined.filter(pl.col("_reason").is_null())
    imageless = features.join(images.select("report_id").unique(), on="report_id", how="anti").sort(
        "report_id"
    )
    reject_rows += [(r, "no_image", f"report {r} has no decoded image") for r in imageless["report_id"]]
    reject_rows.sort()  # joins keep no row order: the rejects part must not depend on it

    # Neighbour groups over the reports that make samples, then shards per split.
    reports = (
        features.join(samples.select("report_id").unique(), on="report_id", how="semi")
        .select("report_id", "split", "neighbor_ids")
        .sort("report_id")
    )
    group = neighbour_groups(
        reports["report_id"].to_list(), reports["split"].to_list(), reports["neighbor_ids"].to_list(), config
    )
    reports = reports.with_columns(pl.Series("group_id", group, dtype=pl.Int64)).drop("neighbor_ids")
    counts = samples.group_by("report_id").len()
    reports = reports.join(counts, on="report_id")
    groups = reports.group_by("group_id", "split").agg(pl.col("len").sum().alias("samples")).sort("group_id")
    shard_rows = []
    offset = 0
    for split in SPLITS:
        part = groups.filter(pl.col("split") == split)
        if not part.height:
            continue
        shard, rank = cut_shards(part["group_id"].to_numpy(), part["samples"].to_numpy(), config, split)
        shard_rows.append(part.with_columns(pl.Series("shard", shard + offset), pl.Series("_rank", rank)))
        offset += int(shard.max()) + 1
    n_shards = offset
    layout = (
        pl.concat(shard_rows)
        if shard_rows
        else pl.DataFrame(schema={"group_id": pl.Int64, "shard": pl.Int64, "_rank": pl.Int64})
    )
    plan = (
        samples.join(reports.select("report_id", "group_id"), on="report_id")
        .join(layout.select("group_id", "shard", "_rank"), on="group_id")
        .sort("shard", "_rank", "report_id", "image_id")
        .with_columns(
            pl.int_range(pl.len()).over("shard").cast(pl.Int64).alias("position"),
            pl.coalesce("subject_id", "_report_subject").alias("subject_id"),
            pl.coalesce("study_id", "_report_study").alias("study_id"),
        )
        .select(PLAN_COLUMNS)
        .sort("images_part", "shard", "position")
    )
    shard_info = (
        plan.group_by("shard")
        .agg(
            pl.col("split").first(), pl.len().alias("samples"), pl.col("group_id").n_unique().alias("groups")
        )
        .sort("shard")
    )

    # Staging: the plan (a row group per images part), the features (a row group per shard).
    plan_table = plan.to_arrow()
    plan_groups: dict[int, int] = {}

    def write_plan(fh: Any) -> None:
        with pq.ParquetWriter(fh, plan_table.schema) as writer:
            parts = plan_table["images_part"].to_numpy()
            for i, p in enumerate(np.unique(parts)):
                lo, hi = np.searchsorted(parts, p, "left"), np.searchsorted(parts, p, "right")
                writer.write_table(plan_table.slice(lo, hi - lo))
                plan_groups[int(p)] = i

    store.write_with(_staging(store, f"{token}-plan.parquet"), write_plan)
    feature_table = (
        features.join(plan.select("report_id", "shard").unique(), on="report_id")
        .select("report_id", "shard", *FEATURE_COLUMNS)
        .sort("shard", "report_id")
        .to_arrow()
    )

    def write_features(fh: Any) -> None:
        with pq.ParquetWriter(fh, feature_table.schema) as writer:
            shards = feature_table["shard"].to_numpy()
            for s in range(n_shards):
                lo, hi = np.searchsorted(shards, s, "left"), np.searchsorted(shards, s, "right")
                writer.write_table(feature_table.slice(lo, hi - lo))

    store.write_with(_staging(store, f"{token}-features.parquet"), write_features)
    rejects = reject_table(STAGE, STAGE, reject_rows)
    store.write_with(_staging(store, f"{token}-rejects.parquet"), lambda fh: pq.write_table(rejects, fh))
    part_shards = plan.group_by("images_part").agg(pl.col("shard").unique().sort())
    summary = {
        "shards": shard_info.to_dicts(),
        "plan_groups": plan_groups,
        "part_shards": {str(p): list(v) for p, v in part_shards.iter_rows()},
        "images": images.height,
        "samples": plan.height,
        "rejected": len(reject_rows),
        "imageless_reports": imageless.height,
    }
    store.write_json(_staging(store, f"{token}-plan.json"), summary)
    return summary


# -- step 2: buckets -----------------------------------------------------------------------------


def shrink_png(data: bytes, size: int) -> tuple[bytes, int, int]:
    """``data`` resized (antialiased) so its shorter side is ``size``, unless already no larger.

    Returns (PNG bytes, height, width); deterministic for the same input (no metadata chunks).
    """
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
        if min(width, height) <= size:
            return data, height, width
        scale = size / min(width, height)
        target = (max(1, round(width * scale)), max(1, round(height * scale)))
        small = image.convert("L").resize(target, Image.Resampling.LANCZOS, reducing_gap=2.0)
    buffer = io.BytesIO()
    small.save(buffer, "PNG", compress_level=6)
    return buffer.getvalue(), target[1], target[0]


def _bucket(out: str, token: str, images_part: int, plan_group: int, config: ShardsConfig) -> dict[str, Any]:
    """Worker task: one ``images`` part's pixels (shrunk to ``image_size``), ordered by (shard,
    position), a row group per shard."""
    store = Store(out)
    with store.parquet_file(_staging(store, f"{token}-plan.parquet")) as pf:
        plan = pf.read_row_group(plan_group)
    images = store.read_part("images", images_part).select(["image_id", "png", "height", "width"])
    at = pc.index_in(plan["image_id"], value_set=images["image_id"])
    if at.null_count:
        raise PipelineError(
            "E_INPUT_CHANGED", f"images part {images_part} changed under the shards stage; rerun it."
        )
    png, height, width = images["png"].take(at), images["height"].take(at), images["width"].take(at)
    if config.image_size:
        shrunk = [shrink_png(data, config.image_size) for data in png.to_pylist()]
        png = pa.array([s[0] for s in shrunk], pa.binary())
        height = pa.array([s[1] for s in shrunk], pa.int32())
        width = pa.array([s[2] for s in shrunk], pa.int32())
    # The plan's columns travel with the pixels, so a shard task reads nothing but its buckets.
    table = plan.append_column("png", png).append_column("height", height).append_column("width", width)
    table = table.take(pc.sort_indices(table, [("shard", "ascending"), ("position", "ascending")]))
    shards = table["shard"].to_numpy()
    row_groups: dict[int, int] = {}

    def write(fh: Any) -> None:
        with pq.ParquetWriter(fh, table.schema) as writer:
            for i, s in enumerate(np.unique(shards)):
                lo, hi = np.searchsorted(shards, s, "left"), np.searchsorted(shards, s, "right")
                writer.write_table(table.slice(lo, hi - lo))
                row_groups[int(s)] = i

    store.write_with(_staging(store, f"{token}-bucket-{images_part:05d}.parquet"), write)
    result = {"images_part": images_part, "row_groups": row_groups}
    # Written after the bucket: a resumed run reuses a bucket only when its map is there too.
    store.write_json(_staging(store, f"{token}-bucket-{images_part:05d}.json"), result)
    return result


# -- step 3: shards ------------------------------------------------------------------------------


def _shard(
    out: str,
    fingerprint: str,
    token: str,
    shard: int,
    split: str,
    buckets: list[tuple[int, int]],
    config: ShardsConfig,
) -> dict[str, Any]:
    """Worker task: join one shard's pixels, plan rows and features; write it and its marker."""
    store = Store(out)
    pieces = []
    for images_part, row_group in buckets:
        with store.parquet_file(_staging(store, f"{token}-bucket-{images_part:05d}.parquet")) as pf:
            pieces.append(pf.read_row_group(row_group))
    plan = pa.concat_tables(pieces)
    plan = plan.take(pc.sort_indices(plan, [("position", "ascending")]))
    with store.parquet_file(_staging(store, f"{token}-features.parquet")) as pf:
        features = pf.read_row_group(shard)
    ft = pc.index_in(plan["report_id"], value_set=features["report_id"])
    if ft.null_count:
        raise PipelineError("E_STAGING", f"shard {shard}: staging files disagree; rerun with force=true.")
    columns: dict[str, Any] = {
        "image_id": plan["image_id"],
        "report_id": plan["report_id"],
        "subject_id": plan["subject_id"],
        "study_id": plan["study_id"],
        "split": plan["split"],
        "split_source": plan["split_source"],
        "group_id": plan["group_id"],
        "view_position": plan["view_position"],
        "image": plan["png"],
        "image_height": plan["height"],
        "image_width": plan["width"],
    }
    for name in FEATURE_COLUMNS:
        columns[name] = features[name].take(ft)
    schema = load_schema(STAGE)
    table = pa.table({name: columns[name] for name in schema.names})
    n = table.num_rows
    groups = len(pc.unique(table["group_id"]))
    return commit_corpus_part(
        out,
        STAGE,
        shard,
        {f"shards/{split}": table},
        fingerprint,
        n,
        n,
        row_group_size=config.row_group_size,
        extra={"split": split, "groups": groups},
    )


def _rejects(out: str, fingerprint: str, token: str, index: int) -> dict[str, Any]:
    """Worker task: the plan's rejects as the stage's last part (it writes no shard)."""
    store = Store(out)
    rejects = store.read_parquet(_staging(store, f"{token}-rejects.parquet"))
    return commit_corpus_part(out, STAGE, index, {"rejects": rejects}, fingerprint, rejects.num_rows, 0)


@corpus_stage(STAGE, version=1, inputs=INPUTS, outputs=OUTPUTS, config=ShardsConfig, sparse_outputs=True)
def shards(ctx: CorpusContext, *, config: ShardsConfig) -> None:
    """Training shards per split: images joined with their reports' text, labels, graphs and negatives."""
    check_config(config)
    store = ctx.store
    token = ctx.fingerprint[:16]  # staging of another fingerprint is never reused
    for split in SPLITS:  # an index means "complete": none may survive while shards are rewritten
        path = store.path("shards", split, INDEX)
        if store.fs.exists(path):
            store.fs.rm(path)
    summary = None if ctx.runner.force else store.read_json(_staging(store, f"{token}-plan.json"))
    if summary is None:
        summary = ctx.client.submit(
            _plan, ctx.out, config, token, key=f"{STAGE}-plan-{uuid.uuid4().hex[:8]}", pure=False
        ).result()
    shard_info = summary["shards"]
    log.info(
        "shards: %d samples in %d shards, %d rejects",
        summary["samples"],
        len(shard_info),
        summary["rejected"],
    )
    todo = [info for info in shard_info if not ctx.resume(info["shard"])]
    run = uuid.uuid4().hex[:8]  # task keys must not collide with a failed earlier attempt
    rejects_index = len(shard_info)
    if todo:
        wanted = {info["shard"] for info in todo}
        buckets: dict[int, list[tuple[int, int]]] = {}
        futures = []
        for p, g in sorted(summary["plan_groups"].items(), key=lambda kv: int(kv[0])):
            if not wanted & set(summary["part_shards"].get(str(p), [])):
                continue  # feeds only shards an earlier run finished
            done = (
                None
                if ctx.runner.force
                else store.read_json(_staging(store, f"{token}-bucket-{int(p):05d}.json"))
            )
            if done is not None:
                futures.append(done)
                continue
            futures.append(
                ctx.client.submit(
                    _bucket, ctx.out, token, int(p), g, config, key=f"{STAGE}-bucket-{run}-{p}", pure=False
                )
            )
        finished = [f for f in futures if isinstance(f, dict)]
        pending = [f for f in futures if not isinstance(f, dict)]
        for result in [*finished, *(f.result() for f in as_completed(pending))]:
            for s, rg in result["row_groups"].items():
                buckets.setdefault(int(s), []).append((result["images_part"], rg))
        shard_futures = {
            ctx.client.submit(
                _shard,
                ctx.out,
                ctx.fingerprint,
                token,
                info["shard"],
                info["split"],
                sorted(buckets[info["shard"]]),
                config,
                key=f"{STAGE}-{run}-{info['shard']}",
                pure=False,
            ): info["shard"]
            for info in todo
        }
        for future in as_completed(shard_futures):
            ctx.commit(shard_futures[future], future.result())
    ctx.commit(
        rejects_index,
        ctx.client.submit(
            _rejects, ctx.out, ctx.fingerprint, token, rejects_index, key=f"{STAGE}-rejects-{run}", pure=False
        ).result(),
    )
    write_indexes(ctx, config)


def write_indexes(ctx: CorpusContext, config: ShardsConfig) -> None:
    """``shards/<split>/_index.json``: what open_clip keeps in sizes.json, plus schema and fingerprints."""
    store = ctx.store
    schema = load_schema(STAGE)
    upstream = ctx.runner.upstream_fingerprints(ctx.stage)
    for split in SPLITS:
        dataset = f"shards/{split}"
        entries = []
        for index in sorted(ctx.markers):
            marker = ctx.markers[index]
            if dataset not in marker["rows"]:
                continue
            path = store.part_path(dataset, index)
            samples = marker["rows"][dataset]
            entries.append(
                {
                    "file": posixpath.basename(path),
                    "samples": samples,
                    "groups": marker["groups"],
                    "row_groups": math.ceil(samples / config.row_group_size),
                    "bytes": store.fs.size(path),
                }
            )
        index = {
            "format": "clip2clinic.shards",
            "version": 1,
            "split": split,
            "schema": schema.name,
            "schema_version": schema.version,
            "columns": {c.name: str(c.type) for c in schema.columns},
            "fingerprint": ctx.fingerprint,
            "upstream": upstream,
            "samples": sum(e["samples"] for e in entries),
            "groups": sum(e["groups"] for e in entries),
            "row_group_size": config.row_group_size,
            "shards": entries,
            "sizes": {e["file"]: e["samples"] for e in entries},
        }
        store.write_json(store.path("shards", split, INDEX), index)


def read_index(out: str, split: str) -> Mapping[str, Any]:
    """The ``_index.json`` of one split of a run. Raises PipelineError(E_INPUT_MISSING)."""
    store = Store(out)
    index = store.read_json(store.path("shards", split, INDEX))
    if index is None:
        raise PipelineError("E_INPUT_MISSING", f"no shards/{split}/{INDEX} under {out}; run dag=shards.")
    return index


def read_shards(out: str, split: str, columns: list[str] | None = None) -> pa.Table:
    """Every sample of one split (for notebooks and tests; the trainer streams with pipeline.train.data)."""
    return read_dataset(out, f"shards/{split}", columns=columns)
