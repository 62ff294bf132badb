"""Per-batch soft labels: similarity matrices, soft targets and the soft CLIP loss.

Every function takes numpy arrays or torch tensors (on any device) and returns the same kind.
torch is imported only when a tensor is passed, so this module costs nothing to the CPU stages;
only the training stage depends on torch. numpy computes in float64; torch keeps float64 and
computes everything else in float32 (bf16/fp16 inputs under autocast are upcast), on the input's
device, without autograd for targets (:func:`soft_targets` returns a detached tensor: a target the
model could move would let it collapse the text embeddings to satisfy itself).

The soft target of a batch (Ko & Park, CVPR 2025: clinically-enhanced dynamic soft labels)::

    S = w_text * S_text + w_clinical * S_clinical + w_graph * S_graph      (B x B, symmetric)
    T = identity_mix * I + (1 - identity_mix) * row_softmax(S / temperature)

``S_text`` comes from the caller (the training stage's current text embeddings: the dynamic
part); ``S_clinical`` and ``S_graph`` are cosine similarities of clinical vectors and graph
embeddings. ``T`` is used in both directions: row i is image i's target over the batch's texts
and text i's target over its images. With every weight zero ``T`` is exactly the identity (the
ordinary CLIP target), and :func:`soft_clip_loss` with identity targets is exactly
:func:`clip_loss`. The paper does not publish its weights; the defaults of
:class:`SoftLabelConfig` are ours.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

Matrix = Any  # numpy.ndarray or torch.Tensor


@dataclass(frozen=True)
class SoftLabelConfig:
    """Weights of the similarity sources, softmax temperature and the identity share of targets."""

    text_weight: float = 0.5  # the dynamic part: similarity of the current text embeddings
    clinical_weight: float = 0.5  # cosine of clinical vectors (labels and fine findings)
    graph_weight: float = 0.0  # cosine of report-graph embeddings (0 until the graph stage lands)
    temperature: float = 0.1  # softmax temperature over the combined similarity (cosines: [-1, 1])
    identity_mix: float = 0.5  # share of each row kept on the matched pair

    def check(self) -> None:
        """Raise ValueError for negative or non-finite weights, temperature <= 0, mix outside [0, 1]."""
        weights = (self.text_weight, self.clinical_weight, self.graph_weight)
        if any(not math.isfinite(w) or w < 0 for w in weights):
            raise ValueError(f"soft-label weights must be finite and >= 0, got {weights}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.identity_mix <= 1.0:
            raise ValueError(f"identity_mix must be in [0, 1], got {self.identity_mix}")

    @property
    def off(self) -> bool:
        """True when no similarity source is weighted: targets are the identity."""
        return self.text_weight == 0 and self.clinical_weight == 0 and self.graph_weight == 0


# -- backends ------------------------------------------------------------------------------------


def _is_torch(x: Any) -> bool:
    torch = sys.modules.get("torch")  # a tensor exists only if torch is already imported
    return torch is not None and isinstance(x, torch.Tensor)


def _backend(*xs: Any) -> _Numpy | _Torch:
    """The backend of the given matrices (``None`` entries ignored). Raises TypeError when mixed."""
    kinds = {_is_torch(x) for x in xs if x is not None}
    if len(kinds) > 1:
        raise TypeError("mix of numpy arrays and torch tensors; pass one kind")
    return _Torch() if kinds == {True} else _Numpy()


class _Numpy:
    def float(self, x: Any) -> np.ndarray:
        return np.asarray(x, dtype=np.float64)

    def eye(self, n: int, like: Any) -> np.ndarray:
        return np.eye(n, dtype=np.float64)

    def matmul_t(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a @ b.T

    def t(self, x: np.ndarray) -> np.ndarray:
        return x.T

    def row_norm(self, x: np.ndarray) -> np.ndarray:
        return np.sqrt(np.sum(x * x, axis=1, keepdims=True))

    def where_positive(self, norm: np.ndarray) -> np.ndarray:
        return np.where(norm > 0, norm, 1.0)

    def log_softmax(self, x: np.ndarray) -> np.ndarray:
        shifted = x - np.max(x, axis=1, keepdims=True)
        return shifted - np.log(np.sum(np.exp(shifted), axis=1, keepdims=True))

    def softmax(self, x: np.ndarray) -> np.ndarray:
        e = np.exp(x - np.max(x, axis=1, keepdims=True))
        return e / np.sum(e, axis=1, keepdims=True)

    def row_sum(self, x: np.ndarray) -> np.ndarray:
        return np.sum(x, axis=1)

    def mean(self, x: np.ndarray) -> Any:
        return np.mean(x)

    def pad_columns(self, x: np.ndarray, n: int) -> np.ndarray:
        return np.concatenate([x, np.zeros((x.shape[0], n), x.dtype)], axis=1) if n else x

    def diagonal_log_prob(self, logits: np.ndarray) -> np.ndarray:
        n = logits.shape[0]
        return self.log_softmax(self.float(logits))[np.arange(n), np.arange(n)]


class _Torch:
    def __init__(self) -> None:
        import torch  # deferred: only the training stage depends on torch

        self.torch = torch

    def float(self, x: Any) -> Any:
        return x if x.dtype in (self.torch.float32, self.torch.float64) else x.float()

    def eye(self, n: int, like: Any) -> Any:
        dtype = like.dtype if like.dtype in (self.torch.float32, self.torch.float64) else self.torch.float32
        return self.torch.eye(n, dtype=dtype, device=like.device)

    def matmul_t(self, a: Any, b: Any) -> Any:
        return a @ b.T

    def t(self, x: Any) -> Any:
        return x.T

    def row_norm(self, x: Any) -> Any:
        return self.torch.sqrt(self.torch.sum(x * x, dim=1, keepdim=True))

    def where_positive(self, norm: Any) -> Any:
        return self.torch.where(norm > 0, norm, self.torch.ones_like(norm))

    def log_softmax(self, x: Any) -> Any:
        return self.torch.log_softmax(x, dim=1)

    def softmax(self, x: Any) -> Any:
        return self.torch.softmax(x, dim=1)

    def row_sum(self, x: Any) -> Any:
        return self.torch.sum(x, dim=1)

    def mean(self, x: Any) -> Any:
        return self.torch.mean(x)

    def pad_columns(self, x: Any, n: int) -> Any:
        return self.torch.nn.functional.pad(x, (0, n)) if n else x

    def diagonal_log_prob(self, logits: Any) -> Any:
        return self.log_softmax(self.float(logits)).diagonal()


# -- similarities --------------------------------------------------------------------------------


def cosine_similarity(x: Matrix) -> Matrix:
    """``(B, B)`` cosine similarity of the rows of ``x`` (B, d): exactly symmetric, 0 for zero rows.

    Raises ValueError unless ``x`` is 2-D.
    """
    ops = _backend(x)
    x = ops.float(x)
    if x.ndim != 2:
        raise ValueError(f"expected a (batch, dim) matrix, got shape {tuple(x.shape)}")
    unit = x / ops.where_positive(ops.row_norm(x))
    s = ops.matmul_t(unit, unit)
    return (s + ops.t(s)) / 2  # a matmul is not bitwise symmetric; this is


def clinical_similarity(vectors: Matrix) -> Matrix:
    """Cosine similarity of a batch's clinical vectors (rows of ``clinical_vectors.vector``)."""
    return cosine_similarity(vectors)


