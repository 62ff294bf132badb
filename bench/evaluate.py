"""Cost of scoring one checkpoint on a test split (pipeline.train.evaluate), in total and per part.

    .venv/bin/python bench/evaluate.py [samples=5000] [bootstrap=1000] [batch=64] [threads=N]
        [arch=resnet50] [width=64] [text=minilm] [resolution=224] [embed=512] [probes=2]
        [align=1] [align_report=text] [device=cpu] [shards=DIR] [checkpoint=PATH] [dir=DIR]
        [keep=false]

What it does:

1. **Shards.** Synthetic full-size shards (bench/train_synthetic.py: 256-px 8-bit PNGs, reports
   of 70-140 tokens, the shards stage's columns, 14 labels of 1 / 0 / -1 / blank, 1-2 images per
   report) with a ``test`` split of ``samples`` images and a 64-sample ``train`` split for the
   trainer. ``shards=DIR`` uses a run's shards folder instead (holding ``test/``; ``train/`` too
   unless ``checkpoint=`` is given).
2. **Checkpoint.** ``python -m pipeline.train preset=clip max_steps=1`` (batch 8, data.workers=0)
   with ``model.image.arch=arch``, ``model.image.width=width``, ``model.text.path=text``,
   ``data.resolution=resolution``, ``model.embed_dim=embed``: the real trainer's checkpoint of
   that architecture (weights one step from their initialisation, which costs the same to score
   as trained ones). ``checkpoint=PATH`` scores an existing checkpoint (or training folder).
3. **Evaluation**, timed in this process: :func:`read_test_set`; :func:`load_model`; CXR-Align
   items (``align`` rows per test report, each denying another of its sentences: ``negation`` the
   report with that sentence denied, ``omitted`` without it; ``report`` the shards' text, or with
   ``align_report=sentences`` the sentences without section headers, as the hardneg stage builds
   it, which is one more distinct text per report) and ``probes`` negation-probe rows per report
   (a sentence and its denial), built as tables and turned into items by
   :func:`align_items_from_table` and :func:`probe_pairs_from_table`; then :func:`score` with the
   default prompt bank and ``bootstrap`` resamples. The probe sentences repeat across reports
   (the generator draws them from 20 findings, as MIMIC's "No pneumothorax." repeats), so they
   add few distinct texts. A real run's ``cxr_align`` has a row per finding present in a report
   (``align=3`` is closer to it than the default 1), and each row costs the text tower two
   report-length texts.

Prints: total seconds and each part (reading the shards, loading the model, building the items,
and score's ``seconds``: encode_images, encode_texts, zero_shot (with the bootstrap), retrieval,
cxr_align, negation_probe), images/s of the image tower (PNG decode included; the decode alone is
timed separately after, outside the total), distinct texts/s of the text tower with their padded
token count, the peak RSS of this process during the evaluation, ``torch.get_num_threads()``
(torch's default unless ``threads=``) and the machine's core count. Asserts nothing.

Every figure is wall time and moves with whatever else loads the machine: the load average is
printed beside them, and score's CPU time.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from _common import PeakRSS, mib, print_figures  # noqa: E402
from train_synthetic import write_synthetic_shards  # noqa: E402

TRAIN_SAMPLES = 64
TRAIN_BATCH = 8
METHODS = ("cue", "there_is_no", "no_prefix", "qualifier")


def train_one_step(shards: Path, out: Path, args: dict[str, str]) -> tuple[Path, float]:
    """The trainer's checkpoint after one step of the chosen architecture; (file, seconds)."""
    overrides = [
        f"data.shards={shards}",
        f"out={out}",
        "preset=clip",
        "max_steps=1",
        f"data.batch_size={TRAIN_BATCH}",
        "data.workers=0",
        f"model.image.arch={args.get('arch', 'resnet50')}",
        f"model.image.width={args.get('width', '64')}",
        f"model.text.path={args.get('text', 'minilm')}",
        f"data.resolution={args.get('resolution', '224')}",
        f"model.embed_dim={args.get('embed', '512')}",
        "seed=0",
        "progress=false",
        "device=cpu",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CLIP2CLINIC_LOG_LEVEL": "WARNING"}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.train", *overrides], env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(
            f"trainer failed (exit {proc.returncode}):\npython -m pipeline.train {' '.join(overrides)}\n"
            f"{proc.stdout[-2000:]}{proc.stderr[-6000:]}"
        )
    summary = json.loads((out / "summary.json").read_text())
    return out / summary["final"], time.perf_counter() - t0


