"""Trainer step cost on CPU: samples/s, peak RSS, the loader's share of step time, and what each
loss term (soft labels, negatives, GCN + graph alignment) adds to a plain-CLIP step.

    .venv/bin/python bench/train.py [configs=tiny,r50] [presets=clip,dt,dtc,n,g,full]
        [e2e_presets=...] [steps=6] [warmup=2] [workers=1] [repeats=N] [threads=1]
        [attribution=true] [end_to_end=true] [samples=1200] [shards=DIR] [keep=false]

Two configurations (model and data keys of pipeline.train.config):

* ``tiny``: ResNet-18 width 16, the tiny BERT (hidden 64, 2 layers, 2 heads), 64 px, batch 32;
* ``r50``: ResNet-50 width 64, a small BERT-ish text tower (random init, hidden 256, 4 layers,
  4 heads, intermediate 1024), 224 px, batch 16.

Data: synthetic full-size shards (bench/train_synthetic.py: 256-px PNGs, 70-140-token reports,
1-2 negated reports, 10-20-node graphs, 125-d clinical vectors), or ``shards=`` a run's shards
folder (holding train/). Two measurements per configuration:

1. **End to end**: ``python -m pipeline.train preset=P max_steps=steps`` for each preset (one
   process each, same seed, so the same initial weights and the same batches), read from its
   metrics.jsonl after ``warmup`` steps: median step time and samples/s, the loader's share of
   step time (``data_wait``), and the peak RSS of the trainer and its loader workers
   (``data.workers``, default 1). ``e2e_presets`` defaults to every preset for ``tiny`` and to
   ``clip,full`` for ``r50`` (a ResNet-50 step takes 6-8 s on 2 cores; the attribution covers
   every preset), which keeps the default run under ~10 minutes.
2. **Attribution**: in this process, ``repeats`` rounds (default 5 for tiny, 3 for r50) after a
   warm-up step, the presets interleaved: forward, loss and backward of one fixed batch on one
   model, per preset, and the forward per tower, in this process's CPU time with ``threads``
   torch threads (default 1, so that the figures are the work done even on a machine other jobs
   load), the best of the rounds (interference only ever adds time), with the median and the
   wall time beside it. As in the trainer, the towers no loss term uses (negated reports without
   negatives, the graph without lambda_g) are skipped.

Each preset is printed as % over ``clip``. The issue's target: ``full`` (soft labels, negatives
and GCN together) adds at most 25% to a plain-CLIP step. Prints figures, asserts nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import suppress
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from _common import mib, print_figures  # noqa: E402
from train_synthetic import write_synthetic_shards  # noqa: E402

CONFIGS: dict[str, list[str]] = {
    "tiny": [
        "model.image.arch=resnet18",
        "model.image.width=16",
        "model.text.path=tiny",
        "model.text.tiny_hidden=64",
        "model.text.tiny_layers=2",
        "model.text.tiny_heads=2",
        "data.resolution=64",
        "data.batch_size=32",
    ],
    "r50": [
        "model.image.arch=resnet50",
        "model.image.width=64",
        "model.text.path=tiny",
        "model.text.tiny_hidden=256",
        "model.text.tiny_layers=4",
        "model.text.tiny_heads=4",
        "data.resolution=224",
        "data.batch_size=16",
    ],
}
COMMON = ["seed=0", "progress=false", "checkpoint_every=1000000", "optim.warmup_steps=10"]


class TreeRSS:
    """Peak of the summed RSS of process ``pid`` and its descendants, sampled every 50 ms."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with suppress(psutil.Error):
                rss = self.proc.memory_info().rss
                for child in self.proc.children(recursive=True):
                    with suppress(psutil.Error):
                        rss += child.memory_info().rss
                self.peak = max(self.peak, rss)
            time.sleep(0.05)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def end_to_end(
    name: str, preset: str, shards: Path, out: Path, *, steps: int, warmup: int, workers: int
) -> dict[str, float]:
    """One trainer run of ``steps`` steps; figures of the steps after ``warmup``."""
    args = [
        f"data.shards={shards}",
        f"out={out}",
        f"preset={preset}",
        f"max_steps={steps}",
        f"data.workers={workers}",
        *CONFIGS[name],
        *COMMON,
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CLIP2CLINIC_LOG_LEVEL": "WARNING"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.train", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    rss = TreeRSS(proc.pid)
    stdout, stderr = proc.communicate()
    peak = rss.stop()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(
            f"trainer failed ({name}, preset={preset}, exit {proc.returncode}):\n"
            f"python -m pipeline.train {' '.join(args)}\n{stdout[-2000:]}{stderr[-6000:]}"
        )
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    kept = lines[warmup:]
    step_s = [m["batch_size"] / m["samples_per_s"] for m in kept]
    return {
        "step_s": statistics.median(step_s),
        "samples_per_s": statistics.median(m["samples_per_s"] for m in kept),
        "data_wait": statistics.median(m["data_wait"] for m in kept),
        "data_wait_mean": statistics.fmean(m["data_wait"] for m in kept),
        "negatives": statistics.fmean(m["negatives"] for m in kept),
        "rss": peak,
        "wall": wall,
        "measured": len(kept),
    }


def attribution(
    name: str, presets: list[str], shards: Path, work: Path, *, repeats: int, threads: int
) -> dict:
    """Forward / loss / backward of one batch per preset, on one model: medians over ``repeats``
    rounds (presets interleaved) of this process's CPU time, with ``threads`` torch threads (1:
    CPU time is then the work done, whatever else loads the machine), and of wall time."""
    import torch

    from pipeline.train.augment import AugmentConfig
    from pipeline.train.config import TrainConfig, apply_overrides, resolve
    from pipeline.train.data import ReaderConfig, ShardDataset, make_loader
    from pipeline.train.dist import Dist
    from pipeline.train.loop import concept_count, split_texts
    from pipeline.train.loss import compute, uses_graph
    from pipeline.train.model import CLIPModel, build_text_tower

    base = apply_overrides(TrainConfig(), [*CONFIGS[name], *COMMON])
    configs = {p: resolve(apply_overrides(base, [f"preset={p}"])) for p in presets}
    c = base
    reader = ReaderConfig(
        batch_size=c.data.batch_size,
        seed=c.seed,
        remainder="drop",
        augment=AugmentConfig(resolution=c.data.resolution, channels=c.data.channels, train=True),
    )
    dataset = ShardDataset(shards / c.data.split, reader, rank=0, world_size=1, num_workers=0)
    text, tokenizer = build_text_tower(
        c.model.text, tokenizer_dir=work / f"tokenizer-{name}", texts=split_texts(dataset.index)
    )
    torch.manual_seed(c.seed)
    model = CLIPModel(c.model, text=text, concepts=concept_count(dataset.index), channels=c.data.channels)
    model.train()
    batch = next(iter(make_loader(dataset, tokenizer=tokenizer, max_length=c.model.text.max_length)))
    dist = Dist()
    rows = list(presets)
    cpu: dict[str, list[tuple[float, float, float]]] = {p: [] for p in rows}
    wall: dict[str, list[float]] = {p: [] for p in rows}
    towers: dict[str, list[float]] = {k: [] for k in ("image", "text", "negated", "graph")}

    def one(preset: str) -> tuple[tuple[float, float, float], float]:
        cfg = configs[preset]
        model.zero_grad(set_to_none=True)
        w0, t0 = time.perf_counter(), time.process_time()
        # As the trainer does: towers no loss term uses (negated reports, graph) are skipped.
        out = model(batch, graph=uses_graph(cfg.loss), negated=bool(cfg.loss.negatives))
        t1 = time.process_time()
        result = compute(out, batch, cfg.loss, dist)
        t2 = time.process_time()
        result.loss.backward()
        t3 = time.process_time()
        return (t1 - t0, t2 - t1, t3 - t2), time.perf_counter() - w0

    def tower_forward() -> dict[str, float]:
        parts = {
            "image": lambda: model.encode_image(batch["image"]),
            "text": lambda: model.encode_text(batch["input_ids"], batch["attention_mask"]),
            "negated": lambda: model.encode_text(batch["negated_input_ids"], batch["negated_attention_mask"]),
            "graph": lambda: model.encode_graph(batch),
        }
        got = {}
        for key, fn in parts.items():
            t0 = time.process_time()
            fn()
            got[key] = time.process_time() - t0
        return got

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        one("full" if "full" in rows else rows[0])  # warm-up: allocator, oneDNN primitives
        for _ in range(repeats):
            for p in rows:
                split, w = one(p)
                cpu[p].append(split)
                wall[p].append(w)
            for key, value in tower_forward().items():
                towers[key].append(value)
    finally:
        torch.set_num_threads(before)
    # The minimum: interference (other jobs, a busy sibling hyperthread) only ever adds time.
    return {
        "split": {p: min(cpu[p], key=sum) for p in rows},
        "cpu": {p: min(sum(t) for t in cpu[p]) for p in rows},
        "cpu_median": {p: statistics.median(sum(t) for t in cpu[p]) for p in rows},
        "wall": {p: min(wall[p]) for p in rows},
        "towers": {k: min(v) for k, v in towers.items()},
        "batch": int(batch["image"].shape[0]),
        "tokens": (tuple(batch["input_ids"].shape), tuple(batch["negated_input_ids"].shape)),
        "nodes": int(batch["node_batch"].shape[0]),
    }


def pct(x: float, base: float) -> str:
    return f"{100 * (x / base - 1):+.1f}%"


def main(argv: list[str]) -> None:
    args = dict(a.split("=", 1) for a in argv)
    configs = args.get("configs", "tiny,r50").split(",")
    presets = args.get("presets", "clip,dt,dtc,n,g,full").split(",")
    steps, warmup = int(args.get("steps", 6)), int(args.get("warmup", 2))
    workers = int(args.get("workers", 1))
    repeats_arg = args.get("repeats")
    threads = int(args.get("threads", 1))
    do_e2e = args.get("end_to_end", "true") == "true"
    do_attr = args.get("attribution", "true") == "true"
    samples = int(args.get("samples", 1200))
    work = Path(args.get("dir") or tempfile.mkdtemp(prefix="bench-train-"))
    started = time.perf_counter()
    try:
        if "shards" in args:
            shards = Path(args["shards"])
            gen_row = ("shards", str(shards))
        else:
            t0 = time.perf_counter()
            write_synthetic_shards(work / "shards", samples, workers=os.cpu_count())
            shards = work / "shards"
            gen_row = (
                f"synthetic shards ({samples:,} samples, 256-px PNGs) written",
                f"{time.perf_counter() - t0:.1f} s",
            )
        for name in configs:
            rows: list[tuple[str, str]] = [gen_row, ("overrides", " ".join(CONFIGS[name]))]
            e2e: dict[str, dict[str, float]] = {}
            chosen = args.get("e2e_presets")
            chosen = chosen.split(",") if chosen else (presets if name == "tiny" else ["clip", "full"])
            if do_e2e:
                for preset in chosen:
                    e2e[preset] = end_to_end(
                        name,
                        preset,
                        shards,
                        work / f"{name}-{preset}",
                        steps=steps,
                        warmup=warmup,
                        workers=workers,
                    )
                rows.append(
                    (
                        "end to end: python -m pipeline.train",
                        f"{steps} steps, {warmup} warm-up, data.workers={workers}, medians",
                    )
                )
                base = e2e.get("clip", {}).get("step_s")
                for preset, m in e2e.items():
                    over = f" | {pct(m['step_s'], base)} vs clip" if base and preset != "clip" else ""
                    rows.append(
                        (
                            f"{preset}: step | samples/s",
                            f"{1e3 * m['step_s']:,.0f} ms | {m['samples_per_s']:,.1f}{over}",
                        )
                    )
                    rows.append(
                        (
                            f"{preset}: data_wait median (mean) | peak RSS | run wall",
                            f"{100 * m['data_wait']:.1f}% ({100 * m['data_wait_mean']:.1f}%) | {mib(m['rss'])} | {m['wall']:.0f} s",
                        )
                    )
            if do_attr:
                repeats = int(repeats_arg) if repeats_arg else (5 if name == "tiny" else 3)
                a = attribution(name, presets, shards, work, repeats=repeats, threads=threads)
                (ids, neg) = a["tokens"]
                rows.append(
                    (
                        "attribution: one batch, in process",
                        f"B={a['batch']}, texts {ids[0]}x{ids[1]} tokens, {neg[0]} negated x{neg[1]}, "
                        f"{a['nodes']} graph nodes; {threads} thread(s); CPU time, best of {repeats}",
                    )
                )
                tw = a["towers"]
                rows.append(
                    (
                        "forward per tower: image | text | negated | graph",
                        " | ".join(f"{1e3 * tw[k]:,.0f} ms" for k in ("image", "text", "negated", "graph")),
                    )
                )
                cpu, wall, med = a["cpu"], a["wall"], a["cpu_median"]
                base = cpu.get("clip")
                for preset, (f, lo, b) in a["split"].items():
                    over = f" | {pct(cpu[preset], base)} vs clip" if base and preset != "clip" else ""
                    rows.append(
                        (
                            f"{preset}: forward + loss + backward = best (median, wall)",
                            f"{1e3 * f:,.0f} + {1e3 * lo:,.1f} + {1e3 * b:,.0f} = {1e3 * cpu[preset]:,.0f} ms "
                            f"({1e3 * med[preset]:,.0f}, {1e3 * wall[preset]:,.0f}){over}",
                        )
                    )
                if base and "full" in cpu:
                    verdict = "meets" if cpu["full"] <= 1.25 * base else "misses"
                    rows.append(
                        ("target: full <= clip + 25% (attribution)", f"{pct(cpu['full'], base)}: {verdict}")
                    )
            if do_e2e and "clip" in e2e and "full" in e2e:
                over = e2e["full"]["step_s"] / e2e["clip"]["step_s"] - 1
                verdict = "meets" if over <= 0.25 else "misses"
                rows.append(("target: full <= clip + 25% (end to end)", f"{100 * over:+.1f}%: {verdict}"))
            load = os.getloadavg()
            rows.append(
                ("cores | load average (1, 5 min) at end", f"{os.cpu_count()} | {load[0]:.1f}, {load[1]:.1f}")
            )
            rows.append(("bench wall so far", f"{time.perf_counter() - started:.0f} s"))
            print_figures(f"pipeline.train step cost, {name}", rows)
    finally:
        if args.get("keep") != "true":
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
