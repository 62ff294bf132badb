"""Exact top-k neighbours, block by block, with ties broken by id (pure numpy; no I/O, no Dask).

The score of a pair is a weighted sum of component cosines (clinical, graph, ...)::

    score(a, b) = float32( sum_i  w_i * cos_i(a, b) )      cos_i = dot_i / (|a_i| * |b_i|), 0 for a zero vector

and the neighbours of a report are the other reports ordered by score (higher first), then by id
(smaller first). Exactness is by construction, not by tolerance:

* Each component's vectors are first rounded onto a dyadic grid (:func:`quantize`) fine enough to
  change nothing for the clinical encoding (multiples of 1/8) and coarse enough that every float64
  dot product of two rows is exact whatever the summation order. Dots, hence scores, are therefore
  the same in the blocked kernel, the dense reference, on any BLAS and any block shape.
* Candidates are streamed block by block. A float32 BLAS matmul (of unit vectors for the first
  block, of a narrower upper-bound sketch after it) gives an approximate score with a proven error
  bound (:func:`error_bound`); only pairs that could enter a query's running top list are rescored
  exactly, and a candidate enters a full list only with a higher exact score, or an equal score
  and a smaller id, than the list's last entry. The result does not depend on the stream order.
* Identical vectors have identical neighbour lists up to self-exclusion. Reports are grouped by
  vector (and split); each group is a query once, and as a candidate only its ``k + 1`` smallest
  ids can ever matter, so larger groups are capped. Radiology corpora have thousands of identical
  normal reports, which this collapses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.errors import PipelineError

COMPONENTS: tuple[str, ...] = ("clinical", "graph")  # fixed order: the score columns of similarity_topk
_ROWS = 8  # rows whose maximum is looked at first when scanning a block for passing pairs
_RESCORE_CHUNK = 1 << 14  # pairs rescored at once: the gathered rows stay under 8 MB a side at d=128


def quantize(vectors: np.ndarray) -> np.ndarray:
    """Round ``vectors`` (n, d) onto a dyadic grid on which float64 row dot products are exact.

    The grid is ``2**-e`` with ``e`` chosen so that every value is an integer multiple ``m`` with
    ``|m| <= 2**23`` (exact in float32) and ``d * m_max**2 <= 2**52`` (every partial sum of a dot
    product is exact in float64). Values already on a coarser grid (the clinical encoding) are
    unchanged. Returns float32. Raises ValueError for NaN or infinite values.
    """
    vectors = np.asarray(vectors)
    n, d = vectors.shape
    out = np.empty((n, d), np.float32)
    if n == 0 or d == 0:
        return out
    hi, lo = float(vectors.max()), float(vectors.min())  # (np.abs would be a copy of them all)
    if not (math.isfinite(hi) and math.isfinite(lo)):
        raise ValueError("vectors hold NaN or infinite values")
    max_abs = max(abs(hi), abs(lo))
    if max_abs == 0.0:
        out[:] = 0.0
        return out
    m_max = min(2.0**23, 2.0 ** math.floor(math.log2(math.sqrt(2.0**52 / d))))
    scale = 2.0 ** math.floor(math.log2(m_max / max_abs))
    for a in range(0, n, _RESCORE_CHUNK):
        chunk = np.asarray(vectors[a : a + _RESCORE_CHUNK], np.float64)
        out[a : a + _RESCORE_CHUNK] = np.round(chunk * scale) / scale
    return out


@dataclass
class ComponentMatrix:
    """One component's rows: quantized values, exact norms and the float32 unit vectors."""

    exact: np.ndarray  # (n, d) float32 on the grid of quantize()
    norm: np.ndarray  # (n,) float64: sqrt of the exact squared norm
    unit: np.ndarray  # (n, d) float32: exact / norm (0 for a zero row), for the approximate matmul
    exact32: bool = False  # float32 dot products are exact too (a coarse grid: the clinical encoding)

    @classmethod
    def from_quantized(cls, exact: np.ndarray) -> ComponentMatrix:
        exact = np.ascontiguousarray(exact, np.float32)
        norm = np.empty(len(exact), np.float64)
        unit = np.empty_like(exact)
        for a in range(0, len(exact), _RESCORE_CHUNK):
            x = exact[a : a + _RESCORE_CHUNK].astype(np.float64)
            nrm = np.sqrt(np.einsum("ij,ij->i", x, x))
            norm[a : a + _RESCORE_CHUNK] = nrm
            inv = np.divide(1.0, nrm, out=np.zeros_like(nrm), where=nrm > 0)
            unit[a : a + _RESCORE_CHUNK] = x * inv[:, None]
        return cls(exact, norm, unit, _float32_exact(exact))

    def take(self, rows: np.ndarray) -> ComponentMatrix:
        return ComponentMatrix(self.exact[rows], self.norm[rows], self.unit[rows], self.exact32)

    def __len__(self) -> int:
        return len(self.exact)