def _sentences(text: str) -> tuple[list[str], list[str]]:
    """(sentences, their section) of a "FINDINGS: ... IMPRESSION: ..." report."""
    out, where = [], []
    for section, body in re.findall(r"(FINDINGS|IMPRESSION):\s*(.*?)(?=\s*(?:FINDINGS|IMPRESSION):|$)", text):
        for s in re.split(r"(?<=\.)\s+", body.strip()):
            if s.strip(". "):
                out.append(s.strip())
                where.append(section.lower())
    if not out:  # a run's own text of another shape: split on full stops
        out = [s.strip() for s in re.split(r"(?<=\.)\s+", text) if s.strip(". ")] or [text]
        where = ["findings"] * len(out)
    return out, where


def _deny(sentence: str) -> str:
    body = sentence.rstrip(".")
    return f"There is no evidence that {body[:1].lower()}{body[1:]}."


def synthetic_tables(
    test, probes: int, *, align: int = 1, report: str = "text", seed: int = 0
) -> tuple[pa.Table, pa.Table]:
    """A ``cxr_align`` table (``align`` rows per test report, each denying another sentence) and a
    ``negation_pairs`` table (``probes`` rows per report), in the schemas' columns, built from the
    reports' own sentences. ``report``: ``text``, the row's ``report`` is the shards' text (one
    string with it); ``sentences``, the sentences joined without section headers, as the hardneg
    stage builds it (one more distinct string per report)."""
    from pipeline.train.evaluate import OBSERVATIONS

    rng = np.random.default_rng(seed)
    first: dict[str, str] = {}
    for report_id, text in zip(test.report_ids, test.texts, strict=True):
        first.setdefault(report_id, text)
    rows, pairs = [], []
    for report_id, text in first.items():
        sentences, where = _sentences(text)
        base = text if report == "text" else " ".join(sentences)
        for k in rng.choice(len(sentences), min(align, len(sentences)), replace=False):
            k = int(k)
            # In place, so both keep the report's section headers and every other sentence.
            negation = base.replace(sentences[k], _deny(sentences[k]), 1)
            omitted = re.sub(r"\s{2,}", " ", base.replace(sentences[k], "", 1)).strip()
            rows.append(
                {
                    "report_id": report_id,
                    "split": "test",
                    "finding": str(OBSERVATIONS[k % len(OBSERVATIONS)]),
                    "report": base,
                    "chosen": sentences[k],
                    "negation": negation,
                    "omitted": omitted,
                    "location": where[k],
                }
            )
        for j in rng.choice(len(sentences), min(probes, len(sentences)), replace=False):
            pairs.append(
                {
                    "report_id": report_id,
                    "split": "test",
                    "original": sentences[int(j)],
                    "flipped": _deny(sentences[int(j)]),
                    "method": str(METHODS[int(rng.integers(len(METHODS)))]),
                    "original_status": "present",
                    "flipped_status": "absent",
                }
            )
    return pa.Table.from_pylist(rows), pa.Table.from_pylist(pairs)


class Progress:
    """score's progress callback: a line on stderr every ~10% of each part."""

    def __init__(self) -> None:
        self.shown: dict[str, int] = {}
        self.t0 = time.perf_counter()

    def __call__(self, what: str, done: int, total: int) -> None:
        tenth = 10 * done // max(total, 1)
        if tenth > self.shown.get(what, -1):
            self.shown[what] = tenth
            print(f"  {what}: {done:,}/{total:,} at {time.perf_counter() - self.t0:.0f} s", file=sys.stderr)


