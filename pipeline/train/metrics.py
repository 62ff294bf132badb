"""Evaluation metrics in numpy: AUROC with a clustered bootstrap, retrieval ranks, pair accuracy.

No torch here: the functions take score arrays, so they are tested against hand-computed cases
and scikit-learn, and reused by notebooks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` (N,), ties given their average rank (as scipy's ``rankdata``)."""
    x = np.asarray(x)
    order = np.argsort(x, kind="mergesort")
    _, first, counts = np.unique(x[order], return_index=True, return_counts=True)
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
    return ranks


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (1 positive, 0 negative).

    The Mann-Whitney statistic: the chance that a random positive scores above a random negative,
    ties counting half. NaN when either class is empty.
    """
    labels = np.asarray(labels).astype(bool)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = average_ranks(np.asarray(scores, np.float64))
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct threshold, from (0, 0) to (1, 1).

    Raises ValueError when either class is empty.
    """
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, np.float64)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("a ROC curve needs positives and negatives")
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last index of each distinct score
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    return np.r_[0.0, fp / n_neg], np.r_[0.0, tp / n_pos]


def bootstrap_aurocs(
    labels: np.ndarray,
    scores: np.ndarray,
    *,
    groups: np.ndarray | None = None,
    n: int = 1000,
    seed: int = 0,
) -> np.ndarray:
    """AUROC of each column over ``n`` bootstrap resamples: an (n, K) array, NaN where a resample
    holds only one class of a column.

    ``labels`` (N, K) holds 1, 0 or NaN (excluded from that column), ``scores`` (N, K).
    ``groups`` (N,): resample whole groups (a study's images together: they share a report and a
    patient, so resampling images alone would understate the spread). Every column sees the same
    resample, so the mean over columns gets an interval too.
    """
    labels = np.asarray(labels, np.float64)
    scores = np.asarray(scores, np.float64)
    if labels.ndim == 1:
        labels, scores = labels[:, None], scores[:, None]
    groups = np.arange(len(labels)) if groups is None else np.asarray(groups)
    _, inverse = np.unique(groups, return_inverse=True)
    members = np.argsort(inverse, kind="mergesort")
    counts = np.bincount(inverse)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    rng = np.random.default_rng(seed)
    out = np.full((n, labels.shape[1]), np.nan)
    for b in range(n):
        chosen = rng.integers(0, len(counts), len(counts))
        c = counts[chosen]
        # The chosen groups' member positions, concatenated, without a Python loop over groups.
        shift = np.repeat(starts[chosen] - np.r_[0, np.cumsum(c)[:-1]], c)
        rows = members[shift + np.arange(int(c.sum()))]
        for k in range(labels.shape[1]):
            y = labels[rows, k]
            keep = ~np.isnan(y)
            out[b, k] = auroc(y[keep], scores[rows, k][keep])
    return out


def bootstrap_means(
    values: np.ndarray, groups: Sequence[str] | np.ndarray, *, n: int = 1000, seed: int = 0
) -> np.ndarray:
    """The mean of ``values`` over ``n`` resamples of whole groups: an (n,) array (a group's items
    stay together; the mean is over the resample's items)."""
    values = np.asarray(values, np.float64)
    _, inverse = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    sums = np.bincount(inverse, weights=values)
    counts = np.bincount(inverse).astype(np.float64)
    chosen = np.random.default_rng(seed).integers(0, len(counts), (n, len(counts)))
    return sums[chosen].sum(axis=1) / counts[chosen].sum(axis=1)


def interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The percentile interval of the finite ``samples`` (NaN, NaN when there are none)."""
    samples = np.asarray(samples, np.float64)
    samples = samples[np.isfinite(samples)]
    if not len(samples):
        return math.nan, math.nan
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(samples, [tail, 100 - tail])
    return float(lo), float(hi)


def retrieval_ranks(similarity: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """1-based rank of the best-scored correct candidate per query row.

    ``similarity`` and ``correct`` are (Q, C); a row needs at least one correct candidate. Ties
    are ranked pessimistically: every wrong candidate scoring at least as high as the best correct
    one counts as above it (a model that scores everything alike gets rank C, not 1).

    Raises ValueError for a query row without a correct candidate.
    """
    similarity = np.asarray(similarity, np.float64)
    correct = np.asarray(correct, bool)
    if not correct.any(axis=1).all():
        raise ValueError("every query needs at least one correct candidate")
    best = np.where(correct, similarity, -np.inf).max(axis=1, keepdims=True)
    return 1 + ((similarity >= best) & ~correct).sum(axis=1)


def recall_at_k(ranks: np.ndarray, ks: Sequence[int]) -> dict[int, float]:
    """Share of queries whose correct candidate ranks within the top k, per k."""
    ranks = np.asarray(ranks)
    return {int(k): float((ranks <= k).mean()) if len(ranks) else math.nan for k in ks}


def pair_accuracy(better: np.ndarray, worse: np.ndarray) -> float:
    """Share of pairs where ``better`` scores above ``worse``, ties counting half (NaN: none)."""
    better, worse = np.asarray(better, np.float64), np.asarray(worse, np.float64)
    if not len(better):
        return math.nan
    return float((better > worse).mean() + 0.5 * (better == worse).mean())


def wilson_interval(successes: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (NaN, NaN for n = 0). ``level`` 0.95 or 0.99."""
    if n == 0:
        return math.nan, math.nan
    z = {0.95: 1.959964, 0.99: 2.575829, 0.9: 1.644854}.get(round(level, 2))
    if z is None:
        raise ValueError(f"level must be 0.9, 0.95 or 0.99, got {level}")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)
