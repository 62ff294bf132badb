"""The training loop, top to bottom: setup, resume, epochs of micro-batches, steps, checkpoints.

One function, :func:`train`, runs the same on one process and under torchrun (any number of
ranks and nodes): every rank builds the same model from the same seed, reads its own part of each
epoch from the shard reader, and computes the loss on the global batch (see ``loss``). Rank 0
writes ``config.json``, ``metrics.jsonl``, checkpoints and ``summary.json``.

Exact resume: a checkpoint is taken at an optimizer-step boundary and holds every rank's RNG
states and reader position; the DataLoader seeds its workers from its own generator (not the
global RNG), augmentation is seeded per sample, and ``metrics.jsonl`` is cut back to the
checkpoint's step, so a resumed run continues bit for bit where the interrupted one stopped (on
CPU with ``deterministic=true``; CUDA kernels are not all deterministic).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from pipeline.train import checkpoint as ckpt
from pipeline.train.augment import AugmentConfig
from pipeline.train.config import ConfigError, TrainConfig, identity, resolve, to_dict
from pipeline.train.data import ReaderConfig, ShardDataset, ShardFormatError, ShardIndex, make_loader
from pipeline.train.dist import (
    Dist,
    all_reduce_sum,
    barrier,
    broadcast_object,
    gather_objects,
    setup,
    teardown,
)
from pipeline.train.loss import compute, uses_graph
from pipeline.train.model import CLIPModel, build_text_tower

log = logging.getLogger(__name__)

METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CONFIG = "config.json"


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class TooManyBadSamples(RuntimeError):
    """More undecodable samples than ``max_bad_samples`` allows."""


def train(config: TrainConfig) -> dict[str, Any]:
    """Train as ``config`` says; returns the summary (also written to ``out/summary.json``).

    Raises ConfigError (bad settings, a foreign run in ``out``), ShardFormatError (unreadable
    shards), NonFiniteLoss, TooManyBadSamples.
    """
    config = resolve(config)
    if not config.out:
        raise ConfigError("out is not set: give out=FOLDER (the training folder)")
    if not config.data.shards:
        raise ConfigError("data.shards is not set: give data.shards=RUN/shards (the shards stage's folder)")
    dist = setup(config.device)
    try:
        return _Trainer(config, dist).run()
    finally:
        teardown(dist)


# -- setup helpers ------------------------------------------------------------------------------


def _read_column(path: Path, column: str) -> Any:
    """One column of a Parquet file. ``ParquetFile``, not ``pq.read_table``: the latter imports
    pyarrow.dataset (most of a second at every trainer start)."""
    with pq.ParquetFile(path) as pf:
        return pf.read(columns=[column]).column(column)


def split_texts(index: ShardIndex) -> list[str]:
    """Every training text of a split (the tiny tokenizer is trained on them)."""
    texts: list[str] = []
    for shard in index.shards:
        texts.extend(_read_column(index.folder / shard.file, "text").to_pylist())
    return texts


def concept_count(index: ShardIndex) -> int:
    """1 + the largest concept id in a split's graphs (at least 1)."""
    top = -1
    for shard in index.shards:
        col = _read_column(index.folder / shard.file, "node_concept_ids")
        values = col.combine_chunks().flatten().to_numpy(zero_copy_only=False)
        if len(values):
            top = max(top, int(values.max()))
    return top + 1 if top >= 0 else 1


def lr_factor(step: int, *, warmup: int, total: int, floor: float) -> float:
    """Linear warm-up to 1 over ``warmup`` steps, then a cosine down to ``floor`` at ``total``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    non_blocking = device.type == "cuda"
    return {
        k: v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }


def _metrics_cut(path: Path, step: int) -> None:
    """Keep the lines of ``metrics.jsonl`` up to ``step``: an interrupted run may have logged past
    its last checkpoint, and the resumed run logs those steps again."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line torn by a kill mid-write
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(f"{line}\n" for line in kept))
    os.replace(tmp, path)


class _Stop:
    """SIGTERM/SIGINT: finish the step, checkpoint, exit (a scheduler's preemption)."""

    def __init__(self) -> None:
        self.signal = 0
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Stop:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread (a Dask worker): no handler
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signum

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


