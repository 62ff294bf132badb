"""The clinically aware batch sampler: coverage, neighbour share, epochs, seeds, ranks."""

from __future__ import annotations

import math

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.similarity.sampler import ClinicalBatchSampler


def ring_topk(n: int, k: int) -> pa.Table:
    """similarity_topk where report i's neighbours are i+1, i+2, ... (mod n)."""
    rows = [(f"r{i:04d}", f"r{(i + j) % n:04d}", j, 1.0 - j / 100) for i in range(n) for j in range(1, k + 1)]
    return pa.table(
        {
            "report_id": [r[0] for r in rows],
            "neighbor_id": [r[1] for r in rows],
            "rank": pa.array([r[2] for r in rows], pa.int16()),
            "score": pa.array([r[3] for r in rows], pa.float32()),
        }
    )


def make(n: int = 100, k: int = 6, **kwargs) -> ClinicalBatchSampler:
    ids = [f"r{i:04d}" for i in range(n)]
    return ClinicalBatchSampler.from_topk(ids, ring_topk(n, k), **kwargs)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(20, 150),
    batch_size=st.integers(2, 20),
    share=st.sampled_from([0.0, 0.25, 0.5, 0.75]),
    world_size=st.integers(1, 4),
    epoch=st.integers(0, 5),
)
def test_every_report_is_an_anchor_once_per_epoch_across_ranks(n, batch_size, share, world_size, epoch):
    max_anchors = batch_size - int(share * batch_size)
    if math.ceil(math.ceil(n / max_anchors) / world_size) * world_size > n:
        # one anchor per batch and a corpus that does not split evenly over the ranks
        with pytest.raises(ValueError, match="anchor"):
            make(n, batch_size=batch_size, neighbor_share=share, world_size=world_size)
        return
    samplers = [
        make(n, batch_size=batch_size, neighbor_share=share, rank=r, world_size=world_size)
        for r in range(world_size)
    ]
    anchors = []
    for sampler in samplers:
        sampler.set_epoch(epoch)
        batches = list(sampler.batches())
        assert len(batches) == len(sampler) == len(samplers[0])  # equal batch counts per rank
        for batch, mine in zip(batches, sampler.anchors(), strict=True):
            assert len(batch) == batch_size and len(set(batch.tolist())) == batch_size
            assert batch[: len(mine)].tolist() == mine.tolist()  # anchors first
            assert batch_size - len(mine) >= int(share * batch_size)  # the neighbour share
        anchors.extend(a for m in sampler.anchors() for a in m.tolist())
    assert sorted(anchors) == list(range(n))


def test_fill_comes_from_the_anchors_neighbours():
    sampler = make(200, 8, batch_size=16, neighbor_share=0.5, neighbor_pool=4)
    neighbours = {i: {(i + j) % 200 for j in range(1, 5)} for i in range(200)}
    for batch, anchors in zip(sampler.batches(), sampler.anchors(), strict=True):
        fill = batch[len(anchors) :]
        assert len(fill) == 8
        pool = set().union(*(neighbours[a] for a in anchors.tolist())) - set(anchors.tolist())
        assert set(fill.tolist()) <= pool or len(pool) < 8


def test_round_robin_gives_each_anchor_a_neighbour_first():
    sampler = make(400, 8, batch_size=20, neighbor_share=0.5, neighbor_pool=8)
    batch, anchors = next(iter(sampler.batches())), sampler.anchors()[0]
    fill = set(batch[len(anchors) :].tolist())
    assert sum(any((a + j) % 400 in fill for j in range(1, 9)) for a in anchors.tolist()) == len(anchors)


def test_same_seed_same_batches_other_epoch_or_seed_other_batches():
    a, b = make(seed=7, batch_size=10), make(seed=7, batch_size=10)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    a.set_epoch(0)
    assert list(a) == first
    assert list(make(seed=8, batch_size=10)) != first


def test_runs_out_of_neighbours_and_fills_at_random():
    sampler = make(50, 1, batch_size=20, neighbor_share=0.75)
    for batch in sampler.batches():
        assert len(set(batch.tolist())) == 20


def test_neighbours_outside_the_dataset_and_filters_are_dropped():
    ids = [f"r{i:04d}" for i in range(0, 100, 2)]  # half the reports (a split)
    sampler = ClinicalBatchSampler.from_topk(ids, ring_topk(100, 6), batch_size=10, min_score=0.975)
    neighbours = [sampler.indices[sampler.indptr[i] : sampler.indptr[i + 1]].tolist() for i in range(3)]
    assert neighbours == [[1], [2], [3]]  # r0002 (rank 2, 0.98) survives; r0004 (0.96) does not


def test_dataloader_batch_sampler():
    torch = pytest.importorskip("torch")
    sampler = make(60, 4, batch_size=12, rank=1, world_size=2)
    data = torch.arange(60)
    loader = torch.utils.data.DataLoader(data, batch_sampler=sampler)
    batches = [b.tolist() for b in loader]
    assert len(batches) == len(sampler) and all(len(b) == 12 for b in batches)


def test_invalid_settings():
    with pytest.raises(ValueError, match="batch_size"):
        make(10, batch_size=11)
    with pytest.raises(ValueError, match="neighbor_share"):
        make(neighbor_share=1.0, batch_size=4)
    with pytest.raises(ValueError, match="rank"):
        make(batch_size=4, rank=2, world_size=2)
    with pytest.raises(ValueError, match="anchor"):
        make(10, batch_size=2, neighbor_share=0.5, world_size=16)
    with pytest.raises(ValueError, match="unique"):
        ClinicalBatchSampler.from_topk(["a", "a"], ring_topk(2, 1), batch_size=1)
