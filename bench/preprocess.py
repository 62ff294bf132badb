"""The whole preprocess DAG at MIMIC-CXR scale with default settings, stage by stage.

    python bench/preprocess.py [n_reports=227835] [workers=2] [naive_sample=3000] [before=REV]
                               [dump=DIR] [dir=DIR] [keep=false] [data=../shared/data]

1. A demo dump of ``n_reports`` in the MIMIC-CXR layout, reports only (``dump=`` reuses one, e.g.
   a tree `python -m pipeline.demo` wrote).
2. `python -m pipeline.run dag=preprocess dataset=mimic_cxr ...` in a fresh process, with no setting
   but the dump, the run folder and ``cluster.n_workers``: wall seconds (process start included),
   then each stage's seconds and rows from its completion record (`_state/<stage>/_stage.json`),
   longest first, with the part size the run chose; for map and source stages, how busy the
   workers were (their parts' seconds over the stage's, per worker) and the parts' split into
   read / compute / check / write (the part markers' ``phases``, where the version records
   them); the largest worker's peak RSS, sampled from outside.
3. ``before=REV`` (a commit, e.g. the one an issue was measured at): the same run first by that
   version of the pipeline (a git worktree, the same virtualenv), on the same dump, then stage by
   stage before -> after. Both in one run of the script, because this machine's speed drifts by
   up to 2x over minutes: figures from different runs do not compare.
4. The naive design-card pipeline (bench/_naive.py) on a sample of the same reports, in one
   process in the same run: reports/s, beside ``dag=labels``'s share of the run (ingest, parse,
   extract, agreement) per core.

Target (issue #16): under 300 s at 227,835 reports on 2 workers. The run folders are kept with
``keep=true`` (their stage records are the per-stage figures).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ChildPeakRSS, git_tree, mib, print_figures, timed  # noqa: E402
from _naive import naive_rate  # noqa: E402

from pipeline.core.registry import get_stage  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LABELS = ("ingest", "parse", "extract", "agreement")


def stage_records(out: Path) -> dict[str, dict]:
    records = {}
    for path in sorted((out / "_state").glob("*/_stage.json")):
        records[path.parent.name] = json.loads(path.read_text())
    return records


def phase_split(timing: dict) -> str:
    """The parts' seconds by phase: what a part spends reading, on the stage's work, checking
    accounting and writing (conform, Parquet, commit, marker)."""
    phases = timing.get("part_phase_seconds") or {}
    total = sum(phases.values())
    if not total:
        return ""
    order = [k for k in ("read", "compute", "check", "write") if k in phases]
    return "; parts: " + ", ".join(f"{k} {100 * phases[k] / total:.0f}%" for k in order)


def run_dag(tree: Path, dump: Path, out: Path, workers: int) -> tuple[float, dict[str, dict], int]:
    """``dag=preprocess`` with defaults by the pipeline in ``tree``, in a fresh process: (wall
    seconds with process start, stage records, peak RSS of the largest worker)."""
    command = [
        sys.executable,
        "-m",
        "pipeline.run",
        "dag=preprocess",
        "dataset=mimic_cxr",
        f"dataset.root={dump}",
        f"out={out}",
        f"cluster.n_workers={workers}",
        "progress=false",
    ]
    # the tree's own package first, for the CLI and (through the environment) its workers
    env = {**os.environ, "PYTHONPATH": str(tree)}
    start = time.perf_counter()
    proc = subprocess.Popen(
        command, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    with ChildPeakRSS(proc.pid) as rss:
        _, stderr = proc.communicate()
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"the run in {tree} failed ({proc.returncode}):\n{stderr[-4000:]}")
    return seconds, stage_records(out), rss.peak


def describe(
    label: str, seconds: float, records: dict[str, dict], peak: int, workers: int
) -> list[tuple[str, str]]:
    """The figures of one run: total, parts, time outside the stages, each stage, worker RSS."""
    reports = records["ingest"]["rows_out"]
    rows = [
        (f"{label}: dag=preprocess, {reports:,} reports, {workers} workers, defaults", f"{seconds:.0f} s"),
        ("  reports/s end to end (process start included)", f"{reports / seconds:,.0f}"),
        (
            "  parts of ingest (part size)",
            f"{records['ingest']['parts']} ({-(-reports // records['ingest']['parts']):,})",
        ),
    ]
    staged = sum(r["timings"]["stage_seconds"] for r in records.values())
    rows.append(("  outside the stages (start, plan, cluster, summary)", f"{seconds - staged:.0f} s"))
    for name, record in sorted(records.items(), key=lambda kv: -kv[1]["timings"]["stage_seconds"]):
        timing = record["timings"]
        text = f"{timing['stage_seconds']:.1f} s, {record['rows_in']:,} rows in"
        # A corpus stage's part markers time only its commits, not its work: no share for it.
        if get_stage(name).kind != "corpus":
            busy = timing["part_seconds_total"] / max(timing["stage_seconds"] * workers, 1e-9)
            text += f", workers busy {100 * busy:.0f}%"
            text += phase_split(timing)
        rows.append((f"  {name}", text))
    rows.append(("  worker peak RSS (largest worker, sampled)", mib(peak)))
    return rows


def main(argv: list[str]) -> None:
    args = dict(a.split("=", 1) for a in argv)
    n = int(args.get("n_reports", 227_835))
    workers = int(args.get("workers", 2))
    sample = int(args.get("naive_sample", 3000))
    data = Path(args.get("data", REPO.parent / "shared" / "data"))
    work = Path(args["dir"]) if "dir" in args else Path(tempfile.mkdtemp(prefix="bench-preprocess-"))
    keep = args.get("keep", "false").lower() == "true"
    before = args.get("before")
    work.mkdir(parents=True, exist_ok=True)
    figures: list[tuple[str, str]] = []
    try:
        dump = Path(args["dump"]) if "dump" in args else work / "dump"
        if "dump" not in args:
            from pipeline.demo import generate_demo_dump

            with timed() as gen:
                generate_demo_dump(dump, n_reports=n, seed=0, dicom_fraction=0.0)
            figures.append((f"demo dump, {n:,} reports (not counted below)", f"{gen['seconds']:.0f} s"))
        runs: dict[str, tuple[float, dict[str, dict], int]] = {}
        if before:
            with git_tree(before, REPO) as tree:
                runs[f"before ({before})"] = run_dag(tree, dump, work / "run-before", workers)
        runs["this tree"] = run_dag(REPO, dump, work / "run", workers)
        for label, (seconds, records, peak) in runs.items():
            figures += describe(label, seconds, records, peak, workers)
        if before:
            (b_s, b_rec, b_peak), (a_s, a_rec, a_peak) = runs.values()
            figures.append((f"before / after, whole run ({before} / this tree)", f"{b_s / a_s:.2f}x"))
            for name in sorted(a_rec, key=lambda k: -b_rec.get(k, a_rec[k])["timings"]["stage_seconds"]):
                if name in b_rec:
                    b, a = b_rec[name]["timings"]["stage_seconds"], a_rec[name]["timings"]["stage_seconds"]
                    figures.append((f"  {name}", f"{b:.1f} -> {a:.1f} s ({b / max(a, 1e-9):.2f}x)"))
            figures.append(("  worker peak RSS", f"{mib(b_peak)} -> {mib(a_peak)}"))
        out = work / "run"
        records = runs["this tree"][1]
        reports = records["ingest"]["rows_out"]
        labels_s = sum(records[s]["timings"]["stage_seconds"] for s in LABELS if s in records)

        import pyarrow.parquet as pq

        texts: list[str] = []
        for path in sorted((out / "reports").glob("part-*.parquet")):
            texts.extend(pq.read_table(path, columns=["text"]).column("text").to_pylist())
            if len(texts) >= sample:
                break
        texts = texts[:sample]
        naive = naive_rate(data, texts)
        figures.append(
            (
                f"naive design-card pipeline, {len(texts):,} of the reports, 1 process: reports/s",
                f"{naive:,.0f}",
            )
        )
        figures.append(
            (
                "  dag=labels' stages per core / naive (this tree)",
                f"{reports / labels_s / workers / naive:.2f}x",
            )
        )
        print_figures("the preprocess DAG with default settings", figures)
    finally:
        if not keep and "dir" not in args:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
