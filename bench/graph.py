"""Report graphs: what they hold on real reports (Open-i), and how fast they are made (demo dump).

    python bench/graph.py [n_reports=227835] [workers=2] [openi=true] [dir=...] [keep=false]

1. Open-i (../shared/data/openi/reports.csv): dag=labels as bench/accuracy_openi.py runs it, then
   the graph and graph_embeddings stages; prints entities per report by label and kind, relations
   per report by type, and the share of reports with a graph.
2. A generated MIMIC-CXR-shaped demo dump of ``n_reports`` reports: ingest, parse, extract on one
   cluster, then the two graph stages on a fresh cluster, so each worker's peak RSS is theirs;
   prints reports/s per stage and the workers' peak RSS.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ["CLIP2CLINIC_STAGE_MODULES"] = "pipeline.graph.stage"  # workers inherit it

from _common import demo_text_run, mib, print_figures, worker_peak_rss  # noqa: E402

from pipeline.core.io import read_dataset  # noqa: E402
from pipeline.core.registry import get_stage  # noqa: E402
from pipeline.core.runner import ClusterConfig, Runner, dask_client  # noqa: E402
from pipeline.graph.stage import GraphConfig, GraphEmbeddingConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def graph_stages(out: Path, workers: int) -> tuple[dict[str, float], dict[str, int]]:
    """Run graph then graph_embeddings on a fresh cluster; (seconds per stage, worker peak RSS)."""
    with dask_client(ClusterConfig(n_workers=workers)) as client:
        runner = Runner(str(out), client)
        secs = {}
        for name, config in (("graph", GraphConfig()), ("graph_embeddings", GraphEmbeddingConfig())):
            secs[name] = runner.run_stage(get_stage(name), config).seconds
        return secs, worker_peak_rss(client)


def composition(out: Path) -> list[tuple[str, str]]:
    """Entities and relations per report (over reports with a graph) by type."""
    entities = read_dataset(str(out), "kg_entities", ["report_id", "label", "kind"])
    relations = read_dataset(str(out), "kg_relations", ["relation"])
    reports = read_dataset(str(out), "reports", ["report_id"]).num_rows
    n = len(set(entities.column("report_id").to_pylist())) or 1
    rows = [("reports with a graph", f"{n:,} of {reports:,} ({n / max(reports, 1):.1%})")]
    rows.append(("entities per report", f"{entities.num_rows / n:.2f}"))
    for (label, kind), c in sorted(
        Counter(
            zip(entities.column("label").to_pylist(), entities.column("kind").to_pylist(), strict=True)
        ).items()
    ):
        rows.append((f"  {label} {kind}", f"{c / n:.2f}"))
    rows.append(("relations per report", f"{relations.num_rows / n:.2f}"))
    for relation, c in sorted(Counter(relations.column("relation").to_pylist()).items()):
        rows.append((f"  {relation}", f"{c / n:.2f}"))
    return rows


def main(argv: list[str]) -> None:
    args = dict(a.split("=", 1) for a in argv)
    n = int(args.get("n_reports", 227_835))
    workers = int(args.get("workers", 2))
    data = Path(args.get("data", REPO.parent / "shared" / "data"))
    work = Path(args.get("dir") or tempfile.mkdtemp(prefix="bench-graph-"))
    try:
        if args.get("openi", "true") == "true" and (data / "openi" / "reports.csv").exists():
            from accuracy_openi import run_labels_dag

            out = work / "openi"
            run_labels_dag(data, out, workers)
            secs, _ = graph_stages(out, workers)
            rows = composition(out)
            rows.append(
                ("graph / graph_embeddings s", f"{secs['graph']:.1f} / {secs['graph_embeddings']:.1f}")
            )
            print_figures("Open-i report graphs", rows)
        out, generated = demo_text_run(work, n, workers)
        rows = [("demo dump generated", f"{generated:.0f} s")]
        secs, rss = graph_stages(out, workers)
        n_reports = read_dataset(str(out), "reports", ["report_id"]).num_rows
        rows += composition(out)
        for name, s in secs.items():
            rows.append((f"{name}: s | reports/s ({workers} workers)", f"{s:.1f} | {n_reports / s:,.0f}"))
        rows.append(("graph stages: worker peak RSS (max)", mib(max(rss.values()))))
        print_figures(f"demo dump, {n_reports:,} reports", rows)
    finally:
        if args.get("keep") != "true":
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
