"""The streaming shard reader: a torch IterableDataset over ``shards/<split>/`` yielding ready batches.

Use with ``DataLoader(dataset, batch_size=None, num_workers=dataset.num_workers,
collate_fn=TokenizingCollate(tokenizer))`` (``make_loader`` does this). Imports only torch,
numpy, pyarrow and Pillow (the collate function takes any transformers tokenizer object but
imports nothing), so it runs inside any CUDA PyTorch image.

Contract (details in ``pipeline.train.plan``):

* **Exactly once.** Shards are permuted per ``(seed, epoch)`` and split, balanced by sample count,
  over ranks and then over each rank's DataLoader workers; with ``remainder="keep"`` every sample
  of the split is yielded exactly once per epoch over all of them; ``remainder="drop"`` (DDP
  training) yields only full batches and the same number, ``plan().steps``, on every rank.
* **Neighbours.** Shards hold anchor-plus-neighbours groups contiguously; the reader shuffles
  whole groups, so batches carry clinical neighbours at the share the shards hold
  (``neighbor_share`` measures it; each batch reports its own).
* **Determinism and resume.** The rows of every batch follow from the index and the group ids
  alone; augmentation is seeded per ``(seed, epoch, sample)``. Each batch carries ``state``
  (epoch, batches and samples this rank has consumed, and the layout); ``load_state_dict(state)``
  makes the next iteration start right after that batch without reading what came before, and
  the batches that follow are bit-identical to those of the uninterrupted run.
* **Memory.** Row groups are read lazily, only the needed columns; a worker holds the PNG bytes of
  the samples in its shuffle buffer plus one row group, and the small columns of the row groups
  that still have a sample in the buffer.

Schema name and version are re-stated here (not imported from ``pipeline.core``, which pulls in
Dask); they must match schemas/shards.yaml.
"""

from __future__ import annotations

import functools
import json
import logging
import multiprocessing
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipeline.train.augment import AugmentConfig, decode_valid
from pipeline.train.plan import EpochPlan, Remainder, batches_of, group_runs, make_plan, worker_order

log = logging.getLogger(__name__)

SHARDS_SCHEMA = "shards"  # schemas/shards.yaml: name
SHARDS_SCHEMA_VERSION = 1  # schemas/shards.yaml: version
INDEX_FORMAT = "clip2clinic.shards"
INDEX_VERSION = 1
_SCHEMA_KEY = b"clip2clinic.schema"
_VERSION_KEY = b"clip2clinic.schema_version"
_REBUILD = "rebuild the shards (python -m pipeline.run stage=shards ...)"

COLUMNS = (
    "image_id",
    "report_id",
    "group_id",
    "image",
    "text",
    "labels",
    "clinical_vector",
    "graph_embedding",
    "node_concept_ids",
    "node_label_ids",
    "node_texts",
    "edge_source",
    "edge_target",
    "edge_types",
    "negated_reports",
    "neighbor_ids",
)


class ShardFormatError(ValueError):
    """A shard folder or part that this reader cannot read; the message names the fix."""


@dataclass(frozen=True)
class ShardInfo:
    file: str
    samples: int
    groups: int
    offset: int  # index in the split of the shard's first row


