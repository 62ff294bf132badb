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
3. ``before=REV`` (a commit, e.g. the one an issue was measured at): that version of the pipeline
   (a git worktree, the same virtualenv) runs the whole DAG right after this tree's run (wall
   seconds and worker RSS of the two, back to back; in a long-lived worker the collector pause
   and the memo count in full), then the two run on the same dump stage by stage in turn
   (``stage=<name>`` each, who goes first alternating), then before -> after per stage and for
   the stages' sum. In turn, because this machine's speed drifts by up to 2x over minutes: two
   whole runs one after the other do not compare, two runs of one stage minutes apart do. Each
   ``stage=`` run starts its own workers, whose first imports fall in the stage's seconds
   (1873cc0 imports spaCy in every worker, this tree only where the text engine runs); the
   parts' median seconds (map and source stages) leave them out.
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
import statistics
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


def median_part(out: Path, stage: str) -> float:
    """The median seconds of a stage's parts: a part's own work, without the first imports a
    fresh worker pays in its first part (a ``stage=`` run starts its own cluster)."""
    seconds = [json.loads(p.read_text())["seconds"] for p in (out / "_state" / stage).glob("part-*.json")]
    return statistics.median(seconds) if seconds else 0.0


def phase_split(timing: dict) -> str:
    """The parts' seconds by phase: what a part spends reading, on the stage's work, checking
    accounting and writing (conform, Parquet, commit, marker)."""
    phases = timing.get("part_phase_seconds") or {}
    total = sum(phases.values())
    if not total:
        return ""
    order = [k for k in ("read", "compute", "check", "write") if k in phases]
    return "; parts: " + ", ".join(f"{k} {100 * phases[k] / total:.0f}%" for k in order)


def _command(dump: Path, out: Path, workers: int, what: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pipeline.run",
        what,
        "dataset=mimic_cxr",
        f"dataset.root={dump}",
        f"out={out}",
        f"cluster.n_workers={workers}",
        "progress=false",
    ]


def _run(tree: Path, command: list[str]) -> tuple[float, int]:
    """One CLI run by the pipeline in ``tree`` (its package first, for the CLI and, through the
    environment, its workers): (wall seconds, peak RSS of the largest worker)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    start = time.perf_counter()
    proc = subprocess.Popen(
        command, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    with ChildPeakRSS(proc.pid) as rss:
        _, stderr = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command[3:5])} in {tree} failed ({proc.returncode}):\n{stderr[-4000:]}")
    return time.perf_counter() - start, rss.peak


def run_dag(tree: Path, dump: Path, out: Path, workers: int) -> tuple[float, dict[str, dict], int]:
    """``dag=preprocess`` with defaults by the pipeline in ``tree``, in a fresh process: (wall
    seconds with process start, stage records, peak RSS of the largest worker)."""
    seconds, peak = _run(tree, _command(dump, out, workers, "dag=preprocess"))
    return seconds, stage_records(out), peak


def interleaved(
    trees: dict[str, Path], dump: Path, work: Path, workers: int
) -> dict[str, tuple[dict[str, dict], int]]:
    """The preprocess DAG stage by stage (``stage=<name>``, one process each), the versions in
    turn for every stage, who goes first alternating: a pair of runs of one stage lies minutes
    apart at most, so the machine's drift hardly enters their ratio. Returns, per version, the
    stage records and the largest worker's peak RSS."""
    from pipeline.core.dag import load_dag

    peaks = dict.fromkeys(trees, 0)
    order = list(trees)
    for k, stage in enumerate(s.name for s in load_dag("preprocess").stages):
        for label in order if k % 2 == 0 else order[::-1]:
            _, peak = _run(trees[label], _command(dump, work / f"run-{label}", workers, f"stage={stage}"))
            peaks[label] = max(peaks[label], peak)
    return {label: (stage_records(work / f"run-{label}"), peaks[label]) for label in trees}


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
        seconds, records, peak = run_dag(REPO, dump, work / "run", workers)
        figures += describe("this tree", seconds, records, peak, workers)
        if before:
            with git_tree(before, REPO) as tree:
                # the whole DAG again, by the earlier version, right after this tree's run
                b_seconds, _, b_whole_peak = run_dag(tree, dump, work / "run-before-dag", workers)
                pairs = interleaved({"before": tree, "after": REPO}, dump, work, workers)
            figures.append(
                (
                    f"before ({before}) -> after, the whole DAG back to back (wall)",
                    f"{b_seconds:.0f} -> {seconds:.0f} s ({b_seconds / seconds:.2f}x); worker peak RSS "
                    f"{mib(b_whole_peak)} -> {mib(peak)}",
                )
            )
            (b_rec, b_peak), (a_rec, a_peak) = pairs["before"], pairs["after"]

            def total(recs: dict[str, dict]) -> float:
                return sum(r["timings"]["stage_seconds"] for r in recs.values())

            figures.append(
                (
                    f"before ({before}) -> after, stage by stage in turn: the stages' seconds",
                    f"{total(b_rec):.0f} -> {total(a_rec):.0f} s ({total(b_rec) / total(a_rec):.2f}x)",
                )
            )
            for name in sorted(a_rec, key=lambda k: -b_rec.get(k, a_rec[k])["timings"]["stage_seconds"]):
                if name in b_rec:
                    b, a = b_rec[name]["timings"]["stage_seconds"], a_rec[name]["timings"]["stage_seconds"]
                    text = f"{b:.1f} -> {a:.1f} s ({b / max(a, 1e-9):.2f}x)"
                    if get_stage(name).kind != "corpus":
                        mb, ma = median_part(work / "run-before", name), median_part(work / "run-after", name)
                        text += f"; median part {mb:.2f} -> {ma:.2f} s ({mb / max(ma, 1e-9):.2f}x)"
                    figures.append((f"  {name}", text))
            figures.append(("  worker peak RSS (largest worker, sampled)", f"{mib(b_peak)} -> {mib(a_peak)}"))
        out = work / "run"
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
