"""Synthetic full-size training shards for the trainer benchmarks (bench/train.py, bench/train_gpu.sh).

    python3 bench/train_synthetic.py out=DIR [samples=25000] [workers=N] [image_size=256] [distinct=128]
        [shard_size=1000] [seed=0]

Writes ``DIR/train/part-*.parquet`` and ``DIR/train/_index.json`` as the shards stage does
(schemas/shards.yaml columns and types, the ``clip2clinic.schema`` metadata that
``pipeline.train.data`` checks, shards of ~1000 samples in row groups of 100, neighbour groups
contiguous within a shard), so ``python -m pipeline.train data.shards=DIR`` reads it. Without
``out=`` it writes into a temporary folder, prints the figures and deletes it.

What a sample holds, sized like MIMIC-CXR after the pipeline: a 256-px 8-bit grayscale PNG (smooth
chest-like structure plus noise, ~43 kB at PNG level 6, the shards stage's settings); a report of
~45-110 words (findings + impression; 70-140 tokens, so a batch pads to max_length=128 as MIMIC-CXR does); 1-2 negated reports of the same length; a knowledge graph
of 10-20 entities with about as many relations; the 125-d clinical vector (14 CheXpert slots + 111
fine findings, pipeline/similarity/finding_vocabulary.yaml) and the 272-d graph embedding
(pipeline/graph/vocabulary.yaml); 16 top-k neighbour ids. Groups are an anchor report and 0-3
neighbours (group_size=4), each report with 1-2 images.

PNG encoding dominates generation (~8 ms an image), so each shard draws its images from a pool of
``distinct`` PNGs (0: every image its own); decoding costs the same either way, so the loader's
throughput is unaffected. Shards are written in parallel, one process per shard.

Imports only numpy, pyarrow and Pillow (and the standard library): it runs on a bare CUDA box.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

N_LABELS = 14
CLINICAL_DIM = 125  # 14 observations + 111 fine findings (schemas/clinical_vectors.yaml)
GRAPH_DIM = 272  # pipeline.graph.embed.dimension() of vocabulary v1
CONCEPTS = 128  # concepts in pipeline/graph/vocabulary.yaml (node_concept_ids in [-1, 128))
SHARD_SIZE = 1000  # stages.shards.shard_size
ROW_GROUP_SIZE = 100  # stages.shards.row_group_size
NEIGHBORS = 16  # stages.shards.neighbors

_L = pa.list_
SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("report_id", pa.string(), nullable=False),
        pa.field("subject_id", pa.string()),
        pa.field("study_id", pa.string()),
        pa.field("split", pa.string(), nullable=False),
        pa.field("split_source", pa.string(), nullable=False),
        pa.field("group_id", pa.int64(), nullable=False),
        pa.field("view_position", pa.string()),
        pa.field("image", pa.binary(), nullable=False),
        pa.field("image_height", pa.int32(), nullable=False),
        pa.field("image_width", pa.int32(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("text_source", pa.string(), nullable=False),
        pa.field("labels", _L(pa.float32()), nullable=False),
        pa.field("clinical_vector", _L(pa.float32()), nullable=False),
        pa.field("graph_embedding", _L(pa.float32()), nullable=False),
        pa.field("node_concept_ids", _L(pa.int32()), nullable=False),
        pa.field("node_label_ids", _L(pa.int8()), nullable=False),
        pa.field("node_texts", _L(pa.string()), nullable=False),
        pa.field("edge_source", _L(pa.int32()), nullable=False),
        pa.field("edge_target", _L(pa.int32()), nullable=False),
        pa.field("edge_types", _L(pa.int8()), nullable=False),
        pa.field("negated_reports", _L(pa.string()), nullable=False),
        pa.field("neighbor_ids", _L(pa.string()), nullable=False),
        pa.field("neighbor_scores", _L(pa.float32()), nullable=False),
    ],
    metadata={b"clip2clinic.schema": b"shards", b"clip2clinic.schema_version": b"1"},
)

_FINDINGS = [
    "the lungs are clear without focal consolidation",
    "there is a small left pleural effusion with adjacent atelectasis",
    "mild pulmonary vascular congestion is present",
    "the cardiomediastinal silhouette is within normal limits",
    "moderate cardiomegaly is stable compared to the prior study",
    "there is no pneumothorax",
    "a right internal jugular central venous catheter terminates in the mid svc",
    "the endotracheal tube tip is 4 cm above the carina",
    "patchy opacity in the right lower lobe may reflect pneumonia",
    "bibasilar atelectasis is unchanged",
    "no acute osseous abnormality is seen",
    "the hila are unremarkable",
    "there is blunting of the right costophrenic angle",
    "an enteric tube courses below the diaphragm with the tip in the stomach",
    "interstitial markings are mildly prominent suggesting mild edema",
    "sternotomy wires are intact",
    "degenerative changes of the thoracic spine are noted",
    "the aorta is tortuous and calcified",
    "a calcified granuloma is seen in the left upper lobe",
    "low lung volumes cause bronchovascular crowding",
]
_IMPRESSIONS = [
    "no acute cardiopulmonary process",
    "small left pleural effusion and basilar atelectasis",
    "findings concerning for right lower lobe pneumonia",
    "mild pulmonary edema, improved since the prior exam",
    "lines and tubes in standard position",
    "stable cardiomegaly without acute process",
]
_ENTITY_WORDS = [
    "lung", "lobe", "pleural", "effusion", "opacity", "heart", "silhouette", "atelectasis", "edema",
    "catheter", "tube", "pneumothorax", "consolidation", "right", "left", "lower", "upper", "mild",
    "small", "moderate", "stable", "carina", "diaphragm", "spine", "aorta", "hilum", "base",
]  # fmt: skip


def _report(rng: np.random.Generator) -> tuple[str, list[str]]:
    """(report text, 1-2 negated versions of it): each negation denies one finding sentence."""
    sentences = [str(s) for s in rng.choice(_FINDINGS, int(rng.integers(5, 13)), replace=False)]
    impression = str(rng.choice(_IMPRESSIONS))
    text = "FINDINGS: " + ". ".join(s.capitalize() for s in sentences) + ". IMPRESSION: " + impression + "."
    negated = []
    for _ in range(int(rng.integers(1, 3))):
        k = int(rng.integers(len(sentences)))
        flipped = [*sentences[:k], "there is no evidence that " + sentences[k], *sentences[k + 1 :]]
        negated.append(
            "FINDINGS: " + ". ".join(s.capitalize() for s in flipped) + ". IMPRESSION: " + impression + "."
        )
    return text, negated


def _png_pool(rng: np.random.Generator, size: int, n: int) -> list[bytes]:
    """``n`` distinct 8-bit grayscale chest-like PNGs (two lung fields, a vertical gradient, noise)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    pool = []
    for _ in range(n):
        lx, rx, cy = rng.uniform(0.25, 0.35), rng.uniform(0.65, 0.75), rng.uniform(0.45, 0.55)
        lungs = np.exp(-((x - lx) ** 2 + (y - cy) ** 2) / 0.05) + np.exp(
            -((x - rx) ** 2 + (y - cy) ** 2) / 0.05
        )
        base = 120 + 80 * lungs * rng.uniform(0.7, 1.3) - 60 * y
        pixels = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels, mode="L").save(buf, format="PNG", compress_level=6)
        pool.append(buf.getvalue())
    return pool