@dataclass(frozen=True)
class ShardIndex:
    """``_index.json`` of one split folder, checked."""

    folder: Path
    split: str
    fingerprint: str
    samples: int
    groups: int
    row_group_size: int
    shards: tuple[ShardInfo, ...]

    @classmethod
    def load(cls, folder: str | os.PathLike) -> ShardIndex:
        """Read and check ``folder/_index.json``. Raises ShardFormatError naming the fix."""
        folder = Path(folder)
        path = folder / "_index.json"
        if not path.is_file():
            raise ShardFormatError(f"{folder} has no _index.json: not a shards split folder; {_REBUILD}")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ShardFormatError(f"{path} is not valid JSON ({exc}); {_REBUILD}") from exc
        want = {
            "format": INDEX_FORMAT,
            "version": INDEX_VERSION,
            "schema": SHARDS_SCHEMA,
            "schema_version": SHARDS_SCHEMA_VERSION,
        }
        bad = {k: raw.get(k) for k, v in want.items() if raw.get(k) != v}
        if bad:
            raise ShardFormatError(f"{path}: {bad} where this reader reads {want}; {_REBUILD}")
        shards, offset = [], 0
        for entry in raw["shards"]:
            shards.append(ShardInfo(entry["file"], int(entry["samples"]), int(entry["groups"]), offset))
            offset += int(entry["samples"])
        if offset != raw["samples"] or not shards:
            raise ShardFormatError(
                f"{path}: the shards hold {offset} samples, the index says {raw['samples']}; {_REBUILD}"
            )
        missing = [s.file for s in shards if not (folder / s.file).is_file()]
        if missing:
            raise ShardFormatError(
                f"{folder}: parts {missing[:3]} listed in _index.json are missing; {_REBUILD}"
            )
        return cls(
            folder,
            raw["split"],
            raw.get("fingerprint", ""),
            offset,
            int(raw["groups"]),
            int(raw["row_group_size"]),
            tuple(shards),
        )

    @property
    def shard_samples(self) -> np.ndarray:
        return np.array([s.samples for s in self.shards], np.int64)

    @property
    def offsets(self) -> np.ndarray:
        return np.array([s.offset for s in self.shards], np.int64)

    def open(self, shard: int) -> pq.ParquetFile:
        """Open one part and check its schema metadata. Raises ShardFormatError."""
        path = self.folder / self.shards[shard].file
        pf = pq.ParquetFile(path)
        meta = pf.schema_arrow.metadata or {}
        name, version = meta.get(_SCHEMA_KEY), meta.get(_VERSION_KEY)
        if name != SHARDS_SCHEMA.encode() or version != str(SHARDS_SCHEMA_VERSION).encode():
            raise ShardFormatError(
                f"{path} has schema {name!r} version {version!r}, this reader reads "
                f"{SHARDS_SCHEMA!r} version {SHARDS_SCHEMA_VERSION}; {_REBUILD}"
            )
        if pf.metadata.num_rows != self.shards[shard].samples:
            raise ShardFormatError(
                f"{path} has {pf.metadata.num_rows} rows, _index.json says {self.shards[shard].samples}; {_REBUILD}"
            )
        return pf

    def group_sizes(self, shard: int) -> np.ndarray:
        """Sizes of the shard's neighbour groups in row order (reads the group_id column only)."""
        ids = self.open(shard).read(columns=["group_id"]).column("group_id").to_numpy()
        sizes = group_runs(ids)
        if len(sizes) != len(np.unique(ids)):
            raise ShardFormatError(f"{self.shards[shard].file}: a group_id is not contiguous; {_REBUILD}")
        return sizes


@dataclass(frozen=True)
class ReaderConfig:
    """Reader settings; every knob that changes which rows form a batch is in ``state``."""

    batch_size: int = 128  # samples per batch on one rank
    seed: int = 0
    shuffle: bool | None = None  # permute shards and shuffle groups; None: same as augment.train
    shuffle_buffer: int = 1024  # samples the group shuffle buffer holds (memory: that many PNGs)
    remainder: Remainder = "keep"  # "keep": exactly once; "drop": full, equal batches on all ranks
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    @property
    def shuffled(self) -> bool:
        return self.augment.train if self.shuffle is None else self.shuffle


