"""Throughput of the CheXpert-labeler drop-in (``python -m pipeline.label``) on one core.

    python bench/label.py [data=../shared/data] [n=20000] [cli=true]

The process (and the CLI subprocess it starts) is pinned to one CPU, with one BLAS/OpenMP thread.
Each figure is reports/s for reading the input CSV, labelling it in process (the path inputs under
``--cluster-threshold`` take) and writing ``labeled_reports.csv``; the engine is loaded once
beforehand (its load time is printed apart). The ratio is to the CheXpert labeler's ~2.6 reports/s
per core, the figure the issue measured for the labeler (NegBio's parser-based pipeline); it is not
re-measured here (the labeler needs Java CoreNLP and the BLLIP parser, not installed).

1. The labeler's ``sample_reports.csv`` replicated to ``n`` reports, default settings: what the
   issue asks for, but only 4 distinct texts, so after the first rows every sentence comes from
   the engine's sentence memo: an upper bound, not a per-report cost.
2. Open-i (IU X-ray) findings + impression as one cell per report, repeated to ``n`` reports, with
   the sentence memo off (``cache_size=0``): every 1,000-report chunk is parsed afresh, so this is
   the honest per-core figure at that size.
3. The 2,793 Open-i reports once, default settings (memo on, starting empty): real reports' own
   repetition ("No pneumothorax.") is what the memo is for.
4. ``cli=true``: the CLI end to end on the Open-i CSV (one process, one core): imports, engine load,
   read, label, write, as a user sees it.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, inherited by the CLI subprocess

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import print_figures  # noqa: E402

from pipeline.label import LabelOptions, label_in_process, read_reports, write_labels_csv  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LABELER_PER_CORE = 2.6  # reports/s per core: the measurement of the CheXpert labeler


def openi_cells(data: Path) -> list[str]:
    """Open-i's findings and impression, joined by a blank line (empty reports left out)."""
    cells = []
    with (data / "openi" / "reports.csv").open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            parts = [(row.get(c) or "").strip() for c in ("findings", "impression")]
            if any(parts):
                cells.append("\n\n".join(p for p in parts if p))
    return cells


def write_headerless(path: Path, texts: list[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh, lineterminator="\n").writerows([t] for t in texts)


def replicate(texts: list[str], n: int) -> list[str]:
    return [texts[i % len(texts)] for i in range(n)]


def timed_label(source: Path, target: Path, options: LabelOptions) -> tuple[int, float]:
    started = time.perf_counter()
    reports = read_reports(source)
    result = label_in_process(reports.texts, options)
    write_labels_csv(target, reports.texts, result.labels)
    return len(reports.texts), time.perf_counter() - started


def rate(n: int, seconds: float) -> str:
    per_s = n / seconds
    return f"{per_s:,.0f} reports/s ({n:,} in {seconds:.1f} s) = {per_s / LABELER_PER_CORE:,.0f}x the labeler"


def main(argv: list[str]) -> None:
    args = dict(a.split("=", 1) for a in argv)
    data = Path(args.get("data", REPO.parent / "shared" / "data"))
    n = int(args.get("n", 20_000))
    from pipeline.text.nlp import load_engine

    started = time.perf_counter()
    load_engine()
    load_s = time.perf_counter() - started
    sample = read_reports(data / "rules" / "chexpert-labeler" / "sample_reports.csv").texts
    openi = openi_cells(data)
    figures = [("engine load (once per process)", f"{load_s:.1f} s")]
    with tempfile.TemporaryDirectory(prefix="bench-label-") as tmp:
        work = Path(tmp)
        write_headerless(work / "sample.csv", replicate(sample, n))
        write_headerless(work / "openi_n.csv", replicate(openi, n))
        write_headerless(work / "openi.csv", openi)

        k, s = timed_label(work / "sample.csv", work / "out1.csv", LabelOptions())
        figures.append((f"1. labeler sample x{n // len(sample):,} (4 distinct texts, memo on)", rate(k, s)))
        k, s = timed_label(work / "openi_n.csv", work / "out2.csv", LabelOptions(cache_size=0))
        figures.append((f"2. Open-i repeated to {n:,} (memo off)", rate(k, s)))
        load_engine().clear_cache()
        k, s = timed_label(work / "openi.csv", work / "out3.csv", LabelOptions())
        figures.append((f"3. Open-i {k:,} reports once (memo on, cold)", rate(k, s)))
        if args.get("cli", "true") != "false":
            started = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "pipeline.label", "--reports_path", str(work / "openi.csv")]
                + ["--output_path", str(work / "out4.csv"), "--workers", "1"],
                check=True,
                cwd=REPO,
                capture_output=True,
            )
            figures.append(
                (
                    "4. CLI end to end on Open-i (imports + load)",
                    rate(len(openi), time.perf_counter() - started),
                )
            )
    figures.append(("CheXpert labeler, per core (the issue's measurement)", f"{LABELER_PER_CORE} reports/s"))
    print_figures("pipeline.label on one core", figures)


if __name__ == "__main__":
    main(sys.argv[1:])