def _float32_exact(x: np.ndarray, max_bits: int = 8) -> bool:
    """Whether every float32 dot product of two rows of ``x`` is exact in any summation order.

    True when all values are multiples of ``2**-e`` (``e <= max_bits``) and ``d * m_max**2 < 2**24``
    for the largest multiple ``m_max``: every partial sum is then an integer multiple of
    ``2**-2e`` below ``2**24`` of them.
    """
    if x.size == 0:
        return True
    m_max = float(np.max(np.abs(x)))
    for e in range(max_bits + 1):
        if x.shape[1] * (m_max * 2.0**e) ** 2 >= 2.0**24:
            return False
        scaled = x * np.float32(2.0**e)  # exact: a power of two
        if np.array_equal(scaled, np.round(scaled)):
            return True
    return False


def error_bound(dims: Sequence[int], weights: Sequence[float]) -> float:
    """An upper bound, with a 4x margin, on |float32 matmul of unit vectors - exact float32 score|.

    Per component: float32 dot of d terms of unit vectors errs by at most about ``(d + 2) * 2**-24``
    (rounding of the unit vectors included); the final float32 rounding of the exact score adds
    ``2**-24`` per unit of weight.
    """
    return 4.0 * sum(w * (d + 4) for d, w in zip(dims, weights, strict=True)) * 2.0**-24


class Scratch:
    """Work buffers reused across blocks.

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_`` set, which turns off glibc's
    adaptive mmap threshold: every temporary over 128 KiB is mapped afresh and its pages faulted in
    one by one, which made this kernel up to 60% slower in a worker than in a plain process.
    Reusing the largest per-block buffers recovers part of that.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        """A C-contiguous array of ``shape`` (uninitialised), backed by the buffer ``name``."""
        size = math.prod(shape)
        buffer = self._buffers.get(name)
        if buffer is None or buffer.size < size or buffer.dtype != dtype:
            buffer = self._buffers[name] = np.empty(size, dtype)
        return buffer[:size].reshape(shape)


def pair_scores(
    queries: Sequence[ComponentMatrix],
    q_rows: np.ndarray,
    candidates: Sequence[ComponentMatrix],
    c_rows: np.ndarray,
    weights: Sequence[float],
    scratch: Scratch | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact scores of the pairs ``(queries[q_rows[j]], candidates[c_rows[j]])``.

    Returns ``(score, parts)``: float32 ``(m,)`` and float32 ``(n_components, m)`` cosines.
    """
    scratch = scratch or Scratch()
    m = len(q_rows)
    score = np.empty(m, np.float32)
    parts = np.empty((len(weights), m), np.float32)
    for a in range(0, m, _RESCORE_CHUNK):
        qi, ci = q_rows[a : a + _RESCORE_CHUNK], c_rows[a : a + _RESCORE_CHUNK]
        total = np.zeros(len(qi), np.float64)
        for j, (q, c, w) in enumerate(zip(queries, candidates, weights, strict=True)):
            d = q.exact.shape[1]
            left = np.take(
                q.exact, qi, axis=0, out=scratch.get("left", (len(qi), d), np.float32), mode="clip"
            )
            right = np.take(
                c.exact, ci, axis=0, out=scratch.get("right", (len(ci), d), np.float32), mode="clip"
            )
            if q.exact32 and c.exact32:
                dot = np.einsum("ij,ij->i", left, right).astype(np.float64)
            else:
                dot = np.einsum("ij,ij->i", left.astype(np.float64), right.astype(np.float64))
            cos = _cosine(dot, q.norm[qi], c.norm[ci])
            parts[j, a : a + len(qi)] = cos
            total = total + w * cos
        score[a : a + len(qi)] = total + 0.0  # + 0.0 turns -0.0 into 0.0
    return score, parts


