"""The index-level order of an epoch: which samples, in which batches, on which rank and worker.

Everything here is computed from ``_index.json`` and the ``group_id`` column alone (no image is
read), so a resumed run can jump straight to its position. Per epoch:

1. **Shards to ranks.** A permutation of the shards seeded by ``(seed, epoch)`` (index order when
   not shuffling), then a balanced assignment to ``world_size`` ranks by sample count: largest
   shard first (ties in permutation order) to the least-loaded rank (lowest rank on ties). Each
   rank keeps its shards in permutation order. Per-rank sample counts differ by at most about one
   shard. Ranks before workers, not flat ``(rank, worker)`` slots: a flat assignment can leave
   ranks ``num_workers`` shards apart, and rank balance is what DDP waits on.
2. **Shards to workers.** The same balanced assignment of a rank's shards to its DataLoader
   workers. A worker with no shard (fewer shards on a rank than workers) yields nothing; fewer
   shards than ranks is an error.
3. **Groups.** A worker reads its shards' neighbour groups (runs of equal ``group_id``) in order
   through a shuffle buffer of groups holding at least ``shuffle_buffer`` samples, seeded by
   ``(seed, epoch, rank, worker)``: when the buffer is full a random group leaves it; at the end
   the rest leave in random order. Groups never split in the buffer, so a batch keeps an anchor's
   clinical neighbours; the sample stream is cut into batches of ``batch_size``, which splits at
   most one group per batch boundary.
4. **Rotation.** DataLoader asks its workers for batches in turn (0, 1, ..., W-1, 0, ...) and a
   worker that runs out drops out of the turn, so the rank's stream is round k = 0, 1, ... of
   every worker that still has a k-th batch. ``EpochPlan.rotation`` is that order.

The remainder (``remainder=``):

* ``"keep"``: every sample exactly once per epoch over all ranks and workers. Each worker's last
  batch may be short (so a rank sees up to ``num_workers`` short batches, where the rotation puts
  them), and ranks may differ in batch count (``EpochPlan.batches_per_rank``). Eval, or one
  process; under DDP the trainer would deadlock on the steps one rank has and another lacks.
* ``"drop"``: training under DDP. Every batch is full and every rank yields exactly
  ``EpochPlan.steps`` batches, the smallest full-batch count over ranks. Not seen this epoch:
  each worker's short last batch and each rank's full batches beyond ``steps`` (``dropped``
  samples, at most about one shard plus ``world_size * num_workers * (batch_size - 1)``). Which
  samples these are changes with the epoch's permutation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Remainder = Literal["keep", "drop"]


def balanced_assignment(sizes: np.ndarray, order: np.ndarray, bins: int) -> list[list[int]]:
    """Items ``order`` (indices into ``sizes``) into ``bins`` with balanced totals.

    Largest first (stable in ``order``), each to the bin with the smallest total (lowest index on
    ties); every bin lists its items in ``order``'s order. Deterministic.
    """
    order = np.asarray(order, np.int64)
    by_size = order[np.argsort(-np.asarray(sizes)[order], kind="stable")]
    load = np.zeros(bins, np.int64)
    owner = np.empty(len(sizes), np.int64)
    for item in by_size:
        b = int(np.argmin(load))
        owner[item] = b
        load[b] += sizes[item]
    return [[int(i) for i in order if owner[i] == b] for b in range(bins)]


def rotation(counts: np.ndarray) -> np.ndarray:
    """(P, 2) rows (worker, k): DataLoader's order over workers yielding ``counts[w]`` batches."""
    counts = np.asarray(counts, np.int64)
    rounds = int(counts.max(initial=0))
    worker = np.tile(np.arange(len(counts)), rounds)
    k = np.repeat(np.arange(rounds), len(counts))
    keep = k < counts[worker]
    return np.stack([worker[keep], k[keep]], axis=1)


@dataclass(frozen=True)
class EpochPlan:
    """One epoch's layout over all ranks and workers (the same on every process)."""

    epoch: int
    batch_size: int
    remainder: Remainder
    shards: list[list[list[int]]]  # [rank][worker] -> shard numbers in read order
    worker_samples: np.ndarray  # (R, W) samples each worker reads
    worker_batches: np.ndarray  # (R, W) batches each worker yields (after the rank cap)
    steps: np.ndarray  # (R,) batches each rank yields
    _rotations: list[np.ndarray] = field(repr=False, default_factory=list)

    @property
    def world_size(self) -> int:
        return len(self.shards)

    @property
    def num_workers(self) -> int:
        return len(self.shards[0])

    @property
    def samples_per_rank(self) -> np.ndarray:
        """(R,) samples each rank's shards hold."""
        return self.worker_samples.sum(axis=1)

    @property
    def batches_per_rank(self) -> np.ndarray:
        """(R,) batches each rank yields this epoch (equal to ``steps``)."""
        return self.steps

    @property
    def min_steps(self) -> int:
        """The batch count every rank reaches: where a DDP trainer in ``keep`` mode must stop."""
        return int(self.steps.min())

    @property
    def dropped(self) -> int:
        """Samples of the split not yielded this epoch (0 in ``keep`` mode)."""
        return int(self.worker_samples.sum() - sum(self.batch_sizes(r).sum() for r in range(self.world_size)))

    def rotation(self, rank: int) -> np.ndarray:
        """(steps[rank], 2) rows (worker, k): the rank's batches in the order DataLoader yields them."""
        return self._rotations[rank]

    def batch_sizes(self, rank: int) -> np.ndarray:
        """(steps[rank],) sizes of the rank's batches in rotation order."""
        rot = self.rotation(rank)
        n = self.worker_samples[rank][rot[:, 0]]
        return np.minimum(self.batch_size, n - rot[:, 1] * self.batch_size)

    def samples_before(self, rank: int) -> np.ndarray:
        """(steps[rank] + 1,) samples the rank has yielded before each batch (and at the end)."""
        return np.concatenate([[0], np.cumsum(self.batch_sizes(rank))])


