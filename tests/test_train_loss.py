"""The training loss and config: soft CLIP with negatives and graph alignment, presets, overrides."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.similarity.soft import clip_loss
from pipeline.train import loss as train_loss
from pipeline.train.config import (
    PRESETS,
    ConfigError,
    LossConfig,
    TrainConfig,
    apply_overrides,
    from_dict,
    identity,
    resolve,
    to_dict,
)
from pipeline.train.dist import Dist
from pipeline.train.loop import lr_factor


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


def _case(b: int = 6, m: int = 4, d: int = 8, seed: int = 0) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    out = {
        "image": _unit(torch.randn(b, d, generator=g)).requires_grad_(),
        "text": _unit(torch.randn(b, d, generator=g)).requires_grad_(),
        "negated": _unit(torch.randn(m, d, generator=g)).requires_grad_(),
        "graph": _unit(torch.randn(b, d, generator=g)).requires_grad_(),
        "logit_scale": torch.tensor(1 / 0.07),
    }
    batch = {
        "clinical_vector": torch.randn(b, 5, generator=g),
        "graph_embedding": torch.randn(b, 3, generator=g),
        "positions": torch.arange(b),
    }
    return out, batch


def _loss(preset: str, **overrides: object) -> LossConfig:
    config = resolve(TrainConfig(preset=preset))
    return LossConfig(**{**to_dict(config)["loss"], **overrides})


def test_zero_weights_are_exactly_the_clip_loss() -> None:
    out, batch = _case()
    result = train_loss.compute(out, batch, _loss("clip"), Dist())
    logits = out["logit_scale"] * out["image"] @ out["text"].T
    expected = clip_loss(logits)
    assert result.loss.item() == pytest.approx(expected.item(), abs=1e-6)
    ce = torch.nn.functional.cross_entropy
    by_hand = (ce(logits, torch.arange(6)) + ce(logits.T, torch.arange(6))) / 2
    assert result.loss.item() == pytest.approx(by_hand.item(), abs=1e-6)
    assert result.negatives == 0 and "loss_graph_image" not in result.terms


def test_soft_weights_change_the_loss_and_text_targets_are_detached() -> None:
    out, batch = _case()
    clip = train_loss.compute(out, batch, _loss("clip"), Dist()).loss.item()
    soft = train_loss.compute(out, batch, _loss("dtc"), Dist())
    assert soft.loss.item() != pytest.approx(clip)
    # The dynamic target is built from detached text embeddings: the gradient through the
    # target is zero, so the text gradient equals that of a fixed-target soft CE.
    soft.loss.backward()
    assert torch.isfinite(out["text"].grad).all()


def test_hard_negative_columns_get_zero_target_and_receive_gradient() -> None:
    out, batch = _case(m=4)
    result = train_loss.compute(out, batch, _loss("n"), Dist())
    assert result.negatives == 4
    result.loss.backward()
    assert out["negated"].grad is not None and out["negated"].grad.abs().sum() > 0
    # The same value by hand: image-to-text over B + M columns with identity targets padded by
    # zeros, text-to-image over the real texts only.
    s = out["logit_scale"]
    image, text, neg = out["image"].detach(), out["text"].detach(), out["negated"].detach()
    ce = torch.nn.functional.cross_entropy
    i2t = ce(s * image @ torch.cat([text, neg]).T, torch.arange(6))
    t2i = ce(s * text @ image.T, torch.arange(6))
    assert result.terms["loss_i2t"] == pytest.approx(i2t.item(), abs=1e-6)
    assert result.terms["loss_t2i"] == pytest.approx(t2i.item(), abs=1e-6)
    # A negated report more similar to its image raises the image-to-text loss.
    closer = dict(out, negated=torch.cat([out["image"][:1].detach(), out["negated"][1:].detach()]))
    assert train_loss.compute(closer, batch, _loss("n"), Dist()).terms["loss_i2t"] > i2t.item()


def test_graph_alignment_term_and_its_weight() -> None:
    out, batch = _case()
    base = train_loss.compute(out, batch, _loss("clip"), Dist()).loss.item()
    g = train_loss.compute(out, batch, _loss("g", lambda_g=0.5), Dist())
    s = out["logit_scale"]
    gi = clip_loss(s * out["graph"] @ out["image"].T, s * out["image"] @ out["graph"].T).item()
    assert g.terms["loss_graph_image"] == pytest.approx(gi, abs=1e-6)
    assert g.loss.item() == pytest.approx(base + 0.5 * gi, abs=1e-5)
    both = train_loss.compute(out, batch, _loss("g", lambda_g=0.5, graph_text=True), Dist())
    gt = both.terms["loss_graph_text"]
    assert both.loss.item() == pytest.approx(base + 0.5 * (gi + gt) / 2, abs=1e-5)
    with pytest.raises(ValueError, match="lambda_g"):
        train_loss.compute(dict(out, graph=None), batch, _loss("g"), Dist())


def test_every_preset_resolves_to_its_row() -> None:
    rows = {
        "clip": (False, False, False, False, False),
        "dt": (True, False, False, False, False),
        "dtc": (True, True, False, False, False),
        "n": (False, False, False, True, False),
        "n_dtc": (True, True, False, True, False),
        "g": (False, False, False, False, True),
        "g_dtcg": (True, True, True, False, True),
        "full": (True, True, True, True, True),
    }
    assert set(rows) == set(PRESETS)
    for preset, want in rows.items():
        loss = resolve(TrainConfig(preset=preset)).loss
        got = (
            loss.text_weight > 0,
            loss.clinical_weight > 0,
            loss.graph_weight > 0,
            loss.negatives,
            loss.lambda_g > 0,
        )
        assert got == want, preset
    # An explicit value beats the preset's.
    assert (
        resolve(apply_overrides(TrainConfig(), ["preset=full", "loss.lambda_g=0.25"])).loss.lambda_g == 0.25
    )


def test_overrides_are_typed_and_checked() -> None:
    config = apply_overrides(
        TrainConfig(),
        ["model.image.arch=resnet18", "data.batch_size=16", "loss.negatives=false", "optim.lr=3e-4"],
    )
    assert config.model.image.arch == "resnet18" and config.data.batch_size == 16
    assert config.loss.negatives is False and config.optim.lr == 3e-4
    with pytest.raises(ConfigError, match="(?i)did you mean.*batch_size"):
        apply_overrides(TrainConfig(), ["data.batch_sise=3"])
    with pytest.raises(ConfigError, match="integer"):
        apply_overrides(TrainConfig(), ["data.batch_size=abc"])
    with pytest.raises(ConfigError, match="preset"):
        resolve(TrainConfig(preset="ful"))
    with pytest.raises(ConfigError, match="resnet18, resnet50"):
        resolve(apply_overrides(TrainConfig(), ["model.image.arch=vit"]))
    assert from_dict(to_dict(config)) == config
    # How to run is not what is trained: a resume may change it.
    assert identity(config) == identity(apply_overrides(config, ["out=/elsewhere", "data.prefetch=4"]))
    # The loader's worker count decides the epoch's batches: not a runtime field.
    assert identity(config) != identity(apply_overrides(config, ["data.workers=1"]))
    assert identity(config) != identity(apply_overrides(config, ["seed=1"]))


def test_cosine_schedule_with_warmup() -> None:
    f = [lr_factor(s, warmup=10, total=110, floor=0.1) for s in range(111)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[10] == pytest.approx(1.0) and f[110] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(f[10:], f[11:], strict=False))
    assert f[60] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
