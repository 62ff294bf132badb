"""The training loss: soft-label CLIP with negation hard negatives, plus graph alignment.

Per global batch of B samples (gathered across ranks with gradients; sample positions, clinical
vectors and graph embeddings gathered beside the features so every row lines up)::

    Y        = soft_targets(S_text(detached T), S_clinical, S_graph)           (B x B)
    L_i2t    = softCE(s * I @ [T; N]^T, [Y, 0])      N: the M negated reports (B x (B + M))
    L_t2i    = softCE(s * T @ I^T, Y)                 real texts only
    L_graph  = CLIP(s * G @ I^T)  [+ CLIP(s * G @ T^T)] / 2
    loss     = (L_i2t + L_t2i) / 2 + lambda_g * L_graph

With every soft weight 0, ``Y`` is the identity and the first term is exactly the CLIP loss;
without negatives ``N`` is empty. ``local_loss`` computes the rows of this rank only against the
global columns (open_clip's memory saver); its gradient is the same, its logged value is the
mean over ranks. Logits and targets are float32 whatever the autocast dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.similarity.soft import (
    SoftLabelConfig,
    clip_loss,
    cosine_similarity,
    soft_cross_entropy,
    soft_targets,
)
from pipeline.train.config import LossConfig
from pipeline.train.dist import Dist, gather_rows


def soft_config(loss: LossConfig) -> SoftLabelConfig:
    """The soft-label weights of a resolved ``LossConfig``."""
    return SoftLabelConfig(
        text_weight=float(loss.text_weight or 0.0),
        clinical_weight=float(loss.clinical_weight or 0.0),
        graph_weight=float(loss.graph_weight or 0.0),
        temperature=loss.soft_temperature,
        identity_mix=loss.identity_mix,
    )


@dataclass
class LossOutput:
    loss: torch.Tensor  # what backward() runs on (this rank's share with local_loss)
    terms: dict[str, float]  # logged values, identical on every rank
    batch_size: int  # global B
    negatives: int  # global M
    positions: torch.Tensor  # (B,) split positions of the global batch's rows, in row order


def uses_graph(loss: LossConfig) -> bool:
    return bool(loss.lambda_g)


def compute(
    out: dict[str, torch.Tensor | None],
    batch: dict[str, object],
    config: LossConfig,
    dist: Dist,
) -> LossOutput:
    """The loss of one micro-batch. ``out`` is ``CLIPModel.forward``'s dict (local rows);
    ``batch`` the reader's batch (clinical_vector, graph_embedding, positions on ``out``'s device).
    """
    soft = soft_config(config)
    grad = config.gather_with_grad
    image, text = out["image"].float(), out["text"].float()
    scale = out["logit_scale"].float()
    all_image, offset = gather_rows(image, dist, grad=grad)
    all_text, _ = gather_rows(text, dist, grad=grad)
    positions, _ = gather_rows(batch["positions"], dist, grad=False)
    n_global = all_image.shape[0]
    rows = slice(offset, offset + image.shape[0]) if config.local_loss else slice(0, n_global)

    clinical = graph_emb = text_sim = None
    if soft.clinical_weight > 0:
        clinical = cosine_similarity(gather_rows(batch["clinical_vector"].float(), dist, grad=False)[0])
    if soft.graph_weight > 0:
        graph_emb = cosine_similarity(gather_rows(batch["graph_embedding"].float(), dist, grad=False)[0])
    if soft.text_weight > 0:
        text_sim = cosine_similarity(all_text.detach())  # the dynamic part: current embeddings
    if soft.off:  # exactly the CLIP target
        targets = torch.eye(n_global, device=image.device)[rows]
    else:
        targets = soft_targets(text_sim, clinical, graph_emb, config=soft)[rows]

    columns = all_text
    negatives = 0
    if config.negatives:
        negated, _ = gather_rows(out["negated"].float(), dist, grad=grad)
        negatives = negated.shape[0]
        if negatives:
            columns = torch.cat([all_text, negated])
    my_image, my_text = all_image[rows], all_text[rows]
    loss_i2t = soft_cross_entropy(scale * my_image @ columns.T, targets)
    loss_t2i = soft_cross_entropy(scale * my_text @ all_image.T, targets)
    loss = (loss_i2t + loss_t2i) / 2
    terms = {"loss_i2t": loss_i2t, "loss_t2i": loss_t2i}

    if config.lambda_g:
        graph = out["graph"]
        if graph is None:
            raise ValueError("loss.lambda_g > 0 but the model's forward skipped the graph encoder")
        all_graph, _ = gather_rows(graph.float(), dist, grad=grad)
        my_graph = all_graph[rows]
        parts = [_hard_clip(scale * my_graph @ all_image.T, scale * my_image @ all_graph.T, rows)]
        terms["loss_graph_image"] = parts[0]
        if config.graph_text:
            parts.append(_hard_clip(scale * my_graph @ all_text.T, scale * my_text @ all_graph.T, rows))
            terms["loss_graph_text"] = parts[1]
        loss = loss + config.lambda_g * (sum(parts) / len(parts))
    terms["loss"] = loss
    logged = {k: v.detach() for k, v in terms.items()}
    if config.local_loss and dist.enabled:  # each rank holds its own rows' value: average
        stacked = torch.stack(list(logged.values()))
        torch.distributed.all_reduce(stacked)
        logged = dict(zip(logged, (stacked / dist.world_size).unbind(), strict=True))
    return LossOutput(
        loss=loss,
        terms={k: float(v) for k, v in logged.items()},
        batch_size=n_global,
        negatives=negatives,
        positions=positions,
    )


def _hard_clip(a_to_b: torch.Tensor, b_to_a: torch.Tensor, rows: slice) -> torch.Tensor:
    """CLIP loss of rows ``rows`` of a square global problem (targets: the diagonal)."""
    if rows.start == 0 and rows.stop == a_to_b.shape[1]:
        return clip_loss(a_to_b, b_to_a)
    target = torch.arange(rows.start, rows.stop, device=a_to_b.device)
    ce = torch.nn.functional.cross_entropy
    return (ce(a_to_b, target) + ce(b_to_a, target)) / 2
