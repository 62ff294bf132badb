"""The shards stage at scale: samples/s, bytes per sample, worker memory.

    python bench/shards.py [n_reports=50000] [workers=2] [dir=...] [keep=false]
    python bench/shards.py n_reports=227835          # MIMIC-CXR's report count (about 1 h in all)

Generates a demo dump of ``n_reports`` (small demo DICOMs, about 1.65 images per study, as in
MIMIC-CXR), runs everything the shards stage needs with default settings on a LocalCluster
(``dag=shards``: the label-engineering stages, then images), then times the shards stage alone
on a fresh cluster so its workers' peak RSS is its own. Prints the upstream stage times for
context, the shards stage's wall time, samples/s, shards written, bytes per sample (PNG and the
rest), and the peak RSS of the workers and of the client.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PeakRSS, mib, print_figures, timed, worker_peak_rss  # noqa: E402

from pipeline.core.config import compose_run  # noqa: E402
from pipeline.core.dag import load_dag  # noqa: E402
from pipeline.core.registry import get_stage  # noqa: E402
from pipeline.core.runner import Runner, dask_client  # noqa: E402
from pipeline.demo import generate_demo_dump  # noqa: E402
from pipeline.shards.stage import SPLITS, read_index  # noqa: E402


def main(argv: list[str]) -> None:
    args = dict(a.split("=", 1) for a in argv)
    n_reports = int(args.get("n_reports", 50000))
    workers = int(args.get("workers", 2))
    work = Path(args.get("dir") or tempfile.mkdtemp(prefix="bench-shards-"))
    keep = args.get("keep", "false") == "true"
    try:
        dump, out = work / "dump", work / "run"
        with timed() as gen:
            if not dump.exists():
                generate_demo_dump(dump, n_reports=n_reports, seed=0, progress=True)
        overrides = [
            "dataset=mimic_cxr",
            f"dataset.root={dump}",
            f"out={out}",
            f"cluster.n_workers={workers}",
        ]
        cfg = compose_run(overrides)
        dag = load_dag("shards")
        upstream = [s for s in dag.stages if s.name != "shards"]
        with dask_client(cfg.cluster) as client:
            runner = Runner(cfg.out, client)
            reports = [runner.run_stage(s, cfg.stage_config(s.name)) for s in upstream]
        with dask_client(cfg.cluster) as client, PeakRSS() as client_rss, timed() as run:
            report = Runner(cfg.out, client, force=True).run_stage(
                get_stage("shards"), cfg.stage_config("shards")
            )
            peaks = worker_peak_rss(client)
        samples = report.rows_out
        png_bytes = total_bytes = n_shards = 0
        for split in SPLITS:
            index = read_index(str(out), split)
            for entry in index["shards"]:
                n_shards += 1
                total_bytes += entry["bytes"]
                meta = pq.ParquetFile(out / "shards" / split / entry["file"]).metadata
                for rg in range(meta.num_row_groups):
                    for c in range(meta.num_columns):
                        col = meta.row_group(rg).column(c)
                        if col.path_in_schema == "image":
                            png_bytes += col.total_compressed_size
        rows = [
            ("reports / images in the dump", f"{n_reports:,} / {report.rows_in:,} (+ imageless reports)"),
            ("dump generation", f"{gen['seconds']:.1f} s"),
            *((f"upstream: {r.stage}", f"{r.seconds:.1f} s") for r in reports),
            ("shards stage wall time", f"{run['seconds']:.1f} s"),
            ("samples written", f"{samples:,} in {n_shards} shards"),
            ("samples/s (shards stage, 2 workers)", f"{samples / run['seconds']:,.0f}"),
            ("rejected", f"{report.rejected:,}"),
            ("bytes per sample (all columns)", f"{total_bytes / max(samples, 1):,.0f}"),
            ("bytes per sample (PNG column)", f"{png_bytes / max(samples, 1):,.0f}"),
            ("peak RSS per worker", ", ".join(mib(v) for v in peaks.values())),
            ("peak RSS client", mib(client_rss.peak)),
        ]
        print_figures(f"shards stage, {n_reports:,} reports, {workers} workers", rows)
        print(json.dumps({"samples": samples, "seconds": run["seconds"], "shards": n_shards}))
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
