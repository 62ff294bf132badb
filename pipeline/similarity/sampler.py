"""A clinically aware batch sampler: anchors plus their clinical neighbours from ``similarity_topk``.

Plain Python and numpy; usable as ``torch.utils.data.DataLoader(dataset, batch_sampler=sampler)``
(it yields lists of dataset indices and has ``__len__`` and ``set_epoch``). Soft labels only act
when clinically similar reports share a batch; random batches of a large corpus rarely hold any,
so each batch is a set of *anchors* topped up with neighbours of those anchors.

Per epoch, for every rank set (seed, world_size):

* every item is an anchor exactly once: a permutation seeded by ``(seed, epoch)`` is cut into
  ``T`` nearly equal chunks, ``T`` the smallest multiple of ``world_size`` with chunks of at most
  ``batch_size - floor(neighbor_share * batch_size)`` anchors; rank ``r`` takes batches
  ``r, r + world_size, ...``, so every rank has ``T / world_size`` batches;
* every batch has exactly ``batch_size`` distinct items: its anchors first, then at least
  ``floor(neighbor_share * batch_size)`` fill items, taken round-robin over the anchors from each
  anchor's ``neighbor_pool`` nearest neighbours in a random order (seeded by seed, epoch and
  batch), and, only when those run out, uniformly at random;
* the same seed and epoch give the same batches on any machine; another epoch, other batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


class ClinicalBatchSampler:
    """Yields lists of item indices; see the module docstring for the contract."""

    def __init__(
        self,
        indptr: np.ndarray,
        indices: np.ndarray,
        *,
        batch_size: int,
        neighbor_share: float = 0.5,
        neighbor_pool: int | None = 8,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        """Neighbours of item ``i`` are ``indices[indptr[i]:indptr[i + 1]]``, nearest first.

        Raises ValueError for a share outside [0, 1) that leaves no anchor slot, a batch larger
        than the corpus, a rank outside ``range(world_size)``, neighbour indices out of range, or a
        corpus too small for one anchor per batch on every rank.
        """
        self.indptr = np.asarray(indptr, np.int64)
        self.indices = np.asarray(indices, np.int64)
        self.n = len(self.indptr) - 1
        if (
            self.n < 1
            or self.indptr[0] != 0
            or self.indptr[-1] != len(self.indices)
            or np.any(np.diff(self.indptr) < 0)
        ):
            raise ValueError("indptr must start at 0, never decrease and end at len(indices)")
        if len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= self.n):
            raise ValueError("neighbour indices must lie in range(number of items)")
        if not 0.0 <= neighbor_share < 1.0:
            raise ValueError(f"neighbor_share must be in [0, 1), got {neighbor_share}")
        if not 1 <= batch_size <= self.n:
            raise ValueError(f"batch_size must be in [1, {self.n}] (the number of items), got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside range(world_size={world_size})")
        self.batch_size = batch_size
        self.n_fill = math.floor(neighbor_share * batch_size)
        self.max_anchors = batch_size - self.n_fill
        if self.max_anchors < 1:
            raise ValueError(f"neighbor_share={neighbor_share} leaves no anchor in a batch of {batch_size}")
        self.neighbor_pool = neighbor_pool
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.n_batches = math.ceil(math.ceil(self.n / self.max_anchors) / world_size) * world_size
        if self.n_batches > self.n:
            raise ValueError(
                f"{self.n} items cannot give each of {self.n_batches} batches an anchor; "
                "lower world_size or neighbor_share"
            )

    @classmethod
    def from_topk(
        cls,
        report_ids: Sequence[str] | pa.Array,
        topk: pa.Table | Mapping[str, Any],
        *,
        min_score: float | None = None,
        max_rank: int | None = None,
        **kwargs: Any,
    ) -> ClinicalBatchSampler:
        """A sampler over ``report_ids`` (item i is ``report_ids[i]``) from ``similarity_topk`` rows.

        Rows naming a report outside ``report_ids`` (another split, a filtered dataset) are
        dropped, as are rows under ``min_score`` or beyond ``max_rank``. ``kwargs`` go to the
        constructor. Raises ValueError for duplicate report ids.
        """
        ids = pa.array(report_ids, pa.string()) if not isinstance(report_ids, pa.Array) else report_ids
        if pc.count_distinct(ids).as_py() != len(ids):
            raise ValueError("report_ids must be unique")
        table = topk if isinstance(topk, pa.Table) else pa.table(topk)
        item = pc.index_in(table.column("report_id"), value_set=ids).to_numpy(zero_copy_only=False)
        neighbor = pc.index_in(table.column("neighbor_id"), value_set=ids).to_numpy(zero_copy_only=False)
        rank = table.column("rank").to_numpy()
        keep = ~(np.isnan(item.astype(np.float64)) | np.isnan(neighbor.astype(np.float64)))
        if min_score is not None:
            keep &= table.column("score").to_numpy(zero_copy_only=False) >= min_score
        if max_rank is not None:
            keep &= rank <= max_rank
        item, neighbor, rank = item[keep].astype(np.int64), neighbor[keep].astype(np.int64), rank[keep]
        order = np.lexsort((rank, item))
        indptr = np.zeros(len(ids) + 1, np.int64)
        np.cumsum(np.bincount(item, minlength=len(ids)), out=indptr[1:])
        return cls(indptr, neighbor[order], **kwargs)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose batches the next iteration yields (call it on every rank)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n_batches // self.world_size

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches():
            yield batch.tolist()

    def anchors(self) -> list[np.ndarray]:
        """The anchors of this rank's batches in the current epoch (for tests and logging)."""
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        chunks = np.array_split(order, self.n_batches)
        return chunks[self.rank :: self.world_size]

    def batches(self) -> Iterator[np.ndarray]:
        """This rank's batches of the current epoch as int64 arrays, anchors first."""
        for j, anchors in zip(range(self.rank, self.n_batches, self.world_size), self.anchors(), strict=True):
            rng = np.random.default_rng([self.seed, self.epoch, j])
            yield np.concatenate([anchors, self._fill(anchors, rng)])

    def _fill(self, anchors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``batch_size - len(anchors)`` distinct items outside ``anchors``, neighbours first."""
        need = self.batch_size - len(anchors)
        starts = self.indptr[anchors]
        counts = self.indptr[anchors + 1] - starts
        if self.neighbor_pool is not None:
            counts = np.minimum(counts, self.neighbor_pool)
        owner = np.repeat(np.arange(len(anchors)), counts)
        offset = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        candidates = self.indices[starts[owner] + offset]
        # A random order within each anchor's pool, then round-robin over anchors: every anchor
        # gets a neighbour before any gets a second.
        turn = np.empty(len(candidates), np.int64)
        shuffled = np.lexsort((rng.random(len(candidates)), owner))
        turn[shuffled] = offset
        candidates = candidates[np.lexsort((owner, turn))]
        _, first = np.unique(candidates, return_index=True)
        candidates = candidates[np.sort(first)]
        candidates = candidates[~np.isin(candidates, anchors)][:need]
        if len(candidates) < need:
            taken = np.zeros(self.n, bool)
            taken[anchors] = True
            taken[candidates] = True
            rest = np.flatnonzero(~taken)
            candidates = np.concatenate([candidates, rng.choice(rest, need - len(candidates), replace=False)])
        return candidates
