"""Run under ``torchrun --nproc_per_node=2``: one DDP training step on each rank's half of a batch,
compared on rank 0 with one process on the whole batch (same model, same weights).

Usage: ``torchrun --standalone --nproc_per_node=2 tests/ddp_check.py SHARDS TOKENIZER OUT.json PRESET LOCALS``,
LOCALS the ``loss.local_loss`` settings to check, comma-separated (``0,1``: both, one after the other
in the same process group, each from fresh models). Writes {LOCAL: {"ddp_loss", "single_loss",
"max_grad_diff", "max_grad", "params", "n_params", "negatives", "local_loss"}} to OUT.json (rank 0).
BatchNorm runs on running statistics and dropout is off, the two things that make a per-rank
forward differ from a whole-batch one by design.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

from pipeline.train import loss as train_loss
from pipeline.train.augment import AugmentConfig
from pipeline.train.config import TrainConfig, apply_overrides, resolve
from pipeline.train.data import ReaderConfig, ShardDataset, TokenizingCollate
from pipeline.train.dist import Dist, setup, teardown
from pipeline.train.model import CLIPModel, build_text_tower


def config(preset: str, local: bool) -> TrainConfig:
    c = apply_overrides(
        TrainConfig(),
        [
            f"preset={preset}",
            "model.text.path=tiny",
            "model.text.tiny_hidden=32",
            "model.text.dropout=0",
            "model.image.arch=resnet18",
            "model.image.width=8",
            "model.image.freeze_bn=true",
            "model.embed_dim=16",
            "model.graph.hidden=16",
            "model.graph.concept_dim=8",
            f"loss.local_loss={str(local).lower()}",
        ],
    )
    return resolve(c)


def batch_of(folder: str, tokenizer, size: int) -> dict:
    reader = ReaderConfig(batch_size=size, shuffle=False, augment=AugmentConfig(resolution=32, train=False))
    ds = ShardDataset(folder, reader, rank=0, world_size=1)
    return TokenizingCollate(tokenizer)(next(iter(ds)))


def rows(batch: dict, keep: slice) -> dict:
    """The samples ``keep`` of a collated batch, graph and negatives re-indexed."""
    idx = torch.arange(len(batch["text"]))[keep]
    lo, hi = int(idx[0]), int(idx[-1]) + 1
    ptr = batch["node_ptr"]
    n0, n1 = int(ptr[lo]), int(ptr[hi])
    edges = batch["edge_index"]
    in_edges = (edges[0] >= n0) & (edges[0] < n1)
    neg = (batch["negated_owner"] >= lo) & (batch["negated_owner"] < hi)
    out = {
        "image": batch["image"][lo:hi],
        "input_ids": batch["input_ids"][lo:hi],
        "attention_mask": batch["attention_mask"][lo:hi],
        "negated_input_ids": batch["negated_input_ids"][neg],
        "negated_attention_mask": batch["negated_attention_mask"][neg],
        "negated_owner": batch["negated_owner"][neg] - lo,
        "clinical_vector": batch["clinical_vector"][lo:hi],
        "graph_embedding": batch["graph_embedding"][lo:hi],
        "positions": batch["positions"][lo:hi],
        "node_concept_ids": batch["node_concept_ids"][n0:n1],
        "node_label_ids": batch["node_label_ids"][n0:n1],
        "node_batch": batch["node_batch"][n0:n1] - lo,
        "node_ptr": ptr[lo : hi + 1] - n0,
        "edge_index": edges[:, in_edges] - n0,
        "edge_types": batch["edge_types"][in_edges],
    }
    # Padding columns of the tokenised negatives beyond this half's longest are harmless.
    return out


def check(shards: str, tokenizer_dir: str, preset: str, local: bool, dist: Dist) -> dict | None:
    """One DDP step against one process on the whole batch; the figures on rank 0, else None."""
    c = config(preset, local)
    text, tokenizer = build_text_tower(c.model.text, tokenizer_dir=Path(tokenizer_dir), texts=None)
    torch.manual_seed(0)
    model = CLIPModel(c.model, text=text, concepts=64, channels=3)
    for name, p in model.named_parameters():
        if ".pooler." in name:
            p.requires_grad_(False)
    reference = CLIPModel(
        c.model,
        text=build_text_tower(c.model.text, tokenizer_dir=Path(tokenizer_dir), texts=None)[0],
        concepts=64,
        channels=3,
    )
    reference.load_state_dict(model.state_dict())
    full = batch_of(shards, tokenizer, 8)
    half = rows(full, slice(4 * dist.rank, 4 * dist.rank + 4))
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    ddp.train()
    result = train_loss.compute(ddp(half, graph=True), half, c.loss, dist)
    result.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    if dist.rank != 0:
        return None
    reference.train()
    single = train_loss.compute(reference(full, graph=True), full, replace(c.loss), Dist())
    single.loss.backward()
    ref = {n: p.grad for n, p in reference.named_parameters() if p.grad is not None}
    diff = max(float((grads[n] - ref[n]).abs().max()) for n in ref)
    scale = max(float(ref[n].abs().max()) for n in ref)
    return {
        "ddp_loss": result.terms["loss"],
        "single_loss": single.terms["loss"],
        "max_grad_diff": diff,
        "max_grad": scale,
        "params": sorted(ref) == sorted(grads),
        "n_params": len(ref),
        "negatives": result.negatives,
        "local_loss": c.loss.local_loss,
    }


def main() -> None:
    shards, tokenizer_dir, out_path, preset, locals_ = sys.argv[1:6]
    dist = setup("cpu")
    results = {}
    for local in locals_.split(","):
        results[local] = check(shards, tokenizer_dir, preset, local == "1", dist)
    if dist.rank == 0:
        Path(out_path).write_text(json.dumps(results))
    teardown(dist)


if __name__ == "__main__":
    main()