def _cosine(dot: np.ndarray, norm_a: np.ndarray, norm_b: np.ndarray) -> np.ndarray:
    """dot / (|a| |b|), 0 where either norm is 0. The one formula every path uses."""
    den = norm_a[:, None] * norm_b[None, :] if dot.ndim == 2 else norm_a * norm_b
    return np.divide(dot, den, out=np.zeros(dot.shape, np.float64), where=den > 0)


@dataclass
class Neighbors:
    """Top lists: row i holds the best candidates of query i in order; ``ids == -1`` pads."""

    ids: np.ndarray  # (n, m) int64 candidate ids (the caller's integer ids)
    score: np.ndarray  # (n, m) float32
    parts: np.ndarray  # (n_components, n, m) float32

    @property
    def count(self) -> np.ndarray:
        return (self.ids >= 0).sum(axis=1)


@dataclass
class CandidateSet:
    """Candidates as groups of identical vectors, prepared once for many queries.

    One matrix row per group, largest groups first (a query near a big group, such as a normal
    template, fills its list at once), with the group's members (ids ascending, at most ``m``).
    ``full`` holds the concatenated unit vectors; ``sketch`` a narrower matrix whose products with
    :meth:`sketch_of` a query bound the score from above: the ``kept`` columns most often non-zero,
    plus one column holding each row's norm over the others (Cauchy-Schwarz). Clinical vectors
    are sparse and a few slots carry most of the mass, so the sketch stays tight at a quarter of
    the matmul work.
    """

    mats: list[ComponentMatrix]  # one per component, one row per group
    starts: np.ndarray  # (G,) int64: members of group g are members[starts[g]:starts[g] + sizes[g]]
    sizes: np.ndarray  # (G,) int64
    members: np.ndarray  # int64 ids
    full: np.ndarray  # (G, sum d) float32
    sketch: np.ndarray  # (G, len(kept) + 1) float32, or ``full`` when no column is dropped
    kept: np.ndarray
    dropped: np.ndarray
    order: np.ndarray  # row r holds the group given at position order[r] to build()

    @classmethod
    def build(
        cls, mats: Sequence[ComponentMatrix], ptr: np.ndarray, members: np.ndarray, sketch_dims: int = 32
    ) -> CandidateSet:
        """From one row per group and CSR members (``members[ptr[g]:ptr[g + 1]]``, ids ascending)."""
        sizes = np.diff(ptr).astype(np.int64)
        order = np.argsort(-sizes, kind="stable")
        mats = [mat.take(order) for mat in mats]
        full = np.concatenate([mat.unit for mat in mats], axis=1)
        width = full.shape[1]
        by_frequency = np.argsort(-np.count_nonzero(full, axis=0), kind="stable")
        kept = by_frequency[: min(sketch_dims, width)]
        dropped = np.sort(by_frequency[len(kept) :])
        out = cls(
            mats,
            ptr[:-1][order].astype(np.int64),
            sizes[order],
            np.asarray(members, np.int64),
            full,
            full,
            kept,
            dropped,
            order,
        )
        if len(dropped) > 1:
            out.sketch = out.sketch_of(full)
        return out

    def sketch_of(self, full: np.ndarray) -> np.ndarray:
        """The sketch of rows laid out like :attr:`full` (weighted query rows included)."""
        if len(self.dropped) <= 1:
            return full
        rest = full[:, self.dropped].astype(np.float64)
        norm = np.sqrt(np.einsum("ij,ij->i", rest, rest)).astype(np.float32)
        return np.ascontiguousarray(np.concatenate([full[:, self.kept], norm[:, None]], axis=1))

    def __len__(self) -> int:
        return len(self.sizes)