def distributed_rank() -> tuple[int, int]:
    """(rank, world_size): torch.distributed when initialised, else env RANK/WORLD_SIZE, else 0/1."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class ShardDataset(IterableDataset):
    """Ready batches (dicts; see ``_make_batch``) of one rank from a shards split folder.

    ``num_workers`` must equal the DataLoader's (0 and 1 both mean one stream); the layout of an
    epoch depends on it and on ``world_size``, so a resumed run must keep both.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        config: ReaderConfig = ReaderConfig(),  # noqa: B008 (frozen dataclass)
        *,
        rank: int | None = None,
        world_size: int | None = None,
        num_workers: int = 0,
    ) -> None:
        """Raises ShardFormatError for an unreadable folder, ValueError for a bad rank or setting."""
        super().__init__()
        self.index = ShardIndex.load(folder)
        self.config = config
        if rank is None or world_size is None:
            rank, world_size = distributed_rank()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside range(world_size={world_size})")
        self.rank, self.world_size = rank, world_size
        self.num_workers = num_workers
        # Epoch and start batch live in shared memory so that set_epoch/load_state_dict reach
        # persistent DataLoader workers, which hold a copy of this object made at their start.
        self._position = multiprocessing.RawArray("q", 2)
        self.plan(0)  # fail now, not in a worker, for fewer shards than ranks

    # -- position -------------------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        return int(self._position[0])

    def set_epoch(self, epoch: int) -> None:
        """The next iteration yields this epoch from its start (call on every rank each epoch)."""
        self._position[0], self._position[1] = epoch, 0

    def _layout(self) -> dict[str, Any]:
        c = self.config
        return {
            "seed": c.seed,
            "world_size": self.world_size,
            "num_workers": max(1, self.num_workers),
            "batch_size": c.batch_size,
            "shuffle_buffer": c.shuffle_buffer if c.shuffled else 0,
            "remainder": c.remainder,
            "split_samples": self.index.samples,
        }

    def state_dict(self) -> dict[str, Any]:
        """Where the next iteration starts: {epoch, batches, samples} consumed on this rank, and
        the layout (seed, world_size, num_workers, ...) the position is valid for."""
        epoch, start = self.epoch, int(self._position[1])
        samples = int(self.plan(epoch).samples_before(self.rank)[start])
        return {"epoch": epoch, "batches": start, "samples": samples, **self._layout()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume after a batch: ``state`` is a batch's ``state`` (or ``state_dict()``).

        The next iteration yields epoch ``state["epoch"]`` from batch ``state["batches"]`` on;
        ``samples`` alone suffices when it falls on a batch boundary. Raises ValueError when the
        layout differs (other seed, world size, workers, batch size, ...) or the position is not
        a batch boundary of this rank.
        """
        layout = self._layout()
        diff = {k: (state[k], v) for k, v in layout.items() if k in state and state[k] != v}
        if diff:
            raise ValueError(f"cannot resume: the state was saved with other settings (saved, now): {diff}")
        epoch = int(state["epoch"])
        before = self.plan(epoch).samples_before(self.rank)
        if "batches" in state:
            start = int(state["batches"])
            if not 0 <= start < len(before) or ("samples" in state and before[start] != state["samples"]):
                raise ValueError(f"state {dict(state)} is not a position of rank {self.rank}'s epoch {epoch}")
        else:
            hits = np.flatnonzero(before == int(state["samples"]))
            if not len(hits):
                raise ValueError(f"{state['samples']} samples is not a batch boundary of rank {self.rank}")
            start = int(hits[0])
        self._position[0], self._position[1] = epoch, start

    # -- plan -----------------------------------------------------------------------------------

    def plan(self, epoch: int | None = None) -> EpochPlan:
        """The epoch's layout over all ranks and workers: per-rank samples, batches and steps."""
        return _plan(
            tuple(self.index.shard_samples.tolist()),
            epoch=self.epoch if epoch is None else epoch,
            seed=self.config.seed,
            world_size=self.world_size,
            num_workers=max(1, self.num_workers),
            batch_size=self.config.batch_size,
            shuffle=self.config.shuffled,
            remainder=self.config.remainder,
        )

    def __len__(self) -> int:
        """Batches the next iteration yields on this rank (the epoch's steps less a resume offset)."""
        return int(self.plan().steps[self.rank]) - int(self._position[1])

    def worker_batches(self, epoch: int, worker: int) -> list[np.ndarray]:
        """One worker's batches of this rank (split indices of their samples), index level only."""
        plan = self.plan(epoch)
        shards = plan.shards[self.rank][worker]
        c = self.config
        rng = np.random.default_rng([c.seed, epoch, self.rank, worker]) if c.shuffled else None
        samples = worker_order(
            self.index.offsets[shards],
            [self.index.group_sizes(s) for s in shards],
            buffer=c.shuffle_buffer,
            rng=rng,
        )
        return batches_of(samples, c.batch_size, int(plan.worker_batches[self.rank, worker]))

    def rank_batches(self, epoch: int) -> list[np.ndarray]:
        """This rank's batches in the order the DataLoader yields them (index level, no images)."""
        plan = self.plan(epoch)
        per_worker = [self.worker_batches(epoch, w) for w in range(plan.num_workers)]
        return [per_worker[w][k] for w, k in plan.rotation(self.rank)]

    # -- iteration ------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        if workers != max(1, self.num_workers):
            raise ValueError(
                f"ShardDataset(num_workers={self.num_workers}) runs under DataLoader(num_workers={workers}): "
                "pass the same number to both"
            )
        epoch, start = self.epoch, int(self._position[1])
        plan = self.plan(epoch)
        rot = plan.rotation(self.rank)
        if start >= len(rot):
            return
        # DataLoader asks worker 0 first on every iteration, but a resumed epoch continues with
        # worker rot[start]; the rotation is a cycle over workers (skipping exhausted ones), so
        # relabelling DataLoader worker i as stream (i + rot[start]) mod W gives the same order.
        worker = (worker + int(rot[start, 0])) % workers
        mine = np.flatnonzero(rot[:, 0] == worker)  # rotation positions of this stream's batches
        todo = mine[mine >= start]
        if not len(todo):
            return
        if not plan.shards[self.rank][worker]:
            log.warning("rank %d worker %d has no shard: fewer shards than workers", self.rank, worker)
        batches = self.worker_batches(epoch, worker)
        skip = len(mine) - len(todo)
        before = plan.samples_before(self.rank)
        reader = _RowReader(self.index, batches[skip:])
        for k, position in enumerate(todo, start=skip):
            table, pngs = reader.take(batches[k])
            batch = self._make_batch(table, pngs, batches[k], epoch)
            batch["state"] = {
                "epoch": epoch,
                "batches": int(position) + 1,
                "samples": int(before[position + 1]),
                **self._layout(),
            }
            yield batch

    def _make_batch(
        self, t: pa.Table, pngs: list[bytes], positions: np.ndarray, epoch: int
    ) -> dict[str, Any]:
        """The batch dict (shapes for B samples, N nodes, E edges, M negated reports):

        image (B, C, R, R) float32 normalised; text, report_ids, image_ids: lists of B str;
        labels (B, 14) float32, NaN for null; clinical_vector (B, D), graph_embedding (B, G)
        float32; node_concept_ids, node_label_ids, node_batch (N,) int64; node_texts: N str (the
        entities' texts, in node order); node_ptr (B + 1,); edge_index (2, E) int64 (node
        indices in the batch); edge_types (E,) int64; negated_reports: M str, negated_owner (M,)
        int64 (row of the sample); neighbor_ids: B lists of str; positions (B,) int64 (index of
        the sample in the split: unique, for gathering across ranks); group_ids (B,) int64;
        neighbor_share: float; bad_samples: int and bad_image_ids: list of str (undecodable images
        left out of the batch); state: dict.
        """
        image, good = decode_valid(
            pngs, positions, seed=self.config.seed, epoch=epoch, cfg=self.config.augment
        )
        bad_ids: list[str] = []
        if not good.all():  # skipped and counted, never a crash (the trainer bounds the share)
            bad_ids = [i for i, ok in zip(t.column("image_id").to_pylist(), good, strict=True) if not ok]
            log.warning("skipping %d undecodable image(s): %s", len(bad_ids), bad_ids[:5])
            t = t.filter(pa.array(good))
            positions = np.asarray(positions)[good]
        n = t.num_rows
        node_counts = pc.list_value_length(t.column("node_concept_ids")).to_numpy(zero_copy_only=False)
        node_ptr = np.concatenate([[0], np.cumsum(node_counts)]).astype(np.int64)
        edge_owner = _parents(t.column("edge_source"))
        shift = node_ptr[edge_owner]
        edge_index = np.stack(
            [_flat(t, "edge_source", np.int64) + shift, _flat(t, "edge_target", np.int64) + shift]
        )
        negated = t.column("negated_reports")
        report_ids = t.column("report_id").to_pylist()
        neighbor_ids = t.column("neighbor_ids").to_pylist()
        return {
            "image": image,
            "bad_samples": len(bad_ids),
            "bad_image_ids": bad_ids,
            "text": t.column("text").to_pylist(),
            "labels": torch.from_numpy(_matrix(t, "labels", n)),
            "clinical_vector": torch.from_numpy(_matrix(t, "clinical_vector", n)),
            "graph_embedding": torch.from_numpy(_matrix(t, "graph_embedding", n)),
            "node_concept_ids": torch.from_numpy(_flat(t, "node_concept_ids", np.int64)),
            "node_label_ids": torch.from_numpy(_flat(t, "node_label_ids", np.int64)),
            "node_texts": pc.list_flatten(t.column("node_texts")).to_pylist(),
            "node_batch": torch.from_numpy(np.repeat(np.arange(n, dtype=np.int64), node_counts)),
            "node_ptr": torch.from_numpy(node_ptr),
            "edge_index": torch.from_numpy(edge_index),
            "edge_types": torch.from_numpy(_flat(t, "edge_types", np.int64)),
            "negated_reports": pc.list_flatten(negated).to_pylist(),
            "negated_owner": torch.from_numpy(_parents(negated)),
            "neighbor_ids": neighbor_ids,
            "report_ids": report_ids,
            "image_ids": t.column("image_id").to_pylist(),
            "positions": torch.from_numpy(np.asarray(positions, np.int64).copy()),
            "group_ids": torch.from_numpy(t.column("group_id").to_numpy().astype(np.int64)),
            "neighbor_share": neighbor_share(report_ids, neighbor_ids),
        }


@functools.lru_cache(maxsize=8)
def _plan(shard_samples: tuple[int, ...], **kwargs: Any) -> EpochPlan:
    return make_plan(np.asarray(shard_samples, np.int64), **kwargs)


def _flat(t: pa.Table, name: str, dtype: type) -> np.ndarray:
    return pc.list_flatten(t.column(name)).to_numpy(zero_copy_only=False).astype(dtype)


def _parents(col: pa.ChunkedArray) -> np.ndarray:
    return pc.list_parent_indices(col).to_numpy(zero_copy_only=False).astype(np.int64)  # a copy: writable


def _matrix(t: pa.Table, name: str, n: int) -> np.ndarray:
    """A list<float32> column of equal lengths as (n, d) float32; nulls become NaN."""
    col = t.column(name)
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    if n and np.any(lengths != lengths[0]):
        raise ShardFormatError(
            f"column {name} has lists of lengths {sorted(set(lengths.tolist()))}; {_REBUILD}"
        )
    values = pc.fill_null(pc.list_flatten(col), np.nan).to_numpy(zero_copy_only=False)
    return np.array(values, np.float32).reshape(n, int(lengths[0]) if n else 0)


class _RowReader:
    """Reads the row groups the given batches need, lazily and in order of first need; frees each
    PNG once taken and each row group's small columns once all its pending rows are taken."""

    def __init__(self, index: ShardIndex, batches: Sequence[np.ndarray]) -> None:
        self.index = index
        self.offsets = index.offsets
        self.files: dict[int, tuple[pq.ParquetFile, np.ndarray]] = {}
        self.loaded: dict[tuple[int, int], tuple[pa.Table, dict[int, bytes]]] = {}
        self.pending: dict[tuple[int, int], int] = {}
        for batch in batches:
            for key in zip(*self._locate(batch)[:2], strict=True):
                self.pending[key] = self.pending.get(key, 0) + 1

    def _file(self, shard: int) -> tuple[pq.ParquetFile, np.ndarray]:
        if shard not in self.files:
            pf = self.index.open(shard)
            sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)]
            self.files[shard] = (pf, np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))
        return self.files[shard]

    def _locate(self, positions: np.ndarray) -> tuple[list[int], list[int], list[int]]:
        shards = np.searchsorted(self.offsets, positions, side="right") - 1
        rows = positions - self.offsets[shards]
        groups, local = [], []
        for shard, row in zip(shards.tolist(), rows.tolist(), strict=True):
            starts = self._file(shard)[1]
            g = int(np.searchsorted(starts, row, side="right") - 1)
            groups.append(g)
            local.append(row - int(starts[g]))
        return shards.tolist(), groups, local

    def _load(self, key: tuple[int, int]) -> tuple[pa.Table, dict[int, bytes]]:
        if key not in self.loaded:
            pf = self._file(key[0])[0]
            table = pf.read_row_group(key[1], columns=list(COLUMNS))
            pngs = dict(enumerate(table.column("image").to_pylist()))
            self.loaded[key] = (table.drop_columns(["image"]), pngs)
        return self.loaded[key]

    def take(self, positions: np.ndarray) -> tuple[pa.Table, list[bytes]]:
        """The rows at split indices ``positions`` as one table in that order, and their PNGs."""
        shards, groups, local = self._locate(positions)
        keys = list(zip(shards, groups, strict=True))
        pngs = [self._load(k)[1].pop(r) for k, r in zip(keys, local, strict=True)]
        pieces, order = [], []
        for key in dict.fromkeys(keys):
            idx = [i for i, k in enumerate(keys) if k == key]
            pieces.append(self.loaded[key][0].take([local[i] for i in idx]))
            order.extend(idx)
            self.pending[key] -= len(idx)
            if self.pending[key] == 0:
                del self.loaded[key]
        table = pa.concat_tables(pieces)
        inverse = np.empty(len(order), np.int64)
        inverse[np.asarray(order)] = np.arange(len(order))
        return table.take(inverse), pngs


