"""Streaming shard reader throughput: samples/s per DataLoader worker at 224 px with augmentation and
tokenisation, over 1 and 2 workers, the per-stage cost in one process, and the neighbour share the
loader delivers.

    .venv/bin/python bench/loader.py [--image-size 512]   # synthetic shards of 256-px PNGs (the default)
    .venv/bin/python bench/loader.py --shards RUN/shards/train --workers 1,2,4

Prints figures, asserts nothing. The synthetic shards come from tests/shard_fixtures.py (chest-like
PNGs with noise, ~170 kB at 512 px, like 8-bit radiographs).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from _common import print_figures  # noqa: E402

from pipeline.train.augment import AugmentConfig, decode_batch  # noqa: E402
from pipeline.train.data import (  # noqa: E402
    ReaderConfig,
    ShardDataset,
    TokenizingCollate,
    _RowReader,
    held_neighbor_share,
    make_loader,
)


def wordpiece(texts: list[str]):
    """A WordPiece tokenizer trained offline on ``texts``, as transformers' fast tokenizer."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=2000, special_tokens=special))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
    )


def profile_one_process(ds: ShardDataset, tokenizer, n_batches: int) -> list[tuple[str, str]]:
    """Per-stage cost of the hot path, timed in this process (ms per sample)."""
    batches = ds.worker_batches(0, 0)[:n_batches]
    reader = _RowReader(ds.index, batches)
    cfg = ds.config.augment
    t_read = t_decode = t_fields = t_tok = 0.0
    collate = TokenizingCollate(tokenizer, max_length=128)
    n = 0
    from PIL import Image

    t_png = 0.0
    for b in batches:
        t0 = time.perf_counter()
        table, pngs = reader.take(b)
        t1 = time.perf_counter()
        for data in pngs:
            Image.open(io.BytesIO(data)).load()
        t2 = time.perf_counter()
        decode_batch(pngs, b, seed=0, epoch=0, cfg=cfg)
        t3 = time.perf_counter()
        batch = ds._make_batch(table, pngs, b, 0)
        t4 = time.perf_counter()
        collate(batch)
        t5 = time.perf_counter()
        t_read += t1 - t0
        t_png += t2 - t1
        t_decode += t3 - t2
        t_fields += (t4 - t3) - (t3 - t2)  # _make_batch decodes again; subtract that
        t_tok += t5 - t4
        n += len(b)
    ms = lambda t: f"{1e3 * t / n:.3f} ms"  # noqa: E731
    return [
        ("read row groups + take rows", ms(t_read)),
        ("PNG decode alone (Pillow, full size)", ms(t_png)),
        ("decode + crop/resize + affine + jitter + normalise", ms(t_decode)),
        ("other fields (labels, graph, ids)", ms(max(t_fields, 0.0))),
        ("tokenise text + negated reports", ms(t_tok)),
        ("one process, all stages", f"{n / (t_read + t_decode + max(t_fields, 0) + t_tok):,.0f} samples/s"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=Path, help="a shards split folder (default: synthetic)")
    parser.add_argument(
        "--groups", type=int, default=700, help="synthetic: neighbour groups (~5 samples each)"
    )
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument(
        "--image-size",
        type=int,
        default=256,
        help="synthetic: PNG side (stages.shards.image_size; 256 is the shards default, 512 the images stage's)",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.shards
        rows: list[tuple[str, str]] = []
        if folder is None:
            from shard_fixtures import write_shards

            t0 = time.perf_counter()
            folder = write_shards(
                Path(tmp) / "train",
                n_groups=args.groups,
                groups_per_shard=50,
                row_group_size=128,
                image_size=args.image_size,
                distinct_images=48,
                clinical_dim=64,
                graph_dim=128,
            )
            rows.append(("synthetic shards written", f"{time.perf_counter() - t0:.1f} s"))
        cfg = ReaderConfig(
            batch_size=args.batch_size,
            augment=AugmentConfig(resolution=args.resolution, channels=args.channels, train=True),
        )
        probe = ShardDataset(folder, cfg, rank=0, world_size=1)
        import pyarrow.parquet as pq

        texts = (
            pq.read_table(folder / probe.index.shards[0].file, columns=["text"]).column("text").to_pylist()
        )
        tokenizer = wordpiece(texts)
        mean_png = sum((folder / s.file).stat().st_size for s in probe.index.shards) / probe.index.samples
        rows += [
            ("samples, shards", f"{probe.index.samples:,}, {len(probe.index.shards)}"),
            ("mean part bytes per sample", f"{mean_png / 1e3:,.0f} kB"),
            ("batch size, resolution, channels", f"{args.batch_size}, {args.resolution}, {args.channels}"),
        ]
        rows += profile_one_process(probe, tokenizer, n_batches=8)
        held = held_neighbor_share(folder)
        for workers in [int(w) for w in args.workers.split(",")]:
            ds = ShardDataset(folder, cfg, rank=0, world_size=1, num_workers=workers)
            loader = make_loader(ds, tokenizer=tokenizer, max_length=128)
            shares, sizes = [], []
            t0 = time.perf_counter()
            first = None
            for i, batch in enumerate(loader):
                if i == workers - 1:  # the first batch of every worker: start-up, not throughput
                    first = time.perf_counter()
                    counted = 0
                elif first is not None:
                    counted += len(batch["positions"])
                shares.append(batch["neighbor_share"])
                sizes.append(len(batch["positions"]))
            total = time.perf_counter() - t0
            rate = counted / (time.perf_counter() - first)
            rows += [
                (f"{workers} worker(s): samples/s (steady)", f"{rate:,.0f}"),
                (f"{workers} worker(s): samples/s per worker", f"{rate / workers:,.0f}"),
                (f"{workers} worker(s): epoch wall (incl. start)", f"{total:.1f} s"),
            ]
        rows += [
            ("neighbour share held by the shards (group = batch)", f"{held:.3f}"),
            ("neighbour share delivered (mean over batches)", f"{np.average(shares, weights=sizes):.3f}"),
            ("cores", f"{os.cpu_count()}"),
        ]
        print_figures("pipeline.train.data: streaming reader", rows)


if __name__ == "__main__":
    main()