def padded_tokens(loaded, texts: list[str], batch_size: int) -> tuple[int, float]:
    """Tokens encode_texts feeds the text tower (its length-sorted batches, padded), and the mean
    unpadded length."""
    cfg = loaded.config.model.text
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    padded, real = 0, 0
    for start in range(0, len(order), batch_size):
        rows = [texts[i] for i in order[start : start + batch_size]]
        enc = loaded.tokenizer(rows, padding=True, truncation=True, max_length=cfg.max_length)
        ids = enc["input_ids"]
        padded += len(ids) * max(len(x) for x in ids)
        real += sum(sum(m) for m in enc["attention_mask"])
    return padded, real / max(len(texts), 1)


def main(argv: list[str]) -> None:
    args = dict(a.split("=", 1) for a in argv)
    samples = int(args.get("samples", 5000))
    bootstrap = int(args.get("bootstrap", 1000))
    batch = int(args.get("batch", 64))
    probes = int(args.get("probes", 2))
    align_rows = int(args.get("align", 1))
    device = args.get("device", "cpu")
    keep = args.get("keep", "false") == "true"
    work = Path(args["dir"]) if "dir" in args else Path(tempfile.mkdtemp(prefix="bench-evaluate-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows: list[tuple[str, str]] = []
    try:
        # 1. Shards.
        if "shards" in args:
            shards = Path(args["shards"])
            rows.append(("shards", str(shards)))
        else:
            shards = work / "shards"
            t0 = time.perf_counter()
            write_synthetic_shards(shards, samples, workers=os.cpu_count(), split="test")
            if "checkpoint" not in args:
                write_synthetic_shards(shards, TRAIN_SAMPLES, workers=1, split="train", seed=1)
            rows.append(
                (
                    "synthetic shards written (256-px PNGs, test + 64-sample train)",
                    f"{time.perf_counter() - t0:.1f} s",
                )
            )
        # 2. Checkpoint.
        if "checkpoint" in args:
            checkpoint = Path(args["checkpoint"])
            rows.append(("checkpoint", str(checkpoint)))
        else:
            print("training one step for a checkpoint ...", file=sys.stderr)
            checkpoint, seconds = train_one_step(shards, work / "train", args)
            rows.append(
                (
                    "checkpoint: python -m pipeline.train preset=clip max_steps=1",
                    f"{seconds:.1f} s, {mib(checkpoint.stat().st_size)}",
                )
            )

        import torch

        from pipeline.train import evaluate as ev

        if "threads" in args:
            torch.set_num_threads(int(args["threads"]))
        threads = torch.get_num_threads()

        # 3. Evaluation.
        print("evaluating ...", file=sys.stderr)
        parts: dict[str, float] = {}
        rss_before = PeakRSS()._sample()
        with PeakRSS() as rss:
            t0 = time.perf_counter()
            test = ev.read_test_set(shards / "test", max_samples=samples)
            parts["read_test_set"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            loaded = ev.load_model(checkpoint, device=device)
            parts["load_model"] = time.perf_counter() - t0
            t0 = time.perf_counter()  # again, warm: the first call pays transformers' model imports
            del loaded
            loaded = ev.load_model(checkpoint, device=device)
            load_warm = time.perf_counter() - t0

            t0 = time.perf_counter()
            align_table, probe_table = synthetic_tables(
                test, probes, align=align_rows, report=args.get("align_report", "text")
            )
            data = ev.EvalData(
                test=test,
                align=[ev.align_items_from_table(align_table, test)],
                probe=ev.probe_pairs_from_table(probe_table, test),
            )
            prompts = ev.read_prompts()
            parts["build_items"] = time.perf_counter() - t0

            settings = ev.ScoreSettings(bootstrap=bootstrap, batch_size=batch)
            load_start = os.getloadavg()[0]
            t0, c0 = time.perf_counter(), time.process_time()
            figures, _ = ev.score(loaded, data, prompts, settings, progress=Progress())
            parts["score"] = time.perf_counter() - t0
            score_cpu = time.process_time() - c0
        total = sum(parts.values())  # the warm reload is not in it
        seconds = figures["seconds"]

        # Outside the total: what the text tower was fed, and the PNG decode alone.
        texts = list(
            dict.fromkeys(
                [
                    *test.texts,
                    *(t for side in prompts.values() for t in (*side["positive"], *side["negative"])),
                    *(t for items in data.align for t in (*items.report, *items.negation, *items.omitted)),
                    *data.probe.original,
                    *data.probe.flipped,
                ]
            )
        )
        referenced = (
            len(test.texts)
            + sum(len(s["positive"]) + len(s["negative"]) for s in prompts.values())
            + 3 * len(data.align[0])  # per (row, image), as score's want() sees them
            + 2 * len(data.probe)
        )
        padded, mean_tokens = padded_tokens(loaded, texts, batch)
        from pipeline.train.augment import AugmentConfig, decode_valid

        view = AugmentConfig(
            resolution=loaded.config.data.resolution, channels=loaded.config.data.channels, train=False
        )
        t0 = time.perf_counter()
        for start in range(0, len(test), batch):
            chunk = test.pngs[start : start + batch]
            decode_valid(chunk, np.arange(start, start + len(chunk)), seed=0, epoch=0, cfg=view)
        decode_s = time.perf_counter() - t0

        m = loaded.config.model
        reports = len(set(test.report_ids))
        rows += [
            (
                "model",
                f"{m.image.arch} width {m.image.width} + {m.text.path}, {loaded.config.data.resolution} px, "
                f"embed {m.embed_dim}, {sum(p.numel() for p in loaded.model.parameters()) / 1e6:.1f} M params",
            ),
            (
                "test set: images | reports | align items | probe items",
                f"{len(test):,} | {reports:,} | {len(data.align[0]):,} | {len(data.probe):,}",
            ),
            (
                "settings",
                f"bootstrap={bootstrap} batch={batch} device={device} align={align_rows} "
                f"align_report={args.get('align_report', 'text')} probes={probes}",
            ),
            ("cores | torch threads", f"{os.cpu_count()} | {threads}"),
            ("TOTAL evaluation (read + load + items + score)", f"{total:.1f} s"),
            ("  read_test_set", f"{parts['read_test_set']:.2f} s"),
            (
                "  load_model (first call in the process | again)",
                f"{parts['load_model']:.2f} s | {load_warm:.2f} s",
            ),
            ("  build items (tables -> AlignItems, ProbePairs)", f"{parts['build_items']:.2f} s"),
            (
                "  score: wall | CPU time of this process (all threads)",
                f"{parts['score']:.1f} s | {score_cpu:.1f} s",
            ),
        ]
        rows += [(f"    {k}", f"{v:.2f} s ({100 * v / parts['score']:.0f}%)") for k, v in seconds.items()]
        rows += [
            (
                "image tower: images/s (decode + forward)",
                f"{len(test) / seconds['encode_images']:.1f} ({1e3 * seconds['encode_images'] / len(test):.1f} ms each)",
            ),
            (
                "  PNG decode + resize alone (outside total)",
                f"{decode_s:.1f} s ({100 * decode_s / seconds['encode_images']:.0f}% of encode_images)",
            ),
            (
                "text tower: distinct texts/s",
                f"{len(texts) / seconds['encode_texts']:.1f} ({len(texts):,} distinct of {referenced:,} referenced)",
            ),
            (
                "  tokens fed (padded) | mean tokens per text",
                f"{padded:,} ({padded / seconds['encode_texts']:,.0f}/s) | {mean_tokens:.0f}",
            ),
            ("peak RSS during evaluation (before it)", f"{mib(rss.peak)} ({mib(rss_before)})"),
            (
                "figures (sanity)",
                f"mean AUROC {figures['zero_shot']['mean']['auroc'] or float('nan'):.3f}, task A "
                f"{figures['cxr_align']['run']['task_a']['accuracy']:.3f}, probe "
                f"{figures['negation_probe']['accuracy']:.3f}, R@10 i2t "
                f"{figures['retrieval']['image_to_text']['recall@10']:.3f}",
            ),
            (
                "load average (1 min) at score start | at end (other jobs slow every figure)",
                f"{load_start:.1f} | {os.getloadavg()[0]:.1f}",
            ),
            ("bench wall", f"{time.perf_counter() - started:.0f} s"),
        ]
        print_figures("pipeline.train.evaluate cost", rows)
        if keep:
            print(f"kept {work}")
    finally:
        if not keep and "dir" not in args:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
