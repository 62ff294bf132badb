"""Exact top-k: the blocked, deduplicated kernel equals the dense brute force, ties included."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.core.errors import PipelineError
from pipeline.similarity.topk import (
    ComponentMatrix,
    build_index,
    dense_topk,
    index_topk,
    pair_scores,
    quantize,
)

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def corpora(draw):
    """Small corpora with few distinct vectors (exact ties everywhere), ids in random order."""
    n = draw(st.integers(1, 120))
    d = draw(st.integers(1, 6))
    n_distinct = draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    base = rng.integers(-2, 3, (n_distinct, d)).astype(np.float32) / 4  # the clinical grid
    x = base[rng.integers(0, n_distinct, n)]
    ids = [f"r{int(i):05d}" for i in rng.choice(100_000, n, replace=False)]
    graph = None
    if draw(st.booleans()):  # a second, real-valued component (graph embeddings)
        g = rng.normal(size=(n_distinct, 3)).astype(np.float32)
        graph = g[rng.integers(0, n_distinct, n)]
    splits = None
    if draw(st.booleans()):
        splits = [[None, "train", "test"][int(s)] for s in rng.integers(0, 3, n)]
    k = draw(st.integers(1, 40))
    kernel = {
        "query_block": draw(st.sampled_from([1, 8, 64, 256])),
        "candidate_block": draw(st.sampled_from([1, 7, 64, 32768])),
        "first_block": draw(st.sampled_from([1, 5, 4096])),
        "sketch_dims": draw(st.sampled_from([0, 1, 2, 32])),
    }
    return ids, x, graph, splits, k, kernel


@SETTINGS
@given(corpora())
def test_blocked_equals_brute_force(case):
    ids, x, graph, splits, k, kernel = case
    components, weights = ([x], [1.0]) if graph is None else ([x, graph], [1.0, 0.5])
    index = build_index(ids, components, k, splits)
    got = index_topk(index, weights, k, **kernel)
    want = dense_topk(ids, components, weights, k, splits, chunk=17)
    for a, b in zip(got, want, strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    report, neighbor, rank, score, _ = got
    assert not np.any(report == neighbor)  # self excluded
    # ranks are 1..n per report, scores non-increasing, ties in increasing neighbour id
    for r in np.unique(report):
        mine = report == r
        assert rank[mine].tolist() == list(range(1, mine.sum() + 1))
        s, nb = score[mine], neighbor[mine]
        assert np.all((s[:-1] > s[1:]) | ((s[:-1] == s[1:]) & (nb[:-1] < nb[1:])))


def test_thousands_of_identical_normal_reports():
    """The radiology case: most reports share one vector; neighbours are the smallest other ids."""
    rng = np.random.default_rng(3)
    normal = np.array([1.0, 0, -0.25, -0.25, 0, 0], np.float32)
    x = np.tile(normal, (3000, 1))
    odd = rng.random(3000) < 0.05
    x[odd] = rng.integers(-1, 2, (odd.sum(), 6)).astype(np.float32) / 2
    ids = [f"s{i:06d}" for i in rng.permutation(3000)]
    index = build_index(ids, [x], 32)
    assert len(index.unique[0]) < 200 and len(index.candidates) < 200 + 33  # the normal group is capped
    got = index_topk(index, [1.0], 32)
    want = dense_topk(ids, [x], [1.0], 32)
    assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))
    report, neighbor, _, score, _ = got
    normals = np.flatnonzero(np.all(x[np.argsort(ids)] == normal, axis=1))
    first = report == normals[40]
    assert np.all(score[first] == 1.0)
    assert neighbor[first].tolist() == [i for i in normals[:33] if i != normals[40]][:32]


def test_quantize_keeps_the_clinical_grid_and_makes_dots_order_free():
    x = np.array([[1.0, -0.25, 0.5, 0.125], [0.5, 0.5, -0.125, 0]], np.float32)
    assert np.array_equal(quantize(x), x)
    rng = np.random.default_rng(0)
    g = quantize(rng.normal(size=(50, 64)))
    a, b = g.astype(np.float64), g[::-1].astype(np.float64)
    forward = np.einsum("ij,ij->i", a, b)
    backward = np.einsum("ij,ij->i", a[:, ::-1], b[:, ::-1])
    assert np.array_equal(forward, backward) and np.array_equal(forward, (a * b).sum(axis=1))
    with pytest.raises(ValueError):
        quantize(np.array([[np.nan]]))


def test_pair_scores_zero_vectors_and_weights():
    mats = [ComponentMatrix.from_quantized(np.array([[0, 0], [1, 0], [2, 0], [0, 1]], np.float32))]
    score, parts = pair_scores(mats, np.array([0, 1, 1, 1]), mats, np.array([0, 2, 3, 0]), [2.0])
    assert parts[0].tolist() == [0.0, 1.0, 0.0, 0.0] and score.tolist() == [0.0, 2.0, 0.0, 0.0]
    assert mats[0].exact32


def test_duplicate_ids_are_refused():
    with pytest.raises(PipelineError) as err:
        build_index(["a", "b", "a"], [np.eye(3, dtype=np.float32)], 2)
    assert err.value.code == "E_DUPLICATE_ID"


def test_fewer_candidates_than_k():
    ids = ["c", "a", "b"]
    x = np.array([[1, 0], [1, 1], [0, 1]], np.float32)
    report, neighbor, rank, _, _ = index_topk(build_index(ids, [x], 10), [1.0], 10)
    assert report.tolist() == [0, 0, 1, 1, 2, 2] and rank.tolist() == [1, 2] * 3
    assert neighbor.tolist() == [1, 2, 0, 2, 0, 1]  # a: b (0.71) then c (0.71); ties by id