def topk_groups(
    queries: Sequence[ComponentMatrix],
    candidates: CandidateSet,
    weights: Sequence[float],
    m: int,
    *,
    query_block: int = 256,
    candidate_block: int = 32768,
    first_block: int = 4096,
) -> Neighbors:
    """The ``m`` best candidate ids of every query, by (score desc, id asc); no exclusions.

    Streams over blocks of candidate groups. The first block is scored by a float32 matmul of unit
    vectors (within :func:`error_bound` of the exact score), which yields a lower bound of each
    query's m-th best score; later blocks by the sketch, an upper bound. Only pairs that could
    enter a list are rescored exactly (:func:`pair_scores`) and expanded to their members; a member
    enters a full list only with a higher score, or the same score and a smaller id, than the
    list's last entry, so the stream order does not matter. Memory is bounded by
    ``query_block * candidate_block`` floats plus the inputs. Raises ValueError for mismatched
    components, negative weights or ``m < 1``.
    """
    n_q = len(queries[0]) if queries else 0
    n_g = len(candidates)
    if len(queries) != len(candidates.mats) or len(queries) != len(weights) or not weights:
        raise ValueError("one query and one candidate matrix per weight are needed")
    if any(w < 0 or not math.isfinite(w) for w in weights):
        raise ValueError(f"weights must be finite and >= 0, got {list(weights)}")
    if m < 1:
        raise ValueError("m must be >= 1")
    out = Neighbors(
        np.full((n_q, m), -1, np.int64),
        np.full((n_q, m), -np.inf, np.float32),
        np.zeros((len(weights), n_q, m), np.float32),
    )
    if n_q == 0 or n_g == 0:
        return out
    mats, sizes, starts = candidates.mats, candidates.sizes, candidates.starts
    eps = error_bound([c.exact.shape[1] for c in mats], weights)
    q_full = np.concatenate([q.unit * np.float32(w) for q, w in zip(queries, weights, strict=True)], axis=1)
    q_sketch = candidates.sketch_of(q_full)
    # Neighbouring rows with similar vectors have similar thresholds and hits, which keeps the
    # row-group filter of _passing tight; the lexicographic order of the sketch groups them.
    by_vector = np.lexsort(q_sketch[:, : max(1, len(candidates.kept))].T[::-1])
    q_full, q_sketch = q_full[by_vector], q_sketch[by_vector]
    queries = [q.take(by_vector) for q in queries]
    c_full, c_sketch = candidates.full, candidates.sketch
    first_block = max(first_block, m)
    candidate_block = max(candidate_block, first_block)
    query_block = -(-query_block // _ROWS) * _ROWS
    buffer = np.empty((min(query_block, -(-n_q // _ROWS) * _ROWS), min(candidate_block, n_g)), np.float32)
    bounds = [0, *range(min(first_block, n_g), n_g, candidate_block), n_g]
    scratch = Scratch()
    for r0 in range(0, n_q, query_block):
        r1 = min(n_q, r0 + query_block)
        thr = np.full(r1 - r0, -np.inf, np.float64)  # exact score of the last entry of a full list
        last = np.full(r1 - r0, np.iinfo(np.int64).max, np.int64)  # its id
        for c0, c1 in zip(bounds[:-1], bounds[1:], strict=True):
            approx = buffer[: r1 - r0, : c1 - c0]
            if c0 == 0:
                np.matmul(q_full[r0:r1], c_full[c0:c1].T, out=approx)
                low = _bootstrap(approx, sizes[c0:c1], m, scratch) - 2 * eps
            else:
                np.matmul(q_sketch[r0:r1], c_sketch[c0:c1].T, out=approx)
                low = thr - eps
            padded = -(-(r1 - r0) // _ROWS) * _ROWS
            buffer[r1 - r0 : padded, : c1 - c0] = -np.inf
            low = np.concatenate([low, np.full(padded - (r1 - r0), np.inf)])
            rows, cols = _passing(buffer[:padded, : c1 - c0], _lower(low), scratch)
            if rows.size == 0:
                continue
            groups = cols + c0
            score, parts = pair_scores(queries, rows + r0, mats, groups, weights, scratch)
            count = sizes[groups]
            rows = np.repeat(rows, count)
            score = np.repeat(score, count)
            parts = np.repeat(parts, count, axis=1)
            first = np.repeat(starts[groups] - np.cumsum(count) + count, count)
            ids = candidates.members[first + np.arange(len(rows))]
            enters = (score > thr[rows]) | ((score == thr[rows]) & (ids < last[rows]))
            if not enters.any():
                continue
            _merge(out, rows[enters] + r0, ids[enters], score[enters], parts[:, enters], m)
            full = out.ids[r0:r1, m - 1] >= 0
            thr = np.where(full, out.score[r0:r1, m - 1].astype(np.float64), -np.inf)
            last = np.where(full, out.ids[r0:r1, m - 1], np.iinfo(np.int64).max)
    unsorted = Neighbors(np.empty_like(out.ids), np.empty_like(out.score), np.empty_like(out.parts))
    unsorted.ids[by_vector], unsorted.score[by_vector], unsorted.parts[:, by_vector] = (
        out.ids,
        out.score,
        out.parts,
    )
    return unsorted


def _passing(block: np.ndarray, low: np.ndarray, scratch: Scratch) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) of the entries of ``block`` that are ``>= low[row]``.

    Looks at the maxima of groups of ``_ROWS`` rows first (an element-wise, vectorised reduction),
    then only at the columns where a group passes: after the first blocks few pairs pass, and a
    full ``nonzero`` over the block would cost more than the matmul. ``len(block)`` must be a
    multiple of ``_ROWS``; padding rows hold -inf.
    """
    n_rows, n = block.shape
    grouped = block.reshape(n_rows // _ROWS, _ROWS, n)
    low = low.reshape(-1, _ROWS)
    top = scratch.get("top", (n_rows // _ROWS, n), np.float32)
    np.copyto(top, grouped[:, 0])
    for i in range(1, _ROWS):  # row by row: contiguous, vectorised, faster than max(axis=1)
        np.maximum(top, grouped[:, i], out=top)
    mask = np.greater_equal(top, low.min(axis=1)[:, None], out=scratch.get("mask", top.shape, np.bool_))
    # flatnonzero + divmod: 2-D nonzero is an order of magnitude slower
    group, col = np.divmod(np.flatnonzero(mask), n)
    if group.size == 0:
        return group, col
    at, row = np.divmod(np.flatnonzero(grouped[group, :, col] >= low[group]), _ROWS)
    return group[at] * _ROWS + row, col[at]


def _bootstrap(approx: np.ndarray, sizes: np.ndarray, m: int, scratch: Scratch) -> np.ndarray:
    """Per row, a value ``t`` such that groups holding at least ``m`` members have approx >= t.

    Takes the best entry of each of up to ``4 m`` disjoint column slices (distinct groups), sorts
    them, and walks down until their members number ``m``. With ``approx`` within ``eps`` of the
    exact score, ``t - eps`` is a lower bound of the m-th best exact score. -inf when the block's
    groups hold fewer than ``m`` members.
    """
    n_rows, n = approx.shape
    n_slices = min(n, 4 * m)
    width = n // n_slices
    # argmax copies a non-contiguous input: copy into a reused buffer instead (see Scratch)
    sliced = scratch.get("slices", (n_rows, n_slices, width), np.float32)
    np.copyto(sliced, approx[:, : n_slices * width].reshape(n_rows, n_slices, width))
    best = sliced.argmax(axis=2)
    best += np.arange(n_slices) * width
    values = np.take_along_axis(approx, best, axis=1)
    order = np.argsort(-values, axis=1, kind="stable")
    values = np.take_along_axis(values, order, axis=1)
    members = np.cumsum(sizes[np.take_along_axis(best, order, axis=1)], axis=1)
    enough = members >= m
    at = enough.argmax(axis=1)
    t = values[np.arange(n_rows), at].astype(np.float64)
    return np.where(enough[:, -1], t, -np.inf)


def _lower(values: np.ndarray) -> np.ndarray:
    """float32 values no larger than ``values`` (float64), so a comparison never loses a pair."""
    low = values.astype(np.float32)
    return np.where(low.astype(np.float64) > values, np.nextafter(low, np.float32(-np.inf)), low)


def _descending(score: np.ndarray) -> np.ndarray:
    """uint64 keys that sort float32 scores in descending order (no -0.0 or NaN in scores)."""
    bits = score.astype(np.float32).view(np.uint32).astype(np.uint64)
    negative = bits >= np.uint64(0x80000000)
    ascending = np.where(negative, np.uint64(0xFFFFFFFF) - bits, bits | np.uint64(0x80000000))
    return np.uint64(0xFFFFFFFF) - ascending


def _merge(
    out: Neighbors, rows: np.ndarray, ids: np.ndarray, score: np.ndarray, parts: np.ndarray, m: int
) -> None:
    """Merge new (row, id, score) entries into the running lists of ``out`` (in place)."""
    touched = np.unique(rows)
    held = out.ids[touched]
    valid = (held >= 0).ravel()
    all_rows = np.concatenate([np.repeat(touched, m)[valid], rows])
    all_ids = np.concatenate([held.ravel()[valid], ids])
    all_score = np.concatenate([out.score[touched].ravel()[valid], score])
    all_parts = np.concatenate([out.parts[:, touched].reshape(len(parts), -1)[:, valid], parts], axis=1)
    # (row, score desc) in one uint64 key: one sort key fewer than lexsort((ids, -score, rows))
    key = (all_rows.astype(np.uint64) << np.uint64(32)) | _descending(all_score)
    order = np.lexsort((all_ids, key))
    r = all_rows[order]
    pos = np.arange(len(r)) - np.searchsorted(r, r, side="left")
    keep = pos < m
    r, pos, sel = r[keep], pos[keep], order[keep]
    out.ids[r, pos] = all_ids[sel]
    out.score[r, pos] = all_score[sel]
    out.parts[:, r, pos] = all_parts[:, sel]


# -- corpus index: dedupe by vector (and split), cap candidate groups ----------------------------


@dataclass
class CorpusIndex:
    """Reports in id order, grouped by identical vectors (and split), with capped candidates.

    ``group[i]`` is report i's group; groups are numbered in order of their smallest id.
    ``unique[c]`` holds one quantized row per group for component c. ``candidates`` are the report
    indices that can appear in any top-(k+1) list: each group's ``k + 1`` smallest ids.
    """

    ids: pa.Array  # (N,) string, sorted ascending
    split: np.ndarray  # (N,) int32 code into split_names; all 0 when splits are ignored
    split_names: list[str | None]
    group: np.ndarray  # (N,) int32
    unique: list[np.ndarray]  # per component: (U, d) float32
    candidates: np.ndarray  # (C,) int64, ascending

    @property
    def group_split(self) -> np.ndarray:
        """The split of each group (every member of a group shares it)."""
        out = np.zeros(len(self.unique[0]), np.int32)
        out[self.group] = self.split
        return out


def sort_by_id(ids: pa.Array | Sequence[str]) -> tuple[pa.Array, np.ndarray]:
    """``(sorted ids, order)``. Raises PipelineError(E_DUPLICATE_ID) when an id repeats."""
    ids = pa.array(ids, pa.string()) if not isinstance(ids, pa.Array) else ids
    order = pc.sort_indices(ids).to_numpy()
    ordered = ids.take(pa.array(order))
    if len(ordered) > 1:
        same = pc.equal(ordered[1:], ordered[:-1]).to_numpy(zero_copy_only=False)
        if same.any():
            dup = ordered[int(np.flatnonzero(same)[0])].as_py()
            raise PipelineError(
                "E_DUPLICATE_ID", f"report_id {dup!r} has more than one vector; ids must be unique."
            )
    return ordered, order


def split_codes(
    splits: Sequence[str | None] | pa.Array | None, order: np.ndarray
) -> tuple[np.ndarray, list[str | None]]:
    """Integer codes of ``splits`` taken in ``order``, and the names (null last); all 0 when None."""
    if splits is None:
        return np.zeros(len(order), np.int32), [None]
    arr = pa.array(splits, pa.string()) if not isinstance(splits, pa.Array) else splits
    arr = arr.take(pa.array(order))
    names = sorted(set(arr.to_pylist()), key=lambda s: (s is None, s or ""))
    codes = pc.index_in(arr, value_set=pa.array(names, pa.string()), skip_nulls=False)
    return codes.to_numpy(zero_copy_only=False).astype(np.int32), names


def _unique_rows(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(key, return_index=True, return_inverse=True)[1:]`` of a 1-D array, with one
    copy of ``key`` less (np.unique flattens it first): the sorted keys are the stage's largest
    allocation, a report's quantized vector each."""
    perm = key.argsort(kind="stable")  # stable: a group's first index is its first member
    ordered = key[perm]
    new = np.empty(len(key), bool)
    new[:1] = True
    new[1:] = ordered[1:] != ordered[:-1]
    del ordered
    inverse = np.empty(len(key), np.intp)
    inverse[perm] = np.cumsum(new) - 1
    return perm[new], inverse


def build_index(
    ids: pa.Array | Sequence[str],
    components: Sequence[np.ndarray],
    k: int,
    splits: Sequence[str | None] | None = None,
) -> CorpusIndex:
    """Sort by id, quantize each component, group identical (split, vectors), cap candidates.

    ``components`` are (N, d_c) arrays aligned with ``ids``; ``splits`` (aligned too) restricts
    neighbours to the same split when given (null is a split of its own). Raises
    PipelineError(E_DUPLICATE_ID) and ValueError (NaN, misaligned inputs).
    """
    n = len(ids)
    if any(len(c) != n for c in components) or (splits is not None and len(splits) != n):
        raise ValueError("ids, components and splits must have the same length")
    ordered, order = sort_by_id(ids)
    quantized = [quantize(np.asarray(c)[order]) for c in components]
    split, names = split_codes(splits, order)
    key = np.concatenate([split.view(np.uint8).reshape(n, 4), *(q.view(np.uint8) for q in quantized)], axis=1)
    key = np.ascontiguousarray(key).view(np.dtype((np.void, key.shape[1]))).ravel()
    first, inverse = _unique_rows(key)
    del key
    relabel = np.empty(len(first), np.int32)
    by_first = np.argsort(first)
    relabel[by_first] = np.arange(len(first), dtype=np.int32)
    group = relabel[inverse]
    representatives = first[by_first]
    members = np.argsort(group, kind="stable")  # stable: id order within each group
    starts = np.searchsorted(group[members], group[members], side="left")
    position = np.arange(n) - starts
    candidates = np.sort(members[position <= k]).astype(np.int64)
    return CorpusIndex(
        ids=ordered,
        split=split,
        split_names=names,
        group=group,
        unique=[q[representatives] for q in quantized],
        candidates=candidates,
    )


class Searcher:
    """Top-k queries against a :class:`CorpusIndex`; candidate sets are built once per split.

    A query group is a row of its split's candidate set, so the searcher holds one copy of the
    vectors (the candidate sets), not two.
    """

    def __init__(self, index: CorpusIndex, weights: Sequence[float], *, sketch_dims: int = 32) -> None:
        if len(weights) != len(index.unique):
            raise ValueError("one weight per component is needed")
        self.index = index
        self.weights = list(weights)
        self.sketch_dims = sketch_dims
        self.group_split = index.group_split
        self.row_of_group = np.full(len(self.group_split), -1, np.int64)  # in its split's set
        self._candidates: dict[int, CandidateSet] = {}

    def candidates(self, split: int) -> CandidateSet:
        """The groups of one split (all groups when splits are ignored) with their capped members."""
        if split not in self._candidates:
            index = self.index
            groups = np.flatnonzero(self.group_split == split)
            cands = index.candidates[index.split[index.candidates] == split]
            cands = cands[np.argsort(index.group[cands], kind="stable")]  # by group, then id
            ptr = np.zeros(len(groups) + 1, np.int64)
            np.cumsum(
                np.bincount(np.searchsorted(groups, index.group[cands]), minlength=len(groups)), out=ptr[1:]
            )
            mats = [ComponentMatrix.from_quantized(u[groups]) for u in index.unique]
            built = CandidateSet.build(mats, ptr, cands, self.sketch_dims)
            self.row_of_group[groups[built.order]] = np.arange(len(groups))
            self._candidates[split] = built
        return self._candidates[split]

    def empty_groups(self) -> np.ndarray:
        """Groups whose vectors are all zero: every score with them is 0, so they have no neighbours."""
        return np.all([~u.any(axis=1) for u in self.index.unique], axis=0)

    def topk(
        self, rows: np.ndarray, k: int, **kernel: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Top-k of the reports ``rows`` (indices into ``index.ids``), self excluded.

        Returns sparse triplets ``(report, neighbor, rank, score, parts)``: int64 report and
        neighbour indices, int16 rank from 1, float32 score and ``(n_components, nnz)`` float32
        cosines, ordered by report then rank. Neighbours come from the report's split when the
        index was built with splits. ``kernel`` passes block sizes to :func:`topk_groups`.
        """
        rows = np.asarray(rows, np.int64)
        query_groups, local = np.unique(self.index.group[rows], return_inverse=True)
        lists = Neighbors(
            np.full((len(query_groups), k + 1), -1, np.int64),
            np.zeros((len(query_groups), k + 1), np.float32),
            np.zeros((len(self.weights), len(query_groups), k + 1), np.float32),
        )
        for split in np.unique(self.group_split[query_groups]):
            mine = np.flatnonzero(self.group_split[query_groups] == split)
            candidates = self.candidates(int(split))
            at = self.row_of_group[query_groups[mine]]
            found = topk_groups(
                [mat.take(at) for mat in candidates.mats], candidates, self.weights, k + 1, **kernel
            )
            lists.ids[mine], lists.score[mine], lists.parts[:, mine] = found.ids, found.score, found.parts
        return expand(lists, rows, local.ravel(), k)


def index_topk(
    index: CorpusIndex, weights: Sequence[float], k: int, rows: np.ndarray | None = None, **kernel: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:meth:`Searcher.topk` of ``rows`` (default: every report) in one call."""
    sketch_dims = kernel.pop("sketch_dims", 32)
    rows = np.arange(len(index.group)) if rows is None else rows
    return Searcher(index, weights, sketch_dims=sketch_dims).topk(rows, k, **kernel)


def expand(
    lists: Neighbors, rows: np.ndarray, local: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per report: its group's list without the report itself, first ``k`` entries, as triplets."""
    ids = lists.ids[local]  # (n, k + 1)
    keep = (ids >= 0) & (ids != rows[:, None])
    rank = np.cumsum(keep, axis=1)
    keep &= rank <= k
    report = np.broadcast_to(rows[:, None], ids.shape)[keep]
    parts = lists.parts[:, local][:, keep]
    return report, ids[keep], rank[keep].astype(np.int16), lists.score[local][keep], parts


def dense_topk(
    ids: pa.Array | Sequence[str],
    components: Sequence[np.ndarray],
    weights: Sequence[float],
    k: int,
    splits: Sequence[str | None] | None = None,
    *,
    rows: np.ndarray | None = None,
    chunk: int = 2048,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The naive reference: every score of the dense N x N matrix, then a full stable sort per row.

    Same score definition and output as :func:`index_topk` (indices into the sorted ids), no
    dedupe, no threshold, no blocking beyond ``chunk`` query rows at a time. O(N^2) time.
    ``rows`` (indices into the sorted ids, ascending) limits the queries, not the candidates.
    """
    ordered, order = sort_by_id(ids)
    n = len(ordered)
    queries = np.arange(n) if rows is None else np.asarray(rows, np.int64)
    mats = [ComponentMatrix.from_quantized(quantize(np.asarray(c)[order])) for c in components]
    split = split_codes(splits, order)[0] if splits is not None else None
    out: list[tuple[np.ndarray, ...]] = []
    exact64 = [mat.exact.astype(np.float64) for mat in mats]
    for a in range(0, len(queries), chunk):
        q = queries[a : a + chunk]
        total = np.zeros((len(q), n), np.float64)
        parts = []
        for mat, x, w in zip(mats, exact64, weights, strict=True):
            cos = _cosine(x[q] @ x.T, mat.norm[q], mat.norm)
            parts.append(cos.astype(np.float32))
            total = total + w * cos
        score = (total + 0.0).astype(np.float32)
        excluded = np.zeros(score.shape, bool)
        excluded[np.arange(len(q)), q] = True
        if split is not None:
            excluded |= split[q, None] != split[None, :]
        key = np.where(excluded, np.inf, -score.astype(np.float64))
        best = np.argsort(key, axis=1, kind="stable")[:, :k]  # stable: equal scores keep id order
        valid = ~np.take_along_axis(excluded, best, axis=1)
        rank = np.cumsum(valid, axis=1)
        report = np.broadcast_to(q[:, None], best.shape)[valid]
        out.append(
            (
                report,
                best[valid],
                rank[valid].astype(np.int16),
                np.take_along_axis(score, best, axis=1)[valid],
                np.stack([np.take_along_axis(p, best, axis=1)[valid] for p in parts]),
            )
        )
    if not out:
        empty = np.zeros(0, np.int64)
        return (
            empty,
            empty,
            empty.astype(np.int16),
            empty.astype(np.float32),
            np.zeros((len(weights), 0), np.float32),
        )
    return (
        np.concatenate([o[0] for o in out]),
        np.concatenate([o[1] for o in out]),
        np.concatenate([o[2] for o in out]),
        np.concatenate([o[3] for o in out]),
        np.concatenate([o[4] for o in out], axis=1),
    )
