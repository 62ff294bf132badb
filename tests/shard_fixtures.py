"""Writes small schema-conforming shard folders (parts + ``_index.json``) for the reader's tests and
benchmark, independent of the shards stage.

Groups are an anchor report plus 0-4 neighbour reports, each report with 1-2 images; a report's
``neighbor_ids`` are the other reports of its group plus two random reports elsewhere (top-k
neighbours that the shards stage placed in another group). Groups of one report have no
neighbour in their group, so the share the shards hold is below 1.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipeline.core.schemas import load_schema

N_LABELS = 14


def make_png(rng: np.random.Generator, size: int) -> bytes:
    """An 8-bit grayscale PNG with chest-like smooth structure and noise (realistic size at 512)."""
    y, x = np.mgrid[0:size, 0:size] / size
    lungs = np.exp(-((x - 0.3) ** 2 + (y - 0.5) ** 2) / 0.05) + np.exp(
        -((x - 0.7) ** 2 + (y - 0.5) ** 2) / 0.05
    )
    base = 120 + 80 * lungs * rng.uniform(0.7, 1.3) - 60 * y
    pixels = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def write_shards(
    folder: Path,
    *,
    n_groups: int = 120,
    groups_per_shard: int = 15,
    row_group_size: int = 16,
    image_size: int = 48,
    distinct_images: int = 16,
    seed: int = 0,
    split: str = "train",
    clinical_dim: int = 8,
    graph_dim: int = 6,
    singleton_share: float = 0.15,
) -> Path:
    """Write ``folder/part-*.parquet`` and ``folder/_index.json``; returns ``folder``.

    The last shard is smaller when ``n_groups`` is not a multiple of ``groups_per_shard``.
    PNGs are drawn from a pool of ``distinct_images`` (PNG encoding dominates otherwise).
    """
    rng = np.random.default_rng(seed)
    pool = [make_png(rng, image_size) for _ in range(distinct_images)]
    schema = load_schema("shards").arrow()
    # Reports per group, then global report numbers.
    sizes = np.where(rng.random(n_groups) < singleton_share, 1, rng.integers(2, 6, n_groups))
    first = np.concatenate([[0], np.cumsum(sizes)])
    n_reports = int(first[-1])
    rows: list[dict] = []
    for g in range(n_groups):
        members = list(range(first[g], first[g + 1]))
        for r in members:
            others = [f"r{m:05d}" for m in members if m != r]
            outside = [
                f"r{int(m):05d}" for m in rng.integers(0, n_reports, 2) if not first[g] <= m < first[g + 1]
            ]
            n_nodes = int(rng.integers(0, 6))
            n_edges = int(rng.integers(0, n_nodes)) if n_nodes > 1 else 0
            labels = rng.choice([1.0, 0.0, -1.0, np.nan], N_LABELS)
            for i in range(int(rng.integers(1, 3))):
                rows.append(
                    {
                        "image_id": f"r{r:05d}-i{i}",
                        "report_id": f"r{r:05d}",
                        "subject_id": f"p{r // 3}",
                        "study_id": f"s{r}",
                        "split": split,
                        "split_source": "derived",
                        "group_id": g,
                        "view_position": "PA",
                        "image": pool[int(rng.integers(len(pool)))],
                        "image_height": image_size,
                        "image_width": image_size,
                        "text": f"report {r} group {g}: "
                        + " ".join(rng.choice(_WORDS, int(rng.integers(4, 20)))),
                        "text_source": "findings+impression",
                        "labels": [None if np.isnan(v) else float(v) for v in labels],
                        "clinical_vector": rng.random(clinical_dim).astype(np.float32).tolist(),
                        "graph_embedding": rng.random(graph_dim).astype(np.float32).tolist(),
                        "node_concept_ids": rng.integers(-1, 50, n_nodes).tolist(),
                        "node_label_ids": rng.integers(0, 4, n_nodes).tolist(),
                        "node_texts": [f"n{j}" for j in range(n_nodes)],
                        "edge_source": rng.integers(0, max(n_nodes, 1), n_edges).tolist(),
                        "edge_target": rng.integers(0, max(n_nodes, 1), n_edges).tolist(),
                        "edge_types": rng.integers(0, 3, n_edges).tolist(),
                        "negated_reports": [
                            f"no finding in report {r} ({j})" for j in range(int(rng.integers(0, 3)))
                        ],
                        "neighbor_ids": others + outside,
                        "neighbor_scores": [0.9] * (len(others) + len(outside)),
                    }
                )
    folder.mkdir(parents=True, exist_ok=True)
    group_of = np.array([row["group_id"] for row in rows])
    shards, sizes_map = [], {}
    for s, g0 in enumerate(range(0, n_groups, groups_per_shard)):
        take = [i for i in np.flatnonzero((group_of >= g0) & (group_of < g0 + groups_per_shard))]
        table = pa.Table.from_pylist([rows[i] for i in take], schema=schema)
        name = f"part-{s:05d}.parquet"
        pq.write_table(table, folder / name, row_group_size=row_group_size)
        n = table.num_rows
        shards.append(
            {
                "file": name,
                "samples": n,
                "groups": len(set(group_of[take].tolist())),
                "row_groups": -(-n // row_group_size),
                "bytes": (folder / name).stat().st_size,
            }
        )
        sizes_map[name] = n
    index = {
        "format": "clip2clinic.shards",
        "version": 1,
        "split": split,
        "schema": "shards",
        "schema_version": 1,
        "fingerprint": f"test-{seed}",
        "samples": len(rows),
        "groups": n_groups,
        "row_group_size": row_group_size,
        "shards": shards,
        "sizes": sizes_map,
    }
    (folder / "_index.json").write_text(json.dumps(index, indent=1))
    return folder


_WORDS = np.array(
    [
        "no",
        "acute",
        "cardiopulmonary",
        "process",
        "mild",
        "cardiomegaly",
        "small",
        "left",
        "pleural",
        "effusion",
        "right",
        "lower",
        "lobe",
        "opacity",
        "atelectasis",
        "pneumothorax",
        "edema",
        "consolidation",
        "stable",
        "lines",
        "tubes",
        "unchanged",
    ]
)
