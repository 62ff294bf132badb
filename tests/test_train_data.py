"""The streaming shard reader on small shard folders written by tests/shard_fixtures.py, through real
DataLoader worker processes."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from shard_fixtures import write_shards

from pipeline.train.augment import AugmentConfig
from pipeline.train.data import (
    ReaderConfig,
    ShardDataset,
    ShardFormatError,
    TokenizingCollate,
    held_neighbor_share,
    make_loader,
    neighbor_share,
)
from pipeline.train.plan import balanced_assignment, make_plan

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
RES = 32
# 3 workers on a 2-core machine is the point of the coverage test, not a mistake.
pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """8 shards (the last smaller), row groups of 16 samples; ~580 samples."""
    return write_shards(tmp_path_factory.mktemp("shards") / "train", n_groups=115, groups_per_shard=15)


@pytest.fixture(scope="module")
def big_shards(tmp_path_factory):
    """~2,900 samples for the neighbour-share figures (read at index level only)."""
    return write_shards(tmp_path_factory.mktemp("big") / "train", n_groups=600, groups_per_shard=40, seed=3)


def config(batch_size: int = 16, *, train: bool = True, **kwargs) -> ReaderConfig:
    return ReaderConfig(batch_size=batch_size, augment=AugmentConfig(resolution=RES, train=train), **kwargs)


def run_loader(ds: ShardDataset, **kwargs) -> list[dict]:
    return list(make_loader(ds, **kwargs))


def same_batch(a: dict, b: dict) -> bool:
    for key, value in a.items():
        other = b[key]
        if isinstance(value, torch.Tensor):
            if value.dtype != other.dtype or value.shape != other.shape:
                return False
            if not torch.equal(torch.nan_to_num(value, nan=-7.0), torch.nan_to_num(other, nan=-7.0)):
                return False
        elif value != other:
            return False
    return True


def test_import_pulls_no_pipeline_core_spacy_or_dask():
    code = (
        "import sys, pipeline.train.data; "
        "bad = [m for m in ('spacy', 'dask', 'distributed', 'polars', 'pipeline.core') if m in sys.modules]; "
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("world_size,workers", [(2, 3), (1, 1), (1, 0)])
def test_every_sample_exactly_once(shards, world_size, workers):
    seen: list[np.ndarray] = []
    for rank in range(world_size):
        ds = ShardDataset(shards, config(), rank=rank, world_size=world_size, num_workers=workers)
        batches = run_loader(ds)
        assert len(batches) == len(ds) == ds.plan(0).steps[rank]
        # The DataLoader's order is the one the index predicts, without reading an image.
        predicted = ds.rank_batches(0)
        assert [b["positions"].tolist() for b in batches] == [p.tolist() for p in predicted]
        assert [b["state"]["batches"] for b in batches] == list(range(1, len(batches) + 1))
        assert batches[-1]["state"]["samples"] == ds.plan(0).samples_per_rank[rank]
        for b in batches:
            assert b["image"].shape == (len(b["positions"]), 3, RES, RES)
            assert len(b["image_ids"]) == len(b["positions"])
        seen.extend(b["positions"].numpy() for b in batches)
    every = np.concatenate(seen)
    assert len(every) == ds.index.samples
    assert np.array_equal(np.sort(every), np.arange(ds.index.samples))


def test_ranks_balanced_and_drop_gives_equal_full_batches(shards):
    sizes = ShardDataset(shards, config()).index.shard_samples
    for epoch in range(3):
        plan = make_plan(
            sizes,
            epoch=epoch,
            seed=0,
            world_size=3,
            num_workers=2,
            batch_size=16,
            shuffle=True,
            remainder="drop",
        )
        assert plan.samples_per_rank.max() - plan.samples_per_rank.min() <= sizes.max()
        assert (plan.steps == plan.steps[0]).all()
    positions = []
    for rank in range(2):
        ds = ShardDataset(shards, config(remainder="drop"), rank=rank, world_size=2, num_workers=2)
        batches = (
            run_loader(ds) if rank == 0 else [{"positions": torch.from_numpy(p)} for p in ds.rank_batches(0)]
        )
        plan = ds.plan(0)
        assert len(batches) == plan.steps[rank] == plan.min_steps
        assert all(len(b["positions"]) == 16 for b in batches)
        positions.extend(b["positions"].numpy() for b in batches)
    every = np.concatenate(positions)
    assert len(np.unique(every)) == len(every) == ds.index.samples - plan.dropped


def test_fewer_shards_than_ranks_names_the_fix(shards):
    with pytest.raises(ValueError, match="more, smaller parts"):
        ShardDataset(shards, config(), rank=0, world_size=9)


def test_balanced_assignment_keeps_order_and_balances():
    bins = balanced_assignment(np.array([10, 10, 10, 4, 10]), np.array([4, 3, 2, 1, 0]), 2)
    assert sorted(sum(bins, [])) == [0, 1, 2, 3, 4]
    assert all(b == sorted(b, key=[4, 3, 2, 1, 0].index) for b in bins)
    loads = [sum([10, 10, 10, 4, 10][i] for i in b) for b in bins]
    assert abs(loads[0] - loads[1]) <= 10


def test_order_is_deterministic_per_seed_and_epoch(shards):
    def order(seed: int, epoch: int) -> list[list[int]]:
        ds = ShardDataset(shards, config(seed=seed), rank=1, world_size=2, num_workers=3)
        return [p.tolist() for p in ds.rank_batches(epoch)]

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1)
    assert order(0, 0) != order(1, 0)
    ds = ShardDataset(shards, config(), num_workers=2)
    first, again = run_loader(ds), run_loader(ds)
    assert all(same_batch(a, b) for a, b in zip(first, again, strict=True))
    ds.set_epoch(1)
    other = run_loader(ds)
    assert [b["positions"].tolist() for b in other] == [p.tolist() for p in ds.rank_batches(1)]
    assert other[0]["state"]["epoch"] == 1


@pytest.mark.parametrize("workers,cut", [(3, 4), (2, 7), (0, 5)])
def test_resume_mid_epoch_is_bit_identical(shards, workers, cut):
    cfg = config(seed=5)
    ds = ShardDataset(shards, cfg, rank=0, world_size=2, num_workers=workers)
    ds.set_epoch(2)
    full = run_loader(ds)
    resumed = ShardDataset(shards, cfg, rank=0, world_size=2, num_workers=workers)
    state = json.loads(json.dumps(full[cut - 1]["state"]))  # what a checkpoint stores
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state
    assert len(resumed) == len(full) - cut
    rest = run_loader(resumed)
    assert len(rest) == len(full) - cut
    assert all(same_batch(a, b) for a, b in zip(full[cut:], rest, strict=True))
    # (epoch, samples consumed) alone is enough.
    by_samples = ShardDataset(shards, cfg, rank=0, world_size=2, num_workers=workers)
    by_samples.load_state_dict({"epoch": 2, "samples": state["samples"]})
    assert by_samples.state_dict()["batches"] == cut


def test_resume_refuses_another_layout(shards):
    ds = ShardDataset(shards, config(), num_workers=2)
    state = ds.state_dict()
    other = ShardDataset(shards, config(), num_workers=3)
    with pytest.raises(ValueError, match="num_workers"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match="batch boundary"):
        ds.load_state_dict({"epoch": 0, "samples": 3})


def test_persistent_workers_see_set_epoch(shards):
    ds = ShardDataset(shards, config(), num_workers=2)
    loader = make_loader(ds, persistent_workers=True)
    for epoch in range(2):
        ds.set_epoch(epoch)
        got = [b["positions"].tolist() for b in loader]
        assert got == [p.tolist() for p in ds.rank_batches(epoch)]


def _columns(folder) -> tuple[list[str], list[list[str]]]:
    table = pa.concat_tables(
        pq.read_table(p, columns=["report_id", "neighbor_ids"]) for p in sorted(folder.glob("part-*.parquet"))
    )
    return table.column("report_id").to_pylist(), table.column("neighbor_ids").to_pylist()


def test_neighbour_share_close_to_shards_and_far_above_sample_shuffle(big_shards, shards):
    reports, neighbors = _columns(big_shards)
    held = held_neighbor_share(big_shards)
    ds = ShardDataset(big_shards, config(batch_size=32), rank=0, world_size=2, num_workers=2)

    def share(batches) -> float:
        values = [neighbor_share([reports[i] for i in b], [neighbors[i] for i in b]) for b in batches]
        return float(np.average(values, weights=[len(b) for b in batches]))

    delivered = share(ds.rank_batches(0))
    order = np.random.default_rng(0).permutation(len(reports))
    sample_shuffle = share([order[i : i + 32] for i in range(0, len(order), 32)])
    assert held > 0.85
    assert delivered > held - 0.12
    assert delivered > 3 * sample_shuffle
    # The loader's own per-batch figure agrees with the index-level one.
    small = ShardDataset(shards, config(), num_workers=2)
    batches = run_loader(small)
    r, n = _columns(shards)
    assert [b["neighbor_share"] for b in batches] == [
        neighbor_share([r[i] for i in b], [n[i] for i in b]) for b in small.rank_batches(0)
    ]


def test_eval_mode_has_no_augmentation(shards):
    eval_cfg = ReaderConfig(batch_size=16, augment=AugmentConfig(resolution=RES, train=False, channels=1))
    ds = ShardDataset(shards, eval_cfg, num_workers=0)
    assert not eval_cfg.shuffled
    first = next(iter(ds))
    ds.set_epoch(3)
    again = next(iter(ds))
    assert torch.equal(first["image"], again["image"])
    assert first["positions"].tolist() == list(range(16))  # eval reads in index order
    png = pq.read_table(shards / "part-00000.parquet", columns=["image"]).column("image")[0].as_py()
    im = Image.open(io.BytesIO(png))
    side = min(im.size)
    box = ((im.width - side) / 2, (im.height - side) / 2, (im.width + side) / 2, (im.height + side) / 2)
    ref = torch.from_numpy(np.array(im.resize((RES, RES), Image.BILINEAR, box=box))).float() / 255
    assert torch.allclose(first["image"][0, 0], (ref - 0.449) / 0.226, atol=1e-5)
    # Training mode: the same sample looks different in another epoch.
    train = ShardDataset(shards, config(shuffle=False), num_workers=0)
    a = next(iter(train))["image"]
    train.set_epoch(1)
    assert not torch.equal(a, next(iter(train))["image"])


def test_batch_fields_match_the_rows(shards):
    ds = ShardDataset(shards, config(), num_workers=0)
    batch = next(iter(ds))
    table = pa.concat_tables(pq.read_table(p) for p in sorted(shards.glob("part-*.parquet")))
    rows = table.take(batch["positions"].numpy()).to_pylist()
    assert batch["report_ids"] == [r["report_id"] for r in rows]
    labels = torch.tensor([[np.nan if v is None else v for v in r["labels"]] for r in rows])
    assert batch["labels"].shape == (16, 14)
    assert torch.equal(torch.isnan(batch["labels"]), torch.isnan(labels))
    assert batch["clinical_vector"].shape == (16, 8) and batch["graph_embedding"].shape == (16, 6)
    ptr = batch["node_ptr"]
    for i, r in enumerate(rows):
        assert batch["node_concept_ids"][ptr[i] : ptr[i + 1]].tolist() == r["node_concept_ids"]
        assert (batch["node_batch"][ptr[i] : ptr[i + 1]] == i).all()
        mine = batch["node_batch"][batch["edge_index"][0]] == i
        assert (batch["edge_index"][0][mine] - ptr[i]).tolist() == r["edge_source"]
        assert (batch["edge_index"][1][mine] - ptr[i]).tolist() == r["edge_target"]
    assert batch["negated_reports"] == [t for r in rows for t in r["negated_reports"]]
    owners = [i for i, r in enumerate(rows) for _ in r["negated_reports"]]
    assert batch["negated_owner"].tolist() == owners


def test_tokenises_with_an_offline_wordpiece_tokenizer(shards):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = pq.read_table(shards / "part-00000.parquet", columns=["text"]).column("text").to_pylist()
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=300, special_tokens=special))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
    )
    ds = ShardDataset(shards, config(), num_workers=2)
    batches = run_loader(ds, tokenizer=fast, max_length=12)
    for b in batches[:4]:
        ids, mask = b["input_ids"], b["attention_mask"]
        assert ids.dtype == torch.int64 and ids.shape[0] == len(b["text"]) and ids.shape[1] <= 12
        assert (ids[:, 0] == 2).all() and torch.equal(mask.bool(), ids != 0)
        assert fast.decode(ids[0], skip_special_tokens=True).split()[0] == b["text"][0].split()[0]
        assert b["negated_input_ids"].shape[0] == len(b["negated_reports"])
    assert TokenizingCollate(None)({"text": ["x"]}) == {"text": ["x"]}


def test_wrong_schema_or_index_names_the_fix(shards, tmp_path):
    bad = tmp_path / "train"
    bad.mkdir()
    for path in shards.iterdir():
        (bad / path.name).write_bytes(path.read_bytes())
    table = pq.read_table(bad / "part-00001.parquet")
    pq.write_table(
        table.replace_schema_metadata({"clip2clinic.schema": "shards", "clip2clinic.schema_version": "0"}),
        bad / "part-00001.parquet",
    )
    ds = ShardDataset(bad, config(shuffle=False), num_workers=0)
    with pytest.raises(ShardFormatError, match="rebuild the shards"):
        list(ds)
    index = json.loads((bad / "_index.json").read_text())
    (bad / "_index.json").write_text(json.dumps({**index, "version": 2}))
    with pytest.raises(ShardFormatError, match="rebuild the shards"):
        ShardDataset(bad, config())
