"""torch.distributed plumbing: process-group setup from torchrun's environment, and gathers.

``gather_rows`` is the all-gather the loss is built on: it takes tensors whose first dimension
differs across ranks (a batch that lost an undecodable sample, a rank with more negated reports),
and, with ``grad=True``, carries gradients back to the rank that owns each row. Its backward is an
all-reduce (sum) of the gathered gradient followed by this rank's slice, which works on every
backend (gloo has no reduce-scatter). When every rank computes the same loss on the gathered
batch, each rank's features receive ``world_size`` times their share and DDP's gradient average
divides it out again: the parameter gradients equal those of one process on the whole batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as tdist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: str = "auto") -> Dist:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*), or a
    single process. NCCL on CUDA, gloo on CPU. Raises RuntimeError for device=cuda without CUDA."""
    cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but torch sees no CUDA device; use device=cpu or auto")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if world > 1 and not tdist.is_initialized():
        tdist.init_process_group(
            backend="nccl" if cuda else "gloo", timeout=timedelta(minutes=30), device_id=dev if cuda else None
        )
    return Dist(rank, world, local, dev)


def teardown(dist: Dist) -> None:
    if dist.enabled and tdist.is_initialized():
        tdist.destroy_process_group()


def barrier(dist: Dist) -> None:
    if dist.enabled:
        tdist.barrier()


def gather_objects(obj: Any, dist: Dist) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not dist.enabled:
        return [obj]
    out: list[Any] = [None] * dist.world_size
    tdist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, dist: Dist) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not dist.enabled:
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(t: torch.Tensor, dist: Dist) -> torch.Tensor:
    if dist.enabled:
        t = t.clone()
        tdist.all_reduce(t)
    return t


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, sizes: list[int], rank: int) -> torch.Tensor:  # type: ignore[override]
        width = max(sizes)
        padded = x.new_zeros((width, *x.shape[1:]))
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in sizes]
        tdist.all_gather(parts, padded.contiguous())
        ctx.sizes, ctx.rank = sizes, rank
        return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        grad = grad.contiguous().clone()
        tdist.all_reduce(grad)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None, None


def gather_rows(x: torch.Tensor, dist: Dist, *, grad: bool = True) -> tuple[torch.Tensor, int]:
    """Concatenate every rank's ``x`` along dim 0 in rank order; returns (gathered, offset of this
    rank's rows). ``grad=False``: no gradient flows to other ranks' copies, but this rank's own
    rows stay attached to its graph (open_clip's ``gather_with_grad=False``)."""
    if not dist.enabled:
        return x, 0
    n = torch.tensor([x.shape[0]], device=x.device, dtype=torch.int64)
    counts = [torch.zeros_like(n) for _ in range(dist.world_size)]
    tdist.all_gather(counts, n)
    sizes = [int(c.item()) for c in counts]
    offset = sum(sizes[: dist.rank])
    if grad and torch.is_grad_enabled():
        # Every rank must run the backward all-reduce, also one whose rows need no gradient
        # (no negated report in its batch): a leaf of its own makes autograd call it.
        leaf = x if x.requires_grad else x.detach().requires_grad_()
        return _GatherRows.apply(leaf, sizes, dist.rank), offset
    with torch.no_grad():
        full = _GatherRows.apply(x.detach(), sizes, dist.rank)
    if x.requires_grad:  # keep the local rows differentiable
        full = torch.cat([full[:offset], x, full[offset + x.shape[0] :]])
    return full, offset