def graph_similarity(embeddings: Matrix) -> Matrix:
    """Cosine similarity of a batch's report-graph embeddings (rows of ``graph_embeddings.vector``)."""
    return cosine_similarity(embeddings)


def combined_similarity(
    text: Matrix | None = None,
    clinical: Matrix | None = None,
    graph: Matrix | None = None,
    *,
    config: SoftLabelConfig = SoftLabelConfig(),  # noqa: B008 - frozen, safe to share
) -> Matrix:
    """``w_text * text + w_clinical * clinical + w_graph * graph`` over the weighted sources.

    A source with weight 0 may be None and is never read. Raises ValueError when a weighted source
    is missing, matrices are not square or disagree in size, or every weight is 0.
    """
    config.check()
    pairs = [
        (config.text_weight, text, "text"),
        (config.clinical_weight, clinical, "clinical"),
        (config.graph_weight, graph, "graph"),
    ]
    used = [(w, s, name) for w, s, name in pairs if w > 0]
    if not used:
        raise ValueError("every soft-label weight is 0: there is no similarity to combine")
    missing = [name for _w, s, name in used if s is None]
    if missing:
        raise ValueError(f"{missing} similarity has a weight but was not passed")
    ops = _backend(*(s for _w, s, _n in used))
    total = None
    for w, s, name in used:
        s = ops.float(s)
        if s.ndim != 2 or s.shape[0] != s.shape[1]:
            raise ValueError(f"{name} similarity must be square, got shape {tuple(s.shape)}")
        if total is not None and s.shape != total.shape:
            raise ValueError(f"{name} similarity is {tuple(s.shape)}, others {tuple(total.shape)}")
        total = w * s if total is None else total + w * s
    return total