def _sparse(rng: np.random.Generator, dim: int, k: int, values: list[float]) -> list[float]:
    v = np.zeros(dim, np.float32)
    v[rng.choice(dim, k, replace=False)] = rng.choice(values, k)
    return v.tolist()


def write_shard(folder: str, shard: int, samples: int, seed: int, image_size: int, distinct: int) -> dict:
    """One part of about ``samples`` samples (whole groups); returns its ``_index.json`` entry."""
    rng = np.random.default_rng([seed, shard])
    pool = _png_pool(rng, image_size, distinct) if distinct > 0 else None
    phrases = [" ".join(rng.choice(_ENTITY_WORDS, int(rng.integers(1, 3)))) for _ in range(200)]
    rows: list[dict] = []
    groups = 0
    while len(rows) < samples:
        n_reports = 1 if rng.random() < 0.3 else int(rng.integers(2, 5))
        members = [f"s{shard:04d}g{groups:04d}r{m}" for m in range(n_reports)]
        for report_id in members:
            text, negated = _report(rng)
            labels = rng.choice([1.0, 0.0, -1.0, np.nan], N_LABELS, p=[0.15, 0.1, 0.05, 0.7])
            clinical = np.zeros(CLINICAL_DIM, np.float32)
            clinical[:N_LABELS] = np.nan_to_num(
                np.select([labels == 1, labels == -1, labels == 0], [1.0, 0.5, -0.25])
            )
            clinical[N_LABELS:] = _sparse(rng, CLINICAL_DIM - N_LABELS, 6, [0.5, 0.25, -0.125])
            graph = np.asarray(_sparse(rng, GRAPH_DIM, 12, [1.0, 0.5, -0.5, 0.3]), np.float32)
            graph /= max(float(np.linalg.norm(graph)), 1e-6)
            n_nodes = int(rng.integers(10, 21))
            n_edges = int(rng.integers(n_nodes - 2, n_nodes + 4))
            outside = [f"s{shard:04d}g{int(g):04d}r0" for g in rng.integers(0, max(groups, 1), NEIGHBORS)]
            neighbours = ([m for m in members if m != report_id] + outside)[:NEIGHBORS]
            for i in range(1 if rng.random() < 0.6 else 2):
                png = pool[int(rng.integers(len(pool)))] if pool else _png_pool(rng, image_size, 1)[0]
                rows.append(
                    {
                        "image_id": f"{report_id}i{i}",
                        "report_id": report_id,
                        "subject_id": f"p{shard}-{groups}",
                        "study_id": report_id,
                        "split": "train",
                        "split_source": "derived",
                        "group_id": shard * 100_000 + groups,
                        "view_position": "PA" if i == 0 else "LATERAL",
                        "image": png,
                        "image_height": image_size,
                        "image_width": image_size,
                        "text": text,
                        "text_source": "findings+impression",
                        "labels": [None if np.isnan(v) else float(v) for v in labels],
                        "clinical_vector": clinical.tolist(),
                        "graph_embedding": graph.tolist(),
                        "node_concept_ids": rng.integers(-1, CONCEPTS, n_nodes).tolist(),
                        "node_label_ids": rng.integers(0, 4, n_nodes).tolist(),
                        "node_texts": [phrases[j] for j in rng.integers(0, len(phrases), n_nodes)],
                        "edge_source": rng.integers(0, n_nodes, n_edges).tolist(),
                        "edge_target": rng.integers(0, n_nodes, n_edges).tolist(),
                        "edge_types": rng.integers(0, 3, n_edges).tolist(),
                        "negated_reports": negated,
                        "neighbor_ids": neighbours,
                        "neighbor_scores": np.linspace(0.95, 0.5, len(neighbours))
                        .astype(np.float32)
                        .tolist(),
                    }
                )
        groups += 1
    name = f"part-{shard:05d}.parquet"
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    pq.write_table(table, Path(folder) / name, row_group_size=ROW_GROUP_SIZE)
    return {
        "file": name,
        "samples": table.num_rows,
        "groups": groups,
        "row_groups": -(-table.num_rows // ROW_GROUP_SIZE),
        "bytes": (Path(folder) / name).stat().st_size,
    }


def write_synthetic_shards(
    root: str | os.PathLike,
    samples: int,
    *,
    workers: int | None = None,
    seed: int = 0,
    image_size: int = 256,
    distinct: int = 128,
    split: str = "train",
    shard_size: int = SHARD_SIZE,
) -> Path:
    """``root/<split>/`` with parts of about ``shard_size`` samples (whole groups; about
    ``samples`` in all) and ``_index.json``; returns that folder. ``workers`` processes (default:
    all cores) write the parts."""
    folder = Path(root) / split
    folder.mkdir(parents=True, exist_ok=True)
    n_shards = max(1, -(-samples // shard_size))
    sizes = [min(shard_size, samples - s * shard_size) for s in range(n_shards)]
    workers = max(1, min(workers or os.cpu_count() or 1, n_shards))
    args = [(str(folder), s, n, seed, image_size, distinct) for s, n in enumerate(sizes)]
    if workers == 1:
        entries = [write_shard(*a) for a in args]
    else:
        with ProcessPoolExecutor(workers) as pool:
            entries = [f.result() for f in [pool.submit(write_shard, *a) for a in args]]
    index = {
        "format": "clip2clinic.shards",
        "version": 1,
        "split": split,
        "schema": "shards",
        "schema_version": 1,
        "fingerprint": f"synthetic-{seed}-{samples}-{image_size}",
        "samples": sum(e["samples"] for e in entries),
        "groups": sum(e["groups"] for e in entries),
        "row_group_size": ROW_GROUP_SIZE,
        "shards": entries,
        "sizes": {e["file"]: e["samples"] for e in entries},
    }
    (folder / "_index.json").write_text(json.dumps(index, indent=1))
    return folder


def main(argv: list[str]) -> None:
    args = dict(a.split("=", 1) for a in argv)
    samples = int(args.get("samples", 2000 if "out" not in args else 25_000))
    workers = int(args.get("workers", os.cpu_count() or 1))
    out = Path(args["out"]) if "out" in args else Path(tempfile.mkdtemp(prefix="bench-train-synthetic-"))
    try:
        t0 = time.perf_counter()
        folder = write_synthetic_shards(
            out,
            samples,
            workers=workers,
            seed=int(args.get("seed", 0)),
            image_size=int(args.get("image_size", 256)),
            distinct=int(args.get("distinct", 128)),
            shard_size=int(args.get("shard_size", SHARD_SIZE)),
        )
        seconds = time.perf_counter() - t0
        index = json.loads((folder / "_index.json").read_text())
        total = sum(e["bytes"] for e in index["shards"])
        print(f"synthetic_shards_folder={folder}")
        print(f"synthetic_samples={index['samples']} shards={len(index['shards'])} groups={index['groups']}")
        print(f"synthetic_bytes_per_sample_kB={total / index['samples'] / 1e3:.1f}")
        print(
            f"synthetic_generation_s={seconds:.1f} workers={workers} ({index['samples'] / seconds:,.0f} samples/s)"
        )
    finally:
        if "out" not in args:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
