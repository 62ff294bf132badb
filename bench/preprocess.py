"""The whole preprocess DAG at MIMIC-CXR scale with default settings, stage by stage.

    python bench/preprocess.py [n_reports=227835] [workers=2] [naive_sample=3000]
                               [dump=DIR] [dir=DIR] [keep=false] [data=../shared/data]

1. A demo dump of ``n_reports`` in the MIMIC-CXR layout, reports only (``dump=`` reuses one, e.g.
   a tree `python -m pipeline.demo` wrote).
2. `python -m pipeline.run dag=preprocess dataset=mimic_cxr ...` in a fresh process, with no setting
   but the dump, the run folder and ``cluster.n_workers``: wall seconds (process start included),
   then each stage's seconds and rows from its completion record (`_state/<stage>/_stage.json`),
   longest first, with the part size the run chose; for map and source stages, how busy the
   workers were (their parts' seconds over the stage's, per worker) and the parts' split into
   read / compute / check / write (the part markers' ``phases``); the workers' peak RSS (the
   markers' ``worker_peak_rss_mib``).
3. The naive design-card pipeline (bench/_naive.py) on a sample of the same reports, in one
   process in the same run: reports/s, beside ``dag=labels``'s share of the run (ingest, parse,
   extract, agreement) per core.

Target (issue #16): under 300 s at 227,835 reports on 2 workers. The run folder is kept with
``keep=true`` (its stage records are the per-stage figures).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import print_figures, timed  # noqa: E402
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


def main(argv: list[str]) -> None:
    args = dict(a.split("=", 1) for a in argv)
    n = int(args.get("n_reports", 227_835))
    workers = int(args.get("workers", 2))
    sample = int(args.get("naive_sample", 3000))
    data = Path(args.get("data", REPO.parent / "shared" / "data"))
    work = Path(args["dir"]) if "dir" in args else Path(tempfile.mkdtemp(prefix="bench-preprocess-"))
    keep = args.get("keep", "false").lower() == "true"
    work.mkdir(parents=True, exist_ok=True)
    figures: list[tuple[str, str]] = []
    try:
        dump = Path(args["dump"]) if "dump" in args else work / "dump"
        if "dump" not in args:
            from pipeline.demo import generate_demo_dump

            with timed() as gen:
                generate_demo_dump(dump, n_reports=n, seed=0, dicom_fraction=0.0)
            figures.append((f"demo dump, {n:,} reports (not counted below)", f"{gen['seconds']:.0f} s"))
        out = work / "run"
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
        start = time.perf_counter()
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"the run failed ({done.returncode}):\n{done.stderr[-4000:]}")
        records = stage_records(out)
        reports = records["ingest"]["rows_out"]
        figures.append(
            (f"dag=preprocess, {reports:,} reports, {workers} workers, defaults", f"{seconds:.0f} s")
        )
        figures.append(("  reports/s end to end (process start included)", f"{reports / seconds:,.0f}"))
        figures.append(
            (
                "  parts of ingest (part size)",
                f"{records['ingest']['parts']} ({-(-reports // records['ingest']['parts']):,})",
            )
        )
        staged = sum(r["timings"]["stage_seconds"] for r in records.values())
        figures.append(("  outside the stages (start, plan, cluster, summary)", f"{seconds - staged:.0f} s"))
        for name, record in sorted(records.items(), key=lambda kv: -kv[1]["timings"]["stage_seconds"]):
            timing = record["timings"]
            text = f"{timing['stage_seconds']:.1f} s, {record['rows_in']:,} rows in"
            # A corpus stage's part markers time only its commits, not its work: no share for it.
            if get_stage(name).kind != "corpus":
                busy = timing["part_seconds_total"] / max(timing["stage_seconds"] * workers, 1e-9)
                text += f", workers busy {100 * busy:.0f}%"
                text += phase_split(timing)
            figures.append((f"  {name}", text))
        peak = max(r["timings"].get("worker_peak_rss_mib", 0.0) for r in records.values())
        figures.append(("  worker peak RSS (largest over the run)", f"{peak:,.0f} MiB"))
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
            ("  dag=labels' stages per core / naive", f"{reports / labels_s / workers / naive:.2f}x")
        )
        print_figures("the preprocess DAG with default settings", figures)
    finally:
        if not keep and "dir" not in args:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