def soft_targets(
    text: Matrix | None = None,
    clinical: Matrix | None = None,
    graph: Matrix | None = None,
    *,
    config: SoftLabelConfig = SoftLabelConfig(),  # noqa: B008 - frozen, safe to share
    size: int | None = None,
) -> Matrix:
    """The ``(B, B)`` soft-target matrix: rows are probability distributions (non-negative, sum 1).

    With every weight 0 returns exactly the identity (of ``size`` or of the first matrix passed).
    Torch tensors come back detached, on the input's device. Raises ValueError as
    :func:`combined_similarity`, or when the identity's size is unknown.
    """
    config.check()
    given = [m for m in (text, clinical, graph) if m is not None]
    ops = _backend(*given)
    if config.off:
        if size is None and not given:
            raise ValueError("every weight is 0 and no matrix was passed: give size=")
        n = size if size is not None else given[0].shape[0]
        return ops.eye(n, ops.float(given[0]) if given else None)
    if isinstance(ops, _Torch):
        with ops.torch.no_grad():
            return _soft_targets(ops, text, clinical, graph, config).detach()
    return _soft_targets(ops, text, clinical, graph, config)


def _soft_targets(ops: Any, text: Any, clinical: Any, graph: Any, config: SoftLabelConfig) -> Any:
    s = combined_similarity(text, clinical, graph, config=config)
    p = ops.softmax(s / config.temperature)
    if config.identity_mix == 0:
        return p
    return config.identity_mix * ops.eye(s.shape[0], s) + (1.0 - config.identity_mix) * p


# -- losses --------------------------------------------------------------------------------------


def soft_cross_entropy(logits: Matrix, targets: Matrix) -> Matrix:
    """Mean over rows of ``-sum_j targets[i, j] * log_softmax(logits)[i, j]`` (a scalar).

    ``targets`` may have fewer columns than ``logits``: the extra columns (hard negatives appended
    to the texts) get target 0. Raises ValueError for mismatched shapes.
    """
    ops = _backend(logits, targets)
    logits, targets = ops.float(logits), ops.float(targets)
    if (
        logits.ndim != 2
        or targets.ndim != 2
        or targets.shape[0] != logits.shape[0]
        or targets.shape[1] > logits.shape[1]
    ):
        raise ValueError(f"targets {tuple(targets.shape)} do not fit logits {tuple(logits.shape)}")
    targets = ops.pad_columns(targets, logits.shape[1] - targets.shape[1])
    return ops.mean(-ops.row_sum(targets * ops.log_softmax(logits)))


def soft_clip_loss(
    logits_per_image: Matrix, targets: Matrix, logits_per_text: Matrix | None = None
) -> Matrix:
    """The symmetric soft CLIP loss: mean of the image-to-text and text-to-image soft CEs.

    ``logits_per_image`` is (B, B + H): the H extra text columns (negated reports) take part in
    the image-to-text direction only, with target 0. ``logits_per_text`` defaults to the transpose
    of the first B columns. With identity targets this is exactly :func:`clip_loss`.
    """
    ops = _backend(logits_per_image, targets, logits_per_text)
    n = logits_per_image.shape[0]
    if logits_per_text is None:
        logits_per_text = ops.t(logits_per_image[:, :n])
    return (soft_cross_entropy(logits_per_image, targets) + soft_cross_entropy(logits_per_text, targets)) / 2


def clip_loss(logits_per_image: Matrix, logits_per_text: Matrix | None = None) -> Matrix:
    """The ordinary CLIP loss: cross-entropy against the matched pair, averaged over directions."""
    ops = _backend(logits_per_image, logits_per_text)
    n = logits_per_image.shape[0]
    if logits_per_text is None:
        logits_per_text = ops.t(logits_per_image[:, :n])
    image = ops.mean(-ops.diagonal_log_prob(logits_per_image))
    text = ops.mean(-ops.diagonal_log_prob(logits_per_text))
    return (image + text) / 2