def make_plan(
    shard_samples: np.ndarray,
    *,
    epoch: int,
    seed: int,
    world_size: int,
    num_workers: int,
    batch_size: int,
    shuffle: bool,
    remainder: Remainder,
) -> EpochPlan:
    """The epoch's layout (module docstring, steps 1, 2 and 4). Raises ValueError when there are
    fewer shards than ranks (naming the fix) or for a bad setting."""
    if remainder not in ("keep", "drop"):
        raise ValueError(f"remainder must be 'keep' or 'drop', got {remainder!r}")
    if batch_size < 1 or world_size < 1 or num_workers < 1:
        raise ValueError("batch_size, world_size and num_workers must be at least 1")
    sizes = np.asarray(shard_samples, np.int64)
    if len(sizes) < world_size:
        raise ValueError(
            f"{len(sizes)} shards cannot give each of {world_size} ranks one: rebuild the shards with "
            "more, smaller parts (stages.shards.shard_size) or train on fewer ranks"
        )
    order = np.random.default_rng([seed, epoch]).permutation(len(sizes)) if shuffle else np.arange(len(sizes))
    shards = [
        [
            [rank_shards[i] for i in w]
            for w in balanced_assignment(sizes[rank_shards], np.arange(len(rank_shards)), num_workers)
        ]
        for rank_shards in balanced_assignment(sizes, order, world_size)
    ]
    worker_samples = np.array([[int(sizes[w].sum()) for w in rank] for rank in shards], np.int64)
    natural = -(-worker_samples // batch_size) if remainder == "keep" else worker_samples // batch_size
    full = [rotation(c) for c in natural]
    steps = np.array([len(r) for r in full], np.int64)
    if remainder == "drop":
        steps[:] = steps.min()
    rotations = [r[:s] for r, s in zip(full, steps, strict=True)]
    worker_batches = np.array(
        [np.bincount(r[:, 0], minlength=num_workers) for r in rotations], np.int64
    ).reshape(world_size, num_workers)
    return EpochPlan(epoch, batch_size, remainder, shards, worker_samples, worker_batches, steps, rotations)


def shuffle_groups(group_sizes: np.ndarray, *, buffer: int, rng: np.random.Generator | None) -> np.ndarray:
    """The order in which a worker's groups (sizes in read order) leave the shuffle buffer.

    ``rng=None`` or ``buffer <= 0``: read order. Otherwise a group enters, and while the buffer
    holds at least ``buffer`` samples a uniformly chosen group leaves; the rest leave in a random
    order at the end.
    """
    n = len(group_sizes)
    if rng is None or buffer <= 0 or n == 0:
        return np.arange(n)
    sizes = np.asarray(group_sizes, np.int64)
    draws = rng.random(n)  # one draw per departure in the streaming phase
    pool: list[int] = []
    held = 0
    out = np.empty(n, np.int64)
    j = 0
    for g in range(n):
        pool.append(g)
        held += int(sizes[g])
        while held >= buffer and len(pool) > 1:
            i = int(draws[j] * len(pool))
            pool[i], pool[-1] = pool[-1], pool[i]
            out[j] = pool.pop()
            held -= int(sizes[out[j]])
            j += 1
    out[j:] = np.asarray(pool, np.int64)[rng.permutation(len(pool))]
    return out


def group_runs(group_ids: np.ndarray) -> np.ndarray:
    """Sizes of the runs of equal ids, in order (the neighbour groups of one shard)."""
    ids = np.asarray(group_ids)
    if len(ids) == 0:
        return np.zeros(0, np.int64)
    starts = np.flatnonzero(np.concatenate([[True], ids[1:] != ids[:-1]]))
    return np.diff(np.concatenate([starts, [len(ids)]])).astype(np.int64)


def worker_order(
    shard_offsets: np.ndarray,
    shard_groups: list[np.ndarray],
    *,
    buffer: int,
    rng: np.random.Generator | None,
) -> np.ndarray:
    """The worker's samples (indices in the split) in stream order, before cutting into batches.

    ``shard_offsets[i]`` is the split index of shard i's first row; ``shard_groups[i]`` its group
    sizes in row order (the worker's shards, in read order).
    """
    if not shard_groups:
        return np.zeros(0, np.int64)
    sizes = np.concatenate(shard_groups)
    starts = np.concatenate(
        [
            off + np.concatenate([[0], np.cumsum(g)[:-1]])
            for off, g in zip(shard_offsets, shard_groups, strict=True)
        ]
    ).astype(np.int64)
    order = shuffle_groups(sizes, buffer=buffer, rng=rng)
    s, n = starts[order], sizes[order]
    total = int(n.sum())
    # Expand each (start, size) run into consecutive indices without a Python loop.
    within = np.arange(total) - np.repeat(np.cumsum(n) - n, n)
    return np.repeat(s, n) + within


def batches_of(samples: np.ndarray, batch_size: int, count: int) -> list[np.ndarray]:
    """The first ``count`` batches of ``batch_size`` cut from ``samples`` (the last may be short)."""
    return [samples[k * batch_size : (k + 1) * batch_size] for k in range(count)]