def neighbor_share(report_ids: Sequence[str], neighbor_ids: Sequence[Sequence[str]]) -> float:
    """The fraction of samples with at least one of their neighbours' report ids in the batch
    (a neighbour equal to the sample's own report does not count). 0.0 for an empty batch."""
    present = set(report_ids)
    hits = sum(
        any(nb != own and nb in present for nb in nbs)
        for own, nbs in zip(report_ids, neighbor_ids, strict=True)
    )
    return hits / len(report_ids) if report_ids else 0.0


def held_neighbor_share(folder: str | os.PathLike) -> float:
    """The share the shards hold: ``neighbor_share`` with each neighbour group as its own batch,
    over the whole split (reads report_id, group_id and neighbor_ids only)."""
    index = ShardIndex.load(folder)
    hits = total = 0
    for shard in range(len(index.shards)):
        t = index.open(shard).read(columns=["report_id", "group_id", "neighbor_ids"])
        gids = t.column("group_id").to_numpy()
        reports, neighbors = t.column("report_id").to_pylist(), t.column("neighbor_ids").to_pylist()
        start = 0
        for size in group_runs(gids).tolist():
            hits += round(
                neighbor_share(reports[start : start + size], neighbors[start : start + size]) * size
            )
            total += size
            start += size
    return hits / total if total else 0.0


