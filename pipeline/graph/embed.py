"""Fixed-size, deterministic graph embeddings of report graphs over the fixed vocabulary.

Layout (dimension ``len(concepts) + len(roots) * (len(regions) + 3)``, pipeline/graph/vocabulary.yaml):

* concept slots, in vocabulary order: each observation entity adds its status weight ``w``
  (present +1, uncertain +0.5, absent -0.5) to its concept's slot and ``ancestor_decay**k * w``
  to its k-th ancestor, so "nodule" and "mass" share their lung_lesion / lung_opacity slots and lie
  nearer each other than either lies to "cardiomegaly"; an observation outside the vocabulary
  counts as ``other_finding``;
* root x region slots: each ``located_at`` (observation -> anatomy) adds ``location_weight * w`` to
  (root of the observation's concept, region of the anatomy), so "left lower lobe opacity" and
  "upper lobe opacity" differ;
* root x status slots (present, uncertain, absent): each observation adds ``status_weight`` to
  (its root, its status). Without them L2 normalisation would hide some flips ("effusion" present
  vs uncertain, or two mentions of one finding, one denied); with them any single status flip
  changes the vector (the count moved out of one status slot cannot scale with the rest).

Modifiers and laterality do not enter the vector. The sum is L2-normalised; a graph with no
observation (or whose weights cancel) is the zero vector, which has cosine 0 with every vector.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pipeline.graph.build import LABEL_STATUS
from pipeline.graph.vocabulary import Vocabulary, load_vocabulary

ENCODING_VERSION = 1
STATUSES: tuple[str, ...] = ("present", "uncertain", "absent")


@dataclass(frozen=True)
class EmbeddingWeights:
    """The knobs of :func:`embed` (part of the encoding string)."""

    present: float = 1.0
    uncertain: float = 0.5
    absent: float = -0.5
    ancestor_decay: float = 0.5  # weight of the parent slot relative to the concept's own
    location_weight: float = 0.5  # weight of a located_at pair's root x region slot
    status_weight: float = 0.25  # weight of an observation in its (root, status) slot


def dimension(vocab: Vocabulary | None = None) -> int:
    vocab = vocab or load_vocabulary()
    return len(vocab.concepts) + len(vocab.roots) * (len(vocab.regions) + len(STATUSES))


@functools.cache
def encoding(weights: EmbeddingWeights = EmbeddingWeights()) -> str:
    """``graph.v<N>/vocab.v<M>/d<size>/<hash>``: vectors with different strings never mix."""
    vocab = load_vocabulary()
    digest = hashlib.sha256(
        json.dumps(
            {"w": asdict(weights), "c": vocab.concepts, "r": vocab.regions, "p": vocab.parent}, sort_keys=True
        ).encode()
    ).hexdigest()[:8]
    return f"graph.v{ENCODING_VERSION}/vocab.v{vocab.version}/d{dimension(vocab)}/{digest}"


def embed(
    entities: Sequence[Mapping[str, Any]],
    relations: Sequence[Mapping[str, Any]],
    weights: EmbeddingWeights = EmbeddingWeights(),
) -> np.ndarray:
    """The float32 embedding of one report's graph (kg_* rows); zeros when it has no observation."""
    vocab = load_vocabulary()
    slot = vocab.slot
    roots = {r: i for i, r in enumerate(vocab.roots)}
    regions = {r: i for i, r in enumerate(vocab.regions)}
    n_concepts = len(vocab.concepts)
    vec = np.zeros(dimension(vocab), np.float64)
    by_status = n_concepts + len(roots) * len(regions)
    status_weight = {"present": weights.present, "uncertain": weights.uncertain, "absent": weights.absent}
    by_id = {e["entity_id"]: e for e in entities}
    w_of: dict[str, float] = {}
    for e in entities:
        if e["kind"] != "observation" or e["label"] not in LABEL_STATUS:
            continue
        w = status_weight[LABEL_STATUS[e["label"]]]
        w_of[e["entity_id"]] = w
        concept = e["concept"] if e["concept"] in slot else "other_finding"
        status = STATUSES.index(LABEL_STATUS[e["label"]])
        vec[by_status + roots[vocab.root(concept)] * len(STATUSES) + status] += weights.status_weight
        vec[slot[concept]] += w
        for k, ancestor in enumerate(vocab.ancestors(concept), start=1):
            vec[slot[ancestor]] += w * weights.ancestor_decay**k
    for r in relations:
        if r["relation"] != "located_at" or r["source_id"] not in w_of:
            continue
        target = by_id.get(r["target_id"])
        if target is None or target["kind"] != "anatomy":
            continue
        root = vocab.root(by_id[r["source_id"]]["concept"])
        at = n_concepts + roots[root] * len(regions) + regions[vocab.region(target["concept"])]
        vec[at] += weights.location_weight * w_of[r["source_id"]]
    norm = float(np.linalg.norm(vec))
    if norm < 1e-12:
        return np.zeros(len(vec), np.float32)
    return (vec / norm).astype(np.float32)
