"""Ingest throughput at MIMIC-CXR scale: generate a 227,835-report demo dump, ingest it, print figures.

    python bench/ingest.py [n_reports=227835] [workers=2] [dicom_fraction=0.01] [keep=false]

Prints the generation time, reports/s of the ingest stage on the workers, the client's peak RSS
(target: under 1 GiB whatever the dump size) and each worker's peak RSS.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PeakRSS, mib, print_figures, timed, worker_peak_rss  # noqa: E402

from pipeline.core.registry import PlanContext, get_stage  # noqa: E402
from pipeline.core.runner import ClusterConfig, Runner, dask_client  # noqa: E402
from pipeline.demo import generate_demo_dump  # noqa: E402
from pipeline.ingest.config import DatasetConfig, IngestConfig  # noqa: E402


def main(argv: list[str]) -> None:
    args = dict(a.split("=", 1) for a in argv)
    n = int(args.get("n_reports", 227_835))
    workers = int(args.get("workers", 2))
    fraction = float(args.get("dicom_fraction", 0.01))
    work = Path(args.get("dir") or tempfile.mkdtemp(prefix="bench-ingest-"))
    root = work / "dump"
    try:
        with timed() as gen:
            summary = generate_demo_dump(root, n_reports=n, seed=0, dicom_fraction=fraction)
        config = IngestConfig(dataset=DatasetConfig(name="mimic_cxr", root=str(root)), part_size=2000)
        with dask_client(ClusterConfig(n_workers=workers)) as client:
            runner = Runner(str(work / "run"), client)
            with PeakRSS() as client_rss, timed() as run:
                report = runner.run_stage(get_stage("ingest"), config)
            workers_rss = worker_peak_rss(client)
            # A rerun on the unchanged tree: its stamp (CSVs, folder times) instead of the listing.
            with timed() as rerun:
                again = Runner(str(work / "run"), client).run_stage(get_stage("ingest"), config)
            with timed() as plan:
                get_stage("ingest").plan(config, PlanContext(str(work / "plan-staging"), 2000))
        print_figures(
            f"ingest: {n:,} reports, {workers} workers",
            [
                (
                    "demo dump generated",
                    f"{gen['seconds']:.1f} s ({summary.images:,} images, {summary.dicoms:,} DICOMs)",
                ),
                ("ingest wall time", f"{run['seconds']:.1f} s"),
                ("reports/s", f"{report.rows_in / run['seconds']:,.0f}"),
                ("reports out / rejected", f"{report.rows_out:,} / {report.rejected:,}"),
                ("images_meta rows", f"{report.datasets.get('images_meta', 0):,}"),
                (
                    f"rerun, unchanged tree ({again.status}) | the plan it avoids",
                    f"{rerun['seconds']:.2f} s | {plan['seconds']:.1f} s",
                ),
                ("client peak RSS", mib(client_rss.peak)),
                ("worker peak RSS (max)", mib(max(workers_rss.values()))),
            ],
        )
    finally:
        if args.get("keep", "false") != "true":
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