class TokenizingCollate:
    """DataLoader ``collate_fn`` for ready batches: tokenises ``text`` (and ``negated_reports``)
    with any transformers tokenizer, padding to the longest in the batch, truncating at
    ``max_length``. Adds input_ids, attention_mask (B, L) int64 and negated_input_ids,
    negated_attention_mask (M, L') int64; with ``node_texts=True`` also node_input_ids,
    node_attention_mask (N, L'') int64 from the entity texts, truncated at ``node_max_length``
    (entities are a few words; off by default, as only ``model.graph.use_text`` needs them).
    Runs in the worker processes."""

    def __init__(
        self,
        tokenizer: Any = None,
        *,
        max_length: int = 128,
        node_texts: bool = False,
        node_max_length: int = 16,
        negated: bool = True,
        max_negated: int = 0,
        seed: int = 0,
    ) -> None:
        self.tokenizer = tokenizer
        self.negated = negated  # False: negated reports are not tokenised (M = 0 tensors)
        self.max_negated = max_negated  # per sample; 0: all
        self.seed = seed
        self.max_length = max_length
        self.node_texts = node_texts
        self.node_max_length = node_max_length

    def _encode(self, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not texts:
            empty = torch.zeros((0, 0), dtype=torch.int64)
            return empty, empty.clone()
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return enc["input_ids"].to(torch.int64), enc["attention_mask"].to(torch.int64)

    def _cap_negated(self, batch: dict[str, Any]) -> None:
        """Keep at most ``max_negated`` negated reports per sample, drawn per (seed, epoch,
        sample): each epoch sees another of a report's variants, a resumed run the same ones."""
        owner = batch["negated_owner"].numpy()
        counts = np.bincount(owner, minlength=len(batch["text"])) if len(owner) else np.zeros(0, np.int64)
        if not len(owner) or counts.max() <= self.max_negated:
            return
        epoch = int(batch.get("state", {}).get("epoch", 0))
        keep = np.zeros(len(owner), bool)
        starts = np.concatenate([[0], np.cumsum(counts)])  # owners are grouped, in row order
        for row in np.flatnonzero(counts):
            n = int(counts[row])
            pick = np.arange(n)
            if n > self.max_negated:
                rng = np.random.default_rng([self.seed, epoch, int(batch["positions"][row])])
                pick = np.sort(rng.choice(n, self.max_negated, replace=False))
            keep[starts[row] + pick] = True
        batch["negated_reports"] = [t for t, k in zip(batch["negated_reports"], keep, strict=True) if k]
        batch["negated_owner"] = batch["negated_owner"][torch.from_numpy(keep)]

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        if self.negated and self.max_negated > 0:
            self._cap_negated(batch)
        if self.tokenizer is not None:
            batch["input_ids"], batch["attention_mask"] = self._encode(batch["text"], self.max_length)
            batch["negated_input_ids"], batch["negated_attention_mask"] = self._encode(
                batch["negated_reports"] if self.negated else [], self.max_length
            )
            if self.node_texts:
                batch["node_input_ids"], batch["node_attention_mask"] = self._encode(
                    batch["node_texts"], self.node_max_length
                )
        return batch


def make_loader(
    dataset: ShardDataset,
    *,
    tokenizer: Any = None,
    max_length: int = 128,
    pin_memory: bool = False,
    persistent_workers: bool = False,
    prefetch_factor: int | None = None,
    multiprocessing_context: str | None = None,
    node_texts: bool = False,
    negated: bool = True,
    max_negated: int = 0,
) -> DataLoader:
    """A DataLoader over ``dataset`` with its worker count and the tokenising collate
    (``node_texts``: also tokenise the entity texts; see ``TokenizingCollate``)."""
    workers = dataset.num_workers
    return DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        collate_fn=TokenizingCollate(
            tokenizer,
            max_length=max_length,
            node_texts=node_texts,
            negated=negated,
            max_negated=max_negated,
            seed=dataset.config.seed,
        ),
        pin_memory=pin_memory,
        persistent_workers=persistent_workers and workers > 0,
        prefetch_factor=prefetch_factor if workers > 0 else None,
        multiprocessing_context=multiprocessing_context if workers > 0 else None,
    )
