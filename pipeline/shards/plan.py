"""The shards plan: which image goes to which split, neighbour group, shard and position.

Pure functions over Polars frames (lazy scans of the run's Parquet in the stage, small frames in
tests). No image bytes pass through here: the plan names images by id, and the stage moves the
bytes afterwards (stage.py).

* :func:`report_features` joins, per report, everything a training sample carries besides its
  pixels: the training text (sections), the 14 labels, the clinical vector, the graph (nodes,
  edges) and graph embedding, the negated reports, the top-k neighbours, the CXR-Align flag.
* :func:`assign_splits` keeps the dump's split or derives a deterministic patient-level one.
* :func:`neighbour_groups` puts a share of the reports into groups of an anchor and some of its
  clinical neighbours (same split), so batches read in group order carry neighbours.
* :func:`cut_shards` lays the groups out in a seeded order and cuts shards at group boundaries.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

SPLITS: tuple[str, ...] = ("train", "validate", "test")


@dataclass(frozen=True)
class ShardsConfig:
    """How samples are joined, split, grouped and cut into shards."""

    shard_size: int = 1000  # samples per shard (open_clip's guidance); groups never straddle shards
    row_group_size: int = 100  # samples per Parquet row group: what a streaming reader reads at once
    text_sections: tuple[str, ...] = ("findings", "impression")  # joined in this order
    fallback_sections: tuple[str, ...] = ("last_paragraph",)  # used when none of text_sections exists
    split: str = "auto"  # auto (the dump's split where it has one, else derived), dump, derived
    split_ratios: tuple[float, ...] = (0.9, 0.05, 0.05)  # train, validate, test for a derived split
    seed: int = 0  # derived split, group anchors and shard order
    group_size: int = 4  # reports per neighbour group (an anchor and up to group_size - 1 neighbours)
    neighbor_share: float = 0.5  # share of reports drawn as group anchors
    neighbors: int = 16  # top-k neighbour ids kept per sample
    negation_templates: str = "train"  # negated_reports.template_set used as hard negatives
    # Shorter side of the PNGs in the shards (never enlarged); None keeps the images stage's size.
    # 256 serves training at 224 px with random resized crops and decodes about 4x faster than
    # 512 px, which is what lets one loader worker feed 500+ samples/s; train at a higher
    # resolution with a larger value (or None).
    image_size: int | None = 256


def unit_hash(seed: int, purpose: str, keys: Sequence[str]) -> np.ndarray:
    """A stable uniform [0, 1) value per key (sha256: the same on every machine and version)."""
    prefix = f"clip2clinic/{seed}/{purpose}/".encode()
    out = np.empty(len(keys), dtype=np.float64)
    for i, key in enumerate(keys):
        digest = hashlib.sha256(prefix + key.encode()).digest()
        out[i] = int.from_bytes(digest[:8], "big") / 2.0**64
    return out


def training_text(sections: pl.LazyFrame, config: ShardsConfig) -> pl.LazyFrame:
    """report_id, text, text_source: the chosen sections in config order (fallback when none)."""

    def pick(names: Sequence[str], tier: int) -> pl.LazyFrame:
        order = pl.DataFrame({"section": list(names), "_order": list(range(len(names)))}).lazy()
        return (
            sections.select("report_id", "section", "section_idx", "text")
            .join(order, on="section", how="inner")
            .filter(pl.col("text").str.strip_chars() != "")
            .sort("report_id", "_order", "section_idx")
            .group_by("report_id", maintain_order=True)
            .agg(
                # MIMIC wraps lines near 79 characters: the text trains as one paragraph
                pl.col("text").str.replace_all(r"\s+", " ").str.strip_chars().str.join(" ").alias("text"),
                pl.col("section").unique(maintain_order=True).str.join("+").alias("text_source"),
            )
            .with_columns(pl.lit(tier).alias("_tier"))
        )

    both = pl.concat([pick(config.text_sections, 0), pick(config.fallback_sections, 1)])
    return both.sort("report_id", "_tier").group_by("report_id", maintain_order=True).first().drop("_tier")


def graph_lists(entities: pl.LazyFrame, relations: pl.LazyFrame) -> pl.LazyFrame:
    """Per report: node lists in entity offset order and edges as node indices."""
    nodes = (
        entities.select("report_id", "entity_id", "start", "end", "concept_id", "label_id", "text")
        .sort("report_id", "start", "end", "entity_id")
        .with_columns(pl.int_range(pl.len()).over("report_id").cast(pl.Int32).alias("node"))
    )
    node_lists = nodes.group_by("report_id", maintain_order=True).agg(
        pl.col("concept_id").cast(pl.Int32).alias("node_concept_ids"),
        pl.col("label_id").cast(pl.Int8).alias("node_label_ids"),
        pl.col("text").alias("node_texts"),
    )
    index = nodes.select("report_id", "entity_id", "node")
    edges = (
        relations.select("report_id", "source_id", "target_id", "relation_id")
        .join(index.rename({"entity_id": "source_id", "node": "src"}), on=["report_id", "source_id"])
        .join(index.rename({"entity_id": "target_id", "node": "dst"}), on=["report_id", "target_id"])
        .sort("report_id", "src", "dst", "relation_id")
        .group_by("report_id", maintain_order=True)
        .agg(
            pl.col("src").alias("edge_source"),
            pl.col("dst").alias("edge_target"),
            pl.col("relation_id").cast(pl.Int8).alias("edge_types"),
        )
    )
    return node_lists.join(edges, on="report_id", how="left")


def report_features(
    *,
    reports: pl.LazyFrame,
    sections: pl.LazyFrame,
    labels: pl.LazyFrame,
    observations: Sequence[str],
    clinical_vectors: pl.LazyFrame,
    graph_embeddings: pl.LazyFrame,
    graph_dim: int,
    entities: pl.LazyFrame,
    relations: pl.LazyFrame,
    negated_reports: pl.LazyFrame,
    similarity_topk: pl.LazyFrame,
    cxr_align: pl.LazyFrame,
    config: ShardsConfig,
) -> pl.LazyFrame:
    """One row per report with every non-pixel part of a sample (lists empty where absent).

    ``has_labels`` and ``has_vector`` say whether those rows exist (upstream stages may have
    rejected the report); ``text`` is null when the report has none of the configured sections.
    """
    label_list = labels.select(
        "report_id",
        pl.concat_list([pl.col(o).cast(pl.Float32) for o in observations]).alias("labels"),
    )
    vectors = clinical_vectors.select(
        "report_id", pl.col("vector").cast(pl.List(pl.Float32)).alias("clinical_vector")
    )
    graph_vectors = graph_embeddings.select(
        "report_id", pl.col("vector").cast(pl.List(pl.Float32)).alias("graph_embedding")
    )
    negations = (
        negated_reports.filter(pl.col("template_set") == config.negation_templates)
        .sort("report_id", "candidate_id")
        .group_by("report_id", maintain_order=True)
        .agg(pl.col("negation").alias("negated_reports"))
    )
    neighbours = (
        similarity_topk.sort("report_id", "rank")
        .group_by("report_id", maintain_order=True)
        .agg(
            pl.col("neighbor_id").head(config.neighbors).alias("neighbor_ids"),
            pl.col("score").cast(pl.Float32).head(config.neighbors).alias("neighbor_scores"),
        )
    )
    benchmark = cxr_align.select("report_id").unique().with_columns(pl.lit(True).alias("in_benchmark"))
    zeros = pl.lit(np.zeros(graph_dim, dtype=np.float32).tolist(), dtype=pl.List(pl.Float32))
    empty = {
        "node_concept_ids": pl.Int32,
        "node_label_ids": pl.Int8,
        "node_texts": pl.String,
        "edge_source": pl.Int32,
        "edge_target": pl.Int32,
        "edge_types": pl.Int8,
        "negated_reports": pl.String,
        "neighbor_ids": pl.String,
        "neighbor_scores": pl.Float32,
    }
    return (
        reports.select("report_id", "subject_id", "study_id", "split")
        .join(training_text(sections, config), on="report_id", how="left")
        .join(label_list, on="report_id", how="left")
        .join(vectors, on="report_id", how="left")
        .join(graph_vectors, on="report_id", how="left")
        .join(graph_lists(entities, relations), on="report_id", how="left")
        .join(negations, on="report_id", how="left")
        .join(neighbours, on="report_id", how="left")
        .join(benchmark, on="report_id", how="left")
        .with_columns(
            pl.col("labels").is_not_null().alias("has_labels"),
            pl.col("clinical_vector").is_not_null().alias("has_vector"),
            pl.col("graph_embedding").fill_null(zeros),
            pl.col("in_benchmark").fill_null(False),
            *(pl.col(c).fill_null(pl.lit([], dtype=pl.List(t))) for c, t in empty.items()),
        )
    )


def assign_splits(reports: pl.DataFrame, config: ShardsConfig) -> pl.DataFrame:
    """report_id -> split, split_source. No subject ends up in two splits of a derived split.

    ``reports`` has report_id, subject_id, split (the dump's, or null) and in_benchmark.
    ``auto`` keeps the dump's split where it is one of train/validate/test and derives the rest;
    a derived split hashes the subject (the report when it has none) into the configured ratios,
    except that a subject with a CXR-Align report goes to test, so the benchmark never trains.
    A subject the dump splits for some reports keeps that split for its unsplit ones.
    """
    if config.split not in ("auto", "dump", "derived"):
        raise ValueError(f"stages.shards.split must be auto, dump or derived, got {config.split!r}")
    ratios = np.asarray(config.split_ratios, dtype=np.float64)
    if len(ratios) != 3 or (ratios < 0).any() or ratios.sum() <= 0:
        raise ValueError(
            f"stages.shards.split_ratios must be 3 non-negative numbers, got {config.split_ratios}"
        )
    frame = reports.with_columns(
        pl.coalesce(pl.col("subject_id"), pl.col("report_id")).alias("_subject"),
        pl.when(pl.col("split").is_in(SPLITS)).then(pl.col("split")).alias("_dump"),
    )
    if config.split == "derived":
        frame = frame.with_columns(pl.lit(None, dtype=pl.String).alias("_dump"))
    subjects = (
        frame.group_by("_subject")
        .agg(
            pl.col("_dump").drop_nulls().sort().first().alias("_subject_dump"),
            pl.col("in_benchmark").any().alias("_benchmark"),
        )
        .sort("_subject")
    )
    u = unit_hash(config.seed, "split", subjects["_subject"].to_list())
    edges = np.cumsum(ratios / ratios.sum())
    derived = np.asarray(SPLITS)[np.minimum(np.searchsorted(edges, u, side="right"), 2)]
    subjects = subjects.with_columns(pl.Series("_derived", derived.tolist(), dtype=pl.String)).with_columns(
        pl.when(pl.col("_benchmark")).then(pl.lit("test")).otherwise(pl.col("_derived")).alias("_derived")
    )
    frame = frame.join(subjects, on="_subject", how="left")
    if config.split == "dump":
        missing = frame.filter(pl.col("_dump").is_null())
        if missing.height:
            raise ValueError(
                f"stages.shards.split=dump but {missing.height} reports have no train/validate/test split "
                f"(first: {missing['report_id'][0]}); use split=auto or split=derived"
            )
    return frame.select(
        "report_id",
        pl.coalesce("_dump", "_subject_dump", "_derived").alias("split"),
        pl.when(pl.col("_dump").is_not_null() | pl.col("_subject_dump").is_not_null())
        .then(pl.lit("dump"))
        .otherwise(pl.lit("derived"))
        .alias("split_source"),
    )


def neighbour_groups(
    report_ids: Sequence[str],
    splits: Sequence[str],
    neighbor_ids: Sequence[Sequence[str]],
    config: ShardsConfig,
) -> np.ndarray:
    """A group number per report: anchors gather up to ``group_size - 1`` unassigned neighbours.

    Reports are visited in a seeded order; a report drawn as an anchor (share ``neighbor_share``)
    takes its nearest neighbours (rank order) that share its split and are not yet in a group.
    Every other report is a group of one. Deterministic for a seed.
    """
    n = len(report_ids)
    position = {r: i for i, r in enumerate(report_ids)}
    order = np.argsort(unit_hash(config.seed, "order", list(report_ids)), kind="stable")
    anchor = unit_hash(config.seed, "anchor", list(report_ids)) < config.neighbor_share
    group = np.full(n, -1, dtype=np.int64)
    next_group = 0
    for i in order:
        if group[i] >= 0:
            continue
        group[i] = next_group
        if anchor[i] and config.group_size > 1:
            taken = 0
            for neighbour in neighbor_ids[i]:
                j = position.get(neighbour)
                if j is None or group[j] >= 0 or splits[j] != splits[i]:
                    continue
                group[j] = next_group
                taken += 1
                if taken == config.group_size - 1:
                    break
        next_group += 1
    return group


def cut_shards(
    group: np.ndarray, samples: np.ndarray, config: ShardsConfig, split: str
) -> tuple[np.ndarray, np.ndarray]:
    """Shard number and rank (order of the group in the split) per group.

    Groups are laid out in a seeded order and a shard is closed before a group would take it
    past ``shard_size`` samples (a larger group gets a shard of its own), so no group straddles
    two shards. ``group`` holds the group numbers, and
    ``samples`` the samples (images) of each group, both of one split.
    """
    order = np.argsort(unit_hash(config.seed, f"shard-order/{split}", [str(g) for g in group]), kind="stable")
    shard = np.empty(len(group), dtype=np.int64)
    rank = np.empty(len(group), dtype=np.int64)
    current, filled = 0, 0
    for r, i in enumerate(order):
        if filled and filled + int(samples[i]) > config.shard_size:
            current, filled = current + 1, 0
        shard[i], rank[i] = current, r
        filled += int(samples[i])
    return shard, rank
