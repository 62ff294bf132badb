"""Soft targets and the soft CLIP loss: properties (hypothesis), exact reductions, numpy == torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline.similarity.soft import (
    SoftLabelConfig,
    clinical_similarity,
    clip_loss,
    combined_similarity,
    cosine_similarity,
    graph_similarity,
    soft_clip_loss,
    soft_cross_entropy,
    soft_targets,
)

torch = pytest.importorskip("torch")
F = torch.nn.functional

SETTINGS = settings(max_examples=60, deadline=None)
finite = st.floats(-4, 4, allow_nan=False, width=32)


@st.composite
def batches(draw):
    """A batch: text embeddings, clinical vectors (the encoding's values), graph embeddings, config."""
    b = draw(st.integers(1, 12))
    text = draw(arrays(np.float64, (b, draw(st.integers(1, 6))), elements=finite))
    clinical = draw(arrays(np.float64, (b, 5), elements=st.sampled_from([0.0, 1.0, 0.5, -0.25])))
    graph = draw(arrays(np.float64, (b, 3), elements=finite))
    weights = draw(st.tuples(*[st.sampled_from([0.0, 0.25, 1.0, 3.0])] * 3))
    config = SoftLabelConfig(
        *weights,
        temperature=draw(st.sampled_from([0.01, 0.1, 1.0, 10.0])),
        identity_mix=draw(st.sampled_from([0.0, 0.3, 1.0])),
    )
    return cosine_similarity(text), clinical, graph, config


@SETTINGS
@given(batches())
def test_targets_are_distributions_and_deterministic(batch):
    s_text, clinical, graph, config = batch
    t = soft_targets(s_text, clinical_similarity(clinical), graph_similarity(graph), config=config)
    assert t.shape == s_text.shape and np.all(t >= 0)
    np.testing.assert_allclose(t.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    again = soft_targets(s_text, clinical_similarity(clinical), graph_similarity(graph), config=config)
    assert np.array_equal(t, again)
    if config.off or config.identity_mix == 1.0:
        assert np.array_equal(t, np.eye(len(t)))


@SETTINGS
@given(batches())
def test_symmetric_inputs_give_symmetric_similarities(batch):
    s_text, clinical, graph, config = batch
    for s in (s_text, clinical_similarity(clinical), graph_similarity(graph)):
        assert np.array_equal(s, s.T)
        assert np.all(np.abs(s) <= 1 + 1e-12)
    if not config.off:
        combined = combined_similarity(
            s_text, clinical_similarity(clinical), graph_similarity(graph), config=config
        )
        assert np.array_equal(combined, combined.T)


@SETTINGS
@given(batches())
def test_numpy_and_torch_agree(batch):
    s_text, clinical, graph, config = batch
    want = soft_targets(s_text, clinical_similarity(clinical), graph_similarity(graph), config=config)
    tensors = [torch.tensor(x) for x in (s_text, clinical, graph)]
    got = soft_targets(
        tensors[0], clinical_similarity(tensors[1]), graph_similarity(tensors[2]), config=config
    )
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float64 and not got.requires_grad
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-12)
    got32 = soft_targets(*(t.float() for t in (tensors[0],)), config=SoftLabelConfig(1.0, 0, 0))
    np.testing.assert_allclose(
        got32.numpy(), soft_targets(s_text, config=SoftLabelConfig(1.0, 0, 0)), atol=1e-5
    )


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 8), st.integers(0, 3), st.integers(0, 2**31 - 1))
def test_identity_targets_reduce_exactly_to_clip(b, extra, seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=5, size=(b, b + extra))  # extra columns: negated reports
    eye = soft_targets(np.zeros((b, b)), config=SoftLabelConfig(0, 0, 0))
    assert soft_clip_loss(logits, eye) == clip_loss(logits)
    t = torch.tensor(logits)
    assert soft_clip_loss(t, torch.eye(b, dtype=torch.float64)).item() == clip_loss(t).item()
    labels = torch.arange(b)
    reference = (F.cross_entropy(t, labels) + F.cross_entropy(t[:, :b].T, labels)) / 2
    assert clip_loss(t).item() == pytest.approx(reference.item(), rel=1e-12)
    assert clip_loss(logits) == pytest.approx(reference.item(), rel=1e-12)


def test_soft_loss_matches_torch_and_has_gradients():
    rng = np.random.default_rng(0)
    logits = torch.tensor(rng.normal(size=(4, 6)), requires_grad=True)
    targets = soft_targets(
        cosine_similarity(torch.tensor(rng.normal(size=(4, 3)))), config=SoftLabelConfig(1, 0, 0)
    )
    loss = soft_clip_loss(logits, targets)
    padded = F.pad(targets, (0, 2))
    i2t = F.cross_entropy(logits, padded)  # torch's soft-label cross-entropy
    t2i = F.cross_entropy(logits[:, :4].T, targets)
    assert loss.item() == pytest.approx(((i2t + t2i) / 2).item(), rel=1e-12)
    loss.backward()
    assert logits.grad is not None and logits.grad[:, 4:].abs().sum() > 0  # negatives get pushed away
    np.testing.assert_allclose(
        soft_clip_loss(logits.detach().numpy(), targets.numpy()), loss.item(), rtol=1e-12
    )
    half = soft_cross_entropy(logits.detach().bfloat16(), targets.float())  # autocast: upcast
    assert half.dtype == torch.float32


def test_zero_rows_and_validation():
    s = cosine_similarity(np.array([[0.0, 0.0], [1.0, 0.0]]))
    assert s.tolist() == [[0.0, 0.0], [0.0, 1.0]]
    with pytest.raises(ValueError, match="weight but was not passed"):
        soft_targets(np.eye(2), config=SoftLabelConfig(1.0, 1.0, 0.0))
    with pytest.raises(ValueError, match="temperature"):
        soft_targets(np.eye(2), config=SoftLabelConfig(temperature=0.0))
    with pytest.raises(ValueError, match="square"):
        soft_targets(np.ones((2, 3)), config=SoftLabelConfig(1.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="size="):
        soft_targets(config=SoftLabelConfig(0, 0, 0))
    assert soft_targets(config=SoftLabelConfig(0, 0, 0), size=3).tolist() == np.eye(3).tolist()
    with pytest.raises(TypeError, match="mix"):
        soft_targets(np.eye(2), torch.eye(2))
    with pytest.raises(ValueError, match="fit"):
        soft_cross_entropy(np.zeros((2, 2)), np.zeros((3, 2)))


def test_importing_the_package_does_not_import_torch():
    code = (
        "import sys; import pipeline.similarity.soft, pipeline.similarity.sampler, "
        "pipeline.similarity.stage, pipeline.similarity.topk; "
        "import numpy as np; from pipeline.similarity.soft import soft_targets, SoftLabelConfig; "
        "soft_targets(np.eye(3), config=SoftLabelConfig(1.0, 0.0, 0.0)); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