# -- the trainer --------------------------------------------------------------------------------


class _Trainer:
    def __init__(self, config: TrainConfig, dist: Dist) -> None:
        self.config = config
        self.dist = dist
        self.out = Path(config.out)
        self.ckpt_dir = self.out / "checkpoints"
        # Forked loader workers each start a tokenizer thread pool the size of the machine.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.device = dist.device
        cuda = self.device.type == "cuda"
        precision = config.precision if config.precision != "auto" else ("bf16" if cuda else "fp32")
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.precision = precision
        if config.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        elif cuda:
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

    # -- building ---------------------------------------------------------------------------
    def _resume_from(self) -> Path | None:
        c = self.config
        if c.resume == "none":
            return None
        if c.resume not in ("auto", "latest"):
            path = Path(c.resume)
            if not path.is_file():
                raise ConfigError(f"resume={c.resume}: no such checkpoint file")
            return path
        found = ckpt.latest_entry(self.ckpt_dir)
        if found is None:
            if c.resume == "latest":
                raise ConfigError(f"resume=latest but {self.ckpt_dir} has no checkpoint; use resume=auto")
            return None
        if found["identity"] != identity(c):
            raise ConfigError(
                f"{self.out} holds a run of another config (its config.json); give another out=, "
                "or resume=none to train afresh over it"
            )
        return self.ckpt_dir / found["file"]

    def _build(self) -> None:
        c, dist = self.config, self.dist
        shards = Path(c.data.shards) / c.data.split
        self.index = ShardIndex.load(shards)
        resume = self._resume_from() if dist.main else None
        resume = broadcast_object(None if resume is None else str(resume), dist)
        self.resume_path = Path(resume) if resume else None
        if dist.main and self.resume_path is None:  # a fresh start: clear what an old run left
            self.out.mkdir(parents=True, exist_ok=True)
            for old in [
                *self.ckpt_dir.glob("step-*.pt"),
                self.ckpt_dir / ckpt.LATEST,
                self.ckpt_dir / ckpt.INDEX,
                self.out / SUMMARY,
            ]:
                old.unlink(missing_ok=True)
            (self.out / METRICS).unlink(missing_ok=True)
            shutil.rmtree(self.out / "tokenizer", ignore_errors=True)  # trained on other texts
        tokenizer_dir = self.out / "tokenizer"
        concepts = c.model.graph.concepts or (concept_count(self.index) if dist.main else 0)
        self.concepts = int(broadcast_object(concepts, dist))
        # The same initial weights on every rank and in every run (DDP also broadcasts rank 0's).
        torch.manual_seed(c.seed)
        if dist.main:
            texts = split_texts(self.index) if c.model.text.path == "tiny" else None
            text, self.tokenizer = build_text_tower(c.model.text, tokenizer_dir=tokenizer_dir, texts=texts)
        barrier(dist)  # rank 0 has trained and saved the tokenizer
        if not dist.main:
            text, self.tokenizer = build_text_tower(c.model.text, tokenizer_dir=tokenizer_dir, texts=None)
        model = CLIPModel(c.model, text=text, concepts=self.concepts, channels=c.data.channels)
        torch.manual_seed(c.seed + 1000 * (dist.rank + 1))  # each rank its own dropout stream
        self.graph = uses_graph(c.loss)
        # Parameters no loss reaches (the graph tower without lambda_g, a text model's pooler)
        # must not wait for gradients under DDP.
        for name, p in model.named_parameters():
            if (not self.graph and name.startswith("graph")) or ".pooler." in name:
                p.requires_grad_(False)
        self.model = model.to(self.device)
        self.ddp: torch.nn.Module = self.model
        if dist.enabled:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[dist.local_rank] if self.device.type == "cuda" else None
            )
        no_decay = set(self.model.no_weight_decay_names())
        decay, plain = [], []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                (plain if name in no_decay else decay).append(p)
        o = c.optim
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": o.weight_decay}, {"params": plain, "weight_decay": 0.0}],
            lr=o.lr,
            betas=(o.beta1, o.beta2),
            eps=o.eps,
            fused=self.device.type == "cuda",
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        reader = ReaderConfig(
            batch_size=c.data.batch_size,
            seed=c.seed,
            shuffle_buffer=c.data.shuffle_buffer,
            remainder="drop",  # full, equal batches on every rank: the global batch lines up
            augment=AugmentConfig(
                resolution=c.data.resolution, channels=c.data.channels, train=c.data.augment
            ),
        )
        try:
            self.dataset = ShardDataset(
                shards, reader, rank=dist.rank, world_size=dist.world_size, num_workers=c.data.workers
            )
        except ValueError as exc:  # fewer shards than ranks, a bad rank: the fix is in the message
            if isinstance(exc, ShardFormatError):
                raise
            raise ConfigError(str(exc)) from exc
        self.loader = make_loader(
            self.dataset,
            tokenizer=self.tokenizer,
            max_length=c.model.text.max_length,
            pin_memory=self.device.type == "cuda",
            persistent_workers=True,
            prefetch_factor=c.data.prefetch,
            node_texts=c.model.graph.use_text,
            negated=bool(c.loss.negatives),
            max_negated=c.loss.negatives_per_sample,
        )
        # DataLoader draws its workers' base seed from the global RNG unless it has a generator:
        # its own keeps the global stream (dropout) the same in a resumed run.
        self.loader.generator = torch.Generator().manual_seed(c.seed)
        self.steps_per_epoch = [
            int(self.dataset.plan(e).steps[dist.rank]) // o.accum_steps for e in range(c.epochs)
        ]
        if min(self.steps_per_epoch, default=0) < 1:
            raise ConfigError(
                f"{shards} holds {self.index.samples} samples: not one step of "
                f"{dist.world_size} x {c.data.batch_size} x {o.accum_steps} per epoch; lower data.batch_size"
            )
        self.total_steps = c.max_steps or sum(self.steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_factor(s, warmup=o.warmup_steps, total=self.total_steps, floor=o.min_lr_ratio),
        )

    def _epoch_steps(self, epoch: int) -> int:
        if epoch < len(self.steps_per_epoch):
            return self.steps_per_epoch[epoch]
        return int(self.dataset.plan(epoch).steps[self.dist.rank]) // self.config.optim.accum_steps

    # -- state ------------------------------------------------------------------------------
    def _payload(self, reader_state: dict[str, Any]) -> dict[str, Any] | None:
        """The checkpoint payload (on rank 0; None elsewhere). Every rank must call this."""
        rngs = gather_objects(ckpt.rng_state(self.device), self.dist)
        readers = gather_objects(reader_state, self.dist)
        if not self.dist.main:
            return None
        return {
            "step": self.step,
            "epoch": self.epoch,
            "samples": self.samples,
            "bad_samples": self.bad,
            "config": to_dict(self.config),
            "identity": identity(self.config),
            "concepts": self.concepts,
            "world_size": self.dist.world_size,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rngs,
            "reader": readers,
        }

    def _save(self, reader_state: dict[str, Any]) -> None:
        payload = self._payload(reader_state)
        if payload is not None:
            ckpt.save(self.ckpt_dir, self.step, payload, keep_last=self.config.keep_last)
        self.last_saved = self.step
        barrier(self.dist)

    def _restore(self, path: Path) -> None:
        data = ckpt.load(path, map_location="cpu")
        if data["world_size"] != self.dist.world_size:
            raise ConfigError(
                f"{path} was written by {data['world_size']} processes; resume with the same number "
                f"(this run has {self.dist.world_size})"
            )
        try:
            self.model.load_weights(data["model"], source=str(path))
        except ValueError as exc:
            raise ConfigError(f"cannot resume: {exc}") from exc
        self.optimizer.load_state_dict(data["optimizer"])
        self.scheduler.load_state_dict(data["scheduler"])
        self.scaler.load_state_dict(data["scaler"])
        self.step, self.epoch, self.samples = int(data["step"]), int(data["epoch"]), int(data["samples"])
        self.bad = int(data["bad_samples"])
        try:
            self.dataset.load_state_dict(data["reader"][self.dist.rank])
        except ValueError as exc:
            raise ConfigError(f"cannot resume from {path}: {exc}") from exc
        ckpt.set_rng_state(data["rng"][self.dist.rank], self.device)
        self.last_saved = self.step
        if self.dist.main:
            _metrics_cut(self.out / METRICS, self.step)
        log.info("resumed from %s at step %d (epoch %d)", path, self.step, self.epoch)

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        self._build()
        c, dist = self.config, self.dist
        self.step = self.epoch = self.samples = self.bad = 0
        self.last_saved = -1
        self.last_state: dict[str, Any] = {}  # the reader position after the last step's batch
        self.signalled = 0
        if self.resume_path is not None:
            self._restore(self.resume_path)
        else:
            self.dataset.set_epoch(0)
        if dist.main:
            ckpt.write_json(
                self.out / CONFIG,
                {
                    "config": to_dict(c),
                    "identity": identity(c),
                    "concepts": self.concepts,
                    "world_size": dist.world_size,
                    "total_steps": self.total_steps,
                },
            )
        metrics = open(self.out / METRICS, "a") if dist.main else None  # noqa: SIM115 - closed below
        bar = self._progress_bar()
        stopped_by = ""
        start_step = self.step
        try:
            with _Stop() as stop:
                while self.step < self.total_steps and (c.max_steps or self.epoch < c.epochs):
                    state = self._run_epoch(metrics, bar, stop, start_step)
                    if state == "stop":
                        stopped_by = "signal" if self.signalled else "stop_after"
                        break
                    if state == "limit":  # max_steps within an epoch: it is not finished
                        break
                    self.epoch += 1
                    self.dataset.set_epoch(self.epoch)
                    if self.step < self.total_steps and self.last_saved != self.step:
                        self._save(self.dataset.state_dict())
                if self.last_saved != self.step:
                    self._save(self.last_state or self.dataset.state_dict())
        finally:
            if metrics is not None:
                metrics.close()
            if bar is not None:
                bar.close()
        summary = self._summary(time.perf_counter() - started, complete=not stopped_by)
        if stopped_by == "signal":
            sys.exit(128 + (stop.signal or signal.SIGTERM))
        return summary

    def _run_epoch(self, metrics: Any, bar: Any, stop: _Stop, start_step: int) -> str:
        c, dist = self.config, self.dist
        accum = c.optim.accum_steps
        steps = self._epoch_steps(self.epoch)
        done_in_epoch = int(self.dataset.state_dict()["batches"]) // accum
        if done_in_epoch >= steps:
            return "done"
        self.ddp.train()
        micro: list[dict[str, float]] = []
        wait = 0.0
        tick = time.perf_counter()
        batch_samples = negatives = 0
        bad = 0
        last_state: dict[str, Any] = {}
        it = iter(self.loader)
        while True:
            t0 = time.perf_counter()
            batch = next(it, None)
            wait += time.perf_counter() - t0
            if batch is None:
                break
            last_state = batch["state"]
            bad += int(batch.get("bad_samples", 0))
            batch = _to(batch, self.device)
            sync = len(micro) == accum - 1 or not dist.enabled
            with contextlib.nullcontext() if sync else self.ddp.no_sync():
                with torch.autocast(
                    self.device.type,
                    dtype=self.amp_dtype or torch.float32,
                    enabled=self.amp_dtype is not None,
                ):
                    out = self.ddp(batch, graph=self.graph, negated=bool(c.loss.negatives))
                result = compute(out, batch, c.loss, dist)
                if not math.isfinite(result.terms["loss"]):
                    raise NonFiniteLoss(
                        f"the loss is {result.terms['loss']} at step {self.step + 1} (terms {result.terms}); "
                        f"the last good checkpoint ({self.last_saved}) is kept. Lower optim.lr, raise "
                        "optim.warmup_steps, or use precision=fp32 to find the cause"
                    )
                self.scaler.scale(result.loss / accum).backward()
            micro.append(result.terms)
            batch_samples += result.batch_size
            negatives += result.negatives
            if len(micro) < accum:
                continue
            self.scaler.unscale_(self.optimizer)
            params = [p for p in self.model.parameters() if p.requires_grad]
            if c.optim.grad_clip > 0:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, c.optim.grad_clip))
            else:
                grad_norm = float(
                    torch.linalg.vector_norm(
                        torch.stack([p.grad.norm() for p in params if p.grad is not None])
                    )
                )
            if not math.isfinite(grad_norm) and not self.scaler.is_enabled():
                # fp16's scaler skips such a step itself; otherwise it would poison the weights
                self.optimizer.zero_grad(set_to_none=True)
                raise NonFiniteLoss(
                    f"the gradient norm is {grad_norm} at step {self.step + 1}; the last good checkpoint "
                    f"({self.last_saved}) is kept. Lower optim.lr, raise optim.warmup_steps, or use precision=fp32"
                )
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            self.model.clamp_logit_scale_()
            self.step += 1
            self.samples += batch_samples
            total_bad = int(all_reduce_sum(torch.tensor([bad], device=self.device), dist).item())
            self.bad += total_bad
            now = time.perf_counter()
            if self.step % c.log_every == 0 and metrics is not None:
                line = self._metrics_line(micro, grad_norm, now - tick, wait, batch_samples, negatives)
                metrics.write(json.dumps(line) + "\n")
                metrics.flush()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean([m['loss'] for m in micro]):.4f}", refresh=False)
            if self.bad > max(8, c.max_bad_samples * self.samples):
                raise TooManyBadSamples(
                    f"{self.bad} of {self.samples} samples could not be decoded (max_bad_samples="
                    f"{c.max_bad_samples}); rebuild the images and shards stages"
                )
            micro, wait, batch_samples, negatives, bad = [], 0.0, 0, 0, 0
            tick = now
            signalled = int(all_reduce_sum(torch.tensor([stop.signal], device=self.device), dist).item())
            self.signalled = signalled
            self.last_state = last_state
            halt = signalled or (c.stop_after and self.step - start_step >= c.stop_after)
            if self.step % c.checkpoint_every == 0 or halt:
                self._save(last_state)
            if halt:
                return "stop"
            done_in_epoch += 1
            if self.step >= self.total_steps:
                return "done" if done_in_epoch >= steps else "limit"
            if done_in_epoch >= steps:
                break
        return "done"

    def _metrics_line(
        self,
        micro: list[dict[str, float]],
        grad_norm: float,
        seconds: float,
        wait: float,
        samples: int,
        negatives: int,
    ) -> dict[str, Any]:
        keys = ("loss", "loss_i2t", "loss_t2i", "loss_graph_image", "loss_graph_text")
        line: dict[str, Any] = {"step": self.step, "epoch": self.epoch, "samples": self.samples}
        for key in keys:
            values = [m[key] for m in micro if key in m]
            line[key] = float(np.mean(values)) if values else None
        scale = float(self.model.scale().detach())
        line.update(
            lr=self.scheduler.get_last_lr()[0],
            temperature=1.0 / scale,
            grad_norm=grad_norm,
            samples_per_s=samples / seconds if seconds > 0 else None,
            data_wait=wait / seconds if seconds > 0 else None,
            gpu_memory_mb=torch.cuda.max_memory_allocated() / 2**20 if self.device.type == "cuda" else None,
            bad_samples=self.bad,
            negatives=negatives,
            batch_size=samples,
        )
        return line

    def _progress_bar(self) -> Any:
        if not (self.dist.main and self.config.progress):
            return None
        try:
            from tqdm.auto import tqdm  # installed with transformers; optional all the same
        except ImportError:
            return None
        return tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step", file=sys.stderr)

    def _summary(self, seconds: float, *, complete: bool) -> dict[str, Any]:
        if not self.dist.main:
            return {}
        entries = [
            {k: v for k, v in e.items() if k != "identity"} | {"file": f"checkpoints/{e['file']}"}
            for e in ckpt.entries(self.ckpt_dir)
        ]
        summary = {
            "complete": complete,
            "steps": self.step,
            "total_steps": self.total_steps,
            "epochs": self.epoch,
            "samples": self.samples,
            "bad_samples": self.bad,
            "final": f"checkpoints/{ckpt.step_file(self.step)}",
            "checkpoints": entries,
            "world_size": self.dist.world_size,
            "device": str(self.device),
            "precision": self.precision,
            "seconds": round(seconds, 3),
            "pid": os.getpid(),
        }
        ckpt.write_json(self.out / SUMMARY, summary)
        return summary
