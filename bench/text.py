"""Throughput of the text engine (parse + extract) at MIMIC-CXR scale and on real Open-i reports.

    python bench/text.py [n_reports=227835] [workers=2] [sizes=25000,50000,100000] [naive_sample=3000]
                         [data=../shared/data] [dir=DIR] [keep=false]

1. A demo dump of ``n_reports`` (MIMIC-CXR layout) is generated and ingested once; parse and extract
   then run on the first 25k / 50k / 100k reports and on all of them (scaling), on ``workers``
   worker processes. Reports/s counts the stage wall time (scheduling and Parquet I/O included).
2. The 2,793 Open-i reports run through the same stages (table adapter), once with the sentence
   memo on (the default) and once with it off (``stages.extract.cache_size=0``): the demo's
   template text repeats more than real reports, so the Open-i figures are the honest ones.
3. In the same run, the naive design-card pipeline (bench/_naive.py) on a sample of the same
   reports, one process: reports/s for the ratio.
Prints peak RSS per worker (targets: >= 1,000 reports/s per core, < 1.5 GiB per worker, time
linear in corpus size).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import mib, print_figures, timed, worker_peak_rss  # noqa: E402
from _naive import naive_rate  # noqa: E402

from pipeline.core.config import compose_run  # noqa: E402
from pipeline.core.io import read_dataset  # noqa: E402
from pipeline.core.registry import get_stage  # noqa: E402
from pipeline.core.runner import ClusterConfig, Runner, dask_client  # noqa: E402
from pipeline.demo import generate_demo_dump  # noqa: E402
from pipeline.text import nlp as text_nlp  # noqa: E402
from pipeline.text.nlp import load_engine  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def subset_run(full: Path, out: Path, n_parts: int) -> None:
    """A run folder whose `reports` are the first ``n_parts`` parts of ``full`` (hard links)."""
    (out / "reports").mkdir(parents=True)
    for i in range(n_parts):
        name = f"part-{i:05d}.parquet"
        (out / "reports" / name).hardlink_to(full / "reports" / name)
    manifest = json.loads((full / "reports" / "_manifest.json").read_text())
    manifest["fingerprint"] = f"{manifest['fingerprint']}-first-{n_parts}"
    (out / "reports" / "_manifest.json").write_text(json.dumps(manifest))


def text_stages(runner: Runner, overrides: list[str]) -> dict[str, float]:
    cfg = compose_run(overrides)
    seconds = {}
    for name in ("parse", "extract"):
        report = runner.run_stage(get_stage(name), cfg.stage_config(name))
        seconds[name] = report.seconds
        seconds[f"{name}_rows"] = report.rows_in
    return seconds


def main(argv: list[str]) -> None:
    args = dict(a.split("=", 1) for a in argv)
    n = int(args.get("n_reports", 227_835))
    workers = int(args.get("workers", 2))
    part_size = 2000
    sizes = [int(s) for s in args.get("sizes", "25000,50000,100000").split(",") if s] + [n]
    data = Path(args.get("data", REPO.parent / "shared" / "data"))
    work = Path(args.get("dir") or tempfile.mkdtemp(prefix="bench-text-"))
    rows: list[tuple[str, str]] = []
    try:
        dump = work / "dump"
        if not dump.exists():
            with timed() as gen:
                generate_demo_dump(dump, n_reports=n, seed=0, dicom_fraction=0.0)
            rows.append(("demo dump generated", f"{gen['seconds']:.0f} s"))
        with dask_client(ClusterConfig(n_workers=workers)) as client:
            client.run(lambda: load_engine() and None)  # load once per worker before timing; return nothing
            full = work / "full"
            ingest_cfg = compose_run(
                ["dataset=mimic_cxr", f"dataset.root={dump}", f"stages.ingest.part_size={part_size}"]
            )
            Runner(str(full), client).run_stage(get_stage("ingest"), ingest_cfg.stage_config("ingest"))
            for size in sizes:
                n_parts = -(-size // part_size)
                out = full if size >= n else work / f"first-{size}"
                if out != full and not out.exists():
                    subset_run(full, out, n_parts)
                client.run(text_nlp._engine.cache_clear)  # each size starts with a cold sentence memo
                client.run(lambda: load_engine() and None)
                secs = text_stages(Runner(str(out), client), [])
                total = secs["parse"] + secs["extract"]
                label = f"demo {secs['parse_rows']:,} reports"
                rows.append((f"{label}: parse / extract s", f"{secs['parse']:.1f} / {secs['extract']:.1f}"))
                rows.append(
                    (
                        f"{label}: reports/s ({workers} workers) | per core | µs per report",
                        f"{secs['parse_rows'] / total:,.0f} | {secs['parse_rows'] / total / workers:,.0f} | "
                        f"{total / secs['parse_rows'] * 1e6:,.0f}",
                    )
                )
            demo_rss = worker_peak_rss(client)
            rows.append(("worker peak RSS after the demo runs (max)", mib(max(demo_rss.values()))))

            openi = [
                "dataset=table",
                f"dataset.path={data / 'openi' / 'reports.csv'}",
                "dataset.id_column=uid",
                "dataset.text_columns=[indication,comparison,findings,impression]",
                "stages.parse.labeled=findings_and_impression",
                "stages.ingest.part_size=700",
            ]
            for memo in ("on", "off"):
                out = work / f"openi-memo-{memo}"
                extra = [] if memo == "on" else ["stages.extract.cache_size=0"]
                cfg = compose_run(openi + extra)
                Runner(str(out), client).run_stage(get_stage("ingest"), cfg.stage_config("ingest"))
                client.run(text_nlp._engine.cache_clear)  # a fresh engine: its sentence memo starts cold
                client.run(lambda: load_engine() and None)
                secs = text_stages(Runner(str(out), client), openi + extra)
                total = secs["parse"] + secs["extract"]
                rows.append(
                    (
                        f"Open-i 2,793 reports, memo {memo}: reports/s | per core",
                        f"{secs['parse_rows'] / total:,.0f} | {secs['parse_rows'] / total / workers:,.0f}",
                    )
                )
            rows.append(("worker peak RSS overall (max)", mib(max(worker_peak_rss(client).values()))))

        sample = int(args.get("naive_sample", 3000))
        texts = read_dataset(str(full), "reports", columns=["text"])["text"].to_pylist()[:sample]
        naive = naive_rate(data, texts)
        rows.append(
            (
                f"naive design-card pipeline, {len(texts):,} demo reports, 1 process: reports/s",
                f"{naive:,.0f}",
            )
        )
        rows.append(("CheXpert labeler (published): reports/s per core", "~2.6"))
        print_figures("text engine throughput", rows)
    finally:
        if args.get("keep", "false") != "true":
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
